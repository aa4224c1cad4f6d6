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
import numpy as np
import optax
from jaxtyping import Array

import bilevel
from distillation._checks import check_int
from distillation._models import ConvNet
from distillation._networks import (
    AbstractNetwork,
    LinearizedNetwork,
    Partitioned,
    StandardNetwork,
)
from distillation._objectives import (
    AbstractHead,
    ClosedFormHead,
    InnerProblem,
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


class InnerRate(NamedTuple):
    """The inner optimizer's argument: its learning rate and where its step counters start
    (both pytree leaves of :attr:`Algorithm.inner_solver`, so both are traced and tuned or
    changed by replacing leaves, without recompiling)."""

    rate: Array
    step_count: Array


class MetaInfo(NamedTuple):
    """Diagnostics of one meta-gradient evaluation."""

    outer_loss: Array
    inner_loss: Array
    inner_grad_norm: Array
    inner_loss_trace: Array
    accuracy: Array


class Algorithm(eqx.Module):
    """A dataset-distillation algorithm as a composition of five pieces; build one with
    :func:`vig`, :func:`cig`, :func:`rig`, :func:`rcig`, :func:`rcig_paper_text`, :func:`frepo`
    or :func:`random_subset`, or directly (``docs/architecture.md`` has an example).

    Attributes:
        name: for logs and exports.
        network: the inner model's parameterisation (a class from ``networks``:
            ``LinearizedNetwork`` or ``StandardNetwork``).
        final_layer: how the inner problem treats the final layer (``objectives``:
            ``JointHead``, ``ClosedFormHead``, ``KRRHead``).
        inner_solver: a ``bilevel.OptaxMinimizer`` whose ``learning_rate`` is an
            :class:`InnerRate` (learning rate and starting step count, both leaves).
        hypergradient: how the inner solution is differentiated: ``bilevel.Implicit(solver)``
            (with ``bilevel.AdamQuadratic`` its learning rate is a leaf the run tunes) or
            ``bilevel.Unrolled()``.
        outer_loss: ``(outputs, labels, log_temperature) -> scalar``.
        clip_implicit: clip the implicit part of the meta-gradient, leaf by leaf, to the norm
            of the direct part (:func:`clip_to_direct`; the released code does, for RIG/RCIG).
        label_margin: subtract :func:`~distillation.label_margin` of the support
            labels from the outer loss (the released code does, for RIG/RCIG).
        learns: ``False`` for the random-subset baseline (the support set is not optimised).
    """

    name: str = eqx.field(static=True)
    network: type[AbstractNetwork] = eqx.field(static=True)
    final_layer: AbstractHead
    inner_solver: bilevel.OptaxMinimizer
    hypergradient: bilevel.AbstractAdjoint
    outer_loss: OuterLoss = eqx.field(static=True)
    clip_implicit: bool = eqx.field(default=False, static=True)
    label_margin: bool = eqx.field(default=False, static=True)
    learns: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if not isinstance(self.inner_solver, bilevel.OptaxMinimizer) or not isinstance(
            self.inner_solver.learning_rate, InnerRate
        ):
            raise ValueError(
                f"{self.name}: `inner_solver` must be a bilevel.OptaxMinimizer whose "
                "`learning_rate` is an InnerRate (build it with `inner_solver(...)`), got "
                f"{self.inner_solver!r}."
            )
        if not isinstance(self.hypergradient, bilevel.AbstractAdjoint):
            raise ValueError(
                f"{self.name}: `hypergradient` must be bilevel.Implicit(...) or "
                f"bilevel.Unrolled(...), got {self.hypergradient!r}."
            )

    @property
    def n_inner(self) -> int:
        return self.inner_solver.steps

    @property
    def inner_lr(self) -> Array:
        """The inner optimizer's learning rate (a leaf)."""
        return self.inner_solver.learning_rate.rate

    @property
    def tuned_hessian_solver(self) -> bilevel.AdamQuadratic | None:
        """The ``AdamQuadratic`` that solves ``H v = g``, when the hypergradient uses one with
        steps (its learning rate is tuned with the inner one); else ``None``."""
        hyper = self.hypergradient
        if isinstance(hyper, bilevel.Implicit) and isinstance(
            hyper.linear_solver, bilevel.AdamQuadratic
        ):
            return hyper.linear_solver if hyper.linear_solver.steps > 0 else None
        return None

    @property
    def hessian_lr(self) -> Array | None:
        """The tuned Hessian-inverse learning rate, or ``None`` when there is none."""
        solver = self.tuned_hessian_solver
        return None if solver is None else jnp.asarray(solver.learning_rate)

    @property
    def uses_learning_rates(self) -> bool:
        return self.n_inner > 0 or self.tuned_hessian_solver is not None

    def with_learning_rates(
        self, inner: Array | float | None = None, hessian: Array | float | None = None
    ) -> Algorithm:
        """The same algorithm with the inner and/or Hessian-inverse learning rate replaced
        (``eqx.tree_at`` on the leaves; ``None`` keeps one). A Hessian rate is ignored when
        the hypergradient has no tuned ``AdamQuadratic``."""
        out = self
        if inner is not None:
            out = eqx.tree_at(
                lambda a: a.inner_solver.learning_rate.rate, out, _like(inner, self.inner_lr)
            )
        solver = self.tuned_hessian_solver
        if hessian is not None and solver is not None:
            out = eqx.tree_at(
                lambda a: a.hypergradient.linear_solver.learning_rate,
                out,
                _like(hessian, solver.learning_rate),
            )
        return out

    def with_inner_count(self, count: Array) -> Algorithm:
        """The same algorithm with the inner optimizer's step counters starting at ``count``."""
        return eqx.tree_at(
            lambda a: a.inner_solver.learning_rate.step_count, self, jnp.asarray(count, jnp.int32)
        )

    def with_linearisation_path(self, models: ConvNet) -> Algorithm:
        """The same algorithm with the inner solver's step ``k`` taking its loss and gradient at
        the pool model ``models[k]`` (stacked, leading axis ``n_inner``) instead of the
        problem's own: the released code's inner solve, during which the pool model's weights
        move one step of its Adam per inner step (``ModelPool.drift_path``). The solution's
        optimality condition, and so the implicit gradient, stays at the problem's model."""
        return eqx.tree_at(
            lambda a: a.inner_solver.step_args,
            self,
            LinearisationPath(jax.lax.stop_gradient(models)),
            is_leaf=lambda x: x is None,
        )

    def solve_inner(self, problem: InnerProblem) -> bilevel.Solution:
        """The inner solution, differentiable in the problem's support set through
        :attr:`hypergradient`.

        ``throw=False``: a short fixed-step inner solve is not converged by design, and a
        diverging one shows in the loss trace that the learning-rate tuning reads."""
        return bilevel.argmin(
            self.final_layer.inner_loss,
            self.final_layer.init(problem.network),
            problem,
            minimizer=self.inner_solver,
            adjoint=self.hypergradient,
            throw=False,
        )


class LinearisationPath(eqx.Module):
    """``OptaxMinimizer.step_args`` for :meth:`Algorithm.with_linearisation_path`: step ``k``'s
    inner problem is the problem with its network's pool model replaced by ``models[k]``."""

    models: ConvNet

    def __call__(self, k: Array, problem: InnerProblem) -> tuple[InnerProblem]:
        model = jax.tree_util.tree_map(lambda a: a[k], self.models)
        return (eqx.tree_at(lambda p: p.network.model0, problem, model),)


def _like(value: Array | float, leaf: Any) -> Array:
    """``value`` as a learning-rate leaf: an array keeps its dtype; a number takes ``leaf``'s."""
    if isinstance(value, (jax.Array, np.ndarray)):
        return jnp.asarray(value)
    return jnp.asarray(value, jnp.result_type(leaf))


def _as_rate(value: Array | float) -> Array:
    """A starting learning rate: an array keeps its dtype, a number becomes float32."""
    return (
        jnp.asarray(value)
        if isinstance(value, (jax.Array, np.ndarray))
        else jnp.asarray(value, jnp.float32)
    )


def _inner_transform(
    optimizer, head: AbstractHead, rate: InnerRate
) -> optax.GradientTransformation:
    """``optimizer(rate)`` on all leaves but those ``head.frozen`` marks, whose updates are 0,
    or their raw gradients when ``head.frozen_passthrough`` (the released code's
    ``optax.masked``); its step counters (if it has any) start at ``rate.step_count``."""
    opt = optimizer(rate.rate)
    if head.frozen_passthrough:
        opt = optax.masked(opt, lambda p: jax.tree_util.tree_map(lambda f: not f, head.frozen(p)))
    elif not isinstance(head, (JointHead, ClosedFormHead)):  # those freeze nothing
        opt = optax.chain(opt, optax.masked(optax.set_to_zero(), lambda p: head.frozen(p)))

    def init(params):
        # Adam's bias correction reads the counter: starting it at the pool model's age is what
        # the released code's reuse of the pool model's optimizer state amounts to.
        state = opt.init(params)
        if not optax.tree_utils.tree_get_all_with_path(state, "count"):
            return state  # an optimizer without a step counter (sgd)
        return optax.tree_utils.tree_set(state, count=rate.step_count)

    return optax.GradientTransformation(init, opt.update)


def inner_solver(
    head: AbstractHead,
    steps: int,
    *,
    optimizer: Callable[[Any], optax.GradientTransformation] = optax.adam,
    learning_rate: float | Array = 1e-5,
    unroll: bool | None = None,
) -> bilevel.OptaxMinimizer:
    """The inner solver: ``steps`` steps of ``optimizer(learning_rate)`` from ``Δ = 0``, with
    the leaves ``head.frozen`` marks held, its learning rate and starting step count leaves
    (:class:`InnerRate`).

    Args:
        unroll: unroll the loop (``lax.scan(unroll=True)``). On CPU, XLA runs convolution
            gradients 2–27× slower inside a loop than in straight-line code
            (``benchmarks/cpu_loops.py``); for the paper's ``n_inner = 20`` unrolling costs
            only compile time. ``None``: unroll at most :data:`MAX_UNROLL` steps.
    """
    return bilevel.OptaxMinimizer(
        functools.partial(_inner_transform, optimizer, head),
        steps=steps,
        unroll=_unroll(steps, unroll),
        learning_rate=InnerRate(jnp.asarray(learning_rate, jnp.float32), jnp.asarray(0, jnp.int32)),
    )


def implicit_adam(
    steps: int,
    *,
    learning_rate: float | Array = 5e-5,
    normalize: bool = False,
    unroll: bool | None = None,
) -> bilevel.Implicit:
    """The implicit hypergradient with ``v = H⁻¹g`` from ``steps`` steps of Adam on the
    quadratic (``bilevel.AdamQuadratic``; its learning rate is the leaf the run tunes).

    ``throw=False``: a diverging solve is the learning-rate tuning's signal, not an error.
    ``normalize``: solve for ``g/‖g‖`` and rescale (the released code does not, so its tuned
    Hessian learning rate depends on the size of ``g``)."""
    return bilevel.Implicit(
        bilevel.AdamQuadratic(
            steps=steps,
            learning_rate=_as_rate(learning_rate),
            normalize=normalize,
            unroll=_unroll(steps, unroll),
            throw=False,
        )
    )


def _unroll(steps: int, unroll: bool | None) -> bool:
    return steps <= MAX_UNROLL if unroll is None else unroll


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
    constant: SupportSet | None = None,
    inner: SupportSet | None = None,
) -> tuple[Array, MetaInfo]:
    """The outer loss of one meta-step; ``jax.grad`` of it is the meta-gradient (direct +
    implicit) with respect to ``support``.

    Args:
        support: the support set being learned (the differentiated part).
        algorithm: the composition (its solvers carry their learning rates).
        model0: the pool model ``θ₀`` (linearisation point / start of the inner problem).
        x_target: a batch of real images.
        y_target: their one-hot labels.
        l2: ``λ``.
        constant: extra support images/labels that take part in the inner problem but get no
            gradient (the rest of the set under bias-free subsampling), or ``None``. They are
            evaluated as the ``remat`` part of a :class:`~distillation.Partitioned`
            batch, so their activations are never all stored at once.
        inner: the same values as ``support``, given separately to separate the two parts of
            the meta-gradient: ``jax.grad`` with respect to ``support`` is then the direct part
            (through the prediction on the target batch and the label margin) and with respect
            to ``inner`` the implicit part (through the inner solution). ``None``: ``support``
            plays both roles.
    """
    inner = support if inner is None else inner
    net = algorithm.network(model0)
    l2 = jnp.asarray(l2)

    def problem(part: SupportSet) -> InnerProblem:
        if constant is None:
            return InnerProblem(net, part.images, part.labels, l2)
        # The constant part is rematerialised in chunks the size of the differentiated part.
        images = Partitioned(
            part.images, jax.lax.stop_gradient(constant.images), chunk=part.images.shape[0]
        )
        labels = jnp.concatenate([part.labels, jax.lax.stop_gradient(constant.labels)])
        return InnerProblem(net, images, labels, l2)

    solution = algorithm.solve_inner(problem(inner))
    delta, info = solution.value, solution.stats
    target_problem = problem(support)
    outputs = algorithm.final_layer.predict(delta, target_problem, x_target)
    loss = algorithm.outer_loss(outputs, y_target, support.log_temperature)
    if algorithm.label_margin:
        loss = loss - label_margin(target_problem.labels)
    accuracy = jnp.mean(jnp.argmax(outputs, -1) == jnp.argmax(y_target, -1))
    meta_info = MetaInfo(loss, info.loss, info.grad_norm, info.loss_trace, accuracy)
    return loss, jax.lax.stop_gradient(meta_info)


def compose(
    name: str,
    network: type[AbstractNetwork],
    final_layer: AbstractHead,
    outer_loss: OuterLoss,
    *,
    n_inner: int = 20,
    n_hessian: int | None = None,
    linear_solver: Any = None,
    inner_optimizer: Callable[[Any], optax.GradientTransformation] = optax.adam,
    inner_lr: float | Array = 1e-5,
    hessian_lr: float | Array = 5e-5,
    unroll: bool | None = None,
    normalize_rhs: bool = False,
    clip_implicit: bool = False,
    label_margin: bool = False,
    learns: bool = True,
) -> Algorithm:
    """An :class:`Algorithm` from its pieces and the solver settings every factory shares.

    Args:
        n_inner: inner optimizer steps.
        n_hessian: ``AdamQuadratic`` steps for ``v = H⁻¹g`` (default 20); only with the default
            solver (a solver passed as ``linear_solver`` carries its own settings).
        linear_solver: a ``bilevel`` linear solver for ``H v = g`` instead of the tuned
            ``AdamQuadratic`` (e.g. ``bilevel.CG()``), or ``"unrolled"`` to backpropagate
            through the inner iterations instead of the implicit function theorem.
        inner_optimizer: ``learning_rate -> optax optimizer`` for the inner problem.
        inner_lr, hessian_lr: the starting learning rates (the released code's 1e-5, 5e-5;
            tuned during a run).
        unroll: unroll the inner and Hessian-inverse loops (``None``: up to
            :data:`MAX_UNROLL` steps).
        normalize_rhs: ``AdamQuadratic`` solves for ``g/‖g‖`` and rescales.
    """
    check_int(name, "n_inner", n_inner, minimum=0)
    if n_hessian is not None:
        check_int(name, "n_hessian", n_hessian, minimum=0)
    if linear_solver is None:
        hypergradient: bilevel.AbstractAdjoint = implicit_adam(
            20 if n_hessian is None else n_hessian,
            learning_rate=hessian_lr,
            normalize=normalize_rhs,
            unroll=unroll,
        )
    elif n_hessian is not None:
        raise ValueError(
            f"{name}: `n_hessian={n_hessian}` sets the steps of the default AdamQuadratic; with "
            f"`linear_solver={linear_solver!r}` set the solver's own settings instead."
        )
    elif linear_solver == "unrolled":
        hypergradient = bilevel.Unrolled()
    else:
        hypergradient = bilevel.Implicit(linear_solver)
    return Algorithm(
        name,
        network,
        final_layer,
        inner_solver(
            final_layer, n_inner, optimizer=inner_optimizer, learning_rate=inner_lr, unroll=unroll
        ),
        hypergradient,
        outer_loss,
        clip_implicit=clip_implicit,
        label_margin=label_margin,
        learns=learns,
    )


def vig(*, precision: Precision = "float32", **solver_settings: Any) -> Algorithm:
    """Vanilla implicit gradients: the network trained with standard dynamics, its final layer
    with the body (:class:`JointHead`), Platt cross-entropy.

    Keywords: as :func:`compose` (``n_inner``, ``n_hessian``, ``linear_solver``,
    ``inner_optimizer``, ``inner_lr``, ``hessian_lr``, ``unroll``); ``precision`` must stay
    ``"float32"`` (there is no ``|S|×|S|`` solve).
    """
    _no_gram_solve("vig", precision)
    return compose(
        "vig",
        StandardNetwork,
        JointHead(),
        platt_cross_entropy,
        normalize_rhs=True,
        **solver_settings,
    )


def cig(*, precision: Precision = "float32", **solver_settings: Any) -> Algorithm:
    """Convexified implicit gradients: the centred linearisation, head trained with the body.

    Keywords as :func:`vig`.
    """
    _no_gram_solve("cig", precision)
    return compose(
        "cig",
        LinearizedNetwork,
        JointHead(),
        platt_cross_entropy,
        normalize_rhs=True,
        **solver_settings,
    )


def _no_gram_solve(name: str, precision: str) -> None:
    if precision != "float32":
        raise ValueError(
            f"{name}: `precision={precision!r}` sets the |S|×|S| solve of a kernel-ridge head; "
            f"{name} trains its final layer with the body and has none (use rig or rcig)."
        )


def rig(
    *,
    precision: Precision = "float32",
    head: AbstractHead | None = None,
    clip_implicit: bool = True,
    label_margin: bool = True,
    normalize_rhs: bool = False,
    **solver_settings: Any,
) -> Algorithm:
    """Implicit gradients with the kernel-ridge final layer on a standard-dynamics network.

    Keywords as :func:`rcig`.
    """
    return compose(
        "rig",
        StandardNetwork,
        KRRHead(precision) if head is None else head,
        platt_cross_entropy,
        clip_implicit=clip_implicit,
        label_margin=label_margin,
        normalize_rhs=normalize_rhs,
        **solver_settings,
    )


def rcig(
    *,
    precision: Precision = "float32",
    head: AbstractHead | None = None,
    clip_implicit: bool = True,
    label_margin: bool = True,
    normalize_rhs: bool = False,
    **solver_settings: Any,
) -> Algorithm:
    """RCIG: centred linearisation + kernel-ridge final layer + ``AdamQuadratic`` for ``H⁻¹g``.

    The defaults are the authors' released code (``docs/fidelity.md``); the paper's text is
    ``rcig(head=ClosedFormHead(), clip_implicit=False, label_margin=False,
    normalize_rhs=True)`` (:func:`rcig_paper_text`).

    Args:
        precision: of the ``|S|×|S|`` solve (``"float64"`` needs 64-bit JAX).
        head: the final layer's treatment; ``None``: :class:`KRRHead` (the released code's).
        clip_implicit: clip the implicit gradient to the direct one's norm, leaf by leaf.
        label_margin: subtract the label-margin term from the outer loss.
        normalize_rhs: solve for ``g/‖g‖`` and rescale.
        **solver_settings: as :func:`compose` (``n_inner``, ``n_hessian``, ``linear_solver``,
            ``inner_optimizer``, ``inner_lr``, ``hessian_lr``, ``unroll``).
    """
    return compose(
        "rcig",
        LinearizedNetwork,
        KRRHead(precision) if head is None else head,
        platt_cross_entropy,
        clip_implicit=clip_implicit,
        label_margin=label_margin,
        normalize_rhs=normalize_rhs,
        **solver_settings,
    )


def rcig_paper_text(*, precision: Precision = "float32", **solver_settings: Any) -> Algorithm:
    """RCIG as the paper's text writes it (Eq. 3–7): the closed-form head with its bias in the
    kernel (:class:`ClosedFormHead`), no clipping, no label margin, a normalised right-hand
    side. Kept as a named option; the default :func:`rcig` follows the released code.

    Keywords as :func:`vig`, and ``precision`` as :func:`rcig`."""
    return compose(
        "rcig-paper",
        LinearizedNetwork,
        ClosedFormHead(precision),
        platt_cross_entropy,
        normalize_rhs=True,
        **solver_settings,
    )


def frepo(*, precision: Precision = "float32", **solver_settings: Any) -> Algorithm:
    """FRePo-like baseline: RCIG's network with the closed-form head, ``n_inner = n_H = 0`` by
    default, and an MSE outer loss.

    With no inner steps ``Δ_B = 0``, so the prediction is kernel ridge regression on the pool
    model's last-layer features and the meta-gradient is the direct gradient only.
    Keywords as :func:`rcig_paper_text`.
    """
    solver_settings = {"n_inner": 0, **solver_settings}
    if solver_settings.get("linear_solver") is None:
        solver_settings.setdefault("n_hessian", 0)
    return compose(
        "frepo",
        LinearizedNetwork,
        ClosedFormHead(precision),
        mean_squared_error,
        normalize_rhs=True,
        **solver_settings,
    )


def random_subset(*, precision: Precision = "float32", **solver_settings: Any) -> Algorithm:
    """The random-subset baseline: real images with one-hot labels, not optimised
    (``learns=False``: a run keeps its initial set). Keywords as :func:`rcig`, unused."""
    return compose(
        "random",
        LinearizedNetwork,
        KRRHead(precision),
        platt_cross_entropy,
        learns=False,
        **solver_settings,
    )


ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    "random": random_subset,
    "vig": vig,
    "cig": cig,
    "rig": rig,
    "rcig": rcig,
    "rcig-paper": rcig_paper_text,
    "frepo": frepo,
}
