"""Membership-inference evaluation (the paper's Table 5 and Figure 3, Appendix B).

A *target* model is trained on some data; an attacker who sees the model's outputs on an example
tries to tell whether the example was a *member* (in the data behind the model) or not. The five
attacks are the ones the paper reports (those of TensorFlow Privacy's membership-inference
module, which FRePo and RCIG used): a threshold on the loss, and four classifiers trained on the
outputs — logistic regression, a multi-layer perceptron, a random forest and k-nearest
neighbours — each scored by the area under the ROC curve (0.5: the attacker learns nothing).

For a distilled set the members are the real images it was distilled from (a chunk of the
training split), the non-members the test split; the baselines are models trained on real data:
as many real images as the set holds, and the whole chunk.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from distillation._checks import check_int, one_hot
from distillation.evaluation._augment import with_mirrors
from distillation.evaluation._evaluate import EvalConfig, accuracy, train_model

ATTACKS = ("threshold", "logistic_regression", "mlp", "random_forest", "knn")


def attack_features(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The attacker's view of each example: the model's logits and its cross-entropy loss on
    the true label (``labels``: class indices). Returns ``(features (n, K + 1), loss (n,))``."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(labels)), np.asarray(labels)]
    return np.column_stack([logits, loss]), loss


def run_attacks(
    member_logits: np.ndarray,
    member_labels: np.ndarray,
    nonmember_logits: np.ndarray,
    nonmember_labels: np.ndarray,
    *,
    seed: int = 0,
    test_fraction: float = 0.5,
) -> dict[str, float]:
    """The AUC of each attack in :data:`ATTACKS`.

    The two groups are balanced (the larger is subsampled to the size of the smaller). The
    threshold attack scores every example by its negative loss; the trained attacks are fitted
    on ``1 − test_fraction`` of the examples (stratified) and scored on the rest.

    Raises:
        ValueError: when a group has fewer than 4 examples.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(member_labels), len(nonmember_labels))
    if n < 4:
        raise ValueError(f"membership attacks need at least 4 members and non-members, got {n}.")
    pick_in = rng.choice(len(member_labels), n, replace=False)
    pick_out = rng.choice(len(nonmember_labels), n, replace=False)
    f_in, loss_in = attack_features(member_logits[pick_in], member_labels[pick_in])
    f_out, loss_out = attack_features(nonmember_logits[pick_out], nonmember_labels[pick_out])
    features = np.concatenate([f_in, f_out])
    is_member = np.concatenate([np.ones(n, int), np.zeros(n, int)])
    aucs = {"threshold": float(roc_auc_score(is_member, -np.concatenate([loss_in, loss_out])))}
    x_fit, x_test, y_fit, y_test = train_test_split(
        features, is_member, test_size=test_fraction, stratify=is_member, random_state=seed
    )
    classifiers = {
        "logistic_regression": LogisticRegression(max_iter=1000),
        "mlp": MLPClassifier((64, 64), max_iter=500, random_state=seed),
        "random_forest": RandomForestClassifier(100, min_samples_leaf=5, random_state=seed),
        "knn": KNeighborsClassifier(min(15, len(y_fit))),
    }
    for name, classifier in classifiers.items():
        with warnings.catch_warnings():  # an MLP on outputs that carry no signal may not converge
            warnings.simplefilter("ignore", ConvergenceWarning)
            attack = make_pipeline(StandardScaler(), classifier).fit(x_fit, y_fit)
        aucs[name] = float(roc_auc_score(y_test, attack.predict_proba(x_test)[:, 1]))
    return aucs


@dataclasses.dataclass(frozen=True)
class PrivacyRow:
    """One target model: what it was trained on, for how many steps, its test accuracy (%) and
    each attack's AUC."""

    target: str
    steps: int
    test_accuracy: float
    aucs: dict[str, float]

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self)}


def privacy_evaluation(
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
    chunk: int = 10000,
    steps: Sequence[int] = (250, 500, 1000, 2000),
    progress: bool = False,
) -> list[PrivacyRow]:
    """Membership attacks on models trained on the distilled set and on real data.

    Targets: ``"distilled"`` (the set; members: ``chunk`` training images, all of which the set
    was distilled from), ``"real, |S| images"`` (as many real images as the set holds, drawn
    from the chunk; members: those images) and ``"real, chunk"`` (the chunk; members: the chunk).
    Non-members: the test split. Each target is trained for each count in ``steps`` (a fresh
    model with that schedule, ``config``'s protocol otherwise), then attacked.

    Raises:
        ValueError: a ``chunk`` larger than the training split, a bad step count.
    """
    check_int("privacy_evaluation", "chunk", chunk)
    for s in steps:
        check_int("privacy_evaluation", "steps", s)
    if chunk > len(y_train):
        raise ValueError(
            f"chunk={chunk} is larger than the training split ({len(y_train)} images)."
        )
    num_classes = labels.shape[1]
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    members = rng.choice(len(y_train), chunk, replace=False)
    few = members[rng.choice(chunk, images.shape[0], replace=False)]
    x_test_np, y_test_np = np.asarray(x_test), np.asarray(y_test)
    targets = {
        "distilled": (images, labels, flip, members),
        "real, |S| images": (
            x_train[few],
            one_hot(y_train[few], num_classes),
            False,
            few,
        ),
        "real, chunk": (x_train[members], one_hot(y_train[members], num_classes), False, members),
    }
    logits_fn = jax.jit(lambda model, x: model(x))
    rows = []
    for t, (name, (x, y, mirrored, member_index)) in enumerate(targets.items()):
        x_fit, y_fit = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        if mirrored:
            x_fit, y_fit = with_mirrors(x_fit, y_fit)
        for s in steps:
            run_config = dataclasses.replace(config, steps=s)
            model = train_model(x_fit, y_fit, run_config, key=jax.random.fold_in(key, 100 * t + s))
            inside = _logits(logits_fn, model, x_train[member_index], config.test_batch)
            outside = _logits(logits_fn, model, x_test_np, config.test_batch)
            aucs = run_attacks(inside, y_train[member_index], outside, y_test_np, seed=s)
            acc = accuracy(model, x_test_np, y_test_np, config.test_batch)
            rows.append(PrivacyRow(name, s, acc, aucs))
            if progress:
                shown = ", ".join(f"{k} {v:.3f}" for k, v in aucs.items())
                print(f"  {name}, {s} steps: accuracy {acc:.2f} %, AUC {shown}", flush=True)
    return rows


def _logits(fn, model, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate(
        [np.asarray(fn(model, jnp.asarray(x[i : i + batch]))) for i in range(0, len(x), batch)]
    )


def save_privacy_figure(path, rows: Sequence[PrivacyRow], title: str) -> None:
    """MLP-attack AUC and test accuracy against training steps, one line per target (the shape
    of the paper's Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for target in dict.fromkeys(r.target for r in rows):
        mine = [r for r in rows if r.target == target]
        left.plot([r.steps for r in mine], [r.aucs["mlp"] for r in mine], "o-", label=target)
        right.plot([r.steps for r in mine], [r.test_accuracy for r in mine], "o-", label=target)
    left.axhline(0.5, color="grey", lw=0.8, ls="--")
    left.set(xlabel="training steps", ylabel="MLP attack AUC", xscale="log")
    right.set(xlabel="training steps", ylabel="test accuracy (%)", xscale="log")
    left.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
