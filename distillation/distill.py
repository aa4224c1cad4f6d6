"""Algorithm 1: the distillation loop, composed from named pieces.

* :func:`init_support` — a support set initialised from real images (``ipc`` per class).
* :func:`random_subset` — the random-subset baseline (real images, one-hot labels).
* :func:`meta_optimizer` — AdaBelief, lr 0.003 on images and labels, 0.03 on ``log τ``.
* :func:`make_step` — one jitted meta-iteration: sample a pool model and a target batch, take
  the meta-gradient (:func:`distillation.algorithms.meta_loss`), update the support set, train
  the pool model one step, probe the learning rates every few iterations.
* :func:`distill` — the host loop: progress bar with the current losses, checkpoints, resume.
"""

from __future__ import annotations

import dataclasses
import math
import re
import signal
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from bilevel import optax_step
from distillation.algorithms import Algorithm, LearningRates, SupportSet, meta_loss
from distillation.checkpoint import (
    RunFailed,
    has_checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    settings_mismatch,
)
from distillation.interrupts import InterruptGuard
from distillation.models import Norm, conv_net
from distillation.networks import Partitioned
from distillation.pool import ModelPool, PoolState
from distillation.tuning import LearningRateTuner


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run (parsed at the entry point; typed all the way down).

    Defaults are the paper's (Section 4 / Appendix): m = 30, K = 100, AdaBelief 0.003 / 0.03,
    ``λ = 0.0005·|S|``.
    """

    steps: int = 1000
    pool_size: int = 30
    reset_every: int = 100
    target_batch: int = 256
    lr_support: float = 0.003
    lr_temperature: float = 0.03
    l2_per_image: float = 0.0005
    init_temperature: float = 0.1
    inner_lr: float = 1e-2
    hessian_lr: float = 1e-2
    tune_every: int = 10
    pool_lr: float = 1e-3
    flip: bool = False
    n_subset: int | None = None
    width: int = 128
    depth: int | None = None
    norm: Norm = "none"
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self):
        positive_ints = (
            "steps",
            "pool_size",
            "reset_every",
            "target_batch",
            "width",
            "checkpoint_every",
            "log_every",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (name != "steps"):
                raise ValueError(
                    f"DistillConfig: `{name}` must be a positive integer, got {value!r}."
                )
        for name in (
            "lr_support",
            "lr_temperature",
            "init_temperature",
            "inner_lr",
            "hessian_lr",
            "pool_lr",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(
                    f"DistillConfig: `{name}` must be a positive number, got {value!r}."
                )
        if not self.l2_per_image >= 0:
            raise ValueError(
                f"DistillConfig: `l2_per_image` must be >= 0, got {self.l2_per_image!r}."
            )
        if self.n_subset is not None and self.n_subset < 1:
            raise ValueError(
                f"DistillConfig: `n_subset` must be None or >= 1, got {self.n_subset!r}."
            )


class DistillState(eqx.Module):
    """Everything a run needs to continue: checkpoints hold exactly this.

    ``key`` holds the raw ``uint32`` data of the PRNG key (``jax.random.key_data``) so that the
    state serialises as plain arrays.
    """

    support: SupportSet
    opt_state: optax.OptState
    pool: PoolState
    lrs: LearningRates
    key: Array
    step: Array


def init_support(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    ipc: int,
    *,
    key: Array,
    init_temperature: float = 0.1,
) -> SupportSet:
    """``ipc`` real images per class drawn at random, one-hot labels (the paper's start)."""
    picks = _pick_per_class(labels, num_classes, ipc, key)
    onehot = np.eye(num_classes, dtype=np.float32)[labels[picks]]
    return SupportSet(
        jnp.asarray(images[picks], jnp.float32),
        jnp.asarray(onehot),
        jnp.asarray(np.log(init_temperature), jnp.float32),
    )


def random_subset(
    images: np.ndarray, labels: np.ndarray, num_classes: int, ipc: int, *, key: Array
) -> SupportSet:
    """The random-subset baseline: real images with one-hot labels, no optimisation."""
    return init_support(images, labels, num_classes, ipc, key=key)


def _pick_per_class(labels: np.ndarray, num_classes: int, ipc: int, key: Array) -> np.ndarray:
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    picks = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < ipc:
            raise ValueError(
                f"ipc={ipc} images per class requested, but class {c} has only "
                f"{len(members)} training images."
            )
        picks.append(rng.choice(members, size=ipc, replace=False))
    return np.concatenate(picks)


def meta_optimizer(config: DistillConfig) -> optax.GradientTransformation:
    """AdaBelief on the support set: ``lr_support`` for images and labels, ``lr_temperature``
    for ``log τ``."""

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
            "support": optax.adabelief(config.lr_support),
            "temperature": optax.adabelief(config.lr_temperature),
        },
        labels,
    )


def flip_augment(images: Array, labels: Array) -> tuple[Array, Array]:
    """The flip strategy: the images and their horizontal mirrors, labels repeated."""
    return jnp.concatenate([images, images[:, :, ::-1]]), jnp.concatenate([labels, labels])


def inner_support(support: SupportSet, config: DistillConfig) -> SupportSet:
    """The support set as the inner problem sees it (with mirrors under the flip strategy)."""
    if not config.flip:
        return support
    return SupportSet(*flip_augment(support.images, support.labels), support.log_temperature)


def l2_strength(support: SupportSet, config: DistillConfig) -> Array:
    """``λ = l2_per_image · |S|``, counting the mirrors under the flip strategy."""
    n_support = support.images.shape[0] * (2 if config.flip else 1)
    return jnp.asarray(config.l2_per_image * n_support, jnp.float32)


def _sample_target(key: Array, x_train: Array, y_train: Array, config: DistillConfig):
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
            activation="softplus",
        )

    return ModelPool(make_model, config.pool_size, config.reset_every, optax.adam(config.pool_lr))


def init_state(
    support: SupportSet, pool: ModelPool, config: DistillConfig, *, key: Array
) -> DistillState:
    k_pool, k_run = jax.random.split(key)
    return DistillState(
        support=support,
        opt_state=meta_optimizer(config).init(support),
        pool=pool.init(key=k_pool),
        lrs=LearningRates(
            jnp.asarray(config.inner_lr, jnp.float32), jnp.asarray(config.hessian_lr, jnp.float32)
        ),
        key=jax.random.key_data(k_run),
        step=jnp.asarray(0, jnp.int32),
    )


def make_step(
    algorithm: Algorithm,
    pool: ModelPool,
    config: DistillConfig,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[DistillState, Array, Array], tuple[DistillState, dict[str, Array]]]:
    """One meta-iteration of Algorithm 1 as a pure function (jit it once).

    The learning rates in ``state.lrs`` are used as they are; :func:`make_tune_step` adjusts them.

    Args:
        algorithm: the composition.
        pool: the model pool.
        config: the settings.
        mesh: a 1-D ``jax.sharding.Mesh`` with axis ``"data"`` for data parallelism: the target
            batch is split over its devices (the outer loss is a mean, so each device computes
            its share of the meta-gradient and XLA sums them). Place the pool with
            :func:`shard_state` so it is split over the devices too. ``None``: one device.
    """
    optimizer = meta_optimizer(config)
    batch_sharding = None
    if mesh is not None:
        if config.target_batch % mesh.size:
            raise ValueError(
                f"target_batch={config.target_batch} must be divisible by the {mesh.size} "
                "devices of the mesh."
            )
        batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))

    def step(state: DistillState, x_train: Array, y_train: Array):
        key, k_model, k_batch, k_subset, k_renew = jax.random.split(
            jax.random.wrap_key_data(state.key), 5
        )
        index = jax.random.randint(k_model, (), 0, pool.size)
        model0 = pool.model(state.pool, index)
        x_t, y_t = _sample_target(k_batch, x_train, y_train, config)
        if batch_sharding is not None:
            x_t = jax.lax.with_sharding_constraint(x_t, batch_sharding)
            y_t = jax.lax.with_sharding_constraint(y_t, batch_sharding)

        l2 = l2_strength(state.support, config)
        sub_index, rest_index = _subsample(state.support, config.n_subset, k_subset)
        const = (
            None if rest_index is None else inner_support(_take(state.support, rest_index), config)
        )

        def loss_fn(diff_part: SupportSet):
            return meta_loss(
                inner_support(diff_part, config),
                algorithm,
                model0,
                x_t,
                y_t,
                l2,
                state.lrs,
                constant=const,
            )

        diff_part = state.support if sub_index is None else _take(state.support, sub_index)
        (loss, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(diff_part)
        if sub_index is not None:
            grads = SupportSet(
                jnp.zeros_like(state.support.images).at[sub_index].set(grads.images),
                jnp.zeros_like(state.support.labels).at[sub_index].set(grads.labels),
                grads.log_temperature,
            )
        support, opt_state = optax_step(optimizer, grads, state.opt_state, state.support)

        seen_images, seen_labels = _seen_by_pool(support, sub_index, rest_index, config)
        pool_state, pool_loss = pool.train_step(
            state.pool, index, seen_images, seen_labels, key=k_renew
        )
        lrs = state.lrs
        new_state = DistillState(
            support, opt_state, pool_state, lrs, jax.random.key_data(key), state.step + 1
        )
        metrics = {
            "outer_loss": loss,
            "target_acc": info.accuracy,
            "inner_loss": info.inner_loss,
            "inner_grad_norm": info.inner_grad_norm,
            "pool_loss": pool_loss,
            "inner_lr": lrs.inner,
            "hessian_lr": lrs.hessian,
            "temperature": jnp.exp(support.log_temperature),
        }
        return new_state, metrics

    return step


DATA_AXIS = "data"


def data_parallel_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: all) with the axis name ``"data"``."""
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


def make_tune_step(
    algorithm: Algorithm,
    pool: ModelPool,
    config: DistillConfig,
    tuner: LearningRateTuner,
) -> Callable[[DistillState, Array, Array], DistillState]:
    """The learning-rate probe as its own pure function (jit it once; call every ``tuner.every``
    iterations, before the step).

    It is a separate compiled function rather than a ``lax.cond`` inside the step because XLA on
    CPU runs convolution gradients inside a conditional's branches ~20× slower than in
    straight-line code (``benchmarks/cpu_loops.py``). Its randomness is folded
    from the state's key without advancing it, so tuning does not change the step's draws.
    """

    def tune(state: DistillState, x_train: Array, y_train: Array) -> DistillState:
        if not algorithm.uses_learning_rates:
            return state
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), 0x7E5E)
        k_model, k_batch = jax.random.split(key)
        model0 = pool.model(state.pool, jax.random.randint(k_model, (), 0, pool.size))
        x_t, y_t = _sample_target(k_batch, x_train, y_train, config)
        support = inner_support(state.support, config)
        images: Array | Partitioned
        images = support.images
        k = config.n_subset
        if k is not None and k < images.shape[0]:
            # As in the step under subsampling: at most 2·n_subset images' activations live.
            images = Partitioned(images[:k], images[k:], chunk=k)
        lrs = tuner.probe(
            algorithm,
            algorithm.network(model0),
            images,
            support.labels,
            l2_strength(state.support, config),
            x_t,
            y_t,
            state.support.log_temperature,
            state.lrs,
        )
        return eqx.tree_at(lambda s: s.lrs, state, lrs)

    return tune


def _take(support: SupportSet, index: Array) -> SupportSet:
    return SupportSet(support.images[index], support.labels[index], support.log_temperature)


def _subsample(support: SupportSet, n_subset: int | None, key: Array):
    """Bias-free subsampling for large support sets: ``(drawn, rest)`` indices, or ``None``s.

    All images take part in the inner problem, the prediction and the pool's training step; only
    the ``n_subset`` drawn this iteration are differentiated (each image's gradient is exact when
    it is drawn), and the rest are evaluated as a :class:`~distillation.networks.Partitioned`
    batch, ``n_subset`` images at a time with rematerialisation, so peak memory scales with
    ``n_subset`` rather than ``|S|``.
    """
    n = support.images.shape[0]
    if n_subset is None or n_subset >= n:
        return None, None
    perm = jax.random.permutation(key, n)
    return perm[:n_subset], perm[n_subset:]


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


class Interrupted(Exception):
    """Raised when the run was interrupted (after a checkpoint was written, when it had one)."""


@dataclasses.dataclass
class DistillResult:
    """The learned support set, the logged metrics, the wall-clock seconds and number of
    iterations of this call (a resumed call counts only the iterations it ran), and the
    wall-clock seconds of the whole run, summed over its resumed segments."""

    support: SupportSet
    history: list[dict[str, float]]
    seconds: float
    steps: int
    steps_run: int
    total_seconds: float
    snapshots: list[Snapshot] = dataclasses.field(default_factory=list)


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
    x_train: np.ndarray,
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
) -> DistillResult:
    """Run Algorithm 1 for ``config.steps`` meta-iterations.

    Args:
        x_train: real training images ``(N, H, W, C)`` in model-input space (float32).
        y_train: integer labels ``(N,)``.
        num_classes: ``K``.
        algorithm: from :func:`~distillation.algorithms.rcig` and friends.
        ipc: images per class of the support set.
        config: settings.
        key: PRNG key of the run (support initialisation, pool, batches).
        checkpoint_dir: where checkpoints go (every ``config.checkpoint_every`` steps, at the
            end, and on Ctrl-C / SIGTERM); ``None`` for none. Each checkpoint commits the state
            and the logged history together, atomically (:mod:`distillation.checkpoint`).
        resume: continue from the checkpoint in ``checkpoint_dir``. A resumed run ends in exactly
            the state of an uninterrupted one (the whole state, PRNG key included, is saved).
        fingerprint: a string identifying the settings; a checkpoint made with other settings
            is refused.
        settings: the settings behind ``fingerprint`` (JSON-serialisable), recorded in the
            checkpoint so that a refusal names each setting that differs.
        progress: show a progress bar with the current losses.
        on_log: called every ``config.log_every`` steps with ``(step, metrics)``.
        snapshot_steps: iteration counts after which to keep a copy of the support set, with the
            wall-clock time so far (for accuracy-against-time curves); ``0`` is the start.
        interrupts: the command's :class:`~distillation.interrupts.InterruptGuard`: told when
            the run holds steps not yet in a checkpoint (a signal then stops the run after the
            step in flight, with a checkpoint). ``None`` (library use): SIGTERM is handled that
            way while the loop runs, and Ctrl-C (``KeyboardInterrupt``) writes a checkpoint too.

    Returns:
        The learned support set, the logged metrics, the wall-clock seconds spent in this call
        and in the whole run.

    Raises:
        Interrupted: after a signal or Ctrl-C (with the checkpoint written, when there is one).
        RunFailed: the run diverged (NaN or infinity in a metric or in the state) or a solve
            reported a failure (bilevel's result codes); the last good checkpoint is kept.
    """
    import time

    from tqdm.auto import tqdm

    x_train = np.asarray(x_train, np.float32)
    y_train = np.asarray(y_train)
    if x_train.ndim != 4:
        raise ValueError(f"x_train must be (N, H, W, C), got shape {x_train.shape}.")
    snapshot_steps = set(snapshot_steps)
    bad = [s for s in snapshot_steps if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"snapshot_steps must be integers >= 0, got {sorted(map(str, bad))}.")
    meta: dict[str, Any] = {}
    if resume and checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        meta = read_checkpoint_meta(checkpoint_dir) or {}
        check_resumable(checkpoint_dir, meta, fingerprint, settings)
    t0 = time.perf_counter()
    if interrupts is not None:
        interrupts.set_phase("compiling")
    k_support, k_state = jax.random.split(key)
    support = init_support(
        x_train, y_train, num_classes, ipc, key=k_support, init_temperature=config.init_temperature
    )
    pool = make_pool(x_train.shape[1:], num_classes, config)
    state = init_state(support, pool, config, key=k_state)
    history: list[dict[str, float]] = []
    seconds_before, segments_before = 0.0, 0
    if meta:
        state, meta = load_checkpoint(checkpoint_dir, state)  # type: ignore[arg-type]
        history = list(meta.get("history", []))
        seconds_before = float(meta.get("seconds", 0.0))
        segments_before = int(meta.get("segments", 1))
    start = int(state.step)
    last_saved = start  # the state at `last_saved` steps is in a checkpoint (or is the start)

    def kept() -> str:
        if checkpoint_dir is None or not has_checkpoint(checkpoint_dir):
            return "nothing was saved"
        return f"the checkpoint at step {last_saved} in {checkpoint_dir} is kept"

    def checkpoint():
        nonlocal last_saved
        if checkpoint_dir is None:
            return
        step = int(state.step)
        record = {
            "fingerprint": fingerprint,
            "settings": settings,
            "step": step,
            "history": history,
            "seconds": seconds_before + time.perf_counter() - t0,
            "segments": segments_before + 1,
        }
        save_checkpoint(checkpoint_dir, state, record)
        last_saved = step
        if interrupts is not None:
            interrupts.set_unsaved(False)
            interrupts.set_phase(interrupts.phase, kept() + _RESUME_HINT)

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    def stop_signal() -> int | None:
        return interrupts.requested if interrupts is not None else stop["signal"]

    previous = None
    if interrupts is None:
        try:  # finish the current step, then checkpoint and stop (main thread only)
            previous = signal.signal(signal.SIGTERM, on_signal)
        except ValueError:
            previous = None
    bar = tqdm(
        total=config.steps,
        initial=start,
        disable=not progress,
        desc=algorithm.name,
        dynamic_ncols=True,
    )
    snapshots: list[Snapshot] = []

    def snapshot(done: int):
        if done in snapshot_steps:
            support = jax.device_get(jax.block_until_ready(state.support))
            snapshots.append(Snapshot(done, time.perf_counter() - t0, support))

    snapshot(start)
    try:
        if start < config.steps:
            if interrupts is not None:
                interrupts.set_phase("compiling", kept() + (_RESUME_HINT if start else ""))
            # Compiled ahead of time, so that the loop below only runs steps: a signal during
            # compilation finds nothing unsaved and ends the process at once.
            tuner = LearningRateTuner(every=config.tune_every)
            tuning = tuner.every > 0 and algorithm.uses_learning_rates
            x_dev = jnp.asarray(x_train)
            y_dev = jax.nn.one_hot(jnp.asarray(y_train), num_classes, dtype=jnp.float32)
            step_fn = (
                jax.jit(make_step(algorithm, pool, config), donate_argnums=0)
                .lower(state, x_dev, y_dev)
                .compile()
            )
            if tuning:
                tune_fn = (
                    jax.jit(make_tune_step(algorithm, pool, config, tuner), donate_argnums=0)
                    .lower(state, x_dev, y_dev)
                    .compile()
                )
            if interrupts is not None:
                interrupts.set_phase("distilling")
        for it in range(start, config.steps):
            if tuning and it % tuner.every == 0:
                state = tune_fn(state, x_dev, y_dev)
            state, metrics = step_fn(state, x_dev, y_dev)
            done = it + 1
            if interrupts is not None and checkpoint_dir is not None:
                interrupts.set_unsaved(True)
            if done % config.log_every == 0 or done == config.steps:
                row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                not_finite = [k for k, v in row.items() if not math.isfinite(v)]
                if not_finite:
                    raise RunFailed(
                        f"the run diverged at step {done}: "
                        + ", ".join(f"{k} = {row[k]}" for k in not_finite)
                        + " (NaN or overflow: a solve failed, or a learning rate is too large)."
                    )
                row["step"] = done
                row["seconds"] = seconds_before + time.perf_counter() - t0
                history.append(row)
                bar.set_postfix(
                    outer=f"{row['outer_loss']:.3f}",
                    acc=f"{row['target_acc']:.2f}",
                    inner=f"{row['inner_loss']:.3g}",
                    refresh=False,
                )
                if on_log is not None:
                    on_log(done, row)
            bar.update(1)
            snapshot(done)
            if done % config.checkpoint_every == 0 or done == config.steps:
                checkpoint()
            if stop_signal() is not None:
                raise Interrupted()
    except (KeyboardInterrupt, Interrupted) as exc:
        bar.close()
        saved_before = last_saved
        try:
            jax.block_until_ready(state)
            if int(state.step) != last_saved:
                checkpoint()
        except RuntimeError:  # Ctrl-C inside a step: its donated input is gone, its output lost
            pass
        signum = stop_signal()
        by = f" by {signal.Signals(signum).name}" if signum is not None else ""
        written = last_saved != saved_before or (
            isinstance(exc, Interrupted) and last_saved > start
        )
        if written:
            raise Interrupted(
                f"interrupted{by} at step {last_saved}; checkpoint written in {checkpoint_dir}"
                + _RESUME_HINT
            ) from exc
        hint = _RESUME_HINT if checkpoint_dir is not None and last_saved > 0 else ""
        raise Interrupted(f"interrupted{by} at step {last_saved}; {kept()}{hint}") from exc
    except (RunFailed, jax.errors.JaxRuntimeError) as exc:
        # A solve that reports failure (bilevel's result codes, throw=True) raises at run time
        # from inside the step; say what failed, not where in XLA.
        bar.close()
        note = kept()
        raise RunFailed(f"{_failure(exc)} {note[:1].upper()}{note[1:]}.") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    bar.close()
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    # A resumed run that had nothing left to do keeps the time its checkpoint recorded.
    total_seconds = (
        seconds_before if meta and int(state.step) == start else seconds_before + seconds
    )
    return DistillResult(
        state.support,
        history,
        seconds,
        int(state.step),
        int(state.step) - start,
        total_seconds,
        snapshots,
    )


_RESUME_HINT = "; run the same command with --resume to continue"


def _failure(exc: Exception) -> str:
    """One line saying what failed: a :class:`RunFailed`'s message, or the solver's message
    inside a ``JaxRuntimeError`` raised by ``bilevel``'s ``throw=True``."""
    if isinstance(exc, RunFailed):
        return str(exc)
    found = re.search(r"EquinoxRuntimeError: (.+)", str(exc))
    what = found.group(1).strip() if found else str(exc).strip().splitlines()[0]
    return f"the run stopped: {what}."
