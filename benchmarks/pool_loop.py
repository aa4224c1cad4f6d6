"""The pool's 1–15 training steps per selection: masked straight-line steps (the CPU default until
2026-12-05) or a loop of exactly the drawn count with forward-layout convolution gradients (since).

Straight-line code computes all 15 steps and keeps the first ``count`` (8 on average), because
XLA:CPU runs a convolution's kernel gradient ~20× slower inside a loop (``cpu_loops.py``): there
it does not rewrite JAX's transposed convolutions into its kernels' layout. Written as forward
convolutions in that layout (``distillation._models.conv2d_forward_vjp``), the loop runs them
as fast as straight-line code and does only the drawn steps.

Part 1 times ``ModelPool.train_step`` alone on support-set-sized batches (the same keys, so the
same drawn counts, for every variant): masked straight-line steps, a loop with autodiff's
convolution gradients, a loop with the forward-layout ones; and the largest relative difference
of the trained model from the straight-line one. Part 2 builds the default RCIG step with the
straight-line pool (``_ab.build``, ``ModelPool`` swapped while tracing) and with the default,
and alternates them.

Settings: RCIG defaults (depth 3, target batch 1024, n_inner = n_H = 20, pool 30, pool Adam
5e-5, 1–15 steps), 1 ipc, MNIST (10 support images) and the CIFAR-10 subset (flip on: 20).

Run:
    python benchmarks/pool_loop.py [--cases mnist:32,cifar10:32] [--steps 6] [--rounds 3]
Writes ``benchmarks/results/pool_loop.json`` and ``docs/benchmarks/pool_loop.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _ab import build, interleaved, rel
from iteration_time import DATA, ROOT

from distillation import _distill
from distillation._distill import DistillConfig, make_pool
from distillation._pool import ModelPool
from distillation.data._datasets import load_dataset

POOL_VARIANTS = {
    "straight-line, masked": dict(unroll=True),
    "loop, autodiff convolution gradients": dict(unroll=False, forward_vjp=False),
    "loop, forward-layout gradients": dict(unroll=False, forward_vjp=True),
}


def alone(dataset, width: int, keys: int, rounds: int) -> dict:
    """Milliseconds per ``train_step`` of each pool variant, averaged over ``keys`` draws."""
    flip = not dataset.grayscale
    config = DistillConfig(width=width, flip=flip)
    base = make_pool(dataset.image_shape, dataset.num_classes, config)
    n = dataset.num_classes * (2 if flip else 1)
    x = jax.random.normal(jax.random.key(0), (n, *dataset.image_shape), jnp.float32)
    y = jax.nn.one_hot(jnp.arange(n) % dataset.num_classes, dataset.num_classes)
    state = base.init(key=jax.random.key(1))
    index = jnp.asarray(3)
    draws = jax.random.split(jax.random.key(2), keys)
    steps, trained = {}, {}
    for label, kw in POOL_VARIANTS.items():
        pool = ModelPool(
            base.make_model, base.size, base.reset_every, base.optimizer, base.max_steps, **kw
        )
        f = jax.jit(lambda s, k, pool=pool: pool.train_step(s, index, x, y, key=k)[0])
        steps[label] = f.lower(state, draws[0]).compile()
        out = [jax.block_until_ready(steps[label](state, k)) for k in draws]
        trained[label] = np.concatenate(
            [
                np.ravel(np.asarray(leaf))
                for o in out
                for leaf in jax.tree_util.tree_leaves(o.models)
            ]
        )
    counts = [int(o.ages[index]) for o in out]
    ms: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for label, f in steps.items():
            t0 = time.perf_counter()
            for k in draws:
                jax.block_until_ready(f(state, k))
            ms[label].append((time.perf_counter() - t0) / keys * 1e3)
    ref = trained["straight-line, masked"]
    return {
        "batch": list(x.shape),
        "width": width,
        "mean_count": float(np.mean(counts)),
        "ms_per_train_step": {k: float(np.median(v)) for k, v in ms.items()},
        "rel_diff_from_straight_line": {k: rel(v, ref) for k, v in trained.items()},
    }


def case(name: str, width: int, steps: int, rounds: int) -> dict:
    dataset = load_dataset(str(DATA[name]))
    part1 = alone(dataset, width, keys=8, rounds=3)
    print(json.dumps(part1), flush=True)
    straight = functools.partial(ModelPool, unroll=True)
    variants = {
        "straight-line pool": build(dataset, width, {"ModelPool": straight}, module=_distill),
        "loop pool": build(dataset, width, {}),
    }
    timed = interleaved(variants, steps, rounds, tag=f"{name} {width}")
    (img_a, loss_a), (img_b, loss_b) = timed["first_step"].values()
    pool_a, pool_b = timed["first_pool"].values()
    before, after = timed["s_per_step"].values()
    return {
        "dataset": name,
        "width": width,
        "pool_alone": part1,
        "s_per_step": timed["s_per_step"],
        "s_per_step_by_round": timed["s_per_step_by_round"],
        "ratio_loop_over_straight": after / before,
        "first_step_support_rel_diff": rel(img_b, img_a),
        "first_step_pool_rel_diff": rel(pool_b, pool_a),
        "first_step_outer_loss": {"straight-line pool": loss_a, "loop pool": loss_b},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="mnist:32,cifar10:32")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for spec in args.cases.split(","):
        name, width = spec.split(":")
        rows.append(case(name, int(width), args.steps, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    (ROOT / "benchmarks" / "results" / "pool_loop.json").write_text(json.dumps(rows, indent=2))
    cmd = (
        f"python benchmarks/pool_loop.py --cases {args.cases} --steps {args.steps} "
        f"--rounds {args.rounds}"
    )
    labels = list(POOL_VARIANTS)
    lines = [
        "# The pool's training steps: masked straight-line code or a loop of the drawn count",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__}, 2-core CPU, load average at the end {load[0]:.2f}.",
        "",
        "`ModelPool.train_step` alone (ms per call, the mean over 8 drawn counts, median of 3 "
        "rounds; relative difference of the trained weights from the straight-line ones):",
        "",
        "| dataset | batch | mean count | " + " | ".join(labels) + " |",
        "|---|---|---:|" + "---:|" * len(labels),
    ]
    for r in rows:
        p = r["pool_alone"]
        cells = [
            f"{p['ms_per_train_step'][k]:.1f} ({p['rel_diff_from_straight_line'][k]:.0e})"
            for k in labels
        ]
        lines.append(
            f"| {r['dataset']} | {'×'.join(map(str, p['batch']))} | {p['mean_count']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "One RCIG iteration (defaults: depth 3, target batch 1024, n_inner = n_H = 20, pool 30; "
        f"1 ipc; flip on for the CIFAR-10 subset), {args.rounds} rounds of {args.steps} steps "
        "per variant, interleaved; seconds are the mean over all rounds:",
        "",
        "| dataset | width | straight-line pool s/step | loop pool s/step | ratio | "
        "support after one step, rel. diff | pool after one step, rel. diff | outer loss (both) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        (sa, sb), (la, lb) = r["s_per_step"].values(), r["first_step_outer_loss"].values()
        lines.append(
            f"| {r['dataset']} | {r['width']} | {sa:.3f} | {sb:.3f} | "
            f"**{r['ratio_loop_over_straight']:.2f}** | {r['first_step_support_rel_diff']:.1e} | "
            f"{r['first_step_pool_rel_diff']:.1e} | {la:.6f} / {lb:.6f} |"
        )
    (ROOT / "docs" / "benchmarks" / "pool_loop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
