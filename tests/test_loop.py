"""The host loop and each of its callbacks on its own, with a toy distiller (no compilation of
a real step): what each callback records, writes or raises, and how `run` calls them."""

import io
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillation._algorithms import SupportSet
from distillation._checkpoint import RunFailed, load_checkpoint, read_checkpoint_meta
from distillation._interrupts import InterruptGuard
from distillation._loop import (
    Callback,
    Checkpointer,
    History,
    Interrupted,
    ProgressBar,
    SignalStop,
    Snapshots,
    run,
)


class ToyState(NamedTuple):
    step: jax.Array
    value: jax.Array


class ToyConfig(NamedTuple):
    tune_every: int = 3


class ToyDistiller:
    """``value += batch.sum()`` per step; ``probe`` counts its calls in ``value``'s sign."""

    config = ToyConfig()

    def __init__(self, tunes=False, fail_at=None):
        self.tunes_by_probe = tunes
        self.fail_at = fail_at

    def next_batch(self, state, x, y):
        return x[state.step % x.shape[0]], y

    def step(self, state, batch):
        x, _ = batch
        value = state.value + jnp.sum(x)
        if self.fail_at is not None:
            value = jnp.where(state.step + 1 == self.fail_at, jnp.nan, value)
        return ToyState(state.step + 1, value), {
            "outer_loss": value,
            "target_acc": value,
            "inner_loss": value,
        }

    def probe(self, state, x, y):
        return ToyState(state.step, state.value + 1000.0)


def _start():
    return ToyState(jnp.asarray(0, jnp.int32), jnp.asarray(0.0, jnp.float32))


DATA = (jnp.arange(5, dtype=jnp.float32)[:, None], jnp.zeros(1))


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_start(self, step, state):
        self.calls.append(("start", step))

    def on_step(self, step, state, row):
        self.calls.append(("step", step, row is not None))

    def on_stop(self, step, state, early):
        self.calls.append(("stop", step, early, state is None))


def _guard():
    """The program's guard, not installed (no handlers): what the callbacks read and set."""
    return InterruptGuard("test")


def test_run_steps_from_the_states_step_and_calls_each_callback_in_order():
    recorder = Recorder()
    state = run(ToyDistiller(), _start(), DATA, 4, [recorder], log_every=2)
    assert int(state.step) == 4 and float(state.value) == 0 + 1 + 2 + 3
    assert recorder.calls == [
        ("start", 0),
        ("step", 1, False),
        ("step", 2, True),
        ("step", 3, False),
        ("step", 4, True),
        ("stop", 4, False, False),
    ]
    # resumed at step 4 of 6: only the two remaining steps run
    recorder = Recorder()
    state = run(ToyDistiller(), state, DATA, 6, [recorder], log_every=2)
    assert int(state.step) == 6 and float(state.value) == 6 + 4 + 0
    assert [c[1] for c in recorder.calls if c[0] == "step"] == [5, 6]
    # nothing left to do: start and stop only
    recorder = Recorder()
    assert run(ToyDistiller(), state, DATA, 6, [recorder]) is state
    assert recorder.calls == [("start", 6), ("stop", 6, False, False)]


def test_run_probes_every_tune_every_steps_before_the_step():
    state = run(ToyDistiller(tunes=True), _start(), DATA, 7, [])
    assert float(state.value) == (0 + 1 + 2 + 3 + 4 + 0 + 1) + 3 * 1000.0  # before steps 0, 3, 6


def test_an_interrupt_runs_on_stop_early_with_the_state_then_reraises():
    class Stopper(Callback):
        def on_step(self, step, state, row):
            if step == 2:
                raise KeyboardInterrupt

    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):
        run(ToyDistiller(), _start(), DATA, 5, [Stopper(), recorder])
    assert recorder.calls[-1] == ("stop", 2, True, False)


def test_a_diverged_run_stops_early_without_a_state_to_save(tmp_path):
    guard = _guard()
    checkpointer = Checkpointer(tmp_path, 1, 5, lambda step: {"step": step}, guard=guard)
    recorder = Recorder()
    with pytest.raises(RunFailed, match="diverged at step 3: inner_loss = nan, outer_loss = nan"):
        run(
            ToyDistiller(fail_at=3),
            _start(),
            DATA,
            5,
            [History(), checkpointer, recorder],
            log_every=1,
        )
    assert recorder.calls[-1] == ("stop", 3, True, True)
    assert checkpointer.last_saved == 2  # the step-3 state was never written
    assert read_checkpoint_meta(tmp_path)["step"] == 2


def test_history_rows_carry_step_and_run_seconds_and_reach_on_log():
    seen = []
    history = History(
        [{"step": 2, "seconds": 10.0}],
        seconds_before=10.0,
        on_log=lambda step, row: seen.append(step),
    )
    history.on_step(3, None, None)  # not a logging step
    history.on_step(4, None, {"outer_loss": 1.0})
    assert [r["step"] for r in history.rows] == [2, 4]
    assert history.rows[-1]["seconds"] >= 10.0 and seen == [4]
    with pytest.raises(RunFailed, match="diverged at step 5: outer_loss = inf"):
        history.on_step(5, None, {"outer_loss": float("inf")})


def test_checkpointer_writes_every_n_at_the_end_and_on_an_early_stop(tmp_path):
    guard = _guard()
    records = []

    def record(step):
        records.append(step)
        return {"step": step}

    checkpointer = Checkpointer(tmp_path, 3, 7, record, guard=guard)
    state = _start()
    for step in range(1, 8):
        state = ToyState(jnp.asarray(step, jnp.int32), jnp.asarray(float(step)))
        checkpointer.on_step(step, state, None)
    assert records == [3, 6, 7] and checkpointer.last_saved == 7
    assert guard._unsaved is False  # told the run holds nothing unsaved
    loaded, meta = load_checkpoint(tmp_path, _start())
    assert int(loaded.step) == 7 and meta["step"] == 7
    checkpointer.on_stop(7, state, True)  # already saved: no second write
    assert records == [3, 6, 7]
    checkpointer.on_step(8, ToyState(jnp.asarray(8, jnp.int32), jnp.asarray(8.0)), None)
    assert guard._unsaved is True
    checkpointer.on_stop(8, None, True)  # nothing to save (lost or diverged)
    assert records == [3, 6, 7]
    checkpointer.on_stop(8, ToyState(jnp.asarray(8, jnp.int32), jnp.asarray(8.0)), True)
    assert records == [3, 6, 7, 8] and guard._unsaved is False


def test_snapshots_keep_the_result_at_the_listed_steps_with_the_time():
    snapshots = Snapshots({0, 2}, lambda st: SupportSet(st.value, st.value, st.value * 10), t0=0.0)
    snapshots.on_start(0, _start())
    for step in (1, 2, 3):
        snapshots.on_step(step, ToyState(jnp.asarray(step), jnp.asarray(float(step))), None)
    assert [s.step for s in snapshots.taken] == [0, 2]
    assert [float(s.support.log_temperature) for s in snapshots.taken] == [0.0, 20.0]
    assert all(s.seconds > 0 for s in snapshots.taken)
    with pytest.raises(ValueError, match="snapshot_steps must be integers >= 0"):
        Snapshots({-1, 2}, lambda state: state)


def test_signal_stop_raises_after_the_step_in_which_a_signal_arrived():
    guard = _guard()
    stop = SignalStop(guard)
    stop.on_step(1, None, None)  # no signal: nothing
    guard._signal = 15  # what the guard's watcher records when SIGTERM arrives mid-step
    with pytest.raises(Interrupted):
        stop.on_step(2, None, None)


def test_progress_bar_counts_steps_and_shows_the_losses():
    out = io.StringIO()
    bar = ProgressBar(4, "toy", file=out)
    bar.on_start(1, None)
    bar.on_step(2, None, {"outer_loss": 0.5, "target_acc": 0.25, "inner_loss": 3.0})
    assert bar.bar.n == 2
    bar.on_stop(2, None, False)
    text = out.getvalue()
    assert "toy" in text and "outer=0.500" in text and "acc=0.25" in text
    assert np.isfinite(bar.bar.n)
