"""Automatic tuning of the inner and Hessian-inverse learning rates (RCIG, Section 4).

Two procedures:

* The released code's (the default, ``DistillConfig.lr_tuning="released"``): a *pre-round*
  before training (:func:`released_preround`: the inner rate starts at 1e-5 and is raised ×1.2
  while a probe's 20-step inner solve decreases at every step, then ×0.7; the Hessian-inverse
  rate the same way from 5e-5; ``distill_dataset.py``), then a *schedule* during training
  (:func:`released_schedule`: every 50 iterations the inner rate is cut ×0.9 when at least 29 %
  of the inner solves since the last change ended above their start, raised ×1.05 when at least
  70 % decreased at every step; the Hessian-inverse rate stays; ``run_rcig``). Each solve is
  classified by :func:`classify_trace` exactly as ``run_rcig`` does.
* The paper's text (``lr_tuning="probe"``, :class:`LearningRateTuner`): keep each learning
  rate as high as keeps its loss decreasing — raise it while the loss trace of a solve
  decreases monotonically, cut it by 10% when the solve diverges (its last loss is above its
  first, or not finite). The traces come from a *probe*: the inner solve (``OptaxMinimizer``'s
  ``loss_trace``) and the Hessian-inverse solve (``AdamQuadratic``'s objective trace,
  ``½vᵀHv − gᵀv``) rerun on the current meta-step's problem. The probe runs every ``every``
  iterations as its own compiled function (:func:`distillation._distill.make_tune_step`),
  compiled once, so tuning never recompiles the step.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

import bilevel
from distillation._algorithms import Algorithm
from distillation._checks import check_int
from distillation._objectives import InnerProblem


def classify_trace(trace: Array) -> Array:
    """``1`` when the losses ``trace`` (before each step) decrease at every step, else ``-1``
    when the last is above the first, else ``0`` (``run_rcig``'s ``inner_lr_stats``); ``0``
    for an empty trace."""
    if trace.shape[0] == 0:
        return jnp.asarray(0, jnp.int32)
    monotone = jnp.all(trace[:-1] > trace[1:])
    failed = trace[-1] > trace[0]
    return jnp.where(monotone, 1, jnp.where(failed, -1, 0)).astype(jnp.int32)


def released_schedule(
    inner_lr: Array,
    stats: Array,
    step: Array,
    every: int = 50,
    fail_fraction: float = 0.29,
    monotone_fraction: float = 0.7,
    decrease: float = 0.9,
    increase: float = 1.05,
) -> tuple[Array, Array]:
    """The released code's in-training rule for the inner learning rate.

    Args:
        inner_lr: the current inner learning rate.
        stats: counts ``(failed, monotone, all)`` of the inner solves since the last change,
            this iteration's included.
        step: this iteration's index (0-based); the rule runs when it is a positive multiple
            of ``every`` (so the first window holds ``every + 1`` solves, as in ``run_rcig``).

    Returns:
        The inner learning rate and the counts (reset when the rule ran).
    """
    due = (step % every == 0) & (step > 0)
    total = jnp.maximum(stats[2], 1).astype(jnp.float32)
    cut = stats[0].astype(jnp.float32) / total >= fail_fraction
    grow = stats[1].astype(jnp.float32) / total >= monotone_fraction
    factor = jnp.where(cut, decrease, jnp.where(grow, increase, 1.0))
    inner = jnp.where(due, inner_lr * factor, inner_lr).astype(inner_lr.dtype)
    return inner, jnp.where(due, jnp.zeros_like(stats), stats)


def released_preround(
    probe: Callable[[Algorithm, int], tuple[int, int]],
    algorithm: Algorithm,
    increase: float = 1.2,
    final: float = 0.7,
    max_probes: int = 200,
    inner_probe: Callable[[Algorithm, int], int] | None = None,
) -> tuple[Algorithm, int]:
    """The released code's learning-rate pre-round (``distill_dataset.py``).

    Args:
        probe: ``(algorithm, call index) -> (inner class, Hessian-inverse class)`` of one
            meta-step's solves with that algorithm's rates (:func:`classify_trace`).
        algorithm: with the starting rates (the released code's 1e-5 and 5e-5).
        max_probes: a bound on each of the two loops (the released code has none; a rate that
            never stops being monotone would loop for ever).
        inner_probe: ``(algorithm, call index) -> inner class``, used instead of ``probe``
            while the inner rate is tuned, when given. That loop reads only the inner class, so
            a probe that skips the Hessian-inverse solve (and the target batch its right-hand
            side needs) gives the same rates for less work.

    Returns:
        The algorithm with the tuned rates (replaced leaves) and the number of probes run.
    """
    calls = 0

    def raise_while_monotone(rate: Array, which: int, rates) -> Array:
        # float32 arithmetic, as the rates are float32 leaves.
        nonlocal calls
        for _ in range(max_probes):
            candidate = algorithm.with_learning_rates(*rates(rate))
            if which == 0 and inner_probe is not None:
                monotone = inner_probe(candidate, calls) == 1
            else:
                monotone = probe(candidate, calls)[which] == 1
            calls += 1
            rate = rate * increase
            if not monotone:
                break
        return rate * final

    inner, hessian = algorithm.inner_lr, algorithm.hessian_lr
    if algorithm.n_inner > 0:
        inner = raise_while_monotone(inner, 0, lambda r: (r, hessian))
    if hessian is not None:
        hessian = raise_while_monotone(hessian, 1, lambda r: (inner, r))
    return algorithm.with_learning_rates(inner, hessian), calls


def solve_traces(
    algorithm: Algorithm,
    problem: InnerProblem,
    x_t,
    y_t,
    log_temperature,
    hessian: bool = True,
) -> tuple[Array, Array]:
    """The loss traces of one meta-step's inner solve and Hessian-inverse solve (the quadratic)
    with ``algorithm``'s rates: the values before each step and at the returned point
    (``steps + 1`` entries each; the Hessian one empty when there is no tuned
    ``AdamQuadratic``, or when ``hessian`` is false: then neither that solve nor the target
    batch it needs is computed)."""
    head = algorithm.final_layer
    delta, info, _ = algorithm.inner_solver(head.inner_loss, head.init(problem.network), problem)
    inner_trace = jnp.append(info.loss_trace, info.loss)
    hessian_trace = jnp.zeros((0,), jnp.float32)
    solver = algorithm.tuned_hessian_solver
    if hessian and solver is not None:
        g = jax.grad(
            lambda d: algorithm.outer_loss(head.predict(d, problem, x_t), y_t, log_temperature)
        )(delta)

        def matvec(v):
            return bilevel.hvp(head.inner_loss, delta, v, problem)

        _, hessian_trace = solver.solve_with_trace(matvec, g)
    return inner_trace, hessian_trace


class LearningRateTuner(eqx.Module):
    """Adjust a learning rate from the loss trace of a solve that used it.

    Args:
        every: probe every this many meta-iterations (0 disables tuning).
        increase: factor applied while the trace decreases monotonically.
        decrease: factor applied on divergence (the paper's 10% cut).
    """

    every: int = eqx.field(default=10, static=True)
    increase: float = eqx.field(default=1.05, static=True)
    decrease: float = eqx.field(default=0.9, static=True)

    def __check_init__(self):
        check_int("LearningRateTuner", "every", self.every, minimum=0)
        if not self.increase >= 1.0:
            raise ValueError(f"LearningRateTuner: `increase` must be >= 1, got {self.increase!r}.")
        if not 0.0 < self.decrease < 1.0:
            raise ValueError(
                f"LearningRateTuner: `decrease` must be in (0, 1), got {self.decrease!r}."
            )

    def adjust(self, lr: Array, trace: Array) -> Array:
        """The new learning rate given the losses ``trace`` of a solve run with ``lr``."""
        if trace.shape[0] < 2:
            return lr
        diverged = ~jnp.all(jnp.isfinite(trace)) | (trace[-1] > trace[0])
        monotone = jnp.all(jnp.diff(trace) <= 0)
        return jnp.where(diverged, lr * self.decrease, jnp.where(monotone, lr * self.increase, lr))

    def probe(
        self, algorithm: Algorithm, problem: InnerProblem, x_t, y_t, log_temperature
    ) -> Algorithm:
        """Rerun the inner and Hessian-inverse solves with traces; the algorithm with both
        rates adjusted."""
        inner_trace, hessian_trace = solve_traces(algorithm, problem, x_t, y_t, log_temperature)
        inner = algorithm.inner_lr
        if algorithm.n_inner > 0:
            inner = self.adjust(inner, inner_trace)
        hessian = algorithm.hessian_lr
        if hessian is not None and hessian_trace.shape[0] > 0:
            hessian = self.adjust(hessian, hessian_trace)
        return algorithm.with_learning_rates(inner, hessian)
