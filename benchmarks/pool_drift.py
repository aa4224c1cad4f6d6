"""How far the pool weights drift during the released code's inner solve (fidelity row 32).

The released inner solve continues the selected pool model's Adam with a zero gradient for the
network weights, so they move ``lr · m̂/(√v̂ + ε)`` per inner step. This script trains a pool as
a distillation run does (RCIG, 1 ipc, the defaults but for the dataset, width and steps given),
then measures, for every pool model, the drift over ``n_inner`` steps
(:meth:`distillation.ModelPool.drifted`) relative to the weights, and in units of one drift step::

    python benchmarks/pool_drift.py --dataset ../shared/data/mnist --width 32 --steps 300

writes ``benchmarks/results/pool_drift.json``. ``--dataset digits`` needs no data.

``--timing ITERS``: instead, seconds per iteration with ``pool_drift`` on and off, alternated
twice in one run (fixed learning rates, from the third iteration on)::

    python benchmarks/pool_drift.py --dataset ../shared/data/mnist --timing 25
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distillation._algorithms import rcig
from distillation._distill import DistillConfig, Distiller, init_support
from distillation.data._datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def _norm(tree) -> float:
    return float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(tree))))


def _diff(a, b):
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def _siter(data, drift: bool, width: int, iters: int) -> float:
    from distillation._distill import distill

    config = DistillConfig(
        steps=iters, width=width, flip=False, lr_tuning="none", log_every=1, pool_drift=drift
    )
    result = distill(
        data.x_train,
        data.y_train,
        data.num_classes,
        rcig(inner_lr=1.4e-3, hessian_lr=17.6),
        1,
        config,
        key=jax.random.key(0),
        progress=False,
    )
    t = np.asarray([row["seconds"] for row in result.history])
    return float(np.mean(np.diff(t)[1:]))


def timing(data, width: int, iters: int) -> None:
    rows = []
    for _ in range(2):
        for drift in (True, False):
            rows.append({"pool_drift": drift, "s_per_iter": _siter(data, drift, width, iters)})
            print(rows[-1], flush=True)
    on = np.mean([r["s_per_iter"] for r in rows if r["pool_drift"]])
    off = np.mean([r["s_per_iter"] for r in rows if not r["pool_drift"]])
    print(f"on / off: {on:.3f} / {off:.3f} s per iteration, ratio {on / off:.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n-inner", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pool_drift.json")
    parser.add_argument("--timing", type=int, default=None, metavar="ITERS")
    args = parser.parse_args(argv)

    data = load_dataset(args.dataset)
    if args.timing is not None:
        timing(data, args.width, args.timing)
        return
    k = data.num_classes
    # No learning-rate tuning: the pool's training (what the drift depends on) does not read
    # the inner or Hessian-inverse rates; the run uses the algorithm's starting rates.
    config = DistillConfig(steps=args.steps, width=args.width, lr_tuning="none")
    algorithm = rcig(n_inner=args.n_inner)
    distiller = Distiller.build(algorithm, config, image_shape=data.image_shape, num_classes=k)
    key = jax.random.key(args.seed)
    support = init_support(data.x_train, data.y_train, k, 1, key=key, center_labels=True)
    state = distiller.init(support, key=jax.random.fold_in(key, 1))
    step, batch = jax.jit(distiller.step), jax.jit(distiller.next_batch)
    x, y = jnp.asarray(data.x_train), jax.nn.one_hot(jnp.asarray(data.y_train), k)
    start = time.perf_counter()
    for i in range(args.steps):
        state, metrics = step(state, batch(state, x, y))
        if (i + 1) % 50 == 0:
            print(f"step {i + 1}: outer loss {float(metrics['outer_loss']):.4f}", flush=True)
    seconds = time.perf_counter() - start

    drifted = jax.jit(distiller.pool.drifted, static_argnums=2)
    rows = []
    for i in range(config.pool_size):
        index = jnp.asarray(i)
        model = distiller.pool.model(state.pool, index)
        one = _norm(_diff(drifted(state.pool, index, 1), model))
        full = _norm(_diff(drifted(state.pool, index, args.n_inner), model))
        rows.append(
            {
                "age": int(state.pool.ages[i]),
                "drift_over_weights": full / _norm(model),
                "drift_in_first_steps": full / one if one > 0 else 0.0,
            }
        )
    aged = [r for r in rows if r["age"] > 0]
    summary = {
        "dataset": args.dataset,
        "width": args.width,
        "steps": args.steps,
        "n_inner": args.n_inner,
        "seconds": round(seconds, 1),
        "models": rows,
        "median_drift_over_weights": float(np.median([r["drift_over_weights"] for r in aged])),
        "median_drift_in_first_steps": float(np.median([r["drift_in_first_steps"] for r in aged])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "models"}, indent=1))


if __name__ == "__main__":
    main()
