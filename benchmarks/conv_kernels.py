"""Which convolutions XLA:CPU hands to its fast library (YNNPACK), and what it costs when not.

Two findings behind ``docs/performance.md``:

1. **Padding.** XLA:CPU runs 3×3 convolutions with padding ≤ 1 in YNNPACK and larger paddings on
   its own kernels. The 28-px MNIST layer has padding 3; ``ConvBody`` therefore zero-pads
   explicitly (behind an ``optimization_barrier``) and convolves with padding 1. This compares
   that against the plain padding-3 convolution (``--variants``), interleaved so that both see
   the same machine speed: convolution placement in the compiled step, and seconds per step of
   VIG on MNIST 10 ipc at width 16 (the Table-1 CPU setting, learning-rate probe included).
2. **Loops.** A 4-step ``lax.scan`` of a convolution's weight gradient, rolled and unrolled:
   inside a while-loop body the weight gradient stays on XLA's own kernel.

Run:
    python benchmarks/conv_kernels.py [--steps 30] [--repeats 2]
Writes ``benchmarks/results/conv_kernels.json`` and ``docs/benchmarks/conv_kernels.md``.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
from iteration_time import DATA, ROOT
from profile_step import conv_placement

from distillation._algorithms import vig
from distillation._distill import DistillConfig, Distiller, distill, init_support
from distillation._models import ConvBody, _activation, _normalise
from distillation.data._datasets import load_dataset

EXPLICIT_PAD = ConvBody.__call__


def folded_pad(self, x):
    """``ConvBody.__call__`` with the padding left to the convolution (the earlier code)."""
    for w, b, pad in zip(self.weights, self.biases, self.paddings, strict=True):
        x = jax.lax.conv_general_dilated(
            x, w, (1, 1), [(pad, pad), (pad, pad)], dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = _activation(self.activation, _normalise(self.norm, x + b))
        n, h, wd, c = x.shape
        x = x[:, : h - h % 2, : wd - wd % 2].reshape(n, h // 2, 2, wd // 2, 2, c).mean((2, 4))
    return x.reshape(x.shape[0], -1)


VARIANTS = {"explicit pad (current)": EXPLICIT_PAD, "padding in the convolution": folded_pad}


def placement(dataset, config) -> tuple[int, int]:
    distiller = Distiller.build(
        vig(), config, image_shape=dataset.image_shape, num_classes=dataset.num_classes
    )
    support = init_support(dataset.x_train, dataset.y_train, 10, 10, key=jax.random.key(0))
    state = distiller.init(support, key=jax.random.key(1))
    x = jnp.asarray(dataset.x_train)
    y = jax.nn.one_hot(jnp.asarray(dataset.y_train), 10)
    batch = distiller.next_batch(state, x, y)
    hlo = jax.jit(distiller.step).lower(state, batch).compile().as_text()
    return conv_placement(hlo)


def seconds_per_step(dataset, config) -> float:
    result = distill(
        dataset.x_train, dataset.y_train, 10, vig(), 10, config, key=jax.random.key(2),
        progress=False,
    )  # fmt: skip
    s = [row["seconds"] for row in result.history]
    return (s[-1] - s[9]) / (len(s) - 10)  # after compilation and the first probe


def loop_placement() -> dict[str, tuple[int, int]]:
    x = jnp.ones((10, 32, 32, 32))

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def body(w, _):
        return w - 0.1 * jax.grad(lambda w: jnp.sum(jnp.sin(conv(x, w))))(w), None

    out = {}
    for label, unroll in (("rolled lax.scan", 1), ("unrolled lax.scan", True)):
        f = jax.jit(lambda w, u=unroll: jax.lax.scan(body, w, None, length=4, unroll=u)[0])
        out[label] = conv_placement(f.lower(jnp.ones((3, 3, 32, 64))).compile().as_text())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    dataset = load_dataset(str(DATA["mnist"]))
    config = DistillConfig(
        steps=args.steps, width=16, pool_size=10, checkpoint_every=10**9, log_every=1
    )
    rows = {name: {"seconds": []} for name in VARIANTS}
    try:
        for name, call in VARIANTS.items():
            ConvBody.__call__ = call
            rows[name]["library_convs"], rows[name]["xla_convs"] = placement(dataset, config)
        for _ in range(args.repeats):
            for name, call in VARIANTS.items():
                ConvBody.__call__ = call
                rows[name]["seconds"].append(seconds_per_step(dataset, config))
                print(name, rows[name], flush=True)
    finally:
        ConvBody.__call__ = EXPLICIT_PAD
    loops = loop_placement()
    result = {"jax": jax.__version__, "padding": rows, "loops": loops}
    (ROOT / "benchmarks" / "results" / "conv_kernels.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Which convolutions run on XLA:CPU's fast library",
        "",
        f"Command: `python benchmarks/conv_kernels.py --steps {args.steps} "
        f"--repeats {args.repeats}`",
        "",
        f"jax {jax.__version__}, 2-core CPU. Convolutions of the compiled VIG step (MNIST 10 ipc, "
        "width 16, pool 10): in a YNNPACK fusion or on XLA's own kernel; seconds per step after "
        "the first 10 (learning-rate probe included), the variants interleaved.",
        "",
        "| first layer | convolutions in YNNPACK | on XLA's kernel | s / step (each repeat) |",
        "|---|---:|---:|---|",
    ]
    for name, r in rows.items():
        times = ", ".join(f"{t:.2f}" for t in r["seconds"])
        lines.append(f"| {name} | {r['library_convs']} | {r['xla_convs']} | {times} |")
    lines += [
        "",
        "A 4-step `lax.scan` of a convolution's weight gradient (input 10×32×32×32, 64 filters):",
        "",
        "| loop | convolutions in YNNPACK | on XLA's kernel |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {a} | {b} |" for k, (a, b) in loops.items()]
    (ROOT / "docs" / "benchmarks" / "conv_kernels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
