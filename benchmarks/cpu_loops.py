"""Why the distillation loops are unrolled on CPU: convolution gradients inside XLA loops.

Times 10 repetitions of a ConvNet computation (depth 3, widths 64/128/256, batch of 10 MNIST-sized
images) three ways: a Python loop of a jitted step, ``lax.scan`` (an XLA while loop), and
``lax.scan(unroll=True)`` (straight-line code), plus the same inside a ``lax.cond`` branch.

Run:
    python benchmarks/cpu_loops.py
Writes ``benchmarks/results/cpu_loops.json`` and ``docs/benchmarks/cpu_loops.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
DN = ("NHWC", "HWIO", "NHWC")
REPS = 10


def conv(x, w, pad):
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=DN)


def net(ws, x):
    for w, pad in zip(ws, (3, 1, 1), strict=True):
        x = jax.nn.relu(conv(x, w, pad))
        n, h, wd, c = x.shape
        x = x.reshape(n, h // 2, 2, wd // 2, 2, c).mean((2, 4))
    return jnp.sum(x**2)


def _axpy(ws, grads):
    return [a - 1e-6 * b for a, b in zip(ws, grads, strict=True)]


def timed(fn, arg, repeats=3):
    jax.block_until_ready(fn(arg))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    keys = jax.random.split(jax.random.key(0), 3)
    ws = [
        jax.random.normal(keys[0], (3, 3, 1, 64)) * 0.3,
        jax.random.normal(keys[1], (3, 3, 64, 128)) * 0.04,
        jax.random.normal(keys[2], (3, 3, 128, 256)) * 0.03,
    ]
    x = jnp.ones((10, 28, 28, 1))
    cases = {
        "weight gradient": (lambda w: _axpy(w, jax.grad(net)(w, x)), ws),
        "input gradient": (lambda z: z - 1e-6 * jax.grad(net, argnums=1)(ws, z), x),
        "Hessian-vector product (forward-over-reverse)": (
            lambda w: _axpy(w, jax.jvp(lambda v: jax.grad(net)(v, x), (w,), (w,))[1]),
            ws,
        ),
    }
    rows = []
    for name, (body, init) in cases.items():
        step = jax.jit(body)

        def python_loop(c, step=step):
            for _ in range(REPS):
                c = step(c)
            return c

        scan = jax.jit(
            lambda c, body=body: jax.lax.scan(lambda c, _: (body(c), None), c, None, length=REPS)[0]
        )
        unrolled = jax.jit(
            lambda c, body=body: jax.lax.scan(
                lambda c, _: (body(c), None), c, None, length=REPS, unroll=True
            )[0]
        )
        in_cond = jax.jit(
            lambda c, body=body: jax.lax.cond(
                jnp.sum(jax.tree_util.tree_leaves(c)[0]) > -1e30,
                lambda c: jax.lax.scan(
                    lambda c, _: (body(c), None), c, None, length=REPS, unroll=True
                )[0],
                lambda c: c,
                c,
            )
        )
        row = {"case": name}
        for label, fn in (
            ("python loop", python_loop),
            ("lax.scan", scan),
            ("lax.scan unroll=True", unrolled),
            ("unrolled inside lax.cond", in_cond),
        ):
            row[label] = timed(fn, init) / REPS * 1e3
        rows.append(row)
        print(json.dumps(row), flush=True)
    out_json = ROOT / "benchmarks" / "results" / "cpu_loops.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"jax": jax.__version__, "rows": rows}, indent=2))
    cols = ["python loop", "lax.scan", "lax.scan unroll=True", "unrolled inside lax.cond"]
    lines = [
        "# Convolution gradients inside XLA loops on CPU",
        "",
        "Command: `python benchmarks/cpu_loops.py`",
        "",
        f"ms per repetition (best of 3 runs of {REPS}), ConvNet depth 3, widths 64/128/256, "
        f"batch 10 × 28×28×1, jax {jax.__version__}, CPU.",
        "",
        "| computation | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for r in rows:
        lines.append(f"| {r['case']} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    out_md = ROOT / "docs" / "benchmarks" / "cpu_loops.md"
    out_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
