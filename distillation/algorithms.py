"""VIG, CIG, RIG, RCIG and the FRePo-like baseline as compositions of named pieces.

| algorithm | network (``networks``) | head (``objectives``) | outer loss |
|---|---|---|---|
| :func:`vig` | :class:`StandardNetwork` | :class:`JointHead` | Platt cross-entropy |
| :func:`cig` | :class:`LinearizedNetwork` | :class:`JointHead` | Platt cross-entropy |
| :func:`rig` | :class:`StandardNetwork` | :class:`KRRHead` | Platt CE − label margin |
| :func:`rcig` | :class:`LinearizedNetwork` | :class:`KRRHead` | Platt CE − label margin |
| :func:`frepo` | :class:`LinearizedNetwork` | :class:`ClosedFormHead`; ``n_inner = n_H = 0`` | MSE|

Every one computes its meta-gradient the same way (:func:`meta_loss`): the inner problem is
solved by ``bilevel.argmin`` (optax inner solver, ``n_inner`` steps, from ``Δ = 0``), whose
output is differentiable in the support set through ``bilevel.custom_root`` (the implicit
gradient, with ``v = H⁻¹g`` from the linear solver: ``AdamQuadratic`` with ``n_H`` steps by
default); the prediction on the target batch depends on the support set directly too (the
closed-form head), and ``jax.grad`` of the outer loss gives both parts, separately: RIG and
RCIG clip the implicit part, leaf by leaf, to the norm of the direct part (the released code's
``do_meta_train_step``; :func:`clip_to_direct`) before adding them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

import bilevel
from distillation.models import ConvNet
from distillation.networks import (
    AbstractNetwork,
    LinearizedNetwork,
    Partitioned,
    StandardNetwork,
)
from distillation.objectives import (
    AbstractHead,
    ClosedFormHead,
    JointHead,
    KRRHead,
    Precision,
    label_margin,
    mean_squared_error,
    platt_cross_entropy,
)

OuterLoss = Callable[[Array, Array, Array], Array]
MAX_UNROLL = 32


class SupportSet(eqx.Module):
    """The learned support set: images ``(N, H, W, C)``, labels ``(N, K)``, ``log τ``."""

    images: Array
    labels: Array
    log_temperature: Array


class LearningRates(NamedTuple):
    """The automatically tuned learning rates (arrays, so changing them does not recompile)."""

    inner: Array
    hessian: Array


class MetaInfo(NamedTuple):
    """Diagnostics of one meta-gradient evaluation."""

    outer_loss: Array
    inner_loss: Array
    inner_grad_norm: Array
    inner_loss_trace: Array
    accuracy: Array


class Algorithm(eqx.Module):
    """A composition of pieces; build one with :func:`vig`, :func:`cig`, :func:`rig`,
    :func:`rcig` or :func:`frepo`.

    Attributes:
        name: for logs and exports.
        network: the inner model's parameterisation (a class from ``networks``).
        head: how the final layer is treated (``JointHead`` or ``ClosedFormHead``).
        outer_loss: ``(outputs, labels, log_temperature) -> scalar``.
        n_inner: inner optimizer steps.
        n_hessian: steps of the linear solver for ``v = H⁻¹g`` (``AdamQuadratic``).
        linear_solver: a fixed linear solver to use instead of the tuned ``AdamQuadratic``
            (e.g. ``bilevel.CG()`` or ``bilevel.Dense()``); ``None`` for ``AdamQuadratic``.
        inner_optimizer: learning rate → optax optimizer for the inner problem.
        clip_implicit: clip the implicit part of the meta-gradient, leaf by leaf, to the norm
            of the direct part (:func:`clip_to_direct`; the released code does, for RIG/RCIG).
        label_margin: subtract :func:`~distillation.objectives.label_margin` of the support
            labels from the outer loss (the released code does, for RIG/RCIG).
        normalize_rhs: solve ``H v = g`` for ``g/‖g‖`` and rescale (``AdamQuadratic``'s
            ``normalize``); the released code does not, so its tuned Hessian learning rate
            depends on the size of ``g``.
        unroll: unroll the inner and Hessian-inverse loops (``lax.scan(unroll=True)``). On CPU,
            XLA runs convolution gradients 2–27× slower inside a loop than in straight-line code
            (``benchmarks/cpu_loops.py``); for the paper's ``n_inner = n_H = 20`` unrolling
            costs only compile time. ``None`` (default) unrolls loops of at most
            :data:`MAX_UNROLL` steps; ``False`` never unrolls (constant program size).
    """

    name: str = eqx.field(static=True)
    network: type[AbstractNetwork] = eqx.field(static=True)
    head: AbstractHead = eqx.field(static=True)
    outer_loss: OuterLoss = eqx.field(static=True)
    n_inner: int = eqx.field(static=True)
    n_hessian: int = eqx.field(static=True)
    linear_solver: Any = eqx.field(default=None, static=True)
    inner_optimizer: Callable[[Any], optax.GradientTransformation] = eqx.field(
        default=optax.adam, static=True
    )
    unroll: bool | None = eqx.field(default=None, static=True)
    clip_implicit: bool = eqx.field(default=False, static=True)
    label_margin: bool = eqx.field(default=False, static=True)
    normalize_rhs: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        for name in ("n_inner", "n_hessian"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.name}: `{name}` must be an integer >= 0, got {value!r}.")

    @property
    def uses_learning_rates(self) -> bool:
        return self.n_inner > 0 or (self.n_hessian > 0 and self.linear_solver is None)

    def minimizer(self, lr: Array, count: Array | None = None) -> bilevel.OptaxMinimizer:
        """The inner optimizer; ``count``: where its step counters start (``None``: 0)."""
        # The learning rate is a leaf of the minimizer (traced, tuned without recompiling).
        return bilevel.OptaxMinimizer(
            functools.partial(_inner_transform, self.inner_optimizer, self.head),
            steps=self.n_inner,
            unroll=self._unroll(self.n_inner),
            learning_rate=(lr, count),
        )

    def hessian_solver(self, lr: Array):
        if self.linear_solver is not None:
            return self.linear_solver
        # throw=False: a diverging solve is the learning-rate tuner's signal, not an error.
        return bilevel.AdamQuadratic(
            steps=self.n_hessian,
            learning_rate=lr,
            normalize=self.normalize_rhs,
            unroll=self._unroll(self.n_hessian),
            throw=False,
        )

    def _unroll(self, steps: int) -> bool:
        return steps <= MAX_UNROLL if self.unroll is None else self.unroll

    def solve_inner(
        self, net, x_s, y_s, l2, lrs: LearningRates, count: Array | None = None
    ) -> bilevel.Solution:
        """The inner solution, differentiable in ``(x_s, y_s)`` by implicit differentiation.

        ``throw=False``: a short fixed-step inner solve is not converged by design, and a
        diverging one shows in the loss trace that the learning-rate tuner reads."""
        return bilevel.argmin(
            self.head.inner_loss,
            self.head.init(net),
            net,
            x_s,
            y_s,
            l2,
            minimizer=self.minimizer(lrs.inner, count),
            adjoint=bilevel.Implicit(self.hessian_solver(lrs.hessian)),
            throw=False,
        )


def _inner_transform(optimizer, head: AbstractHead, rate_and_count) -> optax.GradientTransformation:
    """``optimizer(rate)``, with the updates of the leaves ``head.frozen`` marks set to zero,
    and its step counters starting at ``count`` instead of 0 when one is given."""
    rate, count = rate_and_count
    opt = optimizer(rate)
    if not isinstance(head, (JointHead, ClosedFormHead)):  # those freeze nothing
        opt = optax.chain(opt, optax.masked(optax.set_to_zero(), lambda p: head.frozen(p)))
    if count is None:
        return opt

    def init(params):
        # Adam's bias correction reads the counter: starting it at the pool model's age is what
        # the released code's reuse of the pool model's optimizer state amounts to.
        return optax.tree_utils.tree_set(opt.init(params), count=jnp.asarray(count, jnp.int32))

    return optax.GradientTransformation(init, opt.update)


def clip_to_direct(implicit: SupportSet, direct: SupportSet) -> SupportSet:
    """Scale each leaf of the implicit gradient down to at most the norm of the same leaf of the
    direct gradient (a leaf whose implicit part is 0 stays 0), as the released code does before
    adding them (``do_meta_train_step``: "we found that this helps stability for high resolution
    datasets, as the implicit gradient could grow very very large")."""

    def clip(i, d):
        ni, nd = jnp.linalg.norm(i.ravel()), jnp.linalg.norm(d.ravel())
        safe = jnp.where(ni > 0, ni, 1.0)
        return jnp.where(ni > 0, i * (jnp.minimum(ni, nd) / safe), jnp.zeros_like(i))

    return jax.tree_util.tree_map(clip, implicit, direct)


def meta_loss(
    support: SupportSet,
    algorithm: Algorithm,
    model0: ConvNet,
    x_target: Array,
    y_target: Array,
    l2: float | Array,
    lrs: LearningRates,
    constant: SupportSet | None = None,
    inner: SupportSet | None = None,
    inner_count: Array | None = None,
) -> tuple[Array, MetaInfo]:
    """The outer loss of one meta-step; ``jax.grad`` of it is the meta-gradient (direct +
    implicit) with respect to ``support``.

    Args:
        support: the support set being learned (the differentiated part).
        algorithm: the composition.
        model0: the pool model ``θ₀`` (linearisation point / start of the inner problem).
        x_target: a batch of real images.
        y_target: their one-hot labels.
        l2: ``λ``.
        lrs: inner and Hessian-inverse learning rates.
        constant: extra support images/labels that take part in the inner problem but get no
            gradient (the rest of the set under bias-free subsampling), or ``None``. They are
            evaluated as the ``remat`` part of a :class:`~distillation.networks.Partitioned`
            batch, so their activations are never all stored at once.
        inner: the same values as ``support``, given separately to separate the two parts of
            the meta-gradient: ``jax.grad`` with respect to ``support`` is then the direct part
            (through the prediction on the target batch and the label margin) and with respect
            to ``inner`` the implicit part (through the inner solution). ``None``: ``support``
            plays both roles.
        inner_count: where the inner optimizer's step counters start (the pool model's age in
            the released code, whose inner solve continues the pool model's Adam state);
            ``None``: 0.
    """
    inner = support if inner is None else inner

    def batch(part: SupportSet) -> tuple[Array | Partitioned, Array]:
        if constant is None:
            return part.images, part.labels
        # The constant part is rematerialised in chunks the size of the differentiated part.
        x_s = Partitioned(
            part.images, jax.lax.stop_gradient(constant.images), chunk=part.images.shape[0]
        )
        y_s = jnp.concatenate([part.labels, jax.lax.stop_gradient(constant.labels)])
        return x_s, y_s

    net = algorithm.network(model0)
    x_i, y_i = batch(inner)
    solution = algorithm.solve_inner(net, x_i, y_i, l2, lrs, inner_count)
    delta, info = solution.value, solution.stats
    x_s, y_s = batch(support)
    outputs = algorithm.head.predict(delta, net, x_s, y_s, l2, x_target)
    loss = algorithm.outer_loss(outputs, y_target, support.log_temperature)
    if algorithm.label_margin:
        loss = loss - label_margin(y_s)
    accuracy = jnp.mean(jnp.argmax(outputs, -1) == jnp.argmax(y_target, -1))
    meta_info = MetaInfo(loss, info.loss, info.grad_norm, info.loss_trace, accuracy)
    return loss, jax.lax.stop_gradient(meta_info)


def vig(
    n_inner: int = 20,
    n_hessian: int = 20,
    linear_solver=None,
    inner_optimizer=optax.adam,
) -> Algorithm:
    """Vanilla implicit gradients: the network trained with standard dynamics.

    Args:
        n_inner: inner optimizer steps.
        n_hessian: ``AdamQuadratic`` steps for ``v = H⁻¹g``.
        linear_solver: a fixed ``bilevel`` linear solver instead of the tuned ``AdamQuadratic``.
        inner_optimizer: ``learning_rate -> optax optimizer`` for the inner problem.
    """
    return Algorithm(
        "vig",
        StandardNetwork,
        JointHead(),
        platt_cross_entropy,
        n_inner,
        n_hessian,
        linear_solver,
        inner_optimizer,
    )


def cig(
    n_inner: int = 20,
    n_hessian: int = 20,
    linear_solver=None,
    inner_optimizer=optax.adam,
) -> Algorithm:
    """Convexified implicit gradients: the centred linearisation, head trained with the body.

    Arguments as :func:`vig`.
    """
    return Algorithm(
        "cig",
        LinearizedNetwork,
        JointHead(),
        platt_cross_entropy,
        n_inner,
        n_hessian,
        linear_solver,
        inner_optimizer,
    )


def rig(
    n_inner: int = 20,
    n_hessian: int = 20,
    linear_solver=None,
    inner_optimizer=optax.adam,
    precision: Precision = "float32",
    head: AbstractHead | None = None,
    clip_implicit: bool = True,
    label_margin: bool = True,
    normalize_rhs: bool = False,
) -> Algorithm:
    """Implicit gradients with the kernel-ridge final layer on a standard-dynamics network.

    Arguments as :func:`rcig`.
    """
    return _krr_algorithm(
        "rig",
        StandardNetwork,
        n_inner,
        n_hessian,
        linear_solver,
        inner_optimizer,
        precision,
        head,
        clip_implicit,
        label_margin,
        normalize_rhs,
    )


def rcig(
    n_inner: int = 20,
    n_hessian: int = 20,
    linear_solver=None,
    inner_optimizer=optax.adam,
    precision: Precision = "float32",
    head: AbstractHead | None = None,
    clip_implicit: bool = True,
    label_margin: bool = True,
    normalize_rhs: bool = False,
) -> Algorithm:
    """RCIG: centred linearisation + kernel-ridge final layer + ``AdamQuadratic`` for ``H⁻¹g``.

    The defaults are the authors' released code (``docs/fidelity.md``); the paper's text is
    ``rcig(head=ClosedFormHead(), clip_implicit=False, label_margin=False,
    normalize_rhs=True)`` (:func:`rcig_paper_text`).

    Args:
        n_inner: inner optimizer steps.
        n_hessian: ``AdamQuadratic`` steps for ``v = H⁻¹g``.
        linear_solver: a fixed ``bilevel`` linear solver instead of the tuned ``AdamQuadratic``.
        inner_optimizer: ``learning_rate -> optax optimizer`` for the inner problem.
        precision: of the ``|S|×|S|`` solve (``"float64"`` needs 64-bit JAX).
        head: the final layer's treatment; ``None``: :class:`KRRHead` (the released code's).
        clip_implicit: clip the implicit gradient to the direct one's norm, leaf by leaf.
        label_margin: subtract the label-margin term from the outer loss.
        normalize_rhs: solve for ``g/‖g‖`` and rescale.
    """
    return _krr_algorithm(
        "rcig",
        LinearizedNetwork,
        n_inner,
        n_hessian,
        linear_solver,
        inner_optimizer,
        precision,
        head,
        clip_implicit,
        label_margin,
        normalize_rhs,
    )


def rcig_paper_text(
    n_inner: int = 20,
    n_hessian: int = 20,
    linear_solver=None,
    inner_optimizer=optax.adam,
    precision: Precision = "float32",
) -> Algorithm:
    """RCIG as the paper's text writes it (Eq. 3–7): the closed-form head with its bias in the
    kernel (:class:`ClosedFormHead`), no clipping, no label margin, a normalised right-hand
    side. Kept as a named option; the default :func:`rcig` follows the released code."""
    return _krr_algorithm(
        "rcig-paper",
        LinearizedNetwork,
        n_inner,
        n_hessian,
        linear_solver,
        inner_optimizer,
        precision,
        ClosedFormHead(precision),
        clip_implicit=False,
        label_margin=False,
        normalize_rhs=True,
    )


def _krr_algorithm(
    name,
    network,
    n_inner,
    n_hessian,
    linear_solver,
    inner_optimizer,
    precision,
    head,
    clip_implicit,
    label_margin,
    normalize_rhs,
) -> Algorithm:
    return Algorithm(
        name,
        network,
        KRRHead(precision) if head is None else head,
        platt_cross_entropy,
        n_inner,
        n_hessian,
        linear_solver,
        inner_optimizer,
        clip_implicit=clip_implicit,
        label_margin=label_margin,
        normalize_rhs=normalize_rhs,
    )


def frepo(precision: Precision = "float32") -> Algorithm:
    """FRePo-like baseline: RCIG with ``n_inner = n_H = 0`` and an MSE outer loss.

    With no inner steps ``Δ_B = 0``, so the prediction is kernel ridge regression on the pool
    model's last-layer features and the meta-gradient is the direct gradient only.
    """
    return Algorithm(
        "frepo", LinearizedNetwork, ClosedFormHead(precision), mean_squared_error, 0, 0
    )


ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    "vig": vig,
    "cig": cig,
    "rig": rig,
    "rcig": rcig,
    "rcig-paper": rcig_paper_text,
    "frepo": frepo,
}
