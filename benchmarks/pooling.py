"""2×2 average pooling as a ``reduce_window`` sum (``distillation._models.avg_pool2``, as flax's
``avg_pool`` in the released code) against the ``mean`` over the window axes of a reshaped batch
it replaced: softplus-then-pool alone, and time per RCIG iteration, interleaved in one process.

XLA:CPU fuses the softplus into the pooling either way; into the ``mean``'s reduction it
computes the softplus without vectorising it. Part 1 times softplus-then-pool of a 1024-image
32×32×32 activation, its forward-mode and its reverse-mode derivative, and checks that the two
give the same values; part 2 builds the default RCIG step with each (``_ab.build``, the
``mean`` swapped in while tracing) and alternates them.

Settings of part 2: RCIG defaults (depth 3, target batch 1024, n_inner = n_H = 20, pool 30),
1 ipc, MNIST and the CIFAR-10 subset (flip on), the package's XLA flags.

Run:
    python benchmarks/pooling.py [--cases mnist:32,cifar10:32] [--steps 6] [--rounds 3]
Writes ``benchmarks/results/pooling.json`` and ``docs/benchmarks/pooling.md``.
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


def mean_pool(x):
    """The pooling before: a mean over the window axes of the reshaped batch."""
    n, h, wd, c = x.shape
    return x[:, : h - h % 2, : wd - wd % 2].reshape(n, h // 2, 2, wd // 2, 2, c).mean((2, 4))


def pooling_alone(shape=(1024, 32, 32, 32), repeats: int = 4, rounds: int = 3) -> dict:
    """Milliseconds for softplus-then-pool, its jvp and its vjp, with each pooling; the largest
    difference between the two's results."""
    kx, kt, kg = jax.random.split(jax.random.key(0), 3)
    x = 0.05 * jax.random.normal(kx, shape, jnp.float32)
    t = 0.05 * jax.random.normal(kt, shape, jnp.float32)
    n, h, w, c = shape
    g = jax.random.normal(kg, (n, h // 2, w // 2, c), jnp.float32)
    fns, args = {}, {"forward": (x,), "jvp": (x, t), "vjp": (x, g)}
    for name, pool in (("mean", mean_pool), ("reduce_window", _models.avg_pool2)):
        f = lambda x, pool=pool: pool(_models.softplus_t(x))  # noqa: E731
        fns[name, "forward"] = jax.jit(f)
        fns[name, "jvp"] = jax.jit(lambda x, t, f=f: jax.jvp(f, (x,), (t,))[1])
        fns[name, "vjp"] = jax.jit(lambda x, g, f=f: jax.vjp(f, x)[1](g)[0])
    out = {key: np.asarray(jax.block_until_ready(fn(*args[key[1]]))) for key, fn in fns.items()}
    diff = {
        kind: float(np.abs(out["mean", kind] - out["reduce_window", kind]).max()) for kind in args
    }
    ms: dict[tuple, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(fn(*args[key[1]]))
            ms[key].append((time.perf_counter() - t0) / repeats * 1e3)
    return {
        "shape": list(shape),
        "ms": {f"{name} {kind}": float(np.median(v)) for (name, kind), v in ms.items()},
        "max_abs_difference": diff,
    }


def case(name: str, width: int, steps: int, rounds: int) -> dict:
    dataset = load_dataset(str(DATA[name]))
    variants = {
        "mean": build(dataset, width, {"avg_pool2": mean_pool}),
        "reduce_window": build(dataset, width, {}),
    }
    timed = interleaved(variants, steps, rounds, tag=f"{name} {width}")
    (img_a, loss_a), (img_b, loss_b) = timed["first_step"].values()
    before, now = timed["s_per_step"].values()
    return {
        "dataset": name,
        "width": width,
        "s_per_step": timed["s_per_step"],
        "s_per_step_by_round": timed["s_per_step_by_round"],
        "ratio_reduce_window_over_mean": now / before,
        "first_step_support_rel_diff": rel(img_b, img_a),
        "first_step_outer_loss": {"mean": loss_a, "reduce_window": loss_b},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="mnist:32,cifar10:32")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    alone = pooling_alone()
    print(json.dumps(alone), flush=True)
    rows = []
    for spec in args.cases.split(","):
        name, width = spec.split(":")
        rows.append(case(name, int(width), args.steps, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    (ROOT / "benchmarks" / "results" / "pooling.json").write_text(
        json.dumps({"softplus_then_pool_alone": alone, "rcig_step": rows}, indent=2)
    )
    cmd = (
        f"python benchmarks/pooling.py --cases {args.cases} --steps {args.steps} "
        f"--rounds {args.rounds}"
    )
    lines = [
        "# Average pooling as `reduce_window` against a `mean` over the window axes "
        "(softplus then pool; time per RCIG iteration)",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__}, 2-core CPU, load average at the end {load[0]:.2f}.",
        "",
        "Softplus then pool of a " + "×".join(map(str, alone["shape"])) + " activation "
        "(ms, median of 3 rounds of 4; difference: the largest absolute difference between the "
        "two results):",
        "",
        "| | `mean` ms | `reduce_window` ms | ratio | max abs. difference |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in ("forward", "jvp", "vjp"):
        a, b = alone["ms"][f"mean {kind}"], alone["ms"][f"reduce_window {kind}"]
        lines.append(
            f"| {kind} | {a:.1f} | {b:.1f} | **{b / a:.2f}** | "
            f"{alone['max_abs_difference'][kind]:.1e} |"
        )
    lines += [
        "",
        "One RCIG iteration (defaults: depth 3, target batch 1024, n_inner = n_H = 20, pool 30; "
        f"1 ipc; flip on for the CIFAR-10 subset), {args.rounds} rounds of {args.steps} steps "
        "per variant, interleaved; seconds are the mean over all rounds:",
        "",
        "| dataset | width | `mean` s/step | `reduce_window` s/step | ratio | "
        "support after one step, rel. diff | outer loss (both) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        (a, b), (la, lb) = r["s_per_step"].values(), r["first_step_outer_loss"].values()
        lines.append(
            f"| {r['dataset']} | {r['width']} | {a:.3f} | {b:.3f} | "
            f"**{r['ratio_reduce_window_over_mean']:.2f}** | "
            f"{r['first_step_support_rel_diff']:.1e} | {la:.6f} / {lb:.6f} |"
        )
    out = ROOT / "docs" / "benchmarks" / "pooling.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
