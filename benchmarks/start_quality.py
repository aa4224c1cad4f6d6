"""How good each side-by-side run's starting images are on their own (iteration 0).

For MNIST 1 ipc, seeds as in ``side_by_side.py accuracy``: the start ours drew with
``init_draw="buffer"`` (the released rule with this project's generator, the key ``distill``
gives it: the default of 2026-12-04 – 2026-12-06, when the runs this compares were made; since
then the default ``init_draw="released"`` draws exactly the released code's start) and the
start the released code's ``init_proto`` picks (training indices from
``official_init_indices.py``), each evaluated with the side-by-side protocol (5 ReLU ConvNets
of the given width, the seed's evaluation key, the full test split) with its starting labels
(one-hot − 1/K, as both codes start). Shows whether a seed's gap between the two codes at the
end goes with a gap in where they started::

    python benchmarks/start_quality.py --seeds 0,1,2 --width 32 \\
        --official-indices benchmarks/results/official_init_indices_mnist_ipc1.json \\
        --out benchmarks/results/start_quality_mnist_w32.json
"""

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import DATASETS, _evaluate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--models", type=int, default=5)
    p.add_argument("--official-indices", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()

    from distillation._distill import DistillConfig, _pick_from_buffer, init_support
    from distillation.data._datasets import load_dataset

    folder, flip, _ = DATASETS["mnist"]
    dataset = load_dataset(str(folder))
    theirs = json.loads(a.official_indices.read_text())
    config = DistillConfig()
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        k_support, _ = jax.random.split(jax.random.key(seed))  # as distill() splits its key
        for who, indices in (("ours", None), ("official", theirs[str(seed)])):
            support = init_support(
                dataset.x_train,
                dataset.y_train,
                dataset.num_classes,
                1,
                key=k_support,
                center_labels=config.center_labels,
                indices=indices,
                draw="buffer",
            )
            picks = (
                [int(i) for i in indices]
                if indices is not None
                else _pick_from_buffer(dataset.y_train, dataset.num_classes, 1, k_support).tolist()
            )
            accs = _evaluate(support.images, support.labels, flip, dataset, a.models, a.width, seed)
            rows.append({"who": who, "seed": seed, "indices": picks, "accs": accs})
            print(
                f"{who:8s} seed {seed} start {picks}: {np.mean(accs):.2f} ± "
                f"{np.std(accs):.2f} ({' '.join(f'{x:.2f}' for x in accs)})",
                flush=True,
            )
    a.out.write_text(json.dumps({"width": a.width, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
