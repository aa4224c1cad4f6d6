"""The ConvNet of the paper, in equinox, working on NHWC batches.

Each of ``depth`` blocks is a 3×3 convolution (padding 1; 3 on the first layer for 28-px
grayscale inputs, so 28 px behaves like 32 px), an optional normalisation, the activation, and a
2×2 average pool. Width doubles at every block (128, 256, 512 at the paper's depth 3 and width
128). A linear head maps the flattened features to the classes. During distillation the
activation is a softplus with temperature 60 (smooth, so Hessians are well defined); at
evaluation it is ReLU.

The model is split into ``body`` (:class:`ConvBody`, the feature extractor ``θ_B``) and ``head``
(:class:`Head`, the final layer ``θ_F``), which is the split RCIG's closed-form head needs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

Activation = Literal["softplus", "relu"]
Norm = Literal["none", "instance", "batch"]
SOFTPLUS_TEMPERATURE = 60.0


@jax.custom_jvp
def softplus_t(x: Array) -> Array:
    """Softplus with temperature β = :data:`SOFTPLUS_TEMPERATURE`: ``log(1 + exp(βx)) / β``.

    The same function as ``jax.nn.softplus(β * x) / β`` (to float rounding; → ReLU as β → ∞),
    written as ``max(x, 0) + log1p(exp(-β|x|)) / β`` with the derivative rule
    ``sigmoid(βx) · t``. ``jax.nn.softplus`` differentiates ``logaddexp``'s general rule (two
    exponentials, infinity guards and selects per element), and the linearised network, which
    takes derivatives of the tangent, repeats that on every 1024-image target activation: this
    rule takes an RCIG iteration at width 32 to 0.88× its time on a CPU with this package's XLA
    flags (0.73× with YNNPACK's reduce fusions on; ``benchmarks/softplus_rule.py``).
    Derivatives of every order come from autodiff of the rule (``sigmoid``'s own rule gives
    ``β·s·(1 - s)``).
    """
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-SOFTPLUS_TEMPERATURE * jnp.abs(x))) / (
        SOFTPLUS_TEMPERATURE
    )


@softplus_t.defjvp
def _softplus_t_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return softplus_t(x), jax.nn.sigmoid(SOFTPLUS_TEMPERATURE * x) * t


def _activation(name: str, x: Array) -> Array:
    if name == "relu":
        return jax.nn.relu(x)
    return softplus_t(x)


BN_EPSILON = 1e-5
BN_MOMENTUM = 0.1


def _normalise(kind: str, x: Array, eps: float = BN_EPSILON) -> Array:
    if kind == "none":
        return x
    # Instance norm: no affine parameters, statistics of each image.
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class BatchNorm(eqx.Module):
    """One batch-norm layer of the distillation ConvNet, with flax's conventions (the released
    code's ``nn.BatchNorm(momentum=0.1, epsilon=1e-5)``).

    ``scale`` and ``offset`` are parameters (trained by the pool, and part of the inner
    problem's displacement, as in the released code's tangent mask). ``mean`` and ``var`` are
    the running statistics: used in evaluation mode (every inner, Hessian and outer pass) under
    ``stop_gradient``, so no derivative ever flows into them; changed only by
    :meth:`ConvBody.train_forward` (the pool's training steps), as
    ``momentum·old + (1 − momentum)·batch`` with the batch's biased variance.
    """

    scale: Float[Array, " c"]
    offset: Float[Array, " c"]
    mean: Float[Array, " c"]
    var: Float[Array, " c"]

    def __call__(self, x: Array) -> Array:
        mean = jax.lax.stop_gradient(self.mean)
        var = jax.lax.stop_gradient(self.var)
        return self._apply(x, mean, var)

    def _apply(self, x: Array, mean: Array, var: Array) -> Array:
        row = lambda v: v.reshape(1, 1, 1, -1)
        return (x - row(mean)) * row(jax.lax.rsqrt(var + BN_EPSILON) * self.scale) + row(
            self.offset
        )

    def train_forward(self, x: Array) -> tuple[Array, BatchNorm]:
        """Normalise with the batch's statistics; the layer with updated running statistics."""
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.var(x, axis=(0, 1, 2))
        out = self._apply(x, mean, var)
        keep = lambda old, new: BN_MOMENTUM * old + (1.0 - BN_MOMENTUM) * jax.lax.stop_gradient(new)
        moved = BatchNorm(self.scale, self.offset, keep(self.mean, mean), keep(self.var, var))
        return out, moved


def _fresh_batch_norm(channels: int, dtype) -> BatchNorm:
    ones, zeros = jnp.ones((channels,), dtype), jnp.zeros((channels,), dtype)
    return BatchNorm(ones, zeros, zeros, ones)


_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x: Array, w: Array, pad: int) -> Array:
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), [(pad, pad), (pad, pad)], dimension_numbers=_DN
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_forward_vjp(x: Array, w: Array, pad: int) -> Array:
    """``conv2d`` at stride 1 (float32), whose reverse-mode derivative is written as two
    convolutions in the forward layout (NHWC batch, HWIO kernel), for loops on XLA:CPU.

    JAX's transposes of a convolution are convolutions with other dimension numbers; in
    straight-line code XLA:CPU rewrites them into its kernels' layout, but inside a loop or a
    conditional it does not, and runs the kernel gradient as a naive loop (~20× slower,
    ``benchmarks/cpu_loops.py``). Here the input gradient is the convolution of the cotangent
    with the flipped, transposed kernel, and the kernel gradient the convolution of the images
    with the images as the batch axis moved to features (``[C_in, H, W, N]``) by the cotangent
    as an ``H'×W'`` kernel (``[H', W', N, C_out]``): the same sums, so the same values to float
    rounding. Reverse mode only (``jax.jvp`` of it raises): the pool's training step, which is
    never differentiated, is what uses it (``ModelPool``; ``benchmarks/pool_loop.py``).
    """
    return _conv(x, w, pad)


def _conv_fwd(x, w, pad):
    return _conv(x, w, pad), (x, w)


def _conv_bwd(pad, residuals, g):
    x, w = residuals
    kh, kw = w.shape[:2]
    # ∂x: the full correlation of g with the kernel flipped in space, C_in and C_out swapped.
    dx = jax.lax.conv_general_dilated(
        g,
        jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2),
        (1, 1),
        [(kh - 1 - pad, kh - 1 - pad), (kw - 1 - pad, kw - 1 - pad)],
        dimension_numbers=_DN,
    )
    # ∂w[i, j, c, o] = Σ_{n,h,w} x_pad[n, h+i, w+j, c] g[n, h, w, o]: C_in as the batch, N as
    # the features, g as the kernel; the output [C_in, kh, kw, C_out] back to HWIO.
    dw = _conv(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), pad)
    return dx, dw.transpose(1, 2, 0, 3)


conv2d_forward_vjp.defvjp(_conv_fwd, _conv_bwd)


def conv2d(
    x: Array,
    w: Array,
    pad: int,
    stride: int = 1,
    compute_dtype: str = "float32",
    forward_vjp: bool = False,
) -> Array:
    """A 2-D convolution of an NHWC batch with HWIO weights and symmetric zero padding.

    ``compute_dtype="bfloat16"``: the operands are rounded to bfloat16 and the products summed
    in float32 (the result is float32), the mixed precision of accelerators' matrix units.
    ``forward_vjp=True``: at stride 1 in float32, :func:`conv2d_forward_vjp` (reverse mode only,
    fast inside XLA:CPU loops); otherwise ignored.
    """
    if pad > 1:
        # Zero-pad explicitly down to padding 1: XLA:CPU hands 3×3 convolutions with padding
        # ≤ 1 to its fast library kernels (YNNPACK) and runs larger paddings (the 28-px MNIST
        # layer's 3) on its own; 1.5× per step for VIG at width 16
        # (benchmarks/conv_kernels.py). The barrier stops XLA folding the pad back in.
        x = jax.lax.optimization_barrier(
            jnp.pad(x, [(0, 0), (pad - 1, pad - 1), (pad - 1, pad - 1), (0, 0)])
        )
        pad = 1
    if compute_dtype == "bfloat16":
        out_dtype = x.dtype
        return jax.lax.conv_general_dilated(
            x.astype(jnp.bfloat16),
            w.astype(jnp.bfloat16),
            (stride, stride),
            [(pad, pad), (pad, pad)],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32,
        ).astype(out_dtype)
    if forward_vjp and stride == 1 and pad < min(w.shape[:2]):
        return conv2d_forward_vjp(x, w, pad)
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), [(pad, pad), (pad, pad)], dimension_numbers=_DN
    )


def add_bias(x: Array, b: Array) -> Array:
    """``x + b`` for an NHWC batch ``x`` and a per-channel bias ``b``, written so that its
    derivative with respect to ``b`` is fast on XLA:CPU.

    Differentiated, ``x + b`` sums the cotangent over ``N·H·W`` positions per channel, and
    XLA:CPU does that sum badly at both batch sizes of a step. Over the 1024-image target batch
    it rewrites the sum into a tree of 32-element ``reduce-window`` sums (``TreeReductionRewriter``)
    that runs at ~3.5 ns per element; over the 20-image support set it fuses the sum over the
    images and the sum over the pixels into one loop that reads the channels at a stride, ~3.2
    ns per element (0.12 s of one CIFAR-10 iteration at width 32, in the inner and
    Hessian-inverse steps). Here the bias becomes one ``(H, W, C)`` plane through an outer
    product with a column of ones (a ``dot`` with one term per entry, so the plane is ``b``
    exactly) and is added to every image: the transpose is a sum over the batch alone
    (contiguous rows, fast), then the ``dot``'s transpose, a matrix product over the plane's
    pixels, which XLA does not fuse with the sum before it (``benchmarks/bias_gradient.py``).
    The values are ``x + b`` exactly; the derivatives are the same sums in another order.
    (Before 2026-12-05 the plane was a broadcast behind an ``optimization_barrier``, which
    XLA:CPU drops: it kept the sums apart only where the tree rewrite did.)
    """
    _, h, w, c = x.shape
    plane = jnp.dot(jnp.ones((h * w, 1), b.dtype), b[None, :]).reshape(h, w, c)
    return x + plane[None]


def avg_pool2(x: Array) -> Array:
    """2×2 average pooling with stride 2 (odd trailing rows and columns dropped).

    A ``reduce_window`` sum, as flax's ``avg_pool`` in the released code. (It was a ``mean``
    over the window axes of a reshaped batch, the same values; XLA:CPU fused the softplus
    before it into that reduction and computed it there without vectorising: 150 ms for a
    1024-image 32×32×32 activation and its pooling, 82 ms now, and 0.88–0.89× per RCIG iteration;
    ``benchmarks/pooling.py``.) The ¼ is applied before the sum, where XLA fuses it into the
    activation that makes ``x``: applied after, it fused into the transposing copy that the
    next layer's kernel gradient makes of the pooled batch (batch axis last), and that fusion
    runs ~4× slower than a bare transpose (``benchmarks/pool_scale.py``). Scaling by a power of
    two is exact, so the values are the same but for subnormal inputs.
    """
    window = (1, 2, 2, 1)
    return jax.lax.reduce_window(0.25 * x, 0.0, jax.lax.add, window, window, "VALID")


def lecun_normal(key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """The released models' weight initialiser: flax's default ``lecun_normal`` (the same as
    ``jax.nn.initializers.lecun_normal()``), a normal **truncated** to ±2 standard deviations and
    rescaled so that the variance stays ``1 / fan_in``; ``fan_in`` is the product of every axis
    but the last (``kh·kw·c_in`` for an HWIO kernel, the features for a dense one)."""
    return jax.nn.initializers.lecun_normal()(key, shape, dtype)


class ConvBody(eqx.Module):
    """The feature extractor: ``depth`` conv blocks, then flatten. Input ``(N, H, W, C)``.

    With ``norm="batch"``, ``batch_norms`` holds one :class:`BatchNorm` per block; calling the
    body normalises with their running statistics (evaluation mode, a per-image function, so
    any chunking of a batch gives the same outputs) and :meth:`train_forward` with the batch's.
    """

    weights: tuple[Array, ...]
    biases: tuple[Array, ...]
    paddings: tuple[int, ...] = eqx.field(static=True)
    norm: str = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    compute_dtype: str = eqx.field(static=True, default="float32")
    batch_norms: tuple[BatchNorm, ...] = ()

    def _blocks(
        self, x: Array, train: bool, forward_vjp: bool = False
    ) -> tuple[Array, tuple[BatchNorm, ...]]:
        moved = []
        for i, (w, b, pad) in enumerate(zip(self.weights, self.biases, self.paddings, strict=True)):
            conv = conv2d(x, w, pad, compute_dtype=self.compute_dtype, forward_vjp=forward_vjp)
            x = add_bias(conv, b)
            if self.norm == "batch":
                if train:
                    x, bn = self.batch_norms[i].train_forward(x)
                    moved.append(bn)
                else:
                    x = self.batch_norms[i](x)
            else:
                x = _normalise(self.norm, x)
            x = _activation(self.activation, x)
            x = avg_pool2(x)
        return x.reshape(x.shape[0], -1), tuple(moved)

    def __call__(
        self, x: Float[Array, "n h w c"], *, forward_vjp: bool = False
    ) -> Float[Array, "n d"]:
        """Features of ``x``. ``forward_vjp=True``: the convolutions' reverse-mode derivative
        as forward-layout convolutions (:func:`conv2d_forward_vjp`; fast inside XLA:CPU loops,
        no forward mode), the same values."""
        return self._blocks(x, train=False, forward_vjp=forward_vjp)[0]

    def train_forward(
        self, x: Float[Array, "n h w c"], *, forward_vjp: bool = False
    ) -> tuple[Float[Array, "n d"], ConvBody]:
        """Training mode: batch norm with the statistics of ``x`` (one whole batch); returns
        the features and the body with updated running statistics (the same as calling it
        without batch norm)."""
        features, moved = self._blocks(x, train=True, forward_vjp=forward_vjp)
        return features, dataclasses.replace(self, batch_norms=moved)


class Head(eqx.Module):
    """The final linear layer ``θ_F``: features ``(N, D)`` → outputs ``(N, K)``."""

    weight: Float[Array, "d k"]
    bias: Float[Array, " k"]

    def __call__(self, features: Float[Array, "n d"]) -> Float[Array, "n k"]:
        return features @ self.weight + self.bias[None, :]


class ConvNet(eqx.Module):
    """The paper's ConvNet: ``head(body(x))``.

    Build with :func:`conv_net`. Call on a batch ``(N, H, W, C)`` to get ``(N, K)`` outputs.
    """

    body: ConvBody
    head: Head

    def __call__(
        self, x: Float[Array, "n h w c"], *, forward_vjp: bool = False
    ) -> Float[Array, "n k"]:
        """Outputs for ``x`` (``forward_vjp``: see :meth:`ConvBody.__call__`)."""
        return self.head(self.body(x, forward_vjp=forward_vjp))

    def train_forward(
        self, x: Float[Array, "n h w c"], *, forward_vjp: bool = False
    ) -> tuple[Float[Array, "n k"], ConvNet]:
        """Training mode (see :meth:`ConvBody.train_forward`): outputs and the network with
        updated running statistics."""
        features, body = self.body.train_forward(x, forward_vjp=forward_vjp)
        return self.head(features), dataclasses.replace(self, body=body)

    @property
    def has_running_stats(self) -> bool:
        """Whether training mode differs from calling the network (batch norm)."""
        return self.body.norm == "batch"

    def with_activation(self, activation: Activation) -> ConvNet:
        """The same weights with another activation (softplus to distil, ReLU to evaluate)."""
        return eqx.tree_at(lambda m: m.body, self, _replace_activation(self.body, activation))


def _replace_activation(body: ConvBody, activation: str) -> ConvBody:
    return dataclasses.replace(body, activation=activation)


def default_depth(image_size: int) -> int:
    """The paper's depth for an image size: 3 for 28/32 px, 4 for 64 px, 5 for 128 px.

    Smaller images (the bundled 8×8 digits) get as many blocks as halve the size to ≥ 2 px.
    """
    if image_size >= 128:
        return 5
    if image_size >= 64:
        return 4
    if image_size >= 28:
        return 3
    depth = 0
    while image_size // 2 >= 2:
        image_size //= 2
        depth += 1
    return max(depth, 1)


def conv_net(
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    key: PRNGKeyArray,
    width: int = 128,
    depth: int | None = None,
    norm: Norm = "none",
    activation: Activation = "softplus",
    dtype=jnp.float32,
    compute_dtype: str = "float32",
) -> ConvNet:
    """Build the paper's ConvNet (truncated LeCun-normal weights as flax's, zero biases).

    Args:
        image_shape: ``(H, W, C)``.
        num_classes: number of outputs ``K``.
        key: PRNG key (keyword-only, required).
        width: channels of the first block; doubles at each block.
        depth: number of conv blocks (``None``: :func:`default_depth`).
        norm: ``"none"`` (the paper's default), ``"instance"`` (statistics of each image, no
            parameters) or ``"batch"`` (:class:`BatchNorm` after each convolution: scale and
            offset, running statistics used when the network is called, batch statistics in
            :meth:`ConvNet.train_forward`; the released code's ``Conv(normalization="batch")``).
        activation: ``"softplus"`` (temperature 60) or ``"relu"``.
        dtype: parameter dtype.
        compute_dtype: ``"float32"``, or ``"bfloat16"`` for the convolutions' operands (sums in
            float32; mixed precision for accelerators).

    Example:
        >>> import jax
        >>> net = conv_net((28, 28, 1), 10, key=jax.random.key(0), width=8)
        >>> net(jax.numpy.zeros((2, 28, 28, 1))).shape
        (2, 10)
    """
    h, w, c = image_shape
    if min(h, w) < 2 or c < 1:
        raise ValueError(f"conv_net: image_shape must be (H>=2, W>=2, C>=1), got {image_shape}.")
    if width < 1 or num_classes < 1:
        raise ValueError(
            f"conv_net: width and num_classes must be >= 1, got {width}, {num_classes}."
        )
    if norm not in ("none", "instance", "batch"):
        raise ValueError(f"conv_net: norm must be 'none', 'instance' or 'batch', got {norm!r}.")
    if compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(
            f"conv_net: compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}."
        )
    if activation not in ("softplus", "relu"):
        raise ValueError(f"conv_net: activation must be 'softplus' or 'relu', got {activation!r}.")
    depth = default_depth(min(h, w)) if depth is None else depth
    if depth < 1 or min(h, w) // 2**depth < 1:
        raise ValueError(f"conv_net: depth {depth} pools a {h}x{w} image below 1 pixel.")
    keys = jax.random.split(key, depth + 1)
    weights, biases, paddings = [], [], []
    cin, size_h, size_w = c, h, w
    for i in range(depth):
        pad = 3 if (i == 0 and c == 1 and h == 28) else 1
        cout = width * 2**i
        weights.append(lecun_normal(keys[i], (3, 3, cin, cout), dtype))
        biases.append(jnp.zeros((cout,), dtype))
        paddings.append(pad)
        size_h, size_w = (size_h + 2 * pad - 2) // 2, (size_w + 2 * pad - 2) // 2
        cin = cout
    feat = size_h * size_w * cin
    batch_norms = (
        tuple(_fresh_batch_norm(width * 2**i, dtype) for i in range(depth))
        if norm == "batch"
        else ()
    )
    body = ConvBody(
        tuple(weights), tuple(biases), tuple(paddings), norm, activation, compute_dtype, batch_norms
    )
    head = Head(lecun_normal(keys[-1], (feat, num_classes), dtype), jnp.zeros(num_classes, dtype))
    return ConvNet(body, head)
