"""Algorithm 1: the distillation step as explicit state and pure functions, and a run.

* :class:`DistillConfig` — the settings (typed, validated when built).
* :func:`init_support` — a support set initialised from real images (``ipc`` per class).
* :func:`meta_optimizer` — AdaBelief, lr 0.003 on images and labels, 0.03 on ``log τ``.
* :class:`Distiller` — ``init(support, *, key) -> state``, ``next_batch``, ``step(state, batch)
  -> (state, metrics)``: sample a pool model, take the meta-gradient
  (:func:`distillation.meta_loss`), update the support set and its moving average,
  train the pool model, tune the learning rates.
* :func:`distill` — a whole run from arrays: the support set, the distiller, the learning-rate
  pre-round, and the host loop :func:`distillation.run` with its callbacks (progress bar,
  history, checkpoints, snapshots, signal stop), resumable.
"""

from __future__ import annotations

import dataclasses
import re
import signal
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from bilevel import optax_step
from distillation._algorithms import Algorithm, MetaInfo, SupportSet, clip_to_direct, meta_loss
from distillation._checkpoint import (
    RunFailed,
    has_checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
    settings_mismatch,
)
from distillation._checks import check_int, one_hot
from distillation._interrupts import InterruptGuard
from distillation._loop import (
    Callback,
    Checkpointer,
    History,
    Interrupted,
    ProgressBar,
    SignalStop,
    Snapshots,
    run,
)
from distillation._models import Activation, ConvNet, Norm, conv_net, default_depth
from distillation._networks import Partitioned
from distillation._objectives import InnerProblem
from distillation._pool import ModelPool, PoolState
from distillation._tf_shuffle import key_seed, tf_shuffle_order
from distillation._tuning import (
    LearningRateTuner,
    classify_trace,
    released_preround,
    released_schedule,
    solve_traces,
)
from distillation.data._datasets import HostImages
from distillation.evaluation._augment import with_mirrors

LrTuning = Literal["released", "schedule", "probe", "none"]
AdaBelief = Literal["released", "current"]
DriftOrder = Literal["stepwise", "before"]
InitDraw = Literal["released", "buffer", "uniform"]


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run (parsed at the entry point; typed all the way down).

    Defaults are the authors' released code's (``docs/fidelity.md`` lists each with its source):
    m = 30 pool models trained with Adam 5e-5 for 1–15 steps per selection and renewed after
    K = 100 steps, AdaBelief 0.003 / 0.03 on the support set, target batches of 1024 drawn as
    shuffled epochs, ``λ = 0.0005 · (images learned)`` (0.05 at depth 5), labels initialised to
    the centred one-hot, temperature 1, an EMA (0.99) of the support set as the result, and the
    learning rates tuned by the released code's pre-round and schedule
    (``lr_tuning="released"``).

    Attributes:
        lr_tuning: ``"released"``: before training, raise the inner learning rate from the
            algorithm's starting one (``inner_lr``, 1e-5) ×1.2 while a probe's inner solve
            stays monotone, then ×0.7, and the Hessian-inverse one (``hessian_lr``, 5e-5) the
            same way; during training, every 50
            iterations scale the inner one ×0.9 when ≥ 29 % of the solves since the last
            change ended above their start, ×1.05 when ≥ 70 % were monotone (the Hessian one
            stays). ``"schedule"``: that schedule without the pre-round, from the algorithm's
            rates as given (replaying a stored tuning, as the released harness's
            ``RCIG_LRS``; the pre-round costs 20 min to 1.5 h on a CPU). ``"probe"``: the
            paper's text (both rates adjusted from a probe every ``tune_every`` iterations:
            ×1.05 while monotone, ×0.9 on divergence). ``"none"``: fixed rates.
        ema_decay: the result (exported, evaluated) is the bias-corrected exponential moving
            average of the support set with this decay; 0: the last iterate.
        norm: the distillation ConvNet's normalisation: ``"none"`` (the paper's), ``"instance"``,
            or ``"batch"`` (the paper's RCIG (BN) row, as the released code: each pool model
            keeps running statistics, moved only while the pool trains on the whole support
            set in training mode; every inner, Hessian and outer pass normalises with the
            selected model's running statistics, and the batch-norm scales and offsets are
            part of the inner problem's displacement). Batch norm needs the pool's training
            batch whole, so it is refused with subsampling (``n_subset`` < |S|).
        mixed_precision: the ConvNet's convolutions take bfloat16 operands and sum in float32
            (an option for GPUs and TPUs, whose matrix units run bfloat16 several times faster;
            on CPU it is slower); the |S|×|S| solve keeps the algorithm's ``precision``
            (float32, or float64 with ``precision="float64"``).
        inner_count_from_pool: the inner optimizer's step counter starts at the pool model's
            age (its training steps so far): the released code's inner solve continues the pool
            model's optimizer state, whose counter Adam's bias correction reads (its moments
            are zero there, so only the counter carries over). ``False``: from 0.
        center_labels: initial labels ``one-hot − 1/K`` (the released code) instead of one-hot.
        init_draw: how the starting images are drawn (:func:`init_support`): ``"released"``,
            the released code's ``init_proto``: the training set in its stored order through
            tf.data's shuffle buffer of ``10·ipc·K`` examples, seeded with the run's seed, the
            first ``ipc`` of each class to come out: the very images the released code starts
            from with the same seed and the same stored order (the key passed to
            :func:`distill` is read as ``jax.random.key(seed)``); ``"buffer"``: the same rule
            with this project's generator from the key (the default 2026-12-04 – 2026-12-06:
            the same distribution, other images); ``"uniform"``: ``ipc`` per class uniformly
            from the whole class (this project before 2026-12-04).
        l2_per_image: ``λ = l2_per_image · (images learned)``; ``None`` (default): the released
            configs' ``l2_rate`` for the network's depth, 0.0005 up to depth 4 and 0.05 at
            depth 5 (``configs_final/depth_5.txt``, the 128-px datasets).
        l2_counts_mirrors: ``λ`` counts the mirrors of the flip strategy (this project's earlier
            reading of ``0.0005·|S|``); the released code counts the learned images only.
        pool_max_steps: pool training steps per selection, drawn from ``1 … pool_max_steps``
            (1: the paper's Algorithm 1).
        pool_drift: take the meta-gradient at the selected pool model's weights moved by
            ``n_inner`` steps of its own Adam with a zero gradient
            (:meth:`ModelPool.drifted`), as the released code, whose inner solve continues the
            pool model's optimizer state with non-zero moments for those weights; the pool
            keeps training from the unmoved weights. ``False``: the selected weights as they
            are (the paper's Algorithm 1).
        drift_order: ``"stepwise"``: the inner solve's step ``k`` linearises at the weights
            moved ``k`` times, as the released code's, whose inner solve moves them one step
            per inner step (:meth:`ModelPool.drift_path`); ``"before"``: all ``n_inner``
            steps before the solve (this project from 2026-12-03 to 2026-12-04; the same point
            for the meta-gradient, but one step's image gradient differs by 5–18 %,
            ``benchmarks/step_vs_official.py``).
        adabelief: the meta-optimizer's AdaBelief: ``"released"`` (optax before 0.2.4, which
            the released code ran on: the belief tracks ``g_t − m_{t−1}``,
            :func:`released_adabelief`) or ``"current"`` (optax from 0.2.4 and the AdaBelief
            paper: ``g_t − m_t``, steps ``1/b1 ≈ 1.11×`` as large).
    """

    steps: int = 1000
    pool_size: int = 30
    reset_every: int = 100
    target_batch: int = 1024
    lr_support: float = 0.003
    lr_temperature: float = 0.03
    adabelief: AdaBelief = "released"
    l2_per_image: float | None = None
    init_temperature: float = 1.0
    lr_tuning: LrTuning = "released"
    tune_every: int = 10
    pool_lr: float = 5e-5
    pool_max_steps: int = 15
    pool_drift: bool = True
    drift_order: DriftOrder = "stepwise"
    ema_decay: float = 0.99
    inner_count_from_pool: bool = True
    center_labels: bool = True
    init_draw: InitDraw = "released"
    l2_counts_mirrors: bool = False
    flip: bool = False
    n_subset: int | None = None
    width: int = 128
    depth: int | None = None
    norm: Norm = "none"
    mixed_precision: bool = False
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self):
        positive_ints = (
            "steps",
            "pool_size",
            "reset_every",
            "target_batch",
            "pool_max_steps",
            "width",
            "checkpoint_every",
            "log_every",
        )
        for name in positive_ints:
            check_int("DistillConfig", name, getattr(self, name), minimum=int(name != "steps"))
        for name in (
            "lr_support",
            "lr_temperature",
            "init_temperature",
            "pool_lr",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(
                    f"DistillConfig: `{name}` must be a positive number, got {value!r}."
                )
        if self.lr_tuning not in ("released", "schedule", "probe", "none"):
            raise ValueError(
                "DistillConfig: `lr_tuning` must be 'released', 'schedule', 'probe' or 'none', "
                "got "
                f"{self.lr_tuning!r}."
            )
        if self.adabelief not in ("released", "current"):
            raise ValueError(
                "DistillConfig: `adabelief` must be 'released' or 'current', got "
                f"{self.adabelief!r}."
            )
        if self.init_draw not in ("released", "buffer", "uniform"):
            raise ValueError(
                "DistillConfig: `init_draw` must be 'released', 'buffer' or 'uniform', got "
                f"{self.init_draw!r}."
            )
        if self.drift_order not in ("stepwise", "before"):
            raise ValueError(
                "DistillConfig: `drift_order` must be 'stepwise' or 'before', got "
                f"{self.drift_order!r}."
            )
        if not isinstance(self.pool_drift, bool):
            raise ValueError(
                f"DistillConfig: `pool_drift` must be True or False, got {self.pool_drift!r}."
            )
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(
                f"DistillConfig: `ema_decay` must be in [0, 1), got {self.ema_decay!r}."
            )
        if self.l2_per_image is not None and not self.l2_per_image >= 0:
            raise ValueError(
                f"DistillConfig: `l2_per_image` must be >= 0, got {self.l2_per_image!r}."
            )
        if self.norm not in ("none", "instance", "batch"):
            raise ValueError(
                f"DistillConfig: `norm` must be 'none', 'instance' or 'batch', got {self.norm!r}."
            )
        if self.n_subset is not None and self.n_subset < 1:
            raise ValueError(
                f"DistillConfig: `n_subset` must be None or >= 1, got {self.n_subset!r}."
            )


class DistillState(eqx.Module):
    """Everything a run needs to continue: checkpoints hold exactly this.

    ``key`` and ``data_key`` hold the raw ``uint32`` data of PRNG keys
    (``jax.random.key_data``) so that the state serialises as plain arrays. ``ema`` is the
    (not yet bias-corrected) moving average of the support set (:func:`ema_support`);
    ``data_position`` counts the target images drawn so far (the epoch is
    ``data_position // N``); ``lr_stats`` counts the inner solves that failed, that were
    monotone, and all, since the last learning-rate change (``lr_tuning="released"``).
    ``algorithm`` is the run's :class:`~distillation.Algorithm` with its current
    (tuned) learning rates: they are leaves of its solvers, changed by replacing them.
    """

    support: SupportSet
    opt_state: optax.OptState
    pool: PoolState
    algorithm: Algorithm
    key: Array
    step: Array
    ema: SupportSet
    data_key: Array
    data_position: Array
    lr_stats: Array


def init_support(
    images: np.ndarray | HostImages,
    labels: np.ndarray,
    num_classes: int,
    ipc: int,
    *,
    key: Array,
    init_temperature: float = 1.0,
    center_labels: bool = False,
    indices: Sequence[int] | None = None,
    draw: InitDraw = "uniform",
    seed: int | None = None,
) -> SupportSet:
    """``ipc`` real images per class drawn at random, with one-hot labels, or, with
    ``center_labels``, ``one-hot − 1/K`` (the released code's start).

    ``draw``: ``"uniform"``, ``ipc`` per class uniformly from the whole class; ``"released"``,
    the released code's ``init_proto`` exactly: the examples in their stored order through
    tf.data's ``shuffle(10·ipc·K, seed=seed)`` (reproduced in NumPy, see
    ``distillation/_tf_shuffle.py``), the first ``ipc`` of each class to come out, so the
    released code with the same seed and the same stored order starts from the same images;
    ``seed`` defaults to the integer ``key`` was made from (``jax.random.key(seed)``).
    ``"buffer"``: the same buffer rule with this project's generator from ``key`` (the same
    distribution, other images). ``indices``: these training examples instead of a draw
    (``ipc`` of each class, see :func:`check_init_indices`)."""
    if draw not in ("uniform", "released", "buffer"):
        raise ValueError(
            f"init_support: `draw` must be 'uniform', 'released' or 'buffer', got {draw!r}."
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise ValueError(f"init_support: `seed` must be an integer or None, got {seed!r}.")
    if indices is not None:
        picks = check_init_indices(indices, labels, num_classes, ipc)
    elif draw == "released":
        if seed is None:
            seed = key_seed(jax.random.key_data(key))
        picks = _pick_as_released(labels, num_classes, ipc, int(seed))
    elif draw == "buffer":
        picks = _pick_from_buffer(labels, num_classes, ipc, key)
    else:
        picks = _pick_per_class(labels, num_classes, ipc, key)
    onehot = one_hot(labels[picks], num_classes)
    if center_labels:
        onehot = onehot - np.float32(1.0 / num_classes)
    return SupportSet(
        jnp.asarray(images[picks], jnp.float32),
        jnp.asarray(onehot),
        jnp.asarray(np.log(init_temperature), jnp.float32),
    )


def check_init_indices(
    indices: Sequence[int], labels: np.ndarray, num_classes: int, ipc: int
) -> np.ndarray:
    """The training examples a support set starts from, checked: integers in ``[0, N)``, no
    repeats, ``ipc`` of each class; returned as an array in the order given."""
    picks = np.asarray(list(indices))
    if picks.ndim != 1 or (picks.size and not np.issubdtype(picks.dtype, np.integer)):
        raise ValueError(f"init_indices must be a list of integers, got {list(indices)!r}.")
    if picks.size != ipc * num_classes:
        raise ValueError(
            f"init_indices must hold ipc·K = {ipc}·{num_classes} = {ipc * num_classes} "
            f"training indices, got {picks.size}."
        )
    bad = picks[(picks < 0) | (picks >= len(labels))]
    if bad.size:
        raise ValueError(
            f"init_indices {bad.tolist()} are outside the training set's [0, {len(labels)})."
        )
    if len(set(picks.tolist())) != picks.size:
        raise ValueError(f"init_indices repeat a training example: {picks.tolist()}.")
    counts = np.bincount(labels[picks], minlength=num_classes)
    if not np.all(counts == ipc):
        raise ValueError(
            f"init_indices must hold {ipc} image(s) of each class, got per-class counts "
            f"{counts.tolist()}."
        )
    return picks


def _check_class_sizes(labels: np.ndarray, num_classes: int, ipc: int) -> None:
    counts = np.bincount(labels, minlength=num_classes)
    for c in range(num_classes):
        if counts[c] < ipc:
            raise ValueError(
                f"ipc={ipc} images per class requested, but class {c} has only "
                f"{counts[c]} training images."
            )


def _host_rng(key: Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _pick_per_class(labels: np.ndarray, num_classes: int, ipc: int, key: Array) -> np.ndarray:
    _check_class_sizes(labels, num_classes, ipc)
    rng = _host_rng(key)
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=ipc, replace=False) for c in range(num_classes)
    ]
    return np.concatenate(picks)


def _pick_as_released(labels: np.ndarray, num_classes: int, ipc: int, seed: int) -> np.ndarray:
    """The released ``init_proto``'s draw (``algorithms.py`` 1013–1034) exactly:
    ``ds.shuffle(10·ipc·K, seed=seed)`` over the examples in stored order (tf.data's algorithm
    and generator, :func:`tf_shuffle_order`), ``group_by_window`` by class with windows of
    ``ipc``, the first window of each class. The stream stops once every class is full."""
    _check_class_sizes(labels, num_classes, ipc)
    taken: list[list[int]] = [[] for _ in range(num_classes)]
    missing = num_classes
    for example in tf_shuffle_order(len(labels), 10 * ipc * num_classes, seed):
        group = taken[int(labels[example])]
        if len(group) < ipc:
            group.append(example)
            missing -= len(group) == ipc
            if not missing:
                break
    return np.concatenate([np.asarray(t, dtype=np.int64) for t in taken])


def _pick_from_buffer(labels: np.ndarray, num_classes: int, ipc: int, key: Array) -> np.ndarray:
    """``init_draw="buffer"``: the released draw's rule (a ``10·ipc·K`` shuffle buffer over the
    stored order, the first ``ipc`` of each class) with this project's generator from ``key``:
    the same distribution as the released draw, other images (the default 2026-12-04 –
    2026-12-06)."""
    _check_class_sizes(labels, num_classes, ipc)
    rng = _host_rng(key)
    n = len(labels)
    buffer = list(range(min(10 * ipc * num_classes, n)))
    following = len(buffer)
    taken: list[list[int]] = [[] for _ in range(num_classes)]
    missing = num_classes
    while missing:
        slot = int(rng.integers(len(buffer)))
        example = buffer[slot]
        if following < n:
            buffer[slot] = following
            following += 1
        else:
            buffer[slot] = buffer[-1]
            buffer.pop()
        group = taken[int(labels[example])]
        if len(group) < ipc:
            group.append(example)
            missing -= len(group) == ipc
    return np.concatenate([np.asarray(t, dtype=np.int64) for t in taken])


def released_adabelief(
    learning_rate: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
) -> optax.GradientTransformation:
    """AdaBelief as optax computed it before 0.2.4, which the released code ran on (its code is
    from April 2023): the belief ``s`` accumulates the squared prediction error against the
    **previous** first moment, ``(g_t − m_{t−1})²``. optax 0.2.4 (pull request 1130, November
    2024) changed it to the AdaBelief paper's ``(g_t − m_t)²``, which is ``b1²`` times that, so
    that its steps are ``1/b1 ≈ 1.11`` times these (``adabelief="current"``). Same defaults and
    state (``optax.ScaleByBeliefState``) as ``optax.adabelief``."""

    def init_fn(params):
        # Two separate buffers: the step donates its state, and one buffer cannot be donated twice.
        mu, nu = (optax.tree_utils.tree_zeros_like(params) for _ in range(2))
        return optax.ScaleByBeliefState(jnp.zeros([], jnp.int32), mu, nu)

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
        # The prediction error against m_{t-1}: the released behaviour (optax < 0.2.4).
        error = optax.tree_utils.tree_sub(updates, state.mu)
        nu = optax.tree_utils.tree_update_moment_per_elem_norm(error, state.nu, b2, 2)
        nu = jax.tree.map(lambda v: v + eps_root, nu)
        count = optax.safe_increment(state.count)

        def step(m, v):
            t = count.astype(m.dtype)  # the bias corrections, in the moments' dtype
            return (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)

        updates = jax.tree.map(step, mu, nu)
        return updates, optax.ScaleByBeliefState(count, mu, nu)

    return optax.chain(
        optax.GradientTransformation(init_fn, update_fn),
        optax.scale_by_learning_rate(learning_rate),
    )


def meta_optimizer(config: DistillConfig) -> optax.GradientTransformation:
    """AdaBelief on the support set: ``lr_support`` for images and labels, ``lr_temperature``
    for ``log τ``; ``config.adabelief`` picks the released code's AdaBelief
    (:func:`released_adabelief`, the default) or current optax's (``"current"``)."""
    adabelief = released_adabelief if config.adabelief == "released" else optax.adabelief

    def labels(support: SupportSet) -> SupportSet:
        # The same structure with str leaves; tree_at does not go through SupportSet.__init__,
        # whose fields are (runtime-checked) arrays.
        return eqx.tree_at(
            lambda s: (s.images, s.labels, s.log_temperature),
            support,
            ("support", "support", "temperature"),
        )

    return optax.multi_transform(
        {
            "support": adabelief(config.lr_support),
            "temperature": adabelief(config.lr_temperature),
        },
        labels,
    )


def inner_support(support: SupportSet, config: DistillConfig) -> SupportSet:
    """The support set as the inner problem sees it (with mirrors under the flip strategy)."""
    if not config.flip:
        return support
    return SupportSet(*with_mirrors(support.images, support.labels), support.log_temperature)


def l2_rate(depth: int) -> float:
    """The released configs' ``l2_rate`` (λ per learned image) for a ConvNet of ``depth``
    blocks: 0.0005 (``depth_3*``, ``depth_4*``), 0.05 at depth 5 (``depth_5.txt``)."""
    return 0.05 if depth >= 5 else 0.0005


def l2_strength(support: SupportSet, config: DistillConfig) -> Array:
    """``λ = l2_per_image · n``: ``n`` the learned images (the released code's
    ``l2_rate · num_prototypes``), or with their mirrors when ``config.l2_counts_mirrors``;
    ``l2_per_image`` ``None`` is :func:`l2_rate` of the network's depth."""
    mirrors = config.flip and config.l2_counts_mirrors
    n_support = support.images.shape[0] * (2 if mirrors else 1)
    rate = config.l2_per_image
    if rate is None:
        depth = config.depth
        rate = l2_rate(default_depth(min(support.images.shape[1:3])) if depth is None else depth)
    return jnp.asarray(rate * n_support, jnp.float32)


def ema_support(state: DistillState, decay: float) -> SupportSet:
    """The bias-corrected moving average of the support set after ``state.step`` updates (the
    released code's ``get_updated_ema``; the initial set before any update)."""
    if decay == 0.0:
        return state.support
    correction = 1.0 - jnp.asarray(decay, jnp.float32) ** state.step.astype(jnp.float32)
    average = jax.tree_util.tree_map(lambda h: h / correction, state.ema)
    return jax.tree_util.tree_map(
        lambda a, s: jnp.where(state.step > 0, a, s), average, state.support
    )


def epoch_batch(data_key: Array, position: Array, n: int, batch: int) -> Array:
    """Indices of the ``batch`` examples at ``position … position + batch − 1`` of an endless
    stream of shuffled epochs of ``n`` examples (epoch ``e`` is a permutation drawn from
    ``fold_in(data_key, e)``): every example once per epoch, batches running across epoch ends,
    as the released code's repeated, shuffled ``tf.data`` stream."""
    key = jax.random.wrap_key_data(data_key)
    first = position // n
    epoch = lambda e: jax.random.permutation(jax.random.fold_in(key, e), n)
    where = position + jnp.arange(batch, dtype=position.dtype)
    if batch <= n:
        # Two epochs at most, and the second only when the batch runs past the first's end
        # (once an epoch): each permutation is a sort of n keys (2×22 ms for MNIST's 60,000 on
        # a CPU core, 3 % of an RCIG iteration at width 32).
        crosses = position % n + batch > n
        current = epoch(first)
        second = jax.lax.cond(crosses, epoch, lambda e: jnp.zeros_like(current), first + 1)
        perms = jnp.stack([current, second])
    else:
        spans = batch // n + 2  # the epochs a batch can touch
        perms = jax.vmap(epoch)(first + jnp.arange(spans, dtype=position.dtype))
    return perms[where // n - first, where % n]


def _sample_target(key: Array, x_train: Array, y_train: Array, config: DistillConfig):
    """A target batch drawn with replacement (the learning-rate probes')."""
    batch = jax.random.randint(key, (config.target_batch,), 0, x_train.shape[0])
    return x_train[batch], y_train[batch]


def make_pool(image_shape, num_classes, config: DistillConfig) -> ModelPool:
    def make_model(key):
        return conv_net(
            image_shape,
            num_classes,
            key=key,
            width=config.width,
            depth=config.depth,
            norm=config.norm,
            activation=distill_activation(image_shape, config.depth),
            compute_dtype="bfloat16" if config.mixed_precision else "float32",
        )

    return ModelPool(
        make_model,
        config.pool_size,
        config.reset_every,
        optax.adam(config.pool_lr),
        max_steps=config.pool_max_steps,
    )


def distill_activation(image_shape, depth: int | None) -> Activation:
    """The released code's activation while distilling: softplus (temperature 60) at depth 3,
    ReLU at depth 4 and 5 (its 64- and 128-px configs set ``softplus_temp`` to 0)."""
    depth = default_depth(min(image_shape[:2])) if depth is None else depth
    return "softplus" if depth <= 3 else "relu"


@dataclasses.dataclass(frozen=True, eq=False)
class Distiller:
    """Algorithm 1 as explicit state and pure functions: ``init(support, *, key) -> state``,
    ``next_batch(state, x, y) -> batch``, ``step(state, batch) -> (state, metrics)`` (jit each
    once; :func:`distillation.run` is the host loop).

    Build one with :meth:`build`. The learning rates live in ``state.algorithm`` (leaves of its
    solvers), so tuning them never recompiles the step. A plain (frozen) object rather than a
    pytree: its methods are what is jitted (``jax.jit(distiller.step)``), and it holds no state.

    Attributes:
        algorithm: the composition, with its starting learning rates.
        pool: the model pool.
        config: the settings.
        mesh: a 1-D ``jax.sharding.Mesh`` with axis ``"data"`` for data parallelism: the target
            batch is split over its devices (the outer loss is a mean, so each device computes
            its share of the meta-gradient and XLA sums them). Place the state with
            :func:`shard_state` so the pool is split over the devices too. ``None``: one device.
    """

    algorithm: Algorithm
    pool: ModelPool
    config: DistillConfig
    mesh: jax.sharding.Mesh | None = None

    def __post_init__(self):
        if self.mesh is not None and self.config.target_batch % self.mesh.size:
            raise ValueError(
                f"target_batch={self.config.target_batch} must be divisible by the "
                f"{self.mesh.size} devices of the mesh."
            )

    @classmethod
    def build(
        cls,
        algorithm: Algorithm,
        config: DistillConfig,
        *,
        image_shape: tuple[int, ...],
        num_classes: int,
        mesh: jax.sharding.Mesh | None = None,
    ) -> Distiller:
        """The distiller for images of ``image_shape`` and ``num_classes`` classes (its pool of
        ConvNets from ``config``)."""
        return cls(algorithm, make_pool(image_shape, num_classes, config), config, mesh)

    @property
    def tunes_by_probe(self) -> bool:
        """Whether a run calls :meth:`probe` every ``config.tune_every`` iterations."""
        return (
            self.config.lr_tuning == "probe"
            and self.config.tune_every > 0
            and self.algorithm.uses_learning_rates
        )

    @property
    def has_preround(self) -> bool:
        """Whether a run starts with the released code's learning-rate pre-round."""
        return self.config.lr_tuning == "released" and self.algorithm.uses_learning_rates

    def init(self, support: SupportSet, *, key: Array) -> DistillState:
        """The state before the first iteration."""
        n, k = support.images.shape[0], self.config.n_subset
        if self.config.norm == "batch" and k is not None and k < n:
            raise ValueError(
                f"norm='batch' with n_subset={k} < |S|={n}: the batch-normalised pool trains on "
                "the whole support set as one batch (its statistics are the batch's), which "
                "subsampling splits. Use n_subset=None (or >= |S|), or norm='none'."
            )
        k_pool, k_run, k_data = jax.random.split(key, 3)
        # The state's own buffers: the loop donates the state to each step, which must not
        # delete the caller's support set or the algorithm's rates (reused for another run).
        support, algorithm = _own_buffers((support, self.algorithm))
        return DistillState(
            support=support,
            opt_state=meta_optimizer(self.config).init(support),
            pool=self.pool.init(key=k_pool),
            algorithm=algorithm,
            key=jax.random.key_data(k_run),
            step=jnp.asarray(0, jnp.int32),
            ema=jax.tree_util.tree_map(jnp.zeros_like, support),
            data_key=jax.random.key_data(k_data),
            data_position=jnp.asarray(0, jnp.int32),
            lr_stats=jnp.zeros((3,), jnp.int32),
        )

    def next_batch(
        self, state: DistillState, x_train: Array, y_train: Array
    ) -> tuple[Array, Array]:
        """The target batch of the next iteration: ``config.target_batch`` examples from the
        state's position in its stream of shuffled epochs (:func:`epoch_batch`)."""
        index = epoch_batch(
            state.data_key, state.data_position, x_train.shape[0], self.config.target_batch
        )
        return x_train[index], y_train[index]

    def batches(self, x_train, y_train) -> Callable[[DistillState], tuple[Array, Array]]:
        """``state -> target batch``: :meth:`next_batch` compiled, for arrays; for training
        images kept on the host (:class:`~distillation.data._stream.HostImages`, with integer
        labels), the same indices computed on the device and the images read and preprocessed
        on the host, so that only a batch is ever in memory."""
        if isinstance(x_train, jax.Array | np.ndarray):
            compiled = jax.jit(self.next_batch)
            return lambda state: compiled(state, x_train, y_train)
        n, size, k = len(x_train), self.config.target_batch, self.pool_classes
        indices = jax.jit(lambda s: epoch_batch(s.data_key, s.data_position, n, size))
        labels = np.asarray(y_train)

        def host_batch(state):
            index = np.asarray(indices(state))
            onehot = np.eye(k, dtype=np.float32)[labels[index]]
            return jnp.asarray(x_train[index]), jnp.asarray(onehot)

        return host_batch

    @property
    def pool_classes(self) -> int:
        return int(jax.eval_shape(self.pool.make_model, jax.random.key(0)).head.bias.shape[0])

    def probe_data(self, x_train, y_train, *, key: Array) -> tuple[Any, Any]:
        """What the learning-rate probes sample their target batches from: the arrays
        themselves, or for host-kept images a random draw of ``4 × target_batch`` of them."""
        if isinstance(x_train, jax.Array | np.ndarray):
            return x_train, y_train
        n = len(x_train)
        draw = np.asarray(jax.random.choice(key, n, (min(n, 4 * self.config.target_batch),)))
        onehot = np.eye(self.pool_classes, dtype=np.float32)[np.asarray(y_train)[draw]]
        return jnp.asarray(x_train[draw]), jnp.asarray(onehot)

    def step(
        self, state: DistillState, batch: tuple[Array, Array]
    ) -> tuple[DistillState, dict[str, Array]]:
        """One meta-iteration of Algorithm 1: sample a pool model, take the meta-gradient on
        ``batch`` (:func:`~distillation.meta_loss`), update the support set and its
        moving average, train the pool model, and apply the learning-rate schedule."""
        config, pool = self.config, self.pool
        algorithm = state.algorithm
        key, k_model, k_subset, k_renew = jax.random.split(jax.random.wrap_key_data(state.key), 4)
        index = jax.random.randint(k_model, (), 0, pool.size)
        model0, algorithm = self.at_pool_model(state, index, algorithm)
        if config.inner_count_from_pool:
            algorithm = algorithm.with_inner_count(state.pool.ages[index])
        x_t, y_t = batch
        if self.mesh is not None:
            sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(DATA_AXIS))
            x_t = jax.lax.with_sharding_constraint(x_t, sharding)
            y_t = jax.lax.with_sharding_constraint(y_t, sharding)

        loss, info, direct, implicit = self.meta_gradient(
            state, algorithm, model0, x_t, y_t, k_subset
        )
        grads = jax.tree_util.tree_map(jnp.add, direct, implicit)
        support, opt_state = optax_step(
            meta_optimizer(config), grads, state.opt_state, state.support
        )
        d = config.ema_decay
        ema = jax.tree_util.tree_map(lambda h, p: d * h + (1.0 - d) * p, state.ema, support)

        sub_index, rest_index = _subsample(state.support, config.n_subset, k_subset)
        seen_images, seen_labels = _seen_by_pool(support, sub_index, rest_index, config)
        pool_state, pool_loss = pool.train_step(
            state.pool, index, seen_images, seen_labels, key=k_renew
        )
        tuned, lr_stats = state.algorithm, state.lr_stats
        if config.lr_tuning in ("released", "schedule") and tuned.n_inner > 0:
            stat = classify_trace(info.inner_loss_trace)
            lr_stats = lr_stats + jnp.stack([stat == -1, stat == 1, True]).astype(jnp.int32)
            inner_lr, lr_stats = released_schedule(tuned.inner_lr, lr_stats, state.step)
            tuned = tuned.with_learning_rates(inner=inner_lr)
        new_state = DistillState(
            support,
            opt_state,
            pool_state,
            tuned,
            jax.random.key_data(key),
            state.step + 1,
            ema,
            state.data_key,
            state.data_position + config.target_batch,
            lr_stats,
        )
        hessian_lr = state.algorithm.hessian_lr
        metrics = {
            "outer_loss": loss,
            "target_acc": info.accuracy,
            "inner_loss": info.inner_loss,
            "inner_grad_norm": info.inner_grad_norm,
            "pool_loss": pool_loss,
            "inner_lr": state.algorithm.inner_lr,
            "hessian_lr": jnp.asarray(0.0, jnp.float32) if hessian_lr is None else hessian_lr,
            "temperature": jnp.exp(support.log_temperature),
            "direct_norm": _norm(direct),
            "implicit_norm": _norm(implicit),
        }
        return new_state, metrics

    def meta_gradient(
        self,
        state: DistillState,
        algorithm: Algorithm,
        model0: ConvNet,
        x_t: Array,
        y_t: Array,
        key: Array,
    ) -> tuple[Array, MetaInfo, SupportSet, SupportSet]:
        """The meta-gradient of one iteration, in its two parts: ``(outer loss, info, direct,
        implicit)``, both parts shaped like ``state.support`` (zero outside the subsample
        ``key`` draws when ``config.n_subset`` < |S|); the implicit part is clipped to the
        direct one's norm, leaf by leaf, when the algorithm clips (the released code).
        ``model0`` is the pool model where it is taken (:meth:`step` passes the selected one,
        moved as ``config.pool_drift`` says), ``algorithm`` carries the learning rates."""
        config = self.config
        l2 = l2_strength(state.support, config)
        sub_index, rest_index = _subsample(state.support, config.n_subset, key)
        const = (
            None if rest_index is None else inner_support(_take(state.support, rest_index), config)
        )

        def loss_fn(direct: SupportSet, implicit: SupportSet):
            # The same values twice: the gradient with respect to each is one part of the
            # meta-gradient (meta_loss's `inner`), so the implicit part can be clipped.
            return meta_loss(
                inner_support(direct, config),
                algorithm,
                model0,
                x_t,
                y_t,
                l2,
                constant=const,
                inner=inner_support(implicit, config),
            )

        diff_part = state.support if sub_index is None else _take(state.support, sub_index)
        (loss, info), (direct, implicit) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True
        )(diff_part, diff_part)
        if algorithm.clip_implicit:
            implicit = clip_to_direct(implicit, direct)
        if sub_index is not None:
            direct, implicit = (_scatter(g, sub_index, state.support) for g in (direct, implicit))
        return loss, info, direct, implicit

    def _base_model(self, state: DistillState, index: Array):
        """Pool model ``index`` where the meta-gradient is taken (``config.pool_drift``)."""
        if self.config.pool_drift:
            return self.pool.drifted(state.pool, index, state.algorithm.n_inner)
        return self.pool.model(state.pool, index)

    def at_pool_model(self, state: DistillState, index: Array, algorithm: Algorithm):
        """``(model0, algorithm)`` of a step: the pool model where the meta-gradient is taken
        and the algorithm whose inner solve linearises, at step ``k``, at the model moved ``k``
        times (``config.drift_order="stepwise"``, the released code's order)."""
        n = algorithm.n_inner
        if not (self.config.pool_drift and self.config.drift_order == "stepwise" and n > 0):
            return self._base_model(state, index), algorithm
        path, final = self.pool.drift_path(state.pool, index, n)
        return final, algorithm.with_linearisation_path(path)

    def probe(self, state: DistillState, x_train: Array, y_train: Array) -> DistillState:
        """The paper text's learning-rate probe (``lr_tuning="probe"``;
        :class:`~distillation.LearningRateTuner`), run before every
        ``config.tune_every``-th step as its own compiled function.

        It is not a ``lax.cond`` inside the step because XLA on CPU runs convolution gradients
        inside a conditional's branches ~20× slower than in straight-line code
        (``benchmarks/cpu_loops.py``). Its randomness is folded from the state's key without
        advancing it, so tuning does not change the step's draws."""
        if not state.algorithm.uses_learning_rates:
            return state
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), 0x7E5E)
        k_model, k_batch = jax.random.split(key)
        model0 = self._base_model(state, jax.random.randint(k_model, (), 0, self.pool.size))
        x_t, y_t = _sample_target(k_batch, x_train, y_train, self.config)
        tuned = LearningRateTuner(every=self.config.tune_every).probe(
            state.algorithm,
            self._probe_problem(state, model0),
            x_t,
            y_t,
            state.support.log_temperature,
        )
        return eqx.tree_at(lambda s: s.algorithm, state, tuned)

    def preround_probe(
        self,
        state: DistillState,
        algorithm: Algorithm,
        x_train: Array,
        y_train: Array,
        call: Array,
        hessian: bool = True,
    ) -> tuple[Array, Array]:
        """One probe of the released code's learning-rate pre-round:
        ``(inner class, Hessian-inverse class)`` (:func:`~distillation.classify_trace`)
        of the solves of one meta-step with ``algorithm``'s rates, on a fresh model (the same
        for every call, as ``run_rcig(lr_tune=True)`` builds its one-model pool from the run's
        key) and a target batch that changes with ``call``. ``hessian=False`` (static) skips
        the Hessian-inverse solve and its target batch (that class is then 0): the same inner
        class for a fraction of the work, but not used by default: with the inner loop
        unrolled, XLA on CPU (jax 0.10.2) miscompiles that program at width >= 16
        (docs/fidelity.md); compile it with ``rcig(unroll=False)`` there."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), 0x9E7)
        k_model, k_batch = jax.random.split(key)
        model0 = self.pool.make_model(k_model)
        x_t, y_t = _sample_target(jax.random.fold_in(k_batch, call), x_train, y_train, self.config)
        inner_trace, hessian_trace = solve_traces(
            algorithm,
            self._probe_problem(state, model0),
            x_t,
            y_t,
            state.support.log_temperature,
            hessian=hessian,
        )
        # run_rcig classifies the values before each step (the last point excluded).
        return classify_trace(inner_trace[:-1]), classify_trace(hessian_trace[:-1])

    def tune_learning_rates(
        self,
        state: DistillState,
        x_train: Array,
        y_train: Array,
        on_probe: Callable[[Algorithm], None] | None = None,
    ) -> DistillState:
        """The released code's learning-rate pre-round (host loop over a compiled probe):
        the state with the tuned rates in ``state.algorithm``. ``on_probe`` is told each
        candidate (for a progress line)."""
        probe_fn = jax.jit(self.preround_probe, static_argnames="hessian")

        def probe(algorithm: Algorithm, call: int, hessian: bool = True) -> tuple[int, int]:
            if on_probe is not None:
                on_probe(algorithm)
            inner, hessian_class = probe_fn(
                state, algorithm, x_train, y_train, jnp.asarray(call, jnp.int32), hessian=hessian
            )
            return int(inner), int(hessian_class)

        # The full probe in both loops. The inner-only probe (``hessian=False``) is the same
        # inner trace in another program, which XLA's CPU algebraic simplifier (jax 0.10.2)
        # miscompiles when the inner loop is unrolled, at width >= 16 on 28x28 images: its
        # trace comes out NaN/inf and flat (benchmarks/preround_trace.py, docs/fidelity.md).
        tuned, _ = released_preround(probe, state.algorithm)
        return eqx.tree_at(lambda s: s.algorithm, state, tuned)

    def _probe_problem(self, state: DistillState, model0) -> InnerProblem:
        images, labels = _probe_support(state, self.config)
        return InnerProblem(
            state.algorithm.network(model0), images, labels, l2_strength(state.support, self.config)
        )


def _own_buffers(tree: Any) -> Any:
    """``tree`` with each JAX array copied into a new buffer (other leaves as they are)."""
    return jax.tree_util.tree_map(
        lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x, tree
    )


DATA_AXIS = "data"


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-host run through JAX's own multi-controller runtime
    (``jax.distributed.initialize``). Call it first, before anything else uses JAX; then
    ``data_parallel_mesh()`` spans every process's devices and :func:`distill` with that mesh
    splits the target batch and the pool over all hosts (each process runs the same program on
    the same data; process 0 writes the checkpoints, every process reads them).

    With no arguments the cluster is detected from its environment as JAX does (SLURM, Open MPI,
    Kubernetes, ...). On CPU the cross-process collectives use gloo.
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "initialize_distributed: give coordinator, num_processes and process_id together "
            f"(got coordinator={coordinator!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}), or none of them to detect the cluster."
        )
    if all(given) and not (
        isinstance(num_processes, int)
        and isinstance(process_id, int)
        and num_processes >= 1
        and 0 <= process_id < num_processes
    ):
        raise ValueError(
            f"initialize_distributed: process_id must be in [0, num_processes), got "
            f"process_id={process_id!r}, num_processes={num_processes!r}."
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def data_parallel_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: all, across hosts after
    :func:`initialize_distributed`) with the axis name ``"data"``."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_state(state: DistillState, mesh: jax.sharding.Mesh) -> DistillState:
    """Place the model pool split over the mesh (leading axis ``m``), the rest replicated.

    Raises:
        ValueError: when the pool size is not divisible by the number of devices.
    """
    m = state.pool.ages.shape[0]
    if m % mesh.size:
        raise ValueError(f"pool_size={m} must be divisible by the {mesh.size} devices of the mesh.")
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    pool = jax.device_put(state.pool, split)
    rest = jax.device_put(eqx.tree_at(lambda s: s.pool, state, None), replicated)
    return eqx.tree_at(lambda s: s.pool, rest, pool, is_leaf=lambda x: x is None)


def _probe_support(state: DistillState, config: DistillConfig) -> tuple[Array | Partitioned, Array]:
    """The support set as a learning-rate probe sees it (with mirrors under the flip strategy);
    as in the step under subsampling, at most ``2·n_subset`` images' activations live."""
    support = inner_support(state.support, config)
    k = config.n_subset
    if k is not None and k < support.images.shape[0]:
        images = Partitioned(support.images[:k], support.images[k:], chunk=k)
        return images, support.labels
    return support.images, support.labels


def _norm(tree) -> Array:
    return optax.tree_utils.tree_norm(tree)


def _take(support: SupportSet, index: Array) -> SupportSet:
    return SupportSet(support.images[index], support.labels[index], support.log_temperature)


def _subsample(support: SupportSet, n_subset: int | None, key: Array):
    """Bias-free subsampling for large support sets: ``(drawn, rest)`` indices, or ``None``s.

    All images take part in the inner problem, the prediction and the pool's training step; only
    the ``n_subset`` drawn this iteration are differentiated (each image's gradient is exact when
    it is drawn), and the rest are evaluated as a :class:`~distillation.Partitioned`
    batch, ``n_subset`` images at a time with rematerialisation, so peak memory scales with
    ``n_subset`` rather than ``|S|``.
    """
    n = support.images.shape[0]
    if n_subset is None or n_subset >= n:
        return None, None
    perm = jax.random.permutation(key, n)
    return perm[:n_subset], perm[n_subset:]


def _scatter(grads: SupportSet, index: Array, like: SupportSet) -> SupportSet:
    """Per-image gradients of a subsample placed into zeros shaped like the whole set."""
    return SupportSet(
        jnp.zeros_like(like.images).at[index].set(grads.images),
        jnp.zeros_like(like.labels).at[index].set(grads.labels),
        grads.log_temperature,
    )


def _seen_by_pool(support: SupportSet, sub_index, rest_index, config: DistillConfig):
    """The pool's training batch: the whole (inner) support set, partitioned like the step's."""
    if sub_index is None:
        seen = inner_support(support, config)
        return seen.images, seen.labels
    drawn = inner_support(_take(support, sub_index), config)
    rest = inner_support(_take(support, rest_index), config)
    images = Partitioned(drawn.images, rest.images, chunk=drawn.images.shape[0])
    return images, jnp.concatenate([drawn.labels, rest.labels])


# --------------------------------------------------------------------------- host loop


@dataclasses.dataclass
class DistillResult:
    """The learned support set (the EMA of the iterates when ``config.ema_decay > 0``, as the
    released code exports and evaluates), the logged metrics, the wall-clock seconds and number
    of iterations of this call (a resumed call counts only the iterations it ran), the
    wall-clock seconds of the whole run, summed over its resumed segments, the last iterate,
    and the learning rates at the end."""

    support: SupportSet
    history: list[dict[str, float]]
    seconds: float
    steps: int
    steps_run: int
    total_seconds: float
    snapshots: list[Snapshot] = dataclasses.field(default_factory=list)
    last_iterate: SupportSet | None = None
    algorithm: Algorithm | None = None

    @property
    def learning_rates(self) -> tuple[float, float | None]:
        """The inner and Hessian-inverse learning rates at the end (``None``: no tuned one)."""
        if self.algorithm is None:
            return (float("nan"), None)
        hessian = self.algorithm.hessian_lr
        return float(self.algorithm.inner_lr), None if hessian is None else float(hessian)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The support set after ``step`` iterations, ``seconds`` of wall-clock time into the call
    (compilation included: what a user waits for)."""

    step: int
    seconds: float
    support: SupportSet


def check_resumable(
    directory: Path,
    meta: dict[str, Any],
    fingerprint: str,
    settings: dict[str, Any] | None,
) -> None:
    """Refuse a checkpoint made with other settings, naming each setting that differs.

    Raises:
        ValueError: ``"--resume: ... steps: 400 in the checkpoint vs 1000 now; ..."``.
    """
    if meta.get("fingerprint") == fingerprint:
        return
    saved = meta.get("settings")
    differences = (
        settings_mismatch(saved, settings)
        if isinstance(saved, dict) and settings is not None
        else []
    )
    detail = (
        "; ".join(differences)
        if differences
        else f"fingerprint {meta.get('fingerprint')!r} vs {fingerprint!r} now"
    )
    raise ValueError(
        f"--resume: the checkpoint in {directory} was made with other settings: {detail}. "
        "Run with the checkpoint's settings to continue it, or start over with --overwrite or "
        "another --out."
    )


def distill(
    x_train: np.ndarray | HostImages,
    y_train: np.ndarray,
    num_classes: int,
    algorithm: Algorithm,
    ipc: int,
    config: DistillConfig,
    *,
    key: Array,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    settings: dict[str, Any] | None = None,
    progress: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    snapshot_steps: Collection[int] = (),
    interrupts: InterruptGuard | None = None,
    mesh: jax.sharding.Mesh | None = None,
    init_indices: Sequence[int] | None = None,
) -> DistillResult:
    """Run Algorithm 1 for ``config.steps`` meta-iterations: the support set drawn from the
    data, a :class:`Distiller`, the learning-rate pre-round, and :func:`distillation.run`
    with a progress bar, the history, checkpoints, snapshots and the signal stop as callbacks.

    Args:
        x_train: real training images ``(N, H, W, C)`` in model-input space (float32), or
            the ``x_train`` of :func:`~distillation.stream_dataset` (kept on the host as
            uint8, each target batch read and preprocessed when drawn).
        y_train: integer labels ``(N,)``.
        num_classes: ``K``.
        algorithm: from :func:`~distillation.rcig` and friends.
        ipc: images per class of the support set.
        config: settings.
        key: PRNG key of the run (support initialisation, pool, batches).
        checkpoint_dir: where checkpoints go (every ``config.checkpoint_every`` steps, at the
            end, and on an interrupt); ``None`` for none. Each checkpoint commits the state
            and the logged history together, atomically (:mod:`distillation._checkpoint`).
        resume: continue from the checkpoint in ``checkpoint_dir``. A resumed run ends in exactly
            the state of an uninterrupted one (the whole state, PRNG key included, is saved).
        fingerprint: a string identifying the settings; a checkpoint made with other settings
            is refused.
        settings: the settings behind ``fingerprint`` (JSON-serialisable), recorded in the
            checkpoint so that a refusal names each setting that differs.
        progress: show a progress bar with the current losses.
        on_log: called every ``config.log_every`` steps with ``(step, metrics)``.
        snapshot_steps: iteration counts after which to keep a copy of the result, with the
            wall-clock time so far (for accuracy-against-time curves); ``0`` is the start.
        interrupts: the program's :class:`~distillation.InterruptGuard` (the one
            signal handling of a program; the command line installs it): a signal stops the run
            after the step in flight, with a checkpoint. ``None`` (library use): no signal
            handler is installed; Ctrl-C (``KeyboardInterrupt``) still writes a checkpoint.
        mesh: data parallelism over the mesh's devices (:func:`data_parallel_mesh`): the target
            batch and the model pool are split over them (``config.target_batch`` and
            ``config.pool_size`` must be divisible by the device count); ``None``: one device.
            Checkpoints hold the gathered state, so a run may resume on another device count.
        init_indices: start from these training examples (``ipc`` of each class) instead of a
            random draw, e.g. the images another run or the released code started from.

    Returns:
        The learned support set, the logged metrics, the wall-clock seconds spent in this call
        and in the whole run.

    Raises:
        Interrupted: after a signal or Ctrl-C (with the checkpoint written, when there is one).
        RunFailed: the run diverged (NaN or infinity in a metric or in the state) or a solve
            reported a failure (bilevel's result codes); the last good checkpoint is kept.
    """
    import time

    t0 = time.perf_counter()
    host_kept = not isinstance(x_train, jax.Array | np.ndarray)  # HostImages: read per batch
    if not host_kept:
        x_train = np.asarray(x_train, np.float32)
    y_train = np.asarray(y_train)
    if len(x_train.shape) != 4:
        raise ValueError(f"x_train must be (N, H, W, C), got shape {x_train.shape}.")
    if init_indices is not None:
        check_init_indices(init_indices, y_train, num_classes, ipc)
    snapshots = Snapshots(snapshot_steps, lambda st: ema_support(st, config.ema_decay), t0)
    meta: dict[str, Any] = {}
    if resume and checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        meta = read_checkpoint_meta(checkpoint_dir) or {}
        check_resumable(checkpoint_dir, meta, fingerprint, settings)
    if interrupts is not None:
        interrupts.set_phase("compiling")
    k_support, k_state = jax.random.split(key)
    support = init_support(
        x_train,
        y_train,
        num_classes,
        ipc,
        key=k_support,
        init_temperature=config.init_temperature,
        center_labels=config.center_labels,
        indices=init_indices,
        draw=config.init_draw,
        seed=key_seed(jax.random.key_data(key)),  # the released code's init_proto(seed=...)
    )
    distiller = Distiller.build(
        algorithm, config, image_shape=x_train.shape[1:], num_classes=num_classes, mesh=mesh
    )
    if mesh is not None and config.pool_size % mesh.size:
        raise ValueError(
            f"pool_size={config.pool_size} must be divisible by the {mesh.size} devices of the "
            "mesh."
        )
    state = distiller.init(support, key=k_state)
    history = History(on_log=on_log)
    segments_before = 0
    if meta:
        state, meta = load_checkpoint(checkpoint_dir, state)  # type: ignore[arg-type]
        history = History(meta.get("history", []), float(meta.get("seconds", 0.0)), on_log)
        segments_before = int(meta.get("segments", 1))
    if mesh is not None:
        state = shard_state(state, mesh)
    history.t0 = t0
    start = int(state.step)
    if not algorithm.learns and start < config.steps:
        raise ValueError(
            f"{algorithm.name} does not learn its support set: run it with steps=0, got "
            f"steps={config.steps}."
        )
    bar = ProgressBar(config.steps, algorithm.name, disable=not progress or jax.process_index() > 0)
    checkpointer = None
    if checkpoint_dir is not None:
        checkpointer = Checkpointer(
            checkpoint_dir,
            config.checkpoint_every,
            config.steps,
            lambda step: {
                "fingerprint": fingerprint,
                "settings": settings,
                "step": step,
                "history": history.rows,
                "seconds": history.seconds(),
                "segments": segments_before + 1,
            },
            guard=interrupts,
            saved=start,
        )
    callbacks: list[Callback] = [bar, history]
    callbacks += [checkpointer] if checkpointer is not None else []
    callbacks += [snapshots]
    callbacks += [SignalStop(interrupts)] if interrupts is not None else []

    def kept() -> str:
        if checkpoint_dir is None or not has_checkpoint(checkpoint_dir):
            return "nothing was saved"
        saved = checkpointer.last_saved if checkpointer is not None else start
        return f"the checkpoint at step {saved} in {checkpoint_dir} is kept"

    x_dev: Any
    y_dev: Any
    if host_kept:
        x_dev, y_dev = x_train, y_train
    else:
        x_dev = jnp.asarray(x_train)
        y_dev = jax.nn.one_hot(jnp.asarray(y_train), num_classes, dtype=jnp.float32)
    try:
        if start < config.steps:
            if interrupts is not None:
                interrupts.set_phase("compiling", kept() + (_RESUME_HINT if start else ""))
            if distiller.has_preround and start == 0:
                x_probe, y_probe = distiller.probe_data(x_dev, y_dev, key=k_state)
                state = distiller.tune_learning_rates(
                    state, x_probe, y_probe, on_probe=lambda a: bar.note(_rates("tuning", a))
                )
                bar.note(_rates("tuned", state.algorithm))
            if interrupts is not None:
                interrupts.set_phase("distilling")
        state = run(
            distiller,
            state,
            (x_dev, y_dev),
            config.steps,
            callbacks,
            log_every=config.log_every,
        )
    except (KeyboardInterrupt, Interrupted) as exc:
        bar.bar.close()
        signum = interrupts.requested if interrupts is not None else None
        by = f" by {signal.Signals(signum).name}" if signum is not None else ""
        saved = checkpointer.last_saved if checkpointer is not None else 0
        if checkpointer is not None and saved > start:
            raise Interrupted(
                f"interrupted{by} at step {saved}; checkpoint written in {checkpoint_dir}"
                + _RESUME_HINT
            ) from exc
        hint = _RESUME_HINT if checkpoint_dir is not None and saved > 0 else ""
        raise Interrupted(f"interrupted{by} at step {saved}; {kept()}{hint}") from exc
    except (RunFailed, jax.errors.JaxRuntimeError) as exc:
        # A solve that reports failure (bilevel's result codes, throw=True) raises at run time
        # from inside the step; say what failed, not where in XLA.
        bar.bar.close()
        note = kept()
        raise RunFailed(f"{_failure(exc)} {note[:1].upper()}{note[1:]}.") from None
    seconds = time.perf_counter() - t0
    # A resumed run that had nothing left to do keeps the time its checkpoint recorded.
    ran = int(state.step) - start
    total_seconds = history.seconds_before + (seconds if ran or not meta else 0.0)
    return DistillResult(
        ema_support(state, config.ema_decay),
        history.rows,
        seconds,
        int(state.step),
        ran,
        total_seconds,
        snapshots.taken,
        state.support,
        state.algorithm,
    )


def _rates(what: str, algorithm: Algorithm) -> str:
    hessian = algorithm.hessian_lr
    text = f"{what} learning rates: inner {float(algorithm.inner_lr):.3g}"
    return text + ("" if hessian is None else f", hessian {float(hessian):.3g}")


_RESUME_HINT = "; run the same command with --resume to continue"


def _failure(exc: Exception) -> str:
    """One line saying what failed: a :class:`RunFailed`'s message, or the solver's message
    inside a ``JaxRuntimeError`` raised by ``bilevel``'s ``throw=True``."""
    if isinstance(exc, RunFailed):
        return str(exc)
    found = re.search(r"EquinoxRuntimeError: (.+)", str(exc))
    what = found.group(1).strip() if found else str(exc).strip().splitlines()[0]
    return f"the run stopped: {what}."
