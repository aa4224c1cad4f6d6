"""Small pytree arithmetic used by the solvers (vectors are pytrees of arrays)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def tree_add(x: PyTree, y: PyTree) -> PyTree:
    """``x + y`` leaf by leaf."""
    return jax.tree_util.tree_map(jnp.add, x, y)


def tree_sub(x: PyTree, y: PyTree) -> PyTree:
    """``x - y`` leaf by leaf."""
    return jax.tree_util.tree_map(jnp.subtract, x, y)


def tree_scale(a: Any, x: PyTree) -> PyTree:
    """``a * x`` for a scalar ``a``."""
    return jax.tree_util.tree_map(lambda leaf: a * leaf, x)


def tree_axpy(a: Any, x: PyTree, y: PyTree) -> PyTree:
    """``a * x + y`` for a scalar ``a``."""
    return jax.tree_util.tree_map(lambda u, v: a * u + v, x, y)


def tree_vdot(x: PyTree, y: PyTree) -> jax.Array:
    """Real inner product ``<x, y>`` summed over all leaves."""
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda u, v: jnp.vdot(u, v), x, y))
    return sum(leaves, jnp.asarray(0.0, dtype=_result_dtype(x)))


def tree_norm(x: PyTree) -> jax.Array:
    """Euclidean norm over all leaves."""
    return jnp.sqrt(tree_vdot(x, x))


def tree_zeros_like(x: PyTree) -> PyTree:
    """Zeros with the structure, shapes and dtypes of ``x``."""
    return jax.tree_util.tree_map(jnp.zeros_like, x)


def _result_dtype(x: PyTree) -> Any:
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        return jnp.float32
    return jnp.result_type(*leaves)
