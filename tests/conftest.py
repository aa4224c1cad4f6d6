"""Shared fixtures and the suite-wide numerical strictness, in the manner of equinox/lineax.

* ``jax_numpy_rank_promotion="raise"``: an implicit broadcast between arrays of different rank
  (``(n,) + (n, 1)``) is an error, not a silently wrong ``(n, n)`` result.
* ``jax_numpy_dtype_promotion="strict"``: mixing ``float32`` and ``float64`` (or ints and floats)
  arrays is an error; only Python scalars (weakly typed) promote.
* Runtime checking of the jaxtyping annotations of ``bilevel`` and ``distillation`` comes from the
  ``--jaxtyping-packages`` option in ``pyproject.toml`` (jaxtyping's pytest plugin installs its
  import hook before the packages are first imported; this file therefore imports neither at
  module level).

Gradient checks run in float64 inside the ``x64`` fixture.

* The suite compiles hundreds of small programs, and most of its time is XLA compiling them, the
  larger part in LLVM's optimisation passes. The tests therefore run with
  ``--xla_backend_optimization_level=0`` (the same HLO, the same operations, less optimised
  machine code): the fast suite took 179-194 s instead of 232 s with it (2026-12-03, 2 cores, two
  workers). ``RCIG_TEST_XLA_OPT=1`` keeps XLA's default level, as do ``XLA_FLAGS`` that set it.
  This must happen before JAX creates its CPU backend, hence here, before anything computes.
"""

from __future__ import annotations

import itertools
import os

if os.environ.get("RCIG_TEST_XLA_OPT") != "1" and "xla_backend_optimization_level" not in (
    os.environ.get("XLA_FLAGS", "")
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def getkey():
    """``getkey()`` returns a new PRNG key on every call; the sequence is the same in every run."""
    counter = itertools.count()
    base = jax.random.key(0)
    return lambda: jax.random.fold_in(base, next(counter))


FAST_SOLVERS = frozenset({"Dense", "CG", "GMRES", "AdamQuadratic"})


def all_linear_solvers(symmetric: bool = True, fast=FAST_SOLVERS):
    """Every linear solver, with the settings the gradient tests use (one list for all tests);
    ``symmetric=False``: only those correct for a general (non-symmetric) operator.

    Solvers not in ``fast`` carry the ``slow`` mark: the fast suite covers a direct solver, the
    symmetric and the general Krylov solver (and RCIG's AdamQuadratic); ``pytest -m slow`` runs
    the rest of the list.

    BiCGStab is tested on its own (tests/test_autodiff_modes.py): lineax's implementation breaks
    down (0/0) on the tiny problems here, which a Krylov method solves exactly in n steps."""
    import bilevel

    general = [
        ("Dense", bilevel.Dense()),
        ("LU", bilevel.LU()),
        ("GMRES", bilevel.GMRES(rtol=1e-12)),
        ("NormalCG", bilevel.NormalCG(rtol=1e-12)),
    ]
    symmetric_only = [
        ("CG", bilevel.CG(rtol=1e-12)),
        ("Neumann", bilevel.Neumann()),
        ("AdamQuadratic", bilevel.AdamQuadratic()),
    ]
    chosen = general + symmetric_only if symmetric else general
    return [
        pytest.param(solve, id=name, marks=() if name in fast else pytest.mark.slow)
        for name, solve in chosen
    ]


@pytest.fixture
def unchecked_types():
    """Turns the runtime jaxtyping checks off, for tests of the errors a user sees: users run
    without the import hook, so the library's own validation must produce those errors."""
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
