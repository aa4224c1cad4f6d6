"""DD-Ranking's label- and augmentation-robust scores (Li et al., 2025, "DD-Ranking: Rethinking
the Evaluation of Dataset Distillation"; github.com/NUS-HPC-AI-Lab/DD-Ranking), computed with
this project's evaluation protocol, so that sets from different tools can be compared on one
protocol that discounts what labels and augmentation alone buy.

With test accuracies as fractions in ``[0, 1]``:

* **Label-robust score** (LRS, hard labels): ``HLR = acc_full − acc_syn`` (hard-label recovery:
  what the set loses against the whole training split), ``IOR = acc_syn − acc_random``
  (improvement over a random real subset of the same size), ``α = λ·IOR − (1 − λ)·HLR`` and
  ``LRS = (e^α − e^{−1}) / (e − e^{−1})``. The set is trained on **hard** labels (the argmax of
  its learned labels), so learned soft labels do not count.
* **Augmentation-robust score** (ARS): ``β = λ·(syn_aug − random_aug) + (1 − λ)·(syn − random)``
  and ``ARS = (e^β − e^{−1}) / (e − e^{−1})``, the set with its own labels, trained with and
  without the evaluation's augmentation, against the random subset with and without it.

λ = 0.5 as DD-Ranking's default; scores are reported ×100. Deviations from DD-Ranking (recorded
in docs/distillation.md): the training protocol is this project's (:class:`EvalConfig`: Adam,
MSE, the paper's schedule) with no learning-rate search; the random subsets carry hard labels
(no teacher model for soft ones); the whole-split accuracy is trained here for
``full_steps`` minibatch steps unless given (DD-Ranking looks it up in a table).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from distillation._checks import check_int, one_hot
from distillation.evaluation._evaluate import EvalConfig, accuracy, evaluate_support, train_model

LAMBDA = 0.5


def _normalised_exp(x: float) -> float:
    return (math.exp(x) - math.exp(-1.0)) / (math.exp(1.0) - math.exp(-1.0))


def label_robust_score(
    syn: float, random: float, full: float, lam: float = LAMBDA
) -> dict[str, float]:
    """HLR, IOR and LRS from hard-label test accuracies given as fractions in ``[0, 1]``.

    Example:
        >>> s = label_robust_score(syn=0.5, random=0.3, full=0.8)
        >>> round(s["hlr"], 3), round(s["ior"], 3), round(s["lrs"], 4)
        (0.3, 0.2, 0.2482)
    """
    _check_fractions(syn=syn, random=random, full=full)
    hlr, ior = full - syn, syn - random
    alpha = lam * ior - (1.0 - lam) * hlr
    return {"hlr": hlr, "ior": ior, "lrs": _normalised_exp(alpha)}


def augmentation_robust_score(
    syn_aug: float, syn: float, random_aug: float, random: float, lam: float = LAMBDA
) -> dict[str, float]:
    """ARS from test accuracies (fractions) with and without augmentation."""
    _check_fractions(syn_aug=syn_aug, syn=syn, random_aug=random_aug, random=random)
    with_aug, without = syn_aug - random_aug, syn - random
    beta = lam * with_aug + (1.0 - lam) * without
    return {"with_aug": with_aug, "without_aug": without, "ars": _normalised_exp(beta)}


def _check_fractions(**values: float) -> None:
    for name, v in values.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"`{name}` must be an accuracy fraction in [0, 1], got {v!r}.")


def random_real_subset(
    x_train: np.ndarray, y_train: np.ndarray, counts: np.ndarray, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``counts[c]`` training images of each class ``c``, drawn without replacement, with their
    (integer) labels."""
    rng = np.random.default_rng(seed)
    picked = []
    for c, n in enumerate(counts):
        pool = np.flatnonzero(y_train == c)
        if n > len(pool):
            raise ValueError(f"class {c} has {len(pool)} training images; {n} were asked for.")
        picked.append(rng.choice(pool, int(n), replace=False))
    index = np.concatenate(picked)
    return x_train[index], y_train[index]


@dataclasses.dataclass(frozen=True)
class RankingResult:
    """Accuracies (percent, one per round) and the scores (×100, mean and std over rounds)."""

    accuracies: dict[str, list[float]]
    full_accuracy: float
    scores: dict[str, dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracies": self.accuracies,
            "full_accuracy": self.full_accuracy,
            "scores": self.scores,
        }


def dd_ranking(
    images: np.ndarray,
    labels: np.ndarray,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    config: EvalConfig,
    *,
    key: Array,
    flip: bool = False,
    full_accuracy: float | None = None,
    full_steps: int = 2000,
    lam: float = LAMBDA,
    progress: bool = False,
) -> RankingResult:
    """DD-Ranking's LRS and ARS for a distilled set, ``config.models`` rounds.

    Each round trains five models: the set with hard labels (LRS), the set with its own labels
    without and with augmentation (ARS), and a fresh random real subset with the set's class
    counts without and with augmentation (both). ``full_accuracy`` (percent): the whole training
    split's accuracy with this protocol; ``None`` trains one model for it (``full_steps`` steps
    of ``config.batch_size`` images).
    """
    check_int("dd_ranking", "full_steps", full_steps)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"dd_ranking: `lam` must be in [0, 1], got {lam!r}.")
    if full_accuracy is not None and not 0.0 <= full_accuracy <= 100.0:
        raise ValueError(
            f"`full_accuracy` must be a percentage in [0, 100], got {full_accuracy!r}."
        )
    labels = np.asarray(labels, np.float32)
    k = labels.shape[1]
    hard = one_hot(np.argmax(labels, axis=1), k)
    counts = np.bincount(np.argmax(labels, axis=1), minlength=k)
    one = dataclasses.replace(config, models=1)
    plain, augmented = (dataclasses.replace(one, augment=a) for a in (False, True))
    accs: dict[str, list[float]] = {
        name: [] for name in ("syn_hard", "syn", "syn_aug", "random", "random_aug")
    }
    seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1])
    for r in range(config.models):
        k_round = jax.random.fold_in(key, r)
        x_rand, y_rand = random_real_subset(x_train, y_train, counts, seed=seed + r)
        y_rand = one_hot(y_rand, k)
        runs = {
            "syn_hard": (images, hard, flip, plain),
            "syn": (images, labels, flip, plain),
            "syn_aug": (images, labels, flip, augmented),
            "random": (x_rand, y_rand, False, plain),
            "random_aug": (x_rand, y_rand, False, augmented),
        }
        for name, (x, y, mirrored, run_config) in runs.items():
            result = evaluate_support(x, y, x_test, y_test, run_config, key=k_round, flip=mirrored)
            accs[name].append(result.accs[0])
            if progress:
                print(f"  round {r + 1}/{config.models}, {name}: {result.accs[0]:.2f}%", flush=True)
    if full_accuracy is None:
        full_config = dataclasses.replace(plain, steps=full_steps)
        model = train_model(
            jnp.asarray(x_train, jnp.float32),
            jnp.asarray(one_hot(y_train, k)),
            full_config,
            key=jax.random.fold_in(key, 10_000),
        )
        full_accuracy = accuracy(model, x_test, np.asarray(y_test), config.test_batch)
        if progress:
            print(f"  whole training split: {full_accuracy:.2f}%", flush=True)
    per_round = []
    for r in range(config.models):
        f = {name: v[r] / 100.0 for name, v in accs.items()}
        lrs = label_robust_score(f["syn_hard"], f["random"], full_accuracy / 100.0, lam)
        ars = augmentation_robust_score(f["syn_aug"], f["syn"], f["random_aug"], f["random"], lam)
        per_round.append({**lrs, **ars})
    scores = {
        name: {
            "mean": 100.0 * float(np.mean([p[name] for p in per_round])),
            "std": 100.0 * float(np.std([p[name] for p in per_round])),
        }
        for name in per_round[0]
    }
    return RankingResult(accs, float(full_accuracy), scores)
