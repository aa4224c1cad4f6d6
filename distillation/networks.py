"""How the inner problem sees a pool model: standard dynamics or the centred linearisation.

Both are parameterised by the displacement ``Δ = θ − θ₀`` from the pool model ``θ₀`` (so every
inner problem starts at ``Δ = 0`` and is regularised by ``½λ‖Δ‖²``):

* :class:`StandardNetwork`: ``f(θ₀ + Δ, x)``, the network itself.
* :class:`LinearizedNetwork`: ``f_lin(Δ, x) = J_θ f(θ₀, x) Δ``, the centred linearisation
  (one forward-mode ``jax.jvp``). It is linear in ``Δ``, so an MSE inner problem is convex.

For the closed-form head, :meth:`offset_and_features` splits the output into what the body
``Δ_B`` contributes (the label offset ``g``) and the features ``φ`` on which the head acts:
``f(x) = g(x) + [φ(x), 1] Δ_F``.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from distillation.models import ConvBody, ConvNet


def tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def zeros_like_tree(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


class AbstractNetwork(eqx.Module):
    """A pool model ``θ₀`` seen through a parameterisation of ``Δ``."""

    model0: eqx.AbstractVar[ConvNet]

    @abc.abstractmethod
    def output(self, delta: ConvNet, x: Float[Array, "n h w c"]) -> Float[Array, "n k"]:
        """Network output for the full displacement ``Δ = (Δ_B, Δ_F)``."""

    @abc.abstractmethod
    def offset_and_features(
        self, delta_body: ConvBody, x: Float[Array, "n h w c"]
    ) -> tuple[Float[Array, "n k"], Float[Array, "n d"]]:
        """``(g(x), φ(x))`` for a body displacement ``Δ_B`` (head left at ``θ₀_F``)."""


class StandardNetwork(AbstractNetwork):
    """Standard dynamics: ``f(θ₀ + Δ, x)``."""

    model0: ConvNet

    def output(self, delta, x):
        return tree_add(self.model0, delta)(x)

    def offset_and_features(self, delta_body, x):
        features = tree_add(self.model0.body, delta_body)(x)
        return self.model0.head(features), features


class LinearizedNetwork(AbstractNetwork):
    """Centred linearisation around ``θ₀``: ``f_lin(Δ, x) = J(θ₀)Δ`` (``f_lin(0, x) = 0``)."""

    model0: ConvNet

    def output(self, delta, x):
        return linearize(lambda m: m(x), self.model0)(delta)

    def offset_and_features(self, delta_body, x):
        # One jvp gives both the features at θ₀ (primal) and their derivative along Δ_B.
        features, d_features = jax.jvp(lambda b: b(x), (self.model0.body,), (delta_body,))
        return d_features @ self.model0.head.weight, features


def linearize(fn, primal):
    """Centred linearisation of ``fn`` at ``primal``: ``Δ ↦ J_fn(primal) Δ`` by ``jax.jvp``.

    Example:
        >>> import jax.numpy as jnp
        >>> lin = linearize(jnp.sin, jnp.asarray(0.0))
        >>> float(lin(jnp.asarray(0.5)))  # cos(0) * 0.5
        0.5
    """
    return lambda delta: jax.jvp(fn, (primal,), (delta,))[1]
