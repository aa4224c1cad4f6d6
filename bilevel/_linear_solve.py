"""Linear solvers for ``A x = b``, with ``A`` given only as a matvec.

Every solver is an immutable :class:`equinox.Module` holding its options, validated when it is
built, and is called as ``solver(matvec, b) -> x``. That is exactly the ``solve=`` signature of
``jaxopt.implicit_diff.custom_root``, so these objects plug into jaxopt and jaxopt's ``solve_*``
functions plug into :func:`bilevel.custom_root`.

* For a symmetric positive (semi)definite ``A`` (a Hessian): :class:`CG`, :class:`Neumann`,
  :class:`AdamQuadratic` (their class attribute ``symmetric_only`` is ``True``; ``custom_root``
  refuses them for a problem not declared symmetric).
* For any nonsingular ``A``: :class:`GMRES`, :class:`BiCGStab`, :class:`NormalCG`, :class:`LU`
  (from lineax, the maintained successor of jaxopt's linear solvers) and :class:`Dense`.

``b`` and ``x`` are pytrees of arrays with the same structure (for instance a model's parameters).
Every solver reports its status through :meth:`AbstractLinearSolver.solve`, which returns a
:class:`LinearSolution` (value, result code, relative residual, steps). Called directly, a solver
with ``throw=True`` (the default) raises at run time when the solve fails (non-convergence within
its step budget, a NaN, divergence); with ``throw=False`` it returns whatever it reached.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optax
from jax.flatten_util import ravel_pytree

from bilevel._optax import optax_step
from bilevel._results import RESULTS, nonfinite, raise_if_failed
from bilevel._tree_math import (
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
    """A solve's result.

    Attributes:
        value: the solution ``x``.
        result: a :class:`bilevel.RESULTS` code (``int32``; 0 is success).
        relative_residual: ``||A x - b|| / ||b||`` at ``value``.
        steps: the number of iterations the method took.
    """

    value: PyTree
    result: jax.Array
    relative_residual: jax.Array
    steps: jax.Array


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
    """Interface shared by all linear solvers: ``solver(matvec, b, init=None) -> x``.

    Subclasses implement :meth:`_solve`, returning ``(x, result, steps)``. :meth:`solve`
    adds the relative residual and never raises; :meth:`__call__` returns ``x`` and, with
    ``throw=True``, raises at run time on a failed solve.

    Attributes:
        symmetric_only: the method is only correct for a symmetric (positive definite)
            operator.
    """

    symmetric_only: ClassVar[bool] = False

    @abc.abstractmethod
    def _solve(
        self, matvec: Matvec, b: PyTree, init: PyTree | None
    ) -> tuple[PyTree, jax.Array, jax.Array]:
        """``(x, result code, steps)``."""

    def _throws(self) -> bool:
        return bool(getattr(self, "throw", True))

    def solve(self, matvec: Matvec, b: PyTree, init: PyTree | None = None) -> LinearSolution:
        """Solve and report: a :class:`LinearSolution` (one extra matvec for the residual)."""
        _check_operator(matvec, b, init, type(self).__name__)
        x, result, steps = self._solve(matvec, b, init)
        residual = relative_residual(matvec, b, x)
        result = jnp.where(
            (result == RESULTS.successful) & ~jnp.isfinite(residual), RESULTS.nonfinite, result
        )
        return LinearSolution(x, result, residual, steps)

    def __call__(self, matvec: Matvec, b: PyTree, init: PyTree | None = None) -> PyTree:
        """Return ``x`` with ``matvec(x) ≈ b`` (``init``: a warm start where supported)."""
        _check_operator(matvec, b, init, type(self).__name__)
        x, result, _ = self._solve(matvec, b, init)
        if self._throws():
            x = raise_if_failed(x, result, type(self).__name__)
        return x


def _describe(tree: PyTree) -> str:
    shapes = [tuple(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return f"{jax.tree_util.tree_structure(tree)} with shapes {shapes}"


def _check_operator(matvec: Matvec, b: PyTree, init: PyTree | None, cls: str) -> None:
    """``A x = b`` needs ``matvec`` to map a vector shaped like ``b`` to one shaped like ``b`` (and
    a warm start shaped like ``b``): say so, naming both, instead of an error from inside JAX."""
    like_b = jax.eval_shape(lambda: b)
    out = jax.eval_shape(matvec, b)

    def same(x: PyTree) -> bool:
        if jax.tree_util.tree_structure(x) != jax.tree_util.tree_structure(like_b):  # type: ignore[operator]
            return False
        pairs = zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(like_b), strict=True)
        return all(jnp.shape(u) == jnp.shape(v) for u, v in pairs)

    if not same(out):
        raise ValueError(
            f"{cls}: the operator maps b ({_describe(like_b)}) to {_describe(out)}; a linear "
            "solve needs matvec(v) shaped like v (the same pytree and array shapes)."
        )
    if init is not None and not same(jax.eval_shape(lambda: init)):
        raise ValueError(
            f"{cls}: the warm start init ({_describe(init)}) is not shaped like b "
            f"({_describe(like_b)})."
        )


def _check_finite_nonnegative(name: str, value: Any, cls: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{cls}: `{name}` must be a finite non-negative number, got {value!r}.")


def _check_positive_int(name: str, value: Any, cls: str, allow_zero: bool = False) -> None:
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        what = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{cls}: `{name}` must be {what} integer, got {value!r}.")


def _check_learning_rate(name: str, value: Any, cls: str) -> None:
    if isinstance(value, jax.Array):
        return  # a traced or changing value: checked by the solve's status instead
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{cls}: `{name}` must be a finite positive number, got {value!r}.")


def _with_ridge(matvec: Matvec, ridge: float) -> Matvec:
    if ridge == 0:
        return matvec
    return lambda v: tree_axpy(ridge, v, matvec(v))


def _structure(b: PyTree) -> PyTree:
    return jax.eval_shape(lambda: b)


_LINEAX_RESULT = {
    "successful": RESULTS.successful,
    "max_steps_reached": RESULTS.max_steps_reached,
    "nonfinite_input": RESULTS.nonfinite,
    "singular": RESULTS.breakdown,
    "breakdown": RESULTS.breakdown,
    "stagnation": RESULTS.breakdown,
}


def _from_lineax(result: Any) -> jax.Array:
    """A lineax ``RESULTS`` value as one of our codes."""
    code = jnp.asarray(RESULTS.breakdown, jnp.int32)
    for name, ours in _LINEAX_RESULT.items():
        member = getattr(lx.RESULTS, name, None)
        if member is not None:
            code = jnp.where(result == member, jnp.int32(ours), code)
    return code


class _LineaxSolver(AbstractLinearSolver):
    """Shared machinery: build a lineax operator from the matvec, solve, translate the result."""

    def _lineax_solver(self, tol: jax.Array) -> lx.AbstractLinearSolver:
        """The lineax solver, stopping once ``||A x - b||₂ <= tol`` (lineax's own test scales
        ``rtol`` element by element by ``|b_i|``, which a zero entry of ``b`` makes
        unreachable; passing our 2-norm tolerance as its ``atol`` with ``rtol=0`` avoids it)."""
        raise NotImplementedError

    def _tags(self) -> Any:
        return ()

    def _options(self, b: PyTree, init: PyTree | None) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if init is not None:
            options["y0"] = init
        preconditioner = getattr(self, "preconditioner", None)
        if preconditioner is not None:
            options["preconditioner"] = lx.FunctionLinearOperator(
                preconditioner, _structure(b), tags=self._tags()
            )
        return options

    def _solve(self, matvec, b, init):
        matvec = _with_ridge(matvec, getattr(self, "ridge", 0.0))
        operator = lx.FunctionLinearOperator(matvec, _structure(b), tags=self._tags())
        rtol, atol = getattr(self, "rtol", 0.0), getattr(self, "atol", 0.0)
        tol = atol + rtol * tree_norm(b)
        tol = jnp.where(tol > 0, tol, jnp.finfo(tol.dtype).tiny)  # b = 0: x = 0 at once
        sol = lx.linear_solve(
            operator, b, self._lineax_solver(tol), options=self._options(b, init), throw=False
        )
        steps = jnp.asarray(sol.stats.get("num_steps", 0), jnp.int32)
        result = _from_lineax(sol.result)
        # lineax can flag a breakdown or stagnation once the residual is already (exactly) zero,
        # e.g. for members of a vmapped batch that converged before the others. A solve whose
        # residual meets the tolerance is a success whatever the flag (one extra matvec).
        residual = tree_norm(tree_sub(matvec(sol.value), b))
        met = residual <= tol
        result = jnp.where(met & ~nonfinite(sol.value), RESULTS.successful, result)
        return sol.value, jnp.asarray(result, jnp.int32), steps


def _check_krylov(solver: Any) -> None:
    cls = type(solver).__name__
    _check_finite_nonnegative("rtol", solver.rtol, cls)
    _check_finite_nonnegative("atol", solver.atol, cls)
    if solver.rtol == 0 and solver.atol == 0:
        raise ValueError(
            f"{cls}: at least one of `rtol` and `atol` must be positive, got rtol={solver.rtol!r}, "
            f"atol={solver.atol!r}."
        )
    if solver.max_steps is not None:
        _check_positive_int("max_steps", solver.max_steps, cls)
    if solver.preconditioner is not None and not callable(solver.preconditioner):
        raise ValueError(
            f"{cls}: `preconditioner` must be a callable v -> M v (M ≈ A⁻¹) or None, "
            f"got {type(solver.preconditioner).__name__}."
        )


class CG(AbstractLinearSolver):
    """Conjugate gradient, for a symmetric positive (semi)definite ``A``.

    The textbook (preconditioned) recurrence, written here rather than taken from lineax: lineax's
    CG recomputes the residual with an extra matvec every 10 steps, and its result flags needed
    one more matvec after the solve; this one costs one matvec per step and nothing else (measured
    in ``docs/benchmarks/hypergradient.md``). It stops once the recursively updated residual
    satisfies the tolerance, as ``jax.scipy.sparse.linalg.cg`` does, and reports what it reached.

    Args:
        rtol: stop when ``||A x - b|| <= atol + rtol · ||b||`` (2-norms, over all leaves).
        atol: absolute tolerance on the residual norm.
        max_steps: maximum number of iterations (``None``: 10 × the number of unknowns).
        ridge: solve ``(A + ridge·I) x = b`` instead; makes a PSD ``A`` definite.
        preconditioner: ``v -> M v`` with ``M ≈ A⁻¹`` symmetric positive definite, or ``None``.
        throw: raise at run time when the solve does not converge.

    Result codes: ``max_steps_reached`` when the budget runs out, ``breakdown`` when a search
    direction has ``pᵀAp <= 0`` (``A`` is not positive definite), ``nonfinite`` on a NaN or inf.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
        >>> x = CG(rtol=1e-6)(lambda v: A @ v, jnp.array([1.0, 0.0]))
        >>> [round(float(v), 4) for v in x]  # A⁻¹ b = [2, -1] / 5
        [0.4, -0.2]
    """

    symmetric_only: ClassVar[bool] = True
    rtol: float = eqx.field(default=1e-6, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int | None = eqx.field(default=None, static=True)
    ridge: float = eqx.field(default=0.0, static=True)
    preconditioner: Callable[[PyTree], PyTree] | None = eqx.field(default=None, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_krylov(self)
        _check_finite_nonnegative("ridge", self.ridge, "CG")

    def _solve(self, matvec, b, init):
        matvec = _with_ridge(matvec, self.ridge)
        precondition = self.preconditioner if self.preconditioner is not None else (lambda v: v)
        size = sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(b))
        max_steps = 10 * size if self.max_steps is None else self.max_steps
        tol = self.atol + self.rtol * tree_norm(b)
        tol2 = tol * tol  # compared with ||r||², no square root per step; b = 0 stops at once
        if init is None:
            x, r = tree_zeros_like(b), b
        else:
            x, r = init, tree_sub(b, matvec(init))
        z = precondition(r)
        rz = tree_vdot(r, z)
        rr = rz if self.preconditioner is None else tree_vdot(r, r)
        zero = jnp.zeros((), jnp.int32)
        # carry: x, r, p, <r, z>, ||r||², steps, broke down
        start = (x, r, z, rz, rr, zero, jnp.asarray(False))

        def cond(carry):
            *_, rz, rr, steps, broke = carry
            return (rr > tol2) & (steps < max_steps) & ~broke & jnp.isfinite(rr)

        def body(carry):
            x, r, p, rz, _, steps, _ = carry
            ap = matvec(p)
            pap = tree_vdot(p, ap)
            broke = ~(pap > 0)  # A is not positive definite along p (or NaN): stop, x kept
            alpha = jnp.where(broke, 0.0, rz / jnp.where(broke, 1.0, pap))
            x = tree_axpy(alpha, p, x)
            r = tree_axpy(-alpha, ap, r)
            z = precondition(r)
            rz_new = tree_vdot(r, z)
            rr = rz_new if self.preconditioner is None else tree_vdot(r, r)
            beta = rz_new / jnp.where(rz > 0, rz, 1.0)
            p = tree_axpy(beta, p, z)
            return x, r, p, rz_new, rr, steps + 1, broke

        x, _, _, _, rr, steps, broke = jax.lax.while_loop(cond, body, start)
        result = jnp.where(
            ~jnp.isfinite(rr) | nonfinite(x),
            RESULTS.nonfinite,
            jnp.where(
                rr <= tol2,
                RESULTS.successful,
                jnp.where(broke, RESULTS.breakdown, RESULTS.max_steps_reached),
            ),
        )
        return x, jnp.asarray(result, jnp.int32), steps


class GMRES(_LineaxSolver):
    """Restarted GMRES (lineax's), for any nonsingular ``A`` (no symmetry needed).

    Args:
        rtol: relative tolerance on the residual (2-norm).
        atol: absolute tolerance on the residual.
        max_steps: maximum number of iterations (``None``: 10 × the number of unknowns).
        restart: Krylov subspace size before a restart.
        preconditioner: ``v -> M v`` with ``M ≈ A⁻¹``, or ``None``.
        throw: raise at run time when the solve does not converge.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.array([[2.0, 1.0], [-1.0, 3.0]])  # not symmetric
        >>> x = GMRES(rtol=1e-6)(lambda v: A @ v, jnp.array([3.0, 2.0]))
        >>> [round(float(v), 4) for v in x]
        [1.0, 1.0]
    """

    rtol: float = eqx.field(default=1e-6, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int | None = eqx.field(default=None, static=True)
    restart: int = eqx.field(default=20, static=True)
    preconditioner: Callable[[PyTree], PyTree] | None = eqx.field(default=None, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_krylov(self)
        _check_positive_int("restart", self.restart, "GMRES")

    def _lineax_solver(self, tol):
        return lx.GMRES(
            rtol=0.0,
            atol=tol,
            norm=tree_norm,
            max_steps=self.max_steps,
            restart=self.restart,
        )


class BiCGStab(_LineaxSolver):
    """BiCGStab (lineax's), for any nonsingular ``A``.

    Args:
        rtol: relative tolerance on the residual (2-norm).
        atol: absolute tolerance on the residual.
        max_steps: maximum number of iterations (``None``: 10 × the number of unknowns).
        preconditioner: ``v -> M v`` with ``M ≈ A⁻¹``, or ``None``.
        throw: raise at run time when the solve does not converge.
    """

    rtol: float = eqx.field(default=1e-6, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int | None = eqx.field(default=None, static=True)
    preconditioner: Callable[[PyTree], PyTree] | None = eqx.field(default=None, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_krylov(self)

    def _lineax_solver(self, tol):
        return lx.BiCGStab(rtol=0.0, atol=tol, norm=tree_norm, max_steps=self.max_steps)


class NormalCG(_LineaxSolver):
    """CG on the normal equations ``AᵀA x = Aᵀb`` (jaxopt's default for ``custom_root``), for any
    nonsingular ``A``; squares the condition number.

    Args:
        rtol: relative tolerance on the normal-equation residual (2-norm).
        atol: absolute tolerance.
        max_steps: maximum number of iterations (``None``: 10 × the number of unknowns).
        throw: raise at run time when the solve does not converge.
    """

    rtol: float = eqx.field(default=1e-6, static=True)
    atol: float = eqx.field(default=0.0, static=True)
    max_steps: int | None = eqx.field(default=None, static=True)
    preconditioner: None = eqx.field(default=None, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_krylov(self)

    def _lineax_solver(self, tol):
        return lx.Normal(lx.CG(rtol=0.0, atol=tol, norm=tree_norm, max_steps=self.max_steps))

    def _options(self, b, init):
        return {}  # lineax's Normal takes no warm start in the original variables


class LU(_LineaxSolver):
    """Materialise ``A`` (one matvec per unknown) and solve by LU (lineax's); any nonsingular
    ``A``. For small problems and as a test oracle.

    Args:
        throw: raise at run time on a singular ``A`` (non-finite solution).
    """

    throw: bool = eqx.field(default=True, static=True)

    def _lineax_solver(self, tol):
        return lx.LU()

    def _options(self, b, init):
        return {}

    def _solve(self, matvec, b, init):
        # lineax's LU needs a materialised operator.
        operator = lx.MatrixLinearOperator(materialize(matvec, b))
        flat_b, unravel = ravel_pytree(b)
        sol = lx.linear_solve(operator, flat_b, lx.LU(), throw=False)
        x = unravel(sol.value)
        result = jnp.where(nonfinite(x), RESULTS.nonfinite, _from_lineax(sol.result))
        return x, result, jnp.asarray(1, jnp.int32)


class Neumann(AbstractLinearSolver):
    """Truncated Neumann series ``x = a · Σ_{k=0}^{steps} (I - a A)^k b``.

    Converges when ``0 < a < 2 / λ_max(A)`` for a symmetric positive definite ``A``, at rate
    ``1 - a·λ_min``. With ``step_size=None`` the step is ``a = 1 / λ_max`` with ``λ_max``
    estimated by ``power_iterations`` rounds of power iteration (from a fixed pseudo-random
    start, so results are reproducible). The solve is reported as diverged when the last term
    ``(I - aA)^steps b`` is larger than ``b`` (an indefinite ``A``, or a step size too large).

    Args:
        steps: number of terms after the first.
        step_size: the scale ``a``; ``None`` to estimate it.
        power_iterations: rounds of power iteration used when ``step_size`` is ``None``.
        throw: raise at run time when the series diverges or gives a NaN.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.diag(jnp.array([1.0, 2.0]))
        >>> x = Neumann(steps=200)(lambda v: A @ v, jnp.ones(2))
        >>> [round(float(v), 4) for v in x]
        [1.0, 0.5]
    """

    symmetric_only: ClassVar[bool] = True
    steps: int = eqx.field(default=100, static=True)
    step_size: float | None = eqx.field(default=None, static=True)
    power_iterations: int = eqx.field(default=20, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_positive_int("steps", self.steps, "Neumann", allow_zero=True)
        _check_positive_int("power_iterations", self.power_iterations, "Neumann")
        if self.step_size is not None:
            _check_learning_rate("step_size", self.step_size, "Neumann")

    def _solve(self, matvec, b, init):
        del init  # the series starts from its first term
        a: jax.Array | float
        if self.step_size is None:
            a = 1.0 / largest_eigenvalue(matvec, b, self.power_iterations)
        else:
            a = self.step_size

        def body(_, carry):
            term, x = carry
            term = tree_sub(term, tree_scale(a, matvec(term)))  # (I - aA)^k b
            return term, tree_axpy(a, term, x)

        term, x = jax.lax.fori_loop(0, self.steps, body, (b, tree_scale(a, b)))
        result = jnp.where(
            nonfinite(x),
            RESULTS.nonfinite,
            jnp.where(tree_norm(term) > tree_norm(b), RESULTS.diverged, RESULTS.successful),
        )
        return x, jnp.asarray(result, jnp.int32), jnp.asarray(self.steps, jnp.int32)


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

    The minimiser of the quadratic is ``A⁻¹ b`` for a symmetric positive definite ``A``. Each
    step costs one matvec. Because the solve is linear in ``b``, it is run on ``b / ||b||`` and
    rescaled (``normalize=True``), so that the learning rate does not depend on the size of
    ``b``. A fixed step budget, so the solve is reported as failed only when it diverges
    (its final gradient ``A x - b`` larger than ``b``) or gives a NaN.

    Args:
        steps: number of optimizer steps (RCIG's ``n_H``).
        learning_rate: learning rate of the default optimizer, Adam (a number, or a jax array
            so that it can change between calls of a jitted function without recompiling).
        optimizer: any ``optax.GradientTransformation``; overrides ``learning_rate``.
        normalize: solve for ``b / ||b||`` and rescale.
        unroll: passed to ``lax.scan`` (``True``: unroll fully; faster on CPU for short solves
            of convolutional networks, see :class:`bilevel.OptaxMinimizer`).
        throw: raise at run time on divergence or a NaN. RCIG's distillation turns it off: its
            learning-rate tuner reacts to a diverging solve instead.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.diag(jnp.array([1.0, 2.0]))
        >>> x = AdamQuadratic(steps=500)(lambda v: A @ v, jnp.ones(2))
        >>> [round(float(v), 2) for v in x]  # a fixed budget of Adam steps: approximate
        [1.0, 0.5]
    """

    symmetric_only: ClassVar[bool] = True
    steps: int = eqx.field(default=200, static=True)
    learning_rate: float | jax.Array = 0.02
    optimizer: optax.GradientTransformation | None = eqx.field(default=None, static=True)
    normalize: bool = eqx.field(default=True, static=True)
    unroll: int | bool = eqx.field(default=1, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_positive_int("steps", self.steps, "AdamQuadratic", allow_zero=True)
        _check_learning_rate("learning_rate", self.learning_rate, "AdamQuadratic")
        if self.optimizer is not None and not isinstance(
            self.optimizer, optax.GradientTransformation
        ):
            raise ValueError(
                "AdamQuadratic: `optimizer` must be an optax.GradientTransformation or None, "
                f"got {type(self.optimizer).__name__}."
            )

    def _solve(self, matvec, b, init):
        x, _, final_grad_norm, b_norm = self._run(matvec, b, init)
        result = jnp.where(
            nonfinite(x),
            RESULTS.nonfinite,
            jnp.where(final_grad_norm > b_norm, RESULTS.diverged, RESULTS.successful),
        )
        return x, jnp.asarray(result, jnp.int32), jnp.asarray(self.steps, jnp.int32)

    def solve_with_trace(
        self, matvec: Matvec, b: PyTree, init: PyTree | None = None
    ) -> tuple[PyTree, jax.Array]:
        """Solve and return the quadratic objective ``½xᵀAx − bᵀx`` along the way.

        Returns:
            ``(x, trace)``; ``trace`` has ``steps + 1`` entries, the objective (in the units of
            the normalised problem) before each step and at the returned point. A trace that is
            not decreasing shows a learning rate that is too high (RCIG tunes it from this).
        """
        x, trace, _, _ = self._run(matvec, b, init)
        return x, trace

    def _run(self, matvec, b, init):
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
        final, grad = objective_and_grad(x)
        return tree_scale(scale, x), jnp.append(trace, final), tree_norm(grad), tree_norm(b_unit)


class Dense(AbstractLinearSolver):
    """Materialise ``A`` (one matvec per unknown) and solve exactly with LU (``jnp.linalg``).

    For small problems and as a test oracle: cost is ``O(n)`` matvecs plus ``O(n³)``. Any
    nonsingular ``A``.

    Args:
        ridge: solve ``(A + ridge·I) x = b`` instead.
        throw: raise at run time on a non-finite solution (a singular ``A``).

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
        >>> x = Dense()(lambda v: A @ v, jnp.array([1.0, 0.0]))
        >>> [round(float(v), 4) for v in x]
        [0.4, -0.2]
    """

    ridge: float = eqx.field(default=0.0, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_finite_nonnegative("ridge", self.ridge, "Dense")

    def _solve(self, matvec, b, init):
        del init
        flat_b, unravel = ravel_pytree(b)
        matrix = materialize(_with_ridge(matvec, self.ridge), b)
        x = unravel(jnp.linalg.solve(matrix, flat_b))
        result = jnp.where(nonfinite(x), RESULTS.nonfinite, RESULTS.successful)
        return x, jnp.asarray(result, jnp.int32), jnp.asarray(1, jnp.int32)


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


def requires_symmetric(solve: Any) -> bool:
    """Whether ``solve`` is only correct for a symmetric operator (``False`` for callables that
    do not say, such as jaxopt's ``solve_*`` functions)."""
    return bool(getattr(solve, "symmetric_only", False))
