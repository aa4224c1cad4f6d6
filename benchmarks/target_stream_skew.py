"""How class-balanced the released code's target batches are, over a training file's stored order.

The released code draws its target batches from ``ds.shuffle(16·1024, seed=0).repeat()
.batch(1024)`` over the training set in its stored order (``dataloader.py`` 44–62): a buffered
shuffle, not a permutation, so an output comes from within ~16,384 places of where the stream
is. Over a file in random order that is as good as uniform; over a file sorted by class it is
not. This reproduces the stream's first epoch exactly (``distillation/_tf_shuffle.py``, checked
against TensorFlow by ``tf_shuffle_check.py``) over the stored labels of the side-by-side
datasets and reports, per batch, the classes present and the total-variation distance of the
batch's class histogram from the uniform one (ours draws exact shuffled epochs: that distance is
~0.04 for 1024 draws over ten classes). Writes JSON and a PNG::

    python benchmarks/target_stream_skew.py --out benchmarks/results/target_stream_skew.json \\
        --png docs/figures/target_stream_skew.png
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import DATASETS  # noqa: E402

BATCH = 1024
BUFFER = 16 * BATCH


def batch_stats(labels: np.ndarray, num_classes: int, order: np.ndarray) -> list[dict]:
    rows = []
    for b in range(len(order) // BATCH):
        h = np.bincount(labels[order[b * BATCH : (b + 1) * BATCH]], minlength=num_classes)
        p = h / h.sum()
        rows.append(
            {
                "batch": b,
                "histogram": h.tolist(),
                "classes_present": int((h > 0).sum()),
                "tv_from_uniform": float(0.5 * np.abs(p - 1 / num_classes).sum()),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--png", type=Path, default=None)
    a = p.parse_args()

    from distillation._tf_shuffle import tf_shuffle_order
    from distillation.data._datasets import load_dataset

    summary = {}
    rng = np.random.default_rng(0)
    for name in ("mnist", "cifar10"):
        folder = DATASETS[name][0]
        data = load_dataset(str(folder))
        labels = np.asarray(data.y_train)
        k = data.num_classes
        released = np.fromiter(tf_shuffle_order(len(labels), BUFFER, 0), np.int64)
        permuted = rng.permutation(len(labels))  # an exact shuffled epoch, as ours draws
        runs = {
            "released stream": batch_stats(labels, k, released),
            "exact epoch": batch_stats(labels, k, permuted),
        }
        summary[name] = {
            "sorted_by_class": bool(np.all(np.diff(labels) >= 0)),
            "streams": runs,
        }
        for who, rows in runs.items():
            tv = np.asarray([r["tv_from_uniform"] for r in rows])
            present = [r["classes_present"] for r in rows]
            summary[name][who] = {
                "mean_tv": float(tv.mean()),
                "max_tv": float(tv.max()),
                "min_classes_present": int(min(present)),
            }
            print(
                f"{name:8s} {who:16s}: {len(rows)} batches of the first epoch; total variation "
                f"from uniform mean {tv.mean():.3f}, max {tv.max():.3f}; fewest classes in a "
                f"batch {min(present)}; batch 0 {rows[0]['histogram']}",
                flush=True,
            )
    a.out.write_text(json.dumps(summary, indent=1))

    if a.png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for name, ax in zip(("mnist", "cifar10"), axes[:2], strict=True):
            for who, style in (("released stream", "-"), ("exact epoch", "--")):
                rows = summary[name]["streams"][who]
                ax.plot([r["tv_from_uniform"] for r in rows], style, label=who)
            ax.set_title(f"{name}: class skew of each target batch (first epoch)")
            ax.set_xlabel("batch")
            ax.set_ylabel("total variation from uniform")
            ax.legend()
        hist = np.asarray(
            [r["histogram"] for r in summary["cifar10"]["streams"]["released stream"]]
        )
        im = axes[2].imshow(hist.T, aspect="auto", cmap="viridis")
        axes[2].set_title("cifar10, released stream: class counts per batch")
        axes[2].set_xlabel("batch")
        axes[2].set_ylabel("class")
        fig.colorbar(im, ax=axes[2])
        fig.tight_layout()
        a.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.png, dpi=110)
        print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
