"""Implicit differentiation of a root ``F(x*(θ), θ) = 0`` (jaxopt's ``custom_root`` semantics).

By the implicit function theorem the tangent of the root along ``dθ`` is
``dx* = -A⁻¹ (∂₂F · dθ)`` with ``A = ∂₁F`` at the root. The rule is a ``custom_jvp`` whose
tangent is one :func:`jax.lax.custom_linear_solve` with ``A``: forward mode solves with ``A``,
reverse mode comes from JAX transposing that solve (a solve with ``Aᵀ``), and the rule's own
primal is computed through the rule again, so ``jvp``, ``jacfwd``, ``jacrev``, ``hessian``,
``grad`` of ``grad`` and ``vmap`` of each all go through the implicit function theorem at every
order and never differentiate the inner solver's iterations (memory independent of their
count).

Functions that close over traced arrays (``lambda w, lam: loss(w, lam, X)`` differentiated in
``X``) and keyword arguments are differentiable: both functions are closure-converted
(``equinox.filter_closure_convert``) so that what they close over becomes an input of the rule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from bilevel._linear_solve import CG, GMRES, requires_symmetric

PyTree = Any
LinearSolve = Callable[..., PyTree]


def hvp(fn: Callable[..., jax.Array], params: PyTree, vector: PyTree, *args: Any) -> PyTree:
    """Hessian-vector product ``∇²_params fn(params, *args) · vector``, forward-over-reverse.

    Example:
        >>> import jax.numpy as jnp
        >>> hvp(lambda x: jnp.sum(x**3), jnp.array([1.0, 2.0]), jnp.ones(2))
        Array([ 6., 12.], dtype=float32)
    """
    grad = jax.grad(fn)
    return jax.jvp(lambda p: grad(p, *args), (params,), (vector,))[1]


def default_linear_solver(symmetric: bool) -> LinearSolve:
    """The linear solver used when none is given: :class:`bilevel.CG` for a symmetric ``∂₁F``
    (a Hessian), :class:`bilevel.GMRES` otherwise."""
    return CG() if symmetric else GMRES()


def _check_solve(solve: Any, symmetric: bool, where: str) -> LinearSolve:
    if not callable(solve):
        raise ValueError(f"{where}: `solve` must be callable as solve(matvec, b), got {solve!r}.")
    if requires_symmetric(solve) and not symmetric:
        raise ValueError(
            f"{where}: {type(solve).__name__} is only correct for a symmetric ∂₁F, but the "
            "problem is not declared symmetric. Pass symmetric=True if F is the gradient of a "
            "loss (its Jacobian is a Hessian), or use a general solver (bilevel.GMRES, "
            "bilevel.BiCGStab, bilevel.NormalCG, bilevel.LU, bilevel.Dense)."
        )
    return solve


def _is_inexact_array(x: Any) -> bool:
    return eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def _materialise_zeros(primal: PyTree, tangent: PyTree) -> PyTree:
    """Symbolic-zero (``None``) tangents of floating leaves as explicit zeros."""

    def leaf(p, t):
        if t is None and _is_inexact_array(p):
            return jnp.zeros_like(p)
        return t

    return jax.tree_util.tree_map(leaf, primal, tangent, is_leaf=lambda x: x is None)


def _tie_to_tangents(rhs: PyTree) -> PyTree:
    """``rhs`` with every leaf made to depend (by adding ``0·Σ rhs``) on the tangents.

    A leaf of ``∂F/∂args · ṫ`` that does not depend on the arguments (a part of the solution
    that no argument moves) is a constant zero, not a tangent; ``custom_linear_solve`` cannot
    transpose a right-hand side that mixes the two (jax-ml/jax#10929: an ``AssertionError`` in
    reverse mode). The added term is zero and linear in the tangents, so values and derivatives
    are unchanged."""
    leaves = [x for x in jax.tree_util.tree_leaves(rhs) if _is_inexact_array(x)]
    if len(leaves) < 2:
        return rhs
    tie = 0 * jnp.sum(jnp.stack([jnp.sum(jnp.real(x)).astype(jnp.float32) for x in leaves]))

    def leaf(x):
        return x + tie.astype(x.dtype) if _is_inexact_array(x) else x

    return jax.tree_util.tree_map(leaf, rhs)


def _as_arrays(tree: PyTree) -> PyTree:
    """Python floats (and the typed scalars JAX hands to custom_jvp rules) as arrays, so that a
    scalar hyperparameter is always a dynamic, differentiable input of the rule. Python ints
    and bools stay static (shapes, step counts)."""

    def leaf(x):
        if isinstance(x, (float, complex)) or (isinstance(x, int) and hasattr(x, "dtype")):
            return jnp.asarray(x)
        return x

    return jax.tree_util.tree_map(leaf, tree)


@eqx.filter_custom_jvp
def _root(solver, optimality, init_params, args, *, linear_solve, symmetric, has_aux):
    del optimality, linear_solve, symmetric, has_aux
    return solver(*_as_arrays((init_params, args)))


@_root.def_jvp
def _root_jvp(primals, tangents, *, linear_solve, symmetric, has_aux):
    solver, optimality, init_params, args = _as_arrays(primals)
    _, t_optimality, _, t_args = tangents
    options = dict(linear_solve=linear_solve, symmetric=symmetric, has_aux=has_aux)
    # The primal through the rule again, so that higher derivatives use the rule too.
    out = _root(solver, optimality, init_params, args, **options)
    root, aux = out if has_aux else (out, None)
    # What F depends on besides the root: its closed-over arrays and the arguments.
    inputs, t_inputs = (optimality, args), (t_optimality, t_args)
    if not jax.tree_util.tree_leaves(t_inputs):
        t_root = jax.tree_util.tree_map(jnp.zeros_like, root)
    else:
        # Differentiate F only in the leaves that carry a tangent (not the data): XLA does not
        # fold away products with explicit zero tangents.
        mask = jax.tree_util.tree_map(
            lambda p, t: t is not None, inputs, t_inputs, is_leaf=lambda x: x is None
        )
        dynamic, static = eqx.partition(inputs, mask)
        t_dynamic = eqx.filter(_materialise_zeros(inputs, t_inputs), mask)

        def f(d):
            i = eqx.combine(d, static)
            return i[0](root, i[1])

        _, rhs = jax.jvp(f, (dynamic,), (t_dynamic,))
        rhs = _tie_to_tangents(rhs)

        def matvec(u):
            return jax.jvp(lambda p: optimality(p, args), (root,), (u,))[1]

        transpose_solve = None if symmetric else (lambda vecmat, b: linear_solve(vecmat, b))
        t_root = jax.lax.custom_linear_solve(
            matvec,
            rhs,
            lambda mv, b: linear_solve(mv, b),
            transpose_solve,
            symmetric=symmetric,
        )
        t_root = jax.tree_util.tree_map(jnp.negative, t_root)
    t_out = (t_root, jax.tree_util.tree_map(lambda _: None, aux)) if has_aux else t_root
    return out, t_out


def custom_root(
    optimality_fn: Callable[..., PyTree],
    solve: LinearSolve | None = None,
    has_aux: bool = False,
    symmetric: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator making ``inner_solver(init_params, *args, **kwargs)`` differentiable by the
    implicit function theorem.

    Semantics follow ``jaxopt.implicit_diff.custom_root``: ``optimality_fn(params, *args,
    **kwargs)`` returns a pytree shaped like ``params`` that is zero at the solution. The
    decorated solver's output is differentiable with respect to ``args``, ``kwargs`` and
    anything the two functions close over (not ``init_params``), in forward and reverse mode,
    to any order, under ``jit`` and ``vmap``.

    Args:
        optimality_fn: ``F(params, *args, **kwargs)``, zero at the solution.
        solve: a linear solver ``solve(matvec, b) -> x`` (any of this package's solvers, or
            jaxopt's ``solve_*``). Defaults to :class:`bilevel.CG` when ``symmetric`` and to
            :class:`bilevel.GMRES` otherwise.
        has_aux: the inner solver returns ``(params, aux)``; ``aux`` is passed through and
            receives no gradient.
        symmetric: ``∂₁F`` is symmetric (``F`` is the gradient of a loss, so ``∂₁F`` is its
            Hessian). Solvers that need symmetry (``CG``, ``Neumann``, ``AdamQuadratic``) are
            refused unless it is declared. The default ``False`` is right for any root; note that
            jaxopt's default (normal-equation CG) also assumes nothing.

    Returns:
        A decorator.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> def inner_loss(w, lam):
        ...     return 0.5 * jnp.sum((w - 1.0) ** 2) + 0.5 * lam * jnp.sum(w**2)
        >>> @custom_root(jax.grad(inner_loss), symmetric=True)
        ... def ridge_solver(init_w, lam):
        ...     return jnp.ones_like(init_w) / (1.0 + lam)
        >>> float(jax.grad(lambda lam: ridge_solver(jnp.zeros(3), lam).sum())(1.0))  # -3/(1+1)²
        -0.75
    """
    if not callable(optimality_fn):
        raise ValueError(f"custom_root: `optimality_fn` must be callable, got {optimality_fn!r}.")
    linear_solve = _check_solve(
        default_linear_solver(symmetric) if solve is None else solve, symmetric, "custom_root"
    )

    def decorator(inner_solver: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(inner_solver):
            raise ValueError(
                f"custom_root: the inner solver must be callable, got {inner_solver!r}."
            )

        @functools.wraps(inner_solver)
        def wrapped(init_params, *args, **kwargs):
            def solver_fn(init, a):
                return inner_solver(init, *a[0], **a[1])

            def optimality(params, a):
                return optimality_fn(params, *a[0], **a[1])

            a = _as_arrays((args, kwargs))
            # Closure conversion: arrays the functions close over become leaves of these
            # pytrees (inputs of the rule), so they can be traced and differentiated.
            solver_c = eqx.filter_closure_convert(solver_fn, init_params, a)
            optimality_c = eqx.filter_closure_convert(optimality, init_params, a)
            _check_structures(solver_c, optimality_c, init_params, a, has_aux)
            return _root(
                solver_c,
                optimality_c,
                jax.lax.stop_gradient(init_params),
                a,
                linear_solve=linear_solve,
                symmetric=symmetric,
                has_aux=has_aux,
            )

        return wrapped

    return decorator


def _check_structures(solver_c, optimality_c, init_params, a, has_aux) -> None:
    """The solver's output and ``F``'s output must be shaped like ``init_params``: say so
    (naming both structures) instead of failing deep inside the linear solve."""
    out = eqx.filter_eval_shape(solver_c, init_params, a)
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                "custom_root(has_aux=True): the inner solver must return (params, aux), "
                f"got {jax.tree_util.tree_structure(out)}."
            )
        out = out[0]
    f_out = eqx.filter_eval_shape(optimality_c, out, a)

    def spec(tree: PyTree) -> tuple[str, list[tuple[tuple[int, ...], str]]]:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return str(treedef), [(tuple(x.shape), str(x.dtype)) for x in leaves]

    want = spec(eqx.filter_eval_shape(lambda p: p, init_params))
    for name, got in (
        ("the inner solver's output", spec(out)),
        ("optimality_fn's output", spec(f_out)),
    ):
        if got != want:
            raise ValueError(
                f"custom_root: {name} must have the structure, shapes and dtypes of "
                f"init_params {want}, got {got}."
            )


def custom_fixed_point(
    fixed_point_fn: Callable[..., PyTree],
    solve: LinearSolve | None = None,
    has_aux: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a solver of ``params = fixed_point_fn(params, *args)`` (jaxopt's semantics).

    Equivalent to :func:`custom_root` with ``F(x, θ) = T(x, θ) - x``, whose Jacobian
    ``∂T - I`` is not symmetric in general, so the default linear solver is
    :class:`bilevel.GMRES`.

    Args:
        fixed_point_fn: ``T(params, *args, **kwargs)``.
        solve: a general linear solver (default :class:`bilevel.GMRES`).
        has_aux: the solver returns ``(params, aux)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> T = lambda x, theta: 0.5 * x + theta  # fixed point x* = 2θ
        >>> @custom_fixed_point(T)
        ... def iterate(x0, theta):
        ...     return jax.lax.fori_loop(0, 100, lambda _, x: T(x, theta), x0)
        >>> float(jax.grad(lambda t: iterate(jnp.zeros(()), t))(1.0))
        2.0
    """
    if not callable(fixed_point_fn):
        raise ValueError(
            f"custom_fixed_point: `fixed_point_fn` must be callable, got {fixed_point_fn!r}."
        )

    def optimality_fn(params, *args, **kwargs):
        mapped = fixed_point_fn(params, *args, **kwargs)
        return jax.tree_util.tree_map(jnp.subtract, mapped, params)

    return custom_root(optimality_fn, solve=solve, has_aux=has_aux, symmetric=False)
