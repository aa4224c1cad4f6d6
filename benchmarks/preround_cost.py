"""Seconds of the released learning-rate pre-round, with and without the inner-only probe.

``Distiller.tune_learning_rates`` runs the released pre-round (``released_preround``) with
``inner_probe``: while the inner rate is tuned, its probes skip the Hessian-inverse solve and the
target batch (that loop reads only the inner class). This measures what that saves against the
full probe in both loops, on MNIST 1 ipc with the default configuration (target batch 1024,
n_inner = n_H = 20, pool 30). Both variants share one process and one compiled probe (both
programs compiled first, compilation reported apart), and run interleaved A B A B on the same
state, so they see the same machine; each round prints the seconds, the number of probes and
the rates (which must agree: the inner class is the same by construction).

Run (nothing else on the CPU)::

    python benchmarks/preround_cost.py --width 32 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def main() -> None:
    from distillation._algorithms import rcig
    from distillation._distill import DistillConfig, Distiller, init_support
    from distillation._tuning import released_preround
    from distillation.data._datasets import load_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(MNIST))
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    if args.width < 1 or args.rounds < 1:
        raise SystemExit(f"--width and --rounds must be ≥ 1, got {args.width}, {args.rounds}")

    dataset = load_dataset(args.dataset)
    config = DistillConfig(width=args.width, flip=False)
    assert config.lr_tuning == "released"
    k_support, k_state = jax.random.split(jax.random.key(0))
    support = init_support(
        dataset.x_train,
        dataset.y_train,
        dataset.num_classes,
        1,
        key=k_support,
        init_temperature=config.init_temperature,
        center_labels=config.center_labels,
    )
    distiller = Distiller.build(
        rcig(), config, image_shape=dataset.x_train.shape[1:], num_classes=dataset.num_classes
    )
    state = distiller.init(support, key=k_state)
    x_dev = jnp.asarray(dataset.x_train)
    y_dev = jax.nn.one_hot(jnp.asarray(dataset.y_train), dataset.num_classes, dtype=jnp.float32)
    x_probe, y_probe = distiller.probe_data(x_dev, y_dev, key=k_state)
    probe_fn = jax.jit(distiller.preround_probe, static_argnames="hessian")

    def probe(algorithm, call: int, hessian: bool = True) -> tuple[int, int]:
        classes = probe_fn(
            state, algorithm, x_probe, y_probe, jnp.asarray(call, jnp.int32), hessian=hessian
        )
        return int(classes[0]), int(classes[1])

    t0 = time.perf_counter()
    probe(state.algorithm, 0, hessian=True)
    t1 = time.perf_counter()
    probe(state.algorithm, 0, hessian=False)
    t2 = time.perf_counter()
    print(json.dumps({"compile_full_s": t1 - t0, "compile_inner_s": t2 - t1}), flush=True)

    variants = {
        "full": lambda: released_preround(probe, state.algorithm),
        "inner_probe": lambda: released_preround(
            probe, state.algorithm, inner_probe=lambda a, call: probe(a, call, hessian=False)[0]
        ),
    }
    for r in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            tuned, calls = run()
            seconds = time.perf_counter() - start
            row = {
                "round": r,
                "variant": name,
                "seconds": round(seconds, 1),
                "probes": calls,
                "rates": [float(tuned.inner_lr), float(tuned.hessian_lr)],
                "width": args.width,
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
