"""DD-Ranking's scores: the formulas on known values, the random subset, and the end-to-end
evaluation on the bundled digits (a few steps)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from distillation.evaluation._evaluate import EvalConfig
from distillation.evaluation._ranking import (
    augmentation_robust_score,
    dd_ranking,
    label_robust_score,
    random_real_subset,
)


def test_label_robust_score_formula():
    s = label_robust_score(syn=0.6, random=0.2, full=0.9)
    assert s["hlr"] == pytest.approx(0.3) and s["ior"] == pytest.approx(0.4)
    alpha = 0.5 * 0.4 - 0.5 * 0.3
    want = (math.exp(alpha) - math.exp(-1)) / (math.exp(1) - math.exp(-1))
    assert s["lrs"] == pytest.approx(want, rel=1e-12)
    # The normalisation maps alpha = -1 to 0 and 1 to 1: a set that recovers the whole split
    # from a random subset at 0 scores (e^{1/2} - e^{-1}) / (e - e^{-1}) with lam = 1/2, and 1
    # with lam = 1.
    assert label_robust_score(1.0, 0.0, 1.0, lam=1.0)["lrs"] == pytest.approx(1.0)
    assert label_robust_score(0.0, 1.0, 1.0, lam=1.0)["lrs"] == pytest.approx(0.0, abs=1e-15)
    # Better than random and closer to the whole split: a higher score.
    assert label_robust_score(0.7, 0.2, 0.9)["lrs"] > s["lrs"]
    with pytest.raises(ValueError, match="`syn` must be an accuracy fraction"):
        label_robust_score(syn=60.0, random=0.2, full=0.9)


def test_augmentation_robust_score_formula():
    s = augmentation_robust_score(syn_aug=0.55, syn=0.5, random_aug=0.3, random=0.2)
    assert s["with_aug"] == pytest.approx(0.25) and s["without_aug"] == pytest.approx(0.3)
    beta = 0.5 * 0.25 + 0.5 * 0.3
    want = (math.exp(beta) - math.exp(-1)) / (math.exp(1) - math.exp(-1))
    assert s["ars"] == pytest.approx(want, rel=1e-12)
    # A set no better than random, with or without augmentation, scores e^0's image.
    same = augmentation_robust_score(0.4, 0.3, 0.4, 0.3)["ars"]
    assert same == pytest.approx((1 - math.exp(-1)) / (math.exp(1) - math.exp(-1)))


def test_random_real_subset_draws_each_class_count_without_replacement():
    y = np.repeat(np.arange(3), 5)
    x = np.arange(15, dtype=np.float32)[:, None]
    xs, ys = random_real_subset(x, y, np.array([2, 0, 5]), seed=1)
    assert np.bincount(ys, minlength=3).tolist() == [2, 0, 5]
    assert len(np.unique(xs)) == 7 and np.all(y[xs[:, 0].astype(int)] == ys)
    with pytest.raises(ValueError, match="class 1 has 5 training images; 6 were asked for"):
        random_real_subset(x, y, np.array([1, 6, 1]), seed=1)


@pytest.mark.slow
def test_dd_ranking_on_digits_end_to_end():
    """Five models per round plus the whole-split model; accuracies in percent, scores x100 in
    [0, 100], each score the formula of the recorded accuracies."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = ((d.images[..., None] / 16.0 - 0.3) / 0.4).astype(np.float32)
    y = d.target
    x_tr, y_tr, x_te, y_te = x[:1400], y[:1400], x[1400:], y[1400:]
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(y_tr == c), 1) for c in range(10)])
    labels = np.eye(10, dtype=np.float32)[y_tr[idx]] * 0.9 + 0.01
    config = EvalConfig(models=2, width=8, steps=40, batch_size=64, warmup=5, learning_rate=3e-3)
    result = dd_ranking(
        x_tr[idx], labels, x_tr, y_tr, x_te, y_te, config, key=jax.random.key(0), full_steps=60
    )
    assert set(result.accuracies) == {"syn_hard", "syn", "syn_aug", "random", "random_aug"}
    assert all(len(v) == 2 and all(0 <= a <= 100 for a in v) for v in result.accuracies.values())
    assert result.full_accuracy > 30.0  # 60 steps on 1400 digits already learn something
    for name in ("lrs", "ars"):
        assert 0.0 <= result.scores[name]["mean"] <= 100.0
    acc = {k: v[0] / 100 for k, v in result.accuracies.items()}
    first = label_robust_score(acc["syn_hard"], acc["random"], result.full_accuracy / 100)
    second = {k: v[1] / 100 for k, v in result.accuracies.items()}
    other = label_robust_score(second["syn_hard"], second["random"], result.full_accuracy / 100)
    assert result.scores["lrs"]["mean"] == pytest.approx(50 * (first["lrs"] + other["lrs"]))
    # A given whole-split accuracy is used as is (no model trained for it).
    given = dd_ranking(
        x_tr[idx], labels, x_tr, y_tr, x_te, y_te, EvalConfig(models=1, width=8, steps=5),
        key=jax.random.key(0), full_accuracy=97.5,
    )  # fmt: skip
    assert given.full_accuracy == 97.5
