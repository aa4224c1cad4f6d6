"""Two or more builds of the RCIG step timed in one process, interleaved (the A/B benchmarks'
shared part: ``softplus_rule.py``, ``bias_gradient.py``, ``pool_scale.py``, ``pool_loop.py``).

Each variant is the default step traced while attributes of ``distillation._models`` are
swapped for the variant's (``patch``); every variant starts from the same state (built from the
same keys), takes one warm-up step whose result is kept for comparison, then the variants take
``steps`` timed steps each in turn, ``rounds`` times, the order reversed every other round (since
2026-12-05 evening; earlier results ran the variants in a fixed order), so that a drift in the
machine's speed falls on all of them alike. Two copies of one build differ by up to 3 % in such
a run (``ab_position.py``): smaller ratios are not resolved by one run.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from flops_memory import _setup

from distillation import _models
from distillation._algorithms import rcig


def build(dataset, width: int, patch: dict[str, object], module=_models):
    """The compiled default RCIG step (1 ipc) traced with ``module``'s attributes (default
    ``distillation._models``) in ``patch``."""
    saved = {name: getattr(module, name) for name in patch}
    for name, value in patch.items():
        setattr(module, name, value)
    try:
        step, state, x, y = _setup(dataset, width, 1, rcig())
        compiled = step.lower(state, x, y).compile()
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
    return compiled, state, x, y


def rel(a, b) -> float:
    """``‖a − b‖ / ‖b‖`` in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def interleaved(
    variants: dict, steps: int, rounds: int, tag: str = "", alternate: bool = True
) -> dict:
    """Time ``variants`` (label → ``build``'s tuple) interleaved (``alternate=False``: in the
    same order every round, as before 2026-12-05 evening). Returns the mean seconds per step
    overall and by round, and each variant's support images and outer loss after its (untimed)
    first step, and its pool models' weights then (``first_pool``, flattened)."""
    states, first, first_pool = {}, {}, {}
    for label, (compiled, state, x, y) in variants.items():
        state, aux = jax.block_until_ready(compiled(state, x, y))
        first[label] = (np.asarray(state.support.images), float(np.asarray(aux["outer_loss"])))
        leaves = jax.tree_util.tree_leaves(state.pool.models)
        first_pool[label] = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
        states[label] = state
    times: dict[str, list[float]] = {label: [] for label in variants}
    labels = list(variants)
    for r in range(rounds):
        # The order alternates by round (A B, B A, …), a precaution against an advantage of
        # either position; A/A tests of one build against itself differed by up to 3 % in
        # either order (benchmarks/ab_position.py; docs/performance.md, "The noise floor of
        # the A/B timings").
        for label in labels if (r % 2 == 0 or not alternate) else labels[::-1]:
            compiled, _, x, y = variants[label]
            state = states[label]
            for _ in range(steps):
                t0 = time.perf_counter()
                state, _aux = jax.block_until_ready(compiled(state, x, y))
                times[label].append(time.perf_counter() - t0)
            states[label] = state
        print(tag, {k: round(float(np.mean(v)), 3) for k, v in times.items()}, flush=True)
    return {
        "s_per_step": {k: float(np.mean(v)) for k, v in times.items()},
        "s_per_step_by_round": {
            k: [float(np.mean(v[i * steps : (i + 1) * steps])) for i in range(rounds)]
            for k, v in times.items()
        },
        "first_step": first,
        "first_pool": first_pool,
    }
