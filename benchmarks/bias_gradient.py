"""The convolution bias added through ``distillation._models.add_bias`` against a plain
``x + b``: the bias gradient alone, and time per RCIG iteration, interleaved in one process.

XLA:CPU rewrites a sum over a dimension longer than 32 into a ``reduce-window`` tree
(``TreeReductionRewriter``); the gradient of ``x + b.reshape(1, 1, 1, -1)`` with respect to
``b`` is such a sum over a batch's every image and pixel, and the ``reduce-window`` that spans
them runs slowly. ``add_bias`` broadcasts the bias to one ``(H, W, C)`` plane behind an
``optimization_barrier``, so that the transposed sum is over the batch first, then over the
plane. Part 1 times that gradient alone on the target batch's activation shapes (and checks it
against a float64 sum); part 2 builds the default RCIG step with each (``_ab.build``, the plain
add swapped in while tracing) and alternates them.

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


def bias_gradient_alone(shape, repeats: int = 10, rounds: int = 3) -> dict:
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
        for name, f in (("x + b", plain_bias), ("add_bias", _models.add_bias))
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
    variants = {
        "x + b": build(dataset, width, {"add_bias": plain_bias}),
        "add_bias": build(dataset, width, {}),
    }
    timed = interleaved(variants, steps, rounds, tag=f"{name} {width}")
    (img_a, loss_a), (img_b, loss_b) = timed["first_step"].values()
    plain, ours = timed["s_per_step"].values()
    return {
        "dataset": name,
        "width": width,
        "s_per_step": timed["s_per_step"],
        "s_per_step_by_round": timed["s_per_step_by_round"],
        "ratio_add_bias_over_plain": ours / plain,
        "first_step_support_rel_diff": rel(img_b, img_a),
        "first_step_outer_loss": {"x + b": loss_a, "add_bias": loss_b},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="mnist:32,cifar10:32")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    alone = [
        bias_gradient_alone(s) for s in ((1024, 32, 32, 32), (1024, 16, 16, 64), (1024, 8, 8, 128))
    ]
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
        "# The bias added through `add_bias` against `x + b` (bias gradient; time per RCIG "
        "iteration)",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__}, 2-core CPU, load average at the end {load[0]:.2f}.",
        "",
        "The gradient with respect to the bias alone (ms, median of 3 rounds of 10; error: max "
        "relative difference from a float64 sum):",
        "",
        "| activation shape | `x + b` ms | `add_bias` ms | ratio | error `x + b` | "
        "error `add_bias` |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in alone:
        (a, b), (ea, eb) = r["ms"].values(), r["max_rel_error_vs_float64"].values()
        shape = "×".join(map(str, r["shape"]))
        lines.append(f"| {shape} | {a:.1f} | {b:.1f} | **{b / a:.2f}** | {ea:.1e} | {eb:.1e} |")
    lines += [
        "",
        "One RCIG iteration (defaults: depth 3, target batch 1024, n_inner = n_H = 20, pool 30; "
        f"1 ipc; flip on for the CIFAR-10 subset), {args.rounds} rounds of {args.steps} steps "
        "per variant, interleaved; seconds are the mean over all rounds:",
        "",
        "| dataset | width | `x + b` s/step | `add_bias` s/step | ratio | "
        "support after one step, rel. diff | outer loss (both) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        (a, b), (la, lb) = r["s_per_step"].values(), r["first_step_outer_loss"].values()
        lines.append(
            f"| {r['dataset']} | {r['width']} | {a:.3f} | {b:.3f} | "
            f"**{r['ratio_add_bias_over_plain']:.2f}** | {r['first_step_support_rel_diff']:.1e} | "
            f"{la:.6f} / {lb:.6f} |"
        )
    out = ROOT / "docs" / "benchmarks" / "bias_gradient.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
