"""Why do the DC definitions / instance norm evaluate at chance? Train one network per
(arch/definition/norm) on a distilled set and on 10 random real images (one per class), with the
evaluation protocol (EvalConfig), and print the support loss, the accuracy on 2000 random test
images and the prediction histogram.

Run: python benchmarks/norm_probe_support.py SET.npz STEPS convnet/released/instance,vgg11/dc/none
"""

import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from distillation.cli._commands import _distilled_and_dataset
from distillation.evaluation._evaluate import EvalConfig, _predict, train_model

args = types.SimpleNamespace(file=sys.argv[1], dataset="../shared/data/cifar10", image_size=None)
distilled, raw, x_test = _distilled_and_dataset(args)
rng = np.random.default_rng(0)
y_train = np.asarray(raw.y_train)
idx = np.array([rng.choice(np.flatnonzero(y_train == c)) for c in range(10)])
x_train = distilled.preprocessor(raw.x_train[idx])
y_train = y_train[idx]
idx = np.arange(10)
sets = {
    "distilled": (np.asarray(distilled.images), np.asarray(distilled.labels)),
    "random real": (x_train[idx], np.eye(10)[y_train[idx]] - 0.1),
}
test_idx = np.random.default_rng(1).permutation(len(raw.y_test))[:2000]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
for arch, defn, norm in [tuple(c.split("/")) for c in sys.argv[3].split(",")]:
    for name, (x, y) in sets.items():
        cfg = EvalConfig(models=1, arch=arch, norm=norm, definition=defn, steps=steps)
        t = time.time()
        m = train_model(jnp.asarray(x), jnp.asarray(y), cfg, key=jax.random.key(0))
        out = m(jnp.asarray(x))
        loss = float(0.5 * jnp.mean(jnp.sum((out - y) ** 2, -1)))
        pred = np.concatenate(
            [
                np.asarray(_predict(m, jnp.asarray(x_test[test_idx[i : i + 500]])))
                for i in range(0, 2000, 500)
            ]
        )
        acc = 100 * np.mean(pred == raw.y_test[test_idx])
        print(
            f"{arch}/{defn}/{norm} {name}: support loss {loss:.4f}, test acc {acc:.2f} %, "
            f"pred hist {np.bincount(pred, minlength=10)}, out std {float(jnp.std(out)):.3g}, "
            f"{time.time() - t:.0f}s",
            flush=True,
        )
