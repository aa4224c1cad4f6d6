"""Table 1's ablation on this CPU, and test accuracy against distillation wall-clock time.

For each dataset / ipc, seed and method (random subset, VIG, CIG, RIG, RCIG, FRePo-like) it
distils with the library's defaults except the budget set here (``--width``, ``--steps``,
``--pool-size``), keeps the support set at ``--snapshots`` iterations together with the
wall-clock time so far (compilation included), and evaluates every snapshot with the paper's
protocol (``--eval-models`` fresh ReLU ConvNets of the same width, no augmentation, full test
set). Step 0 of every method is the same random subset (the seed's initialisation), so the
random-subset row is that snapshot.

Every finished (dataset, seed, method) is appended to ``<out>/results.jsonl`` at once, so an
interrupted run continues where it stopped when started again with the same arguments; a fresh
clone starts from the committed copy (``benchmarks/results/table1_cpu.jsonl``) and only runs what
is missing.

Run:
    python benchmarks/table1_cpu.py [--datasets mnist:1,cifar10:1,mnist:10] [--seeds 0,1,2]
        [--width 16] [--steps 200] [--snapshots 0,25,50,100,200] [--eval-models 2]
        [--methods vig,cig,rig,rcig,frepo]
    python benchmarks/table1_cpu.py --report-only     # rebuild table and figure from results
Writes ``docs/benchmarks/table1_cpu.md``, ``docs/figures/accuracy_vs_time.png`` and a copy of the
raw results in ``benchmarks/results/table1_cpu.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from iteration_time import DATA, ROOT

from distillation._algorithms import ALGORITHMS
from distillation._distill import DistillConfig, distill
from distillation.data._datasets import load_dataset
from distillation.evaluation._evaluate import EvalConfig, evaluate_support

METHODS = ("vig", "cig", "rig", "rcig", "frepo")
LABELS = {
    "random": "random subset",
    "vig": "VIG",
    "cig": "CIG",
    "rig": "RIG",
    "rcig": "RCIG",
    "frepo": "FRePo-like",
}
# Table 1 of the paper (width 128, thousands of iterations, n = 15 models): (dataset, ipc) -> row.
PAPER = {
    ("mnist", 1): {"random": 62.73, "rcig": 94.79},
    ("mnist", 10): {"random": 93.22, "rcig": 98.93},
    ("cifar10", 1): {"random": 20.76, "rcig": 52.75},
}


def _evaluate(dataset, support, flip, width, models, key) -> dict:
    result = evaluate_support(
        np.asarray(support.images),
        np.asarray(support.labels),
        dataset.x_test,
        dataset.y_test,
        EvalConfig(models=models, width=width),
        key=key,
        flip=flip,
    )
    return result.as_dict()


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    committed = ROOT / "benchmarks" / "results" / "table1_cpu.jsonl"
    if not results_path.exists() and committed.exists():  # a fresh clone continues the record
        results_path.write_text(committed.read_text())
    done = set()
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["ipc"], r["seed"], r["method"]))
    snapshots = sorted({int(s) for s in args.snapshots.split(",")} | {0, args.steps})
    start_evals = {}  # step 0 is the same random subset for every method of a seed
    for spec in args.datasets.split(","):
        name, ipc = spec.split(":")
        ipc = int(ipc)
        dataset = load_dataset(str(DATA[name]))
        flip = not dataset.grayscale
        config = DistillConfig(
            steps=args.steps,
            width=args.width,
            pool_size=args.pool_size,
            flip=flip,
            checkpoint_every=10**9,
        )
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in args.methods.split(","):
                if (name, ipc, seed, method) in done:
                    continue
                print(f"== {name} {ipc} ipc, seed {seed}, {method}", flush=True)
                t0 = time.perf_counter()
                result = distill(
                    dataset.x_train,
                    dataset.y_train,
                    dataset.num_classes,
                    ALGORITHMS[method](),
                    ipc,
                    config,
                    key=jax.random.key(seed),
                    progress=not args.no_progress,
                    snapshot_steps=snapshots,
                )
                points = []
                for snap in result.snapshots:
                    # The same evaluation key for every method's snapshot of this seed.
                    key = jax.random.fold_in(jax.random.key(seed), 10_000 + snap.step)
                    if snap.step == 0 and (name, ipc, seed) in start_evals:
                        ev = start_evals[(name, ipc, seed)]
                    else:
                        ev = _evaluate(
                            dataset, snap.support, flip, args.width, args.eval_models, key
                        )
                    if snap.step == 0:
                        start_evals[(name, ipc, seed)] = ev
                    points.append({"step": snap.step, "seconds": snap.seconds, **ev})
                    print(f"   step {snap.step:4d} {snap.seconds:7.1f}s  {ev['acc_mean']:.2f}%")
                row = {
                    "dataset": name,
                    "ipc": ipc,
                    "seed": seed,
                    "method": method,
                    "width": args.width,
                    "steps": args.steps,
                    "pool_size": args.pool_size,
                    "eval_models": args.eval_models,
                    "distill_seconds": result.seconds,
                    "total_seconds": time.perf_counter() - t0,
                    "final_outer_loss": result.history[-1]["outer_loss"],
                    "points": points,
                }
                with results_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")


def _fmt(values) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f} (one seed)"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = (Path(args.out) / "results.jsonl").read_text()
    (ROOT / "benchmarks" / "results" / "table1_cpu.jsonl").write_text(results)  # kept in git
    rows = [json.loads(x) for x in results.splitlines()]
    groups = sorted({(r["dataset"], r["ipc"]) for r in rows}, key=lambda g: (g[0] != "mnist", g))
    lines = [
        "# Table 1 on this CPU: random subset, VIG, CIG, RIG, RCIG, FRePo-like",
        "",
        "Made by `python benchmarks/table1_cpu.py` (the invocations are listed in "
        "[../results.md](../results.md)); the `seeds` column says how many seeds each cell has. "
        f"Settings: `--width {args.width} --steps {args.steps} --pool-size {args.pool_size} "
        f"--snapshots {args.snapshots} --eval-models {args.eval_models}`.",
        "",
        f"Budget: ConvNet depth 3, width {args.width} (distillation and evaluation), "
        f"{args.steps} meta-iterations, model pool m = {args.pool_size}, K = 100, "
        "n_inner = n_H = 20, target batch 256, the paper's learning rates and λ = 0.0005·|S|; "
        "CIFAR-10 (the shared subset) with the flip strategy and ZCA. Evaluation: the paper's "
        f"protocol without augmentation, {args.eval_models} fresh models per seed, full test set. "
        "Cells: mean ± std over seeds of the per-seed mean accuracy (%); the random subset is "
        "each seed's starting set. Paper: Table 1 (width 128, thousands of iterations, 15 "
        "models).",
        "",
    ]
    for dataset, ipc in groups:
        sub = [r for r in rows if (r["dataset"], r["ipc"]) == (dataset, ipc)]
        paper = PAPER.get((dataset, ipc), {})
        lines += [
            f"## {dataset}, {ipc} ipc",
            "",
            "| method | test accuracy (%) | seeds | per-seed | distill s / run | paper |",
            "|---|---|---:|---|---:|---|",
        ]
        start = {}
        for r in sub:
            start.setdefault(r["seed"], r["points"][0]["acc_mean"])
        random_accs = [start[s] for s in sorted(start)]
        lines.append(
            f"| {LABELS['random']} | {_fmt(random_accs)} | {len(random_accs)} | "
            f"{', '.join(f'{a:.1f}' for a in random_accs)} | 0 | {paper.get('random', '—')} |"
        )
        for method in METHODS:
            runs = sorted((r for r in sub if r["method"] == method), key=lambda r: r["seed"])
            finals = [r["points"][-1]["acc_mean"] for r in runs]
            secs = np.mean([r["distill_seconds"] for r in runs]) if runs else float("nan")
            lines.append(
                f"| {LABELS[method]} | {_fmt(finals)} | {len(finals)} | "
                f"{', '.join(f'{a:.1f}' for a in finals)} | {secs:.0f} | "
                f"{paper.get(method, '—')} |"
            )
        lines.append("")

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (dataset, ipc) in zip(axes[0], groups, strict=True):
        sub = [r for r in rows if (r["dataset"], r["ipc"]) == (dataset, ipc)]
        for method in METHODS:
            runs = [r for r in sub if r["method"] == method]
            if not runs:
                continue
            n_points = min(len(r["points"]) for r in runs)
            secs = [np.mean([r["points"][i]["seconds"] for r in runs]) for i in range(n_points)]
            accs = [np.mean([r["points"][i]["acc_mean"] for r in runs]) for i in range(n_points)]
            ax.plot(secs, accs, marker="o", label=LABELS[method])
        ax.set_xlabel("distillation wall-clock time (s, 2-core CPU)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}, {ipc} ipc, width {args.width}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = ROOT / "docs" / "figures" / "accuracy_vs_time.png"
    fig.savefig(png, dpi=120)
    lines += [
        "## Test accuracy against distillation time",
        "",
        "Mean over seeds at each snapshot (time includes compilation; evaluation excluded).",
        "",
        "![accuracy against time](../figures/accuracy_vs_time.png)",
        "",
    ]
    md = ROOT / "docs" / "benchmarks" / "table1_cpu.md"
    md.write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="mnist:1,cifar10:1,mnist:10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--snapshots", default="0,25,50,100,200")
    parser.add_argument("--eval-models", type=int, default=2)
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS)
    )
    parser.add_argument("--out", default=str(ROOT / "runs" / "table1-cpu"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    bad = [m for m in args.methods.split(",") if m not in METHODS]
    if bad:
        parser.error(f"--methods: unknown {bad}; expected a subset of {','.join(METHODS)}")
    if not args.report_only:
        run(args)
    report(args)


if __name__ == "__main__":
    main()
