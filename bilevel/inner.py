"""Inner solvers: minimise an inner loss, and a one-call differentiable ``argmin``.

:class:`OptaxMinimizer` runs an optax optimizer for a fixed number of steps inside
``lax.scan`` (or ``lax.while_loop`` when a gradient-norm tolerance is given), so its memory does
not grow with the step count. :func:`argmin` wraps it with :func:`bilevel.custom_root` so that
the minimiser is differentiable in the loss's extra arguments by implicit differentiation.
:func:`unrolled_argmin` instead differentiates through the iterations, for comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from bilevel.implicit_diff import custom_root
from bilevel.linear_solve import CG
from bilevel.optax_util import optax_step
from bilevel.tree_math import tree_norm

PyTree = Any
LossFn = Callable[..., jax.Array]


class InnerInfo(NamedTuple):
    """Diagnostics of an inner solve.

    Attributes:
        grad_norm: norm of the inner gradient at the returned point.
        loss: inner loss at the returned point.
        steps: number of optimizer steps taken.
        loss_trace: the loss before each step, ``(max_steps,)``; NaN for steps not taken.
            A trace that does not decrease shows a learning rate that is too high.
    """

    grad_norm: jax.Array
    loss: jax.Array
    steps: jax.Array
    loss_trace: jax.Array


class OptaxMinimizer(eqx.Module):
    """Minimise ``loss_fn(params, *args)`` over ``params`` with an optax optimizer.

    Args:
        optimizer: any ``optax.GradientTransformation`` (e.g. ``optax.adam(1e-2)``).
        steps: maximum number of steps (RCIG's ``n_inner``).
        tol: stop early once the inner gradient norm is ``<= tol`` (uses ``lax.while_loop``, which
            cannot be reverse-differentiated; fine under :func:`argmin`, which never does).
        unroll: passed to ``lax.scan`` (``True``: unroll fully). XLA on CPU runs some kernels
            (convolution weight gradients) much slower inside loops than in straight-line code;
            unrolling a short loop avoids that at the cost of compile time. Ignored with ``tol``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> minimizer = OptaxMinimizer(optax.sgd(0.1), steps=200)
        >>> w, info = minimizer(lambda w, c: jnp.sum((w - c) ** 2), jnp.zeros(2), 3.0)
        >>> [round(float(v), 4) for v in w], int(info.steps)
        ([3.0, 3.0], 200)
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    tol: float | None = eqx.field(default=None, static=True)
    unroll: int | bool = eqx.field(default=1, static=True)

    def __check_init__(self):
        if not isinstance(self.optimizer, optax.GradientTransformation):
            raise ValueError(
                "OptaxMinimizer: `optimizer` must be an optax.GradientTransformation, "
                f"got {type(self.optimizer).__name__}."
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(
                f"OptaxMinimizer: `steps` must be a non-negative integer, got {self.steps!r}."
            )
        if self.tol is not None and (not isinstance(self.tol, (int, float)) or self.tol < 0):
            raise ValueError(
                f"OptaxMinimizer: `tol` must be a non-negative number or None, got {self.tol!r}."
            )

    def __call__(
        self, loss_fn: LossFn, init_params: PyTree, *args: Any
    ) -> tuple[PyTree, InnerInfo]:
        """Run the optimizer from ``init_params`` (a warm start); return ``(params, info)``."""
        value_and_grad = jax.value_and_grad(loss_fn)

        def update(params, opt_state, grads):
            return optax_step(self.optimizer, grads, opt_state, params)

        opt_state = self.optimizer.init(init_params)
        if self.tol is None:

            def body(carry, _):
                params, opt_state = carry
                loss, grads = value_and_grad(params, *args)
                return update(params, opt_state, grads), loss

            (params, _), trace = jax.lax.scan(
                body, (init_params, opt_state), None, length=self.steps, unroll=self.unroll
            )
            steps = jnp.asarray(self.steps)
        else:
            # The loss and gradient at the current point decide whether to stop and drive the
            # update, so each step costs one gradient evaluation, as in the fixed-step branch.
            loss0, grads0 = value_and_grad(init_params, *args)
            dtype = jnp.result_type(loss0)
            trace0 = jnp.full((self.steps,), jnp.nan, dtype)
            tol = self.tol  # narrowed to float here; the closure below would not see that

            def cond(carry):
                _, _, k, _, grads, _ = carry
                return (k < self.steps) & (tree_norm(grads) > tol)

            def body_while(carry):
                params, opt_state, k, loss, grads, trace = carry
                trace = trace.at[k].set(loss)
                params, opt_state = update(params, opt_state, grads)
                loss, grads = value_and_grad(params, *args)
                return params, opt_state, k + 1, loss, grads, trace

            params, _, steps, _, _, trace = jax.lax.while_loop(
                cond, body_while, (init_params, opt_state, jnp.asarray(0), loss0, grads0, trace0)
            )
        loss, grads = value_and_grad(params, *args)
        return params, InnerInfo(tree_norm(grads), loss, steps, trace)


def argmin(
    loss_fn: LossFn,
    init_params: PyTree,
    *args: Any,
    minimizer: OptaxMinimizer,
    solve: Callable[..., PyTree] | None = None,
) -> tuple[PyTree, InnerInfo]:
    """Differentiable ``argmin_params loss_fn(params, *args)``, gradients by implicit diff.

    The result is differentiable with respect to ``args`` (the hyperparameters) under ``grad``,
    ``jit`` and ``vmap``; the backward pass solves one linear system with ``solve`` using
    Hessian-vector products of ``loss_fn`` and never differentiates through the iterations.

    Args:
        loss_fn: the inner loss ``loss_fn(params, *args) -> scalar``.
        init_params: the starting point (a warm start if you have one); gets no gradient.
        *args: hyperparameters and data.
        minimizer: the inner solver.
        solve: the linear solver for the backward pass (default :class:`bilevel.CG`).

    Returns:
        ``(params, info)``; ``info`` (an :class:`InnerInfo`) gets no gradient.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> def loss(w, lam):
        ...     return 0.5 * jnp.sum((w - 1.0) ** 2) + 0.5 * lam * jnp.sum(w**2)
        >>> m = OptaxMinimizer(optax.sgd(0.3), steps=100)
        >>> g = jax.grad(lambda lam: argmin(loss, jnp.zeros(3), lam, minimizer=m)[0].sum())(1.0)
        >>> round(float(g), 4)  # d/dλ of 3 / (1 + λ) at λ = 1
        -0.75
    """
    if not isinstance(minimizer, OptaxMinimizer):
        raise ValueError(
            f"argmin: `minimizer` must be a bilevel.OptaxMinimizer, got {type(minimizer).__name__}."
        )

    @custom_root(jax.grad(loss_fn), solve=CG() if solve is None else solve, has_aux=True)
    def solver(params, *hyper):
        return minimizer(loss_fn, params, *hyper)

    return solver(init_params, *args)


def unrolled_argmin(
    loss_fn: LossFn,
    init_params: PyTree,
    *args: Any,
    optimizer: optax.GradientTransformation,
    steps: int,
    checkpoint: bool = False,
) -> PyTree:
    """``steps`` optimizer steps, differentiated by backpropagating through every iteration.

    The classical (unrolled) hypergradient, for comparison with :func:`argmin`: its memory grows
    linearly with ``steps`` unless ``checkpoint=True`` (rematerialise each step on the way back).

    Args:
        loss_fn: the inner loss ``loss_fn(params, *args) -> scalar``.
        init_params: starting point (differentiable too, unlike :func:`argmin`).
        *args: hyperparameters and data.
        optimizer: the optax optimizer.
        steps: number of steps.
        checkpoint: wrap each step in ``jax.checkpoint``.

    Returns:
        The parameters after ``steps`` steps.
    """
    grad = jax.grad(loss_fn)

    def body(carry, _):
        params, opt_state = carry
        return optax_step(optimizer, grad(params, *args), opt_state, params), None

    if checkpoint:
        body = jax.checkpoint(body)
    (params, _), _ = jax.lax.scan(
        body, (init_params, optimizer.init(init_params)), None, length=steps
    )
    return params


def ridge_solution(
    features: jax.Array, targets: jax.Array, strength: jax.Array | float
) -> jax.Array:
    """Closed-form ridge regression ``argmin_w ½||X w - y||² + ½ Σ_j λ_j w_j²``.

    Args:
        features: ``X`` of shape ``(n, d)``.
        targets: ``y`` of shape ``(n,)`` or ``(n, k)``.
        strength: ``λ``, a scalar or a ``(d,)`` vector of per-feature strengths.

    Returns:
        ``w = (XᵀX + diag(λ))⁻¹ Xᵀ y``, differentiable in all inputs.
    """
    d = features.shape[1]
    lam = jnp.broadcast_to(jnp.asarray(strength, features.dtype), (d,))
    gram = features.T @ features + jnp.diag(lam)
    return jnp.linalg.solve(gram, features.T @ targets)
