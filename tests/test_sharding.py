"""Data parallelism: the sharded step gives the single-device meta-gradient (4 CPU devices).

The device count is fixed when jax starts, so the check runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from distillation._algorithms import SupportSet, meta_loss, rcig
    from distillation.data._datasets import load_dataset
    from distillation._models import conv_net
    from distillation._distill import (DistillConfig, Distiller, data_parallel_mesh, init_support,
                                      shard_state)
    from jax.sharding import NamedSharding, PartitionSpec as P

    assert jax.device_count() == 4, jax.devices()
    data = load_dataset("digits")
    config = DistillConfig(pool_size=4, target_batch=64, width=8, reset_every=5)
    algorithm = rcig(n_inner=5, n_hessian=5)
    distiller = Distiller.build(algorithm, config, image_shape=data.image_shape, num_classes=10)
    support = init_support(data.x_train, data.y_train, 10, 2, key=jax.random.key(0))
    state = distiller.init(support, key=jax.random.key(1))
    x = jnp.asarray(data.x_train)
    y = jax.nn.one_hot(jnp.asarray(data.y_train), 10)
    mesh = data_parallel_mesh()

    # 1. The meta-gradient itself, target batch split over 4 devices vs on one device, in
    #    float64 so that only the summation order differs. The target batch enters the
    #    meta-gradient through sums of 64 terms (the mean outer loss and its cotangents); each
    #    reordering moves a sum by at most ~64 eps64 ≈ 1.4e-14 relative, and the linear solves
    #    that follow (5 Adam steps) amplify that by their condition, far below 1e-9.
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
        model0 = conv_net(data.image_shape, 10, key=jax.random.key(5), width=8,
                          dtype=jnp.float64)
        sup64 = f64(support)
        alg64 = algorithm.with_learning_rates(jnp.asarray(1e-2), jnp.asarray(1e-2))
        grad_fn = jax.jit(jax.grad(lambda s, xt, yt: meta_loss(
            s, alg64, model0, xt, yt, jnp.asarray(0.01))[0]))
        xt, yt = f64(x[:64]), f64(y[:64])
        single = grad_fn(sup64, xt, yt)
        split = NamedSharding(mesh, P("data"))
        xt_s, yt_s = jax.device_put(xt, split), jax.device_put(yt, split)
        assert len(xt_s.sharding.device_set) == 4
        sharded = grad_fn(sup64, xt_s, yt_s)
        for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(sharded)):
            scale = float(jnp.max(jnp.abs(a)))
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9 * scale)
        assert float(jnp.linalg.norm(single.images)) > 0

    # 2. The whole step in float32: pool split over devices, target batch sharded inside the
    #    step. Only the first step's outer loss is compared: it is computed from the same state
    #    on both sides. Its error budget in float32: the mean of 64 per-example losses, whose
    #    reordering moves it by at most ~64 eps32 ≈ 8e-6 relative, plus the per-example forward
    #    passes and the inner solve, which XLA may compile with other kernels for a shard's
    #    shapes (dot products of ≤ 3·3·8 = 72 terms per layer, a few layers and a few Adam
    #    steps: a few hundred eps32 at worst). 1e-4 ≈ 840 eps32 covers both on any CPU, while
    #    a lost or doubled shard of 16 differently-labelled examples moves the mean far more.
    #    Later steps are not compared: Adam-type updates divide by running gradient magnitudes,
    #    so after a step the states differ by far more than the rounding, by an amount that
    #    depends on the CPU.
    sharded = Distiller.build(algorithm, config, image_shape=data.image_shape, num_classes=10,
                              mesh=mesh)
    step_single = jax.jit(distiller.step)
    step_sharded = jax.jit(sharded.step)
    s4 = shard_state(state, mesh)
    assert len(s4.pool.ages.sharding.device_set) == 4
    s1, m1 = step_single(state, distiller.next_batch(state, x, y))
    s4, m4 = step_sharded(s4, sharded.next_batch(s4, x, y))
    loss1, loss4 = float(m1["outer_loss"]), float(m4["outer_loss"])
    print(f"first-step outer loss: relative difference {abs(loss1 - loss4) / abs(loss1):.2e}")
    np.testing.assert_allclose(loss1, loss4, rtol=1e-4)
    assert len(s4.pool.ages.sharding.device_set) == 4  # the pool stays split after a step
    assert int(s4.step) == int(s1.step) == 1
    assert bool(jnp.all(jnp.isfinite(s4.support.images)))
    print("SHARDING-OK")
    """
)


@pytest.mark.slow
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


def test_mesh_rejects_indivisible_sizes(unchecked_types):
    import types

    from distillation._algorithms import rcig
    from distillation._distill import DistillConfig, Distiller

    config = DistillConfig(target_batch=10, width=4, pool_size=3)
    three_devices = types.SimpleNamespace(size=3)  # only the size is read before the check
    with pytest.raises(ValueError, match="target_batch=10 must be divisible by the 3 devices"):
        Distiller.build(rcig(), config, image_shape=(8, 8, 1), num_classes=10, mesh=three_devices)


CLI_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from distillation.cli import main
    from distillation.data._export import load_distilled

    out = sys.argv[1]
    common = ["--pool-size", "4", "--target-batch", "64", "--width", "8", "--n-inner", "2",
              "--n-hessian", "2", "--eval-models", "0", "--no-progress", "--ema", "0",
              "--lr-tuning", "none"]  # fixed rates: no discrete choice from rounding
    runs = (("4", "/four", "3"), ("1", "/one", "3"), ("1", "/start", "0"))
    for devices, folder, steps in runs:
        argv = ["distill", "--devices", devices, "--steps", steps, "--out", out + folder]
        assert main([*argv, *common]) == 0
    four, one, start = (load_distilled(out + f + "/distilled.npz").images for _, f, _ in runs)
    assert four.shape == (10, 8, 8, 1) and np.all(np.isfinite(four))
    assert json.loads(open(out + "/four/metrics.json").read())["steps_done"] == 3
    # The two runs agree far better than either moved from the shared start (the step-level
    # equality is checked above; three Adam-type steps amplify rounding, so no tighter bound).
    moved, apart = np.linalg.norm(one - start), np.linalg.norm(four - one)
    print(f"moved {moved:.3e}, apart {apart:.3e}")
    assert moved > 0 and apart < 0.25 * moved, (moved, apart)
    assert main(["distill", "--devices", "8", "--out", out + "/eight", *common]) == 2
    assert main(["distill", "--devices", "4", "--target-batch", "66", "--out", out + "/x"]) == 2
    print("CLI-DEVICES-OK")
    """
)


@pytest.mark.slow
def test_distill_command_on_four_devices(tmp_path):
    """`rcig distill --devices 4` on 4 forced CPU devices runs, exports, and lands where the
    one-device run lands up to summation order; more devices than exist is a clear error."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "CLI-DEVICES-OK" in proc.stdout
    assert "--devices 8: only 4 local device(s)" in proc.stderr
    assert "--target-batch 66 is not divisible by 4 devices" in proc.stderr


def test_devices_beyond_the_machine_are_refused_before_loading(capsys):
    from distillation.cli import main

    assert main(["distill", "--devices", "64", "--dataset", "no_such_set"]) == 2
    err = capsys.readouterr().err
    assert "--devices 64: only" in err and "xla_force_host_platform_device_count=64" in err
