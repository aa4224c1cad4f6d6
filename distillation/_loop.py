"""The host loop of a distillation run and its callbacks.

:func:`run` only steps: it compiles the distiller's step once, then for each iteration draws the
target batch, takes the step, and hands the iteration to its callbacks. Everything else a long
run needs is a callback, each with one job and its own test:

* :class:`ProgressBar`: a tqdm bar with the current losses;
* :class:`History`: the logged metrics every ``every`` steps (and a stop with
  :class:`~distillation.RunFailed` on NaN or infinity);
* :class:`Checkpointer`: the state and a record (history, settings, seconds) every ``every``
  steps, at the end, and when the run is interrupted;
* :class:`Snapshots`: copies of the result at chosen iterations, with the time so far;
* :class:`SignalStop`: ends the run after the step in flight when the program's
  :class:`~distillation.InterruptGuard` received a signal (the one signal handling of
  the program; the loop installs none of its own).

A callback implements any of ``on_start(step, state)``, ``on_step(step, state, row)`` (``row``:
the step's metrics as floats when the step is a logging step, else ``None``) and
``on_stop(step, state, early)`` (``early``: interrupted or failed; ``state`` is ``None`` when
there is nothing worth saving).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from distillation._checkpoint import RunFailed, save_checkpoint
from distillation._interrupts import InterruptGuard
from distillation.data._datasets import HostImages

if TYPE_CHECKING:
    from distillation._distill import Distiller, DistillState, Snapshot


class Interrupted(Exception):
    """Raised when the run was interrupted (after a checkpoint was written, when it had one)."""


class Callback:
    """Base of the loop's callbacks: every hook does nothing."""

    def on_start(self, step: int, state: DistillState) -> None:
        """Before the first iteration of this call (``step``: iterations already done)."""

    def on_step(self, step: int, state: DistillState, row: dict[str, float] | None) -> None:
        """After iteration ``step`` (1-based count of iterations done)."""

    def on_stop(self, step: int, state: DistillState | None, early: bool) -> None:
        """At the end of the call, or when it stopped ``early`` (interrupted, or failed);
        ``state`` is ``None`` when there is nothing worth saving (lost, or diverged)."""


def run(
    distiller: Distiller,
    state: DistillState,
    data: tuple[jax.Array, jax.Array] | tuple[HostImages, np.ndarray],
    steps: int,
    callbacks: Sequence[Callback] = (),
    *,
    log_every: int = 10,
) -> DistillState:
    """Run ``distiller`` from ``state`` until ``steps`` iterations are done.

    Args:
        distiller: the step (:class:`~distillation.Distiller`).
        state: where to start (``state.step`` iterations already done). Consumed: each step
            donates its input state's buffers, so keep the returned state, not this one
            (:meth:`~distillation.Distiller.init` gives the state buffers of its own, so the
            support set and the algorithm it was made from stay usable).
        data: the training images and their one-hot labels, on the device; or images kept on
            the host (:class:`~distillation.data._datasets.HostImages`) and integer labels,
            read a target batch at a time.
        steps: the total number of iterations (not the number to run now).
        callbacks: called in order after each iteration (see the module docstring).
        log_every: the steps whose metrics are read back to the host (and every last step).

    Returns:
        The state after ``steps`` iterations.

    Raises:
        Interrupted: on ``KeyboardInterrupt`` or when a callback raised it (the callbacks'
            ``on_stop`` ran first, so a checkpoint is written).
    """
    start = int(state.step)
    for callback in callbacks:
        callback.on_start(start, state)
    if start >= steps:
        for callback in callbacks:
            callback.on_stop(start, state, False)
        return state
    x_train, y_train = data
    host_kept = isinstance(x_train, HostImages)  # read a target batch at a time
    if host_kept:
        batch_fn = distiller.batches(x_train, y_train)
    else:
        next_batch = jax.jit(distiller.next_batch)
        batch_fn = lambda s: next_batch(s, x_train, y_train)  # noqa: E731
    batch = batch_fn(state)
    # Compiled ahead of time: the loop below only runs steps.
    step_fn = jax.jit(distiller.step, donate_argnums=0).lower(state, batch).compile()
    probe_fn = None
    if distiller.tunes_by_probe:
        if host_kept:
            key = jax.random.wrap_key_data(state.data_key)
            x_train, y_train = distiller.probe_data(x_train, y_train, key=key)
        lowered = jax.jit(distiller.probe, donate_argnums=0).lower(state, x_train, y_train)
        probe_fn = lowered.compile()
    done = start
    try:
        for it in range(start, steps):
            if probe_fn is not None and it % distiller.config.tune_every == 0:
                state = probe_fn(state, x_train, y_train)
            state, metrics = step_fn(state, batch_fn(state))
            done = it + 1
            row = None
            if done % log_every == 0 or done == steps:
                row = {k: float(v) for k, v in jax.device_get(metrics).items()}
            for callback in callbacks:
                callback.on_step(done, state, row)
    except (RunFailed, jax.errors.JaxRuntimeError):
        for callback in callbacks:  # nothing to save: the state diverged or a solve failed
            callback.on_stop(done, None, True)
        raise
    except (KeyboardInterrupt, Interrupted):
        try:
            jax.block_until_ready(state)
            kept: DistillState | None = state
        except RuntimeError:  # Ctrl-C inside a step: its donated input is gone, its output lost
            kept = None
        for callback in callbacks:
            callback.on_stop(done if kept is not None else -1, kept, True)
        raise
    jax.block_until_ready(state)
    for callback in callbacks:
        callback.on_stop(done, state, False)
    return state


class ProgressBar(Callback):
    """A progress bar (tqdm) over ``total`` iterations with the current losses."""

    def __init__(self, total: int, desc: str, *, disable: bool = False, file: Any = None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=disable, desc=desc, dynamic_ncols=True, file=file)

    def note(self, text: str) -> None:
        """Show ``text`` beside the bar (for instance the learning-rate pre-round's rates)."""
        self.bar.set_postfix_str(text)

    def on_start(self, step, state):
        self.bar.n = step
        self.bar.refresh()

    def on_step(self, step, state, row):
        if row is not None:
            self.bar.set_postfix(
                outer=f"{row['outer_loss']:.3f}",
                acc=f"{row['target_acc']:.2f}",
                inner=f"{row['inner_loss']:.3g}",
                refresh=False,
            )
        self.bar.update(1)

    def on_stop(self, step, state, early):
        self.bar.close()


class History(Callback):
    """The logged metrics: a row (``step``, ``seconds`` of the whole run, the metrics) per
    logging step; a NaN or infinity stops the run with :class:`RunFailed`.

    Args:
        rows: the rows of earlier segments of the run (a resumed run continues them).
        seconds_before: the wall-clock seconds of those segments.
        on_log: called with ``(step, row)`` for each new row.
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]] = (),
        seconds_before: float = 0.0,
        on_log: Callable[[int, dict[str, Any]], None] | None = None,
    ):
        self.rows = list(rows)
        self.seconds_before = seconds_before
        self.on_log = on_log
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        """The run's wall-clock seconds so far, over all its segments."""
        return self.seconds_before + time.perf_counter() - self.t0

    def on_step(self, step, state, row):
        if row is None:
            return
        not_finite = [k for k, v in row.items() if not math.isfinite(v)]
        if not_finite:
            raise RunFailed(
                f"the run diverged at step {step}: "
                + ", ".join(f"{k} = {row[k]}" for k in not_finite)
                + " (NaN or overflow: a solve failed, or a learning rate is too large)."
            )
        row = {**row, "step": step, "seconds": self.seconds()}
        self.rows.append(row)
        if self.on_log is not None:
            self.on_log(step, row)


class Checkpointer(Callback):
    """Writes the state with ``record()`` (a JSON-serialisable dict: history, settings, ...)
    every ``every`` steps, after the last one, and when the run is interrupted with steps not
    yet saved. Each checkpoint commits the state and the record together, atomically
    (:mod:`distillation._checkpoint`).

    Args:
        directory: where the checkpoint goes.
        every: steps between checkpoints.
        total: the run's last step (always saved).
        record: the metadata saved with the state.
        guard: the program's interrupt guard, told when the run holds unsaved steps (a signal
            then waits for the step in flight and this checkpoint).
        saved: the step of the checkpoint the run started from (0: none).
    """

    def __init__(
        self,
        directory: Path,
        every: int,
        total: int,
        record: Callable[[int], dict[str, Any]],
        *,
        guard: InterruptGuard | None = None,
        saved: int = 0,
    ):
        self.directory = directory
        self.every = every
        self.total = total
        self.record = record
        self.guard = guard
        self.last_saved = saved

    def save(self, step: int, state: DistillState) -> None:
        save_checkpoint(self.directory, state, self.record(step))
        self.last_saved = step
        if self.guard is not None:
            self.guard.set_unsaved(False)

    def on_step(self, step, state, row):
        if self.guard is not None:
            self.guard.set_unsaved(True)
        if step % self.every == 0 or step == self.total:
            self.save(step, state)

    def on_stop(self, step, state, early):
        if early and state is not None and step != self.last_saved:
            self.save(step, state)


class Snapshots(Callback):
    """Copies of the result (``result(state)``: the EMA set by default in
    :func:`~distillation.distill`) after the iterations in ``steps`` (``0``: the
    start), with the wall-clock seconds since ``t0``."""

    def __init__(
        self,
        steps: Collection[int],
        result: Callable[[DistillState], Any],
        t0: float | None = None,
    ):
        bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise ValueError(f"snapshot_steps must be integers >= 0, got {sorted(map(str, bad))}.")
        self.steps = set(steps)
        self.result = result
        self.t0 = time.perf_counter() if t0 is None else t0
        self.taken: list[Snapshot] = []

    def _take(self, step: int, state: DistillState) -> None:
        from distillation._distill import Snapshot

        if step in self.steps:
            support = jax.device_get(jax.block_until_ready(self.result(state)))
            self.taken.append(Snapshot(step, time.perf_counter() - self.t0, support))

    def on_start(self, step, state):
        self._take(step, state)

    def on_step(self, step, state, row):
        self._take(step, state)


class SignalStop(Callback):
    """Stops the run (:class:`Interrupted`) after the step in which ``guard`` recorded a
    signal; the callbacks' ``on_stop`` (the checkpoint) runs on the way out."""

    def __init__(self, guard: InterruptGuard):
        self.guard = guard

    def on_step(self, step, state, row):
        if self.guard.requested is not None:
            raise Interrupted()
