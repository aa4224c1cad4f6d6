"""The convolution bias added through ``distillation._models.add_bias`` against a plain
``x + b`` and against its earlier form: the bias gradient alone, and time per RCIG iteration,
interleaved in one process.

The gradient of ``x + b.reshape(1, 1, 1, -1)`` with respect to ``b`` sums over a batch's every
image and pixel. Over the 1024-image target batch XLA:CPU rewrites that sum into a slow
``reduce-window`` tree (``TreeReductionRewriter``, sums longer than 32); over the 20-image
support set it fuses the sum over images and the sum over pixels into one loop that reads the
channels at a stride. Three variants: ``x + b``; ``barrier plane`` (``add_bias`` from
2026-12-04: the bias broadcast to one ``(H, W, C)`` plane behind an ``optimization_barrier``,
which XLA drops, so it helps only where the tree rewrite splits the sums); ``add_bias`` (since
2026-12-05: the plane as an outer product with a column of ones, whose transpose is a ``dot``
that XLA does not fuse with the batch sum). Part 1 times the gradient alone on the target
batch's and the (mirrored) support set's activation shapes and checks it against a float64
sum; part 2 builds the default RCIG step with each (``_ab.build``, the variant swapped in while
tracing) and alternates them.

Settings of part 2: RCIG defaults (depth 3, target batch 1024, n_inner = n_H = 20, pool 30),
1 ipc, MNIST and the CIFAR-10 subset (flip on), the package's XLA flags.

Run:
    python benchmarks/bias_gradient.py [--cases mnist:32,cifar10:32] [--steps 6] [--rounds 3]
Writes ``benchmarks/results/bias_gradient.json`` and ``docs/benchmarks/bias_gradient.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _ab import build, interleaved, rel
from iteration_time import DATA, ROOT

from distillation import _models
from distillation.data._datasets import load_dataset


def plain_bias(x, b):
    """The bias addition before ``add_bias``."""
    return x + b.reshape(1, 1, 1, -1)


def barrier_bias(x, b):
    """``add_bias`` of 2026-12-04: the bias broadcast to a plane behind a barrier."""
    _, h, w, c = x.shape
    plane = jax.lax.optimization_barrier(jnp.broadcast_to(b, (h, w, c)))
    return x + plane[None]


VARIANTS = {"x + b": plain_bias, "barrier plane": barrier_bias, "add_bias": _models.add_bias}
SHAPES = (
    (1024, 32, 32, 32),
    (1024, 16, 16, 64),
    (1024, 8, 8, 128),
    (20, 32, 32, 32),
    (20, 16, 16, 64),
    (20, 8, 8, 128),
)


def bias_gradient_alone(shape, repeats: int = 10, rounds: int = 5) -> dict:
    """Milliseconds for the gradient of ``Σ g·(x + b)`` with respect to ``b`` (a sum of ``g``
    over every axis but the channels), with each bias function, and its error against a
    float64 sum."""
    kx, kg = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape, jnp.float32)
    g = jax.random.normal(kg, shape, jnp.float32) + 0.3
    b = jnp.zeros(shape[-1:], jnp.float32)
    exact = np.asarray(g, np.float64).sum((0, 1, 2))
    fns = {
        name: jax.jit(lambda x, b, g, f=f: jax.vjp(lambda b: f(x, b), b)[1](g)[0])
        for name, f in VARIANTS.items()
    }
    errors = {}
    for name, fn in fns.items():
        got = np.asarray(jax.block_until_ready(fn(x, b, g)), np.float64)
        errors[name] = float(np.abs(got - exact).max() / np.abs(exact).max())
    ms: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(fn(x, b, g))
            ms[name].append((time.perf_counter() - t0) / repeats * 1e3)
    return {
        "shape": list(shape),
        "ms": {k: float(np.median(v)) for k, v in ms.items()},
        "max_rel_error_vs_float64": errors,
    }


def case(name: str, width: int, steps: int, rounds: int) -> dict:
    dataset = load_dataset(str(DATA[name]))
    variants = {label: build(dataset, width, {"add_bias": f}) for label, f in VARIANTS.items()}
    timed = interleaved(variants, steps, rounds, tag=f"{name} {width}")
    first = timed["first_step"]
    s = timed["s_per_step"]
    return {
        "dataset": name,
        "width": width,
        "s_per_step": s,
        "s_per_step_by_round": timed["s_per_step_by_round"],
        "ratio_add_bias_over_plain": s["add_bias"] / s["x + b"],
        "ratio_add_bias_over_barrier_plane": s["add_bias"] / s["barrier plane"],
        "first_step_support_rel_diff": {
            label: rel(first[label][0], first["x + b"][0])
            for label in ("barrier plane", "add_bias")
        },
        "first_step_outer_loss": {label: loss for label, (_, loss) in first.items()},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="mnist:32,cifar10:32")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    alone = [bias_gradient_alone(s) for s in SHAPES]
    for row in alone:
        print(json.dumps(row), flush=True)
    rows = []
    for spec in args.cases.split(","):
        name, width = spec.split(":")
        rows.append(case(name, int(width), args.steps, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    results = {"bias_gradient_alone": alone, "rcig_step": rows}
    (ROOT / "benchmarks" / "results" / "bias_gradient.json").write_text(
        json.dumps(results, indent=2)
    )
    cmd = (
        f"python benchmarks/bias_gradient.py --cases {args.cases} --steps {args.steps} "
        f"--rounds {args.rounds}"
    )
    lines = [
        "# The bias added through `add_bias` against `x + b` and the barrier plane (bias "
        "gradient; time per RCIG iteration)",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__}, 2-core CPU, load average at the end {load[0]:.2f}.",
        "",
        "The gradient with respect to the bias alone (ms, median of 5 rounds of 10; error: max "
        "relative difference from a float64 sum):",
        "",
        "| activation shape | `x + b` ms | barrier plane ms | `add_bias` ms | `add_bias` / "
        "`x + b` | `add_bias` / barrier | errors (`x + b`, barrier, `add_bias`) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in alone:
        a, m, b = r["ms"].values()
        errs = ", ".join(f"{e:.1e}" for e in r["max_rel_error_vs_float64"].values())
        shape = "×".join(map(str, r["shape"]))
        lines.append(
            f"| {shape} | {a:.2f} | {m:.2f} | {b:.2f} | **{b / a:.2f}** | **{b / m:.2f}** | "
            f"{errs} |"
        )
    lines += [
        "",
        "One RCIG iteration (defaults: depth 3, target batch 1024, n_inner = n_H = 20, pool 30; "
        f"1 ipc; flip on for the CIFAR-10 subset), {args.rounds} rounds of {args.steps} steps "
        "per variant, interleaved; seconds are the mean over all rounds:",
        "",
        "| dataset | width | `x + b` s/step | barrier plane s/step | `add_bias` s/step | "
        "`add_bias` / `x + b` | `add_bias` / barrier | support after one step, rel. diff "
        "(barrier, `add_bias`) | outer loss (three) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        a, m, b = r["s_per_step"].values()
        diffs = ", ".join(f"{d:.1e}" for d in r["first_step_support_rel_diff"].values())
        losses = " / ".join(f"{v:.6f}" for v in r["first_step_outer_loss"].values())
        lines.append(
            f"| {r['dataset']} | {r['width']} | {a:.3f} | {m:.3f} | {b:.3f} | "
            f"**{r['ratio_add_bias_over_plain']:.2f}** | "
            f"**{r['ratio_add_bias_over_barrier_plane']:.2f}** | {diffs} | {losses} |"
        )
    out = ROOT / "docs" / "benchmarks" / "bias_gradient.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
