"""How many convolutions one compiled RCIG iteration runs over the target batch.

RCIG's outer step needs, on the target batch, the pool model's features ``φ₀(x_t)`` (a primal
forward pass), the linearised output ``J_t Δ*`` (the tangent of a ``jax.jvp``: per convolution
layer ``conv(x_tan, W) + conv(x, W_tan)``, one convolution in the first layer where
``x_tan = 0``) and ``g_t = J_tᵀ c`` (the transpose: per layer a weight gradient, and an input
gradient below the first layer). At depth ``d`` the least a program can run is therefore
``d`` (primal) + ``2d − 1`` (tangent) + ``d`` (weight gradients) + ``d − 1`` (input gradients)
``= 5d − 2`` convolutions over the target batch; the released code computes the same quantities.

This compiles the step (no timing: it can run beside other jobs), reads XLA:CPU's optimised HLO,
and counts the convolutions whose operands or result carry the target batch (any dimension of
size ``--target-batch``) against that minimum.

Run:
    python benchmarks/target_passes.py [--width 32] [--target-batch 1024]
Writes ``docs/benchmarks/target_passes.md``.
"""

from __future__ import annotations

import argparse
import collections
import re

import jax
from flops_memory import _setup
from iteration_time import DATA, ROOT

from distillation._algorithms import rcig
from distillation.data._datasets import load_dataset

_DEF = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\w+\[[\d,]*\])")
_CONV = re.compile(r"= (\w+\[[\d,]*\])\S* convolution\(%([\w.\-]+), %([\w.\-]+)\)")


def _dims(shape: str) -> tuple[int, ...]:
    inside = shape.split("[", 1)[1].rstrip("]")
    return tuple(int(d) for d in inside.split(",") if d)


def convolutions(hlo: str) -> list[tuple[tuple[int, ...], ...]]:
    """``(result, lhs, rhs)`` dimensions of every convolution in an optimised HLO module."""
    shapes = {m.group(1): _dims(m.group(2)) for m in map(_DEF.match, hlo.splitlines()) if m}
    found = []
    for line in hlo.splitlines():
        m = _CONV.search(line)
        if m:
            found.append((_dims(m.group(1)), shapes[m.group(2)], shapes[m.group(3)]))
    return found


def count(width: int, target_batch: int, depth: int = 3) -> dict:
    dataset = load_dataset(str(DATA["mnist"]))
    step, state, x, y = _setup(dataset, width, 1, rcig(), target_batch=target_batch)
    hlo = step.lower(state, x, y).compile().as_text()
    convs = convolutions(hlo)
    target = [c for c in convs if any(target_batch in dims for dims in c)]
    return {
        "width": width,
        "target_batch": target_batch,
        "depth": depth,
        "convolutions": len(convs),
        "target_convolutions": len(target),
        "minimum": 5 * depth - 2,
        "target_shapes": collections.Counter(str(c) for c in target),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--target-batch", type=int, default=1024)
    args = parser.parse_args(argv)
    r = count(args.width, args.target_batch)
    lines = [
        "# Convolutions over the target batch in one compiled RCIG iteration",
        "",
        f"Command: `python benchmarks/target_passes.py --width {args.width} "
        f"--target-batch {args.target_batch}`",
        "",
        f"jax {jax.__version__}, XLA:CPU optimised HLO of the jitted step (MNIST 1 ipc, depth "
        f"{r['depth']}, width {r['width']}, target batch {r['target_batch']}, n_inner = n_H = 20, "
        "pool 30).",
        "",
        f"* convolutions over the target batch: **{r['target_convolutions']}** "
        f"(the least primal + tangent + transpose can run: 5·depth − 2 = {r['minimum']})",
        f"* convolutions in all (the rest run on the support set, in the unrolled inner and "
        f"Hessian-inverse loops, and in the pool model's training steps): {r['convolutions']}",
        "",
        "| (result, lhs, rhs) dimensions | count |",
        "|---|---:|",
    ]
    lines += [f"| `{s}` | {n} |" for s, n in sorted(r["target_shapes"].items())]
    out = ROOT / "docs" / "benchmarks" / "target_passes.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
