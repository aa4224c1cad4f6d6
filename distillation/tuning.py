"""Automatic tuning of the inner and Hessian-inverse learning rates (RCIG, Section 4).

The rule of the paper: keep each learning rate as high as keeps its loss decreasing — raise it
while the loss trace of a solve decreases monotonically, cut it by 10% when the solve diverges
(its last loss is above its first, or not finite). The traces come from a *probe*: the inner
solve (``OptaxMinimizer``'s ``loss_trace``) and the Hessian-inverse solve (``AdamQuadratic``'s
objective trace, ``½vᵀHv − gᵀv``) rerun on the current meta-step's problem. The probe runs every
``every`` iterations as its own compiled function (:func:`distillation.distill.make_tune_step`),
compiled once, so tuning never recompiles the step.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

import bilevel
from distillation.algorithms import Algorithm, LearningRates


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
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise ValueError(
                f"LearningRateTuner: `every` must be an integer >= 0, got {self.every!r}."
            )
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
        self, algorithm: Algorithm, net, x_s, y_s, l2, x_t, y_t, log_temperature, lrs: LearningRates
    ) -> LearningRates:
        """Rerun the inner and Hessian-inverse solves with traces and adjust both rates."""
        head = algorithm.head
        delta, info, _ = algorithm.minimizer(lrs.inner)(
            head.inner_loss, head.init(net), net, x_s, y_s, l2
        )
        inner_trace = jnp.append(info.loss_trace, info.loss)
        inner = self.adjust(lrs.inner, inner_trace) if algorithm.n_inner > 0 else lrs.inner
        hessian = lrs.hessian
        if algorithm.linear_solver is None and algorithm.n_hessian > 0:
            g = jax.grad(
                lambda d: algorithm.outer_loss(
                    head.predict(d, net, x_s, y_s, l2, x_t), y_t, log_temperature
                )
            )(delta)

            def matvec(v):
                return bilevel.hvp(head.inner_loss, delta, v, net, x_s, y_s, l2)

            _, trace = algorithm.hessian_solver(lrs.hessian).solve_with_trace(matvec, g)
            hessian = self.adjust(lrs.hessian, trace)
        return LearningRates(inner, hessian)
