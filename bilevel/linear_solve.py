"""Linear solvers for ``A x = b`` with ``A`` symmetric positive (semi)definite, given as a matvec.

Every solver is an immutable :class:`equinox.Module` holding its options, validated when it is
built, and is called as ``solver(matvec, b) -> x``. That is exactly the ``solve=`` signature of
``jaxopt.implicit_diff.custom_root``, so these objects plug into jaxopt and jaxopt's ``solve_*``
functions plug into :func:`bilevel.custom_root`.

``b`` and ``x`` are pytrees of arrays with the same structure (for instance a model's parameters).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from bilevel.optax_util import optax_step
from bilevel.tree_math import (
    tree_axpy,
    tree_norm,
    tree_scale,
    tree_sub,
    tree_vdot,
    tree_zeros_like,
)

PyTree = Any
Matvec = Callable[[PyTree], PyTree]


class LinearSolution(NamedTuple):
    """A solve's result: the solution ``value`` and its ``relative_residual``."""

    value: PyTree
    relative_residual: jax.Array


def relative_residual(matvec: Matvec, b: PyTree, x: PyTree) -> jax.Array:
    """``||A x - b|| / ||b||`` (``||A x||`` when ``b`` is zero), for spotting a bad solve.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.array([[2.0, 0.0], [0.0, 4.0]])
        >>> float(relative_residual(lambda v: A @ v, jnp.ones(2), jnp.array([0.5, 0.25])))
        0.0
    """
    r = tree_norm(tree_sub(matvec(x), b))
    nb = tree_norm(b)
    return jnp.where(nb > 0, r / jnp.where(nb > 0, nb, 1.0), r)


class AbstractLinearSolver(eqx.Module):
    """Interface shared by all linear solvers: ``solver(matvec, b) -> x``.

    Subclasses implement :meth:`__call__`. :meth:`solve` additionally reports the relative
    residual ``||A x - b|| / ||b||`` at the returned point (one extra matvec).
    """

    @abc.abstractmethod
    def __call__(self, matvec: Matvec, b: PyTree) -> PyTree:
        """Return ``x`` with ``matvec(x) ≈ b``."""

    def solve(self, matvec: Matvec, b: PyTree) -> LinearSolution:
        """Solve and report the relative residual of the returned point."""
        x = self(matvec, b)
        return LinearSolution(x, relative_residual(matvec, b, x))


def _check_nonnegative(name: str, value: float, cls: str) -> None:
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{cls}: `{name}` must be a non-negative number, got {value!r}.")


def _check_positive_int(name: str, value: int, cls: str, allow_zero: bool = False) -> None:
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        what = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{cls}: `{name}` must be {what} integer, got {value!r}.")


def _with_ridge(matvec: Matvec, ridge: float) -> Matvec:
    if ridge == 0:
        return matvec
    return lambda v: tree_axpy(ridge, v, matvec(v))


class CG(AbstractLinearSolver):
    """Conjugate gradient, on :func:`jax.scipy.sparse.linalg.cg`.

    Args:
        rtol: stop when ``||A x - b|| <= max(rtol * ||b||, atol)``.
        atol: absolute tolerance on the residual norm.
        maxiter: maximum number of iterations (``None``: 10 × the number of unknowns, as scipy).
        ridge: solve ``(A + ridge·I) x = b`` instead; makes a PSD ``A`` definite.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
        >>> x = CG(rtol=1e-6)(lambda v: A @ v, jnp.array([1.0, 0.0]))
        >>> [round(float(v), 4) for v in x]  # A⁻¹ b = [2, -1] / 5
        [0.4, -0.2]
    """

    rtol: float = eqx.field(default=1e-6, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    maxiter: int | None = eqx.field(default=None, static=True)
    ridge: float = eqx.field(default=0.0, static=True)

    def __check_init__(self):
        _check_nonnegative("rtol", self.rtol, "CG")
        _check_nonnegative("atol", self.atol, "CG")
        _check_nonnegative("ridge", self.ridge, "CG")
        if self.maxiter is not None:
            _check_positive_int("maxiter", self.maxiter, "CG")

    def __call__(self, matvec: Matvec, b: PyTree) -> PyTree:
        x, _ = jax.scipy.sparse.linalg.cg(
            _with_ridge(matvec, self.ridge), b, tol=self.rtol, atol=self.atol, maxiter=self.maxiter
        )
        return x


class Neumann(AbstractLinearSolver):
    """Truncated Neumann series ``x = a · Σ_{k=0}^{steps} (I - a A)^k b``.

    Converges when ``0 < a < 2 / λ_max(A)``, at rate ``1 - a·λ_min``. With ``step_size=None`` the
    step is ``a = 1 / λ_max`` with ``λ_max`` estimated by ``power_iterations`` rounds of power
    iteration (from a fixed pseudo-random start, so results are reproducible).

    Args:
        steps: number of terms after the first.
        step_size: the scale ``a``; ``None`` to estimate it.
        power_iterations: rounds of power iteration used when ``step_size`` is ``None``.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.diag(jnp.array([1.0, 2.0]))
        >>> x = Neumann(steps=200)(lambda v: A @ v, jnp.ones(2))
        >>> [round(float(v), 4) for v in x]
        [1.0, 0.5]
    """

    steps: int = eqx.field(default=100, static=True)
    step_size: float | None = eqx.field(default=None, static=True)
    power_iterations: int = eqx.field(default=20, static=True)

    def __check_init__(self):
        _check_positive_int("steps", self.steps, "Neumann", allow_zero=True)
        _check_positive_int("power_iterations", self.power_iterations, "Neumann")
        if self.step_size is not None and (
            not isinstance(self.step_size, (int, float)) or self.step_size <= 0
        ):
            raise ValueError(
                f"Neumann: `step_size` must be a positive number or None, got {self.step_size!r}."
            )

    def __call__(self, matvec: Matvec, b: PyTree) -> PyTree:
        a: jax.Array | float
        if self.step_size is None:
            a = 1.0 / largest_eigenvalue(matvec, b, self.power_iterations)
        else:
            a = self.step_size

        def body(_, carry):
            term, x = carry
            term = tree_sub(term, tree_scale(a, matvec(term)))  # (I - aA)^k b
            return term, tree_axpy(a, term, x)

        _, x = jax.lax.fori_loop(0, self.steps, body, (b, tree_scale(a, b)))
        return x


def largest_eigenvalue(matvec: Matvec, like: PyTree, iterations: int = 20) -> jax.Array:
    """Estimate ``λ_max`` of a symmetric PSD operator by power iteration.

    Args:
        matvec: the operator.
        like: a pytree with the operator's input structure (only shapes and dtypes are used).
        iterations: number of power-iteration rounds.

    Returns:
        The Rayleigh quotient of the last iterate (a lower bound on ``λ_max``).
    """
    flat, unravel = ravel_pytree(like)
    # A fixed start keeps solves reproducible; a random direction avoids being orthogonal to
    # the top eigenvector, which the right-hand side itself can be.
    v0 = jax.random.normal(jax.random.key(0), flat.shape, flat.dtype)
    v0 = unravel(v0 / jnp.linalg.norm(v0))

    def body(_, v):
        w = matvec(v)
        return tree_scale(1.0 / jnp.maximum(tree_norm(w), jnp.finfo(flat.dtype).tiny), w)

    v = jax.lax.fori_loop(0, iterations, body, v0)
    return tree_vdot(v, matvec(v))


class AdamQuadratic(AbstractLinearSolver):
    """RCIG's Eq. 7: minimise ``½ xᵀ A x - bᵀ x`` (gradient ``A x - b``) with an optax optimizer.

    The minimiser of the quadratic is ``A⁻¹ b``. Each step costs one matvec. Because the solve is
    linear in ``b``, it is run on ``b / ||b||`` and rescaled (``normalize=True``), so that the
    learning rate does not depend on the size of ``b``.

    Args:
        steps: number of optimizer steps (RCIG's ``n_H``).
        learning_rate: learning rate of the default optimizer, Adam (a number, or a jax array
            so that it can change between calls of a jitted function without recompiling).
        optimizer: any ``optax.GradientTransformation``; overrides ``learning_rate``.
        normalize: solve for ``b / ||b||`` and rescale.
        unroll: passed to ``lax.scan`` (``True``: unroll fully; faster on CPU for short solves
            of convolutional networks, see :class:`bilevel.OptaxMinimizer`).

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.diag(jnp.array([1.0, 2.0]))
        >>> x = AdamQuadratic(steps=500)(lambda v: A @ v, jnp.ones(2))
        >>> [round(float(v), 2) for v in x]  # a fixed budget of Adam steps: approximate
        [1.0, 0.5]
    """

    steps: int = eqx.field(default=200, static=True)
    learning_rate: float | jax.Array = 0.02
    optimizer: optax.GradientTransformation | None = eqx.field(default=None, static=True)
    normalize: bool = eqx.field(default=True, static=True)
    unroll: int | bool = eqx.field(default=1, static=True)

    def __check_init__(self):
        _check_positive_int("steps", self.steps, "AdamQuadratic", allow_zero=True)
        lr = self.learning_rate
        if not isinstance(lr, jax.Array) and (
            isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0
        ):
            raise ValueError(
                f"AdamQuadratic: `learning_rate` must be a positive number, "
                f"got {self.learning_rate!r}."
            )
        if self.optimizer is not None and not isinstance(
            self.optimizer, optax.GradientTransformation
        ):
            raise ValueError(
                "AdamQuadratic: `optimizer` must be an optax.GradientTransformation or None, "
                f"got {type(self.optimizer).__name__}."
            )

    def __call__(self, matvec: Matvec, b: PyTree, init: PyTree | None = None) -> PyTree:
        """Solve; ``init`` is an optional warm start (in the units of ``x``)."""
        return self.solve_with_trace(matvec, b, init)[0]

    def solve_with_trace(
        self, matvec: Matvec, b: PyTree, init: PyTree | None = None
    ) -> tuple[PyTree, jax.Array]:
        """Solve and return the quadratic objective ``½xᵀAx − bᵀx`` along the way.

        Returns:
            ``(x, trace)``; ``trace`` has ``steps + 1`` entries, the objective (in the units of
            the normalised problem) before each step and at the returned point. A trace that is
            not decreasing shows a learning rate that is too high (RCIG tunes it from this).
        """
        opt = self.optimizer if self.optimizer is not None else optax.adam(self.learning_rate)
        if self.normalize:
            nb = tree_norm(b)
            scale = jnp.where(nb > 0, nb, 1.0)
        else:
            scale = jnp.asarray(1.0)
        b_unit = tree_scale(1.0 / scale, b)
        x0 = tree_zeros_like(b) if init is None else tree_scale(1.0 / scale, init)

        def objective_and_grad(x):
            ax = matvec(x)
            return 0.5 * tree_vdot(x, ax) - tree_vdot(b_unit, x), tree_sub(ax, b_unit)

        def step(carry, _):
            x, state = carry
            value, grad = objective_and_grad(x)
            return optax_step(opt, grad, state, x), value

        (x, _), trace = jax.lax.scan(
            step, (x0, opt.init(x0)), None, length=self.steps, unroll=self.unroll
        )
        final, _ = objective_and_grad(x)
        return tree_scale(scale, x), jnp.append(trace, final)


class Dense(AbstractLinearSolver):
    """Materialise ``A`` (one matvec per unknown) and solve exactly with LU.

    For small problems and as a test oracle: cost is ``O(n)`` matvecs plus ``O(n³)``.

    Args:
        ridge: solve ``(A + ridge·I) x = b`` instead.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
        >>> x = Dense()(lambda v: A @ v, jnp.array([1.0, 0.0]))
        >>> [round(float(v), 4) for v in x]
        [0.4, -0.2]
    """

    ridge: float = eqx.field(default=0.0, static=True)

    def __check_init__(self):
        _check_nonnegative("ridge", self.ridge, "Dense")

    def __call__(self, matvec: Matvec, b: PyTree) -> PyTree:
        flat_b, unravel = ravel_pytree(b)
        matrix = materialize(_with_ridge(matvec, self.ridge), b)
        return unravel(jnp.linalg.solve(matrix, flat_b))


def materialize(matvec: Matvec, like: PyTree) -> jax.Array:
    """The dense matrix of a linear operator on pytrees shaped like ``like`` (flattened order).

    Args:
        matvec: the linear operator.
        like: a pytree giving the input structure.

    Returns:
        An ``(n, n)`` array with ``n`` the total number of elements of ``like``.
    """
    flat, unravel = ravel_pytree(like)

    def column(e):
        return ravel_pytree(matvec(unravel(e)))[0]

    return jax.vmap(column, out_axes=1)(jnp.eye(flat.size, dtype=flat.dtype))
