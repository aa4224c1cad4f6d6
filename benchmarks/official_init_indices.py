"""The training examples the released code's ``init_proto`` starts from, per seed (1 ipc).

Runs in the official harness's venv (``../shared/tools/official_rcig/setup.sh``), importing the
authors' ``algorithms.py`` from the patched tree and the harness's offline MNIST loader (shim);
none of their code is in this project. Each starting image is located in the training set by
exact equality. Output (JSON ``{seed: [index per class]}``) feeds
``side_by_side.py accuracy --init-indices``::

    RCIG_MNIST_DIR=$(realpath ../shared/data/mnist) /tmp/official_rcig_venv/bin/python \\
        benchmarks/official_init_indices.py --seeds 0,1,2 \\
        --out benchmarks/results/official_init_indices_mnist_ipc1.json

``--dataset cifar10``: the same with the scratch CIFAR-10 harness (``side_by_side.py``'s docstring:
``--harness /tmp/c10p/harness``, ``RCIG_CIFAR10_NPZ`` the arrays it reads, ``RCIG_ZCA_PATH`` its
ZCA cache); the images are then located in the harness's preprocessed training set, again by exact
equality::

    RCIG_CIFAR10_NPZ=/tmp/c10p/cifar10_u8_perm0.npz RCIG_ZCA_PATH=/tmp/c10p/zca \
        /tmp/official_rcig_venv/bin/python benchmarks/official_init_indices.py --dataset cifar10 \
        --harness /tmp/c10p/harness --seeds 0,1,2 --runs '/tmp/orcig_c10p_w32_s{seed}' \
        --out benchmarks/results/official_init_indices_cifar10_perm0.json

``--runs``: where a seed's released run exists, its ``checkpoint_0`` (the images that run really
started from) is checked against the images found.
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
    p.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    p.add_argument("--harness", default="/tmp/w128h/harness", help="a copy of the shared harness")
    p.add_argument("--tree", default="/tmp/official_rcig_tree", help="setup.sh's patched tree")
    p.add_argument(
        "--runs",
        help="released runs' folders, e.g. '/tmp/orcig_c10p_w32_s{seed}': where a seed's "
        "ckpt/checkpoint_0 exists, its starting images (params x_proto) are checked against "
        "those found",
    )
    p.add_argument("--out", required=True)
    a = p.parse_args()
    sys.path[:0] = [os.path.join(a.harness, "shim"), a.tree, a.harness]
    import algorithms  # the authors' module, from their tree
    import dataloader  # the harness's offline loader
    import ml_collections

    config = ml_collections.ConfigDict({"name": a.dataset, "data_path": "", "zca_path": ""})
    if a.dataset == "cifar10":  # depth_3.txt's ZCA strength, the harness's cache
        config.zca_path = os.environ.get("RCIG_ZCA_PATH", "/tmp/c10h/zca")
        config.zca_reg = 0.1
    (ds_train, _), _, _, _ = dataloader.get_dataset(config)
    (x_train, y_train, _, _), _, _, _ = dataloader.get_dataset(config, return_raw=True)
    flat = x_train.reshape(len(x_train), -1)
    out, checked = {}, {}
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
        run = a.runs and os.path.join(a.runs.format(seed=seed), "ckpt", "checkpoint_0")
        if run and os.path.exists(run):
            from export_npz import load_flax_msgpack  # the harness's msgpack reader

            start = np.asarray(load_flax_msgpack(run)["params"]["x_proto"], np.float64)
            gap = float(np.max(np.abs(start - x_train[found])))
            scale = float(np.max(np.abs(x_train[found])))
            print(f"  {run}: largest |difference| {gap:.3g} (images up to {scale:.3g})", flush=True)
            if gap > 1e-5 * scale:  # stored as float32 from the loader's float64
                raise SystemExit(f"seed {seed}: the run did not start from these images")
            checked[seed] = gap
    with open(a.out, "w") as f:
        json.dump(out if not checked else {**out, "checkpoint_0_max_abs_gap": checked}, f)


if __name__ == "__main__":
    main()
