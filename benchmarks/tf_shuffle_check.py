"""Checks ``distillation/_tf_shuffle.py`` against TensorFlow itself: ``tf_shuffle_order(n, B,
seed)`` against ``tf.data.Dataset.range(n).shuffle(B, seed=seed)`` over many sizes and seeds.

Runs in the official harness's venv (``../shared/tools/official_rcig/setup.sh``), which has
TensorFlow; the project's module is loaded from its file (it needs only NumPy), so the project
itself never imports TensorFlow::

    /tmp/official_rcig_venv/bin/python benchmarks/tf_shuffle_check.py \\
        --out benchmarks/results/tf_shuffle_check.json
"""

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=300, help="random (n, buffer, seed) cases")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    import tensorflow as tf

    path = Path(__file__).parents[1] / "distillation" / "_tf_shuffle.py"
    spec = importlib.util.spec_from_file_location("_tf_shuffle", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    rng = np.random.default_rng(0)
    fixed = [
        (50, 10, 0),
        (60000, 100, 2),
        (50000, 100, 1),
        (30, 100, 5),
        (1, 1, 0),
        (1000, 1000, 7),
    ]
    fixed += [(500, 37, s) for s in (2**31 - 1, 2**31 + 5, 2**32 + 3, 123456789, 2**40)]
    cases = fixed + [
        (int(rng.integers(1, 3000)), int(rng.integers(1, 1500)), int(rng.integers(0, 2**31)))
        for _ in range(a.cases)
    ]
    t0 = time.perf_counter()
    failures = []
    for n, b, seed in cases:
        want = [int(v) for v in tf.data.Dataset.range(n).shuffle(b, seed=seed).as_numpy_iterator()]
        got = list(mod.tf_shuffle_order(n, b, seed))
        if got != want:
            failures.append({"n": n, "buffer": b, "seed": seed})
            print(f"MISMATCH n={n} buffer={b} seed={seed}", flush=True)
    summary = {
        "tensorflow": tf.__version__,
        "cases": len(cases),
        "equal": len(cases) - len(failures),
        "failures": failures,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(
        f"TensorFlow {tf.__version__}: {summary['equal']} of {len(cases)} whole shuffle orders "
        f"equal ({summary['seconds']} s)",
        flush=True,
    )
    a.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
