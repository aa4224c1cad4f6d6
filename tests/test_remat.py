"""Chunked rematerialisation (``Partitioned`` batches) and what it buys bias-free subsampling.

Chunked and whole-batch evaluation differ only in summation order (batch sizes of the
convolutions), so the comparisons run in float64, where that difference is ~1e-16 relative and
the tolerances below (1e-10, or 1e-9 after an Adam step) hold on any CPU with orders of margin.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import rel_err, tree_ravel

import bilevel
from distillation import DistillConfig, Distiller, init_support, rcig, rig
from distillation._algorithms import SupportSet, meta_loss
from distillation._models import conv_net
from distillation._networks import LinearizedNetwork, Partitioned, map_batch, remat_map
from distillation._pool import ModelPool


def _images(n, key=0, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(key), (n, 8, 8, 1), dtype)


def _partitioned(x, stored, chunk):
    return Partitioned(x[:stored], x[stored:], chunk=chunk)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [2, 5])
def test_remat_map_matches_a_single_batch_to_second_order(chunk, x64):
    model = conv_net((8, 8, 1), 3, key=jax.random.key(1), width=4, dtype=jnp.float64)
    net = LinearizedNetwork(model)
    x = _images(7)  # 7 is not a multiple of 3 or 5: the padded tail is dropped
    delta = jax.tree_util.tree_map(lambda a: 0.1 * jnp.ones_like(a), model.body)

    def loss(d, images):
        g, phi = net.offset_and_features(d, images)
        return jnp.sum(jnp.sin(g)) + jnp.sum(phi**2) * jnp.sum(g**2)

    chunked = _partitioned(x, 2, chunk)
    assert jnp.array_equal(remat_map(jnp.sin, x, chunk), jnp.sin(x))  # elementwise: exact
    assert rel_err(jax.jit(loss)(delta, chunked), jax.jit(loss)(delta, x)) < 1e-10
    # gradient in Δ, a Hessian-vector product (forward over reverse) and reverse over reverse
    # (the implicit gradient's vjp of ∇_Δ L with respect to the images)
    grad = jax.jit(lambda images: tree_ravel(jax.grad(loss)(delta, images)))
    assert rel_err(grad(chunked), grad(x)) < 1e-10
    hvp = jax.jit(
        lambda images: tree_ravel(
            jax.jvp(lambda d: jax.grad(loss)(d, images), (delta,), (delta,))[1]
        )
    )
    assert rel_err(hvp(chunked), hvp(x)) < 1e-10
    cot = jax.grad(loss)(delta, x)
    mixed = jax.jit(
        lambda images: jax.grad(
            lambda im: sum(
                jnp.vdot(a, b)
                for a, b in zip(
                    jax.tree_util.tree_leaves(jax.grad(loss)(delta, im)),
                    jax.tree_util.tree_leaves(cot),
                    strict=True,
                )
            )
        )(images)
    )
    full = mixed(x)
    part = mixed(chunked)
    assert rel_err(jnp.concatenate([part.stored, part.remat]), full) < 1e-10


def test_partitioned_rejects_a_bad_chunk():
    with pytest.raises(ValueError, match="chunk"):
        Partitioned(_images(2), _images(3), chunk=0)


def test_map_batch_passes_plain_arrays_through_and_handles_an_empty_remat_part():
    x = _images(4)
    assert jnp.array_equal(map_batch(jnp.cos, x), jnp.cos(x))
    empty = Partitioned(x, x[:0], chunk=2)
    assert jnp.array_equal(map_batch(jnp.cos, empty), jnp.cos(x))


@pytest.mark.slow
@pytest.mark.parametrize("make", [rcig, rig])
def test_subsampled_meta_gradient_is_the_full_one_on_the_drawn_images(make, x64):
    """Bias-free: the drawn images get exactly the gradient they get without subsampling.

    Gradient descent inside and a Neumann series for the linear solve keep the computation a
    smooth function of its inputs (Adam's division by running magnitudes would amplify the
    summation-order difference where a gradient cancels), so float64 agreement is ~1e-15."""
    model = conv_net((8, 8, 1), 4, key=jax.random.key(2), width=4, dtype=jnp.float64)
    n, drawn = 12, np.array([7, 1, 4])
    rest = np.setdiff1d(np.arange(n), drawn)
    x = _images(n, 3)
    y = jax.nn.one_hot(jnp.arange(n) % 4, 4, dtype=jnp.float64)
    x_t, y_t = _images(16, 4), jax.nn.one_hot(jnp.arange(16) % 4, 4, dtype=jnp.float64)
    algorithm = make(
        n_inner=3,
        linear_solver=bilevel.Neumann(steps=3, step_size=0.1, throw=False),
        inner_optimizer=optax.sgd,
        inner_lr=jnp.asarray(1e-2),
    )
    log_t = jnp.asarray(-1.0)
    l2 = jnp.asarray(0.5)

    @jax.jit
    def grads(support, constant=None):
        fn = lambda s: meta_loss(s, algorithm, model, x_t, y_t, l2, constant=constant)[0]
        return jax.grad(fn)(support)

    full = grads(SupportSet(x, y, log_t))
    sub = grads(SupportSet(x[drawn], y[drawn], log_t), SupportSet(x[rest], y[rest], log_t))
    assert rel_err(sub.images, full.images[drawn]) < 1e-10
    assert rel_err(sub.labels, full.labels[drawn]) < 1e-10
    assert rel_err(sub.log_temperature, full.log_temperature) < 1e-10


@pytest.mark.slow
def test_pool_step_on_a_partitioned_batch_equals_the_plain_one(x64):
    # One Adam step from a fresh state moves each weight by lr·g/(|g| + eps): a relative error
    # ε in g changes it by at most lr·ε/4, so float64 agreement stays ~1e-15 relative.
    def make_model(key):
        return conv_net((8, 8, 1), 4, key=key, width=4, activation="softplus", dtype=jnp.float64)

    pool = ModelPool(make_model, 2, 100, optax.adam(1e-3))
    state = pool.init(key=jax.random.key(0))
    x = _images(10)
    y = jax.nn.one_hot(jnp.arange(10) % 4, 4, dtype=jnp.float64)
    index = jnp.int32(1)
    train_step = jax.jit(pool.train_step)
    plain, loss_plain = train_step(state, index, x, y, key=jax.random.key(5))
    part, loss_part = train_step(state, index, _partitioned(x, 3, 3), y, key=jax.random.key(5))
    assert rel_err(loss_part, loss_plain) < 1e-10
    assert rel_err(tree_ravel(part.models), tree_ravel(plain.models)) < 1e-9


def _step_peak_bytes(n_subset, ipc):
    x = np.asarray(_images(400, 6, jnp.float32))
    y = np.arange(400) % 10
    config = DistillConfig(pool_size=2, target_batch=32, width=8, n_subset=n_subset)
    distiller = Distiller.build(
        rcig(n_inner=2, n_hessian=2), config, image_shape=x.shape[1:], num_classes=10
    )
    support = init_support(x, y, 10, ipc, key=jax.random.key(0))
    state = distiller.init(support, key=jax.random.key(1))
    batch = distiller.next_batch(state, jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), 10))
    compiled = jax.jit(distiller.step).lower(state, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_subsampling_lowers_the_compiled_steps_peak_memory():
    """XLA's buffer assignment (deterministic, not a timing): with n_subset the step's temporary
    memory no longer grows with |S| the way it does without."""
    full_small, full_big = _step_peak_bytes(None, 20), _step_peak_bytes(None, 40)
    sub_small, sub_big = _step_peak_bytes(20, 20), _step_peak_bytes(20, 40)
    assert sub_big < 0.6 * full_big, (sub_big, full_big)
    # doubling |S| (200 -> 400) costs the full step far more than the subsampled one. Measured
    # (jax 0.10.2, this package's XLA flags): subsampled +3.65 MB, full +6.42 MB (0.57); the
    # full step's growth was 9.4 MB with jax.nn.softplus's derivative rule, whose residuals per
    # activation the softplus_t rule no longer keeps. The bound is 0.8, not the measured 0.57:
    # buffer assignment follows XLA:CPU's fusion and library choices, which depend on the CPU
    # and the jaxlib version; 0.8 still separates "grows far less" from "grows alike".
    assert (sub_big - sub_small) < 0.8 * (full_big - full_small), (
        sub_small,
        sub_big,
        full_small,
        full_big,
    )
