"""The distilled-set file: one ``.npz`` any framework can train on, plus a PNG grid and metrics.

Keys of ``distilled.npz``:

* ``images (N, H, W, C) float32`` in model-input space; ``labels (N, K) float32`` (learned);
* ``mean (C,)``, ``std (C,)``, and where ZCA was used ``zca_mean (D,)`` and
  ``zca_whitening (D, D)``: a raw uint8 image ``r`` maps to model input by
  ``x = (r/255 − mean)/std``, then ``x = ((x.reshape(-1) − zca_mean) @ zca_whitening).reshape``;
* with block ZCA (images over 64 px by default) also ``zca_block`` (an integer ``b``) and
  ``zca_layout`` (``"checkerboard"`` or ``"tiles"``), and ``zca_whitening`` is ``(d, d)`` with
  ``d = b·b·C``: the centred image ``z = x.reshape(-1) − zca_mean`` reshaped to ``(H, W, C)`` is
  cut into blocks — checkerboard: block ``(i, j)`` is ``z[i::H//b, j::W//b]``; tiles:
  ``z[i·b:(i+1)·b, j·b:(j+1)·b]`` — each block is flattened (row, column, channel), multiplied
  by ``zca_whitening`` and put back where it came from (numpy: ``reshape`` and ``transpose``);
* ``flip`` (bool: train on the images and their horizontal mirrors), ``log_temperature``;
* ``config``: a JSON string (dataset, method, ipc, steps, seed, hyperparameters, version).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from distillation._checks import one_hot
from distillation.data._datasets import Preprocessor, read_npz

REQUIRED_KEYS = ("images", "labels", "mean", "std")


@dataclasses.dataclass(frozen=True)
class DistilledSet:
    """A loaded distilled-set file."""

    images: np.ndarray
    labels: np.ndarray
    preprocessor: Preprocessor
    flip: bool = False
    log_temperature: float = 0.0
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]


def save_distilled(
    path: str | Path,
    images: ArrayLike,
    labels: ArrayLike,
    preprocessor: Preprocessor,
    *,
    flip: bool,
    log_temperature: float,
    config: dict[str, Any],
) -> Path:
    """Write the ``.npz`` of the export format (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Any: a dict[str, ndarray] splatted into np.savez could, as far as mypy knows, hold
    # `allow_pickle` (a bool).
    arrays: dict[str, Any] = {
        "images": np.asarray(images, np.float32),
        "labels": np.asarray(labels, np.float32),
        "mean": np.asarray(preprocessor.mean, np.float32),
        "std": np.asarray(preprocessor.std, np.float32),
        "flip": np.asarray(bool(flip)),
        "log_temperature": np.asarray(float(log_temperature), np.float32),
        "config": np.asarray(json.dumps(config, sort_keys=True)),
    }
    if preprocessor.zca_whitening is not None:
        arrays["zca_mean"] = np.asarray(preprocessor.zca_mean, np.float32)
        arrays["zca_whitening"] = np.asarray(preprocessor.zca_whitening, np.float32)
    if preprocessor.zca_block is not None:
        arrays["zca_block"] = np.asarray(preprocessor.zca_block, np.int64)
        arrays["zca_layout"] = np.asarray(preprocessor.zca_layout)
    with _replaced_atomically(path) as temporary, open(temporary, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_distilled(path: str | Path) -> DistilledSet:
    """Read a distilled-set ``.npz`` (ours or another tool's in the same format).

    Only ``images``, ``labels``, ``mean`` and ``std`` are required; ``labels`` may be integer
    class indices ``(N,)``, which are one-hot encoded.

    Raises:
        ValueError: in one line naming the file and the key: not an ``.npz``, a missing key,
            arrays of the wrong shape or dtype, NaN or infinite values, negative or non-integer
            class indices, labels that do not match the images one to one.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected a distilled-set .npz).")
    data = read_npz(path, "read as a distilled set")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: not a distilled-set file, missing keys {missing}.")
    for key in (*REQUIRED_KEYS, "zca_mean", "zca_whitening", "log_temperature"):
        if key in data:
            _check_numeric(data[key], f"{path}: {key}")
    images = np.asarray(data["images"], np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{path}: images must be (N, H, W, C), got shape {images.shape}.")
    labels = _labels(np.asarray(data["labels"]), len(images), f"{path}: labels")
    channels = images.shape[-1]
    mean = np.asarray(data["mean"], np.float32).reshape(-1)
    std = np.asarray(data["std"], np.float32).reshape(-1)
    for key, value in (("mean", mean), ("std", std)):
        if value.shape not in ((channels,), (1,)):
            raise ValueError(
                f"{path}: {key} must hold one value per channel ({channels}), got shape "
                f"{value.shape}."
            )
    if not (std > 0).all():
        raise ValueError(f"{path}: std must be positive, got {std.tolist()}.")
    zca_mean = zca = None
    if ("zca_mean" in data) != ("zca_whitening" in data):
        raise ValueError(f"{path}: zca_mean and zca_whitening must be given together.")
    block, layout = _zca_block(data, images.shape[1:], path)
    if "zca_whitening" in data:
        dim = int(np.prod(images.shape[1:]))
        side = dim if block is None else block * block * channels
        zca_mean = np.asarray(data["zca_mean"], np.float32).reshape(-1)
        zca = np.asarray(data["zca_whitening"], np.float32)
        if zca_mean.shape != (dim,) or zca.shape != (side, side):
            raise ValueError(
                f"{path}: zca_mean {zca_mean.shape} and zca_whitening {zca.shape} must be "
                f"({dim},) and ({side}, {side}) for images of shape {images.shape[1:]}"
                + (f" in {block}-px blocks." if block is not None else ".")
            )
    pre = Preprocessor(mean, std, zca_mean, zca, block, layout)
    flip = bool(data["flip"]) if "flip" in data else False
    log_t = float(data["log_temperature"]) if "log_temperature" in data else 0.0
    try:
        config = json.loads(str(data["config"])) if "config" in data else {}
    except ValueError:
        raise ValueError(f"{path}: config is not a JSON string.") from None
    return DistilledSet(images, labels, pre, flip, log_t, config)


def _zca_block(data, image_shape, path) -> tuple[int | None, str]:
    """``zca_block`` and ``zca_layout`` of a file (absent: the dense whitening), checked."""
    if "zca_block" not in data:
        if "zca_layout" in data:
            raise ValueError(f"{path}: zca_layout is given without zca_block.")
        return None, "checkerboard"
    raw_block, layout = data["zca_block"], str(data.get("zca_layout", "checkerboard"))
    h, w = image_shape[:2]
    if (
        raw_block.shape != ()
        or not np.issubdtype(raw_block.dtype, np.integer)
        or int(raw_block) < 1
        or h % int(raw_block)
        or w % int(raw_block)
    ):
        raise ValueError(
            f"{path}: zca_block must be one positive integer dividing the image size {h}x{w}, "
            f"got {raw_block.tolist()!r}."
        )
    if layout not in ("checkerboard", "tiles"):
        raise ValueError(f"{path}: zca_layout must be 'checkerboard' or 'tiles', got {layout!r}.")
    return int(raw_block), layout


def _check_numeric(value: np.ndarray, where: str) -> None:
    if value.dtype == bool or not (
        np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
    ):
        raise ValueError(f"{where} has dtype {value.dtype}; expected numbers.")
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        raise ValueError(f"{where} contains NaN or infinite values.")


def _labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    """``(N, K)`` float labels as they are, or integer class indices ``(N,)`` one-hot."""
    if labels.ndim == 1:
        if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{where}: 1-D labels must be integer class indices, got dtype {labels.dtype}."
            )
        if labels.size and labels.min() < 0:
            raise ValueError(f"{where}: class indices must be >= 0, got {int(labels.min())}.")
        labels = one_hot(labels, int(labels.max()) + 1 if labels.size else 0)
    if labels.ndim != 2:
        raise ValueError(
            f"{where}: expected (N, K) soft labels or (N,) class indices, got shape {labels.shape}."
        )
    if labels.shape[0] != n:
        raise ValueError(f"{where}: {labels.shape[0]} labels for {n} images; expected one each.")
    return labels.astype(np.float32)


def image_grid(images01: np.ndarray, labels: np.ndarray, *, scale: int | None = None) -> np.ndarray:
    """Arrange images (in ``[0, 1]``) with one column per class (argmax label), as uint8 RGB."""
    images01 = np.clip(np.asarray(images01, np.float32), 0.0, 1.0)
    n, h, w, c = images01.shape
    classes = np.argmax(labels, axis=1)
    columns = [np.flatnonzero(classes == k) for k in range(labels.shape[1])]
    columns = [col for col in columns if len(col)]
    rows = max(len(col) for col in columns)
    pad = 1
    grid = np.ones(((h + pad) * rows + pad, (w + pad) * len(columns) + pad, 3), np.float32)
    for j, members in enumerate(columns):
        for i, idx in enumerate(members):
            img = images01[idx]
            img = np.repeat(img, 3, axis=2) if c == 1 else img[..., :3]
            y0, x0 = pad + i * (h + pad), pad + j * (w + pad)
            grid[y0 : y0 + h, x0 : x0 + w] = img
    if scale is None:
        scale = max(1, 480 // max(grid.shape[:2]))
    grid = np.kron(grid, np.ones((scale, scale, 1), np.float32))
    return (grid * 255).round().astype(np.uint8)


def save_image_grid(
    path: str | Path, images: ArrayLike, labels: ArrayLike, preprocessor: Preprocessor
) -> Path:
    """PNG grid of the images, un-whitened and un-standardised for viewing."""
    from PIL import Image

    viewable = preprocessor.inverse(images)
    # Distilled images can leave the data range; stretch per image to stay visible.
    lo = np.minimum(viewable.min(axis=(1, 2, 3), keepdims=True), 0.0)
    hi = np.maximum(viewable.max(axis=(1, 2, 3), keepdims=True), 1.0)
    grid = Image.fromarray(image_grid((viewable - lo) / (hi - lo), np.asarray(labels)))
    with _replaced_atomically(path) as temporary:
        grid.save(temporary, format="PNG")
    return Path(path)


def save_curves(path: str | Path, history: list[dict[str, float]], title: str = "") -> Path | None:
    """Training curves (outer loss, target-batch accuracy, inner loss) as a PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(
        axes,
        ("outer_loss", "target_acc", "inner_loss"),
        ("outer loss", "target-batch accuracy", "inner loss"),
        strict=True,
    ):
        ax.plot(steps, [h[key] for h in history])
        ax.set_xlabel("meta-iteration")
        ax.set_title(label)
        if key == "inner_loss":
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    with _replaced_atomically(path) as temporary:
        fig.savefig(temporary, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def save_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    with _replaced_atomically(path) as temporary:
        temporary.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return Path(path)


@contextlib.contextmanager
def _replaced_atomically(path: str | Path) -> Iterator[Path]:
    """Write to a temporary file beside ``path``, then replace ``path`` by it in one step: a
    process killed mid-write leaves the previous file, never a truncated one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_sweep_figure(path: str | Path, cells: list[dict[str, Any]], title: str = "") -> Path:
    """Two heat maps over (n_inner, n_hessian): seconds per iteration and test accuracy (the
    shape of the paper's Figures 1 and 2); a missing cell is blank. Accuracy cells also show the
    spread over evaluation models (``acc_std``), so that a colour difference smaller than the
    noise reads as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inner = sorted({c["n_inner"] for c in cells})
    hessian = sorted({c["n_hessian"] for c in cells})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "seconds_per_iteration", "seconds per iteration"),
        (axes[1], "acc_mean", "test accuracy (%)"),
    ):
        grid = np.full((len(inner), len(hessian)), np.nan)
        spread = np.full_like(grid, np.nan)
        for c in cells:
            if c.get(key) is not None:
                where = inner.index(c["n_inner"]), hessian.index(c["n_hessian"])
                grid[where] = c[key]
                if key == "acc_mean" and c.get("acc_std") is not None:
                    spread[where] = c["acc_std"]
        image = ax.imshow(grid, origin="lower", cmap="viridis")
        for i in range(len(inner)):
            for j in range(len(hessian)):
                if np.isfinite(grid[i, j]):
                    text = f"{grid[i, j]:.3g}"
                    if np.isfinite(spread[i, j]):
                        text = f"{grid[i, j]:.1f}\n± {spread[i, j]:.1f}"
                    ax.text(j, i, text, ha="center", va="center", color="w")
        ax.set_xticks(range(len(hessian)), [str(h) for h in hessian])
        ax.set_yticks(range(len(inner)), [str(n) for n in inner])
        ax.set(xlabel="n_H (Hessian-inverse steps)", ylabel="n_inner (inner steps)", title=label)
        fig.colorbar(image, ax=ax)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
