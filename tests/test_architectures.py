"""The cross-architecture networks: shapes, parameter counts against the reference definitions,
batch-norm semantics, one training step, and the command line."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ARCHS = ("convnet", "resnet18", "vgg11", "alexnet")
NORMS = ("none", "instance", "batch")

# Parameter counts for CIFAR-10 (32x32x3, 10 classes), worked out by hand from each reference
# definition (batch-norm running statistics are buffers, not parameters).
#
# DC/DSA networks.py (VICO-UoE/DatasetCondensation); the three with batch norm are the well-known
# CIFAR counts of kuangliu/pytorch-cifar's ResNet18 and VGG('VGG11'):
#   ResNet18BN 11,173,962; VGG11BN 9,231,114; AlexNet 1,872,202 (5 convs with biases, fc 3072→10);
#   ConvNet (width 128, depth 3, instancenorm): 3·128·9+128 + 2·(128·128·9+128) + 3·256 + 2048·10+10
#   = 320,010.
DC_COUNTS = {
    ("resnet18", "batch"): 11_173_962,
    ("vgg11", "batch"): 9_231_114,
    ("alexnet", "none"): 1_872_202,
    ("convnet", "instance"): 320_010,
}
# The authors' released models.py (flax), as eval.py builds them:
#   VGG11: 8 convs of 128 channels with biases + Dense(128→10): 3·128·9+128 + 7·(128²·9+128) + 1290
#   ResNet18 (blocks without normalisation, flatten 4·4·512): stem 3·64·9, stage convs without
#   bias, 1x1 shortcuts, Dense(8192→10): 1728 + 147456 + 524288 + 2097152 + 8388608 + 81930;
#   ConvNet (width 128·2^i): 3·128·9+128 + 128·256·9+256 + 256·512·9+512 + 8192·10+10.
RELEASED_COUNTS = {
    ("vgg11", "none"): 3 * 128 * 9 + 128 + 7 * (128 * 128 * 9 + 128) + 128 * 10 + 10,
    ("resnet18", "none"): 1728 + 147456 + 524288 + 2097152 + 8388608 + 81930,
    ("resnet18", "batch"): 1728 + 147456 + 524288 + 2097152 + 8388608 + 81930 + 2 * 64,
    ("convnet", "none"): 3 * 128 * 9
    + 128
    + 128 * 256 * 9
    + 256
    + 256 * 512 * 9
    + 512
    + 8192 * 10
    + 10,
    ("alexnet", "none"): 1_872_202,
}


@pytest.mark.parametrize("definition, counts", [("dc", DC_COUNTS), ("released", RELEASED_COUNTS)])
def test_parameter_counts_match_the_reference_definitions(definition, counts):
    from distillation._architectures import build_network, parameter_count

    for (arch, norm), expected in counts.items():
        net, _ = eqx.filter_eval_shape(
            build_network, arch, (32, 32, 3), 10, key=jax.random.key(0), norm=norm,
            definition=definition,
        )  # fmt: skip
        assert parameter_count(net) == expected, (definition, arch, norm)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("definition", ["released", "dc"])
def test_shapes_for_mnist_and_cifar_inputs(arch, definition):
    from distillation._architectures import build_network

    for shape in ((32, 32, 3), (28, 28, 1)):
        for norm in NORMS:
            net, stats = eqx.filter_eval_shape(
                build_network, arch, shape, 7, key=jax.random.key(1), norm=norm,
                definition=definition,
            )  # fmt: skip
            x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
            out, new = jax.eval_shape(lambda n, s, x: n(x, s, train=True), net, stats, x)
            assert out.shape == (3, 7)
            assert len(stats) == len(new) and (len(stats) > 0) == (norm == "batch")


def test_convnet_without_norm_is_the_distillation_convnet():
    """The evaluation ConvNet draws the weights `conv_net` draws from the same key."""
    from distillation._architectures import build_network
    from distillation._models import conv_net

    x = jax.random.normal(jax.random.key(2), (4, 28, 28, 1))
    old = conv_net((28, 28, 1), 10, key=jax.random.key(3), width=8, activation="relu")
    new, stats = build_network("convnet", (28, 28, 1), 10, key=jax.random.key(3), width=8)
    np.testing.assert_array_equal(np.asarray(old(x)), np.asarray(new(x, stats)[0]))


def test_batch_norm_running_statistics_and_test_mode():
    """Training mode updates the running statistics with the definition's momentum; test mode
    normalises with them (at their initial values, mean 0 and variance 1, a positively
    homogeneous ReLU ConvNet is the unnormalised one scaled by (1 + eps)^(-depth/2))."""
    from distillation._architectures import EPS, build_network

    key, x = jax.random.key(4), jax.random.normal(jax.random.key(5), (6, 32, 32, 3))
    plain, _ = build_network("convnet", (32, 32, 3), 10, key=key, width=8)
    for definition, batch_weight in (("released", 0.9), ("dc", 0.1)):
        net, stats = build_network(
            "convnet", (32, 32, 3), 10, key=key, width=8, norm="batch", definition=definition
        )
        first = net.layers[0]  # the first convolution, by hand
        z = jax.lax.conv_general_dilated(
            x, first.weight, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        mean, var = jnp.mean(z, (0, 1, 2)), jnp.var(z, (0, 1, 2))
        _, new = net(x, stats, train=True)
        tol = dict(rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new[0][0], batch_weight * mean, **tol)
        np.testing.assert_allclose(new[0][1], 1 - batch_weight + batch_weight * var, **tol)
        out, unchanged = net(x, stats, train=False)
        pairs = zip(unchanged, stats, strict=True)
        assert all(a is b for pair in pairs for a, b in zip(*pair, strict=True))
        if definition == "dc":
            continue
        expected = (1 + EPS) ** -1.5 * plain(x)[0]
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6 * float(jnp.abs(out).max()))


def test_instance_norm_is_group_norm_with_one_channel_per_group(x64):
    """``Normalise(kind="instance")`` (NHWC, per image and channel over H and W) equals
    equinox's ``GroupNorm(C, C)`` (the definition of DC/DSA's ``instancenorm``, PyTorch's
    ``GroupNorm(C, C, affine=True)``) applied to each image in CHW layout, with a non-trivial
    learned scale and shift, in training and test mode; and a whole instance-normalised ConvNet
    (DC definition) is invariant to a positive scale of each input image, as it must be."""
    from distillation._architectures import _Context, build_network

    kx, ks, kb, kn = jax.random.split(jax.random.key(11), 4)
    n, h, w, c = 3, 6, 5, 4
    x = 2.0 + 3.0 * jax.random.normal(kx, (n, h, w, c), jnp.float64)
    net, stats = build_network(
        "convnet", (h, w, c), 10, key=kn, norm="instance", definition="dc", width=c, depth=1,
        dtype=jnp.float64,
    )  # fmt: skip
    layer = net.layers[1]  # conv, norm, relu, pool
    assert layer.kind == "instance"
    layer = eqx.tree_at(
        lambda m: (m.scale, m.shift),
        layer,
        (jax.random.normal(ks, (c,), jnp.float64), jax.random.normal(kb, (c,), jnp.float64)),
    )
    reference = eqx.nn.GroupNorm(c, c, eps=1e-5, dtype=jnp.float64)
    reference = eqx.tree_at(lambda m: (m.weight, m.bias), reference, (layer.scale, layer.shift))
    expected = jax.vmap(reference)(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    for train in (True, False):
        got = layer(x, _Context(stats, train))
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-12, atol=1e-12)

    big, _ = build_network(
        "convnet", (8, 8, 3), 10, key=kn, norm="instance", definition="dc", width=8,
        dtype=jnp.float64,
    )  # fmt: skip
    images = jax.random.normal(kx, (4, 8, 8, 3), jnp.float64)
    scales = jnp.array([0.5, 2.0, 7.0, 30.0])[:, None, None, None]
    out, _ = big(images, ())
    # Invariance holds up to eps = 1e-5 against each normalised variance (of order one here).
    scaled = np.asarray(big(images * scales, ())[0])
    np.testing.assert_allclose(scaled, np.asarray(out), atol=1e-4 * float(jnp.abs(out).max()))
    assert not np.allclose(np.asarray(out[0]), np.asarray(out[1]), atol=1e-3)  # not constant


@pytest.mark.parametrize(
    "arch", ["convnet", "alexnet", pytest.param("resnet18", marks=pytest.mark.slow),
             pytest.param("vgg11", marks=pytest.mark.slow)],
)  # fmt: skip
def test_one_training_step_lowers_the_loss(arch):
    """A gradient step of 10 % of the linearised distance to zero loss lowers the loss, and
    batch norm's running statistics move."""
    from distillation._architectures import build_network

    x = jax.random.normal(jax.random.key(6), (4, 32, 32, 3))
    y = jax.nn.one_hot(jnp.arange(4) % 10, 10)
    norm = "batch" if arch != "alexnet" else "none"
    net, stats = build_network(arch, (32, 32, 3), 10, key=jax.random.key(7), norm=norm, width=8)

    def loss(m):
        out, new = m(x, stats, train=True)
        return 0.5 * jnp.sum((out - y) ** 2) / y.size, new

    (before, new), grads = eqx.filter_jit(jax.value_and_grad(loss, has_aux=True))(net)
    norm2 = sum(float(jnp.sum(g**2)) for g in jax.tree_util.tree_leaves(grads))
    assert np.isfinite(norm2) and norm2 > 0
    t = 0.1 * float(before) / norm2
    stepped = jax.tree_util.tree_map(lambda p, g: p - t * g, net, grads)
    after, _ = eqx.filter_jit(loss)(stepped)
    assert float(after) < float(before) * (1 - 0.01), (float(before), float(after))
    if norm == "batch":
        assert any(not np.allclose(a[0], b[0]) for a, b in zip(new, stats, strict=True))


def test_bad_architecture_settings_are_refused(unchecked_types):
    from distillation._architectures import build_network
    from distillation.evaluation._evaluate import EvalConfig

    with pytest.raises(ValueError, match="arch must be one of"):
        build_network("resnet50", (32, 32, 3), 10, key=jax.random.key(0))
    with pytest.raises(ValueError, match="28- to 32-px"):
        build_network("vgg11", (64, 64, 3), 10, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`norm` must be one of"):
        EvalConfig(norm="group")
    with pytest.raises(ValueError, match="`definition` must be one of"):
        EvalConfig(definition="mtt")


# slow: an end-to-end command-line evaluation of two networks (~7 s)
@pytest.mark.slow
def test_evaluate_several_networks_from_the_command_line(tmp_path, capsys):
    """`--norm none,batch` trains both; the JSON is keyed by arch/norm; a 32-px-only network on
    8-px digits is refused with a message naming the flag."""
    from distillation.cli import main
    from distillation.data._datasets import load_dataset

    ds = load_dataset("digits")
    idx = np.concatenate([np.flatnonzero(ds.y_train == c)[:1] for c in range(10)])
    raw01 = ds.preprocessor.inverse(ds.x_train[idx])
    np.savez(
        tmp_path / "s.npz",
        images=raw01,
        labels=ds.y_train[idx],
        mean=np.zeros(1, np.float32),
        std=np.ones(1, np.float32),
    )
    argv = ["evaluate", str(tmp_path / "s.npz"), "--dataset", "digits", "--models", "1"]
    assert main([*argv, "--steps", "20", "--width", "8", "--norm", "none,batch", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"convnet/none", "convnet/batch"}
    for entry in result.values():
        assert set(entry) == {"no_augment"} and 0 <= entry["no_augment"]["acc_mean"] <= 100
    assert result["convnet/none"] != result["convnet/batch"]
    assert main([*argv, "--arch", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "--arch resnet18" in err and "8x8" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main([*argv, "--arch", "resnet50"])
    assert "expected a comma-separated list of convnet" in capsys.readouterr().err
    # DC/DSA's protocol, 300 epochs of the 10 images by default: learns (chance is 10 %).
    assert main([*argv, "--width", "8", "--json", "--protocol", "dc"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["acc_mean"] > 30
    assert main([*argv, "--protocol", "dc", "--released-loop"]) == 2
    err = capsys.readouterr().err
    assert "released_loop" in err and "protocol='dc'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "arch", ["convnet", pytest.param("vgg11", marks=pytest.mark.slow),
             pytest.param("resnet18", marks=pytest.mark.slow)],
)  # fmt: skip
def test_batch_norm_uses_the_batch_in_training_and_its_statistics_in_testing(arch):
    """Train mode normalises over the batch and the pixels: a bias just before a batch norm has
    no effect (zero gradient). Test mode with every layer's running statistics set to that
    layer's statistics on a batch reproduces train mode on that batch (recovered from one
    update from mean 0 / variance 1: new = (1 − w)·old + w·batch)."""
    from distillation._architectures import Conv, build_network

    definition = "dc" if arch == "resnet18" else "released"  # released blocks: no norm
    x = jax.random.normal(jax.random.key(8), (6, 32, 32, 3))
    net, stats = build_network(
        arch, (32, 32, 3), 10, key=jax.random.key(9), norm="batch", width=8,
        definition=definition,
    )  # fmt: skip
    y = jax.random.normal(jax.random.key(10), (6, 10))

    def loss(m):
        return jnp.sum((m(x, stats, train=True)[0] - y) ** 2)

    grads = eqx.filter_jit(jax.grad(loss))(net)
    first_conv = grads.layers[0]
    assert isinstance(first_conv, Conv)
    if first_conv.bias is not None:  # ResNet's convolutions have no bias
        scale = float(jnp.abs(first_conv.weight).max())
        assert float(jnp.abs(first_conv.bias).max()) < 1e-4 * scale
    apply = eqx.filter_jit(lambda m, s, train: m(x, s, train=train))
    train_out, new = apply(net, stats, True)
    w = net.layers[1].batch_weight
    exact = tuple((m / w, (v - (1 - w)) / w) for m, v in new)
    test_out, _ = apply(net, exact, False)
    scale = float(jnp.abs(train_out).max())
    np.testing.assert_allclose(test_out, train_out, rtol=1e-3, atol=1e-3 * scale)


def test_dc_protocol_first_step_is_sgd_on_cross_entropy_with_weight_decay(x64):
    """``EvalConfig(protocol="dc")``: the first step from fresh parameters p is
    ``p − 0.01·(∇CE + 5e-4·p)`` (momentum starts from the first gradient), with the
    cross-entropy taken on the argmax of soft labels; the rate is cut ×0.1 halfway; 300 epochs.
    The released protocol's first step is Adam's at rate 0 (warm-up) and leaves p unchanged."""
    from distillation._architectures import build_network
    from distillation.evaluation._evaluate import EvalConfig, _optimizer, _run_steps, _schedule

    dc = EvalConfig(protocol="dc", width=4, steps=40)
    assert EvalConfig(protocol="dc").train_steps(10) == 300
    assert EvalConfig(protocol="dc").train_steps(1000, 2000) == 300 * 8  # 2000 with mirrors
    assert float(_schedule(dc, 40)(19)) == pytest.approx(0.01)
    assert float(_schedule(dc, 40)(20)) == pytest.approx(0.001)
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3), jnp.float64)
    soft = jax.random.normal(jax.random.key(2), (6, 10), jnp.float64)  # argmax = the class
    net, stats = build_network(
        "convnet", (8, 8, 3), 10, key=jax.random.key(3), width=4, dtype=jnp.float64
    )

    def cross_entropy(m):
        logits = m(x, stats, train=True)[0]
        picked = jnp.take_along_axis(logits, jnp.argmax(soft, -1)[:, None], -1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - picked)

    grads = jax.grad(cross_entropy)(net)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.01 * (g + 5e-4 * p), net, grads)
    carry = (net, stats, _optimizer(dc, 40).init(net))
    keys = jax.random.split(jax.random.key(4), 1)
    stepped = _run_steps(carry, keys, x, soft, dc, 40)[0]
    for got, want, before in zip(
        jax.tree_util.tree_leaves(stepped),
        jax.tree_util.tree_leaves(expected),
        jax.tree_util.tree_leaves(net),
        strict=True,
    ):
        assert not np.allclose(np.asarray(want), np.asarray(before))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)
    released = EvalConfig(width=4, steps=40)
    carry = (net, stats, _optimizer(released, 40).init(net))
    same = _run_steps(carry, keys, x, soft, released, 40)[0]
    for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(net), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dc_protocol_settings_are_checked(unchecked_types):
    from distillation.evaluation._evaluate import EvalConfig

    with pytest.raises(ValueError, match="`protocol` must be one of .*got 'torch'"):
        EvalConfig(protocol="torch")
    with pytest.raises(ValueError, match="released_loop"):
        EvalConfig(protocol="dc", released_loop=True)
    with pytest.raises(ValueError, match="`learning_rate` must be None or a positive number"):
        EvalConfig(learning_rate=-1.0)
