"""Tiny-ImageNet-shaped and ImageNette-shaped runs through the command line, on generated data.

Writes two datasets in the hub's parquet schema (random class-dependent images): 64 px with 200
classes and a ``valid`` split (Tiny-ImageNet's layout on the hub), and mixed sizes of 140–200 px
with 10 classes and a ``validation`` split (ImageNette's), then runs ``rcig distill`` on each
(``--stream``, ``--image-size 128`` for the second, so the 128-px depth 5 and block ZCA apply)
and records the wall-clock time, the peak resident memory of the process (``ru_maxrss`` of the
child) and the command's own timing lines.

Run:
    python benchmarks/generated_runs.py [--steps 5] [--width 32]
Writes ``benchmarks/results/generated_runs.json`` and ``docs/benchmarks/generated_runs.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _write(folder: Path, classes: int, per_class: int, test_per_class: int, sizes, test_name):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    means = rng.uniform(40, 215, size=(classes, 3))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=classes)}
    )
    folder.mkdir(parents=True)
    for split, n in (("train", per_class), (test_name, test_per_class)):
        images, labels = [], []
        for c in range(classes):
            for _ in range(n):
                h, w = (int(rng.integers(sizes[0], sizes[1] + 1)) for _ in range(2))
                pixels = rng.normal(means[c], 40.0, size=(h, w, 3)).clip(0, 255).astype(np.uint8)
                images.append(Image.fromarray(pixels))
                labels.append(c)
        ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        ds.to_parquet(str(folder / f"{split}-00000.parquet"))


def _run(argv: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return {
        "command": " ".join(argv[3:]),
        "wall_s": seconds,
        "peak_rss_gib": peak_kib / 2**20,
        "peak_is_this_run": peak_kib > before,
        "output": lines[-6:],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rcig-generated-"))
    try:
        tiny, nette = work / "tiny", work / "nette"
        _write(tiny, 200, 10, 2, (64, 64), "valid")
        _write(nette, 10, 20, 5, (140, 200), "validation")
        common = [
            "--ipc", "1", "--steps", str(args.steps), "--width", str(args.width),
            "--eval-models", "1", "--eval-steps", "100", "--no-progress", "--pool-size", "10",
            "--lr-tuning", "none",
        ]  # fmt: skip
        runs = {
            "Tiny-ImageNet-shaped (64 px, 200 classes, 2000 images)": [
                sys.executable, "-m", "rcig_cli", "distill", "--dataset", str(tiny),
                "--stream", str(work / "cache"), "--out", str(work / "run-tiny"), *common,
            ],
            "ImageNette-shaped (140-200 px resized to 128, 10 classes, 200 images)": [
                sys.executable, "-m", "rcig_cli", "distill", "--dataset", str(nette),
                "--image-size", "128", "--stream", str(work / "cache"),
                "--out", str(work / "run-nette"), *common,
            ],
        }  # fmt: skip
        results = {}
        for name, command in runs.items():
            results[name] = _run(command)
            metrics = json.loads(
                (Path(command[command.index("--out") + 1]) / "metrics.json").read_text()
            )
            results[name]["seconds_distilling"] = metrics.get("distill_seconds")
            results[name]["accuracy"] = metrics.get("eval", {}).get("acc_mean")
            print(name, json.dumps(results[name]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (ROOT / "benchmarks" / "results" / "generated_runs.json").write_text(
        json.dumps(results, indent=2)
    )
    lines = [
        "# Tiny-ImageNet- and ImageNette-shaped runs on generated data",
        "",
        f"Command: `python benchmarks/generated_runs.py --steps {args.steps} --width {args.width}`",
        "",
        "Generated parquet datasets in the hub's schema (class-dependent random colours), run "
        f"through `rcig distill ... --stream` for {args.steps} iterations at width {args.width} "
        "(depth 4 at 64 px, 5 at 128 px; block ZCA with 64-px blocks at 128 px), the learning "
        "rates left at their starting values (`--lr-tuning none`: the pre-round's probes at these "
        "sizes would dominate the time), one evaluation model of 100 steps. Peak memory is the "
        "child process's `ru_maxrss` (resident set, "
        "including JAX's compiled programs and the memory-mapped pages it touched).",
        "",
        "| run | wall-clock (s) | of which distilling (s) | peak RSS (GiB) | test accuracy (%) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.1f}"
        distilling = "" if r["seconds_distilling"] is None else f"{r['seconds_distilling']:.0f}"
        lines.append(
            f"| {name} | {r['wall_s']:.0f} | {distilling} | {r['peak_rss_gib']:.2f} | {acc} |"
        )
    lines += ["", "Commands (paths were temporary folders):", ""]
    lines += [f"* `rcig {r['command']}`" for r in results.values()]
    (ROOT / "docs" / "benchmarks" / "generated_runs.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
