"""Two processes on localhost through ``jax.distributed`` (gloo collectives on CPU): the
meta-gradient with the target batch split over both hosts equals the one-process one, and
``distill`` runs across them with checkpoints written by process 0 and resumed by both."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import dataclasses, sys
    from pathlib import Path
    import jax
    from distillation._distill import initialize_distributed

    pid, port, tmp = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    initialize_distributed(f"localhost:{port}", 2, pid)
    import jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P
    from distillation._algorithms import meta_loss, rcig
    from distillation._checkpoint import read_checkpoint_meta
    from distillation._distill import DistillConfig, data_parallel_mesh, distill, init_support
    from distillation._models import conv_net
    from distillation.data._datasets import load_dataset

    assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
    mesh = data_parallel_mesh()
    data = load_dataset("digits")
    x, y = jnp.asarray(data.x_train), jax.nn.one_hot(jnp.asarray(data.y_train), 10)
    algorithm = rcig(n_inner=5, n_hessian=5)

    # 1. The meta-gradient in float64, the 64-image target batch split over the two hosts vs
    #    all on this process: only the summation order differs (sums of 64 terms, ~64 eps64
    #    relative, amplified by 5-step solves: far below 1e-9).
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
        support = f64(init_support(data.x_train, data.y_train, 10, 2, key=jax.random.key(0)))
        model0 = conv_net(data.image_shape, 10, key=jax.random.key(5), width=8,
                          dtype=jnp.float64)
        alg64 = algorithm.with_learning_rates(jnp.asarray(1e-2), jnp.asarray(1e-2))
        loss = lambda s, xt, yt: meta_loss(s, alg64, model0, xt, yt, jnp.asarray(0.01))[0]
        grad_fn = jax.jit(jax.grad(loss))
        xt, yt = f64(x[:64]), f64(y[:64])
        single = grad_fn(support, xt, yt)
        split = NamedSharding(mesh, P("data"))
        xt_s, yt_s = jax.device_put(np.asarray(xt), split), jax.device_put(np.asarray(yt), split)
        assert not xt_s.is_fully_addressable  # half of the batch lives on the other host
        sharded = grad_fn(support, xt_s, yt_s)
        for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(sharded)):
            a, b = np.asarray(a), np.asarray(b)
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(a).max())
        assert np.linalg.norm(np.asarray(single.images)) > 0

    # 2. distill across both hosts: the pool split, process 0 writing the checkpoints; then both
    #    resume from that checkpoint for one more step.
    config = DistillConfig(steps=2, pool_size=2, target_batch=64, width=8, lr_tuning="none",
                           checkpoint_every=1)
    ckpt = tmp / "ckpt"
    run = lambda c, resume: distill(data.x_train, data.y_train, 10, algorithm, 1, c,
                                    key=jax.random.key(1), checkpoint_dir=ckpt, resume=resume,
                                    progress=False, mesh=mesh)
    first = run(config, False)
    multihost_utils.sync_global_devices("first run written")
    assert read_checkpoint_meta(ckpt)["step"] == 2
    second = run(dataclasses.replace(config, steps=3), True)
    assert (first.steps, second.steps, second.steps_run) == (2, 3, 1)
    images = np.asarray(second.support.images)
    assert np.all(np.isfinite(images))
    multihost_utils.sync_global_devices("second run written")
    assert read_checkpoint_meta(ckpt)["step"] == 3
    # Both hosts hold the same result (the support set is replicated).
    gathered = multihost_utils.process_allgather(images)
    np.testing.assert_array_equal(gathered[0], gathered[1])
    print(f"MULTIHOST-OK {pid}")
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.serial
def test_two_processes_on_localhost(tmp_path):
    (tmp_path / "ckpt").mkdir()
    port = str(_free_port())
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(pid), port, str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (0, 1)
    ]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append((proc.returncode, out, err))
    for pid, (code, out, err) in enumerate(outputs):
        assert code == 0, f"process {pid}:\n{err[-4000:]}"
        assert f"MULTIHOST-OK {pid}" in out


def test_initialize_distributed_checks_its_arguments():
    from distillation._distill import initialize_distributed

    with pytest.raises(ValueError, match="give coordinator, num_processes and process_id"):
        initialize_distributed("localhost:1234", 2)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, num_processes\)"):
        initialize_distributed("localhost:1234", 2, 2)


def test_distill_command_checks_the_host_flags(capsys):
    from distillation.cli import main

    assert main(["distill", "--coordinator", "localhost:1", "--num-processes", "2"]) == 2
    assert (
        "give --coordinator, --num-processes and --process-id together" in capsys.readouterr().err
    )
    assert main(["distill", "--distributed", "--process-id", "0"]) == 2
    assert "--distributed detects the cluster" in capsys.readouterr().err
    argv = ["distill", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "5"]
    assert main(argv) == 2
    assert "process_id must be in [0, num_processes)" in capsys.readouterr().err
