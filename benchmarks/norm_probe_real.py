"""Train one network on a 2000-image random real subset of CIFAR-10 (hard labels, centred) per
normalisation, with the evaluation protocol (EvalConfig), and print its accuracy on 2000 random
test images: does the normalisation train at all with more than 10 images?

Run: python benchmarks/norm_probe_real.py SET.npz instance,none STEPS
(SET.npz only supplies the preprocessing: the ZCA of the set being investigated.)
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
idx = rng.permutation(len(raw.y_train))[:2000]
x, y = distilled.preprocessor(raw.x_train[idx]), np.eye(10)[np.asarray(raw.y_train)[idx]] - 0.1
test_idx = np.random.default_rng(1).permutation(len(raw.y_test))[:2000]
for norm in sys.argv[2].split(","):
    cfg = EvalConfig(models=1, arch="convnet", norm=norm, steps=int(sys.argv[3]))
    t = time.time()
    m = train_model(jnp.asarray(x), jnp.asarray(y), cfg, key=jax.random.key(0))
    pred = np.concatenate(
        [
            np.asarray(_predict(m, jnp.asarray(x_test[test_idx[i : i + 500]])))
            for i in range(0, 2000, 500)
        ]
    )
    print(
        norm,
        "2000 real:",
        100 * np.mean(pred == raw.y_test[test_idx]),
        f"{time.time() - t:.0f}s",
        flush=True,
    )
