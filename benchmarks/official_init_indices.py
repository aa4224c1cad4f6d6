"""The training examples the released code's ``init_proto`` starts from, per seed (MNIST, 1 ipc).

Runs in the official harness's venv (``../shared/tools/official_rcig/setup.sh``), importing the
authors' ``algorithms.py`` from the patched tree and the harness's offline MNIST loader (shim);
none of their code is in this project. Each starting image is located in the training set by
exact equality. Output (JSON ``{seed: [index per class]}``) feeds
``side_by_side.py accuracy --init-indices``::

    RCIG_MNIST_DIR=$(realpath ../shared/data/mnist) /tmp/official_rcig_venv/bin/python \\
        benchmarks/official_init_indices.py --seeds 0,1,2 \\
        --out benchmarks/results/official_init_indices_mnist_ipc1.json
"""

import argparse
import json
import os
import sys

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--harness", default="/tmp/w128h/harness", help="a copy of the shared harness")
    p.add_argument("--tree", default="/tmp/official_rcig_tree", help="setup.sh's patched tree")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    sys.path[:0] = [os.path.join(a.harness, "shim"), a.tree]
    import algorithms  # the authors' module, from their tree
    import dataloader  # the harness's offline loader
    import ml_collections

    config = ml_collections.ConfigDict({"name": "mnist", "data_path": "", "zca_path": ""})
    (ds_train, _), _, _, _ = dataloader.get_dataset(config)
    (x_train, y_train, _, _), _, _, _ = dataloader.get_dataset(config, return_raw=True)
    flat = x_train.reshape(len(x_train), -1)
    out = {}
    for seed in (int(s) for s in a.seeds.split(",")):
        images, labels = algorithms.init_proto(ds_train, a.ipc, 10, seed=seed)
        found = []
        for image, label in zip(images, np.argmax(np.asarray(labels), 1), strict=True):
            hits = np.flatnonzero(np.all(flat == image.reshape(1, -1), axis=1))
            if len(hits) == 0 or y_train[hits[0]] != label:
                raise SystemExit(f"seed {seed}: a starting image of class {label} not found")
            found.append(int(hits[0]))
        out[seed] = found
        print(seed, found, flush=True)
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
