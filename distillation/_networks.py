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
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from distillation._checks import check_int
from distillation._models import ConvBody, ConvNet


class Partitioned(eqx.Module):
    """A batch of images in two parts: ``stored`` is evaluated as one batch (its activations are
    kept for the backward pass), ``remat`` is evaluated ``chunk`` images at a time and
    rematerialised on the way back, so its activations never all live at once.

    Every network method and the pool's training step accept one wherever they take a batch;
    outputs are concatenated in the order ``stored, remat``. Bias-free subsampling
    (``DistillConfig.n_subset``) passes the drawn images as ``stored`` and the rest as ``remat``,
    which is what makes its peak memory scale with ``n_subset`` rather than ``|S|``.
    """

    stored: Float[Array, "n h w c"]
    remat: Float[Array, "r h w c"]
    chunk: int = eqx.field(static=True)

    def __check_init__(self):
        check_int("Partitioned", "chunk", self.chunk)

    def __len__(self) -> int:
        return self.stored.shape[0] + self.remat.shape[0]


def map_batch(fn: Callable[[Array], Any], x: Array | Partitioned) -> Any:
    """``fn(x)`` for a per-example ``fn`` (outputs a pytree of arrays with a leading batch axis);
    for a :class:`Partitioned` batch, the ``remat`` part goes through :func:`remat_map`."""
    if not isinstance(x, Partitioned):
        return fn(x)
    head = fn(x.stored)
    if x.remat.shape[0] == 0:
        return head
    rest = remat_map(fn, x.remat, x.chunk)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), head, rest)


def remat_map(fn: Callable[[Array], Any], x: Array, chunk: int) -> Any:
    """``fn(x)`` evaluated ``chunk`` examples at a time in ``lax.map``, each chunk under
    ``jax.checkpoint``: any derivative of it (reverse, forward, or of higher order) keeps at most
    one chunk's intermediate values alive, at the price of recomputing them. The last chunk is
    padded with zeros, whose outputs are dropped."""
    n = x.shape[0]
    count = -(-n // chunk)
    padded = jnp.pad(x, [(0, count * chunk - n)] + [(0, 0)] * (x.ndim - 1))
    # A rolled loop: unrolled, XLA's scheduler keeps several chunks' buffers alive and memory
    # grows with the number of chunks again (measured: docs/performance.md).
    out = jax.lax.map(jax.checkpoint(lambda xb: fn(xb)), padded.reshape(count, chunk, *x.shape[1:]))
    return jax.tree_util.tree_map(lambda o: o.reshape(count * chunk, *o.shape[2:])[:n], out)


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

    @abc.abstractmethod
    def change_and_features(
        self, delta: ConvNet, x: Float[Array, "n h w c"]
    ) -> tuple[Float[Array, "n k"], Float[Array, "n d"]]:
        """``(f(Δ, x) − f(0, x), φ₀(x))``: the output's change under the full displacement
        ``Δ`` and the features of the pool model ``θ₀`` (the released code's split, used by
        :class:`~distillation.KRRHead`)."""


class StandardNetwork(AbstractNetwork):
    """Standard dynamics: ``f(θ₀ + Δ, x)``."""

    model0: ConvNet

    def output(self, delta, x):
        return map_batch(tree_add(self.model0, delta), x)

    def offset_and_features(self, delta_body, x):
        features = map_batch(tree_add(self.model0.body, delta_body), x)
        return self.model0.head(features), features

    def change_and_features(self, delta, x):
        moved = tree_add(self.model0, delta)

        def fn(xb):
            features = self.model0.body(xb)
            return moved(xb) - self.model0.head(features), features

        return map_batch(fn, x)


class LinearizedNetwork(AbstractNetwork):
    """Centred linearisation around ``θ₀``: ``f_lin(Δ, x) = J(θ₀)Δ`` (``f_lin(0, x) = 0``)."""

    model0: ConvNet

    def output(self, delta, x):
        return map_batch(lambda xb: linearize(lambda m: m(xb), self.model0)(delta), x)

    def offset_and_features(self, delta_body, x):
        def fn(xb):
            # One jvp gives both the features at θ₀ (primal) and their derivative along Δ_B.
            features, d_features = jax.jvp(lambda b: b(xb), (self.model0.body,), (delta_body,))
            return d_features @ self.model0.head.weight, features

        return map_batch(fn, x)

    def change_and_features(self, delta, x):
        def fn(xb):
            # One jvp of (output, features): the dual of the output is J(θ₀)Δ (head weight and
            # bias included), the primal of the features is φ₀.
            def both(m):
                features = m.body(xb)
                return m.head(features), features

            (_, features), (d_output, _) = jax.jvp(both, (self.model0,), (delta,))
            return d_output, features

        return map_batch(fn, x)


def linearize(fn, primal):
    """Centred linearisation of ``fn`` at ``primal``: ``Δ ↦ J_fn(primal) Δ`` by ``jax.jvp``.

    Example:
        >>> import jax.numpy as jnp
        >>> lin = linearize(jnp.sin, jnp.asarray(0.0))
        >>> float(lin(jnp.asarray(0.5)))  # cos(0) * 0.5
        0.5
    """
    return lambda delta: jax.jvp(fn, (primal,), (delta,))[1]
