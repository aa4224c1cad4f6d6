"""Data parallelism: the sharded step gives the single-device meta-gradient (4 CPU devices).

The device count is fixed when jax starts, so the check runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from distillation.algorithms import LearningRates, SupportSet, meta_loss, rcig
    from distillation.data import load_dataset
    from distillation.models import conv_net
    from distillation.distill import (DistillConfig, data_parallel_mesh, init_state, init_support,
                                      make_pool, make_step, shard_state)
    from jax.sharding import NamedSharding, PartitionSpec as P

    assert jax.device_count() == 4, jax.devices()
    data = load_dataset("digits")
    config = DistillConfig(pool_size=4, target_batch=64, width=8, reset_every=5)
    algorithm = rcig(n_inner=5, n_hessian=5)
    pool = make_pool(data.image_shape, 10, config)
    support = init_support(data.x_train, data.y_train, 10, 2, key=jax.random.key(0))
    state = init_state(support, pool, config, key=jax.random.key(1))
    x = jnp.asarray(data.x_train)
    y = jax.nn.one_hot(jnp.asarray(data.y_train), 10)
    mesh = data_parallel_mesh()

    # 1. The meta-gradient itself, target batch split over 4 devices vs on one device, in
    #    float64 so that only the summation order differs.
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
        model0 = conv_net(data.image_shape, 10, key=jax.random.key(5), width=8,
                          dtype=jnp.float64)
        sup64 = f64(support)
        lrs = LearningRates(jnp.asarray(1e-2), jnp.asarray(1e-2))
        grad_fn = jax.jit(jax.grad(lambda s, xt, yt: meta_loss(
            s, algorithm, model0, xt, yt, jnp.asarray(0.01), lrs)[0]))
        xt, yt = f64(x[:64]), f64(y[:64])
        single = grad_fn(sup64, xt, yt)
        split = NamedSharding(mesh, P("data"))
        xt_s, yt_s = jax.device_put(xt, split), jax.device_put(yt, split)
        assert len(xt_s.sharding.device_set) == 4
        sharded = grad_fn(sup64, xt_s, yt_s)
        for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(sharded)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
        assert float(jnp.linalg.norm(single.images)) > 0

    # 2. The whole step in float32: pool split over devices, target batch sharded inside the
    #    step. Summation order differs, and Adam-type updates amplify it slightly.
    step_single = jax.jit(make_step(algorithm, pool, config))
    step_sharded = jax.jit(make_step(algorithm, pool, config, mesh=mesh))
    s1, s4 = state, shard_state(state, mesh)
    assert len(s4.pool.ages.sharding.device_set) == 4
    for _ in range(3):
        s1, m1 = step_single(s1, x, y)
        s4, m4 = step_sharded(s4, x, y)
        np.testing.assert_allclose(float(m1["outer_loss"]), float(m4["outer_loss"]), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(s1.support.images), np.asarray(s4.support.images),
                               rtol=1e-3, atol=1e-5)
    print("SHARDING-OK")
    """
)


def test_sharded_step_matches_single_device():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SHARDING-OK" in proc.stdout


def test_mesh_rejects_indivisible_sizes():
    import types

    import pytest

    from distillation.algorithms import rcig
    from distillation.distill import DistillConfig, make_pool, make_step

    config = DistillConfig(target_batch=10, width=4, pool_size=3)
    pool = make_pool((8, 8, 1), 10, config)
    three_devices = types.SimpleNamespace(size=3)  # only the size is read before the check
    with pytest.raises(ValueError, match="target_batch=10 must be divisible by the 3 devices"):
        make_step(rcig(), pool, config, mesh=three_devices)
