"""The compiled programs a run uses against the same programs with rolled loops.

XLA's CPU algebraic simplifier (jax/jaxlib 0.10.2) miscompiles one program built from the
unrolled inner solve: the pre-round's inner-only probe (``preround_probe(hessian=False)``) on
28×28 images at width ≥ 16 returns garbage for its loss trace (NaN, ±inf or 1e33 first values,
then no progress), where the rolled loop, or XLA with the simplifier off, gives the right
trace (``benchmarks/preround_trace.py``, ``docs/fidelity.md``). Unrolling stays the default
for its speed (``inner_solver``), so these check the programs a run does use, at that size,
against rolled loops, which compile to different code: a miscompile of that kind would not
agree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import rel_err, tree_ravel

from distillation._algorithms import rcig
from distillation._distill import DistillConfig, Distiller, _sample_target, init_support
from distillation._tuning import solve_traces


def _distillers(config):
    made = {}
    for unroll in (None, False):  # None: the default, unrolled (20 <= MAX_UNROLL)
        algorithm = rcig(unroll=unroll, inner_lr=1e-3, hessian_lr=10.0)
        made[unroll] = Distiller.build(algorithm, config, image_shape=(28, 28, 1), num_classes=10)
    return made


# slow: four compiled programs at width 32 on 28×28 images (~2 min on 2 cores)
@pytest.mark.slow
def test_the_unrolled_step_and_probe_agree_with_rolled_loops():
    key = jax.random.key(0)
    x = np.asarray(jax.random.normal(key, (200, 28, 28, 1)), np.float32)
    y = np.arange(200) % 10
    config = DistillConfig(width=32, pool_size=2, target_batch=64, flip=False)
    support = init_support(x, y, 10, 1, key=jax.random.key(1), center_labels=True)
    x_dev, y_dev = jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), 10)
    traces, steps = {}, {}
    for unroll, distiller in _distillers(config).items():
        state = distiller.init(support, key=jax.random.key(2))

        def probe_traces(state, distiller=distiller):
            model0 = distiller.pool.make_model(jax.random.key(3))
            x_t, y_t = _sample_target(jax.random.key(4), x_dev, y_dev, config)
            problem = distiller._probe_problem(state, model0)
            return solve_traces(state.algorithm, problem, x_t, y_t, state.support.log_temperature)

        traces[unroll] = jax.jit(probe_traces)(state)
        step = jax.jit(distiller.step)
        for _ in range(2):
            state, metrics = step(state, distiller.next_batch(state, x_dev, y_dev))
        steps[unroll] = (metrics, state.support)
    for a, b in zip(traces[None], traces[False], strict=True):  # inner, Hessian-inverse
        assert np.all(np.isfinite(a)) and a.shape == b.shape == (21,)
        assert rel_err(a, b) < 1e-4
    assert traces[None][0][0] > traces[None][0][-1]  # the inner solve made progress
    for name in ("outer_loss", "inner_loss", "direct_norm", "implicit_norm"):
        assert float(steps[None][0][name]) == pytest.approx(float(steps[False][0][name]), rel=1e-3)
    assert rel_err(tree_ravel(steps[None][1]), tree_ravel(steps[False][1])) < 1e-4
