"""XLA:CPU's convolution kernels: this package prefers XLA's own to the YNNPACK library's.

XLA (jaxlib 0.10) on CPU hands 3×3 convolutions with padding ≤ 1 to YNNPACK by default. On the
2-core Xeon this project is measured on, XLA's own (Eigen) kernels run the same convolutions
1.3–2.2× faster: the ConvNet's middle layer 2.1× (width 32) and 1.3× (width 128), an evaluation
training step 2.1× (ConvNet), 1.9× (ResNet-18), 1.5× (VGG-11), 1.7× (AlexNet), an RCIG iteration
at the side-by-side settings 1.4× (``benchmarks/cpu_conv_library.py``, docs/results.md). The
results are the same up to float32 rounding (the summation order of a convolution).

Importing :mod:`distillation` (which imports this module first) therefore adds
:data:`YNN_CONVOLUTION_OFF` to ``XLA_FLAGS`` (read by XLA when its first backend starts, so it
takes effect when nothing has run on JAX before the import), unless

* ``RCIG_KEEP_XLA_FLAGS`` is set to a non-empty value (keep XLA's defaults),
* ``XLA_FLAGS`` already sets ``ynn_fusion_type`` (the user's choice wins), or
* the installed jaxlib is not a 0.10 release: the flag is experimental and XLA stops the process
  on an unknown flag, so it is only added where it was measured to exist.

It changes nothing on GPUs (a CPU-only option).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

YNN_CONVOLUTION_OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
KEEP_ENV = "RCIG_KEEP_XLA_FLAGS"
_TESTED = ((0, 10), (0, 11))  # jaxlib releases [0.10, 0.11) have the flag


def _jaxlib_version() -> tuple[int, ...]:
    import jaxlib

    parts = []
    for piece in jaxlib.__version__.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def prefer_xla_convolutions(
    environ: MutableMapping[str, str] | None = None, version: tuple[int, ...] | None = None
) -> bool:
    """Add :data:`YNN_CONVOLUTION_OFF` to ``environ["XLA_FLAGS"]`` (default ``os.environ``) unless
    one of the module docstring's exceptions holds; return whether it was added.

    Example:
        >>> env = {}
        >>> prefer_xla_convolutions(env, version=(0, 10, 2))
        True
        >>> env["XLA_FLAGS"] == YNN_CONVOLUTION_OFF
        True
        >>> prefer_xla_convolutions({"RCIG_KEEP_XLA_FLAGS": "1"}, version=(0, 10, 2))
        False
    """
    environ = os.environ if environ is None else environ
    version = _jaxlib_version() if version is None else version
    flags = environ.get("XLA_FLAGS", "")
    if environ.get(KEEP_ENV) or "ynn_fusion_type" in flags:
        return False
    if not (_TESTED[0] <= tuple(version[:2]) < _TESTED[1]):
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNN_CONVOLUTION_OFF}".strip()
    return True


prefer_xla_convolutions()
