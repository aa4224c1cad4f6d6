"""optax glue shared by the solvers."""

from __future__ import annotations

from typing import Any

import jax
import optax

PyTree = Any


def optax_step(
    optimizer: optax.GradientTransformation, grads: PyTree, state: PyTree, params: PyTree
) -> tuple[PyTree, PyTree]:
    """One optax step: ``optimizer.update`` then ``optax.apply_updates``; returns
    ``(params, state)``.

    Runs under JAX's standard dtype promotion: optax's bias corrections compute
    ``decay ** count`` (a Python float to an int32 power), which
    ``jax_numpy_dtype_promotion="strict"`` rejects, so code (and users) that run with strict
    promotion can still use optax optimizers here.
    """
    with jax.numpy_dtype_promotion("standard"):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state
