"""Input checks shared by the package's settings objects (one implementation each)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(where: str, name: str, value: Any, minimum: int = 1) -> None:
    """Raise ``ValueError("<where>: `<name>` must be a positive integer, got 0.")`` unless
    ``value`` is an ``int`` (not a ``bool``) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{where}: `{name}` must be {expected}, got {value!r}.")


def one_hot(indices: Any, num_classes: int) -> np.ndarray:
    """Float32 one-hot rows of integer class ``indices`` (the one place labels are expanded).

    Raises:
        ValueError: an index outside ``0 … num_classes − 1``.
    """
    indices = np.asarray(indices)
    if indices.size and (indices.min() < 0 or indices.max() >= num_classes):
        bad = indices[(indices < 0) | (indices >= num_classes)][0]
        raise ValueError(
            f"class index {int(bad)} is outside the {num_classes} classes (0 to {num_classes - 1})."
        )
    return np.eye(num_classes, dtype=np.float32)[indices.astype(np.int64)]
