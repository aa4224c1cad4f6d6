"""Does bfloat16 (``--mixed-precision``) speed up a step on this CPU?

This machine's Xeon has AMX-BF16 and AVX512-BF16 units. ``DistillConfig(mixed_precision=True)``
rounds the ConvNet's convolution operands to bfloat16 and sums in float32. Seconds per iteration
of this project's RCIG at the side-by-side timing settings (MNIST 1 ipc, target batch 1024,
n_inner = n_H = 20, pool 30, no flip, fixed learning rates, no tuning; the loop of
``xla_cpu_flags.py``), float32 and bfloat16 alternated, each in a fresh process, ``--rounds``
times. Also one convolution alone (the width-W middle layer on 1024 images, forward), to tell
whether XLA:CPU runs bfloat16 convolutions on a fast path at all. Prints one JSON line per run.
Run alone on the CPU::

    python benchmarks/cpu_precision.py --iters 15 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def conv_alone(width: int, repeats: int = 20) -> dict:
    import jax
    import jax.numpy as jnp

    from distillation._models import conv2d

    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (1024, 14, 14, width), jnp.float32)
    w = jax.random.normal(kw, (3, 3, width, width), jnp.float32)
    out = {}
    for dtype in ("float32", "bfloat16"):
        f = jax.jit(lambda x, w, d=dtype: conv2d(x, w, 1, compute_dtype=d))
        f(x, w).block_until_ready()
        start = time.perf_counter()
        for _ in range(repeats):
            f(x, w).block_until_ready()
        out[dtype] = (time.perf_counter() - start) / repeats
    ref = conv2d(x, w, 1)
    low = conv2d(x, w, 1, compute_dtype="bfloat16")
    out["rel_diff"] = float(jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--child", choices=["float32", "bfloat16", "conv"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "conv":
        print(json.dumps({"conv_seconds": conv_alone(args.width), "width": args.width}))
        return
    if args.child:
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
        from xla_cpu_flags import one

        print(json.dumps(one(args.iters, args.width, args.child == "bfloat16")), flush=True)
        return
    base = [sys.executable, __file__, "--iters", str(args.iters), "--width", str(args.width)]
    runs = ["conv"] + ["float32", "bfloat16"] * args.rounds
    for child in runs:
        out = subprocess.run(base + ["--child", child], check=True, capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
