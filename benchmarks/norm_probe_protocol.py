"""Is instance normalisation broken, or is it the evaluation protocol at |S| = 10?

Trains one network per run on ten CIFAR-10 images (one random real image per class, or a
distilled set) and prints its accuracy on the full test split, with two training protocols:

* ``released``: the evaluation protocol of the released code and of ``rcig evaluate``: MSE on
  the (centred one-hot or learned) labels, Adam 1e-4 with 500 warm-up steps and a cosine to 1 %
  over ``steps``;
* ``dc``: DC/DSA's: softmax cross-entropy on the hard labels, SGD with momentum 0.9, learning
  rate 0.01 cut ×0.1 halfway, weight decay 5e-4, ``steps`` steps (300 = DC's 300 epochs of a
  10-image set). ``dc-mse`` is the same optimiser on the MSE loss (for learned labels).

``pre``: ``std`` (per-channel mean and std, DC's preprocessing) or ``zca`` (the whitening of the
distilled set ``--set``). Runs are ``source/pre/arch/definition/norm/protocol/steps`` with
``source`` ``real<d>`` (draw ``d`` of one random image per class) or ``distilled``.

Run (results and reading in docs/results.md)::

    python benchmarks/norm_probe_protocol.py --set /tmp/runs/c10-w32-500/distilled.npz \
        --draws 0,1,2,3,4 real/std/convnet/dc/instance/dc/300 real/std/convnet/dc/none/dc/300
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distillation._architectures import build_network
from distillation.data._datasets import fit_preprocessor, load_raw
from distillation.data._export import load_distilled


def train(x, y, arch, definition, norm, protocol, steps, seed):
    net, stats = build_network(
        arch, x.shape[1:], 10, key=jax.random.key(seed), norm=norm, definition=definition
    )
    if protocol == "released":
        warm = 500
        schedule = optax.join_schedules(
            [
                optax.linear_schedule(0.0, 1e-4, warm),
                optax.cosine_decay_schedule(1e-4, steps, alpha=0.01),
            ],
            [warm],
        )
        tx, total = optax.adam(schedule), steps + warm
    else:
        schedule = optax.piecewise_constant_schedule(0.01, {steps // 2: 0.1})
        tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(schedule, momentum=0.9))
        total = steps
    hard = jax.nn.one_hot(jnp.argmax(y, -1), 10)

    def loss_fn(m, stats):
        out, stats = m(x, stats, train=True)
        if protocol == "dc":
            return optax.softmax_cross_entropy(out, hard).mean(), stats
        return 0.5 * jnp.sum((out - y) ** 2) / y.size, stats

    @jax.jit
    def step(m, stats, state):
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(m, stats)
        updates, state = tx.update(g, state, m)
        return optax.apply_updates(m, updates), stats, state, loss

    state = tx.init(net)
    for _ in range(total):
        net, stats, state, loss = step(net, stats, state)
    return net, stats, float(loss)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--set", required=True, help="a distilled CIFAR-10 set (.npz)")
    p.add_argument("--dataset", default="../shared/data/cifar10")
    p.add_argument("--draws", default="0", help="comma-separated draws for real sources")
    args = p.parse_args()
    raw = load_raw(args.dataset)
    y_train, y_test = np.asarray(raw.y_train), np.asarray(raw.y_test)
    distilled = load_distilled(args.set)
    pres = {"zca": distilled.preprocessor, "std": fit_preprocessor(raw.x_train, zca=False)}
    for run in args.runs:
        source, pre, arch, definition, norm, protocol, steps = run.split("/")
        draws = [int(d) for d in args.draws.split(",")] if source == "real" else [0]
        x_test = jnp.asarray(pres[pre](raw.x_test))
        accs, t = [], time.time()
        for draw in draws:
            if source == "distilled":
                x, y = jnp.asarray(distilled.images), jnp.asarray(distilled.labels)
            else:
                rng = np.random.default_rng(draw)
                idx = [rng.choice(np.flatnonzero(y_train == c)) for c in range(10)]
                x = jnp.asarray(pres[pre](raw.x_train[idx]))
                y = jnp.eye(10)[y_train[idx]] - 0.1
            net, stats, loss = train(x, y, arch, definition, norm, protocol, int(steps), draw)
            pred = np.concatenate(
                [
                    np.asarray(jnp.argmax(net(x_test[i : i + 1000], stats)[0], -1))
                    for i in range(0, len(x_test), 1000)
                ]
            )
            accs.append(100 * float(np.mean(pred == y_test)))
        print(
            f"{run}: test acc {np.mean(accs):.2f} +- {np.std(accs):.2f} over {len(accs)} "
            f"{np.round(accs, 2).tolist()}, last support loss {loss:.2g}, {time.time() - t:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
