"""``distillation`` makes XLA:CPU use its own convolution kernels (``distillation/_xla_cpu.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from distillation._xla_cpu import (
    KEEP_ENV,
    YNN_FLAGS,
    _jaxlib_version,
    prefer_xla_convolutions,
)

TESTED = (0, 10) <= _jaxlib_version()[:2] < (0, 11)


def test_adds_the_flag_after_existing_ones():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert prefer_xla_convolutions(env, version=(0, 10, 2))
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {YNN_FLAGS}"
    empty: dict[str, str] = {}
    assert prefer_xla_convolutions(empty, version=(0, 10, 0))
    assert empty["XLA_FLAGS"] == YNN_FLAGS


@pytest.mark.parametrize(
    "env, version",
    [
        ({KEEP_ENV: "1"}, (0, 10, 2)),  # the user keeps XLA's defaults
        (
            {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"},
            (0, 10, 2),
        ),
        ({}, (0, 9, 9)),  # the flag is not known to exist there: XLA would stop on it
        ({}, (0, 11, 0)),
    ],
)
def test_leaves_the_environment_alone(env, version):
    before = dict(env)
    assert not prefer_xla_convolutions(env, version=version)
    assert env == before


_CHILD = """
import json, sys
import numpy as np
import distillation, jax, jax.numpy as jnp, os
from distillation._models import conv2d
kx, kw = jax.random.split(jax.random.key(0))
x = jax.random.normal(kx, (4, 14, 14, 32))
w = jax.random.normal(kw, (3, 3, 32, 32))
f = jax.jit(lambda x, w: conv2d(x, w, 1))
hlo = f.lower(x, w).compile().as_text()
np.save(sys.argv[1], np.asarray(f(x, w)))
print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS"), "ynn": "ynn_fusion" in hlo}))
"""


def _child(tmp_path, name: str, keep: bool) -> tuple[dict, np.ndarray]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", KEEP_ENV)}
    if keep:
        env[KEEP_ENV] = "1"
    out = tmp_path / f"{name}.npy"
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), np.load(out)


@pytest.mark.skipif(not TESTED, reason="the flag is only added on jaxlib 0.10")
def test_import_moves_convolutions_off_ynnpack_with_the_same_result(tmp_path):
    ours, y = _child(tmp_path, "ours", keep=False)
    kept, y_default = _child(tmp_path, "kept", keep=True)
    # XLA accepted the flag (the process ran) and the compiled convolution left YNNPACK ...
    assert ours["xla_flags"] == YNN_FLAGS and not ours["ynn"]
    assert kept["xla_flags"] is None
    # same convolution up to float32 summation order: 9·32 products of unit normals per output
    terms = 9 * 32
    tol = 4 * np.finfo(np.float32).eps * terms * np.sqrt(terms)
    assert np.max(np.abs(y - y_default)) <= tol, np.max(np.abs(y - y_default))
    assert np.max(np.abs(y)) > 1.0  # a real convolution, not zeros
    # ... and XLA's default did use YNNPACK for it (its choice at compile time, which may depend
    # on the CPU: where it does not, the flag had nothing to move, and the test says so)
    if not kept["ynn"]:
        pytest.skip("XLA's default did not compile this convolution through YNNPACK on this CPU")


_BROADCAST_KERNEL = """
import json, sys
import numpy as np
import distillation, jax, jax.numpy as jnp, os
from distillation._models import conv2d
x = jax.random.normal(jax.random.key(3), (10, 32, 32, 3))
s = jnp.float32(1e-3)
# 2x2 mean pooling as a reduction over the window axes (the package's own avg_pool2 was this
# until 2026-12-05 and is now a reduce_window, which the bug does not reach)
mean_pool = lambda y: y.reshape(10, 16, 2, 16, 2, 32).mean((2, 4))
pooled = lambda x, w: mean_pool(conv2d(x, w, 1))
# the kernel a broadcast scalar inside the program, and the same kernel given as an argument
inside = jax.jit(lambda x, s: pooled(x, jnp.broadcast_to(s, (3, 3, 3, 32))))(x, s)
given = jax.jit(pooled)(x, jnp.full((3, 3, 3, 32), s))
# float64 reference: every output of a constant kernel is s times the sum of its 3x3x3 window
xp = np.pad(np.asarray(x, np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
win = sum(xp[:, i:i + 32, j:j + 32].sum(-1) for i in range(3) for j in range(3)) * 1e-3
ref = win.reshape(10, 16, 2, 16, 2).mean((2, 4))[..., None].repeat(32, -1)
err = lambda y: float(np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max())
print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS"), "inside": err(inside),
                  "given": err(given)}))
"""


@pytest.mark.skipif(not TESTED, reason="the flag is only added on jaxlib 0.10")
def test_a_broadcast_kernel_convolution_then_pooling_is_right_with_the_package_flags():
    """XLA's default YNNPACK reduce fusion computes a convolution with a broadcast-scalar
    kernel followed by a reduction wrongly (86 % off on this project's CPU: the reason for
    ``-reduce`` in ``YNN_FLAGS``). With the flags importing ``distillation`` sets, the jitted
    program equals a float64 reference to float32 rounding (27-term sums, then 4-term means)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", KEEP_ENV)}
    run = subprocess.run(
        [sys.executable, "-c", _BROADCAST_KERNEL],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["xla_flags"] == YNN_FLAGS
    # relative to the largest output; the windows hold 27 unit normals (some cancel, hence ×8)
    tol = 8 * 27 * np.finfo(np.float32).eps
    assert out["given"] <= tol, out
    assert out["inside"] <= tol, out
