"""How close one RCIG iteration gets to this CPU's limit, and what it keeps in memory.

Three measurements:

1. **Machine limit**: GFLOP/s of a large float32 matrix product (``--matmul`` × ``--matmul``)
   under ``jax.jit``, best of several runs.
2. **One iteration**: floating-point operations of the compiled step counted by XLA's cost
   analysis (``compiled.cost_analysis()["flops"]``: multiply-adds count 2), the median time of a
   step, hence achieved GFLOP/s and its ratio to (1); and the step's peak buffer memory from XLA's
   buffer assignment (``compiled.memory_analysis()``: arguments + outputs + temporaries − donated
   aliases), which is what the step holds at its high-water mark.
3. **Memory scaling** (compiled only, not run): the step's temporary memory for
   ``n_inner = n_H = n`` with ``n`` in ``--ns``, for loops kept rolled (``unroll=False``) and for
   the default (unrolled up to 32 steps). (Bias-free subsampling on a large support set is
   measured by ``subsampling_memory.py``.)

Run:
    python benchmarks/flops_memory.py [--widths 32,128] [--repeats 10]
Writes ``benchmarks/results/flops_memory.json`` and ``docs/benchmarks/flops_memory.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from iteration_time import DATA, ROOT, _timed

from distillation._algorithms import rcig
from distillation._distill import DistillConfig, Distiller, init_support
from distillation.data._datasets import load_dataset

MiB = 2**20


def matmul_gflops(n: int, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    jax.block_until_ready(f(a, b))
    best = min(_timed(f, a, b)[1] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _setup(dataset, width, ipc, algorithm, **config_kwargs):
    config = DistillConfig(width=width, flip=not dataset.grayscale, **config_kwargs)
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
    x = jnp.asarray(dataset.x_train)
    y = jax.nn.one_hot(jnp.asarray(dataset.y_train), dataset.num_classes)
    return step, state, x, y


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    peak = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return {"temp_mib": m.temp_size_in_bytes / MiB, "peak_mib": peak / MiB}


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


def profile_step(dataset, width, ipc, repeats, warmup=2) -> dict:
    step, state, x, y = _setup(dataset, width, ipc, rcig())
    t0 = time.perf_counter()
    compiled = step.lower(state, x, y).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(warmup + repeats):
        (state, _), dt = _timed(compiled, state, x, y)
        if i >= warmup:
            times.append(dt)
    seconds = float(np.median(times))
    flops = _flops(compiled)
    return {
        "width": width,
        "ipc": ipc,
        "compile_s": compile_s,
        "median_step_s": seconds,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / seconds / 1e9,
        **_memory(compiled),
    }


def memory_in_n(dataset, width, ns) -> list[dict]:
    rows = []
    for unroll in (False, None):
        for n in ns:
            algorithm = dataclasses.replace(rcig(n, n), unroll=unroll)
            step, state, x, y = _setup(dataset, width, 1, algorithm)
            compiled = step.lower(state, x, y).compile()
            label = "rolled (lax.scan)" if unroll is False else "default (unrolled if n <= 32)"
            rows.append(
                {"n": n, "loops": label, **_memory(compiled), "gflop": _flops(compiled) / 1e9}
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="mnist,cifar10")
    parser.add_argument("--widths", default="32,128")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--matmul", type=int, default=4096)
    parser.add_argument("--ns", default="5,20,40")
    parser.add_argument("--memory-width", type=int, default=128)
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    ns = [int(n) for n in args.ns.split(",")]

    peak = matmul_gflops(args.matmul)
    print(f"matmul {args.matmul}: {peak:.1f} GFLOP/s", flush=True)
    steps = []
    for name in args.datasets.split(","):
        dataset = load_dataset(str(DATA[name]))
        for width in widths:
            row = {"dataset": name, **profile_step(dataset, width, 1, args.repeats)}
            row["fraction_of_matmul"] = row["achieved_gflops"] / peak
            steps.append(row)
            print(json.dumps(row), flush=True)
    mnist = load_dataset(str(DATA["mnist"]))
    in_n = memory_in_n(mnist, args.memory_width, ns)

    result = {
        "meta": {"jax": jax.__version__, "device": str(jax.devices()[0])},
        "matmul_n": args.matmul,
        "matmul_gflops": peak,
        "steps": steps,
        "memory_in_n": in_n,
    }
    out_json = ROOT / "benchmarks" / "results" / "flops_memory.json"
    out_json.write_text(json.dumps(result, indent=2))
    cmd = f"python benchmarks/flops_memory.py --datasets {args.datasets} --widths {args.widths} "
    cmd += f"--repeats {args.repeats} --ns {args.ns} --memory-width {args.memory_width}"
    lines = [
        "# FLOPs, achieved GFLOP/s and peak memory of one RCIG iteration",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__} on {result['meta']['device']} (2-core CPU). RCIG, depth 3, "
        "n_inner = n_H = 20, pool m = 30, target batch 256, 1 ipc (CIFAR with flips: |S| = 20). "
        "FLOPs from XLA's cost analysis of the compiled step; memory from XLA's buffer "
        "assignment (arguments + outputs + temporaries - donated aliases).",
        "",
        f"Machine limit: {args.matmul}×{args.matmul} float32 matmul = **{peak:.1f} GFLOP/s**.",
        "",
        "| dataset | width | GFLOP / step | s / step | achieved GFLOP/s | fraction of matmul | "
        "peak MiB | temp MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in steps:
        lines.append(
            f"| {r['dataset']} | {r['width']} | {r['gflop_per_step']:.1f} | "
            f"{r['median_step_s']:.2f} | {r['achieved_gflops']:.1f} | "
            f"{r['fraction_of_matmul']:.2f} (1/{1 / r['fraction_of_matmul']:.1f}) | "
            f"{r['peak_mib']:.0f} | {r['temp_mib']:.0f} |"
        )
    lines += [
        "",
        f"## Memory against n = n_inner = n_H (MNIST 1 ipc, width {args.memory_width})",
        "",
        "XLA's cost analysis counts the body of a rolled loop once, so the GFLOP column is the "
        "true count only for unrolled rows.",
        "",
        "| loops | n | temp MiB | peak MiB | GFLOP / step |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in in_n:
        lines.append(
            f"| {r['loops']} | {r['n']} | {r['temp_mib']:.0f} | {r['peak_mib']:.0f} | "
            f"{r['gflop']:.1f} |"
        )
    lines += [
        "",
        "Bias-free subsampling on a large support set: `benchmarks/subsampling_memory.py`.",
    ]
    out_md = ROOT / "docs" / "benchmarks" / "flops_memory.md"
    out_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
