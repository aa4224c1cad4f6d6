"""One meta-step of this project's RCIG against the authors' released code, from identical inputs.

The accuracy side by side (``side_by_side.py``) compares whole runs, which draw different initial
images, pool models and batches from the same seed, so single-seed differences of 1–3 points
are expected both ways. This benchmark removes the draws: it takes the same support set (MNIST
images, one per class, labels ``one-hot − 1/K``, temperature 1), the same target batch (1024 MNIST
training images), the same learning rates and **the same pool model** — created and trained for
``t`` pool steps by the released code (flax ``Conv``, Adam 5e-5 on the support set), then copied
into this project's ``ConvNet`` together with its Adam state — and computes one meta-step in both
codes:

* the released code (in its own venv, ``../shared/tools/official_rcig`` set up; run as a
  subprocess of this script): ``do_training_steps`` (the inner solve, 20 Adam steps on the
  tangent parameters, the pool model's base weights moving with its Adam state) and the parts of
  ``do_meta_train_step`` (``get_gt_and_direct``, ``get_h_inv_vp``, ``get_implicit_grad``, the
  clipping), then ``do_meta_train_step`` itself for the updated support set and its EMA;
* this project: :meth:`distillation.Distiller.meta_gradient` at the pool model moved by
  ``n_inner`` zero-gradient steps of its Adam (``ModelPool.drifted``, ``pool_drift=True``) with
  the inner Adam's counter at the model's age (``inner_count_from_pool``),
  ``distillation._tuning.solve_traces`` for the two solves' traces, and :meth:`Distiller.step` for
  the update and the EMA (AdaBelief as the harness's optax, ``adabelief="current"``).

It prints, per setting, the relative difference ``‖ours − theirs‖ / ‖theirs‖`` of each quantity,
beside two references: the released code against itself with XLA's own convolutions instead of
YNNPACK (``XLA_FLAGS``; the same computation rounded differently: the float32 noise floor), and, for
``t > 0``, ours against the released code driven to move the pool weights once before its inner
solve, as this project does (``_drift_once``: their functions called in another order, not a change
of their code). It writes ``benchmarks/results/step_vs_official.json``. Float32 throughout; the two
codes order their sums differently, so agreement is to float32 rounding amplified by the solves, not
bit for bit. One known difference is by construction: the released code moves the base weights step
by step *during* the inner solve (each inner step linearises at a slightly moved point), this
project moves them once before it (``ModelPool.drifted``); at ``t = 0`` (a fresh model, Adam moments
zero) the weights do not move and the two inner solves are the same computation.

Usage (the official venv and tree from ``../shared/tools/official_rcig/setup.sh``)::

    python benchmarks/step_vs_official.py                      # widths 32 and 128, t = 0 and 12
    python benchmarks/step_vs_official.py --widths 32 --pool-steps 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT.parent / "shared" / "tools" / "official_rcig"
K = 10
L2_RATE = 0.0005  # configs_final/depth_3_no_flip.txt; lambda = l2_rate * ipc * K
# The released runs' tuned rates (docs/fidelity.md): width 32 seed 0, width 128 seed 0.
RATES = {32: (1.38e-3, 17.58), 128: (1.0784915102210452e-4, 8.479939925435627)}


# --------------------------------------------------------------------------------------------
# The released code's side (runs in its venv; imports only numpy, jax, flax, optax and its tree)
# --------------------------------------------------------------------------------------------


def _flat(prefix: str, tree, out: dict) -> None:
    for name, value in tree.items():
        if isinstance(value, dict):
            _flat(f"{prefix}{name}/", value, out)
        else:
            out[f"{prefix}{name}"] = np.asarray(value)


def official_side(inputs: str, output: str, tree: str) -> None:
    sys.path[:0] = [str(HARNESS / "shim"), tree]
    os.chdir(tempfile.mkdtemp())
    import algorithms
    import flax
    import jax
    import ml_collections
    import optax
    import utils
    from models import Conv

    data = dict(np.load(inputs))
    width, t, seed = int(data["width"]), int(data["pool_steps"]), int(data["seed"])
    inner_lr, hvp_lr = float(data["inner_lr"]), float(data["hvp_lr"])
    x_proto, y_proto = data["x_proto"], data["y_proto"]
    x_t, y_t = data["x_target"], data["y_target_centred"]
    cfg = json.loads(Path(tree, "configs_final", "depth_3_no_flip.txt").read_text())
    cfg["direct_batch_sizes"] = tuple(cfg["direct_batch_sizes"])
    cfg.update(l2=cfg["l2_rate"] * x_proto.shape[0], use_x64=False, naive_loss=False)
    cfg.update(model_depth=3, output_dir=None, max_steps=1)
    alg_config = ml_collections.FrozenConfigDict(ml_collections.ConfigDict(cfg))
    l2, identity = alg_config.l2, algorithms.identity

    model = Conv(use_softplus=True, beta=cfg["softplus_temp"], num_classes=K, width=width, depth=3)
    state, _ = algorithms.get_new_train_state(
        jax.random.PRNGKey(seed),
        cfg["pool_learning_rate"],
        3,
        False,
        True,
        model.apply,
        model.init,
        x_proto.shape,
        naive_loss=False,
    )
    batch = {"images": x_proto, "labels": y_proto}
    key = jax.random.PRNGKey(seed + 1)
    for _ in range(t):  # the pool's training steps, as run_rcig makes them
        key, k = jax.random.split(key)
        state, _ = algorithms.do_training_steps(
            state,
            batch,
            k,
            n_steps=1,
            has_bn=False,
            use_base_params=True,
            aug=identity,
            batch_size=None,
            max_batch_size=x_proto.shape[0],
            train=True,
        )
    out: dict = {}
    _flat("pool/", state.params["base_params"], out)
    adam_base = state.opt_state[1].inner_state[0]
    _flat("mu/", adam_base.mu["base_params"], out)
    _flat("nu/", adam_base.nu["base_params"], out)
    out["adam_count"] = np.asarray(adam_base.count)
    out["tangent_adam_count"] = np.asarray(state.opt_state[0].inner_state[0].count)

    key, train_key = jax.random.split(key)
    if bool(data.get("drift_once", False)):
        state = _drift_once(algorithms, state, batch, train_key, l2, alg_config, cfg)
    inner_state, losses = algorithms.do_training_steps(
        state,
        batch,
        train_key,
        n_steps=cfg["n_inner_steps"],
        l2=l2,
        has_bn=False,
        train=False,
        aug=identity,
        do_krr=True,
        batch_size=None,
        inject_lr=inner_lr,
        alg_config=alg_config,
    )
    out["inner_trace"] = np.asarray(losses[: cfg["n_inner_steps"]])
    _flat("moved/", inner_state.params["base_params"], out)

    proto = algorithms.ProtoHolder(x_proto, y_proto, 0.0, x_proto.shape[0], learn_label=True)
    masks = (
        {"x_proto": True, "y_proto": True, "log_temp": False},
        {"x_proto": False, "y_proto": False, "log_temp": True},
    )
    tx = optax.chain(
        optax.masked(optax.adabelief(cfg["proto_learning_rate"]), masks[0]),
        optax.masked(optax.adabelief(0.03), masks[1]),
    )
    params = flax.core.unfreeze(proto.init({"params": jax.random.PRNGKey(0)}))["params"]
    coreset = algorithms.CoresetTrainState.create(
        apply_fn=proto.apply,
        tx=tx,
        params=params,
        train_it=0,
        ema_average=params,
        ema_hidden=utils._zero_like(params),
    )
    key, meta_key = jax.random.split(key)
    common = dict(
        has_bn=False,
        l2=l2,
        n_hinv_steps=cfg["n_hinv_steps"],
        do_krr=True,
        aug=identity,
        aug_repeats=0,
        normal_repeats=1,
    )
    g_t, direct, aug_key, loss, acc = algorithms.get_gt_and_direct(
        inner_state,
        coreset,
        x_t,
        y_t,
        aug_key=meta_key,
        batch_sizes=alg_config.direct_batch_sizes,
        max_forward_batch_size=None,
        **common,
    )
    h_inv_vp, residuals = algorithms.get_h_inv_vp(
        coreset,
        inner_state,
        g_t,
        n_steps=cfg["n_hinv_steps"],
        l2=l2,
        has_bn=False,
        batch_stats=None,
        init=None,
        do_krr=True,
        lr=hvp_lr,
        pre_s=None,
        batch_size=None,
        alg_config=alg_config,
    )
    implicit = algorithms.get_implicit_grad(
        h_inv_vp,
        inner_state,
        coreset,
        x_t,
        y_t,
        aug_key=aug_key,
        batch_size=None,
        use_x64=False,
        **common,
    )
    # do_meta_train_step's clipping, leaf by leaf (0/0 for the temperature, whose implicit part
    # is zero: nan_to_num makes it 0, as theirs)
    np.seterr(invalid="ignore")
    clipped = {
        k: np.nan_to_num(
            np.asarray(g) / np.linalg.norm(g) * min(np.linalg.norm(direct[k]), np.linalg.norm(g))
        )
        for k, g in implicit.items()
    }
    new_coreset, (loss2, _, residuals2, grad_norm, *_) = algorithms.do_meta_train_step(
        inner_state,
        coreset,
        x_t,
        y_t,
        aug_key=meta_key,
        lr=hvp_lr,
        direct_batch_sizes=alg_config.direct_batch_sizes,
        implicit_batch_size=None,
        hinv_batch_size=None,
        do_precompute=False,
        max_forward_batch_size=None,
        alg_config=alg_config,
        **common,
    )
    out["hessian_trace"] = np.asarray(residuals[: cfg["n_hinv_steps"]])
    out["outer_loss"], out["outer_acc"] = np.asarray(loss), np.asarray(acc)
    _flat("direct/", direct, out)
    _flat("implicit_raw/", implicit, out)
    _flat("implicit/", clipped, out)
    _flat("new/", new_coreset.params, out)
    _flat("ema/", new_coreset.ema_average, out)
    # The step's own outputs, to check that the parts above are the step's computation.
    out["step_outer_loss"] = np.asarray(loss2)
    out["step_hessian_trace"] = np.asarray(residuals2[: cfg["n_hinv_steps"]])
    _flat("step_grad_norm/", grad_norm, out)
    np.savez(output, **out)


def _drift_once(algorithms, state, batch, key, l2, alg_config, cfg):
    """The released code driven as this project orders the pool drift (not a change of their
    code): their inner solve run once with a zero inner rate moves the base weights the
    ``n_inner`` steps of the pool Adam; the state then gets those weights, its tangent
    parameters back at 0 and the pool Adam's first moments of the base weights zeroed, so that
    the real inner solve that follows keeps the base weights where they are (as
    ``ModelPool.drifted`` before the solve), its tangent Adam's counter unchanged."""
    import jax
    import jax.numpy as jnp

    moved, _ = algorithms.do_training_steps(
        state, batch, key, n_steps=cfg["n_inner_steps"], l2=l2, has_bn=False, train=False,
        aug=algorithms.identity, do_krr=True, batch_size=None, inject_lr=0.0,
        alg_config=alg_config,
    )  # fmt: skip
    base = state.opt_state[1]
    adam = base.inner_state[0]
    held = adam._replace(mu=jax.tree_util.tree_map(jnp.zeros_like, adam.mu))
    opt_state = (state.opt_state[0], base._replace(inner_state=(held, *base.inner_state[1:])))
    params = {"base_params": moved.params["base_params"],
              "tangent_params": state.params["tangent_params"]}  # fmt: skip
    return state.replace(params=params, opt_state=opt_state)


# --------------------------------------------------------------------------------------------
# This project's side
# --------------------------------------------------------------------------------------------


def _inputs(width: int, t: int, seed: int, data_dir: Path) -> dict:
    from distillation.data._datasets import load_dataset

    ds = load_dataset(str(data_dir))
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(ds.y_train == c)) for c in range(K)]
    target = rng.choice(len(ds.y_train), 1024, replace=False)
    onehot = np.eye(K, dtype=np.float32)
    inner_lr, hvp_lr = RATES[width]
    return {
        "width": width,
        "pool_steps": t,
        "seed": seed,
        "inner_lr": inner_lr,
        "hvp_lr": hvp_lr,
        "x_proto": np.asarray(ds.x_train[picks], np.float32),
        "y_proto": onehot[ds.y_train[picks]] - np.float32(1 / K),
        "x_target": np.asarray(ds.x_train[target], np.float32),
        "y_target": onehot[ds.y_train[target]],
        "y_target_centred": onehot[ds.y_train[target]] - np.float32(1 / K),
    }


def _net(theirs: dict, prefix: str, like):
    """Their flax parameters (``prefix`` + ``Conv_i/kernel`` ...) as a ``ConvNet`` like ``like``."""
    import equinox as eqx
    import jax.numpy as jnp

    depth = len(like.body.weights)
    weights = tuple(jnp.asarray(theirs[f"{prefix}Conv_{i}/kernel"]) for i in range(depth))
    biases = tuple(jnp.asarray(theirs[f"{prefix}Conv_{i}/bias"]) for i in range(depth))
    head_w, head_b = (jnp.asarray(theirs[f"{prefix}Dense_0/{n}"]) for n in ("kernel", "bias"))
    for a, b in zip(
        (*weights, *biases, head_w, head_b),
        (*like.body.weights, *like.body.biases, like.head.weight, like.head.bias),
        strict=True,
    ):
        assert a.shape == b.shape, (a.shape, b.shape)
    return eqx.tree_at(
        lambda m: (m.body.weights, m.body.biases, m.head.weight, m.head.bias),
        like,
        (weights, biases, head_w, head_b),
    )


def _rel(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def ours_side(inp: dict, theirs: dict, drift_order: str = "stepwise") -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    from distillation import DistillConfig, Distiller, SupportSet, rcig
    from distillation._distill import ema_support, l2_strength
    from distillation._objectives import InnerProblem
    from distillation._tuning import solve_traces

    t = int(inp["pool_steps"])
    config = DistillConfig(
        pool_size=1,
        width=int(inp["width"]),
        adabelief="current",
        lr_tuning="none",
        drift_order=drift_order,  # type: ignore[arg-type]
    )
    algorithm = rcig(inner_lr=float(inp["inner_lr"]), hessian_lr=float(inp["hvp_lr"]))
    distiller = Distiller.build(algorithm, config, image_shape=(28, 28, 1), num_classes=K)
    support = SupportSet(
        jnp.asarray(inp["x_proto"]), jnp.asarray(inp["y_proto"]), jnp.asarray(0.0, jnp.float32)
    )
    state = distiller.init(support, key=jax.random.key(0))
    like = distiller.pool.model(state.pool, 0)
    model = _net(theirs, "pool/", like)
    adam = optax.ScaleByAdamState(
        count=jnp.asarray(theirs["adam_count"], jnp.int32),
        mu=_net(theirs, "mu/", like),
        nu=_net(theirs, "nu/", like),
    )
    stack = lambda tree: jax.tree_util.tree_map(lambda a: a[None], tree)  # noqa: E731
    opt_state = (stack(adam), *state.pool.opt_states[1:])
    pool = eqx.tree_at(
        lambda p: (p.models, p.opt_states, p.ages),
        state.pool,
        (stack(model), opt_state, jnp.asarray([t], jnp.int32)),
    )
    state = eqx.tree_at(lambda s: s.pool, state, pool)

    x_t, y_t = jnp.asarray(inp["x_target"]), jnp.asarray(inp["y_target"])
    model0, counted = distiller.at_pool_model(state, jnp.asarray(0), algorithm)
    counted = counted.with_inner_count(jnp.asarray(t, jnp.int32))
    loss, info, direct, implicit = jax.jit(distiller.meta_gradient)(
        state, counted, model0, x_t, y_t, jax.random.key(1)
    )
    problem = InnerProblem(
        counted.network(model0), support.images, support.labels, l2_strength(support, config)
    )
    inner_trace, hessian_trace = jax.jit(solve_traces)(
        counted, problem, x_t, y_t, support.log_temperature
    )
    new_state, _ = jax.jit(distiller.step)(state, (x_t, y_t))
    ema = ema_support(new_state, config.ema_decay)

    def pair(tree):
        # Their temperature parameter s scales the logits by e^s, ours divides them by
        # τ = e^{log τ}: log τ = −s (docs/fidelity.md row 16), so its gradient and its AdaBelief
        # step (odd in the gradient) are theirs negated.
        return {"x_proto": tree.images, "y_proto": tree.labels, "log_temp": -tree.log_temperature}

    moved = {f"moved/{name}": np.asarray(value) for name, value in _flax_names(model0).items()}
    ours = {
        **moved,
        "inner_trace": np.asarray(info.inner_loss_trace[:20]),
        "inner_trace_probe": np.asarray(inner_trace[:20]),
        # Theirs records x·(Hx − 2g), twice the quadratic ½xᵀHx − gᵀx that ours records.
        "hessian_trace": 2 * np.asarray(hessian_trace[:20]),
        "outer_loss": np.asarray(loss),
        "outer_acc": np.asarray(info.accuracy),
    }
    total = jax.tree_util.tree_map(jnp.add, direct, implicit)
    for prefix, tree in (
        ("direct", direct),
        ("implicit", implicit),
        ("new", new_state.support),
        ("ema", ema),
    ):
        ours.update({f"{prefix}/{k}": np.asarray(v) for k, v in pair(tree).items()})
    ours.update({f"step_grad_norm/{k}": np.linalg.norm(v) for k, v in pair(total).items()})
    ours["pool/Conv_0/kernel"] = np.asarray(model.body.weights[0])
    return ours


def _flax_names(net) -> dict:
    names = {}
    for i, (w, b) in enumerate(zip(net.body.weights, net.body.biases, strict=True)):
        names[f"Conv_{i}/kernel"], names[f"Conv_{i}/bias"] = w, b
    names["Dense_0/kernel"], names["Dense_0/bias"] = net.head.weight, net.head.bias
    return names


ROWS = {
    "pool model copied (Conv_0 kernel)": "pool/Conv_0/kernel",
    "base weights after the inner solve": "moved/",
    "inner loss trace (20 values)": "inner_trace",
    "Hessian-inverse trace (20 values)": "hessian_trace",
    "outer loss": "outer_loss",
    "target accuracy": "outer_acc",
    **{
        f"{part} gradient, {leaf}": f"{key}/{leaf}"
        for part, key in (("direct", "direct"), ("implicit (clipped)", "implicit"))
        for leaf in ("x_proto", "y_proto", "log_temp")
    },
    **{
        f"meta-gradient norm, {leaf}": f"step_grad_norm/{leaf}"
        for leaf in ("x_proto", "y_proto", "log_temp")
    },
    **{
        f"support after the step, {leaf}": f"new/{leaf}"
        for leaf in ("x_proto", "y_proto", "log_temp")
    },
    **{f"EMA after the step, {leaf}": f"ema/{leaf}" for leaf in ("x_proto", "y_proto", "log_temp")},
}


def differences(a: dict, b: dict) -> dict:
    """``‖a − b‖ / ‖b‖`` for each row (a key ending in ``/``: all arrays under it, together)."""
    rows = {}
    for name, key in ROWS.items():
        keys = sorted(k for k in b if k.startswith(key)) if key.endswith("/") else [key]
        rows[name] = _rel(
            np.concatenate([np.ravel(a[k]) for k in keys]),
            np.concatenate([np.ravel(b[k]) for k in keys]),
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--pool-steps", type=int, nargs="+", default=[0, 12])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--venv", default=os.environ.get("RCIG_VENV", "/tmp/official_rcig_venv"))
    parser.add_argument("--tree", default=os.environ.get("RCIG_TREE", "/tmp/official_rcig_tree"))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_vs_official.json"
    )
    parser.add_argument("--official", nargs=2, metavar=("INPUTS", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.official:
        official_side(*args.official, args.tree)
        return
    own_convs = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            for t in args.pool_steps:
                inp = _inputs(width, t, args.seed, args.data)
                theirs = {}
                runs = [("", False), (own_convs, False)] + ([("", True)] if t > 0 else [])
                for flags, once in runs:
                    np.savez(f"{tmp}/in.npz", **inp, drift_once=once)
                    env = {
                        **os.environ,
                        "FLAX_USE_ORBAX_CHECKPOINTING": "false",
                        "TF_CPP_MIN_LOG_LEVEL": "3",
                        "XLA_FLAGS": flags,
                    }
                    subprocess.run(
                        [
                            f"{args.venv}/bin/python",
                            __file__,
                            "--tree",
                            args.tree,
                            "--official",
                            f"{tmp}/in.npz",
                            f"{tmp}/out.npz",
                        ],
                        check=True,
                        env=env,
                    )
                    theirs[flags, once] = dict(np.load(f"{tmp}/out.npz"))
                base = theirs["", False]
                ours = ours_side(inp, base)
                diff = differences(ours, base)
                diff["inner trace (the pre-round probe's program)"] = _rel(
                    ours["inner_trace_probe"], base["inner_trace"]
                )
                floor = differences(theirs[own_convs, False], base)
                # ours with the drift before the solve, against theirs driven in that order
                once = (
                    differences(ours_side(inp, base, "before"), theirs["", True]) if t > 0 else {}
                )
                checks = {
                    "their parts = their step: outer loss": _rel(
                        base["outer_loss"], base["step_outer_loss"]
                    ),
                    "their parts = their step: Hessian trace": _rel(
                        base["hessian_trace"], base["step_hessian_trace"]
                    ),
                    "their implicit x_proto: clipped / raw norm": float(
                        np.linalg.norm(base["implicit/x_proto"])
                        / np.linalg.norm(base["implicit_raw/x_proto"])
                    ),
                    "their inner Adam counter at the solve": int(base["tangent_adam_count"]),
                }
                results.append(
                    {
                        "width": width,
                        "pool_steps": t,
                        "seed": args.seed,
                        "inner_lr": inp["inner_lr"],
                        "hessian_lr": inp["hvp_lr"],
                        "ours_vs_theirs": diff,
                        "theirs_other_convs_vs_theirs": floor,
                        "ours_before_vs_theirs_before": once,
                        "checks": checks,
                    }
                )
                print(
                    f"\nwidth {width}, pool model after {t} pool steps; relative difference "
                    "‖a − b‖/‖b‖ to the released code (XLA defaults):"
                )
                print(
                    f"  {'quantity':48s} {'ours':>10s} {'theirs, XLA own convs':>22s} "
                    f"{'ours before vs theirs before':>29s}"
                )
                for name, value in diff.items():
                    other = f"{floor[name]:.3e}" if name in floor else "-"
                    third = f"{once[name]:.3e}" if name in once else "-"
                    print(f"  {name:48s} {value:10.3e} {other:>22s} {third:>29s}")
                for name, value in checks.items():
                    print(f"  {name:48s} {value}")
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
