"""Where the time of one RCIG iteration goes, operation by operation (XLA:CPU).

Runs the compiled step under ``jax.profiler.trace`` with XLA's per-thunk trace events on
(``--xla_cpu_enable_xprof_traceme=true``, set before JAX starts), sums the time of every
executed HLO instruction over ``--repeats`` steps, and groups the instructions by kind:

* YNNPACK library fusions holding a convolution (``__ynn_fusion``; YNNPACK fuses the
  neighbouring element-wise operations in),
* other YNNPACK fusions (matrix products, reductions, element-wise graphs),
* convolutions XLA runs with its own kernels (a bare ``convolution``; e.g. the gradient of a
  batch of images, whose layout the library does not take),
* element-wise / reduction loop fusions, and the rest.

Thunks may run concurrently on the two cores, so the shares are of the summed op time, not of
wall-clock time (reported beside it).

Run:
    python benchmarks/profile_step.py [--datasets mnist,cifar10] [--widths 32,128] [--repeats 3]
Writes ``benchmarks/results/profile_step.json`` and ``docs/benchmarks/profile_step.md``.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
from flops_memory import _setup  # noqa: E402
from iteration_time import DATA, ROOT  # noqa: E402

from distillation._algorithms import rcig  # noqa: E402
from distillation.data._datasets import load_dataset  # noqa: E402

KINDS = ("YNNPACK conv", "YNNPACK other", "XLA convolution", "loop fusion", "other")


def classify(hlo: str) -> dict[str, tuple[str, str]]:
    """Instruction name → (kind, shape and op summary) for every instruction of ``hlo``."""
    computations: dict[str, list[str]] = {}
    entry_lines: dict[str, str] = {}
    current = None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if header:
            current = header.group(1)
            continue
        if current is None:
            continue
        computations.setdefault(current, []).append(line)
        inst = re.match(r"^\s+(?:ROOT )?%([\w.\-]+) = ", line)
        if inst:
            entry_lines[inst.group(1)] = line

    def holds(computation: str, op: str) -> bool:
        return any(f" {op}(" in line for line in computations.get(computation, []))

    kinds = {}
    for name, line in entry_lines.items():
        shape = line.split(" = ", 1)[1].split("{", 1)[0]
        called = re.search(r"calls=(%[\w.\-]+)", line)
        if "__ynn_fusion" in line or "__xnn_fusion" in line or "__onednn_fusion" in line:
            comp = called.group(1) if called else ""
            kind = "YNNPACK conv" if holds(comp, "convolution") else "YNNPACK other"
        elif " convolution(" in line:
            kind = "XLA convolution"
        elif "kind=kLoop" in line or "kind=kInput" in line or "kind=kOutput" in line:
            kind = "loop fusion"
        else:
            kind = "other"
        window = re.search(r"window=\{([^}]*)\}", line)
        labels = re.search(r"dim_labels=([^,\s]+)", line)
        detail = shape + (f" {labels.group(1)}" if labels else "")
        detail += f" {window.group(1)}" if window else ""
        kinds[name] = (kind, detail)
    return kinds


def conv_placement(hlo: str) -> tuple[int, int]:
    """``(in a library fusion, on XLA's own kernel)``: counts of the convolutions of ``hlo``."""
    library = set(re.findall(r"calls=(%[\w.\-]+)[^\n]*__(?:ynn|xnn|onednn)_fusion", hlo))
    current, counts = None, [0, 0]
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if header:
            current = header.group(1)
        elif " convolution(" in line:
            counts[current not in library] += 1
    return counts[0], counts[1]


def op_times(trace_dir: str) -> collections.Counter:
    files = list(Path(trace_dir).rglob("*.trace.json.gz"))
    if not files:
        raise RuntimeError(f"no trace written under {trace_dir}")
    events = json.load(gzip.open(files[0]))["traceEvents"]
    totals: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            totals[e["name"]] += e.get("dur", 0.0) * 1e-6
    return totals


def profile(dataset, width: int, repeats: int) -> dict:
    step, state, x, y = _setup(dataset, width, 1, rcig())
    compiled = step.lower(state, x, y).compile()
    kinds = classify(compiled.as_text())
    for _ in range(2):
        state, _ = jax.block_until_ready(compiled(state, x, y))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp):
            for _ in range(repeats):
                state, _ = jax.block_until_ready(compiled(state, x, y))
        wall = (time.perf_counter() - t0) / repeats
        totals = op_times(tmp)
    by_kind = collections.Counter()
    by_op = collections.Counter()
    for name, seconds in totals.items():
        if name in kinds:
            kind, detail = kinds[name]
            by_kind[kind] += seconds / repeats
            by_op[(kind, detail)] += seconds / repeats
    op_total = sum(by_kind.values())
    return {
        "width": width,
        "wall_s_per_step_traced": wall,
        "op_s_per_step": op_total,
        "by_kind": {k: by_kind.get(k, 0.0) for k in KINDS},
        "top_ops": [{"kind": k, "op": d, "s_per_step": s} for (k, d), s in by_op.most_common(12)],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="mnist,cifar10")
    parser.add_argument("--widths", default="32,128")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for name in args.datasets.split(","):
        dataset = load_dataset(str(DATA[name]))
        for width in (int(w) for w in args.widths.split(",")):
            rows.append({"dataset": name, **profile(dataset, width, args.repeats)})
            print(json.dumps(rows[-1]), flush=True)
    (ROOT / "benchmarks" / "results" / "profile_step.json").write_text(json.dumps(rows, indent=2))
    cmd = (
        f"python benchmarks/profile_step.py --datasets {args.datasets} --widths {args.widths} "
        f"--repeats {args.repeats}"
    )
    lines = [
        "# Where one RCIG iteration spends its time (per HLO operation)",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__}, 2-core CPU, XLA per-thunk trace events. RCIG, depth 3, "
        "n_inner = n_H = 20, pool 30, target batch 256, 1 ipc. Seconds per step summed over "
        "operations (the two cores may run operations concurrently, so the sum can exceed the "
        "wall-clock time, which is measured under the profiler and is a little slower than "
        "without it).",
        "",
        "| dataset | width | wall s / step (traced) | op s / step | " + " | ".join(KINDS) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(KINDS),
    ]
    for r in rows:
        shares = " | ".join(
            f"{r['by_kind'][k]:.3f} ({100 * r['by_kind'][k] / r['op_s_per_step']:.0f}%)"
            for k in KINDS
        )
        lines.append(
            f"| {r['dataset']} | {r['width']} | {r['wall_s_per_step_traced']:.3f} | "
            f"{r['op_s_per_step']:.3f} | {shares} |"
        )
    for r in rows:
        lines += [
            "",
            f"## Heaviest operations: {r['dataset']}, width {r['width']}",
            "",
            "| kind | output shape, layout, window | s / step |",
            "|---|---|---:|",
        ]
        lines += [f"| {o['kind']} | `{o['op']}` | {o['s_per_step']:.4f} |" for o in r["top_ops"]]
    out = ROOT / "docs" / "benchmarks" / "profile_step.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
