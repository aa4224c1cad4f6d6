"""Memory and speed of one RCIG iteration at scale: against the support size |S| (10 … 5000), the
image size (32, 64, 128 px, the paper's depth 3/4/5), with and without ``n_subset``; and a
projection for ImageNet-1K at 64 px (1 and 2 images per class).

Memory: each row compiles the distillation step (the paper's width 128, pool m = 30, target batch
1024, flip for |S| ≤ 1000 as ``rcig distill`` does) for synthetic data of that shape and reads
XLA's buffer assignment (``compiled.memory_analysis()``: arguments + outputs + temporaries −
donated aliases, as ``benchmarks/flops_memory.py``); nothing runs, so programs far larger than this
machine are measured. The numbers are XLA:CPU's assignment; a GPU's differs in detail (its
convolution workspaces, its fusion), which is why the paper's measured figures are printed beside
the rows they anchor (CIFAR-100, 50 ipc: 10.0 GB with n_subset 200, 26.7 GB without).

Time (``--time``): seconds per iteration of the compiled step, median of ``--repeats`` after a
warm-up, at ``--time-width`` on the sizes a CPU can run; interleave nothing else while it runs.

Run:
    python benchmarks/scale.py [--rows all|small] [--time --time-width 32 --repeats 3]
Writes ``benchmarks/results/scale.json`` and ``docs/benchmarks/scale.md``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flops_memory import _memory
from iteration_time import ROOT, _timed

from distillation._algorithms import rcig
from distillation._distill import DistillConfig, Distiller, init_support

GiB = 2**30

# (image size, classes, images per class, n_subset, what it stands for, paper's GB)
ROWS = [
    (32, 10, 1, None, "CIFAR-10 1 ipc", None),
    (32, 100, 1, None, "CIFAR-100 1 ipc", None),
    (32, 100, 10, None, "CIFAR-100 10 ipc", None),
    (32, 100, 50, None, "CIFAR-100 50 ipc, no subsampling", 26.7),
    (32, 100, 50, 200, "CIFAR-100 50 ipc, n_subset 200", 10.0),
    (64, 200, 1, None, "Tiny-ImageNet 1 ipc", None),
    (64, 200, 10, None, "Tiny-ImageNet 10 ipc", None),
    (64, 200, 10, 200, "Tiny-ImageNet 10 ipc, n_subset 200", None),
    (128, 10, 1, None, "ImageNette 1 ipc", None),
    (128, 10, 10, None, "ImageNette 10 ipc", None),
    (64, 1000, 1, None, "ImageNet-1K 1 ipc", None),
    (64, 1000, 2, None, "ImageNet-1K 2 ipc", None),
    (64, 1000, 2, 200, "ImageNet-1K 2 ipc, n_subset 200", None),
]
SMALL = [r for r in ROWS if r[1] * r[2] <= 100 and r[0] <= 64]
TIME_ROWS = [(32, 10, 1), (64, 10, 1), (128, 10, 1), (32, 10, 10)]


def _program(size, classes, ipc, n_subset, width):
    n_support = classes * ipc
    flip = n_support <= 1000
    config = DistillConfig(width=width, n_subset=n_subset, flip=flip)
    distiller = Distiller.build(rcig(), config, image_shape=(size, size, 3), num_classes=classes)
    rng = np.random.default_rng(0)
    n_real = max(2048, 2 * n_support)
    x = rng.normal(size=(n_real, size, size, 3)).astype(np.float32)
    y = np.arange(n_real) % classes
    support = init_support(x, y, classes, ipc, key=jax.random.key(0))
    state = distiller.init(support, key=jax.random.key(1))
    xd, yd = jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), classes)
    step = jax.jit(
        lambda s, x, y: distiller.step(s, distiller.next_batch(s, x, y)), donate_argnums=0
    )
    return step, state, xd, yd


def memory_row(size, classes, ipc, n_subset, what, paper_gb, width) -> dict:
    step, state, x, y = _program(size, classes, ipc, n_subset, width)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, y).compile()
    mem = _memory(compiled)
    pool = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state.pool))
    return {
        "what": what,
        "image_size": size,
        "support": classes * ipc,
        "n_subset": n_subset,
        "peak_gib": mem["peak_mib"] / 1024,
        "temp_gib": mem["temp_mib"] / 1024,
        "pool_gib": pool / GiB,
        "paper_gb": paper_gb,
        "compile_s": time.perf_counter() - t0,
    }


def time_row(size, classes, ipc, width, repeats) -> dict:
    step, state, x, y = _program(size, classes, ipc, None, width)
    compiled = step.lower(state, x, y).compile()
    state, _ = compiled(state, x, y)  # warm-up
    times = []
    for _ in range(repeats):
        (state, _), dt = _timed(compiled, state, x, y)
        times.append(dt)
    return {
        "image_size": size,
        "support": classes * ipc,
        "width": width,
        "median_step_s": float(np.median(times)),
        "times_s": times,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", choices=("all", "small"), default="all")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--time-width", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--keep-memory",
        action="store_true",
        help="reuse the memory rows of benchmarks/results/scale.json (add the timing only)",
    )
    args = parser.parse_args(argv)
    saved = ROOT / "benchmarks" / "results" / "scale.json"
    rows = []
    if args.keep_memory:
        rows = json.loads(saved.read_text())["memory"]
    else:
        for size, classes, ipc, n_subset, what, paper in ROWS if args.rows == "all" else SMALL:
            rows.append(memory_row(size, classes, ipc, n_subset, what, paper, args.width))
            print(json.dumps(rows[-1]), flush=True)
    timing = []
    if args.time:
        for size, classes, ipc in TIME_ROWS:
            timing.append(time_row(size, classes, ipc, args.time_width, args.repeats))
            print(json.dumps(timing[-1]), flush=True)
    result = {
        "meta": {"jax": jax.__version__, "device": str(jax.devices()[0])},
        "width": args.width,
        "memory": rows,
        "timing": timing,
    }
    saved.write_text(json.dumps(result, indent=2))
    cmd = f"python benchmarks/scale.py --rows {args.rows} --width {args.width}"
    if args.time:
        cmd = f"{cmd}`, then `{cmd} --keep-memory" if args.keep_memory else cmd
        cmd += f" --time --time-width {args.time_width} --repeats {args.repeats}"
    lines = [
        "# Memory and speed at scale",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__} on {result['meta']['device']} (2-core CPU). RCIG (the released "
        f"code's defaults), width {args.width}, depth 3/4/5 at 32/64/128 px, n_inner = n_H = "
        "20, pool m = 30 (Adam state included), target batch 1024, flip for |S| ≤ 1000. Peak = "
        "XLA:CPU's buffer assignment of the compiled step (arguments + outputs + temporaries − "
        "donated aliases); nothing is run.",
        "",
        "| stands for | px | \\|S\\| | n_subset | peak (GiB) | of which the pool (GiB) | "
        "temporaries (GiB) | paper (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = "" if r["paper_gb"] is None else f"{r['paper_gb']:.1f}"
        lines.append(
            f"| {r['what']} | {r['image_size']} | {r['support']} | {r['n_subset'] or '—'} | "
            f"{r['peak_gib']:.2f} | {r['pool_gib']:.2f} | {r['temp_gib']:.2f} | {paper} |"
        )
    if timing:
        lines += [
            "",
            f"Seconds per iteration on this CPU at width {args.time_width} (median of "
            f"{args.repeats} after a warm-up):",
            "",
            "| px | \\|S\\| | s / iteration |",
            "|---|---|---|",
        ]
        lines += [
            f"| {t['image_size']} | {t['support']} | {t['median_step_s']:.2f} |" for t in timing
        ]
    (ROOT / "docs" / "benchmarks" / "scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
