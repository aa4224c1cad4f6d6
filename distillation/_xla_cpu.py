"""XLA:CPU's YNNPACK fusions: this package keeps convolutions and reductions out of them.

XLA (jaxlib 0.10) on CPU hands work to the YNNPACK library in "fusions" of several kinds
(``--xla_cpu_experimental_ynn_fusion_type``: ``individual_convolution``, ``reduce``,
``eltwise``, ``dot``, ``individual_dot``). Importing :mod:`distillation` turns two of them off:

* ``-individual_convolution``: on the 2-core Xeon this project is measured on, XLA's own
  (Eigen) kernels run the same 3×3 convolutions 1.3–2.2× faster: the ConvNet's middle layer
  2.1× (width 32) and 1.3× (width 128), an evaluation training step 1.5–2.1×
  (``benchmarks/cpu_conv_library.py``, docs/performance.md).
* ``-reduce``: **a YNNPACK reduce fusion that takes in a convolution computes wrong values when
  the convolution's kernel is a broadcast scalar** (every entry the same number, e.g. a zero
  displacement scaled by a learning rate at the first step of an unrolled solve): a 3×3
  convolution of 10 images with ``broadcast(s)`` followed by the ConvNet's 2×2 mean pooling,
  jitted, is 86 % off the same function run op by op, and whole RCIG meta-gradients came out
  ``nan``/``inf`` or off by orders of magnitude, differently in every process
  (``tests/test_xla_cpu.py`` holds the reproduction; docs/performance.md). The default step
  was not hit (it matched the released code to float32 rounding), but any program can be, so
  correctness wins: the flag costs 1.3× per RCIG iteration at width 32 on this CPU.

The results are otherwise the same up to float32 rounding (summation order). Importing
:mod:`distillation` (which imports this module first) adds :data:`YNN_FLAGS` to ``XLA_FLAGS``
(read by XLA when its first backend starts, so it takes effect when nothing has run on JAX
before the import), unless

* ``RCIG_KEEP_XLA_FLAGS`` is set to a non-empty value (keep XLA's defaults, YNNPACK reduce
  fusions and the wrong values above included),
* ``XLA_FLAGS`` already sets ``ynn_fusion_type`` (the user's choice wins), or
* the installed jaxlib is not a 0.10 release: the flag is experimental and XLA stops the process
  on an unknown flag, so it is only added where it was measured to exist.

It changes nothing on GPUs (a CPU-only option).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

YNN_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce"
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
    """Add :data:`YNN_FLAGS` to ``environ["XLA_FLAGS"]`` (default ``os.environ``) unless
    one of the module docstring's exceptions holds; return whether it was added.

    Example:
        >>> env = {}
        >>> prefer_xla_convolutions(env, version=(0, 10, 2))
        True
        >>> env["XLA_FLAGS"] == YNN_FLAGS
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
    environ["XLA_FLAGS"] = f"{flags} {YNN_FLAGS}".strip()
    return True


prefer_xla_convolutions()
