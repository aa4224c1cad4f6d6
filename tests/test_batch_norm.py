"""RCIG (BN): the distillation ConvNet's batch norm, the pool's running statistics, and the
distillation step with them (the released code's ``has_bn`` path: pool trained in training mode,
every inner/Hessian/outer pass in evaluation mode with the selected model's statistics)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import rel_err
from sklearn.datasets import load_digits

from distillation import DistillConfig, Distiller, init_support, rcig
from distillation._models import BN_EPSILON, BN_MOMENTUM, conv2d, conv_net
from distillation._networks import LinearizedNetwork, Partitioned
from distillation._pool import ModelPool


def _net(dtype=jnp.float64, seed=0):
    return conv_net(
        (8, 8, 1), 3, key=jax.random.key(seed), width=3, depth=2, norm="batch", dtype=dtype
    )


def _first_block(net, x):
    """The first convolution's output with its bias: what the first batch norm sees."""
    b = net.body
    return conv2d(x, b.weights[0], b.paddings[0]) + b.biases[0].reshape(1, 1, 1, -1)


def _x(n, seed=1, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), (n, 8, 8, 1), dtype) * 1.5 + 0.3


def test_training_mode_moves_running_statistics_as_flax(x64):
    """``momentum·old + (1 − momentum)·batch`` with the batch's biased variance (flax's
    ``BatchNorm(momentum=0.1)``), from the fresh (0, 1); the parameters untouched."""
    net, x = _net(), _x(6)
    _, moved = net.train_forward(x)
    first = _first_block(net, x)
    batch_mean = np.asarray(first).mean(axis=(0, 1, 2))
    batch_var = np.asarray(first).var(axis=(0, 1, 2))
    bn = moved.body.batch_norms[0]
    np.testing.assert_allclose(bn.mean, (1 - BN_MOMENTUM) * batch_mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        bn.var, BN_MOMENTUM * 1.0 + (1 - BN_MOMENTUM) * batch_var, rtol=1e-12
    )
    np.testing.assert_array_equal(bn.scale, net.body.batch_norms[0].scale)
    assert BN_MOMENTUM == 0.1 and BN_EPSILON == 1e-5


def test_evaluation_mode_is_per_image_and_uses_running_statistics(x64):
    """Calling the network normalises with the running statistics: the output of a batch is the
    outputs of its chunks (so remat chunking cannot change it), and equals training mode when
    the running statistics are the batch's own."""
    _, net = _net().train_forward(_x(8, seed=2))
    x = _x(6)
    whole = net(x)
    np.testing.assert_allclose(whole, jnp.concatenate([net(x[:2]), net(x[2:])]), rtol=1e-12)
    # Set the first layer's running statistics to this batch's: evaluation = training mode on
    # that layer, so after one block the features agree.
    first = _first_block(net, x)
    bn0 = net.body.batch_norms[0]
    own = type(bn0)(bn0.scale, bn0.offset, first.mean((0, 1, 2)), first.var((0, 1, 2)))
    np.testing.assert_allclose(own(first), own.train_forward(first)[0], rtol=1e-10, atol=1e-12)


def test_no_derivative_reaches_the_running_statistics(x64):
    net, x = _net(), _x(5)
    grads = jax.grad(lambda m: jnp.sum(m(x) ** 2))(net)
    for bn in grads.body.batch_norms:
        assert float(jnp.abs(bn.mean).max()) == 0.0 and float(jnp.abs(bn.var).max()) == 0.0
        assert float(jnp.abs(bn.scale).max()) > 0.0  # the affine parameters do get one


def test_linearisation_includes_the_batch_norm_parameters(x64):
    """The centred linearisation's output along a displacement of the conv and batch-norm
    parameters (running statistics left at 0) is the directional derivative of the network in
    evaluation mode (central differences)."""
    _, net = _net().train_forward(_x(8, seed=2))
    x = _x(4)
    leaves, treedef = jax.tree_util.tree_flatten(net)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    delta = jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves, strict=True)]
    )
    zero_stats = tuple(
        type(b)(b.scale, b.offset, jnp.zeros_like(b.mean), jnp.zeros_like(b.var))
        for b in delta.body.batch_norms
    )
    delta = eqx.tree_at(lambda d: d.body.batch_norms, delta, zero_stats)
    only_bn = jax.tree_util.tree_map(jnp.zeros_like, delta)
    only_bn = eqx.tree_at(lambda d: d.body.batch_norms, only_bn, zero_stats)
    # Softplus at temperature 60 is sharply curved: central differences' truncation error is
    # ~h² times the third derivative, measured 2.6e-7 relative at h = 1e-5, so h = 1e-6
    # (~3e-9; rounding ~1e-10 in float64).
    h = 1e-6
    for d in (delta, only_bn):  # everything, then the batch-norm scales and offsets alone
        moved = lambda s, d=d: jax.tree_util.tree_map(lambda a, b: a + s * b, net, d)  # noqa: E731
        want = (moved(h)(x) - moved(-h)(x)) / (2 * h)
        got = LinearizedNetwork(net).output(d, x)
        assert rel_err(got, want) < 1e-7
        assert float(jnp.abs(got).max()) > 1e-3


def test_pool_trains_in_training_mode_and_keeps_statistics():
    """A pool model's training steps move its batch-norm parameters and its running statistics
    (towards the support set's); the other models are untouched; a Partitioned batch is
    refused, naming the reason."""
    import optax

    pool = ModelPool(
        lambda k: conv_net((8, 8, 1), 3, key=k, width=3, depth=2, norm="batch"),
        size=2,
        reset_every=100,
        optimizer=optax.adam(1e-2),
        max_steps=1,
    )
    state = pool.init(key=jax.random.key(0))
    x = _x(6, dtype=jnp.float32)
    y = jax.nn.one_hot(jnp.arange(6) % 3, 3)
    new, loss = jax.jit(pool.train_step)(state, jnp.asarray(0), x, y, key=jax.random.key(1))
    before, after = state.models.body.batch_norms[0], new.models.body.batch_norms[0]
    assert np.isfinite(float(loss))
    assert float(jnp.abs(after.mean[0] - before.mean[0]).max()) > 1e-3
    assert float(jnp.abs(after.scale[0] - before.scale[0]).max()) > 1e-4
    np.testing.assert_array_equal(after.mean[1], before.mean[1])
    # One step from the fresh statistics: the running mean is 0.9 × the batch's (the step
    # changes the weights only after the forward pass that measured it).
    m0 = pool.model(state, jnp.asarray(0))
    first = _first_block(m0, x)
    np.testing.assert_allclose(after.mean[0], 0.9 * first.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    parted = Partitioned(x[:3], x[3:], chunk=3)
    with pytest.raises(ValueError, match="whole support set as one batch"):
        pool.train_step(state, jnp.asarray(0), parted, y, key=jax.random.key(1))


def _digits():
    d = load_digits()
    x = (d.images[..., None] / 16.0).astype(np.float32)
    return (x - x.mean()) / x.std(), d.target


@pytest.mark.slow
def test_a_distillation_step_with_batch_norm():
    """RCIG (BN): a finite meta-gradient that moves the support set; the pool's statistics move;
    subsampling (n_subset < |S|) is refused before anything is traced."""
    x, y = _digits()
    config = DistillConfig(pool_size=2, target_batch=64, width=4, norm="batch")
    distiller = Distiller.build(
        rcig(n_inner=3, n_hessian=3), config, image_shape=x.shape[1:], num_classes=10
    )
    support = init_support(x, y, 10, 1, key=jax.random.key(0))
    state = distiller.init(support, key=jax.random.key(1))
    data = jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), 10)
    new, metrics = jax.jit(distiller.step)(state, distiller.next_batch(state, *data))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["implicit_norm"]) > 0 and float(metrics["direct_norm"]) > 0
    assert float(jnp.abs(new.support.images - state.support.images).max()) > 0
    moved = jnp.abs(
        new.pool.models.body.batch_norms[0].mean - state.pool.models.body.batch_norms[0].mean
    )
    assert float(moved.max()) > 0
    bad = Distiller.build(
        rcig(), DistillConfig(norm="batch", n_subset=4), image_shape=x.shape[1:], num_classes=10
    )
    with pytest.raises(ValueError, match=r"n_subset=4 < \|S\|=10"):
        bad.init(support, key=jax.random.key(1))
