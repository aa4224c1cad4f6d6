"""Result codes that every solve reports (in the spirit of ``optimistix.RESULTS``).

A code is an ``int32`` array (so it can be returned from jitted and vmapped code);
:func:`result_message` turns it into words. ``throw=True`` solvers raise
:class:`equinox.EquinoxRuntimeError` (an ``XlaRuntimeError`` subclass under jit) with that message
when a solve fails.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


class RESULTS:
    """The result codes. ``successful`` is 0; every other code is a failure."""

    successful = 0
    max_steps_reached = 1
    nonfinite = 2
    diverged = 3
    breakdown = 4

    messages: tuple[str, ...] = (
        "successful",
        "the solver reached its maximum number of steps without meeting its tolerance: "
        "raise the step budget or loosen the tolerance",
        "the solve produced a non-finite value (NaN or inf): check the inputs, the step size "
        "or learning rate, and the conditioning of the problem",
        "the solve diverged (its residual grew above its starting value): lower the step size "
        "or learning rate, or check that the operator is positive definite",
        "the Krylov method broke down (a singular or indefinite operator for this method?)",
    )


def result_message(code: int | jax.Array) -> str:
    """The words for a result code.

    Example:
        >>> result_message(RESULTS.nonfinite).startswith("the solve produced a non-finite")
        True
    """
    return RESULTS.messages[int(jnp.asarray(code))]


def raise_if_failed(value: PyTree, result: Array, where: str) -> PyTree:
    """``value`` unchanged, raising at run time (also under ``jit``) if ``result`` is a failure."""
    messages = [f"{where}: {m}" for m in RESULTS.messages]
    result = jnp.asarray(result, jnp.int32)
    return eqx.branched_error_if(value, result != RESULTS.successful, result, messages)


def nonfinite(tree: PyTree) -> Array:
    """Whether any leaf of ``tree`` holds a NaN or inf."""
    leaves = [jnp.any(~jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(tree)]
    return jnp.any(jnp.stack(leaves)) if leaves else jnp.asarray(False)
