"""Implicit differentiation of a root ``F(x*(θ), θ) = 0`` (jaxopt's ``custom_root`` semantics).

By the implicit function theorem ``∂x*/∂θ = -A⁻¹ B`` with ``A = ∂₁F`` and ``B = ∂₂F`` at the
root. The backward pass of a cotangent ``v`` solves ``Aᵀ u = v`` with a linear solver and returns
``-Bᵀ u``; the inner solver's iterations are never differentiated, so memory does not depend on
how many steps it took.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from bilevel.linear_solve import CG

PyTree = Any


def hvp(fn: Callable[..., jax.Array], params: PyTree, vector: PyTree, *args: Any) -> PyTree:
    """Hessian-vector product ``∇²_params fn(params, *args) · vector``, forward-over-reverse.

    Example:
        >>> import jax.numpy as jnp
        >>> hvp(lambda x: jnp.sum(x**3), jnp.array([1.0, 2.0]), jnp.ones(2))
        Array([ 6., 12.], dtype=float32)
    """
    grad = jax.grad(fn)
    return jax.jvp(lambda p: grad(p, *args), (params,), (vector,))[1]


def _zero_cotangent(x: Any) -> Any:
    """Zero cotangent for a custom_vjp input (None for non-differentiable leaves)."""

    def leaf(v):
        v = jnp.asarray(v)
        if jnp.issubdtype(v.dtype, jnp.inexact):
            return jnp.zeros_like(v)
        return None

    return jax.tree_util.tree_map(leaf, x)


def custom_root(
    optimality_fn: Callable[..., PyTree],
    solve: Callable[[Callable[[PyTree], PyTree], PyTree], PyTree] | None = None,
    has_aux: bool = False,
    symmetric: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator making ``inner_solver(init_params, *args)`` differentiable by implicit diff.

    Semantics follow ``jaxopt.implicit_diff.custom_root``: ``optimality_fn(params, *args)``
    returns a pytree shaped like ``params`` that is zero at the solution (typically the gradient
    of an inner loss). The decorated solver's output is differentiable with respect to ``args``
    (not ``init_params``) under ``grad``, ``jit`` and ``vmap``.

    Args:
        optimality_fn: ``F(params, *args)``, zero at the solution.
        solve: a linear solver ``solve(matvec, b) -> x`` (any of this package's solvers, or
            jaxopt's ``solve_*``). Defaults to :class:`bilevel.CG`.
        has_aux: the inner solver returns ``(params, aux)``; ``aux`` is passed through and
            receives no gradient.
        symmetric: ``∂₁F`` is symmetric (``F`` is a gradient), so its transpose-vector product is
            taken by forward mode (a Hessian-vector product, forward-over-reverse). Set
            ``False`` for a general ``F``; reverse mode then gives ``∂₁Fᵀ u``.

    Returns:
        A decorator.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> def inner_loss(w, lam):
        ...     return 0.5 * jnp.sum((w - 1.0) ** 2) + 0.5 * lam * jnp.sum(w**2)
        >>> @custom_root(jax.grad(inner_loss))
        ... def ridge_solver(init_w, lam):
        ...     return jnp.ones_like(init_w) / (1.0 + lam)
        >>> jax.grad(lambda lam: ridge_solver(jnp.zeros(3), lam).sum())(1.0)  # -3 / (1 + 1)**2
        Array(-0.75, dtype=float32, weak_type=True)
    """
    linear_solve = CG() if solve is None else solve
    if not callable(linear_solve):
        raise ValueError(f"custom_root: `solve` must be callable(matvec, b), got {solve!r}.")

    def decorator(inner_solver: Callable[..., Any]) -> Callable[..., Any]:
        @jax.custom_vjp
        def solution(init_params, *args):
            return inner_solver(init_params, *args)

        def solution_fwd(init_params, *args):
            out = inner_solver(init_params, *args)
            params = out[0] if has_aux else out
            return out, (params, init_params, args)

        def solution_bwd(residuals, cotangent):
            params, init_params, args = residuals
            v = cotangent[0] if has_aux else cotangent

            def f_params(p):
                return optimality_fn(p, *args)

            if symmetric:

                def matvec(u):
                    return jax.jvp(f_params, (params,), (u,))[1]

            else:
                _, vjp_params = jax.vjp(f_params, params)

                def matvec(u):
                    return vjp_params(u)[0]

            u = linear_solve(matvec, v)
            _, vjp_args = jax.vjp(lambda *a: optimality_fn(params, *a), *args)
            arg_cotangents = vjp_args(u)
            arg_cotangents = jax.tree_util.tree_map(
                lambda g: -g if jnp.issubdtype(jnp.result_type(g), jnp.inexact) else g,
                arg_cotangents,
            )
            arg_cotangents = tuple(
                _float0_to_none(g, a) for g, a in zip(arg_cotangents, args, strict=True)
            )
            return (_zero_cotangent(init_params), *arg_cotangents)

        solution.defvjp(solution_fwd, solution_bwd)

        @functools.wraps(inner_solver)
        def wrapped(init_params, *args, **kwargs):
            if kwargs:
                # Keyword arguments are bound as constants: they get no gradient.
                return custom_root(optimality_fn_with(kwargs), linear_solve, has_aux, symmetric)(
                    functools.partial(inner_solver, **kwargs)
                )(init_params, *args)
            return solution(init_params, *args)

        def optimality_fn_with(kwargs):
            return lambda p, *a: optimality_fn(p, *a, **kwargs)

        return wrapped

    return decorator


def _float0_to_none(cotangent: Any, primal: Any) -> Any:
    """vjp gives float0 cotangents for integer inputs; custom_vjp wants None (zero) there."""

    def leaf(g, p):
        if not jnp.issubdtype(jnp.result_type(p), jnp.inexact):
            return None
        return g

    return jax.tree_util.tree_map(leaf, cotangent, primal)
