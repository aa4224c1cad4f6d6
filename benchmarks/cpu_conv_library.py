"""Which XLA:CPU convolution path is faster here: YNNPACK (the default) or XLA's own?

XLA 0.10.2 on CPU hands 3×3 convolutions with padding ≤ 1 to the YNNPACK library by default;
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` keeps them in XLA's
own (Eigen) kernels. Each configuration in a fresh process (``XLA_FLAGS`` is read when XLA
starts), the two alternated ``--rounds`` times:

* ``conv``: one convolution, 1024 images of 14×14×W → W (the ConvNet's middle layer), forward;
* ``train``: one evaluation training step (forward + gradient of the cross-entropy, batch 256,
  32×32×3, ``train=True``) of each evaluation network (``build_network``: ConvNet width 128,
  ResNet-18, VGG-11, AlexNet; batch norm for the non-ConvNets as in the cross-architecture study);
* ``distill``: seconds per iteration of this project's RCIG at the side-by-side timing settings
  (MNIST 1 ipc, width 32, target batch 1024, n_inner = n_H = 20, pool 30; the loop of
  ``xla_cpu_flags.py``), with the last losses, so a changed result shows.

Prints one JSON line per run. Run alone on the CPU::

    python benchmarks/cpu_conv_library.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _seconds(f, *args, repeats: int) -> float:
    import jax

    jax.block_until_ready(f(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f(*args))
    return (time.perf_counter() - start) / repeats


def conv(width: int) -> dict:
    import jax

    from distillation._models import conv2d

    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (1024, 14, 14, width))
    w = jax.random.normal(kw, (3, 3, width, width))
    return {"width": width, "s": _seconds(jax.jit(lambda x, w: conv2d(x, w, 1)), x, w, repeats=20)}


def train() -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from distillation import build_network

    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (256, 32, 32, 3))
    y = jax.random.randint(ky, (256,), 0, 10)
    out = {}
    for arch, norm, width in [
        ("convnet", "none", 128),
        ("resnet18", "batch", 128),
        ("vgg11", "batch", 128),
        ("alexnet", "batch", 128),
    ]:
        net, stats = build_network(
            arch, (32, 32, 3), 10, key=jax.random.key(0), norm=norm, width=width
        )

        def loss(net, stats, x, y):
            logits, new = net(x, stats, train=True)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y]), new

        step = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))
        out[arch] = _seconds(step, net, stats, x, y, repeats=5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=15, help="distillation iterations per run")
    parser.add_argument("--parts", default="conv,train,distill")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "conv":
            got = [conv(32), conv(128)]
        elif args.child == "train":
            got = train()
        else:
            sys.path.insert(0, str(Path(__file__).parent))
            from xla_cpu_flags import one

            got = one(args.iters, 32)
        print(
            json.dumps(
                {
                    "part": args.child,
                    "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "result": got,
                    "load": os.getloadavg(),
                }
            ),
            flush=True,
        )
        return
    for part in args.parts.split(","):
        for _ in range(args.rounds):
            for flags in ("", OFF):
                env = dict(os.environ, XLA_FLAGS=flags)
                cmd = [sys.executable, __file__, "--child", part, "--iters", str(args.iters)]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
