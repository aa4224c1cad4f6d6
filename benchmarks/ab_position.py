"""An A/A test of the interleaved A/B timing (``_ab.interleaved``): the same build of the RCIG
step timed against itself, with the two copies in a fixed order every round (as the A/B
benchmarks did before 2026-12-05 evening) and with the order reversed every other round (since).

Two compiled copies of one program should time alike; a ratio away from 1 in the fixed order is
the advantage of the position, which alternating the order cancels to first order.

Settings: RCIG defaults (depth 3, target batch 1024, n_inner = n_H = 20, pool 30), 1 ipc, the
CIFAR-10 subset (flip on), width 32.

Run:
    python benchmarks/ab_position.py [--case cifar10:32] [--steps 4] [--rounds 6]
Writes ``benchmarks/results/ab_position.json`` and ``docs/benchmarks/ab_position.md``.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
from _ab import build, interleaved
from iteration_time import DATA, ROOT

from distillation.data._datasets import load_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="cifar10:32")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    name, width = args.case.split(":")
    dataset = load_dataset(str(DATA[name]))
    rows = {}
    for order, alternate in (("fixed", False), ("alternating", True)):
        variants = {
            "copy 1": build(dataset, int(width), {}),
            "copy 2": build(dataset, int(width), {}),
        }
        timed = interleaved(variants, args.steps, args.rounds, tag=order, alternate=alternate)
        first, second = timed["s_per_step"].values()
        rows[order] = {
            "s_per_step": timed["s_per_step"],
            "s_per_step_by_round": timed["s_per_step_by_round"],
            "ratio_copy2_over_copy1": second / first,
        }
        print(json.dumps(rows[order]), flush=True)
    load = os.getloadavg()
    (ROOT / "benchmarks" / "results" / "ab_position.json").write_text(json.dumps(rows, indent=2))
    cmd = (
        f"python benchmarks/ab_position.py --case {args.case} --steps {args.steps} "
        f"--rounds {args.rounds}"
    )
    lines = [
        "# A/A test of the interleaved timing: one build against itself",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__}, 2-core CPU, load average at the end {load[0]:.2f}. RCIG "
        f"defaults, 1 ipc, {name} width {width}; {args.rounds} rounds of {args.steps} steps per "
        "copy; copy 1 runs first in every round (fixed) or in every other round (alternating).",
        "",
        "| order | copy 1 s/step | copy 2 s/step | copy 2 / copy 1 |",
        "|---|---:|---:|---:|",
    ]
    for order, r in rows.items():
        a, b = r["s_per_step"].values()
        lines.append(f"| {order} | {a:.3f} | {b:.3f} | **{r['ratio_copy2_over_copy1']:.3f}** |")
    (ROOT / "docs" / "benchmarks" / "ab_position.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
