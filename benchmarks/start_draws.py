"""Whether ours' starting draws and the released code's come from one distribution (MNIST, 1 ipc).

Until 2026-12-06 ours drew its start with the released rule but its own generator
(``init_draw="buffer"``, then the default), so a single seed's start could be much better for one
code than for the other (seed 2 at width 32: ours' start scores 9
points under theirs, ``start_quality.py``). This asks whether that is the draw's luck or a
difference in how the two draw:

1. **Which examples.** For seeds ``0 … N−1`` the training indices the released ``init_proto``
   picks (``official_init_indices.py``, run in the official harness's venv) against those ours
   picks for the same seeds with ``init_draw="buffer"`` (``_pick_from_buffer``, the key ``distill``
   gives it), class by class: a two-sample Kolmogorov–Smirnov test and the mean index. Also how
   many seeds today's default ``init_draw="released"`` (tf.data's shuffle reproduced,
   ``_pick_as_released``) picks exactly the released code's examples for.
2. **How good the starts are.** A ``start_quality.py`` results file over many seeds: per seed
   ours − theirs (the same evaluation networks for both, so the difference is paired), its mean
   and standard error, and each code's mean.

Writes a JSON summary and a PNG (the per-class index distributions; the starts' accuracies)::

    python benchmarks/start_draws.py \\
        --official-indices benchmarks/results/official_init_indices_mnist_ipc1_200.json \\
        --start-quality benchmarks/results/start_quality_mnist_w32_seeds.json \\
        --out benchmarks/results/start_draws_mnist.json --png docs/figures/start_draws_mnist.png
"""

import argparse
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import DATASETS  # noqa: E402


def _ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    r = ks_2samp(a, b)
    return float(r.statistic), float(r.pvalue)


def _first_of_each_class(labels: np.ndarray, k: int, buffer_size: int, seed: int) -> np.ndarray:
    """A control, not the rule under test: the first example of each class out of a shuffle
    buffer of ``buffer_size`` over the stored order (set semantics, as tf.data's), drawn with
    numpy; with a buffer other than 10·K it shows the test can tell a near miss apart."""
    rng = np.random.default_rng(seed)
    buffer, following, first = list(range(buffer_size)), buffer_size, [-1] * k
    while min(first) < 0:
        slot = int(rng.integers(len(buffer)))
        example, buffer[slot] = buffer[slot], following
        following += 1
        if first[int(labels[example])] < 0:
            first[int(labels[example])] = example
    return np.asarray(first)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official-indices", type=Path, required=True)
    p.add_argument("--start-quality", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--png", type=Path, default=None)
    a = p.parse_args()

    from distillation._distill import _pick_as_released, _pick_from_buffer
    from distillation.data._datasets import load_dataset

    folder, _, _ = DATASETS["mnist"]
    dataset = load_dataset(str(folder))
    k = dataset.num_classes
    theirs_by_seed = {int(s): v for s, v in json.loads(a.official_indices.read_text()).items()}
    seeds = sorted(theirs_by_seed)
    theirs = np.asarray([theirs_by_seed[s] for s in seeds])  # (seeds, K), class order
    ours = np.asarray(
        [
            _pick_from_buffer(dataset.y_train, k, 1, jax.random.split(jax.random.key(s))[0])
            for s in seeds
        ]
    )
    for who, picks in (("ours", ours), ("theirs", theirs)):
        if not np.all(dataset.y_train[picks] == np.arange(k)[None, :]):
            raise SystemExit(f"{who}' picks are not one example of each class in class order")
    per_class = []
    for c in range(k):
        d, pv = _ks_2samp(ours[:, c], theirs[:, c])
        per_class.append(
            {
                "class": c,
                "mean_index_ours": float(ours[:, c].mean()),
                "mean_index_theirs": float(theirs[:, c].mean()),
                "ks_statistic": d,
                "ks_pvalue": pv,
            }
        )
        print(
            f"class {c}: mean index ours {ours[:, c].mean():6.1f}, theirs "
            f"{theirs[:, c].mean():6.1f}; KS D = {d:.3f}, p = {pv:.3f}",
            flush=True,
        )
    pvals = np.asarray([r["ks_pvalue"] for r in per_class])
    controls = {}
    for size in (5 * k, 10 * k, 20 * k):  # half, equal and double the released buffer
        sim = np.asarray([_first_of_each_class(dataset.y_train, k, size, s) for s in seeds])
        p_sim = [_ks_2samp(sim[:, c], theirs[:, c])[1] for c in range(k)]
        controls[size] = float(min(p_sim))
        print(f"control: a {size}-example buffer against theirs, smallest KS p {min(p_sim):.2g}")
    # Bonferroni over the K classes: the smallest p-value against 0.05 / K.
    print(
        f"{len(seeds)} seeds; smallest KS p-value {pvals.min():.3f} (Bonferroni threshold at 5 %: "
        f"{0.05 / k:.4f}); identical picks on {int(np.sum(np.all(ours == theirs, 1)))} seeds",
        flush=True,
    )
    exact = np.asarray([_pick_as_released(dataset.y_train, k, 1, s) for s in seeds])
    n_exact = int(np.sum(np.all(exact == theirs, 1)))
    print(
        f"init_draw='released' (tf.data's shuffle reproduced): theirs exactly on {n_exact} "
        f"of {len(seeds)} seeds",
        flush=True,
    )
    summary: dict = {
        "seeds": len(seeds),
        "released_draw_exact_seeds": n_exact,
        "per_class": per_class,
        "min_pvalue": float(pvals.min()),
        "bonferroni_threshold": 0.05 / k,
        "control_min_pvalue_by_buffer_size": controls,
    }

    quality = None
    if a.start_quality is not None:
        rows = json.loads(a.start_quality.read_text())["rows"]
        by = {(r["who"], r["seed"]): float(np.mean(r["accs"])) for r in rows}
        q_seeds = sorted({s for (_, s) in by if ("ours", s) in by and ("official", s) in by})
        for s in q_seeds:  # the official starts evaluated must be the ones in the indices file
            row = next(r for r in rows if r["who"] == "official" and r["seed"] == s)
            if s in theirs_by_seed and row["indices"] != theirs_by_seed[s]:
                raise SystemExit(f"seed {s}: the start-quality file's official start differs")
        o = np.asarray([by[("ours", s)] for s in q_seeds])
        t = np.asarray([by[("official", s)] for s in q_seeds])
        diff = o - t
        se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
        quality = {
            "seeds": q_seeds,
            "ours": o.tolist(),
            "theirs": t.tolist(),
            "mean_ours": float(o.mean()),
            "mean_theirs": float(t.mean()),
            "mean_difference": float(diff.mean()),
            "standard_error": se,
            "sd_difference": float(diff.std(ddof=1)),
        }
        print(
            f"starts over {len(q_seeds)} seeds: ours {o.mean():.2f}, theirs {t.mean():.2f}; "
            f"ours − theirs {diff.mean():+.2f} ± {se:.2f} (standard error; per-seed sd "
            f"{diff.std(ddof=1):.2f}, range {diff.min():+.2f} … {diff.max():+.2f})",
            flush=True,
        )
        summary["start_quality"] = quality
    a.out.write_text(json.dumps(summary, indent=1))

    if a.png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2 if quality else 1, figsize=(12 if quality else 6, 4.2))
        axes = np.atleast_1d(axes)
        ax = axes[0]
        hi = int(max(ours.max(), theirs.max())) + 1
        bins = np.arange(0, hi + 10, 10)
        ax.hist(ours.ravel(), bins=bins, alpha=0.55, label="ours (all classes)")
        ax.hist(theirs.ravel(), bins=bins, alpha=0.55, label="released code (all classes)")
        ax.set_xlabel("training index of a starting image")
        ax.set_ylabel("count")
        ax.set_title(f"which examples start, {len(seeds)} seeds (min KS p = {pvals.min():.2f})")
        ax.legend()
        if quality:
            ax = axes[1]
            xs = np.arange(len(quality["seeds"]))
            ax.plot(xs, quality["ours"], "o-", label=f"ours' start (mean {o.mean():.2f})")
            ax.plot(xs, quality["theirs"], "s-", label=f"their start (mean {t.mean():.2f})")
            ax.set_xticks(xs, [str(s) for s in quality["seeds"]])
            ax.set_xlabel("seed")
            ax.set_ylabel("test accuracy of the start (%, 5 models)")
            ax.set_title("how good the starts are, MNIST 1 ipc, width 32")
            ax.legend()
        fig.tight_layout()
        a.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.png, dpi=110)
        print(f"wrote {a.png}", flush=True)


if __name__ == "__main__":
    main()
