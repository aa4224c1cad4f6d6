"""Shared fixtures. Gradient checks run in float64 inside ``jax.enable_x64``."""

import jax
import pytest

import bilevel


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def all_linear_solvers():
    """Every linear solver, with the settings the gradient tests use (one list for all tests)."""
    return [
        pytest.param(bilevel.Dense(), id="Dense"),
        pytest.param(bilevel.CG(rtol=1e-12), id="CG"),
        pytest.param(bilevel.Neumann(), id="Neumann"),
        pytest.param(bilevel.AdamQuadratic(), id="AdamQuadratic"),
    ]
