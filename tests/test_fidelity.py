"""The pieces matched to the authors' released code (docs/fidelity.md), each against an oracle
written from that code's definitions: the kernel-ridge head and its meta-gradient, clipping,
the label margin, the EMA, the learning-rate pre-round and schedule, the pool's step counts,
λ, the target batches, the evaluation's augmentation, Table 7's iteration counts."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from problems import rel_err, tree_ravel

import bilevel
from distillation._algorithms import (
    SupportSet,
    clip_to_direct,
    meta_loss,
    rcig,
)
from distillation._distill import (
    DistillConfig,
    Distiller,
    distill,
    distill_activation,
    ema_support,
    epoch_batch,
    init_support,
    l2_strength,
    meta_optimizer,
    released_adabelief,
)
from distillation._models import conv_net
from distillation._objectives import InnerProblem, KRRHead, label_margin
from distillation._pool import ModelPool
from distillation._tuning import classify_trace, released_preround, released_schedule
from distillation.cli._commands import table7_steps
from distillation.evaluation._augment import _released_transforms, released_augment


def _tiny(dtype=jnp.float64, n_support=4, n_target=6, width=3, seed=0, norm="none"):
    keys = jax.random.split(jax.random.key(seed), 4)
    model = conv_net((8, 8, 1), 3, key=keys[0], width=width, depth=2, dtype=dtype, norm=norm)
    x_s = jax.random.normal(keys[1], (n_support, 8, 8, 1), dtype)
    y_s = jax.nn.one_hot(jnp.arange(n_support) % 3, 3, dtype=dtype) - 1.0 / 3
    x_t = jax.random.normal(keys[2], (n_target, 8, 8, 1), dtype)
    y_t = jax.nn.one_hot(jax.random.randint(keys[3], (n_target,), 0, 3), 3, dtype=dtype)
    return model, x_s, y_s, x_t, y_t


def _displacement(model, seed, scale=0.1):
    leaves, treedef = jax.tree_util.tree_flatten(model)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef,
        [scale * jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves, strict=True)],
    )


def test_krr_head_is_the_released_loss_and_prediction(x64):
    """``get_krr_loss_gd`` (self loss) and ``get_krr_loss``'s prediction, written out from the
    released code: features and outputs from one jvp of the model (primal features, dual output),
    ``K = φφᵀ`` without ``+1``, ``w = (K + λI)⁻¹(y − out)``,
    loss ``[½‖y − out − Kw‖² + ½λ(tr wᵀKw + ‖Δ‖²)] / (N·K)``."""
    model, x_s, y_s, x_t, _ = _tiny()
    algorithm = rcig()
    net = algorithm.network(model)
    delta = _displacement(model, 1)
    l2 = 0.7

    def jvp_parts(x):
        def both(m):
            f = m.body(x)
            return m.head(f), f

        (_, feat), (d_out, _) = jax.jvp(both, (model,), (delta,))
        return feat, d_out

    feat_s, out_s = jvp_parts(x_s)
    k_ss = feat_s @ feat_s.T
    w = jnp.linalg.solve(k_ss + l2 * jnp.eye(4), y_s - out_s)
    err = y_s - (out_s + k_ss @ w)
    sq = sum(jnp.sum(v**2) for v in jax.tree_util.tree_leaves(delta))
    released = (0.5 * jnp.trace(err @ err.T) + 0.5 * l2 * (jnp.trace(w.T @ k_ss @ w) + sq)) / 12
    problem = InnerProblem(net, x_s, y_s, jnp.asarray(l2))
    ours = algorithm.final_layer.inner_loss(delta, problem)
    assert rel_err(ours, released) < 1e-12
    feat_t, out_t = jvp_parts(x_t)
    pred = out_t + feat_t @ feat_s.T @ w
    assert rel_err(algorithm.final_layer.predict(delta, problem, x_t), pred) < 1e-12
    frozen = algorithm.final_layer.frozen(delta)
    assert frozen.head.weight is True and frozen.head.bias is False
    assert not any(jax.tree_util.tree_leaves(frozen.body))


@pytest.mark.parametrize("norm", ["none", pytest.param("batch", marks=pytest.mark.slow)])
def test_released_rcig_meta_gradient_is_the_released_formula(x64, norm):
    """The released ``do_meta_train_step``, written out: inner solve with the head's weight held
    at 0 (``KRRHead(frozen_weight="held")``), ``v = H⁻¹g_t`` over the full displacement (head
    weight included), implicit part ``−∂_S vᵀ∇_Δ L(Δ*, S)``, direct part ``∂_S`` of the outer
    loss minus the label margin at fixed ``Δ*``. Dense solves in float64, so the two sides
    differ only by rounding.

    With batch norm (RCIG (BN)), every pass normalises with the pool model's running statistics
    (here moved away from their start by one training-mode pass), and the displacement includes
    the batch-norm scales and offsets, as the released code's tangent mask."""
    model, x_s, y_s, x_t, y_t = _tiny(norm=norm)
    if norm == "batch":
        _, model = model.train_forward(x_t * 2.0 + 0.5)
        assert float(jnp.abs(model.body.batch_norms[0].mean).max()) > 1e-2
    support = SupportSet(x_s, y_s, jnp.asarray(0.2))
    l2 = jnp.asarray(2.0)
    # The head's weight held at 0 ("held"): the released code adds its raw gradient at each
    # inner step instead (the default, next test), which over 1500 plain gradient steps grows.
    algorithm = rcig(
        n_inner=1500,
        linear_solver=bilevel.Dense(),
        inner_optimizer=optax.sgd,
        head=KRRHead(frozen_weight="held"),
    )
    head, net = algorithm.final_layer, algorithm.network(model)
    inner = lambda d, s: head.inner_loss(d, InnerProblem(net, s.images, s.labels, l2))  # noqa: E731
    start = head.init(net)
    # Every oracle computation below runs jitted: op by op, they took most of this test's time.
    top = jax.jit(
        lambda: bilevel.largest_eigenvalue(
            lambda v: bilevel.hvp(inner, start, v, support), start, 100
        )
    )()
    lr = 0.5 / top
    algorithm = algorithm.with_learning_rates(lr)

    (_, info), (direct, implicit) = jax.jit(
        jax.value_and_grad(
            lambda a, b: meta_loss(a, algorithm, model, x_t, y_t, l2, inner=b),
            argnums=(0, 1),
            has_aux=True,
        )
    )(support, support)

    # The oracle: gradient descent on everything but the head's weight.
    mask = jax.tree_util.tree_map(lambda f: 0.0 if f else 1.0, head.frozen(start))

    def gd(_, d):
        g = jax.grad(inner)(d, support)
        return jax.tree_util.tree_map(lambda a, b, m: a - lr * m * b, d, g, mask)

    d_star = jax.jit(lambda d: jax.lax.fori_loop(0, 1500, gd, d))(start)
    free = jax.tree_util.tree_map(lambda g, m: g * m, jax.grad(inner)(d_star, support), mask)
    assert float(jnp.linalg.norm(tree_ravel(free))) < 1e-9  # solved on its free coordinates
    # ... but not on the head's weight: the released formula is not a bilevel hypergradient.
    assert float(jnp.linalg.norm(jax.grad(inner)(d_star, support).head.weight)) > 1e-3

    def outer(d, s):
        out = head.predict(d, InnerProblem(net, s.images, s.labels, l2), x_t)
        return algorithm.outer_loss(out, y_t, s.log_temperature) - label_margin(s.labels)

    @jax.jit
    def oracles(d_star):
        flat, unravel = jax.flatten_util.ravel_pytree(d_star)
        hessian = jax.hessian(lambda f: inner(unravel(f), support))(flat)
        g_t = jax.flatten_util.ravel_pytree(jax.grad(outer)(d_star, support))[0]
        v = jnp.linalg.solve(hessian, g_t)
        implicit = jax.grad(
            lambda s: -jax.flatten_util.ravel_pytree(jax.grad(inner)(d_star, s))[0] @ v
        )(support)
        return implicit, jax.grad(lambda s: outer(d_star, s))(support)

    implicit_oracle, direct_oracle = oracles(d_star)
    assert float(info.inner_loss) > 0
    assert rel_err(tree_ravel(direct), tree_ravel(direct_oracle)) < 1e-8
    assert rel_err(tree_ravel(implicit), tree_ravel(implicit_oracle)) < 1e-8
    assert float(jnp.linalg.norm(implicit.images)) > 1e-6


@pytest.mark.parametrize("frozen_weight", ["released", "held"])
def test_the_inner_adam_passes_the_head_weights_gradient_through_as_the_released_code(
    x64, frozen_weight
):
    """The released inner optimizer is ``optax.masked(adam, mask)`` with the head's weight
    masked out, and ``optax.masked`` passes an excluded leaf's gradient through as its update:
    at every step the head's weight displacement gets its raw gradient added, while Adam (its
    counter from the pool model's age) steps the rest. A hand-written loop of exactly that;
    ``frozen_weight="held"`` keeps the weight at 0 instead."""
    model, x_s, y_s, _, _ = _tiny()
    lr, steps, age, l2 = 0.02, 6, 3, jnp.asarray(0.7)
    algorithm = rcig(n_inner=steps, inner_lr=lr, head=KRRHead(frozen_weight=frozen_weight))
    head, net = algorithm.final_layer, algorithm.network(model)
    inner = lambda d: head.inner_loss(d, InnerProblem(net, x_s, y_s, l2))  # noqa: E731
    got, _, _ = algorithm.with_inner_count(jnp.asarray(age)).inner_solver(inner, head.init(net))

    frozen = head.frozen(head.init(net))
    d = head.init(net)
    m = jax.tree_util.tree_map(jnp.zeros_like, d)
    v = jax.tree_util.tree_map(jnp.zeros_like, d)
    for t in range(age + 1, age + steps + 1):
        g = jax.grad(inner)(d)
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b**2, v, g)

        def step(p, gi, mi, vi, f, t=t):
            if f:
                return p + gi if frozen_weight == "released" else p
            adam = (mi / (1 - 0.9**t)) / (jnp.sqrt(vi / (1 - 0.999**t)) + 1e-8)
            return p - float(np.float32(lr)) * adam  # the rate is a float32 leaf

        d = jax.tree_util.tree_map(step, d, g, m, v, frozen)
    assert rel_err(tree_ravel(got), tree_ravel(d)) < 1e-10
    weight = float(jnp.linalg.norm(got.head.weight))
    assert (weight > 1e-4) if frozen_weight == "released" else (weight == 0.0)


def test_clip_to_direct_scales_each_leaf_to_at_most_the_direct_norm():
    direct = SupportSet(jnp.ones((2, 2)), jnp.full((3,), 0.1), jnp.asarray(0.5))
    implicit = SupportSet(3 * jnp.ones((2, 2)), jnp.full((3,), 0.01), jnp.asarray(0.0))
    clipped = clip_to_direct(implicit, direct)
    # too large: the same direction, the direct part's norm (2)
    np.testing.assert_allclose(clipped.images, jnp.ones((2, 2)), rtol=1e-6)
    # smaller than the direct part: unchanged
    np.testing.assert_allclose(clipped.labels, implicit.labels, rtol=1e-6)
    # zero (the temperature has no implicit part): zero, not NaN
    assert float(clipped.log_temperature) == 0.0


# slow: two compiled meta-steps
@pytest.mark.slow
def test_the_step_clips_the_implicit_gradient_by_default():
    """``rcig()`` clips (the released default) and ``Distiller.step`` applies it: with a large
    Hessian-inverse rate the unclipped implicit part outgrows the direct one, and the clipped
    step's implicit part is at most the direct one's norm (leaf by leaf, hence overall)."""
    assert rcig().clip_implicit and not rcig(clip_implicit=False).clip_implicit
    x = np.asarray(jax.random.normal(jax.random.key(0), (60, 8, 8, 1)), np.float32)
    y = np.arange(60) % 3
    config = DistillConfig(
        pool_size=2, target_batch=16, width=2, depth=1, pool_max_steps=1, lr_tuning="none"
    )
    support = init_support(x, y, 3, 1, key=jax.random.key(1), center_labels=True)
    x_dev, y_dev = jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), 3)
    metrics, supports = {}, {}
    for clip in (True, False):
        algorithm = rcig(n_inner=2, n_hessian=4, hessian_lr=2000.0, clip_implicit=clip)
        distiller = Distiller.build(algorithm, config, image_shape=x.shape[1:], num_classes=3)
        state = distiller.init(support, key=jax.random.key(2))
        batch = distiller.next_batch(state, x_dev, y_dev)
        new_state, metrics[clip] = jax.jit(distiller.step)(state, batch)
        supports[clip] = new_state.support
    direct = float(metrics[False]["direct_norm"])
    assert float(metrics[True]["direct_norm"]) == pytest.approx(direct, rel=1e-5)
    assert float(metrics[False]["implicit_norm"]) > 1.5 * direct  # clipping has work to do
    assert float(metrics[True]["implicit_norm"]) <= direct * (1 + 1e-5)
    assert rel_err(tree_ravel(supports[True]), tree_ravel(supports[False])) > 1e-6


def test_label_margin_is_capped_at_one_over_2k():
    labels = jnp.asarray([[0.9, -0.1, -0.1, -0.1], [0.1, 0.05, 0.0, 0.0]])
    # first row: top1 − top2 = 1.0, capped at 1/8; second: 0.05
    assert float(label_margin(labels)) == pytest.approx((0.125 + 0.05) / 2, rel=1e-6)


def test_classify_trace_as_run_rcig():
    assert int(classify_trace(jnp.asarray([3.0, 2.0, 1.0]))) == 1
    assert int(classify_trace(jnp.asarray([1.0, 2.0, 1.5]))) == -1  # ends above its start
    assert int(classify_trace(jnp.asarray([3.0, 1.0, 2.0]))) == 0  # not monotone, not failed
    assert int(classify_trace(jnp.asarray([3.0, 3.0, 1.0]))) == 0  # strictly decreasing only
    assert int(classify_trace(jnp.asarray([1.0]))) == 1
    assert int(classify_trace(jnp.zeros((0,)))) == 0


def test_released_schedule_on_a_scripted_sequence():
    """Iterations 0..150 with a scripted class per solve: the rule runs at 50 (51 solves), 100
    and 150 (50 each), cuts at ≥ 29 % failures, raises at ≥ 70 % monotone, else keeps."""
    classes = np.zeros(151, int)
    classes[:51] = 1  # window 1: all monotone -> ×1.05
    classes[51:101][:15] = -1  # window 2: 15/50 = 30 % failed -> ×0.9
    classes[101:151][:14] = -1  # window 3: 14/50 = 28 % failed, 0 % monotone -> keep
    inner = jnp.asarray(1.0, jnp.float32)
    stats = jnp.zeros(3, jnp.int32)
    seen = {}
    for step, c in enumerate(classes):
        stats = stats + jnp.asarray([c == -1, c == 1, 1], jnp.int32)
        inner, stats = released_schedule(inner, stats, jnp.asarray(step))
        seen[step] = float(inner)
    assert seen[49] == 1.0 and seen[50] == pytest.approx(1.05)
    assert seen[99] == pytest.approx(1.05) and seen[100] == pytest.approx(1.05 * 0.9)
    assert seen[150] == pytest.approx(1.05 * 0.9)
    assert int(stats[2]) == 0  # reset at 150


def test_released_preround_on_a_scripted_probe():
    """Monotone while the inner rate is below 1e-3 and the Hessian one below 2: the rates end at
    0.84× the first non-monotone rate (×1.2 after it, then ×0.7), as distill_dataset.py's loops."""
    calls = []

    def probe(algorithm, call):
        inner, hessian = float(algorithm.inner_lr), float(algorithm.hessian_lr)
        calls.append((inner, hessian, call))
        return int(inner < 1e-3), int(hessian < 2.0)

    algorithm = rcig()
    assert (float(algorithm.inner_lr), float(algorithm.hessian_lr)) == pytest.approx((1e-5, 5e-5))
    tuned, n = released_preround(probe, algorithm)
    first_bad_inner = 1e-5 * 1.2 ** int(np.ceil(np.log(1e-3 / 1e-5) / np.log(1.2)))
    assert float(tuned.inner_lr) == pytest.approx(first_bad_inner * 1.2 * 0.7, rel=1e-5)
    first_bad_hessian = 5e-5 * 1.2 ** int(np.ceil(np.log(2.0 / 5e-5) / np.log(1.2)))
    assert float(tuned.hessian_lr) == pytest.approx(first_bad_hessian * 1.2 * 0.7, rel=1e-5)
    assert n == len(calls) and [c[2] for c in calls] == list(range(n))
    # the Hessian loop probes with the tuned inner rate
    assert calls[-1][0] == pytest.approx(float(tuned.inner_lr), rel=1e-6)


def test_released_preround_inner_probe_replaces_the_probe_in_the_inner_loop_only():
    """``inner_probe`` answers the inner loop's calls (same call indices, same rates); the
    Hessian loop still calls ``probe``; the tuned rates are those of ``probe`` alone."""
    seen = {"probe": [], "inner": []}

    def probe(algorithm, call):
        seen["probe"].append(call)
        return int(float(algorithm.inner_lr) < 1e-3), int(float(algorithm.hessian_lr) < 2.0)

    def inner_probe(algorithm, call):
        seen["inner"].append(call)
        return int(float(algorithm.inner_lr) < 1e-3)

    alone, n_alone = released_preround(probe, rcig())
    calls_alone = list(seen["probe"])
    seen["probe"].clear()
    both, n_both = released_preround(probe, rcig(), inner_probe=inner_probe)
    assert (float(both.inner_lr), float(both.hessian_lr)) == (
        float(alone.inner_lr),
        float(alone.hessian_lr),
    )
    assert n_both == n_alone == len(calls_alone)
    n_inner = int(np.ceil(np.log(1e-3 / 1e-5) / np.log(1.2))) + 1  # up to the first non-monotone
    assert seen["inner"] == list(range(n_inner))
    assert seen["probe"] == list(range(n_inner, n_both))


# slow: two pre-rounds compiled (~9 s); the pre-round's rule is tested fast above, on a script
@pytest.mark.slow
def test_the_preround_inner_probe_gives_the_full_probes_inner_class_and_the_same_rates():
    """``preround_probe(hessian=False)`` classifies this tiny inner solve as the full probe
    does, at rates on both sides of the monotone limit, and ``tune_learning_rates`` ends at the
    rates of a pre-round run with the full probe only. (It runs the full probe: at width >= 16
    on 28x28 images XLA miscompiles the unrolled inner-only program, docs/fidelity.md.)"""
    x = np.asarray(jax.random.normal(jax.random.key(0), (60, 8, 8, 1)), np.float32)
    y = np.arange(60) % 3
    config = DistillConfig(pool_size=2, target_batch=16, width=2, depth=1, pool_max_steps=1)
    assert config.lr_tuning == "released"
    distiller = Distiller.build(
        rcig(n_inner=4, n_hessian=4), config, image_shape=x.shape[1:], num_classes=3
    )
    support = init_support(x, y, 3, 1, key=jax.random.key(1), center_labels=True)
    state = distiller.init(support, key=jax.random.key(2))
    x_dev, y_dev = jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), 3)
    probe = jax.jit(distiller.preround_probe, static_argnames="hessian")
    inner_classes = set()
    for call, rate in enumerate([1e-5, 1e-2, 1.0, 1e2, 1e4]):
        algorithm = state.algorithm.with_learning_rates(rate, 1e-3)
        c = jnp.asarray(call, jnp.int32)
        full = probe(state, algorithm, x_dev, y_dev, c)
        inner_only = probe(state, algorithm, x_dev, y_dev, c, hessian=False)
        assert int(inner_only[0]) == int(full[0]), rate
        assert int(inner_only[1]) == 0  # no Hessian-inverse trace
        inner_classes.add(int(full[0]))
    assert len(inner_classes) > 1  # the rates span the monotone limit

    def full_probe(algorithm, call):
        classes = probe(state, algorithm, x_dev, y_dev, jnp.asarray(call, jnp.int32))
        return int(classes[0]), int(classes[1])

    reference, _ = released_preround(full_probe, state.algorithm)
    tuned = distiller.tune_learning_rates(state, x_dev, y_dev).algorithm
    assert (float(tuned.inner_lr), float(tuned.hessian_lr)) == (
        float(reference.inner_lr),
        float(reference.hessian_lr),
    )


# slow: four distillation programs compiled (~40 s on 2 cores); the tuning rule itself is tested
# fast above, on a scripted loss sequence.
@pytest.mark.slow
def test_the_schedule_alone_from_the_tuned_rates_replays_the_released_run():
    """``lr_tuning="schedule"`` from a pre-round's rates (``rcig(inner_lr=, hessian_lr=)``, as
    ``rcig distill --lr-tuning schedule --inner-lr --hessian-lr`` passes them) is the same run
    without the pre-round: the pre-round changes nothing in the state but the rates. The schedule
    keeps counting the solves (``lr_stats``), which fixed rates (``"none"``) do not."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (60, 8, 8, 1)), np.float32)
    y = np.arange(60) % 3
    config = DistillConfig(
        steps=3, pool_size=2, target_batch=16, width=2, depth=1, pool_max_steps=1, log_every=1
    )
    released = distill(x, y, 3, rcig(n_inner=4, n_hessian=4), 1, config, key=jax.random.key(5),
                       progress=False)  # fmt: skip
    start = released.history[0]["inner_lr"], released.history[0]["hessian_lr"]
    # The pre-round moved both (here the inner one down: its first probe, at 1e-5, is not
    # monotone on this tiny problem, where the head weight's pass-through ascent dominates).
    assert start[0] != pytest.approx(1e-5) and start[1] > 5e-5
    given = rcig(n_inner=4, n_hessian=4, inner_lr=start[0], hessian_lr=start[1])
    schedule = dataclasses.replace(config, lr_tuning="schedule")
    replayed = distill(x, y, 3, given, 1, schedule, key=jax.random.key(5), progress=False)
    assert [r["outer_loss"] for r in replayed.history] == [
        r["outer_loss"] for r in released.history
    ]
    np.testing.assert_array_equal(replayed.support.images, released.support.images)

    support = init_support(x, y, 3, 1, key=jax.random.key(1), center_labels=True)
    x_dev, y_dev = jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), 3)
    counted = {}  # `given` again, after a run: the run must not have donated its rates
    for tuning in ("schedule", "none"):
        c = dataclasses.replace(config, lr_tuning=tuning)
        distiller = Distiller.build(given, c, image_shape=x.shape[1:], num_classes=3)
        assert not distiller.has_preround
        state = distiller.init(support, key=jax.random.key(2))
        new_state, _ = distiller.step(state, distiller.next_batch(state, x_dev, y_dev))
        counted[tuning] = int(new_state.lr_stats[2])
    assert counted == {"schedule": 1, "none": 0}


def _pool(max_steps, unroll, reset_every=100):
    def make_model(key):
        return conv_net((8, 8, 1), 3, key=key, width=2, depth=1)

    return ModelPool(make_model, 3, reset_every, optax.sgd(0.1), max_steps, unroll)


# slow: a compile per transform / per pool variant (~10 s each on 2 cores)
@pytest.mark.slow
def test_pool_steps_per_selection_are_uniform_from_one_to_max_and_ages_start_at_zero():
    x = jax.random.normal(jax.random.key(0), (5, 8, 8, 1))
    y = jax.nn.one_hot(jnp.arange(5) % 3, 3)
    pool = _pool(4, True)
    state = pool.init(key=jax.random.key(1))
    assert np.all(np.asarray(state.ages) == 0)  # every model starts fresh
    step = jax.jit(lambda s, k: pool.train_step(s, jnp.asarray(0), x, y, key=k)[0])
    counts = [int(step(state, k).ages[0]) for k in jax.random.split(jax.random.key(2), 200)]
    assert set(counts) == {1, 2, 3, 4}
    assert min(np.bincount(counts)[1:]) > 30  # roughly 50 each
    # The masked straight-line steps equal a loop of exactly the drawn count (on CPU its
    # convolution gradients are the forward-layout ones, conv2d_forward_vjp).
    looped = _pool(4, False)
    loop_step = jax.jit(lambda s, k: looped.train_step(s, jnp.asarray(0), x, y, key=k)[0])
    for k in jax.random.split(jax.random.key(3), 3):
        a, b = step(state, k), loop_step(state, k)
        assert rel_err(tree_ravel(a.models), tree_ravel(b.models)) < 1e-6
        assert int(a.ages[0]) == int(b.ages[0])
    # A model that reaches K steps is renewed (age 0, fresh weights).
    short = _pool(4, True, reset_every=2)
    renewed = jax.jit(lambda s, k: short.train_step(s, jnp.asarray(0), x, y, key=k)[0])(
        state, jax.random.key(5)
    )
    counts_needed = int(step(state, jax.random.key(5)).ages[0])
    assert int(renewed.ages[0]) == (0 if counts_needed >= 2 else counts_needed)


def test_pool_drift_is_the_pool_adams_step_with_a_zero_gradient(x64):
    """Row 32: the released inner solve continues the pool model's Adam, whose moments for the
    network weights are non-zero, with a zero gradient for them; after ``n`` inner steps they
    have moved by ``Σ_k lr · m̂_k/(√v̂_k + ε)``, ``m_k = b1^k m``, ``v_k = b2^k v``, the bias
    corrections at the count ``age + k``. A fresh model does not move."""
    lr, b1, b2, eps = 5e-5, 0.9, 0.999, 1e-8

    def make_model(key):
        return conv_net((8, 8, 1), 3, key=key, width=2, depth=1, dtype=jnp.float64)

    pool = ModelPool(make_model, 2, 100, optax.adam(lr), max_steps=3, unroll=False)
    state = pool.init(key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(5) % 3, 3, dtype=jnp.float64)
    drifted = jax.jit(pool.drifted, static_argnums=2)
    fresh = drifted(state, jnp.asarray(0), 20)
    assert rel_err(tree_ravel(fresh), tree_ravel(pool.model(state, jnp.asarray(0)))) == 0
    for k in jax.random.split(jax.random.key(2), 3):
        state, _ = pool.train_step(state, jnp.asarray(0), x, y, key=k)
    age = int(state.ages[0])
    adam = jax.tree_util.tree_map(lambda a: a[0], state.opt_states)[0]
    assert int(adam.count) == age >= 3

    def oracle(w, m, v):
        for k in range(1, 21):
            t = age + k
            m_hat, v_hat = b1**k * m / (1 - b1**t), b2**k * v / (1 - b2**t)
            w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
        return w

    model = pool.model(state, jnp.asarray(0))
    leaves = [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(model)]
    mu = [np.asarray(a) for a in jax.tree_util.tree_leaves(adam.mu)]
    nu = [np.asarray(a) for a in jax.tree_util.tree_leaves(adam.nu)]
    want = np.concatenate([oracle(w, m, v).ravel() for w, m, v in zip(leaves, mu, nu, strict=True)])
    got = tree_ravel(drifted(state, jnp.asarray(0), 20))
    assert rel_err(got, want) < 1e-12
    moved = float(jnp.linalg.norm(got - tree_ravel(model)))
    assert moved > 20 * lr  # the weights did move (~lr per weight and inner step)
    # The released order: inner step k linearises at the weights moved k times.
    path, final = jax.jit(pool.drift_path, static_argnums=2)(state, jnp.asarray(0), 4)
    assert rel_err(tree_ravel(final), tree_ravel(drifted(state, jnp.asarray(0), 4))) < 1e-14
    for k in range(4):
        at_k = jax.tree_util.tree_map(lambda a, k=k: a[k], path)
        assert rel_err(tree_ravel(at_k), tree_ravel(drifted(state, jnp.asarray(0), k))) < 1e-14


# slow: ~14 s of float64 compilation; the drift itself is tested fast just above
@pytest.mark.slow
def test_the_inner_solve_linearises_at_the_pool_weights_moved_step_by_step(x64):
    """Row 32, the released order (``drift_order="stepwise"``, default): inner step ``k`` takes
    its loss and gradient with the pool model moved ``k`` times, and the result is the inner
    solution there, differentiated at the model moved ``n`` times. A hand-written Adam loop over
    the problems of the path; ``"before"`` (every step at the final model) differs."""
    model, x_s, y_s, _, _ = _tiny()
    n, lr, l2 = 5, 0.02, jnp.asarray(0.7)
    # A path of distinct models: the pool model shifted a little more at each step.
    shift = _displacement(model, 3, scale=0.02)
    path = [jax.tree_util.tree_map(lambda w, d, k=k: w + k * d, model, shift) for k in range(n)]
    final = jax.tree_util.tree_map(lambda w, d: w + n * d, model, shift)
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *path)
    algorithm = rcig(n_inner=n, inner_lr=lr, head=KRRHead(frozen_weight="held"))
    head = algorithm.final_layer

    def problem(m):
        return InnerProblem(algorithm.network(m), x_s, y_s, l2)

    stepwise = algorithm.with_linearisation_path(stacked)
    got = stepwise.solve_inner(problem(final))
    d = head.init(algorithm.network(final))
    m_, v_ = (jax.tree_util.tree_map(jnp.zeros_like, d) for _ in range(2))
    frozen, trace = head.frozen(d), []
    rate = float(np.float32(lr))  # the rate is a float32 leaf
    for t in range(1, n + 1):
        loss, g = jax.value_and_grad(head.inner_loss)(d, problem(path[t - 1]))
        trace.append(loss)
        m_ = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m_, g)
        v_ = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b**2, v_, g)
        d = jax.tree_util.tree_map(
            lambda p, a, b, f, t=t: (
                p if f else p - rate * (a / (1 - 0.9**t)) / (jnp.sqrt(b / (1 - 0.999**t)) + 1e-8)
            ),
            d,
            m_,
            v_,
            frozen,
        )
    assert rel_err(tree_ravel(got.value), tree_ravel(d)) < 1e-10
    assert rel_err(got.stats.loss_trace, jnp.asarray(trace)) < 1e-10
    assert rel_err(got.stats.loss, head.inner_loss(d, problem(final))) < 1e-12
    before = algorithm.solve_inner(problem(final))
    assert rel_err(tree_ravel(before.value), tree_ravel(d)) > 1e-4


def test_lambda_counts_the_learned_images_not_their_mirrors():
    support = SupportSet(jnp.zeros((20, 4, 4, 3)), jnp.zeros((20, 10)), jnp.asarray(0.0))
    for flip in (False, True):
        assert float(l2_strength(support, DistillConfig(flip=flip))) == pytest.approx(0.01)
    mirrored = DistillConfig(flip=True, l2_counts_mirrors=True)
    assert float(l2_strength(support, mirrored)) == pytest.approx(0.02)


@pytest.mark.parametrize(("n", "batch"), [(10, 4), (7, 7), (5, 12)])
def test_target_batches_are_shuffled_epochs(n, batch):
    """Consecutive batches read an endless stream of permutations: every example exactly once
    per epoch, batches running across epoch ends (and over several epochs when batch > n)."""
    key = jax.random.key_data(jax.random.key(0))
    drawn = np.concatenate(
        [np.asarray(epoch_batch(key, jnp.asarray(p), n, batch)) for p in range(0, 6 * n, batch)]
    )
    epochs = drawn[: (len(drawn) // n) * n].reshape(-1, n)
    assert len(epochs) >= 2
    for e in epochs:
        assert sorted(e.tolist()) == list(range(n))
    assert not all(np.array_equal(epochs[0], e) for e in epochs[1:])  # reshuffled per epoch


def test_ema_is_the_bias_corrected_average_of_the_iterates():
    x = np.asarray(jax.random.normal(jax.random.key(0), (60, 8, 8, 1)), np.float32)
    y = np.arange(60) % 3
    # one pool step, no tuning: not under test here, and each costs compile time
    config = DistillConfig(
        pool_size=2,
        target_batch=16,
        width=2,
        depth=1,
        ema_decay=0.9,
        pool_max_steps=1,
        lr_tuning="none",
    )
    distiller = Distiller.build(
        rcig(n_inner=2, n_hessian=2), config, image_shape=x.shape[1:], num_classes=3
    )
    support = init_support(x, y, 3, 1, key=jax.random.key(1), center_labels=True)
    np.testing.assert_allclose(support.labels.max(1), 2 / 3, rtol=1e-6)
    state = distiller.init(support, key=jax.random.key(2))
    step, batch = jax.jit(distiller.step), jax.jit(distiller.next_batch)
    x_dev, y_dev = jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), 3)
    assert rel_err(tree_ravel(ema_support(state, 0.9)), tree_ravel(state.support)) == 0
    iterates = []
    for _ in range(5):
        state, _ = step(state, batch(state, x_dev, y_dev))
        iterates.append(state.support)
    weights = np.asarray([0.1 * 0.9 ** (4 - i) for i in range(5)]) / (1 - 0.9**5)
    expected = jax.tree_util.tree_map(
        lambda *xs: sum(w * v for w, v in zip(weights, xs, strict=True)), *iterates
    )
    assert rel_err(tree_ravel(ema_support(state, 0.9)), tree_ravel(expected)) < 1e-5
    assert rel_err(tree_ravel(ema_support(state, 0.9)), tree_ravel(state.support)) > 1e-6
    assert ema_support(state, 0.0) is state.support


# slow: three compiled meta-steps
@pytest.mark.slow
def test_the_meta_gradient_is_taken_at_the_drifted_pool_weights():
    """``pool_drift`` with ``drift_order="before"``: a step equals the undrifted step
    (``pool_drift=False``) on a pool whose weights were moved by :meth:`ModelPool.drifted`
    beforehand, and differs from the undrifted step on the pool as it is. The default order
    (``"stepwise"``, the inner solve following the drift step by step; its mechanics are tested
    above) ends at the same weights but differs from both."""
    import dataclasses

    x = np.asarray(jax.random.normal(jax.random.key(0), (60, 8, 8, 1)), np.float32)
    y = np.arange(60) % 3
    # pool_lr 100x the default: a drift well above float32 rounding in the outer loss
    config = DistillConfig(
        pool_size=2,
        target_batch=16,
        width=2,
        depth=1,
        pool_max_steps=3,
        pool_lr=5e-3,
        lr_tuning="none",
        drift_order="before",
    )
    assert DistillConfig().pool_drift and DistillConfig().drift_order == "stepwise"
    # An inner rate at which the displacement moves, so that where it is linearised shows.
    algorithm = rcig(n_inner=3, n_hessian=2, inner_lr=3e-3)
    shape = x.shape[1:]
    drift = Distiller.build(algorithm, config, image_shape=shape, num_classes=3)
    stepwise = Distiller.build(
        algorithm, dataclasses.replace(config, drift_order="stepwise"), image_shape=shape,
        num_classes=3,
    )  # fmt: skip
    fixed = Distiller.build(
        algorithm, dataclasses.replace(config, pool_drift=False), image_shape=shape, num_classes=3
    )
    support = init_support(x, y, 3, 1, key=jax.random.key(1), center_labels=True)
    state = drift.init(support, key=jax.random.key(2))
    step, batch = jax.jit(drift.step), jax.jit(drift.next_batch)
    x_dev, y_dev = jnp.asarray(x), jax.nn.one_hot(jnp.asarray(y), 3)
    for _ in range(4):  # pool models with a history (non-zero Adam moments)
        state, _ = step(state, batch(state, x_dev, y_dev))
    assert int(jnp.min(state.pool.ages)) > 0
    moved = jax.vmap(lambda i: drift.pool.drifted(state.pool, i, 3))(jnp.arange(2))
    state_moved = dataclasses.replace(state, pool=dataclasses.replace(state.pool, models=moved))
    b = batch(state, x_dev, y_dev)
    fixed_step = jax.jit(fixed.step)
    (_, m_drift), (_, m_moved), (_, m_fixed) = (
        step(state, b),
        fixed_step(state_moved, b),
        fixed_step(state, b),
    )
    for name in ("outer_loss", "inner_loss", "direct_norm", "implicit_norm"):
        want = float(m_moved[name])
        # two float32 programs (Adam-type divisions): 5e-5, still 10x inside the ~5e-4
        # separation the assertions below rely on
        assert float(m_drift[name]) == pytest.approx(want, rel=5e-5), name
    assert float(m_fixed["outer_loss"]) != pytest.approx(float(m_drift["outer_loss"]), rel=1e-4)
    _, m_step = jax.jit(stepwise.step)(state, b)
    for other in (m_drift, m_fixed):  # ~5e-4 apart here, float32 rounding ~1e-7
        for name in ("outer_loss", "direct_norm"):
            assert float(m_step[name]) != pytest.approx(float(other[name]), rel=5e-5), name


# slow: a compile per transform / per pool variant (~10 s each on 2 cores)
@pytest.mark.slow
def test_released_augment_applies_exactly_one_transform_per_image(x64):
    # float64: the batched and the one-image resampling differ only by rounding (1e-12).
    for grayscale, channels in ((False, 3), (True, 1)):
        images = jax.random.normal(jax.random.key(0), (10, 12, 12, channels), jnp.float64)
        key = jax.random.key(1)
        out = released_augment(images, key=key, grayscale=grayscale)
        transforms = [jax.jit(t) for t in _released_transforms(grayscale)]
        picks = []
        for i, k in enumerate(jax.random.split(key, images.shape[0])):
            k_pick, k_apply = jax.random.split(k)
            which = int(jax.random.randint(k_pick, (), 0, len(transforms)))
            picks.append(which)
            np.testing.assert_allclose(out[i], transforms[which](images[i], k_apply), atol=1e-12)
        assert len(set(picks)) > 1
        assert not np.allclose(out, images)


def test_activation_and_default_iterations_follow_the_released_configs():
    assert distill_activation((32, 32, 3), None) == "softplus"
    assert distill_activation((64, 64, 3), None) == "relu"
    assert distill_activation((32, 32, 3), 4) == "relu"
    assert [table7_steps(i) for i in (1, 10, 50)] == [15000, 10000, 5000]


def test_released_evaluation_loop_runs_rounds_of_500_steps_with_one_key():
    """eval.py: ``steps // 200`` rounds of 500 steps without augmentation (the tail at the
    schedule's floor), ``steps // 500`` with it, every round from the same ``aug_key``."""
    from distillation.evaluation._evaluate import EvalConfig, _schedule

    plain, loop = EvalConfig(), EvalConfig(released_loop=True)
    augmented = EvalConfig(released_loop=True, augment=True)
    assert (plain.total_steps(10), plain.total_steps(20)) == (1000, 2000)
    assert (loop.total_steps(10), loop.total_steps(20)) == (2500, 5000)
    assert (augmented.total_steps(10), augmented.total_steps(20)) == (1000, 2000)
    schedule = _schedule(loop, loop.train_steps(10))
    assert float(schedule(1000)) == pytest.approx(1e-6, rel=1e-3)  # 1 % of 1e-4
    assert float(schedule(2400)) == pytest.approx(1e-6, rel=1e-3)

    key = jax.random.key(3)
    data = lambda keys: np.asarray(jax.random.key_data(keys))  # noqa: E731
    fresh = data(plain.step_keys(key, 2500))
    assert len(np.unique(fresh, axis=0)) == 2500
    repeated = data(loop.step_keys(key, 2500))
    assert repeated.shape == fresh.shape
    assert len(np.unique(repeated, axis=0)) == 500
    for t in (0, 1, 499, 1234):
        np.testing.assert_array_equal(repeated[t], repeated[t + 500])


def test_inner_adam_continues_the_pool_models_step_count():
    """The released inner solve reuses the pool model's Adam state: zero moments, but a counter
    at the model's age, which Adam's bias correction reads. A hand-written Adam from t = age."""
    from distillation._algorithms import vig

    target = jnp.asarray([1.0, -2.0, 0.5])
    loss = lambda p: jnp.sum((p - target) ** 2 * jnp.asarray([1.0, 3.0, 0.2]))  # noqa: E731
    lr, age, steps = 0.05, 7, 5
    algorithm = vig(n_inner=steps, inner_lr=lr)
    got, _, _ = algorithm.with_inner_count(jnp.asarray(age)).inner_solver(loss, jnp.zeros(3))
    p, m, v = jnp.zeros(3), jnp.zeros(3), jnp.zeros(3)
    for t in range(age + 1, age + steps + 1):
        g = jax.grad(loss)(p)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
        p = p - lr * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(got, p, rtol=1e-5)
    fresh, _, _ = algorithm.inner_solver(loss, jnp.zeros(3))
    assert float(jnp.max(jnp.abs(fresh - got))) > 1e-3  # the counter does change the steps


def test_command_line_defaults_follow_the_released_configs():
    """`rcig distill` without options: Table 7's iterations for real datasets, target batch
    1024, the released learning-rate procedure, 1-15 pool steps, EMA 0.99; flip on for RGB up to
    1000 images, and off with subsets of 2000 above (the CIFAR-100 50-ipc config)."""
    from types import SimpleNamespace

    from distillation.cli._commands import _resolve, build_parser

    rgb = SimpleNamespace(image_shape=(32, 32, 3), num_classes=100, grayscale=False)
    gray = SimpleNamespace(image_shape=(28, 28, 1), num_classes=10, grayscale=True)
    parse = build_parser().parse_args
    s = _resolve(parse(["distill", "--dataset", "x", "--ipc", "10"]), rgb, "rcig", 0)
    assert (s.steps, s.flip, s.n_subset) == (10000, True, None)
    s = _resolve(parse(["distill", "--dataset", "x", "--ipc", "50"]), rgb, "rcig", 0)
    assert (s.steps, s.flip, s.n_subset) == (5000, False, 2000)
    s = _resolve(parse(["distill", "--dataset", "x"]), gray, "rcig", 0)
    assert (s.steps, s.flip, s.target_batch) == (15000, False, 1024)
    digits = SimpleNamespace(image_shape=(8, 8, 1), num_classes=10, grayscale=True)
    s = _resolve(parse(["distill", "--dataset", "digits"]), digits, "rcig", 0)
    assert s.steps == 300  # the bundled default run stays a few minutes
    explicit = parse(["distill", "--dataset", "x", "--steps", "7"])
    assert _resolve(explicit, gray, "rcig", 0).steps == 7
    assert s.algorithm().clip_implicit
    algorithm = s.algorithm()
    assert (algorithm.n_inner, algorithm.tuned_hessian_solver.steps) == (20, 20)
    assert (float(algorithm.inner_lr), float(algorithm.hessian_lr)) == pytest.approx((1e-5, 5e-5))
    config = s.distill_config(100)
    assert (config.lr_tuning, config.pool_max_steps, config.ema_decay) == ("released", 15, 0.99)
    assert (config.pool_lr, config.init_temperature, config.center_labels) == (5e-5, 1.0, True)
    with pytest.raises(SystemExit):
        parse(["distill", "--ema", "1.5"])
    assert algorithm.final_layer.frozen_weight == "released"
    held = _resolve(
        parse(["distill", "--dataset", "x", "--frozen-weight", "held"]), gray, "rcig", 0
    )
    assert held.algorithm().final_layer.frozen_weight == "held"
    assert held.fingerprint() != _resolve(explicit, gray, "rcig", 0).fingerprint()
    vig_held = _resolve(
        parse(["distill", "--dataset", "x", "--frozen-weight", "held"]), gray, "vig", 0
    )
    with pytest.raises(ValueError, match="frozen-weight held"):
        vig_held.algorithm()
    assert (s.init_draw, config.init_draw) == ("released", "released")
    uniform = _resolve(
        parse(["distill", "--dataset", "x", "--init-draw", "uniform"]), gray, "rcig", 0
    )
    assert uniform.distill_config(100).init_draw == "uniform"
    buffer = _resolve(
        parse(["distill", "--dataset", "x", "--init-draw", "buffer"]), gray, "rcig", 0
    )
    assert buffer.distill_config(100).init_draw == "buffer"
    assert buffer.fingerprint() != _resolve(explicit, gray, "rcig", 0).fingerprint()
    assert uniform.fingerprint() != _resolve(explicit, gray, "rcig", 0).fingerprint()
    subset = _resolve(parse(["distill", "--dataset", "x"]), gray, "random", 0)
    assert subset.distill_config(100).init_draw == "uniform"  # a random subset is uniform


def test_the_released_init_draws_the_first_of_each_class_from_a_shuffle_buffer():
    """Row 34: the released ``init_proto`` passes the training set, in its stored order, through
    ``tf.data``'s ``shuffle(10·ipc·K)`` and keeps the first ``ipc`` of each class to come out. Its
    k-th output is one of the first ``B + k`` examples, so its starts come from the head of the
    file; a uniform draw spreads over the whole class. ``released`` (tf.data's generator, the
    run's seed) and ``buffer`` (our generator, the key) follow the same rule."""
    from distillation._distill import _pick_as_released, _pick_from_buffer, _pick_per_class

    k, n = 10, 6000
    labels = np.tile(np.arange(k), n // k)  # classes interleaved, as in MNIST's file
    draws = {
        "released": lambda ipc, s: _pick_as_released(labels, k, ipc, s),
        "buffer": lambda ipc, s: _pick_from_buffer(labels, k, ipc, jax.random.key(s)),
    }
    for ipc in (1, 3):
        b = 10 * ipc * k
        uniform = [_pick_per_class(labels, k, ipc, jax.random.key(s)) for s in range(40)]
        assert np.mean(uniform) > n / 4  # the whole file
        for draw in draws.values():
            picked = [draw(ipc, s) for s in range(40)]
            for picks in picked:
                assert np.array_equal(np.bincount(labels[picks], minlength=k), np.full(k, ipc))
                assert np.array_equal(labels[picks], np.repeat(np.arange(k), ipc))
                # every class is full long before the stream has passed 2·B examples
                assert picks.max() < 2 * b
            assert np.mean(picked) < b  # the head of the file
            assert len({tuple(p) for p in picked}) > 30  # a draw, not a fixed choice
    ordered = np.repeat(np.arange(k), n // k)
    for name, pick in (
        ("released", lambda ipc, s: _pick_as_released(ordered, k, ipc, s)),
        ("buffer", lambda ipc, s: _pick_from_buffer(ordered, k, ipc, jax.random.key(s))),
    ):
        # The same seed gives the same start; a class sorted to the end of the file is reached.
        np.testing.assert_array_equal(pick(1, 5), pick(1, 5))
        picks = pick(2, 0)
        assert np.array_equal(ordered[picks], np.repeat(np.arange(k), 2)), name
        # class 9 starts at 5400: its first two out of the buffer come from near its start
        assert picks[-2:].min() >= 5400 and picks[-2:].max() < 5400 + 2 * 200, name
    with pytest.raises(ValueError, match="class 1 has only 0 training images"):
        _pick_as_released(np.zeros(50, dtype=np.int64), 2, 1, 0)
    with pytest.raises(ValueError, match="class 1 has only 0 training images"):
        _pick_from_buffer(np.zeros(50, dtype=np.int64), 2, 1, jax.random.key(0))


def test_philox4x32_matches_the_random123_known_answers():
    """tf.data's shuffle draws from Philox-4×32-10; ours must be that generator bit for bit. The
    known-answer vectors of Random123 (``kat_vectors``, the generator's reference
    implementation): counter, key → output."""
    from distillation._tf_shuffle import philox4x32

    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    counters = np.asarray([c for c, _, _ in cases[:1]] * 2, np.uint64)  # a batch of equal rows
    assert np.array_equal(philox4x32(counters, (0, 0)), np.asarray([cases[0][2]] * 2, np.uint32))
    for counter, key, expected in cases:
        got = philox4x32(np.asarray([counter], np.uint64), key)[0]
        assert tuple(int(v) for v in got) == expected, [hex(int(v)) for v in got]


def test_tf_shuffle_order_is_tensorflows():
    """``tf_shuffle_order(n, B, seed)`` is ``tf.data.Dataset.range(n).shuffle(B, seed=seed)``'s
    first iteration. Expected values printed by TensorFlow 2.21 (the official harness's venv,
    no global seed), 2026-12-06: a buffer smaller than the data, one larger, and seeds that
    TensorFlow truncates modulo 2³¹ − 1 (2³¹ + 5 acts as 6, 2³¹ − 1 as 0)."""
    import itertools

    from distillation._tf_shuffle import tf_shuffle_order

    def first(n, b, seed, m=12):
        return list(itertools.islice(tf_shuffle_order(n, b, seed), m))

    assert first(50, 10, 0) == [2, 1, 10, 0, 7, 6, 15, 4, 3, 14, 8, 12]
    assert first(50, 10, 1) == [0, 10, 3, 6, 7, 4, 11, 13, 17, 9, 19, 1]
    assert first(200, 100, 2) == [60, 38, 20, 50, 78, 66, 39, 29, 51, 57, 28, 48]
    assert first(30, 100, 5) == [25, 17, 5, 29, 27, 21, 11, 20, 15, 24, 1, 19]
    assert first(40, 7, 123456789, 10) == [0, 1, 6, 9, 10, 8, 5, 11, 14, 7]
    assert first(40, 7, 2**31 + 5, 10) == first(40, 7, 6, 10) == [2, 6, 5, 1, 3, 11, 4, 12, 14, 10]
    assert first(40, 7, 2**31 - 1, 10) == first(40, 7, 0, 10) == [3, 4, 2, 1, 5, 8, 11, 12, 10, 14]
    for n, b in ((50, 10), (30, 100), (1, 1), (0, 4)):
        assert sorted(tf_shuffle_order(n, b, 3)) == list(range(n))  # a permutation
    with pytest.raises(ValueError, match="buffer_size ≥ 1, got 5 and 0"):
        next(tf_shuffle_order(5, 0, 0))


def test_the_released_draw_starts_where_the_released_code_starts():
    """With the run's seed, ``init_draw="released"`` picks exactly the training examples the
    released ``init_proto`` picks: MNIST 1 ipc, seeds 0–199, the indices their code chose
    (``benchmarks/official_init_indices.py`` in the official harness, committed as
    ``benchmarks/results/official_init_indices_mnist_ipc1_200.json``). Only the first 150 of
    MNIST's training labels matter (no pick reaches past 146); the rest are padding."""
    import json
    from pathlib import Path

    from distillation._distill import _pick_as_released, init_support

    head = (
        "50419213143536172869409112432738690560761879398593307498094144604561001716302117902678"
        "3904674680783157171163029311049200202718641634591338547742858673"
    )
    labels = np.zeros(60000, np.int64)
    labels[: len(head)] = [int(c) for c in head]
    path = (
        Path(__file__).parents[1] / "benchmarks/results/official_init_indices_mnist_ipc1_200.json"
    )
    theirs = {int(s): v for s, v in json.loads(path.read_text()).items()}
    assert len(theirs) == 200 and max(max(v) for v in theirs.values()) < len(head)
    for seed, indices in theirs.items():
        assert _pick_as_released(labels, 10, 1, seed).tolist() == indices, seed
    # init_support reads the seed from jax.random.key(seed), as distill() does for its key.
    images = np.arange(60000, dtype=np.float32).reshape(60000, 1, 1, 1)
    for seed in (0, 2):
        support = init_support(images, labels, 10, 1, key=jax.random.key(seed), draw="released")
        assert np.asarray(support.images).ravel().astype(int).tolist() == theirs[seed]


def test_the_released_draw_matches_the_released_cifar10_runs():
    """The same on CIFAR-10 read in one permuted order (``side_by_side.py cifar10-arrays
    --permute 0``), seeds 0-2: the indices the released ``init_proto`` chose there
    (``official_init_indices.py --dataset cifar10``, committed as
    ``benchmarks/results/official_init_indices_cifar10_perm0.json``; the released runs checked
    there started from exactly those images, their ``checkpoint_0``). Only the permuted file's
    first 130 labels matter (no pick reaches past 103)."""
    import json
    from pathlib import Path

    from distillation._distill import _pick_as_released

    head = (
        "51251854096243716285223245341589114405345572700662936694976280232473241714631621337720"
        "53120406495211556859957787403325958550197160"
    )
    labels = np.zeros(50000, np.int64)
    labels[: len(head)] = [int(c) for c in head]
    path = Path(__file__).parents[1] / "benchmarks/results/official_init_indices_cifar10_perm0.json"
    found = json.loads(path.read_text())
    theirs = {int(s): v for s, v in found.items() if s.isdigit()}
    gaps = found["checkpoint_0_max_abs_gap"]  # the runs checked: their starts, exactly
    assert sorted(theirs) == [0, 1, 2] and "1" in gaps and set(gaps.values()) == {0.0}
    for seed, indices in theirs.items():
        assert _pick_as_released(labels, 10, 1, seed).tolist() == indices, seed


def test_init_support_names_a_bad_seed_or_draw(unchecked_types):
    from distillation._distill import init_support

    labels = np.tile(np.arange(10), 20)
    images = np.zeros((200, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="`seed` must be an integer or None, got 1.5"):
        init_support(images, labels, 10, 1, key=jax.random.key(0), draw="released", seed=1.5)
    with pytest.raises(ValueError, match="'uniform', 'released' or 'buffer', got 'tf'"):
        init_support(images, labels, 10, 1, key=jax.random.key(0), draw="tf")


def test_weights_are_initialised_as_the_released_models_flax_lecun_normal():
    """Row 30: the released models take flax's default kernel initialiser, a normal truncated at
    ±2 standard deviations and rescaled to variance 1/fan_in. A plain normal of that variance (the
    earlier initialiser here) puts ~2.3 % of a kernel's entries beyond the truncation bound."""
    from distillation._architectures import build_network

    key = jax.random.PRNGKey(0)
    net = conv_net((32, 32, 3), 10, key=key, width=32, depth=3)
    kernels = [*net.body.weights, net.head.weight]
    for arch in ("vgg11", "resnet18"):
        built, _ = build_network(arch, (32, 32, 3), 10, key=key, width=32)
        kernels += [x for x in jax.tree_util.tree_leaves(built) if x.ndim in (2, 4)]
    assert len(kernels) > 10
    for w in kernels:
        w = np.asarray(w, np.float64)
        fan_in = math.prod(w.shape[:-1])
        z = w * math.sqrt(fan_in)  # standard units of the target variance
        bound = 2.0 / 0.87962566103423978  # flax's truncation, after its variance rescaling
        assert np.abs(z).max() <= bound * (1 + 1e-5), (w.shape, np.abs(z).max())
        # The variance is kept: the sample variance of n draws has a standard error below
        # sqrt(2 / n), so 6 of them cannot fail by chance.
        assert abs(z.var() - 1.0) < 6 * math.sqrt(2.0 / z.size), (w.shape, z.var())


def _adabelief_2023(grads, lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16):
    """The oracle: AdaBelief as optax before 0.2.4 wrote it (the optax the released code ran on,
    April 2023), in float64 NumPy: the belief tracks the error against the previous moment."""
    m = s = np.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads, start=1):
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps_root  # m is still m_{t-1} here
        m = b1 * m + (1 - b1) * g
        m_hat, s_hat = m / (1 - b1**t), s / (1 - b2**t)
        out.append(-lr * m_hat / (np.sqrt(s_hat) + eps))
    return out


def test_released_adabelief_is_optax_before_0_2_4(x64):
    """Row 31: the released code's AdaBelief (optax < 0.2.4) against a float64 oracle of that
    formula, and current optax's (pull request 1130) larger by exactly 1/b1 without the eps terms,
    which is the step-size difference the default removes."""
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(7, 5)) + 0.3 for _ in range(12)]
    opt = released_adabelief(0.003)
    state = opt.init(jnp.zeros((7, 5)))
    for g, want in zip(grads, _adabelief_2023(grads, 0.003), strict=True):
        got, state = opt.update(jnp.asarray(g), state)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
    # Without eps and eps_root, current optax's belief is b1² times the released one's, so its
    # updates are 1/b1 times larger at every step.
    b1 = 0.9
    old, new = released_adabelief(1.0, eps=0.0, eps_root=0.0), optax.adabelief(1.0, eps=0.0)
    s_old, s_new = old.init(jnp.zeros((7, 5))), new.init(jnp.zeros((7, 5)))
    for t, g in enumerate(grads):
        u_old, s_old = old.update(jnp.asarray(g), s_old)
        with jax.numpy_dtype_promotion("standard"):  # optax's own bias correction: float ** int
            u_new, s_new = new.update(jnp.asarray(g), s_new)
        if t == 0:  # m_0 = 0: the two errors differ by (1 - b1), not b1, at the first step
            continue
        np.testing.assert_allclose(np.asarray(u_new), np.asarray(u_old) / b1, rtol=1e-9)


def test_the_meta_optimizer_defaults_to_the_released_adabelief(unchecked_types):
    """``DistillConfig.adabelief``: "released" (default) and "current" give different steps on
    the same gradients; a bad name is refused before anything runs."""
    from distillation._algorithms import SupportSet

    support = SupportSet(jnp.ones((2, 4, 4, 1)), jnp.ones((2, 3)), jnp.asarray(0.0))
    grads = [
        SupportSet(jnp.full((2, 4, 4, 1), g), jnp.full((2, 3), -g), jnp.asarray(g))
        for g in (1.0, 0.2, -0.5)
    ]

    def steps(config):
        opt = meta_optimizer(config)
        state, out = opt.init(support), []
        for g in grads:
            with jax.numpy_dtype_promotion("standard"):  # as bilevel.optax_step runs optax
                update, state = opt.update(g, state)
            out.append(float(update.images[0, 0, 0, 0]))
        return out

    released, current = steps(DistillConfig()), steps(DistillConfig(adabelief="current"))
    want = [
        float(u[0, 0])
        for u in _adabelief_2023([np.full((1, 1), g) for g in (1.0, 0.2, -0.5)], 0.003)
    ]
    # float32: 1 - b2**t at t = 2 is 0.002, computed from 0.998 with float32 rounding, so the
    # bias correction alone carries up to ~500 eps of relative error.
    np.testing.assert_allclose(released, want, rtol=1000 * float(np.finfo(np.float32).eps))
    assert abs(current[2] - released[2]) > 0.05 * abs(released[2]), (released, current)
    with pytest.raises(ValueError, match="`adabelief` must be 'released' or 'current', got 'adam'"):
        DistillConfig(adabelief="adam")  # type: ignore[arg-type]
