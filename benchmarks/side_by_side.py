"""This project's RCIG beside the authors' released code, on equal work, on this CPU.

Two parts:

``accuracy``: for each seed, distil MNIST (``../shared/data/mnist``) at ``--ipc`` with this
project's defaults (the released code's settings: ``rcig distill --dataset ../shared/data/mnist
--ipc 1 --width W --steps N --seed S``), keeping the result (the EMA set) at the official
config's checkpoint iterations together with the wall-clock time so far (learning-rate pre-round
and compilation included); read the official run of the same setting made with
``../shared/tools/official_rcig/run.sh W IPC N /tmp/orcig_wW_sS S`` (its checkpoints'
``ema_average``, imported with ``rcig import-official``; its time = the learning-rate tuning's
seconds + the time stamp of each checkpoint); evaluate every set with the same protocol
(``--eval-models`` ReLU ConvNets of width W, no augmentation, full MNIST test split). Output:
``benchmarks/results/side_by_side.json``, the figure ``docs/figures/side_by_side_mnist.png``
(accuracy against wall-clock seconds, the shape of the paper's Figure 8).

``timing``: seconds per iteration at identical settings (target batch 1024, n_inner = n_H = 20, pool
30, no flip, fixed learning rates), ours and theirs alternated ``--rounds`` times in one run (theirs
first in even rounds, ours first in odd ones; theirs with ``RCIG_LRS`` so that it skips its tuning;
the cost of an iteration does not depend on the rates), each the mean of the steady-state iteration
times (from the third on, as the harness's ``siter.py``). Output:
``benchmarks/results/side_by_side_timing.json``. Ours runs with the ``XLA_FLAGS`` importing
``distillation`` sets (XLA:CPU's own convolutions, ``distillation/_xla_cpu.py``), theirs with this
process's at its start (``--official-flags ours``: with ours too). ``--dataset cifar10``: the same
on CIFAR-10 (flip on) with the scratch harness below (``--harness``, ``--cifar10-npz``). Both
codes run with this process's environment; ``GLIBC_TUNABLES`` (glibc's allocator settings,
e.g. ``glibc.malloc.hugetlb=1``: docs/performance.md) is recorded with the result. Like
``rcig``, this process first calls :func:`distillation.reuse_host_memory` (ours' per-step
buffers kept in the heap; ``RCIG_HOST_MEMORY=system``: not), recorded as ``host_memory_reused``.

``--dataset cifar10``: the same on CIFAR-10 (``../shared/data/cifar10``, flip on as their
``depth_3.txt``; output ``side_by_side_cifar10.json`` and ``side_by_side_cifar10.png``). The shared
harness serves MNIST only; ``benchmarks/official_rcig_cifar10.patch`` extends a scratch copy of it
(none of the authors' code: its loader calls their ``ops.py`` functions for the official
standardisation + ZCA 0.1, on uint8 arrays made from the parquet copy)::

    cp -r ../shared/tools/official_rcig /tmp/c10h/harness
    patch -d /tmp/c10h/harness -p2 < benchmarks/official_rcig_cifar10.patch
    python benchmarks/side_by_side.py cifar10-arrays /tmp/c10h/cifar10_u8.npz
    RCIG_CIFAR10_NPZ=/tmp/c10h/cifar10_u8.npz DATASET=cifar10 CONFIG=depth_3.txt \
        bash /tmp/c10h/harness/run.sh 32 1 500 /tmp/orcig_c10_w32_s0 0

The shared parquet is sorted by class, and the released code's target batches come from a
16,384-example shuffle buffer over the stored order, so over that file its batches hold 4–8
classes (``target_stream_skew.py``); ours draws exact epochs. For a comparison on equal terms
both codes read the training set in one fixed permuted order (then they also start from the same
images, ``init_draw="released"``)::

    cp -r /tmp/c10h/harness /tmp/c10p/harness   # the CIFAR-10 copy, with the fast-forward below
    patch -d /tmp/c10p/harness -p2 < benchmarks/official_rcig_fast_forward.patch
    python benchmarks/side_by_side.py cifar10-arrays /tmp/c10p/cifar10_u8_perm0.npz --permute 0
    RCIG_ZCA_PATH=/tmp/c10p/zca RCIG_CIFAR10_NPZ=/tmp/c10p/cifar10_u8_perm0.npz DATASET=cifar10 \
        CONFIG=depth_3.txt RCIG_FF_INNER=1e-3 RCIG_FF_HVP=1.0 \
        bash /tmp/c10p/harness/run.sh 32 1 500 /tmp/orcig_c10p_w32_s0 0
    python benchmarks/side_by_side.py accuracy --dataset cifar10 --train-order 0 --seeds 0 \
        --width 32 --steps 500 --official '/tmp/orcig_c10p_w{width}_s{seed}' \
        --out benchmarks/results/side_by_side_cifar10_permuted.json

Width 128: their tuning re-traces for each of its ~100 calls (~100 s each at width 128 here), so
``benchmarks/official_rcig_fast_forward.patch`` (a scratch copy again) lets it skip the calls below
given rates: they only advance the loader's shuffle seed, as a real call does, and count as
monotone (the tuning stops at its first non-monotone call; the first call run must be monotone or
the run stops). Same rates and batch order as the full tuning; the figure puts the skipped calls
at the median seconds of those run::

    cp -r ../shared/tools/official_rcig /tmp/w128h/harness
    patch -d /tmp/w128h/harness -p2 < benchmarks/official_rcig_fast_forward.patch
    RCIG_MNIST_DIR=$(realpath ../shared/data/mnist) RCIG_FF_INNER=1e-4 RCIG_FF_HVP=1 \
        bash /tmp/w128h/harness/run.sh 128 1 100 /tmp/orcig_w128_s0 0
    python benchmarks/side_by_side.py accuracy --seeds 0 --width 128 --steps 100 \
        --out benchmarks/results/side_by_side_w128.json

Ours at the official run's tuned rates (no pre-round; the released in-training schedule from
them), beside the official run copied from ``side_by_side_w128.json``::

    python benchmarks/side_by_side.py accuracy --seeds 0 --width 128 --steps 100 \
        --rates 1.0784915102210452e-4,8.479939925435627 \
        --out benchmarks/results/side_by_side_w128_their_rates.json

``--who official`` evaluates an official run alone (``--who ours``: ours alone); runs already in
the results file are never redone, so the two can be made in different sessions.

Run (the official runs first, see ../shared/tools/official_rcig/README.md)::

    python benchmarks/side_by_side.py accuracy --seeds 0,1,2 --width 32 --steps 500
    python benchmarks/side_by_side.py timing --width 32 --iters 40 --rounds 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

_STARTING_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import distillation  # noqa: E402, F401  (sets its XLA:CPU flag before anything runs on JAX)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MNIST = SHARED / "data" / "mnist"
# --dataset: (data folder, flip as the official config: depth_3_no_flip.txt for MNIST, depth_3.txt
# with its mirrored copies for CIFAR-10, the default official output folder)
DATASETS = {
    "mnist": (MNIST, False, "/tmp/orcig_w{width}_s{seed}"),
    "cifar10": (SHARED / "data" / "cifar10", True, "/tmp/orcig_c10_w{width}_s{seed}"),
}
HARNESS = SHARED / "tools" / "official_rcig"
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
CHECKPOINTS = (50, 100, 200, 300, 400, 500, 1000, 1500, 2000)  # depth_3_no_flip.txt's, ≤ 2000


def _official_times(outdir: Path) -> tuple[float, dict[int, float]]:
    """(the learning-rate tuning's seconds, {iteration: seconds into training}) of a run."""
    absl = "".join(p.read_text(errors="replace") for p in (outdir / "ckpt").glob("*.INFO*"))
    found = re.search(r"Completed LR tune in ([0-9.]+)s", absl)
    tuning = float(found.group(1)) if found else float("nan")
    log = (outdir / "run.log").read_text()
    times = {
        int(m.group(1)): float(m.group(2))
        for m in re.finditer(r"saving at iter (\d+) at time ([0-9.]+)", log)
    }
    return float(tuning), times


def _evaluate(images, labels, flip, dataset, models, width, seed) -> list[float]:
    from distillation.evaluation._evaluate import EvalConfig, evaluate_support

    config = EvalConfig(models=models, width=width)
    result = evaluate_support(
        images, labels, dataset.x_test, dataset.y_test, config, key=jax.random.key(seed), flip=flip
    )
    return [float(a) for a in result.accs]


def accuracy(args) -> None:
    from distillation._algorithms import rcig
    from distillation._distill import DistillConfig, distill
    from distillation.data._datasets import load_dataset
    from distillation.data._export import load_distilled
    from distillation.data._official import import_official

    folder, flip, official = DATASETS[args.dataset]
    dataset = _in_train_order(load_dataset(str(folder)), args.train_order)
    suffix = "" if args.dataset == "mnist" else f"_{args.dataset}"
    out_path = args.out or RESULTS / f"side_by_side{suffix}.json"
    figure = FIGURES / (
        f"side_by_side_{args.dataset}.png" if args.out is None else f"{args.out.stem}.png"
    )
    results = json.loads(out_path.read_text()) if out_path.exists() else {"runs": []}
    done = {(r["who"], r["seed"], r["width"], r["steps"]) for r in results["runs"]}
    marks = [c for c in CHECKPOINTS if c <= args.steps] if args.marks is None else args.marks
    if args.steps not in marks:
        marks.append(args.steps)
    if args.tuning_seconds is not None:
        # An official run recorded before its replayed tuning's seconds were given (or with
        # other ones): move its time axis to the given duration; nothing is re-evaluated.
        for r in results["runs"]:
            if (
                r["who"] == "official"
                and r["seed"] in args.seeds
                and (r["width"], r["steps"]) == (args.width, args.steps)
                and _replayed(r["runner_info"])
                and r["tuning_seconds"] != args.tuning_seconds
            ):
                shift = args.tuning_seconds - r["tuning_seconds"]
                for point in r["points"]:
                    point["seconds"] += shift
                r["tuning_seconds"] = args.tuning_seconds
        out_path.write_text(json.dumps(results, indent=1))
    for seed in args.seeds:
        if args.who != "official" and ("ours", seed, args.width, args.steps) not in done:
            # --rates: no pre-round; the released schedule from the given rates
            config = DistillConfig(
                steps=args.steps,
                width=args.width,
                flip=flip,
                adabelief=args.adabelief,
                lr_tuning="released" if args.rates is None else "schedule",
            )
            given = (
                {}
                if args.rates is None
                else dict(zip(("inner_lr", "hessian_lr"), args.rates, strict=True))
            )
            init = None if args.init_indices is None else args.init_indices[str(seed)]
            start = "its own draw (default init_draw)" if init is None else f"examples {init}"
            print(f"[ours] seed {seed}: {args.steps} iterations {given} from {start}", flush=True)
            result = distill(
                dataset.x_train,
                dataset.y_train,
                dataset.num_classes,
                rcig(**given),
                args.ipc,
                config,
                key=jax.random.key(seed),
                progress=False,
                snapshot_steps=marks,
                init_indices=init,
            )
            points = []
            for snap in result.snapshots:
                accs = _evaluate(
                    snap.support.images,
                    snap.support.labels,
                    flip,
                    dataset,
                    args.eval_models,
                    args.width,
                    seed,
                )
                points.append({"iteration": snap.step, "seconds": snap.seconds, "accs": accs})
                print(f"[ours] seed {seed} it {snap.step}: {np.mean(accs):.2f}", flush=True)
            results["runs"].append(
                {
                    "who": "ours",
                    "seed": seed,
                    "width": args.width,
                    "steps": args.steps,
                    "adabelief": args.adabelief,
                    "rates_given": args.rates,
                    "init_indices": init,
                    "train_order": args.train_order,
                    "learning_rates": [
                        result.learning_rates[0],
                        result.learning_rates[1],
                    ],
                    "points": points,
                    "load": os.getloadavg(),
                }
            )
            out_path.write_text(json.dumps(results, indent=1))
        outdir = Path((args.official or official).format(width=args.width, seed=seed))
        if args.who == "ours" or ("official", seed, args.width, args.steps) in done:
            continue
        if not (outdir / "runner_info.json").exists() or not (outdir / "ckpt").is_dir():
            print(f"[official] seed {seed}: no finished run in {outdir}; skipped", flush=True)
            continue
        tuning, times = _official_times(outdir)
        info = json.loads((outdir / "runner_info.json").read_text())
        if _replayed(info) or not np.isfinite(tuning):
            if args.tuning_seconds is not None:
                # a replayed tuning (RCIG_LRS) logs ~0 s of tuning: put its recorded duration
                tuning = args.tuning_seconds
        measured_tuning, skipped = tuning, _fast_forwarded(info)
        if skipped:
            # a fast-forwarded tuning (official_rcig_fast_forward.patch) ran only its top calls: put
            # the skipped ones on the time axis at the median seconds of the calls that were run
            ran = [c[2] for calls in info["lr_tuning"]["ff_real"].values() for c in calls]
            tuning += skipped * float(np.median(ran))
        points = []
        for it in marks:
            ckpt = outdir / "ckpt" / f"checkpoint_{it}"
            if not ckpt.exists():
                continue
            with tempfile.TemporaryDirectory() as tmp:
                npz = import_official(
                    ckpt,
                    Path(tmp) / "o.npz",
                    dataset.preprocessor,
                    image_shape=dataset.image_shape,
                    num_classes=dataset.num_classes,
                    flip=flip,
                )
                got = load_distilled(npz)
            accs = _evaluate(
                got.images, got.labels, flip, dataset, args.eval_models, args.width, seed
            )
            points.append(
                {"iteration": it, "seconds": tuning + times.get(it, float("nan")), "accs": accs}
            )
            print(f"[official] seed {seed} it {it}: {np.mean(accs):.2f}", flush=True)
        results["runs"].append(
            {
                "who": "official",
                "seed": seed,
                "width": args.width,
                "steps": args.steps,
                "tuning_seconds": tuning,
                "tuning_seconds_measured": measured_tuning,
                "tuning_calls_fast_forwarded": skipped,
                "runner_info": info,
                "points": points,
            }
        )
        out_path.write_text(json.dumps(results, indent=1))
    _report(results, args.width, args.steps, args.dataset, figure)


def _fast_forwarded(info: dict) -> int:
    """How many of the official tuning's calls a fast-forwarded run skipped (0: none)."""
    return int(sum(info.get("lr_tuning", {}).get("ff_skipped", {}).values()))


def _replayed(info: dict) -> bool:
    """Whether the harness replayed a stored learning-rate tuning (``RCIG_LRS``)."""
    return bool(info.get("lr_tuning", {}).get("replayed", False))


def _report(results: dict, width: int, steps: int, dataset: str, figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if r["width"] == width and r["steps"] == steps]
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = [
        "| who | seed | final acc. (%) | at iteration | seconds (tuning + training) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in runs:
        pts = [p for p in r["points"] if np.isfinite(p["seconds"])]
        colour = "C0" if r["who"] == "ours" else "C3"
        label = "this project" if r["who"] == "ours" else "released code"
        if r.get("rates_given"):
            label += " at given rates (no pre-round)"
        if r.get("init_indices"):
            label += " from their starting images"
        ax.plot(
            [p["seconds"] for p in pts],
            [np.mean(p["accs"]) for p in pts],
            "o-",
            color=colour,
            alpha=0.8,
            label=f"{label}, seed {r['seed']}",
        )
        last = r["points"][-1]
        lines.append(
            f"| {r['who']} | {r['seed']} | {np.mean(last['accs']):.2f} ± "
            f"{np.std(last['accs']):.2f} | {last['iteration']} | {last['seconds']:.0f} |"
        )
    ax.set_xscale("log")
    ax.set_xlabel("wall-clock seconds on this CPU (learning-rate tuning included)")
    ax.set_ylabel("test accuracy (%)")
    name = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[dataset]
    ax.set_title(f"{name}, 1 image per class, width {width}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    print("\n".join(lines))


def _ours_siter(width: int, iters: int, dataset_name: str = "mnist") -> float:
    from distillation._algorithms import rcig
    from distillation._distill import DistillConfig, distill
    from distillation.data._datasets import load_dataset

    folder, flip, _ = DATASETS[dataset_name]
    dataset = load_dataset(str(folder))
    config = DistillConfig(
        steps=iters,
        width=width,
        flip=flip,
        lr_tuning="none",
        log_every=1,
    )
    result = distill(
        dataset.x_train,
        dataset.y_train,
        dataset.num_classes,
        rcig(inner_lr=1.4e-3, hessian_lr=17.6),
        1,
        config,
        key=jax.random.key(0),
        progress=False,
    )
    t = np.asarray([row["seconds"] for row in result.history])
    return float(np.mean(np.diff(t)[1:]))  # deltas from the third iteration on, as siter.py


def _official_siter(
    width: int, iters: int, xla_flags: str, extra_env: dict, harness: Path
) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        # importing distillation added its convolution flag to this process's XLA_FLAGS
        # (distillation/_xla_cpu.py); the released code runs with the XLA_FLAGS this process
        # started with (--official-flags default) or with ours (--official-flags ours)
        env = dict(os.environ, RCIG_LRS="0.0014,17.6,0", XLA_FLAGS=xla_flags, **extra_env)
        subprocess.run(
            [str(harness / "run.sh"), str(width), "1", str(iters), tmp, "0"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return float(json.loads((Path(tmp) / "siter.json").read_text())["s_per_iter_mean"])


def timing(args) -> None:
    rows = []
    theirs_flags = (
        _STARTING_XLA_FLAGS if args.official_flags == "default" else os.environ["XLA_FLAGS"]
    )
    extra_env, harness = {}, HARNESS
    if args.dataset == "cifar10":
        # the scratch copy of the harness extended to CIFAR-10 (module docstring), flip on as
        # depth_3.txt; the cost of an iteration does not depend on the rates
        extra_env = {
            "DATASET": "cifar10",
            "CONFIG": "depth_3.txt",
            "RCIG_CIFAR10_NPZ": str(args.cifar10_npz),
        }
        harness = args.harness
    official = functools.partial(
        _official_siter, xla_flags=theirs_flags or "", extra_env=extra_env, harness=harness
    )
    ours_fn = functools.partial(_ours_siter, dataset_name=args.dataset)
    both = (("official", official), ("ours", ours_fn))
    for r in range(args.rounds):
        # theirs first in even rounds, ours first in odd ones (since 2026-12-05 evening; a
        # precaution against an advantage of either position, benchmarks/ab_position.py)
        for who, fn in both if r % 2 == 0 else both[::-1]:
            start = time.perf_counter()
            s = fn(args.width, args.iters)
            rows.append(
                {
                    "round": r,
                    "who": who,
                    "s_per_iter": s,
                    "wall": time.perf_counter() - start,
                    "load": os.getloadavg(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    ours = np.mean([x["s_per_iter"] for x in rows if x["who"] == "ours"])
    theirs = np.mean([x["s_per_iter"] for x in rows if x["who"] == "official"])
    summary = {
        "dataset": args.dataset,
        "width": args.width,
        "iters": args.iters,
        "xla_flags": {"ours": os.environ.get("XLA_FLAGS"), "official": theirs_flags},
        # glibc's allocator settings, the same for both (the children inherit this process's
        # environment; docs/performance.md, "The step's temporary buffer")
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        # ours' per-step buffers kept in the heap (distillation.reuse_host_memory, as rcig)
        "host_memory_reused": args.host_memory,
        "rows": rows,
        "ours_s_per_iter": ours,
        "official_s_per_iter": theirs,
        "ratio": ours / theirs,
    }
    path = RESULTS / "side_by_side_timing.json"
    stored = json.loads(path.read_text()) if path.exists() else []
    stored.append(summary)
    path.write_text(json.dumps(stored, indent=1))
    print(f"ours {ours:.3f} s/iter, official {theirs:.3f} s/iter, ratio {ours / theirs:.2f}")


def _train_permutation(n: int, seed: int | None) -> np.ndarray | None:
    """``--train-order`` / ``--permute``: the one fixed order both codes read the training set in
    (the shared CIFAR-10 parquet is sorted by class, which skews the released code's buffered
    target stream: ``target_stream_skew.py``)."""
    return None if seed is None else np.random.default_rng(seed).permutation(n)


def _in_train_order(dataset, seed: int | None):
    perm = _train_permutation(len(dataset.y_train), seed)
    if perm is None:
        return dataset
    import dataclasses

    print(f"training set in the order of permutation seed {seed} (first: {perm[:5].tolist()})")
    return dataclasses.replace(
        dataset, x_train=np.asarray(dataset.x_train)[perm], y_train=dataset.y_train[perm]
    )


def cifar10_arrays(args) -> None:
    """The parquet copy of CIFAR-10 as uint8 arrays in file order (``--permute SEED``: the
    training split in the order of that fixed permutation, as ``accuracy --train-order SEED``
    reads it), for the scratch harness."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    arrays = {}
    for split in ("train", "test"):
        folder = DATASETS["cifar10"][0] / "plain_text"
        columns = pq.read_table(folder / f"{split}-00000-of-00001.parquet").to_pydict()
        arrays[f"x_{split}"] = np.stack(
            [np.asarray(Image.open(io.BytesIO(d["bytes"])).convert("RGB")) for d in columns["img"]]
        ).astype(np.uint8)
        arrays[f"y_{split}"] = np.asarray(columns["label"], np.int64)
    perm = _train_permutation(len(arrays["y_train"]), args.permute)
    if perm is not None:
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][perm], arrays["y_train"][perm]
        arrays["train_order"] = perm
    np.savez(args.out, **arrays)
    print({k: v.shape for k, v in arrays.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    a.add_argument("--width", type=int, default=32)
    a.add_argument("--ipc", type=int, default=1)
    a.add_argument("--steps", type=int, default=500)
    a.add_argument("--eval-models", type=int, default=5)
    a.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    a.add_argument(
        "--adabelief",
        choices=("released", "current"),
        default="current",
        help="ours' AdaBelief (default current: the harness pins optax 0.2.8, whose AdaBelief "
        "is the current formula, so the two codes' optimizers stay the same; fidelity.md row 31)",
    )
    a.add_argument("--official", default=None, help="default: by --dataset, see DATASETS")
    a.add_argument(
        "--who",
        choices=("both", "ours", "official"),
        default="both",
        help="distil and evaluate ours, evaluate an official run, or both (default); runs already "
        "in the results file are kept and not redone",
    )
    a.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/results/side_by_side[_DATASET].json); the figure "
        "goes to docs/figures/<its name>.png",
    )
    a.add_argument(
        "--tuning-seconds",
        type=float,
        default=None,
        help="their tuning's seconds when the run replayed a stored tuning (RCIG_LRS)",
    )
    a.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=None,
        help="INNER,HESSIAN: ours skips its learning-rate pre-round and runs the released "
        "schedule from these rates (lr_tuning='schedule'), e.g. the official run's tuned ones",
    )
    a.add_argument(
        "--marks",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="the iterations at which sets are kept and evaluated (default: the official "
        "config's checkpoints up to --steps; --steps is always one)",
    )
    a.add_argument(
        "--train-order",
        type=int,
        default=None,
        help="ours reads the training set in the order of this fixed permutation seed, as the "
        "released code reads the arrays of `cifar10-arrays --permute SEED` (the shared CIFAR-10 "
        "parquet is sorted by class)",
    )
    a.add_argument(
        "--init-indices",
        type=lambda p: json.loads(Path(p).read_text()),
        default=None,
        help="JSON file {seed: [training indices]}: ours starts from these examples (e.g. the "
        "ones the released code's init_proto picks for that seed) instead of its own draw",
    )
    t = sub.add_parser("timing")
    t.add_argument("--width", type=int, default=32)
    t.add_argument("--iters", type=int, default=40)
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    t.add_argument(
        "--harness",
        type=Path,
        default=Path("/tmp/c10h/harness"),
        help="--dataset cifar10: the scratch harness patched with official_rcig_cifar10.patch",
    )
    t.add_argument("--cifar10-npz", type=Path, default=Path("/tmp/c10h/cifar10_u8.npz"))
    t.add_argument(
        "--official-flags",
        choices=("default", "ours"),
        default="default",
        help="the released code's XLA_FLAGS: this process's at its start (default), or the "
        "ones importing distillation sets (XLA:CPU's own convolutions, distillation/_xla_cpu.py)",
    )
    c = sub.add_parser("cifar10-arrays")
    c.add_argument("out", type=Path)
    c.add_argument("--permute", type=int, default=None, help="the training split permuted")
    args = parser.parse_args()
    # as `rcig` does first thing (since 2026-12-05): XLA:CPU's per-step buffers kept in the heap
    # (distillation/_host_memory.py; RCIG_HOST_MEMORY=system: not). The released code runs in
    # its own processes, with its own defaults.
    args.host_memory = distillation.reuse_host_memory()
    {"accuracy": accuracy, "timing": timing, "cifar10-arrays": cifar10_arrays}[args.what](args)


if __name__ == "__main__":
    main()
