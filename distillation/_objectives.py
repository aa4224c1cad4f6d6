"""Inner objectives (how the final layer is handled) and outer losses.

* :class:`JointHead`: the final layer is trained with the body (VIG, CIG). Inner loss
  ``½Σ‖f(Δ, x_s) − y_s‖² + ½λ‖Δ‖²`` over the full displacement ``Δ``.
* :class:`ClosedFormHead`: the final layer is solved in closed form (RIG, RCIG; Eq. 3–5). For a
  body displacement ``Δ_B`` the output is ``g(x) + [φ(x), 1] Δ_F``; with the *label offset*
  ``r = y_s − g(x_s)`` the ridge solution is ``Δ_F* = [φ_s, 1]ᵀ α`` with
  ``α = (φ_s φ_sᵀ + 1 + λI)⁻¹ r`` (an ``|S|×|S|`` solve), and minimising over ``Δ_F`` leaves the
  reparameterised inner objective over ``Δ_B`` only, ``½λ rᵀα + ½λ‖Δ_B‖²`` (Eq. 5).
* :class:`KRRHead`: the released code's form of the same idea (``get_krr_loss_gd`` in the
  authors' ``algorithms.py``), RCIG's default. The inner variable is the full displacement
  ``Δ``; the output's change ``g = f(Δ, x) − f(0, x)`` includes the head's bias (trained by the
  inner optimizer, not in closed form) and head weight (not trained by the inner Adam, but, as
  in the released code, given its raw gradient at each step by ``optax.masked``'s pass-through,
  and part of the Hessian and of the implicit gradient); the kernel is
  ``φ₀φ₀ᵀ`` of the pool model's features, without the ``+1``; the loss is divided by ``N·K``.
* Outer losses: :func:`platt_cross_entropy` (Eq. 6, learnable temperature) and
  :func:`mean_squared_error` (the FRePo-like baseline).
"""

from __future__ import annotations

import abc
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from distillation._models import Head
from distillation._networks import AbstractNetwork, zeros_like_tree

Precision = Literal["float32", "float64"]


def _sq_norm(tree) -> Array:
    return optax.tree_utils.tree_norm(tree, squared=True)


class InnerProblem(eqx.Module):
    """The inner problem of one meta-step: what the final-layer treatments (heads) see.

    Attributes:
        network: the inner model's parameterisation around the pool model ``θ₀``
            (:class:`~distillation.LinearizedNetwork` or
            :class:`~distillation.StandardNetwork`).
        images: the support images ``(N, H, W, C)``, or a
            :class:`~distillation.Partitioned` batch (differentiated part + the rest).
        labels: their labels ``(N, K)``.
        l2: ``λ``.
    """

    network: AbstractNetwork
    images: Any
    labels: Array
    l2: Array


class AbstractHead(eqx.Module):
    """How the inner problem treats the final layer."""

    @abc.abstractmethod
    def init(self, net: AbstractNetwork):
        """The inner problem's starting displacement (zeros)."""

    @abc.abstractmethod
    def inner_loss(self, delta, problem: InnerProblem) -> Array:
        """The inner objective minimised over ``delta``."""

    @abc.abstractmethod
    def predict(self, delta, problem: InnerProblem, x_t) -> Array:
        """Outputs on ``x_t`` of the inner solution ``delta`` (and the support set)."""

    def frozen(self, delta):
        """A pytree of bools like ``delta``: the leaves the inner optimizer does not step
        (``None``: it steps all of them). What their updates are instead:
        :attr:`frozen_passthrough`."""
        return None

    @property
    def frozen_passthrough(self) -> bool:
        """``False``: the :meth:`frozen` leaves are held (their updates are 0). ``True``: their
        updates are their raw gradients, added to them (``optax.masked``'s pass-through of the
        leaves a mask excludes, which is what the released code's inner optimizer does)."""
        return False


def ridge_dual(
    features: Float[Array, "n d"],
    residual: Float[Array, "n k"],
    l2: float | Array,
    *,
    bias: bool,
    precision: Precision = "float32",
) -> Array:
    """The dual coefficients ``α = (φφᵀ [+ 1] + λI)⁻¹ r`` of kernel ridge regression (an
    ``|S|×|S|`` Cholesky solve; ``bias``: the ``+1`` of an unpenalised-in-the-kernel bias
    feature), in ``precision``. The one Gram solve every head uses."""
    dtype = jnp.float64 if precision == "float64" else features.dtype
    phi = features.astype(dtype)
    gram = phi @ phi.T
    if bias:
        gram = gram + 1.0
    gram = gram + l2 * jnp.eye(phi.shape[0], dtype=dtype)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(gram), residual.astype(dtype))


class JointHead(AbstractHead):
    """Body and final layer trained together (VIG, CIG)."""

    def init(self, net):
        return zeros_like_tree(net.model0)

    def inner_loss(self, delta, problem):
        residual = problem.network.output(delta, problem.images) - problem.labels
        return 0.5 * jnp.sum(residual**2) + 0.5 * problem.l2 * _sq_norm(delta)

    def predict(self, delta, problem, x_t):
        return problem.network.output(delta, x_t)


class ClosedFormHead(AbstractHead):
    """Final layer in closed form, Eq. 3–5 (RIG, RCIG).

    Args:
        precision: ``"float64"`` solves the ``|S|×|S|`` system in double precision (requires
            ``jax.config.update("jax_enable_x64", True)``); ``"float32"`` otherwise.
    """

    precision: Precision = eqx.field(default="float32", static=True)

    def __check_init__(self):
        if self.precision not in ("float32", "float64"):
            raise ValueError(
                f"ClosedFormHead: precision must be 'float32' or 'float64', got {self.precision!r}."
            )
        # jax registers its config options as dynamic attributes that its typing does not declare.
        if self.precision == "float64" and not jax.config.jax_enable_x64:  # type: ignore[attr-defined]
            raise ValueError(
                "ClosedFormHead(precision='float64') needs 64-bit JAX: call "
                "jax.config.update('jax_enable_x64', True) first."
            )

    def init(self, net):
        return zeros_like_tree(net.model0.body)

    def dual_coefficients(self, delta_body, problem):
        """``(α, g_s, φ_s)`` with ``α = (φ_s φ_sᵀ + 1 + λI)⁻¹ (y_s − g_s)``."""
        g_s, phi_s = problem.network.offset_and_features(delta_body, problem.images)
        residual = problem.labels - g_s
        alpha = ridge_dual(phi_s, residual, problem.l2, bias=True, precision=self.precision)
        return alpha, g_s, phi_s

    def inner_loss(self, delta, problem):
        alpha, g_s, _ = self.dual_coefficients(delta, problem)
        data_term = 0.5 * problem.l2 * jnp.sum((problem.labels - g_s) * alpha.astype(g_s.dtype))
        return data_term + 0.5 * problem.l2 * _sq_norm(delta)

    def predict(self, delta, problem, x_t):
        alpha, _, phi_s = self.dual_coefficients(delta, problem)
        g_t, phi_t = problem.network.offset_and_features(delta, x_t)
        kernel = phi_t.astype(alpha.dtype) @ phi_s.astype(alpha.dtype).T + 1.0
        return g_t + (kernel @ alpha).astype(g_t.dtype)


class KRRHead(AbstractHead):
    """The released code's kernel-ridge head (RCIG's default; ``get_krr_loss_gd`` and
    ``get_krr_loss`` in the authors' ``algorithms.py``).

    For the full displacement ``Δ`` (body, head weight, head bias), with the output's change
    ``g(x) = f(Δ, x) − f(0, x)`` and the pool model's features ``φ₀``:
    ``α = (φ₀ₛφ₀ₛᵀ + λI)⁻¹ (y_s − g_s)``, inner loss ``(½λ rᵀα + ½λ‖Δ‖²) / (N·K)`` (equal to
    the released code's ``½‖y − g − Kα‖² + ½λ(tr αᵀKα + ‖Δ‖²)`` over ``N·K``), prediction
    ``g(x_t) + φ₀(x_t) φ₀ₛᵀ α``. The inner optimizer's Adam trains the body and the head's
    bias, not the head's weight (:meth:`frozen`), while the Hessian and the implicit gradient
    are taken over all of ``Δ``, as the released code's are.

    The released code excludes the head's weight from its inner Adam with ``optax.masked``,
    which passes the excluded leaves' **gradients through as their updates**: at every inner
    step the head's weight displacement has its raw gradient *added* (a step of size 1 up the
    gradient of the loss over ``N·K``; small, as that gradient is ``O(λ/(N·K))``, but it moves
    the inner trace by ~1e-3 relative over 20 steps, ``benchmarks/step_vs_official.py``).
    ``frozen_weight="released"`` (default) does the same; ``"held"`` keeps it at 0 (what the
    mask was evidently meant to do, and this project's behaviour before 2026-12-04).

    Args:
        precision: of the ``|S|×|S|`` solve, as :class:`ClosedFormHead`.
        frozen_weight: ``"released"`` or ``"held"``, as above.
    """

    precision: Precision = eqx.field(default="float32", static=True)
    frozen_weight: Literal["released", "held"] = eqx.field(default="released", static=True)

    def __check_init__(self):
        ClosedFormHead(self.precision)  # the same checks
        if self.frozen_weight not in ("released", "held"):
            raise ValueError(
                "KRRHead: `frozen_weight` must be 'released' or 'held', got "
                f"{self.frozen_weight!r}."
            )

    @property
    def frozen_passthrough(self) -> bool:
        return self.frozen_weight == "released"

    def init(self, net):
        return zeros_like_tree(net.model0)

    def frozen(self, delta):
        mask = jax.tree_util.tree_map(lambda _: False, delta)
        return eqx.tree_at(lambda m: m.head.weight, mask, True)

    def dual_coefficients(self, delta, problem):
        """``(α, g_s, φ₀ₛ)``."""
        g_s, phi_s = problem.network.change_and_features(delta, problem.images)
        residual = problem.labels - g_s
        alpha = ridge_dual(phi_s, residual, problem.l2, bias=False, precision=self.precision)
        return alpha, g_s, phi_s

    def inner_loss(self, delta, problem):
        alpha, g_s, _ = self.dual_coefficients(delta, problem)
        y_s, l2 = problem.labels, problem.l2
        data_term = 0.5 * l2 * jnp.sum((y_s - g_s) * alpha.astype(g_s.dtype))
        return (data_term + 0.5 * l2 * _sq_norm(delta)) / (y_s.shape[0] * y_s.shape[1])

    def predict(self, delta, problem, x_t):
        alpha, _, phi_s = self.dual_coefficients(delta, problem)
        g_t, phi_t = problem.network.change_and_features(delta, x_t)
        kernel = phi_t.astype(alpha.dtype) @ phi_s.astype(alpha.dtype).T
        return g_t + (kernel @ alpha).astype(g_t.dtype)


def label_margin(labels: Float[Array, "n k"]) -> Array:
    """The released code's label-margin term: ``mean_n min(top1 − top2, 1/(2K))`` of the support
    labels, subtracted from the outer loss (it keeps each image's top label at least ``1/(2K)``
    above the next; the authors note that it likely makes no difference, but it was in the code
    that made the paper's numbers)."""
    top = jax.lax.top_k(labels, 2)[0]
    return jnp.mean(jnp.minimum(top[:, 0] - top[:, 1], 1.0 / (2 * labels.shape[-1])))


def closed_form_head(
    features: Float[Array, "n d"], residual: Float[Array, "n k"], l2: float | Array
) -> Head:
    """The ridge-optimal head displacement ``Δ_F* = argmin ½‖r − [φ, 1]Δ_F‖² + ½λ‖Δ_F‖²``.

    Computed in the dual (``|S|×|S|``) form ``[φ, 1]ᵀ (φφᵀ + 1 + λI)⁻¹ r``, which equals the
    primal ``([φ,1]ᵀ[φ,1] + λI)⁻¹ [φ,1]ᵀ r`` (tested).

    Args:
        features: ``φ`` on the support set.
        residual: the label offset ``r = y − g``.
        l2: ``λ``.

    Returns:
        A :class:`~distillation._models.Head` holding ``Δ_F*`` (weight ``(d, k)``, bias ``(k,)``).
    """
    alpha = ridge_dual(features, residual, l2, bias=True)
    return Head(features.T @ alpha, jnp.sum(alpha, axis=0))


def platt_cross_entropy(
    outputs: Float[Array, "n k"], labels: Float[Array, "n k"], log_temperature: Array
) -> Array:
    """Eq. 6: cross-entropy of ``softmax(outputs / τ)`` with a learnable ``τ = exp(log τ)``."""
    logits = outputs * jnp.exp(-log_temperature)
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))


def mean_squared_error(
    outputs: Float[Array, "n k"], labels: Float[Array, "n k"], log_temperature: Array
) -> Array:
    """``½ mean_n Σ_k (f − y)²`` (the temperature is unused; same signature as Eq. 6)."""
    del log_temperature
    return 0.5 * jnp.mean(jnp.sum((outputs - labels) ** 2, axis=-1))
