"""Use the distillation library from research code: compose, step, swap a piece, evaluate.

Runs on the bundled 8×8 digits in about a minute on a 2-core CPU:

    python examples/library_use.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import bilevel
from distillation import (
    DistillConfig,
    Distiller,
    EvalConfig,
    evaluate_support,
    init_support,
    load_dataset,
    rcig,
    reuse_host_memory,
)


def main():
    # First, before anything runs on JAX (as `rcig` does): XLA:CPU's per-step buffers stay in the
    # heap instead of being mapped anew every step (a no-op on other setups; returns whether set).
    reuse_host_memory()
    data = load_dataset("digits")
    # lr_tuning="probe": the paper text's automatic inner / Hessian-inverse learning rates.
    config = DistillConfig(steps=100, pool_size=10, width=32, target_batch=256, lr_tuning="probe")

    # RCIG, but with conjugate gradient instead of AdamQuadratic for v = H⁻¹g: one argument.
    algorithm = rcig(linear_solver=bilevel.CG(rtol=1e-4, max_steps=20, throw=False))

    distiller = Distiller.build(
        algorithm, config, image_shape=data.image_shape, num_classes=data.num_classes
    )
    support = init_support(
        data.x_train, data.y_train, data.num_classes, ipc=1, key=jax.random.key(0)
    )
    state = distiller.init(support, key=jax.random.key(1))
    step = jax.jit(distiller.step)  # compiled once; the state is an immutable pytree
    batch = jax.jit(distiller.next_batch)  # the next target batch (shuffled epochs)
    tune = jax.jit(distiller.probe)

    x = jnp.asarray(data.x_train)
    y = jax.nn.one_hot(jnp.asarray(data.y_train), data.num_classes)
    for i in range(config.steps):
        if i % 10 == 0:
            state = tune(state, x, y)  # adjusts the rates: leaves of state.algorithm
        state, metrics = step(state, batch(state, x, y))
        if (i + 1) % 25 == 0:
            print(
                f"step {i + 1}: outer loss {float(metrics['outer_loss']):.3f}, "
                f"target-batch acc {float(metrics['target_acc']):.2f}"
            )

    result = evaluate_support(
        state.support.images,
        state.support.labels,
        data.x_test,
        data.y_test,
        EvalConfig(models=2, width=32),
        key=jax.random.key(2),
    )
    print(f"RCIG (CG backward), 1 image per class: {result}")


if __name__ == "__main__":
    main()
