"""The paper's evaluation protocol for a distilled set.

Train several fresh networks (ReLU; the ConvNet, or another architecture of
:mod:`distillation._architectures` for the cross-architecture study) on the distilled images and
their learned labels (plus the horizontal mirrors when the set was distilled with the flip
strategy): MSE loss ``½·Σ(f(x) − y)² / (N·K)``, Adam with a 500-step linear warm-up to 1e-4 then
cosine decay to 1% of it, 1000 steps when ``|S| = 10`` else 2000, minibatches of 256 when
``|S| > 256`` (full batch otherwise); optionally with augmentation (one random transform per
image, as the released evaluation; or the DSA set composed). Report the mean ± std of the test
accuracy over the models, on the full test set.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from bilevel import optax_step
from distillation._architectures import (
    ARCHITECTURES,
    DEFINITIONS,
    NORMS,
    Arch,
    Definition,
    Network,
    Stats,
    build_network,
)
from distillation._checks import check_int, one_hot
from distillation._models import Norm
from distillation.evaluation._augment import dsa_augment, released_augment, with_mirrors

PROTOCOLS: tuple[str, ...] = ("released", "dc")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of the evaluation protocol (defaults are the paper's).

    ``augment_style``: ``"released"``, one random transform per image as the released
    evaluation does (:func:`~distillation.released_augment`), or ``"dsa"``, all DSA
    transforms composed (:func:`~distillation.dsa_augment`).

    ``released_loop``: train as the released ``eval.py``'s loop does: rounds of
    :data:`ROUND` = 500 steps, ``steps // 200`` rounds without augmentation (2500 steps for
    1000, 5000 for 2000; after ``steps`` the cosine schedule stays at its floor, 1 % of the peak
    rate) and ``steps // 500`` rounds with it (1000 for 1000: no longer than the schedule), every
    round drawing from **the same key** (``eval.py`` passes one ``aug_key`` to each round), so
    the augmentations and minibatches of steps ``t`` and ``t + 500`` are the same. Off by
    default: without augmentation 2.5× the evaluation's cost for steps at 1e-6, and a repeated
    augmentation stream is a quirk of the released loop, not a choice of the paper.

    ``arch``, ``norm``, ``definition``: the network trained (:func:`~distillation.build_network`);
    ``width`` and ``depth`` apply to the ConvNet only. Batch normalisation trains on batch
    statistics and tests on running ones.

    ``protocol``: ``"released"`` (the default), the released ``eval.py``'s training: MSE
    ``½Σ(f − y)²/(N·K)`` on the set's labels, Adam with a 500-step warm-up to
    ``learning_rate`` (1e-4) and a cosine to 1 %; or ``"dc"``, the training DC/DSA (and the
    cross-architecture tables of most later work) give their evaluation networks: softmax
    cross-entropy on the argmax of the labels, SGD with momentum 0.9 and weight decay 5e-4,
    ``learning_rate`` 0.01 cut ×0.1 halfway, 300 epochs of minibatches of ``batch_size`` (``steps``
    counts steps, not epochs, when given). Learned soft labels only count through their argmax
    under ``"dc"``; instance- or batch-normalised networks trained on 10 images need it to
    learn at all (docs/results.md: with MSE they stay near chance even on real images).
    """

    models: int = 5
    augment: bool = False
    augment_style: Literal["released", "dsa"] = "released"
    released_loop: bool = False
    arch: Arch = "convnet"
    norm: Norm = "none"
    definition: Definition = "released"
    width: int = 128
    depth: int | None = None
    steps: int | None = None
    protocol: Literal["released", "dc"] = "released"
    learning_rate: float | None = None  # None: 1e-4 ("released") or 0.01 ("dc")
    warmup: int = 500
    batch_size: int = 256
    test_batch: int = 1000

    def __post_init__(self):
        for name in ("models", "width", "batch_size", "test_batch"):
            check_int("EvalConfig", name, getattr(self, name))
        for name, allowed in (
            ("arch", ARCHITECTURES),
            ("norm", NORMS),
            ("definition", DEFINITIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"EvalConfig: `{name}` must be one of {allowed}, got {getattr(self, name)!r}."
                )
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"EvalConfig: `protocol` must be one of {PROTOCOLS}, got {self.protocol!r}."
            )
        if self.protocol == "dc" and self.released_loop:
            raise ValueError(
                "EvalConfig: `released_loop` is the released protocol's loop; it does not apply "
                "to protocol='dc'."
            )
        if self.learning_rate is not None and not (
            isinstance(self.learning_rate, int | float) and self.learning_rate > 0
        ):
            raise ValueError(
                "EvalConfig: `learning_rate` must be None or a positive number, got "
                f"{self.learning_rate!r}."
            )
        if self.augment_style not in ("released", "dsa"):
            raise ValueError(
                "EvalConfig: `augment_style` must be 'released' or 'dsa', got "
                f"{self.augment_style!r}."
            )
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(
                f"EvalConfig: `steps` must be None or a positive integer, got {self.steps!r}."
            )

    def train_steps(self, n_support: int, n_train: int | None = None) -> int:
        """The schedule's length: ``steps``; else with the released protocol 1000 when
        ``|S| = 10`` and 2000 otherwise; with ``"dc"`` 300 epochs of the ``n_train`` images
        trained on (mirrors included; ``n_support`` if not given)."""
        if self.steps is not None:
            return self.steps
        if self.protocol == "dc":
            n = n_support if n_train is None else n_train
            return DC_EPOCHS * -(-n // self.batch_size)
        return 1000 if n_support == 10 else 2000

    @property
    def peak_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return 0.01 if self.protocol == "dc" else 1e-4

    def total_steps(self, n_support: int, n_train: int | None = None) -> int:
        """Steps actually run (longer than the schedule with ``released_loop`` and no
        augmentation)."""
        steps = self.train_steps(n_support, n_train)
        if not self.released_loop:
            return steps
        return max(steps, (steps // (ROUND if self.augment else 200)) * ROUND)

    def step_keys(self, key: Array, total: int) -> Array:
        """One PRNG key per step: all different, or with ``released_loop`` the keys of the
        first round repeated in every round."""
        if not self.released_loop:
            return jax.random.split(key, total)
        first = jax.random.split(key, min(total, ROUND))
        return jnp.tile(first, (-(-total // ROUND),))[:total]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Test accuracies in percent, one per model."""

    accs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs))

    @property
    def std(self) -> float:
        return float(np.std(self.accs))

    def as_dict(self) -> dict:
        return {"acc_mean": self.mean, "acc_std": self.std, "accs": list(self.accs)}

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} % over {len(self.accs)} models"


def _schedule(config: EvalConfig, steps: int):
    peak = config.peak_learning_rate
    if config.protocol == "dc":
        return optax.piecewise_constant_schedule(peak, {steps // 2: 0.1})
    warmup = min(config.warmup, max(steps - 1, 1))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, end_value=0.01 * peak)


class TrainedModel(eqx.Module):
    """A trained network with its running statistics; calling it predicts (test mode)."""

    network: Network
    stats: Stats

    def __call__(self, x: Array) -> Array:
        return self.network(x, self.stats, train=False)[0]


def train_model(
    images: Array,
    labels: Array,
    config: EvalConfig,
    *,
    key: Array,
    n_support: int | None = None,
) -> TrainedModel:
    """Train one fresh ReLU network on ``(images, labels)`` with the protocol's schedule.

    Steps run in jitted chunks of :data:`CHUNK` unrolled steps (compiled once per shape and
    config): XLA on CPU runs convolution weight gradients ~20× slower inside a ``lax.scan`` loop
    than in straight-line code (``benchmarks/cpu_loops.py``).
    """
    n, k = images.shape[0], labels.shape[1]
    steps = config.train_steps(n if n_support is None else n_support, n)
    total = config.total_steps(n if n_support is None else n_support, n)
    k_init, k_train = jax.random.split(key)
    h, w, c = images.shape[1:]
    network, stats = build_network(
        config.arch,
        (h, w, c),
        k,
        key=k_init,
        norm=config.norm,
        definition=config.definition,
        width=config.width,
        depth=config.depth,
    )
    carry = (network, stats, _optimizer(config, steps).init(network))
    keys = config.step_keys(k_train, total)
    whole = total - total % CHUNK
    for start in range(0, whole, CHUNK):
        carry = _run_steps(carry, keys[start : start + CHUNK], images, labels, config, steps)
    for start in range(whole, total):  # the remainder, one at a time
        carry = _run_steps(carry, keys[start : start + 1], images, labels, config, steps)
    return TrainedModel(carry[0], carry[1])


CHUNK = 10
DC_EPOCHS = 300  # DC/DSA's epoch_eval_train
ROUND = 500  # steps per round of the released evaluation loop (``released_loop``)


def _optimizer(config: EvalConfig, steps: int) -> optax.GradientTransformation:
    if config.protocol == "dc":  # torch.optim.SGD(momentum=0.9, weight_decay=5e-4)
        return optax.chain(
            optax.add_decayed_weights(5e-4), optax.sgd(_schedule(config, steps), momentum=0.9)
        )
    return optax.adam(_schedule(config, steps))


@functools.partial(jax.jit, static_argnums=(4, 5))
def _run_steps(carry, keys, images, labels, config: EvalConfig, steps: int):
    n, k = images.shape[0], labels.shape[1]
    batch = min(n, config.batch_size)
    grayscale = images.shape[-1] == 1
    optimizer = _optimizer(config, steps)

    def loss_fn(m, stats, x, y):
        out, stats = m(x, stats, train=True)
        if config.protocol == "dc":
            hard = jnp.argmax(y, -1)
            return optax.softmax_cross_entropy_with_integer_labels(out, hard).mean(), stats
        return 0.5 * jnp.sum((out - y) ** 2) / (x.shape[0] * k), stats

    def one_step(carry, step_key):
        m, stats, state = carry
        k_batch, k_aug = jax.random.split(step_key)
        if batch < n:
            idx = jax.random.choice(k_batch, n, (batch,), replace=False)
            x, y = images[idx], labels[idx]
        else:
            x, y = images, labels
        if config.augment:
            augment = released_augment if config.augment_style == "released" else dsa_augment
            x = augment(x, key=k_aug, grayscale=grayscale)
        grads, stats = jax.grad(loss_fn, has_aux=True)(m, stats, x, y)
        m, state = optax_step(optimizer, grads, state, m)
        return (m, stats, state), None

    return jax.lax.scan(one_step, carry, keys, unroll=True)[0]


@jax.jit
def _predict(model: TrainedModel, x: Array) -> Array:
    return jnp.argmax(model(x), -1)


def accuracy(
    model: TrainedModel, x_test: np.ndarray, y_test: np.ndarray, batch: int = 1000
) -> float:
    """Top-1 accuracy in percent on the whole test set (batched)."""
    correct = 0
    for start in range(0, len(x_test), batch):
        pred = _predict(model, jnp.asarray(x_test[start : start + batch]))
        correct += int(np.sum(np.asarray(pred) == y_test[start : start + batch]))
    return 100.0 * correct / len(x_test)


def evaluate_support(
    images: np.ndarray | Array,
    labels: np.ndarray | Array,
    x_test: np.ndarray,
    y_test: np.ndarray,
    config: EvalConfig,
    *,
    key: Array,
    flip: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Evaluate a distilled set with the paper's protocol.

    Args:
        images: ``(N, H, W, C)`` in model-input space.
        labels: ``(N, K)`` (learned) labels; integer labels ``(N,)`` are one-hot encoded.
        x_test: the full test set's images (model-input space).
        y_test: its integer labels.
        config: protocol settings.
        key: PRNG key; model ``i`` uses ``fold_in(key, i)``.
        flip: also train on the horizontal mirrors.
        progress: print each model's accuracy as it finishes.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
    if labels.ndim == 1:
        labels = one_hot(labels, int(max(labels.max(), np.max(y_test))) + 1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
    if images.shape[1:] != tuple(x_test.shape[1:]):
        raise ValueError(
            f"distilled images are {images.shape[1:]} but the test images are {x_test.shape[1:]}: "
            "was the set distilled from another dataset?"
        )
    if not np.all(np.isfinite(images)) or not np.all(np.isfinite(labels)):
        raise ValueError("the distilled images or labels contain NaN or infinite values.")
    n_support = images.shape[0]
    x, y = jnp.asarray(images), jnp.asarray(labels, jnp.float32)
    if flip:
        x, y = with_mirrors(x, y)
    accs = []
    for i in range(config.models):
        model = train_model(x, y, config, key=jax.random.fold_in(key, i), n_support=n_support)
        accs.append(accuracy(model, x_test, np.asarray(y_test), config.test_batch))
        if progress:
            print(f"  model {i + 1}/{config.models}: {accs[-1]:.2f}%", flush=True)
    return EvalResult(tuple(accs))
