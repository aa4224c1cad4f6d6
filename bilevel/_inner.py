"""Inner solvers, how to differentiate through them, and one differentiable ``argmin``.

* Inner solvers (one interface, :class:`AbstractMinimizer`): :class:`OptaxMinimizer` (an optax
  optimizer for a fixed number of steps in ``lax.scan``, or until a gradient-norm tolerance in
  ``lax.while_loop``; its learning rate is a pytree leaf), :class:`ClosedFormRidge` (one exact
  Newton step: exact for quadratic losses such as ridge regression), :class:`GradientFixedPoint`
  (damped gradient iteration, a fixed-point iteration ``x ← x − η ∇L(x)``).
* How to differentiate (one interface, :class:`AbstractAdjoint`): :class:`Implicit` (the implicit
  function theorem through :func:`bilevel.custom_root`, memory independent of the step count) or
  :class:`Unrolled` (backpropagate through the iterations, optionally checkpointed).
* :func:`argmin` takes both and returns a :class:`Solution` (value, result code, stats).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from bilevel._implicit_diff import LinearSolve, _check_solve, custom_root
from bilevel._linear_solve import CG, Dense, _check_positive_int
from bilevel._optax import optax_step
from bilevel._results import RESULTS, nonfinite, raise_if_failed
from bilevel._tree_math import tree_norm, tree_sub

PyTree = Any
LossFn = Callable[..., jax.Array]


class InnerInfo(NamedTuple):
    """Diagnostics of an inner solve (no gradient flows through them).

    Attributes:
        grad_norm: norm of the inner gradient at the returned point.
        loss: inner loss at the returned point.
        steps: number of steps taken.
        loss_trace: the loss before each step, ``(max_steps,)``; NaN for steps not taken.
            A trace that does not decrease shows a learning rate that is too high.
    """

    grad_norm: jax.Array
    loss: jax.Array
    steps: jax.Array
    loss_trace: jax.Array


class Solution(NamedTuple):
    """What :func:`argmin` returns (in the spirit of ``optimistix.Solution``).

    Attributes:
        value: the inner solution (differentiable in the hyperparameters).
        result: a :class:`bilevel.RESULTS` code (``int32``; 0 is success).
        stats: an :class:`InnerInfo` (gradient norm, loss, steps, loss trace).
    """

    value: PyTree
    result: jax.Array
    stats: InnerInfo


def _as_code(result: Any) -> jax.Array:
    return jnp.asarray(result, jnp.int32)


def _inner_result(params: PyTree, grad_norm: jax.Array, failed_tol: jax.Array) -> jax.Array:
    return _as_code(
        jnp.where(
            nonfinite(params) | ~jnp.isfinite(grad_norm),
            RESULTS.nonfinite,
            jnp.where(failed_tol, RESULTS.max_steps_reached, RESULTS.successful),
        )
    )


class AbstractMinimizer(eqx.Module):
    """An inner solver: ``minimizer(loss_fn, init_params, *args) -> (params, info, result)``."""

    @abc.abstractmethod
    def __call__(
        self, loss_fn: LossFn, init_params: PyTree, *args: Any
    ) -> tuple[PyTree, InnerInfo, jax.Array]:
        """Minimise ``loss_fn(params, *args)`` from ``init_params``."""


def _check_tol(tol: Any, cls: str) -> None:
    if tol is not None and (
        isinstance(tol, bool)
        or not isinstance(tol, (int, float))
        or not math.isfinite(tol)
        or tol < 0
    ):
        raise ValueError(f"{cls}: `tol` must be a finite non-negative number or None, got {tol!r}.")


class OptaxMinimizer(AbstractMinimizer):
    """Minimise ``loss_fn(params, *args)`` over ``params`` with an optax optimizer.

    Args:
        optimizer: an ``optax.GradientTransformation`` (e.g. ``optax.adam(1e-2)``), or, together
            with ``learning_rate``, a factory ``learning_rate -> GradientTransformation``
            (e.g. ``optax.adam``).
        steps: maximum number of steps (RCIG's ``n_inner``).
        tol: stop early once the inner gradient norm is ``<= tol`` (uses ``lax.while_loop``,
            which cannot be reverse-differentiated: use it with :class:`Implicit`). A solve that
            stops at ``steps`` above ``tol`` reports ``max_steps_reached``.
        unroll: passed to ``lax.scan`` (``True``: unroll fully). XLA on CPU runs some kernels
            (convolution weight gradients) much slower inside loops than in straight-line code;
            unrolling a short loop avoids that at the cost of compile time. Ignored with ``tol``.
        learning_rate: the argument of the ``optimizer`` factory: a pytree leaf (a number or an
            array), so it can be traced, tuned by replacing the leaf (``eqx.tree_at``), and
            changed between calls without recompiling; or a pytree of such leaves for a factory
            that takes more than a rate (e.g. ``(rate, step_count)``).
        step_args: an objective that changes along the solve: a callable pytree (an
            ``eqx.Module``) ``step_args(k, *args) -> args`` giving the arguments of step ``k``'s
            loss and gradient (``k`` from 0, traced); the final loss, gradient norm and the
            implicit adjoint's optimality condition use ``args`` as given. For solvers that
            replay another program's iterations (the released RCIG code moves its
            linearisation point during the inner solve). ``None``: ``args`` at every step. Not
            with ``tol``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> minimizer = OptaxMinimizer(optax.sgd, steps=200, learning_rate=0.1)
        >>> w, info, result = minimizer(lambda w, c: jnp.sum((w - c) ** 2), jnp.zeros(2), 3.0)
        >>> [round(float(v), 4) for v in w], int(info.steps), int(result)
        ([3.0, 3.0], 200, 0)
    """

    optimizer: Any = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    tol: float | None = eqx.field(default=None, static=True)
    unroll: int | bool = eqx.field(default=1, static=True)
    learning_rate: Any = None
    step_args: Any = None

    def __check_init__(self):
        if self.learning_rate is None:
            if not isinstance(self.optimizer, optax.GradientTransformation):
                raise ValueError(
                    "OptaxMinimizer: `optimizer` must be an optax.GradientTransformation (or a "
                    "factory such as optax.adam together with `learning_rate=`), got "
                    f"{type(self.optimizer).__name__}."
                )
        elif isinstance(self.optimizer, optax.GradientTransformation) or not callable(
            self.optimizer
        ):
            raise ValueError(
                "OptaxMinimizer: with `learning_rate=` the `optimizer` must be a factory "
                "learning_rate -> GradientTransformation (e.g. optax.adam), got "
                f"{type(self.optimizer).__name__}."
            )
        _check_positive_int("steps", self.steps, "OptaxMinimizer", allow_zero=True)
        _check_tol(self.tol, "OptaxMinimizer")
        if self.step_args is not None and (self.tol is not None or not callable(self.step_args)):
            raise ValueError(
                "OptaxMinimizer: `step_args` must be a callable (k, *args) -> args, and cannot be "
                f"combined with `tol` (got step_args={type(self.step_args).__name__}, "
                f"tol={self.tol!r})."
            )

    def transformation(self) -> optax.GradientTransformation:
        """The optax optimizer (built from the learning-rate leaf if there is one)."""
        if self.learning_rate is None:
            return self.optimizer
        return self.optimizer(self.learning_rate)

    def __call__(self, loss_fn, init_params, *args):
        optimizer = self.transformation()
        value_and_grad = jax.value_and_grad(loss_fn)

        def update(params, opt_state, grads):
            return optax_step(optimizer, grads, opt_state, params)

        opt_state = optimizer.init(init_params)
        if self.tol is None:

            def body(carry, k):
                params, opt_state = carry
                step_args = args if self.step_args is None else self.step_args(k, *args)
                loss, grads = value_and_grad(params, *step_args)
                return update(params, opt_state, grads), loss

            (params, _), trace = jax.lax.scan(
                body, (init_params, opt_state), jnp.arange(self.steps), unroll=self.unroll
            )
            steps = jnp.asarray(self.steps)
        else:
            tol = self.tol  # bound here: the closure below sees a float, not `float | None`
            # The loss and gradient at the current point decide whether to stop and drive the
            # update, so each step costs one gradient evaluation, as in the fixed-step branch.
            loss0, grads0 = value_and_grad(init_params, *args)
            dtype = jnp.result_type(loss0)
            trace0 = jnp.full((self.steps,), jnp.nan, dtype)

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
        grad_norm = tree_norm(grads)
        failed_tol = jnp.asarray(False) if self.tol is None else grad_norm > self.tol
        info = InnerInfo(grad_norm, loss, steps, trace)
        return params, info, _inner_result(params, grad_norm, failed_tol)


class GradientFixedPoint(AbstractMinimizer):
    """The fixed-point iteration ``x ← x − step_size · ∇L(x)`` (damped gradient descent), until
    ``||∇L|| <= tol`` or ``steps`` iterations.

    Args:
        step_size: the step (a pytree leaf).
        steps: maximum number of iterations.
        tol: gradient-norm tolerance (``None``: run all ``steps``).
    """

    step_size: float | jax.Array
    steps: int = eqx.field(static=True)
    tol: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        _check_positive_int("steps", self.steps, "GradientFixedPoint", allow_zero=True)
        _check_tol(self.tol, "GradientFixedPoint")

    def __call__(self, loss_fn, init_params, *args):
        return OptaxMinimizer(optax.sgd, self.steps, self.tol, learning_rate=self.step_size)(
            loss_fn, init_params, *args
        )


class ClosedFormRidge(AbstractMinimizer):
    """One exact Newton step ``x = x₀ − H⁻¹ ∇L(x₀)``: the minimiser of a quadratic loss (ridge
    regression, a least-squares head) in closed form.

    Args:
        linear_solver: solves ``H d = ∇L(x₀)`` (default :class:`bilevel.Dense`, exact).
        tol: the gradient norm at the result above which the solve is reported as failed
            (the loss was not quadratic, or ``H`` is singular).
    """

    linear_solver: Any = eqx.field(default_factory=Dense, static=True)
    tol: float = eqx.field(default=1e-4, static=True)

    def __check_init__(self):
        if not callable(self.linear_solver):
            raise ValueError(
                f"ClosedFormRidge: `linear_solver` must be callable, got {self.linear_solver!r}."
            )
        _check_tol(self.tol, "ClosedFormRidge")

    def __call__(self, loss_fn, init_params, *args):
        grad = jax.grad(loss_fn)
        g0 = grad(init_params, *args)

        def matvec(v):
            return jax.jvp(lambda p: grad(p, *args), (init_params,), (v,))[1]

        params = tree_sub(init_params, self.linear_solver(matvec, g0))
        loss, g = jax.value_and_grad(loss_fn)(params, *args)
        grad_norm = tree_norm(g)
        scale = jnp.maximum(tree_norm(g0), 1.0)
        info = InnerInfo(
            grad_norm, loss, jnp.asarray(1), jnp.reshape(loss_fn(init_params, *args), (1,))
        )
        return params, info, _inner_result(params, grad_norm, grad_norm > self.tol * scale)


class AbstractAdjoint(eqx.Module):
    """How :func:`argmin` differentiates its result with respect to the hyperparameters."""

    @abc.abstractmethod
    def apply(
        self, minimizer: AbstractMinimizer, loss_fn: LossFn, init_params: PyTree, args: tuple
    ) -> tuple[PyTree, InnerInfo, jax.Array]:
        """Run ``minimizer`` so that its result is differentiable in ``args``."""


class Implicit(AbstractAdjoint):
    """Differentiate by the implicit function theorem (:func:`bilevel.custom_root` on
    ``∇L = 0``, whose Jacobian is the symmetric Hessian).

    Args:
        linear_solver: the linear solve with the Hessian (default :class:`bilevel.CG`).
    """

    linear_solver: Any = eqx.field(default_factory=CG)

    def __check_init__(self):
        _check_solve(self.linear_solver, True, "Implicit")

    def apply(self, minimizer, loss_fn, init_params, args):
        @custom_root(jax.grad(loss_fn), solve=self.linear_solver, has_aux=True, symmetric=True)
        def solver(params, *hyper):
            params, info, result = minimizer(loss_fn, params, *hyper)
            return params, (info, result)

        params, (info, result) = solver(init_params, *args)
        return params, info, result


class Unrolled(AbstractAdjoint):
    """Backpropagate through the inner solver's iterations (memory grows with the step count
    unless ``checkpoint=True``: each step is rematerialised on the way back).

    Args:
        checkpoint: wrap each step in ``jax.checkpoint`` (``OptaxMinimizer`` without ``tol``).
    """

    checkpoint: bool = eqx.field(default=False, static=True)

    def apply(self, minimizer, loss_fn, init_params, args):
        if not self.checkpoint:
            return minimizer(loss_fn, init_params, *args)
        if not isinstance(minimizer, OptaxMinimizer) or minimizer.tol is not None:
            raise ValueError(
                "Unrolled(checkpoint=True) needs an OptaxMinimizer without `tol` (a fixed number "
                f"of steps), got {minimizer!r}."
            )
        optimizer = minimizer.transformation()
        grad = jax.grad(loss_fn)

        @jax.checkpoint
        def body(carry, _):
            params, opt_state = carry
            loss = loss_fn(params, *args)
            return optax_step(optimizer, grad(params, *args), opt_state, params), loss

        (params, _), trace = jax.lax.scan(
            body, (init_params, optimizer.init(init_params)), None, length=minimizer.steps
        )
        loss, g = jax.value_and_grad(loss_fn)(params, *args)
        info = InnerInfo(tree_norm(g), loss, jnp.asarray(minimizer.steps), trace)
        return params, info, _inner_result(params, info.grad_norm, jnp.asarray(False))


def argmin(
    loss_fn: LossFn,
    init_params: PyTree,
    *args: Any,
    minimizer: AbstractMinimizer,
    adjoint: AbstractAdjoint | None = None,
    solve: LinearSolve | None = None,
    throw: bool = True,
) -> Solution:
    """Differentiable ``argmin_params loss_fn(params, *args)``.

    With the default ``adjoint=Implicit()`` the result is differentiable with respect to
    ``args`` (and arrays ``loss_fn`` closes over) by the implicit function theorem, in forward
    and reverse mode and to any order, without differentiating the iterations.

    Args:
        loss_fn: the inner loss ``loss_fn(params, *args) -> scalar``.
        init_params: the starting point (a warm start if you have one); gets no gradient.
        *args: hyperparameters and data.
        minimizer: the inner solver (:class:`OptaxMinimizer`, :class:`ClosedFormRidge`,
            :class:`GradientFixedPoint`).
        adjoint: how to differentiate: :class:`Implicit` (default) or :class:`Unrolled`.
        solve: shorthand for ``adjoint=Implicit(solve)``.
        throw: raise at run time if the inner solve fails (a NaN, or ``tol`` not met within
            ``steps``); ``False``: return the result code in :attr:`Solution.result` instead.

    Returns:
        A :class:`Solution`; its ``stats`` and ``result`` get no gradient.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> def loss(w, lam):
        ...     return 0.5 * jnp.sum((w - 1.0) ** 2) + 0.5 * lam * jnp.sum(w**2)
        >>> m = OptaxMinimizer(optax.sgd(0.3), steps=100)
        >>> g = jax.grad(lambda lam: argmin(loss, jnp.zeros(3), lam, minimizer=m).value.sum())(1.0)
        >>> round(float(g), 4)  # d/dλ of 3 / (1 + λ) at λ = 1
        -0.75
    """
    if not isinstance(minimizer, AbstractMinimizer):
        raise ValueError(
            "argmin: `minimizer` must be a bilevel inner solver (OptaxMinimizer, "
            f"ClosedFormRidge, GradientFixedPoint), got {type(minimizer).__name__}."
        )
    if adjoint is not None and solve is not None:
        raise ValueError("argmin: pass either `adjoint=` or `solve=`, not both.")
    if adjoint is None:
        adjoint = Implicit(CG() if solve is None else solve)
    if not isinstance(adjoint, AbstractAdjoint):
        raise ValueError(
            f"argmin: `adjoint` must be bilevel.Implicit(...) or bilevel.Unrolled(...), got "
            f"{type(adjoint).__name__}."
        )
    if not callable(loss_fn):
        raise ValueError(f"argmin: `loss_fn` must be callable, got {loss_fn!r}.")
    params, info, result = adjoint.apply(minimizer, loss_fn, init_params, args)
    info, result = jax.lax.stop_gradient((info, result))
    if throw:
        params = raise_if_failed(params, result, f"argmin ({type(minimizer).__name__})")
    return Solution(params, result, info)


def unrolled_argmin(
    loss_fn: LossFn,
    init_params: PyTree,
    *args: Any,
    optimizer: optax.GradientTransformation,
    steps: int,
    checkpoint: bool = False,
) -> PyTree:
    """``steps`` optimizer steps, differentiated by backpropagating through every iteration.

    The classical (unrolled) hypergradient, for comparison with :func:`argmin`: shorthand for
    ``argmin(..., minimizer=OptaxMinimizer(optimizer, steps), adjoint=Unrolled(checkpoint))``
    returning the parameters only (differentiable in ``init_params`` too).

    Args:
        loss_fn: the inner loss ``loss_fn(params, *args) -> scalar``.
        init_params: starting point.
        *args: hyperparameters and data.
        optimizer: the optax optimizer.
        steps: number of steps.
        checkpoint: wrap each step in ``jax.checkpoint``.

    Returns:
        The parameters after ``steps`` steps.
    """
    minimizer = OptaxMinimizer(optimizer, steps=steps)
    return Unrolled(checkpoint).apply(minimizer, loss_fn, init_params, args)[0]


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
