"""Peak memory of one RCIG iteration on a large support set, with and without bias-free
subsampling.

Under ``n_subset`` only the drawn images are differentiated; the rest of the support set is
evaluated as the ``remat`` part of a :class:`distillation.Partitioned` batch
(``n_subset`` images at a time under ``jax.checkpoint``), in the step, in the pool's training
step, and in the learning-rate probe. Each row compiles the program for MNIST at ``ipc`` images
per class and reads XLA's buffer assignment (``compiled.memory_analysis()``: arguments + outputs +
temporaries − donated aliases); nothing is run, so a 20 GiB program is measured on a small
machine. The process's peak is the larger of the step and the probe (separate programs).

With ``--time-width W`` it also runs the step at width ``W`` on ``--time-ipc`` images per class
(``--time-repeats`` times after a warm-up) with and without subsampling (``--time-subset``), to
show what the recomputation costs. Keep it small on a CPU: XLA:CPU runs convolution gradients
inside loops many times slower than in straight-line code, and the chunk loop is one (at width 32
and 1000 images the subsampled step did not finish a warm-up and 3 steps in 45 minutes, against
60 s per step without subsampling).

Run:
    python benchmarks/subsampling_memory.py [--width 128] [--ipcs 100,200] [--subset 100]
        [--time-width 16 --time-ipc 20 --time-subset 50]
Writes ``benchmarks/results/subsampling_memory.json`` and
``docs/benchmarks/subsampling_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flops_memory import _memory
from iteration_time import DATA, ROOT, _timed

from distillation._algorithms import rcig
from distillation._distill import DistillConfig, Distiller, init_support
from distillation.data._datasets import load_dataset


def _programs(dataset, width, ipc, n_subset, unroll):
    config = DistillConfig(width=width, n_subset=n_subset)
    algorithm = rcig(unroll=unroll)
    distiller = Distiller.build(
        algorithm, config, image_shape=dataset.image_shape, num_classes=dataset.num_classes
    )
    support = init_support(
        dataset.x_train, dataset.y_train, dataset.num_classes, ipc, key=jax.random.key(0)
    )
    state = distiller.init(support, key=jax.random.key(1))
    x = jnp.asarray(dataset.x_train)
    y = jax.nn.one_hot(jnp.asarray(dataset.y_train), dataset.num_classes)
    step = jax.jit(
        lambda s, x, y: distiller.step(s, distiller.next_batch(s, x, y)), donate_argnums=0
    )
    tune = jax.jit(distiller.probe)
    return step, tune, state, x, y


def memory_row(dataset, width, ipc, n_subset, unroll) -> dict:
    step, tune, state, x, y = _programs(dataset, width, ipc, n_subset, unroll)
    t0 = time.perf_counter()
    step_mem = _memory(step.lower(state, x, y).compile())
    tune_mem = _memory(tune.lower(state, x, y).compile())
    return {
        "support": ipc * dataset.num_classes,
        "n_subset": n_subset,
        "loops": "rolled (lax.scan)" if unroll is False else "default (unrolled if n <= 32)",
        "step_peak_mib": step_mem["peak_mib"],
        "step_temp_mib": step_mem["temp_mib"],
        "probe_peak_mib": tune_mem["peak_mib"],
        "compile_s": time.perf_counter() - t0,
    }


def time_row(dataset, width, ipc, n_subset, repeats) -> dict:
    step, _, state, x, y = _programs(dataset, width, ipc, n_subset, None)
    compiled = step.lower(state, x, y).compile()
    state, _ = compiled(state, x, y)  # warm-up
    times = []
    for _ in range(repeats):
        (state, _), dt = _timed(compiled, state, x, y)
        times.append(dt)
    return {
        "support": ipc * dataset.num_classes,
        "n_subset": n_subset,
        "width": width,
        "median_step_s": float(np.median(times)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--ipcs", default="100,200")
    parser.add_argument("--subset", type=int, default=100)
    parser.add_argument("--time-width", type=int, default=0, help="0: skip the timing rows")
    parser.add_argument("--time-ipc", type=int, default=0, help="0: the first of --ipcs")
    parser.add_argument("--time-subset", type=int, default=0, help="0: --subset")
    parser.add_argument("--time-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ipcs = [int(i) for i in args.ipcs.split(",")]
    mnist = load_dataset(str(DATA["mnist"]))

    rows = []
    for ipc in ipcs:
        for n_subset, unroll in ((None, None), (args.subset, None), (args.subset, False)):
            rows.append(memory_row(mnist, args.width, ipc, n_subset, unroll))
            print(json.dumps(rows[-1]), flush=True)
    timing = []
    if args.time_width:
        time_ipc = args.time_ipc or ipcs[0]
        for n_subset in (None, args.time_subset or args.subset):
            timing.append(time_row(mnist, args.time_width, time_ipc, n_subset, args.time_repeats))
            print(json.dumps(timing[-1]), flush=True)

    result = {
        "meta": {"jax": jax.__version__, "device": str(jax.devices()[0])},
        "width": args.width,
        "memory": rows,
        "timing": timing,
    }
    (ROOT / "benchmarks" / "results" / "subsampling_memory.json").write_text(
        json.dumps(result, indent=2)
    )
    cmd = f"python benchmarks/subsampling_memory.py --width {args.width} --ipcs {args.ipcs} "
    cmd += f"--subset {args.subset}"
    if args.time_width:
        cmd += f" --time-width {args.time_width} --time-repeats {args.time_repeats}"
        cmd += f" --time-ipc {args.time_ipc} --time-subset {args.time_subset}"
    lines = [
        "# Bias-free subsampling and peak memory",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__} on {result['meta']['device']} (2-core CPU). RCIG on MNIST, "
        f"width {args.width}, depth 3, n_inner = n_H = 20, pool m = 30, target batch 256. "
        "Peak = XLA's buffer assignment of the compiled program (arguments + outputs + "
        "temporaries − donated aliases); compiled, not run. The probe is the learning-rate "
        "tuner's program (every 10th iteration).",
        "",
        "| support | n_subset | loops | step peak MiB | step temp MiB | probe peak MiB |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['support']} | {r['n_subset'] or 'all (none)'} | {r['loops']} | "
            f"{r['step_peak_mib']:.0f} | {r['step_temp_mib']:.0f} | {r['probe_peak_mib']:.0f} |"
        )
    if timing:
        lines += [
            "",
            f"## What the recomputation costs (width {args.time_width}, measured)",
            "",
            "| support | n_subset | s / step (median) |",
            "|---:|---|---:|",
        ]
        for r in timing:
            lines.append(
                f"| {r['support']} | {r['n_subset'] or 'all (none)'} | {r['median_step_s']:.2f} |"
            )
    out = ROOT / "docs" / "benchmarks" / "subsampling_memory.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
