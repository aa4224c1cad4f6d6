"""Import a distilled set written by the authors' released RCIG code (GitHub ``yolky/RCIG``).

Their ``distill_dataset.py`` saves its state with ``flax.training.checkpoints`` as one msgpack
file (``checkpoint_15000``, ``checkpoint_final``, ...): a map holding ``params`` (the support set
as optimised) and ``ema_average`` (its exponential moving average, decay 0.99), each with
``x_proto`` ``(N, H, W, C)`` (images in model-input space), ``y_proto`` ``(N, K)`` (learned labels)
and ``log_temp`` (the learned temperature). Their ``eval.py`` evaluates ``ema_average``, and so does
the import by default.

The reader here is this project's own (no flax needed): flax's msgpack format stores each array
as msgpack extension type 1 holding ``(shape, dtype name, C-order bytes)``, a NumPy scalar as
type 3 ``(dtype name, bytes)`` and a complex number as type 2 ``(real, imag)``.

Model-input space: their preprocessing is per-channel standardisation (fixed statistics, which
equal the training split's to the printed digits) for MNIST and Fashion-MNIST, and that followed
by ZCA whitening with strength 0.1 fitted on the training split for the RGB datasets; the import
attaches this project's preprocessing of the same dataset (:func:`distillation.load_dataset`,
which makes the same choices), so that ``rcig evaluate`` maps the test split to the same space.
Flip: their CIFAR config (``depth_3.txt``) trains on each image and its mirror, their MNIST config
(``depth_3_no_flip.txt``) does not; by default RGB sets get ``flip=True``, grayscale ones ``False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distillation.data._datasets import Preprocessor

_NDARRAY, _COMPLEX, _SCALAR = 1, 2, 3  # flax.serialization's msgpack extension codes


def read_flax_msgpack(path: str | Path) -> dict[str, Any]:
    """The state dict of a flax msgpack checkpoint file, with NumPy arrays as leaves.

    Raises:
        ValueError: the file is not a msgpack map, or uses an extension this reader does not know
            (flax's chunked storage of arrays over 1 GiB, for instance).
    """
    import msgpack

    path = Path(path)

    class UnknownExtension(ValueError):
        pass

    def ext_hook(code: int, data: bytes) -> Any:
        if code == _NDARRAY:
            shape, dtype, buffer = msgpack.unpackb(data, raw=False)
            return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape).copy()
        if code == _SCALAR:
            dtype, buffer = msgpack.unpackb(data, raw=False)
            return np.frombuffer(buffer, dtype=np.dtype(dtype))[0]
        if code == _COMPLEX:
            real, imag = msgpack.unpackb(data, raw=False)
            return complex(real, imag)
        raise UnknownExtension(
            f"{path}: unknown msgpack extension type {code} (not a flax checkpoint?)"
        )

    data = path.read_bytes()
    try:
        state = msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
    except UnknownExtension:
        raise
    except Exception as exc:  # msgpack's own errors, and arrays whose bytes do not fit
        raise ValueError(
            f"{path}: not a flax msgpack checkpoint ({type(exc).__name__}: {exc})."
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a flax msgpack checkpoint (top level is not a map).")
    if any(isinstance(v, dict) and "__msgpack_chunked_array__" in v for v in _walk(state)):
        raise ValueError(f"{path}: chunked arrays (over 1 GiB) are not supported.")
    return state


def _walk(tree: Any):
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from _walk(value)


def official_support(
    state: dict[str, Any], *, ema: bool = True, where: str = "checkpoint"
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(images, labels, log τ)`` of an official state dict: ``ema_average`` (what their
    ``eval.py`` evaluates) or, with ``ema=False``, ``params``; ``log τ = −log_temp`` (their
    logits are ``preds · e^{log_temp}``, ours ``outputs / τ``)."""
    entry_name = "ema_average" if ema else "params"
    entry = state.get(entry_name)
    if not isinstance(entry, dict):
        raise ValueError(
            f"{where}: no '{entry_name}' entry (keys: {sorted(state)}); expected a checkpoint "
            "of the official RCIG code."
        )
    missing = [k for k in ("x_proto", "y_proto") if k not in entry]
    if missing:
        raise ValueError(f"{where}: '{entry_name}' lacks {missing} (keys: {sorted(entry)}).")
    images = np.asarray(entry["x_proto"], np.float32)
    labels = np.asarray(entry["y_proto"], np.float32)
    if images.ndim != 4 or labels.ndim != 2 or len(images) != len(labels):
        raise ValueError(
            f"{where}: x_proto {images.shape} and y_proto {labels.shape} must be (N, H, W, C) "
            "and (N, K) with the same N."
        )
    if not (np.all(np.isfinite(images)) and np.all(np.isfinite(labels))):
        raise ValueError(f"{where}: '{entry_name}' holds NaN or inf.")
    # Theirs scales the logits by e^s (``preds * exp(log_temp)``), ours divides them by
    # τ = e^{log τ}: log τ = −s.
    log_temperature = -float(np.asarray(entry.get("log_temp", 0.0)).reshape(()))
    return images, labels, log_temperature


def import_official(
    checkpoint: str | Path,
    out: str | Path,
    preprocessor: Preprocessor,
    *,
    image_shape: tuple[int, ...],
    num_classes: int,
    ema: bool = True,
    flip: bool | None = None,
    dataset: str = "",
) -> Path:
    """Convert an official checkpoint to this project's export format (``out``, an ``.npz``).

    Args:
        checkpoint: the official msgpack file.
        out: where to write the ``.npz``.
        preprocessor: the dataset's preprocessing (model-input space of the images).
        image_shape: ``(H, W, C)`` of the dataset, checked against the checkpoint's images.
        num_classes: the dataset's class count, checked against the labels.
        ema: take ``ema_average`` (default, as their evaluation does) or ``params``.
        flip: train on mirrors too when evaluating; ``None``: yes for RGB, no for grayscale.
        dataset: recorded in the file's config.
    """
    from distillation.data._export import save_distilled

    checkpoint = Path(checkpoint)
    state = read_flax_msgpack(checkpoint)
    images, labels, log_temperature = official_support(state, ema=ema, where=str(checkpoint))
    if images.shape[1:] != tuple(image_shape):
        raise ValueError(
            f"{checkpoint}: images of shape {images.shape[1:]}, but the dataset's are "
            f"{tuple(image_shape)}."
        )
    if labels.shape[1] != num_classes:
        raise ValueError(
            f"{checkpoint}: labels for {labels.shape[1]} classes, but the dataset has "
            f"{num_classes}."
        )
    if flip is None:
        flip = images.shape[-1] == 3
    step = state.get("step")
    config = {
        "source": "official RCIG checkpoint (github.com/yolky/RCIG)",
        "checkpoint": checkpoint.name,
        "entry": "ema_average" if ema else "params",
        "step": None if step is None else int(np.asarray(step)),
        "dataset": dataset,
        "method": "rcig-official",
        "ipc": int(len(images) // num_classes),
    }
    return save_distilled(
        out,
        images,
        labels,
        preprocessor,
        flip=flip,
        log_temperature=log_temperature,
        config=config,
    )
