"""Do XLA's CPU library flags (XNNPACK / YNNPACK convolutions, XNN graph fusion) speed up a step?

Seconds per iteration of this project's RCIG at the side-by-side timing settings (MNIST 1 ipc,
width 32, target batch 1024, n_inner = n_H = 20, pool 30, no flip, fixed learning rates, no
tuning), each flag set in a fresh process (``XLA_FLAGS`` is read when XLA starts), the default
first and last. Prints one JSON line per run: s/iter (mean of the deltas from the third iteration
on, as ``side_by_side.py timing``), the last iteration's losses and the sum of |support images|,
so that a flag that changes the computed numbers shows up. Run alone on the CPU::

    python benchmarks/xla_cpu_flags.py --iters 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
FLAGS = [
    "",
    "--xla_cpu_experimental_xnn_fusion_type=+individual_convolution",
    "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "",
]


def one(iters: int, width: int, mixed_precision: bool = False) -> dict:
    import jax
    import numpy as np

    from distillation._algorithms import rcig
    from distillation._distill import DistillConfig, distill
    from distillation.data._datasets import load_dataset

    dataset = load_dataset(str(MNIST))
    start = time.perf_counter()
    config = DistillConfig(
        steps=iters,
        width=width,
        flip=False,
        lr_tuning="none",
        log_every=1,
        mixed_precision=mixed_precision,
    )
    result = distill(
        dataset.x_train,
        dataset.y_train,
        dataset.num_classes,
        rcig(inner_lr=1.4e-3, hessian_lr=17.6),
        1,
        config,
        key=jax.random.key(0),
        progress=False,
    )
    t = np.asarray([row["seconds"] for row in result.history])
    last = result.history[-1]
    return {
        "flags": os.environ.get("XLA_FLAGS", ""),
        "mixed_precision": mixed_precision,
        "s_per_iter": float(np.mean(np.diff(t)[1:])),
        "wall": time.perf_counter() - start,
        "losses_last": {k: last[k] for k in last if k.endswith("loss")},
        "abs_image_sum": float(np.abs(np.asarray(result.support.images)).sum()),
        "load": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument(
        "--flags",
        action="append",
        default=None,
        help="an XLA_FLAGS value to run, in turn with the other --flags=... given ('' for the "
        "default; write --flags=--xla_...); default: the list FLAGS",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.iters, args.width)), flush=True)
        return
    for flags in FLAGS if args.flags is None else args.flags:
        env = dict(os.environ, XLA_FLAGS=flags)
        cmd = [sys.executable, __file__, "--child", "--iters", str(args.iters)]
        cmd += ["--width", str(args.width)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
