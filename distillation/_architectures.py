"""The evaluation architectures of the cross-architecture study (the paper's Table 3).

ConvNet, ResNet-18, VGG-11 and AlexNet for 28/32-px inputs, each with ``"none"``,
``"instance"`` (per-channel statistics of each image, with a learned scale and shift, as
``GroupNorm(C, C)``) or ``"batch"`` normalisation (batch statistics while training, running
statistics at test time, with a learned scale and shift). Two definitions:

* ``"released"`` (the default): the networks of the authors' released ``models.py`` as their
  ``eval.py`` builds them (the evaluation the released code runs). They differ from the field's
  versions in ways that matter: VGG-11 has 128 channels in every convolution and average
  pooling; ResNet-18 normalises only after its first convolution (the blocks are built without
  the normalisation argument), flattens the 4×4×512 map without global pooling, and
  AlexNet uses average pooling; batch-norm running statistics follow flax's convention with
  momentum 0.1 in the ConvNet (the running value keeps 10 % of its past) and 0.9 elsewhere.
  Its ConvNet doubles the width at every block (128, 256, 512), as the distillation network;
  its AlexNet has no normalisation (with ``norm`` other than ``"none"`` each convolution is
  followed by the normalisation, as DC/DSA's ``AlexNetBN``).
* ``"dc"``: the versions of DC/DSA (``networks.py`` of VICO-UoE/DatasetCondensation), which MTT
  and most later work evaluate on: a ConvNet of constant width (128 in every block), VGG-11
  with 64…512 channels and max pooling, ResNet-18 with normalisation in every block and 4×4
  average pooling before a 512-feature head, AlexNet with max pooling; PyTorch's
  running-statistics momentum 0.1.

All weights are LeCun-normal, biases zero, normalisation scales one and shifts zero (as the
ConvNet of :mod:`distillation._models`; the released code's flax layers use the same
variance). A network is ``(network, stats)``: the parameters are an equinox module, the
batch-norm running statistics a separate tuple that :meth:`Network.__call__` takes and returns,
so that the parameters alone are what an optimiser updates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from distillation._models import Norm, avg_pool2, conv2d, default_depth, lecun_normal

Arch = Literal["convnet", "resnet18", "vgg11", "alexnet"]
Definition = Literal["released", "dc"]
ARCHITECTURES: tuple[str, ...] = ("convnet", "resnet18", "vgg11", "alexnet")
DEFINITIONS: tuple[str, ...] = ("released", "dc")
NORMS: tuple[str, ...] = ("none", "instance", "batch")
EPS = 1e-5

# One (mean, var) pair per batch-norm layer, in the order the layers run.
Stats = tuple[tuple[Array, Array], ...]


class _Context:
    """What one forward pass threads through the layers: the running statistics it reads, the
    ones it writes, and whether it trains (batch statistics) or tests (running statistics)."""

    def __init__(self, stats: Stats, train: bool):
        self.stats = stats
        self.train = train
        self.new = list(stats)


class Conv(eqx.Module):
    """A square convolution, NHWC in and out, HWIO weights."""

    weight: Array
    bias: Array | None
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)

    def __call__(self, x: Array, ctx: _Context) -> Array:
        x = conv2d(x, self.weight, self.padding, self.stride)
        return x if self.bias is None else x + self.bias.reshape(1, 1, 1, -1)


class Normalise(eqx.Module):
    """``none``, ``instance`` or ``batch`` normalisation with a learned scale and shift."""

    scale: Array | None
    shift: Array | None
    kind: str = eqx.field(static=True)
    slot: int = eqx.field(static=True)  # index into the running statistics (batch only)
    batch_weight: float = eqx.field(static=True)  # weight of the batch in the running update

    def __call__(self, x: Array, ctx: _Context) -> Array:
        if self.kind == "none":
            return x
        if self.kind == "instance" or ctx.train:
            axes = (1, 2) if self.kind == "instance" else (0, 1, 2)
            mean = jnp.mean(x, axis=axes, keepdims=True)
            var = jnp.var(x, axis=axes, keepdims=True)
            if self.kind == "batch":
                old_mean, old_var = ctx.stats[self.slot]
                w = self.batch_weight
                ctx.new[self.slot] = (
                    (1 - w) * old_mean + w * jax.lax.stop_gradient(mean.reshape(-1)),
                    (1 - w) * old_var + w * jax.lax.stop_gradient(var.reshape(-1)),
                )
        else:
            mean, var = ctx.stats[self.slot]
            mean, var = mean.reshape(1, 1, 1, -1), var.reshape(1, 1, 1, -1)
        x = (x - mean) * jax.lax.rsqrt(var + EPS)
        assert self.scale is not None and self.shift is not None  # kind != "none"
        return x * self.scale.reshape(1, 1, 1, -1) + self.shift.reshape(1, 1, 1, -1)


class ReLU(eqx.Module):
    def __call__(self, x: Array, ctx: _Context) -> Array:
        return jax.nn.relu(x)


class Pool(eqx.Module):
    """Pooling with a square window and an equal stride (trailing rows that do not fill a
    window are dropped, as PyTorch and flax do)."""

    kind: str = eqx.field(static=True)  # "avg" or "max"
    size: int = eqx.field(static=True)

    def __call__(self, x: Array, ctx: _Context) -> Array:
        if self.kind == "avg" and self.size == 2:
            return avg_pool2(x)
        window = (1, self.size, self.size, 1)
        if self.kind == "max":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID")
        return total / (self.size * self.size)


class Residual(eqx.Module):
    """ResNet's basic block: ``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))``."""

    conv1: Conv
    norm1: Normalise
    conv2: Conv
    norm2: Normalise
    shortcut: tuple[Conv, Normalise] | None

    def __call__(self, x: Array, ctx: _Context) -> Array:
        out = jax.nn.relu(self.norm1(self.conv1(x, ctx), ctx))
        out = self.norm2(self.conv2(out, ctx), ctx)
        if self.shortcut is not None:
            conv, norm = self.shortcut
            x = norm(conv(x, ctx), ctx)
        return jax.nn.relu(out + x)


class Network(eqx.Module):
    """``head(flatten(layers(x)))``. Call as ``network(x, stats, train=...)`` →
    ``(outputs, new_stats)``; with ``train=False`` batch normalisation uses ``stats`` and the
    returned statistics are ``stats`` unchanged."""

    layers: tuple[Callable[[Array, _Context], Array], ...]
    head_weight: Float[Array, "d k"]
    head_bias: Float[Array, " k"]
    arch: str = eqx.field(static=True)

    def __call__(
        self, x: Float[Array, "n h w c"], stats: Stats = (), *, train: bool = False
    ) -> tuple[Float[Array, "n k"], Stats]:
        ctx = _Context(stats, train)
        for layer in self.layers:
            x = layer(x, ctx)
        out = x.reshape(x.shape[0], -1) @ self.head_weight + self.head_bias[None, :]
        return out, tuple(ctx.new)


def parameter_count(network: Network) -> int:
    """Trainable parameters (running statistics are not parameters). Also counts the abstract
    network of ``eqx.filter_eval_shape(build_network, ...)``, which allocates nothing."""
    leaves = jax.tree_util.tree_leaves(network)
    return sum(math.prod(x.shape) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact))


class _Builder:
    """Creates layers in order, handing out PRNG keys and batch-norm slots."""

    def __init__(self, key: PRNGKeyArray, n_weights: int, norm: str, batch_weight: float, dtype):
        self.keys = list(jax.random.split(key, n_weights))
        self.norm, self.batch_weight, self.dtype = norm, batch_weight, dtype
        self.stats: list[tuple[Array, Array]] = []

    def _normal(self, shape):
        return lecun_normal(self.keys.pop(0), shape, self.dtype)

    def conv(self, cin, cout, size, *, padding, stride=1, bias=True) -> Conv:
        weight = self._normal((size, size, cin, cout))
        return Conv(weight, jnp.zeros(cout, self.dtype) if bias else None, stride, padding)

    def normalise(self, channels: int, kind: str | None = None) -> Normalise:
        kind = self.norm if kind is None else kind
        if kind == "none":
            return Normalise(None, None, "none", -1, 0.0)
        slot = -1
        if kind == "batch":
            slot = len(self.stats)
            self.stats.append((jnp.zeros(channels, self.dtype), jnp.ones(channels, self.dtype)))
        ones, zeros = jnp.ones(channels, self.dtype), jnp.zeros(channels, self.dtype)
        return Normalise(ones, zeros, kind, slot, self.batch_weight)

    def head(self, features: int, num_classes: int) -> tuple[Array, Array]:
        return self._normal((features, num_classes)), jnp.zeros(num_classes, self.dtype)


def _convnet(b, c, h, width, depth, definition):
    layers = []
    for i in range(depth):
        pad = 3 if (i == 0 and c == 1 and h == 28) else 1
        cout = width * 2**i if definition == "released" else width  # DC keeps the width
        layers += [b.conv(c, cout, 3, padding=pad), b.normalise(cout), ReLU(), Pool("avg", 2)]
        c = cout
    return layers


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _vgg11(b, c, definition):
    layers: list[eqx.Module] = []
    pool = Pool("avg" if definition == "released" else "max", 2)
    for i, item in enumerate(VGG11):
        if item == "M":
            layers.append(pool)
            continue
        cout = 128 if definition == "released" else item
        pad = 3 if (i == 0 and c == 1) else 1
        layers += [b.conv(c, cout, 3, padding=pad), b.normalise(cout), ReLU()]
        c = cout
    return layers


def _alexnet(b, c, definition):
    pool = Pool("avg" if definition == "released" else "max", 2)
    spec = ((128, 5, 4 if c == 1 else 2, True), (192, 5, 2, True), (256, 3, 1, False))
    spec += ((192, 3, 1, False), (192, 3, 1, True))  # type: ignore[assignment]
    layers: list[eqx.Module] = []
    for cout, size, pad, pooled in spec:
        layers += [b.conv(c, cout, size, padding=pad), b.normalise(cout), ReLU()]
        layers += [pool] if pooled else []
        c = cout
    return layers


def _resnet18(b, c, definition):
    block_norm = "none" if definition == "released" else None  # released: blocks unnormalised
    layers = [b.conv(c, 64, 3, padding=1, bias=False), b.normalise(64), ReLU()]
    c = 64
    for stage, planes in enumerate((64, 128, 256, 512)):
        for i in range(2):
            stride = 2 if (stage > 0 and i == 0) else 1
            conv1 = b.conv(c, planes, 3, padding=1, stride=stride, bias=False)
            norm1 = b.normalise(planes, block_norm)
            conv2 = b.conv(planes, planes, 3, padding=1, bias=False)
            norm2 = b.normalise(planes, block_norm)
            shortcut = None
            if stride != 1 or c != planes:
                shortcut_conv = b.conv(c, planes, 1, padding=0, stride=stride, bias=False)
                shortcut = (shortcut_conv, b.normalise(planes, block_norm))
            layers.append(Residual(conv1, norm1, conv2, norm2, shortcut))
            c = planes
    if definition == "dc":
        layers.append(Pool("avg", 4))
    return layers


# Weight-bearing layers (convolutions + the head), which is how many keys a network splits.
_N_WEIGHTS = {"resnet18": 1 + 2 * 8 + 3 + 1, "vgg11": 8 + 1, "alexnet": 5 + 1}


def build_network(
    arch: Arch,
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    key: PRNGKeyArray,
    norm: Norm = "none",
    definition: Definition = "released",
    width: int = 128,
    depth: int | None = None,
    dtype=jnp.float32,
) -> tuple[Network, Stats]:
    """An evaluation network and its initial running statistics.

    Args:
        arch: ``"convnet"``, ``"resnet18"``, ``"vgg11"`` or ``"alexnet"``.
        image_shape: ``(H, W, C)``; ResNet-18, VGG-11 and AlexNet are the 28/32-px versions.
        num_classes: outputs ``K``.
        key: PRNG key (keyword-only, required).
        norm: ``"none"``, ``"instance"`` or ``"batch"``.
        definition: ``"released"`` (the authors' released models, the default) or ``"dc"``
            (DC/DSA's ``networks.py``); see the module docstring for the differences.
        width: the ConvNet's first-block width (ignored by the other architectures). With
            ``norm="none"`` the ConvNet has the weights :func:`~distillation.conv_net` draws
            from the same key.
        depth: the ConvNet's number of blocks (``None``: from the image size).
        dtype: parameter dtype.

    Example:
        >>> import jax
        >>> net, stats = build_network("vgg11", (32, 32, 3), 10, key=jax.random.key(0))
        >>> net(jax.numpy.zeros((2, 32, 32, 3)), stats)[0].shape
        (2, 10)
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"build_network: arch must be one of {ARCHITECTURES}, got {arch!r}.")
    if norm not in NORMS:
        raise ValueError(f"build_network: norm must be one of {NORMS}, got {norm!r}.")
    if definition not in DEFINITIONS:
        raise ValueError(
            f"build_network: definition must be one of {DEFINITIONS}, got {definition!r}."
        )
    h, w, c = image_shape
    if arch != "convnet" and not (28 <= min(h, w) <= 32):
        raise ValueError(
            f"build_network: {arch} is defined for 28- to 32-px images, got {h}x{w}; "
            "use arch='convnet' (its depth follows the image size)."
        )
    depth = default_depth(min(h, w)) if depth is None else depth
    if arch == "convnet":
        if depth < 1 or width < 1 or min(h, w) // 2**depth < 1:
            raise ValueError(
                f"build_network: a ConvNet of depth {depth} and width {width} does not fit "
                f"{h}x{w} images."
            )
    # flax's BatchNorm momentum m keeps m of the running value: the released ConvNet passes 0.1
    # (PyTorch's convention by mistake), its VGG and ResNet 0.9; PyTorch's 0.1 keeps 0.9.
    batch_weight = 0.9 if (definition == "released" and arch == "convnet") else 0.1
    n_weights = depth + 1 if arch == "convnet" else _N_WEIGHTS[arch]
    b = _Builder(key, n_weights, norm, batch_weight, dtype)
    if arch == "convnet":
        layers = _convnet(b, c, h, width, depth, definition)
    elif arch == "vgg11":
        layers = _vgg11(b, c, definition)
    elif arch == "alexnet":
        layers = _alexnet(b, c, definition)
    else:
        layers = _resnet18(b, c, definition)
    features = jax.eval_shape(
        lambda x: _features(layers, tuple(b.stats), x), jax.ShapeDtypeStruct((2, h, w, c), dtype)
    ).shape[-1]
    weight, bias = b.head(features, num_classes)
    assert not b.keys, "every key is used once"
    return Network(tuple(layers), weight, bias, arch), tuple(b.stats)


def _features(layers, stats, x):
    ctx = _Context(stats, False)
    for layer in layers:
        x = layer(x, ctx)
    return x.reshape(x.shape[0], -1)
