"""The distillation softplus with its own derivative rule against ``jax.nn.softplus``: time per
RCIG iteration, the two interleaved in one process.

``distillation._models.softplus_t`` computes ``softplus(βx)/β`` (β = 60) as
``max(x, 0) + log1p(exp(-β|x|))/β`` with the derivative rule ``sigmoid(βx)·t``. The reference is
the formula it replaced, ``jax.nn.softplus(β * x) / β``, whose derivatives come from
``logaddexp``'s general rule; the benchmark builds the step once with each (the reference by
swapping the model's activation function while the step is traced), starts both from the same
state, and alternates: ``--steps`` timed steps of one, then of the other, ``--rounds`` times.
It also reports how far the two steps' results lie apart after the first step (float32 rounding
of the same function).

Settings: RCIG defaults (depth 3, target batch 1024, n_inner = n_H = 20, pool 30), 1 ipc,
MNIST and the CIFAR-10 subset (flip on), XLA's own convolutions (the package default).

Run:
    python benchmarks/softplus_rule.py [--cases mnist:32,cifar10:32,mnist:128] [--steps 6]
        [--rounds 3]
Writes ``benchmarks/results/softplus_rule.json`` and ``docs/benchmarks/softplus_rule.md``.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
from _ab import build, interleaved, rel
from iteration_time import DATA, ROOT

from distillation import _models
from distillation.data._datasets import load_dataset

BETA = _models.SOFTPLUS_TEMPERATURE


def reference_activation(name, x):
    """The activation before the rule: ``jax.nn.softplus``'s derivatives (``logaddexp``)."""
    return jax.nn.relu(x) if name == "relu" else jax.nn.softplus(BETA * x) / BETA


def case(name: str, width: int, steps: int, rounds: int) -> dict:
    dataset = load_dataset(str(DATA[name]))
    variants = {
        "jax.nn.softplus": build(dataset, width, {"_activation": reference_activation}),
        "softplus_t (rule)": build(dataset, width, {}),
    }
    timed = interleaved(variants, steps, rounds, tag=f"{name} {width}")
    (img_a, loss_a), (img_b, loss_b) = timed["first_step"].values()
    ref, rule = timed["s_per_step"].values()
    return {
        "dataset": name,
        "width": width,
        "s_per_step": timed["s_per_step"],
        "s_per_step_by_round": timed["s_per_step_by_round"],
        "ratio_rule_over_reference": rule / ref,
        "first_step_support_rel_diff": rel(img_b, img_a),
        "first_step_outer_loss": {"jax.nn.softplus": loss_a, "softplus_t (rule)": loss_b},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="mnist:32,cifar10:32,mnist:128")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for spec in args.cases.split(","):
        name, width = spec.split(":")
        rows.append(case(name, int(width), args.steps, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    (ROOT / "benchmarks" / "results" / "softplus_rule.json").write_text(json.dumps(rows, indent=2))
    cmd = (
        f"python benchmarks/softplus_rule.py --cases {args.cases} --steps {args.steps} "
        f"--rounds {args.rounds}"
    )
    lines = [
        "# The softplus derivative rule against `jax.nn.softplus` (time per RCIG iteration)",
        "",
        f"Command: `{cmd}`",
        "",
        f"jax {jax.__version__}, 2-core CPU, load average at the end {load[0]:.2f}. RCIG defaults "
        "(depth 3, target batch 1024, n_inner = n_H = 20, pool 30), 1 ipc, flip on for CIFAR-10 "
        f"(the subset), XLA's own convolutions. {args.rounds} rounds of {args.steps} steps per "
        "variant, interleaved; seconds are the mean over all rounds.",
        "",
        "| dataset | width | `jax.nn.softplus` s/step | `softplus_t` s/step | ratio | "
        "support after one step, rel. diff | outer loss (both) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        (a, b), (la, lb) = r["s_per_step"].values(), r["first_step_outer_loss"].values()
        lines.append(
            f"| {r['dataset']} | {r['width']} | {a:.3f} | {b:.3f} | "
            f"**{r['ratio_rule_over_reference']:.2f}** | {r['first_step_support_rel_diff']:.1e} | "
            f"{la:.6f} / {lb:.6f} |"
        )
    out = ROOT / "docs" / "benchmarks" / "softplus_rule.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
