"""This project's CIFAR-10 preprocessing against the released code's, on the same pixels.

The released loader standardises with fixed per-channel statistics and whitens with ZCA of
strength 0.1 fitted on the training split (``dataloader.get_dataset``, ``ops.py``). This runs
their functions through the scratch CIFAR-10 harness (``benchmarks/official_rcig_cifar10.patch``,
see ``side_by_side.py``) in the official venv, keeps the first 500 training and test images in
their model-input space, and compares them with ``load_dataset("../shared/data/cifar10")``'s.

Run::

    python benchmarks/side_by_side.py cifar10-arrays /tmp/c10h/cifar10_u8.npz
    python benchmarks/preprocessing_vs_official.py   # ~2 min for theirs (ZCA of 50,000 images)

Writes ``benchmarks/results/preprocessing_vs_official.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

OFFICIAL = """
import os, sys
sys.path[:0] = [os.path.join(os.environ['HARNESS'], 'shim'), os.environ['TREE']]
import ml_collections, numpy as np
import dataloader
cfg = ml_collections.ConfigDict(dict(name='cifar10', data_path='', zca_path=os.environ['ZCA'],
                                     zca_reg=0.1))
(x_tr, y_tr, x_te, y_te), _, _, _ = dataloader.get_dataset(cfg, return_raw=True)
np.savez(os.environ['OUT'], x_train=x_tr[:500].astype(np.float32), y_train=y_tr[:500],
         x_test=x_te[:500].astype(np.float32), y_test=y_te[:500])
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--harness", default="/tmp/c10h/harness")
    p.add_argument("--tree", default="/tmp/official_rcig_tree")
    p.add_argument("--venv", default="/tmp/official_rcig_venv")
    p.add_argument("--arrays", default="/tmp/c10h/cifar10_u8.npz")
    p.add_argument("--zca", default="/tmp/c10h/zca")
    p.add_argument("--sample", default="/tmp/c10h/official_pre_sample.npz")
    a = p.parse_args()
    env = {**os.environ, "HARNESS": a.harness, "TREE": a.tree, "ZCA": a.zca, "OUT": a.sample,
           "RCIG_CIFAR10_NPZ": a.arrays, "TF_CPP_MIN_LOG_LEVEL": "3"}  # fmt: skip
    subprocess.run([f"{a.venv}/bin/python", "-c", OFFICIAL], env=env, check=True, cwd="/tmp")

    from distillation.data._datasets import load_dataset

    theirs = np.load(a.sample)
    ds = load_dataset(str(ROOT.parent / "shared" / "data" / "cifar10"))
    report = {
        "our_mean": ds.preprocessor.mean.tolist(),
        "our_std": ds.preprocessor.std.tolist(),
        "their_mean": [0.4914, 0.4822, 0.4465],
        "their_std": [0.2470, 0.2435, 0.2616],
    }
    for split in ("train", "test"):
        ours = np.asarray(getattr(ds, f"x_{split}")[:500], np.float64)
        other = theirs[f"x_{split}"].astype(np.float64)
        assert (np.asarray(getattr(ds, f"y_{split}")[:500]) == theirs[f"y_{split}"]).all()
        report[split] = {
            "relative_l2": float(np.linalg.norm(ours - other) / np.linalg.norm(other)),
            "max_abs": float(np.abs(ours - other).max()),
            "their_max_abs": float(np.abs(other).max()),
        }
    print(json.dumps(report, indent=1))
    out = ROOT / "benchmarks" / "results" / "preprocessing_vs_official.json"
    out.write_text(json.dumps(report, indent=1))
    sys.exit(0)


if __name__ == "__main__":
    main()
