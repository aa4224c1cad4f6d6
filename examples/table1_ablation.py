"""Reproduce the shape of Table 1's ablation (random, VIG, CIG, RIG, RCIG) within a CPU budget.

Every method gets the same number of meta-iterations, model width and seeds, and is evaluated
with the paper's protocol on the full test set. The defaults finish in well under an hour on a
2-core CPU for MNIST 1 ipc; pass ``--width 128 --steps 1000`` (and a GPU) for the paper's size.

    python examples/table1_ablation.py [--dataset ../shared/data/mnist] [--ipc 1] [--steps 300]

This is ``rcig ablate`` with a CPU-sized default; the table lands in ``--out``/table.md.
"""

from __future__ import annotations

import argparse
import sys

from distillation.cli import main as rcig_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="../shared/data/mnist")
    parser.add_argument("--ipc", default="1")
    parser.add_argument("--steps", default="300")
    parser.add_argument("--width", default="32")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default="random,vig,cig,rig,rcig")
    parser.add_argument("--eval-models", default="5")
    parser.add_argument("--out", default="runs/table1")
    args = parser.parse_args(argv)
    return rcig_main(
        [
            "ablate",
            "--dataset",
            args.dataset,
            "--ipc",
            args.ipc,
            "--steps",
            args.steps,
            "--width",
            args.width,
            "--seeds",
            args.seeds,
            "--methods",
            args.methods,
            "--eval-models",
            args.eval_models,
            "--out",
            args.out,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
