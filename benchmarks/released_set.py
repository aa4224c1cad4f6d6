"""The authors' released distilled set, imported and evaluated with this project's protocol.

The checkpoint comes from the authors' repository (GitHub ``yolky/RCIG``), which the project does
not contain; mirror it and extract the file first, e.g. for CIFAR-10 at 1 image per class::

    git --git-dir <mirror of yolky/RCIG> show \\
        HEAD:distilled_images_final/0/cifar10_1/checkpoint_15000 > /tmp/official_c10_1.msgpack

Then::

    python benchmarks/released_set.py /tmp/official_c10_1.msgpack \\
        --dataset ../shared/data/cifar10 --models 5

It runs ``rcig import-official`` (the ``ema_average`` entry, as the official ``eval.py``), then
``rcig evaluate`` without and with augmentation (``--styles none,released,dsa``: one transform
per image as the released evaluation, or the DSA set composed; ``--models`` ConvNets each, the
paper's protocol as implemented in ``distillation/evaluate.py``), and writes
``benchmarks/results/released_set.json``.
Paper, CIFAR-10 1 ipc: 52.75 ± 0.76 without augmentation (Table 1), 50.9 ± 1.5 with (Table 8).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from distillation.cli._commands import main as rcig

ROOT = Path(__file__).resolve().parents[1]


def _evaluate(npz: Path, dataset: str, models: int, style: str, seed: int) -> dict:
    augment = style != "none"
    argv = ["evaluate", str(npz), "--dataset", dataset, "--models", str(models)]
    argv += ["--seed", str(seed), "--json"]
    argv += ["--augment", "--augment-style", style] if augment else []
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = rcig(argv)
    if code != 0:
        raise SystemExit(f"rcig evaluate exited with {code}")
    result = json.loads(buffer.getvalue().strip().splitlines()[-1])
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["augment"] = augment
    result["style"] = style
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", default="../shared/data/cifar10")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/released_set.json")
    parser.add_argument(
        "--styles",
        default="none,released",
        help="evaluations to run: none (no augmentation), released (one transform per image, "
        "as their eval.py), dsa (all DSA transforms composed); others in --out are kept",
    )
    args = parser.parse_args(argv)

    npz = args.out.with_suffix(".npz")
    argv_import = ["import-official", str(args.checkpoint), "--dataset", args.dataset]
    if rcig([*argv_import, "--out", str(npz)]) != 0:
        raise SystemExit("rcig import-official failed")
    styles = args.styles.split(",")
    rows = [_evaluate(npz, args.dataset, args.models, style, args.seed) for style in styles]
    if args.out.exists():  # keep the rows of the styles not run now
        kept = json.loads(args.out.read_text()).get("rows", [])
        rows = [r for r in kept if r.get("style") not in styles] + rows
    report = {
        "checkpoint": args.checkpoint.name,
        "dataset": args.dataset,
        "models": args.models,
        "seed": args.seed,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    npz.unlink()  # the imported set holds a 3072² ZCA matrix (37 MB): not kept in the repository
    for row in rows:
        accs = ", ".join(f"{a:.2f}" for a in row["accs"])
        print(
            f"augment={row['style']}: {row['acc_mean']:.2f} ± {row['acc_std']:.2f} % "
            f"({accs}) in {row['seconds']} s"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
