"""``reuse_host_memory``: XLA:CPU's per-execution buffer kept in glibc's heap (no page faults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from distillation import reuse_host_memory
from distillation._host_memory import _glibc

ROOT = Path(__file__).resolve().parents[1]

# A program with a large temporary buffer (an intermediate of 48 Mi elements kept whole by an
# optimization barrier: XLA's buffer is ~93 MiB, more than a glibc thread heap's 64 MiB), run a
# few times; the child reports the page faults of the runs after the first.
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from distillation import reuse_host_memory
    applied = reuse_host_memory()
    import jax, jax.numpy as jnp

    @jax.jit
    def f(x):
        y = jax.lax.optimization_barrier(x * 2.0 + 1.0)
        return (y * y)[::3].sum() + y[1::7].sum()

    x = jnp.linspace(0.0, 1e-6, 48 * 2**20, dtype=jnp.float32)
    compiled = f.lower(x).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    out = [float(compiled(x))]
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        out.append(float(compiled(x)))
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 3
    print("RESULT " + json.dumps(
        {"applied": applied, "temp": temp, "faults": faults, "out": out,
         "dispatch": jax.config.values["jax_cpu_enable_async_dispatch"]}))
    """
)


# settings of the caller's that would change what the child measures
_UNSET = ("RCIG_HOST_MEMORY", "GLIBC_TUNABLES", "JAX_CPU_ENABLE_ASYNC_DISPATCH", "LD_PRELOAD")


def _huge_pages_by_default() -> bool:
    """Whether anonymous memory gets transparent huge pages without asking: the global setting
    at ``always``, or one of the multi-size settings (Linux 6.8+) at ``always`` (or ``inherit``
    from a global ``always``)."""
    thp = Path("/sys/kernel/mm/transparent_hugepage")
    if not thp.exists():
        return False
    global_always = "[always]" in (thp / "enabled").read_text()
    sizes = [p.read_text() for p in thp.glob("hugepages-*/enabled")]
    if not sizes:
        return global_always
    return any("[always]" in s or (global_always and "[inherit]" in s) for s in sizes)


def _child(**env) -> dict:
    environ = {
        k: v for k, v in os.environ.items() if k not in _UNSET and not k.startswith("MALLOC_")
    }
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=dict(environ, JAX_PLATFORMS="cpu", **env),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.skipif(_glibc() is None, reason="needs glibc's mallopt (Linux)")
def test_reuse_host_memory_keeps_the_step_buffer_mapped_and_changes_no_value():
    kept = _child()
    system = _child(RCIG_HOST_MEMORY="system")
    assert kept["applied"] is True and kept["dispatch"] is False
    assert system["applied"] is False and system["dispatch"] is True
    assert kept["temp"] > 64 * 2**20, kept  # more than a glibc thread heap would hold
    pages = kept["temp"] / os.sysconf("SC_PAGE_SIZE")
    # reused: fewer faults per run than an eighth of the buffer's pages
    assert kept["faults"] < pages / 8, (kept, pages)
    if not _huge_pages_by_default():
        # without the setting every run maps the buffer anew: one fault per page (with
        # transparent huge pages on by default, one per huge page, and the comparison says little)
        assert system["faults"] > pages / 2, (system, pages)
        assert kept["faults"] < system["faults"] / 8, (kept, system)
    assert kept["out"] == system["out"]  # the same programs: the same values, bit for bit


def test_reuse_host_memory_does_nothing_once_jax_has_started_or_when_asked():
    jnp.zeros(1).block_until_ready()  # this test process's backends have started
    # (an in-process `rcig` test may have applied the setting before JAX started in this
    # worker: set it to the default here, which changes nothing once the client exists)
    before = jax.config.values["jax_cpu_enable_async_dispatch"]
    jax.config.update("jax_cpu_enable_async_dispatch", True)
    try:
        assert reuse_host_memory({}) is False
        assert jax.config.values["jax_cpu_enable_async_dispatch"] is True  # left as it was
    finally:
        jax.config.update("jax_cpu_enable_async_dispatch", before)
    assert reuse_host_memory({"RCIG_HOST_MEMORY": "system"}) is False


def test_reuse_host_memory_names_a_bad_setting():
    with pytest.raises(ValueError, match=r"RCIG_HOST_MEMORY='keep'.*'reuse'.*'system'"):
        reuse_host_memory({"RCIG_HOST_MEMORY": "keep"})


def test_rcig_names_a_bad_host_memory_setting_before_running(monkeypatch, tmp_path, capsys):
    from distillation.cli._commands import main

    monkeypatch.setenv("RCIG_HOST_MEMORY", "huge")
    assert main(["evaluate", str(tmp_path / "absent.npz"), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert "RCIG_HOST_MEMORY='huge': expected 'reuse' (the default) or 'system'" in err
