"""Membership-inference attacks on cases with a known answer, and the evaluation's shape."""

import jax
import numpy as np
import pytest

from distillation.evaluation._evaluate import EvalConfig
from distillation.evaluation._privacy import (
    ATTACKS,
    attack_features,
    privacy_evaluation,
    run_attacks,
)


def _logits(rng, labels, margin):
    """Random logits with the true class raised by ``margin``."""
    logits = rng.normal(size=(len(labels), 10))
    logits[np.arange(len(labels)), labels] += margin
    return logits


def test_attack_features_are_the_logits_and_the_cross_entropy():
    logits = np.asarray([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    features, loss = attack_features(logits, np.asarray([0, 2]))
    expected = [-np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(-1))), np.log(3.0)]
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    np.testing.assert_array_equal(features[:, :3], logits)
    np.testing.assert_array_equal(features[:, 3], loss)


def test_a_model_that_memorised_its_members_is_exposed_by_every_attack():
    rng = np.random.default_rng(0)
    y_in, y_out = rng.integers(0, 10, 600), rng.integers(0, 10, 600)
    # members: confidently right (margin 8); non-members: barely (margin 1)
    aucs = run_attacks(_logits(rng, y_in, 8.0), y_in, _logits(rng, y_out, 1.0), y_out)
    assert set(aucs) == set(ATTACKS)
    assert all(auc > 0.95 for auc in aucs.values()), aucs


def test_a_model_independent_of_its_members_gives_chance_auc():
    """Members and non-members from one distribution: each AUC is 0.5 up to sampling noise
    (n = 600 per group; the null AUC's standard deviation on a 300 + 300 test split is
    √((n₁+n₂+1)/(12 n₁ n₂)) ≈ 0.024, so ±0.1 is four of them)."""
    rng = np.random.default_rng(1)
    y_in, y_out = rng.integers(0, 10, 600), rng.integers(0, 10, 600)
    aucs = run_attacks(_logits(rng, y_in, 2.0), y_in, _logits(rng, y_out, 2.0), y_out)
    assert all(abs(auc - 0.5) < 0.1 for auc in aucs.values()), aucs


def test_attacks_refuse_too_few_examples():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 10, 3)
    with pytest.raises(ValueError, match="at least 4 members and non-members, got 3"):
        run_attacks(_logits(rng, y, 1.0), y, _logits(rng, y, 1.0), y)


@pytest.mark.slow  # trains six small models (~40 s on 2 cores)
def test_privacy_evaluation_trains_three_targets_per_step_count(tmp_path):
    from sklearn.datasets import load_digits

    from distillation.evaluation._privacy import save_privacy_figure

    d = load_digits()
    x = ((d.images[..., None] / 16.0 - 0.3) / 0.4).astype(np.float32)
    y = d.target
    x_train, y_train, x_test, y_test = x[:1200], y[:1200], x[1200:], y[1200:]
    images = x_train[:10]
    labels = np.eye(10, dtype=np.float32)[y_train[:10]]
    config = EvalConfig(models=1, width=8, warmup=5)
    rows = privacy_evaluation(
        images, labels, x_train, y_train, x_test, y_test, config,
        key=jax.random.key(0), chunk=300, steps=(10, 20),
    )  # fmt: skip
    assert [(r.target, r.steps) for r in rows] == [
        (t, s) for t in ("distilled", "real, |S| images", "real, chunk") for s in (10, 20)
    ]
    for row in rows:
        assert set(row.aucs) == set(ATTACKS)
        assert all(0.0 <= v <= 1.0 for v in row.aucs.values())
        assert 0.0 <= row.test_accuracy <= 100.0
    save_privacy_figure(tmp_path / "privacy.png", rows, "digits")
    assert (tmp_path / "privacy.png").stat().st_size > 0
    with pytest.raises(ValueError, match="chunk=5000 is larger than the training split"):
        privacy_evaluation(
            images, labels, x_train, y_train, x_test, y_test, config,
            key=jax.random.key(0), chunk=5000,
        )  # fmt: skip


def test_rcig_privacy_refuses_bad_arguments_before_training(tmp_path, capsys):
    from distillation.cli._commands import main

    missing = tmp_path / "none.npz"
    assert main(["privacy", str(missing), "--dataset", "digits"]) == 2
    assert "expected an existing distilled-set .npz" in capsys.readouterr().err
    assert main(["privacy", str(missing), "--dataset", "digits", "--train-steps", "10,x"]) == 2
    assert "--train-steps must be comma-separated positive integers" in capsys.readouterr().err
