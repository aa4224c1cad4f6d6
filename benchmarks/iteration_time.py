"""Time one distillation iteration (the jitted step of Algorithm 1) on this machine.

Default: RCIG at the paper's model size (depth 3, width 128), n_inner = n_H = 20, model pool of
30, target batch 256, on MNIST 1 ipc and the CIFAR-10 subset 1 ipc (flip strategy on: |S| = 20).
Median of ``--repeats`` steps after ``--warmup`` (compilation excluded), each ending in
``block_until_ready``; the learning-rate probe (run every 10th iteration) is timed separately.

Run:
    python benchmarks/iteration_time.py [--methods rcig,frepo] [--widths 128,32] [--repeats 20]
Writes ``benchmarks/results/iteration_time.json`` and ``docs/benchmarks/iteration_time.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distillation._algorithms import ALGORITHMS
from distillation._distill import DistillConfig, Distiller, init_support
from distillation.data._datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = {
    "mnist": ROOT.parent / "shared" / "data" / "mnist",
    "cifar10": ROOT.parent / "shared" / "data" / "cifar10-subset",
}


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def time_steps(dataset, method, width, ipc, repeats, warmup, tune_every=10):
    flip = not dataset.grayscale
    config = DistillConfig(width=width, flip=flip, tune_every=tune_every)
    algorithm = ALGORITHMS[method]()
    distiller = Distiller.build(
        algorithm, config, image_shape=dataset.image_shape, num_classes=dataset.num_classes
    )
    support = init_support(
        dataset.x_train, dataset.y_train, dataset.num_classes, ipc, key=jax.random.key(0)
    )
    state = distiller.init(support, key=jax.random.key(1))
    step = jax.jit(
        lambda s, x, y: distiller.step(s, distiller.next_batch(s, x, y)), donate_argnums=0
    )
    tune = jax.jit(distiller.probe, donate_argnums=0)
    x = jnp.asarray(dataset.x_train)
    y = jax.nn.one_hot(jnp.asarray(dataset.y_train), dataset.num_classes)
    (state, _), compile_step = _timed(step, state, x, y)
    state, compile_tune = _timed(tune, state, x, y)
    steps, probes = [], []
    for i in range(warmup + repeats):
        (state, metrics), dt = _timed(step, state, x, y)
        if i >= warmup:
            steps.append(dt)
    for _ in range(max(2, repeats // tune_every)):
        state, dt = _timed(tune, state, x, y)
        probes.append(dt)
    step_s, probe_s = float(np.median(steps)), float(np.median(probes))
    return {
        "method": method,
        "width": width,
        "ipc": ipc,
        "support_size": int(support.images.shape[0]) * (2 if flip else 1),
        "compile_and_first_step_s": compile_step,
        "compile_and_first_probe_s": compile_tune,
        "median_step_s": step_s,
        "median_probe_s": probe_s,
        "mean_iteration_s": step_s + probe_s / tune_every,
        "final_outer_loss": float(metrics["outer_loss"]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="mnist,cifar10")
    parser.add_argument("--methods", default="rcig")
    parser.add_argument("--widths", default="128")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    rows = []
    for name in args.datasets.split(","):
        dataset = load_dataset(str(DATA[name]))
        for method in args.methods.split(","):
            for width in [int(w) for w in args.widths.split(",")]:
                row = {
                    "dataset": name,
                    **time_steps(dataset, method, width, args.ipc, args.repeats, args.warmup),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "cpu": platform.processor() or platform.machine(),
        "cores": jax.local_device_count(),
    }
    out_json = ROOT / "benchmarks" / "results" / "iteration_time.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cmd = (
        "python benchmarks/iteration_time.py --datasets "
        + args.datasets
        + " --methods "
        + args.methods
        + " --widths "
        + args.widths
        + f" --ipc {args.ipc} --repeats "
        f"{args.repeats}"
    )
    lines = [
        "# Time per distillation iteration",
        "",
        f"Command: `{cmd}`",
        "",
        f"Depth 3, n_inner = n_H = 20, pool m = 30, target batch 256; jax {jax.__version__} on "
        f"{meta['device']} (2-core CPU). Median over {args.repeats} steps after warm-up. The "
        "learning-rate probe (a separately compiled function) runs every 10th iteration; "
        "'mean s / iteration' includes a tenth of it.",
        "",
        "| dataset | method | width | |S| | s / step | s / probe | mean s / iteration | "
        "compile + first step (s) | compile + first probe (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['width']} | {r['support_size']} | "
            f"{r['median_step_s']:.2f} | {r['median_probe_s']:.2f} | "
            f"{r['mean_iteration_s']:.2f} | {r['compile_and_first_step_s']:.0f} | "
            f"{r['compile_and_first_probe_s']:.0f} |"
        )
    out_md = ROOT / "docs" / "benchmarks" / "iteration_time.md"
    out_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
