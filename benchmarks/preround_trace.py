"""The pre-round's inner loss traces from the full probe and from the inner-only probe.

``benchmarks/preround_cost.py`` found the two probes classifying the inner solve at the
pre-round's second rate (1.2e-5, MNIST, width 32) differently, though they compute the same
inner solve (the inner problem does not depend on the probe's target batch). This prints, at
the first rates of the pre-round, the 21-point inner trace of each compiled program, the
steps where the trace does not decrease, and each step's decrease against the float32 spacing
of the loss (``ulp``): a decrease of a few ulps is decided by rounding, and two programs that
fuse the same sum differently can round it the other way.

Run (MNIST, the pre-round's state as ``Distiller.tune_learning_rates`` sees it)::

    python benchmarks/preround_trace.py --width 32 --out benchmarks/results/preround_trace_w32.json
    python benchmarks/preround_trace.py --width 32 --unroll false
    XLA_FLAGS=--xla_disable_hlo_passes=algsimp python benchmarks/preround_trace.py --width 32

(It found no rounding question: the unrolled inner-only program's trace is NaN, ±inf or ~1e33
and then flat, a miscompile; rolled, or with XLA's algebraic simplifier off, it is the full
probe's trace. ``tests/test_compiled.py`` checks the programs a run uses against rolled loops.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def main() -> None:
    from distillation._algorithms import rcig
    from distillation._distill import DistillConfig, Distiller, init_support
    from distillation._tuning import classify_trace
    from distillation.data._datasets import load_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(MNIST))
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--rates", default="1e-5,1.2e-5,1.44e-5,1.728e-5")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--unroll",
        choices=("default", "false"),
        default="default",
        help="the inner loop as a run compiles it (default: unrolled) or rolled",
    )
    args = p.parse_args()
    if args.width < 1:
        raise SystemExit(f"--width must be ≥ 1, got {args.width}")

    dataset = load_dataset(args.dataset)
    config = DistillConfig(width=args.width, flip=False)
    k_support, k_state = jax.random.split(jax.random.key(0))  # as preround_cost.py
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
        rcig(unroll=None if args.unroll == "default" else False),
        config,
        image_shape=dataset.x_train.shape[1:],
        num_classes=dataset.num_classes,
    )
    state = distiller.init(support, key=k_state)
    x_dev = jnp.asarray(dataset.x_train)
    y_dev = jax.nn.one_hot(jnp.asarray(dataset.y_train), dataset.num_classes, dtype=jnp.float32)
    # The probe's traces, the same code as Distiller.preround_probe up to its classification.
    from distillation._distill import _sample_target
    from distillation._tuning import solve_traces

    def traces(algorithm, call, hessian):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), 0x9E7)
        k_model, k_batch = jax.random.split(key)
        model0 = distiller.pool.make_model(k_model)
        x_t, y_t = _sample_target(jax.random.fold_in(k_batch, call), x_dev, y_dev, config)
        return solve_traces(
            algorithm,
            distiller._probe_problem(state, model0),
            x_t,
            y_t,
            state.support.log_temperature,
            hessian=hessian,
        )

    fn = jax.jit(traces, static_argnames="hessian")
    rows = []
    for call, rate in enumerate(float(r) for r in args.rates.split(",")):
        algorithm = state.algorithm.with_learning_rates(rate, 5e-5)
        row: dict = {"rate": rate, "call": call}
        for name, hessian in (("full", True), ("inner_only", False)):
            inner, _ = fn(algorithm, jnp.asarray(call, jnp.int32), hessian=hessian)
            t = np.asarray(inner[:-1], np.float64)  # the values the probe classifies
            ulp = np.spacing(np.abs(t[:-1]).astype(np.float32)).astype(np.float64)
            drop = t[:-1] - t[1:]
            row[name] = {
                "class": int(classify_trace(inner[:-1])),
                "trace": t.tolist(),
                "non_decreasing_steps": [int(i) for i in np.flatnonzero(drop <= 0)],
                "drop_in_ulps_min": float(np.min(drop / ulp)),
                "drop_in_ulps_median": float(np.median(drop / ulp)),
            }
        a, b = np.asarray(row["full"]["trace"]), np.asarray(row["inner_only"]["trace"])
        row["max_abs_difference"] = float(np.max(np.abs(a - b)))
        row["max_difference_in_ulps"] = float(
            np.max(np.abs(a - b) / np.spacing(np.abs(a).astype(np.float32)))
        )
        rows.append(row)
        short = {
            k: (v if not isinstance(v, dict) else {x: v[x] for x in v if x != "trace"})
            for k, v in row.items()
        }
        print(json.dumps(short), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
