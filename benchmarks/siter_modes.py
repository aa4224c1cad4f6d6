"""Seconds per iteration of this project's RCIG on MNIST 1 ipc, one configuration per call.

A diagnostic beside ``side_by_side.py timing`` (which fixes the rates, ``lr_tuning="none"``):
the same measurement with the default learning-rate handling or without the pool drift, to see
what an iteration of the default configuration costs on the machine of the day. The rates
start at the given ones (the released pre-round then only moves them a step or two). Prints one
JSON line: the first iteration's seconds (compilation included), the deltas after it, and their
mean from the second delta on (as the harness's ``siter.py``).

Run (one configuration per process, one after the other, nothing else on the CPU)::

    python benchmarks/siter_modes.py released 8 128 drift
    python benchmarks/siter_modes.py none 8 128 drift
    python benchmarks/siter_modes.py none 6 128 nodrift

An older commit's code, same measurement (the pool-drift switch did not exist before row 32):
``git worktree add /tmp/old 019344e`` then ``python benchmarks/siter_modes.py none 5 128 drift
/tmp/old``; ``RATES=1.4e-3,17.6`` sets the starting rates (default 1.08e-4,8.48).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def main() -> None:
    if len(sys.argv) > 5:  # another checkout's code (e.g. an older commit in a worktree)
        sys.path.insert(0, sys.argv[5])
    from distillation._algorithms import rcig
    from distillation._distill import DistillConfig, distill
    from distillation.data._datasets import load_dataset

    mode, iters, width, drift = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if mode not in ("released", "none") or drift not in ("drift", "nodrift"):
        raise SystemExit("usage: siter_modes.py released|none ITERS WIDTH drift|nodrift")
    dataset = load_dataset(str(MNIST))
    options = {} if drift == "drift" else {"pool_drift": False}
    config = DistillConfig(
        steps=iters, width=width, flip=False, lr_tuning=mode, log_every=1, **options
    )
    inner_lr, hessian_lr = (float(r) for r in os.environ.get("RATES", "1.08e-4,8.48").split(","))
    t0 = time.time()
    result = distill(
        dataset.x_train,
        dataset.y_train,
        dataset.num_classes,
        rcig(inner_lr=inner_lr, hessian_lr=hessian_lr),
        1,
        config,
        key=jax.random.key(0),
        progress=False,
    )
    t = np.asarray([row["seconds"] for row in result.history])
    print(
        json.dumps(
            {
                "mode": mode,
                "width": width,
                "drift": drift,
                "code": str(Path(sys.modules["distillation"].__file__).parent.parent),
                "rates": [inner_lr, hessian_lr],
                "total": time.time() - t0,
                "first": float(t[0]),
                "deltas": np.round(np.diff(t), 2).tolist(),
                "siter": float(np.mean(np.diff(t)[1:])),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
