"""How much JPEG compression of the test images moves the released CIFAR-10 set's accuracy.

``../shared/data/cifar10`` stores every image as a small JPEG (~300 bytes for 32×32×3), re-encoded
from the original lossless release; the authors' set was distilled and evaluated on the original
pixels. Our evaluation of their 1-ipc set lands 1.3 points below the paper without augmentation
(51.44 against 52.75) and 3.2 with it (docs/fidelity.md). This measures how sensitive that
evaluation is to the compression: it trains ``--models`` evaluation ConvNets on the released set
exactly as ``rcig evaluate`` does (same keys, so the same models), then tests **each trained
model** on the test split as stored and on the same images JPEG-encoded once more at several
qualities (Pillow, the stored files' chroma subsampling). The preprocessing (standardisation +
ZCA fitted on the stored training split, the file's own) is the same for every variant, so the
differences are paired, model by model, and come from the test pixels alone.

The quality of the stored files is estimated by matching their quantisation tables against
Pillow's tables for qualities 1–100.

Run (the exported set from ``benchmarks/released_set.py`` / ``rcig import-official``)::

    python benchmarks/jpeg_sensitivity.py /tmp/c10_released.npz --dataset ../shared/data/cifar10 \\
        --models 5 --qualities same,95,90,75,50

Writes ``benchmarks/results/jpeg_sensitivity.json`` and ``docs/benchmarks/jpeg_sensitivity.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def stored_jpeg(dataset: Path) -> tuple[list[bytes], str]:
    """The test split's stored image bytes, in file order (the loader's order)."""
    import pyarrow.parquet as pq

    files = sorted(dataset.rglob("test-*.parquet"))
    if not files:
        raise ValueError(f"no test-*.parquet under {dataset}")
    table = pq.read_table(files[0])
    column = "img" if "img" in table.column_names else "image"
    return [row["bytes"] for row in table.column(column).to_pylist()], column


def estimate_quality(data: bytes) -> tuple[int | None, int]:
    """(quality whose Pillow tables equal the file's, or None; chroma subsampling code)."""
    from PIL import JpegImagePlugin

    im = Image.open(io.BytesIO(data))
    tables = {k: list(v) for k, v in im.quantization.items()}
    sampling = JpegImagePlugin.get_sampling(im)
    probe = Image.new("RGB", (32, 32), (128, 128, 128))
    for q in range(1, 101):
        buf = io.BytesIO()
        probe.save(buf, "JPEG", quality=q, subsampling=max(sampling, 0))
        got = {k: list(v) for k, v in Image.open(buf).quantization.items()}
        if got == tables:
            return q, sampling
    return None, sampling


def reencode(images01: np.ndarray, quality: int, sampling: int) -> tuple[np.ndarray, float]:
    """Each image through JPEG at ``quality``; returns the decoded images in [0, 1] and the mean
    size in bytes."""
    out = np.empty_like(images01)
    sizes = []
    for i, img in enumerate(images01):
        buf = io.BytesIO()
        pixels = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(buf, "JPEG", quality=quality, subsampling=max(sampling, 0))
        sizes.append(buf.tell())
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255.0
    return out, float(np.mean(sizes))


def main(argv=None) -> None:
    import jax
    import jax.numpy as jnp

    from distillation.data._datasets import load_raw
    from distillation.data._export import load_distilled
    from distillation.evaluation._augment import with_mirrors
    from distillation.evaluation._evaluate import EvalConfig, accuracy, train_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/data/cifar10")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qualities", default="same,95,90,75,50")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    distilled = load_distilled(args.file)
    raw = load_raw(str(args.dataset))
    stored, _ = stored_jpeg(args.dataset)
    if len(stored) != len(raw.x_test):
        raise ValueError(f"{len(stored)} stored test images but the loader has {len(raw.x_test)}")
    quality, sampling = estimate_quality(stored[0])
    stored_bytes = float(np.mean([len(b) for b in stored]))
    print(f"stored test JPEGs: {stored_bytes:.0f} bytes on average, quality {quality}, "
          f"subsampling code {sampling}", flush=True)  # fmt: skip

    variants = {"as stored": (raw.x_test, stored_bytes)}
    for q in args.qualities.split(","):
        if q == "same":
            if quality is None:
                print("stored quality not found among Pillow's tables; 'same' skipped")
                continue
            q = str(quality)
        variants[f"re-encoded at q={q}"] = reencode(raw.x_test, int(q), sampling)
    inputs = {name: distilled.preprocessor(x) for name, (x, _) in variants.items()}

    config = EvalConfig(models=args.models, width=128)  # rcig evaluate's for 32-px images
    x = jnp.asarray(np.asarray(distilled.images, np.float32))
    y = jnp.asarray(np.asarray(distilled.labels), jnp.float32)
    n_support = x.shape[0]
    if distilled.flip:
        x, y = with_mirrors(x, y)
    key = jax.random.key(args.seed)
    per_model: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.models):
        model = train_model(x, y, config, key=jax.random.fold_in(key, i), n_support=n_support)
        for name, xt in inputs.items():
            per_model[name].append(accuracy(model, xt, np.asarray(raw.y_test), config.test_batch))
        print(f"model {i + 1}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in per_model.items()),
              flush=True)  # fmt: skip

    base = np.asarray(per_model["as stored"])
    rows = []
    for name, accs in per_model.items():
        a = np.asarray(accs)
        diff = a - base
        rows.append(
            {
                "variant": name,
                "mean_bytes": variants[name][1],
                "accuracies": accs,
                "mean": float(a.mean()),
                "std": float(a.std()),
                "paired_diff_mean": float(diff.mean()),
                "paired_diff_min": float(diff.min()),
                "paired_diff_max": float(diff.max()),
            }
        )
    summary = {
        "file": str(args.file),
        "stored_quality": quality,
        "subsampling": sampling,
        "models": args.models,
        "seed": args.seed,
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    (ROOT / "benchmarks/results/jpeg_sensitivity.json").write_text(json.dumps(summary, indent=1))
    cmd = (
        f"python benchmarks/jpeg_sensitivity.py {args.file} --dataset {args.dataset} "
        f"--models {args.models} --qualities {args.qualities}"
    )
    lines = [
        "# JPEG compression of the test images and the released CIFAR-10 set's accuracy",
        "",
        f"Command: `{cmd}`",
        "",
        f"Stored test images: {stored_bytes:.0f} bytes each on average, Pillow quality "
        f"{quality} (tables matched), subsampling code {sampling}. {args.models} evaluation "
        "ConvNets (width 128, no augmentation, `rcig evaluate`'s keys) trained once; every "
        f"model tested on every variant. {summary['seconds']:.0f} s.",
        "",
        "| test images | mean bytes | accuracy (%) per model | mean ± std | paired change "
        "(mean, min … max) |",
        "|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['mean_bytes']:.0f} | "
            + " ".join(f"{v:.2f}" for v in r["accuracies"])
            + f" | {r['mean']:.2f} ± {r['std']:.2f} | {r['paired_diff_mean']:+.2f} "
            f"({r['paired_diff_min']:+.2f} … {r['paired_diff_max']:+.2f}) |"
        )
    (ROOT / "docs/benchmarks/jpeg_sensitivity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
