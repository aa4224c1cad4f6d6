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
    YNN_CONVOLUTION_OFF,
    _jaxlib_version,
    prefer_xla_convolutions,
)

TESTED = (0, 10) <= _jaxlib_version()[:2] < (0, 11)


def test_adds_the_flag_after_existing_ones():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert prefer_xla_convolutions(env, version=(0, 10, 2))
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {YNN_CONVOLUTION_OFF}"
    empty: dict[str, str] = {}
    assert prefer_xla_convolutions(empty, version=(0, 10, 0))
    assert empty["XLA_FLAGS"] == YNN_CONVOLUTION_OFF


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
    assert ours["xla_flags"] == YNN_CONVOLUTION_OFF and not ours["ynn"]
    # ... which XLA uses by default on these versions
    assert kept["xla_flags"] is None and kept["ynn"]
    # same convolution up to float32 summation order: 9·32 products of unit normals per output
    terms = 9 * 32
    tol = 4 * np.finfo(np.float32).eps * terms * np.sqrt(terms)
    assert np.max(np.abs(y - y_default)) <= tol, np.max(np.abs(y - y_default))
    assert np.max(np.abs(y)) > 1.0  # a real convolution, not zeros
