"""Where the ¼ of 2×2 average pooling goes: after the ``reduce_window`` sum (``avg_pool2`` until
2026-12-05) or before it (since), time per RCIG iteration, interleaved in one process.

The pooled target batch feeds the next layer's kernel gradient, a convolution for which
XLA:CPU first copies the batch into a batch-last layout. Scaled after the sum, the ¼ fuses into
that transposing copy, which then runs far slower than a bare transpose; scaled before, it fuses
into the activation before the pooling. Part 1 times softplus → pool → transpose alone (the
pattern of the step) and compares the two poolings' values; part 2 builds the default RCIG step
with each (``_ab.build``, the earlier pooling swapped in while tracing) and alternates them.

Settings of part 2: RCIG defaults (depth 3, target batch 1024, n_inner = n_H = 20, pool 30),
1 ipc, MNIST and the CIFAR-10 subset (flip on), the package's XLA flags.

Run:
    python benchmarks/pool_scale.py [--cases mnist:32,cifar10:32] [--steps 6] [--rounds 3]
Writes ``benchmarks/results/pool_scale.json`` and ``docs/benchmarks/pool_scale.md``.
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

WINDOW = (1, 2, 2, 1)


def scale_after(x):
    """``avg_pool2`` before 2026-12-05: the sum of each window, then times ¼."""
    return 0.25 * jax.lax.reduce_window(x, 0.0, jax.lax.add, WINDOW, WINDOW, "VALID")


def alone(shape=(1024, 32, 32, 32), repeats: int = 4, rounds: int = 5) -> dict:
    """Milliseconds for softplus → pool → batch-last transpose with each pooling, and the
    largest difference of the pooled values."""
    x = 0.05 * jax.random.normal(jax.random.key(0), shape, jnp.float32)

    def chain(pool):
        def f(x):
            y = pool(_models.softplus_t(x))
            return y, jnp.transpose(y, (3, 1, 2, 0))

        return jax.jit(f).lower(x).compile()

    fns = {"scale after": chain(scale_after), "scale before": chain(_models.avg_pool2)}
    pooled = {k: np.asarray(jax.block_until_ready(f(x))[0]) for k, f in fns.items()}
    ms: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(f(x))
            ms[k].append((time.perf_counter() - t0) / repeats * 1e3)
    a, b = pooled.values()
    return {
        "shape": list(shape),
        "ms": {k: float(np.median(v)) for k, v in ms.items()},
        "max_abs_difference": float(np.abs(a - b).max()),
        "max_abs_value": float(np.abs(a).max()),
    }


def case(name: str, width: int, steps: int, rounds: int) -> dict:
    dataset = load_dataset(str(DATA[name]))
    variants = {
        "scale after": build(dataset, width, {"avg_pool2": scale_after}),
        "scale before": build(dataset, width, {}),
    }
    timed = interleaved(variants, steps, rounds, tag=f"{name} {width}")
    (img_a, loss_a), (img_b, loss_b) = timed["first_step"].values()
    after, before = timed["s_per_step"].values()
    return {
        "dataset": name,
        "width": width,
        "s_per_step": timed["s_per_step"],
        "s_per_step_by_round": timed["s_per_step_by_round"],
        "ratio_before_over_after": before / after,
        "first_step_support_rel_diff": rel(img_b, img_a),
        "first_step_outer_loss": {"scale after": loss_a, "scale before": loss_b},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="mnist:32,cifar10:32")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    part1 = alone()
    print(json.dumps(part1), flush=True)
    rows = []
    for spec in args.cases.split(","):
        name, width = spec.split(":")
        rows.append(case(name, int(width), args.steps, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    (ROOT / "benchmarks" / "results" / "pool_scale.json").write_text(
        json.dumps({"alone": part1, "rcig_step": rows}, indent=2)
    )
    cmd = (
        f"python benchmarks/pool_scale.py --cases {args.cases} --steps {args.steps} "
        f"--rounds {args.rounds}"
    )
    a, b = part1["ms"].values()
    lines = [
        "# The ¼ of average pooling before or after the window sum (time per RCIG iteration)",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__}, 2-core CPU, load average at the end {load[0]:.2f}.",
        "",
        "softplus → pool → batch-last transpose of a "
        f"{'×'.join(map(str, part1['shape']))} activation alone (ms, median of 5 rounds of 4): "
        f"scale after **{a:.1f}**, scale before **{b:.1f}** (ratio {b / a:.2f}); largest "
        f"difference of the pooled values {part1['max_abs_difference']:.1e} (largest value "
        f"{part1['max_abs_value']:.2f}; scaling by ¼ is exact but for subnormals).",
        "",
        "One RCIG iteration (defaults: depth 3, target batch 1024, n_inner = n_H = 20, pool 30; "
        f"1 ipc; flip on for the CIFAR-10 subset), {args.rounds} rounds of {args.steps} steps "
        "per variant, interleaved; seconds are the mean over all rounds:",
        "",
        "| dataset | width | scale after s/step | scale before s/step | ratio | "
        "support after one step, rel. diff | outer loss (both) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        (sa, sb), (la, lb) = r["s_per_step"].values(), r["first_step_outer_loss"].values()
        lines.append(
            f"| {r['dataset']} | {r['width']} | {sa:.3f} | {sb:.3f} | "
            f"**{r['ratio_before_over_after']:.2f}** | {r['first_step_support_rel_diff']:.1e} | "
            f"{la:.6f} / {lb:.6f} |"
        )
    (ROOT / "docs" / "benchmarks" / "pool_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
