"""The ``rcig`` command line: ``rcig distill``, ``rcig evaluate``, ``rcig ablate``.

Configuration is parsed here, once, into typed objects (``DistillConfig``, ``EvalConfig``,
an ``Algorithm``) that go down into the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from distillation._interrupts import EXIT_STATUS as EXIT_INTERRUPTED
from distillation._interrupts import InterruptGuard

METHODS = ("random", "vig", "cig", "rig", "rcig", "rcig-paper", "frepo")
LINEAR_SOLVERS = ("adam", "cg", "neumann", "dense")
# Table 1 of the paper (n = 15, no augmentation at evaluation), for reference in outputs.
PAPER_TABLE1 = {
    ("mnist", 1): {"rcig": "94.79", "random": "62.73 ± 0.95"},
    ("mnist", 10): {"rcig": "98.93", "random": "93.22 ± 0.16"},
    ("mnist", 50): {"rcig": "99.23"},
    ("cifar10", 1): {"rcig": "52.75", "random": "20.76"},
    ("cifar10", 10): {"rcig": "69.24"},
    ("cifar10", 50): {"rcig": "73.34"},
    ("cifar100", 1): {"rcig": "39.55"},
    ("cifar100", 10): {"rcig": "44.14"},
}


def _int_at_least(lowest: int, what: str):
    """An argparse type: an integer ``>= lowest``, with a message naming the bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _decay(text: str) -> float:
    """An argparse type: a moving-average decay in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a decay in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a decay in [0, 1), got {value}")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0.0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


ARCHITECTURE_NAMES = ("convnet", "resnet18", "vgg11", "alexnet")
NORM_NAMES = ("none", "instance", "batch")


def _choices_list(allowed: tuple[str, ...], flag: str):
    """Parse ``a,b,c`` where every item is one of ``allowed`` (order kept, repeats dropped)."""

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"{flag}: expected a comma-separated list of {', '.join(allowed)}, got {text!r}"
            )
        return list(dict.fromkeys(items))

    return parse


def _load_training_set(args):
    """The dataset of a distillation command: in memory, or streamed with ``--stream DIR``."""
    if args.stream is not None:
        from distillation.data._stream import stream_dataset

        return stream_dataset(
            args.dataset, args.stream, image_size=args.image_size, zca_block=args.zca_block
        )
    from distillation.data._datasets import load_dataset

    return load_dataset(args.dataset, image_size=args.image_size, zca_block=args.zca_block)


def _add_image_size(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument(
        "--image-size",
        type=_int_at_least(2, "an image size"),
        default=None,
        help="centre-crop and resize every image to N x N pixels (area averaging); " + default_help,
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--width",
        type=_positive_int,
        default=None,
        help="ConvNet width (default: 32 for images under 28 px, else 128)",
    )
    p.add_argument(
        "--depth",
        type=_positive_int,
        default=None,
        help="ConvNet depth (default: 3 for 28/32 px, 4 for 64, 5 for 128)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcig",
        description="Dataset distillation with convexified implicit gradients (RCIG).",
    )
    sub = parser.add_subparsers(dest="command")

    d = sub.add_parser("distill", help="distil a dataset into a few images per class")
    _add_distill_args(d)
    hosts = d.add_argument_group(
        "many hosts (jax.distributed; every process runs the same command)"
    )
    hosts.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    hosts.add_argument("--num-processes", type=_positive_int, default=None)
    hosts.add_argument("--process-id", type=_nonneg_int, default=None)
    hosts.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-host run whose settings JAX detects from the cluster's environment "
        "(SLURM, Open MPI, ...) instead of the three flags above",
    )
    d.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: runs/<dataset>-<method>-ipc<N>-seed<S>)",
    )
    again = d.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue the run whose checkpoint is in --out"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the checkpoint and outputs of an earlier run in --out and start over",
    )

    e = sub.add_parser("evaluate", help="evaluate a distilled-set .npz with the paper's protocol")
    e.add_argument("file", type=Path, help="a distilled-set .npz (export format)")
    e.add_argument("--dataset", required=True, help="the dataset whose test split to use")
    e.add_argument("--models", type=_positive_int, default=5, help="models to train (default 5)")
    e.add_argument(
        "--augment",
        action="store_true",
        help="train with augmentation (one random transform per image, as the released code)",
    )
    e.add_argument(
        "--both",
        action="store_true",
        help="evaluate without and with augmentation and report both (as the released "
        "evaluation does; Table 1 and Table 8)",
    )
    e.add_argument(
        "--dd-ranking",
        action="store_true",
        help="DD-Ranking's label-robust (LRS: hard labels against a random real subset and the "
        "whole training split) and augmentation-robust (ARS) scores, --models rounds of five "
        "models each, instead of the plain evaluation",
    )
    e.add_argument(
        "--full-accuracy",
        type=float,
        default=None,
        help="with --dd-ranking: the whole training split's test accuracy in percent (default: "
        "train one model on it for --full-steps steps)",
    )
    e.add_argument(
        "--full-steps",
        type=_positive_int,
        default=2000,
        help="with --dd-ranking: minibatch steps of the whole-split model (default 2000)",
    )
    e.add_argument(
        "--released-loop",
        action="store_true",
        help="train as the released eval.py's loop: rounds of 500 steps with the same key, "
        "steps // 200 rounds without augmentation (2.5x the cost; the extra steps are at the "
        "schedule's 1%% floor), steps // 500 with --augment",
    )
    e.add_argument(
        "--augment-style",
        choices=("released", "dsa"),
        default="released",
        help="released: one transform per image (default); dsa: all DSA transforms composed",
    )
    e.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="training steps (default: 1000 when |S| = 10, else 2000)",
    )
    e.add_argument(
        "--arch",
        type=_choices_list(ARCHITECTURE_NAMES, "--arch"),
        default=["convnet"],
        help="network(s) to train, comma-separated: convnet, resnet18, vgg11, alexnet "
        "(default convnet); several give the cross-architecture table",
    )
    e.add_argument(
        "--norm",
        type=_choices_list(NORM_NAMES, "--norm"),
        default=["none"],
        help="normalisation(s), comma-separated: none, instance, batch (default none)",
    )
    e.add_argument(
        "--definition",
        choices=("released", "dc"),
        default="released",
        help="released: the networks of the authors' models.py (default); dc: DC/DSA's "
        "networks.py, which MTT and later work use (see docs/distillation.md)",
    )
    e.add_argument(
        "--protocol",
        choices=("released", "dc"),
        default="released",
        help="released: the released eval.py's training, MSE on the set's labels with Adam 1e-4 "
        "(default); dc: DC/DSA's, cross-entropy on the labels' argmax with SGD 0.01, momentum "
        "0.9, weight decay 5e-4, 300 epochs (for instance- or batch-normalised networks at "
        "1 ipc, see docs/results.md)",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object (acc_mean, acc_std in percent, accs) as the last line; "
        "keyed by 'arch/norm' when several networks are evaluated",
    )
    _add_model_args(e)
    _add_image_size(e, "default: the distilled set's own size")

    pv = sub.add_parser(
        "privacy",
        help="membership-inference attacks on models trained on a distilled set and on real data",
    )
    pv.add_argument("file", type=Path, help="a distilled-set .npz (export format)")
    pv.add_argument("--dataset", required=True, help="the dataset it was distilled from")
    _add_image_size(pv, "default: the distilled set's own size")
    pv.add_argument(
        "--chunk",
        type=_positive_int,
        default=10000,
        help="members: this many training images, all of which the set was distilled from; "
        "also the size of the real-data baseline (default 10000)",
    )
    pv.add_argument(
        "--train-steps",
        default="250,500,1000,2000",
        help="training steps of the target models, comma-separated (default 250,500,1000,2000)",
    )
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the JSON and the figure go (default: beside FILE, <name>_privacy.*)",
    )
    pv.add_argument("--json", action="store_true", help="print the rows as JSON (last line)")
    _add_model_args(pv)

    o = sub.add_parser(
        "import-official",
        help="convert a checkpoint of the authors' released RCIG code to a distilled-set .npz",
    )
    o.add_argument("checkpoint", type=Path, help="an official flax msgpack checkpoint file")
    o.add_argument("--dataset", required=True, help="the dataset it was distilled from")
    o.add_argument("--out", type=Path, required=True, help="the .npz to write")
    o.add_argument(
        "--raw",
        action="store_true",
        help="take 'params' (the set as optimised) instead of 'ema_average' (what the "
        "official eval.py evaluates; the default)",
    )
    o.add_argument(
        "--flip",
        choices=("auto", "yes", "no"),
        default="auto",
        help="train on mirrors too when evaluating (auto: yes for RGB, as the official CIFAR "
        "config; no for grayscale, as its MNIST config)",
    )

    a = sub.add_parser("ablate", help="several methods under the same budget: Table 1's ablation")
    _add_distill_args(a, ablate=True)
    a.add_argument(
        "--methods",
        default="random,vig,cig,rig,rcig",
        help="comma-separated subset of " + ",".join(METHODS),
    )
    a.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    a.add_argument("--out", type=Path, default=None, help="output folder (default runs/ablate-...)")

    w = sub.add_parser(
        "sweep",
        help="time per iteration and accuracy for every (n_inner, n_hessian) pair: Figures 1-2",
    )
    _add_distill_args(w, ablate=True)
    w.add_argument("--method", choices=METHODS, default="rcig")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument(
        "--inner-steps",
        default="0,2,5,10,20",
        help="n_inner values, comma-separated (default 0,2,5,10,20)",
    )
    w.add_argument(
        "--hessian-steps",
        default="0,2,5,10,20",
        help="n_hessian values, comma-separated (default 0,2,5,10,20)",
    )
    w.add_argument("--out", type=Path, default=None, help="output folder (default runs/sweep-...)")
    return parser


def _add_distill_args(p: argparse.ArgumentParser, ablate: bool = False) -> None:
    _add_image_size(
        p, "default: the dataset's own size (128 for cub200, imagenette, imagewoof, as the paper)"
    )
    p.add_argument(
        "--devices",
        type=_positive_int,
        default=None,
        help="data parallelism over the first N local devices (target batch and model pool "
        "split; both must be divisible by N); default: one device",
    )
    p.add_argument(
        "--stream",
        type=Path,
        default=None,
        metavar="CACHE_DIR",
        help="keep the training images as uint8 in a memory-mapped file in CACHE_DIR (written "
        "once, a chunk at a time) and read each target batch when drawn: host memory does not "
        "grow with the dataset",
    )
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="bfloat16 convolution operands with float32 sums (for GPUs/TPUs; the |S|x|S| solve "
        "keeps float32, or float64 with --float64-solve)",
    )
    p.add_argument(
        "--zca-block",
        type=_positive_int,
        default=None,
        help="whiten in N x N-pixel blocks sharing one matrix (default: dense ZCA up to 64 px, "
        "64-px blocks above, as the released code; the export stores the block's matrix)",
    )
    p.add_argument(
        "--dataset",
        default="digits",
        help="known name (digits, mnist, fashion_mnist, cifar10, cifar100), hub id, or "
        "local path (default: digits, bundled with scikit-learn)",
    )
    p.add_argument("--ipc", type=_positive_int, default=1, help="images per class (default 1)")
    if not ablate:
        p.add_argument("--method", choices=METHODS, default="rcig")
        p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--steps",
        type=_nonneg_int,
        default=None,
        help="meta-iterations (default: the paper's Table 7, 15000 at 1 ipc, 10000 at 2-10, "
        "5000 above; 300 for the bundled digits)",
    )
    _add_model_args(p)
    p.add_argument(
        "--pool-size",
        type=_positive_int,
        default=None,
        help="model pool size m (default 30; 10 for digits)",
    )
    p.add_argument("--reset-every", type=_positive_int, default=100, help="K (default 100)")
    p.add_argument(
        "--target-batch",
        type=_positive_int,
        default=1024,
        help="real images per meta-iteration, drawn as shuffled epochs (default 1024)",
    )
    p.add_argument(
        "--lr-tuning",
        choices=("released", "schedule", "probe", "none"),
        default="released",
        help="inner/Hessian learning rates: the released code's pre-round and schedule "
        "(default), its schedule alone from --inner-lr/--hessian-lr (a stored tuning replayed), "
        "the paper text's probe, or fixed",
    )
    p.add_argument(
        "--inner-lr",
        type=_positive_float,
        default=None,
        help="the inner solve's starting learning rate (default 1e-5, which the pre-round raises)",
    )
    p.add_argument(
        "--hessian-lr",
        type=_positive_float,
        default=None,
        help="the H⁻¹g solve's starting learning rate (default 5e-5, which the pre-round raises; "
        "only with --linear-solver adam)",
    )
    p.add_argument(
        "--adabelief",
        choices=("released", "current"),
        default="released",
        help="the support set's AdaBelief: as optax computed it before 0.2.4, which the "
        "released code ran on (default), or current optax's (the AdaBelief paper's; ~1.11x "
        "larger steps)",
    )
    p.add_argument(
        "--pool-steps",
        type=_positive_int,
        default=15,
        help="pool training steps per selection drawn from 1..N (default 15, the released "
        "code; 1 is the paper's Algorithm 1)",
    )
    p.add_argument(
        "--pool-drift",
        choices=("released", "before", "none"),
        default="released",
        help="the selected pool model's weights moved by its own Adam's momentum over the inner "
        "steps, one step per inner step as the released code (default), all before the inner "
        "solve (before), or not at all (none)",
    )
    p.add_argument(
        "--init-draw",
        choices=("released", "buffer", "uniform"),
        default="released",
        help="how the starting images are drawn: as the released code (default: the training "
        "set in stored order through tf.data's shuffle buffer of 10*ipc*K seeded with --seed, "
        "the first ipc of each class: the same images as the released code run with the same "
        "seed), the same rule with this project's generator (buffer), or uniformly from each "
        "whole class (uniform); the random-subset baseline always draws uniformly",
    )
    p.add_argument(
        "--frozen-weight",
        choices=("released", "held"),
        default="released",
        help="rig/rcig: the final layer's weight displacement, which the inner Adam does not "
        "train, gets its raw gradient added at each inner step as in the released code "
        "(optax.masked's pass-through; default), or is held at 0",
    )
    p.add_argument(
        "--ema",
        type=_decay,
        default=0.99,
        help="decay of the support set's moving average, which is the result (default 0.99; "
        "0: the last iterate)",
    )
    p.add_argument(
        "--n-inner", type=_nonneg_int, default=None, help="inner steps (default 20; frepo 0)"
    )
    p.add_argument(
        "--n-hessian",
        type=_nonneg_int,
        default=None,
        help="steps of the H⁻¹g solver (default 20; frepo 0; not with --linear-solver cg/dense)",
    )
    p.add_argument(
        "--linear-solver",
        choices=LINEAR_SOLVERS,
        default="adam",
        help="solver for v = H⁻¹g (default adam: AdamQuadratic with tuned lr)",
    )
    p.add_argument(
        "--flip",
        dest="flip",
        action="store_true",
        default=None,
        help="flip strategy (default: on for RGB)",
    )
    p.add_argument("--no-flip", dest="flip", action="store_false")
    p.add_argument(
        "--n-subset",
        type=_positive_int,
        default=None,
        help="differentiate a random subset of this size per iteration "
        "(default: 2000 when |S| > 1000, with the flip strategy off, as the released config)",
    )
    p.add_argument("--float64-solve", action="store_true", help="|S|×|S| solve in float64")
    p.add_argument(
        "--norm",
        choices=("none", "batch"),
        default="none",
        help="normalisation of the distillation ConvNet: none (the paper's default) or batch "
        "(the paper's RCIG (BN) row: pool models keep running statistics, as the released "
        "code; the set is then evaluated on the batch-normalised ConvNet; not with "
        "subsampling, n_subset < |S|)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=100,
        help="write a checkpoint every N iterations (default 100; also at the end and on a signal)",
    )
    p.add_argument(
        "--eval-models",
        type=_nonneg_int,
        default=None,
        help="models for the evaluation after distilling (default 5; 3 for digits; 0: skip)",
    )
    p.add_argument("--eval-augment", action="store_true")
    p.add_argument("--eval-steps", type=_positive_int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------- helpers


def table7_steps(ipc: int) -> int:
    """The paper's Table 7 iteration counts: 15,000 at 1 ipc, 10,000 at 10, 5,000 at 50
    (between: the count of the next listed size up)."""
    return 15000 if ipc <= 1 else 10000 if ipc <= 10 else 5000


def _is_small(dataset) -> bool:
    return min(dataset.image_shape[:2]) < 28


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run's computation, resolved once from the command line and the
    dataset (every dataset- and method-dependent default is here). Recorded in the export and
    the checkpoint; ``--resume`` compares exactly these. ``--checkpoint-every``, ``--out``,
    ``--no-progress`` and the ``--eval-*`` settings may change between an interrupted run and
    its resumption."""

    method: str
    seed: int
    dataset: str
    ipc: int
    steps: int
    width: int
    depth: int | None
    pool_size: int
    reset_every: int
    target_batch: int
    n_inner: int | None
    n_hessian: int | None
    linear_solver: str
    flip: bool
    n_subset: int | None
    lr_tuning: str
    pool_steps: int
    ema: float
    float64_solve: bool
    image_size: int | None = None
    zca_block: int | None = None
    mixed_precision: bool = False
    norm: str = "none"
    adabelief: str = "released"
    pool_drift: str = "released"
    frozen_weight: str = "released"
    init_draw: str = "released"
    inner_lr: float | None = None
    hessian_lr: float | None = None

    def record(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict (``image_size``, ``zca_block``,
        ``mixed_precision`` and ``norm`` only when set, so that runs from before these options
        resume; ``adabelief``, ``pool_drift``, ``frozen_weight`` and ``init_draw`` always: each
        changed the default method, so a run folder from before it does not resume under the
        other one)."""
        record = dataclasses.asdict(self)
        for optional in (
            "image_size",
            "zca_block",
            "mixed_precision",
            "norm",
            "inner_lr",
            "hessian_lr",
        ):
            if record[optional] in (None, False, "none"):
                del record[optional]
        return record

    def fingerprint(self) -> str:
        text = json.dumps(self.record(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def algorithm(self):
        """The method's :class:`~distillation.Algorithm`: every factory takes the
        same keywords, and only what the user set is passed (the factories hold the defaults)."""
        import bilevel
        from distillation._algorithms import ALGORITHMS

        solver = {
            "adam": None,
            "cg": bilevel.CG(),
            "neumann": bilevel.Neumann(steps=20 if self.n_hessian is None else self.n_hessian),
            "dense": bilevel.Dense(),
        }[self.linear_solver]
        settings: dict[str, Any] = {"precision": "float64" if self.float64_solve else "float32"}
        if self.n_inner is not None:
            settings["n_inner"] = self.n_inner
        if self.inner_lr is not None:
            settings["inner_lr"] = self.inner_lr
        if self.hessian_lr is not None:
            if solver is not None:
                raise ValueError(
                    f"--hessian-lr {self.hessian_lr} sets the default AdamQuadratic's learning "
                    f"rate; --linear-solver {self.linear_solver} has none (use adam)."
                )
            settings["hessian_lr"] = self.hessian_lr
        if solver is not None:
            settings["linear_solver"] = solver
        elif self.n_hessian is not None:
            settings["n_hessian"] = self.n_hessian
        if self.frozen_weight != "released":
            from distillation._objectives import KRRHead

            if self.method not in ("rig", "rcig"):
                raise ValueError(
                    f"--frozen-weight {self.frozen_weight}: only rig and rcig have the "
                    f"kernel-ridge head whose weight it sets; {self.method} has none."
                )
            settings["head"] = KRRHead(
                settings["precision"],
                frozen_weight=self.frozen_weight,  # type: ignore[arg-type]
            )
        return ALGORITHMS[self.method](**settings)

    def distill_config(self, checkpoint_every: int):
        from distillation._distill import DistillConfig

        learns = _learns(self.method)
        return DistillConfig(
            steps=self.steps,
            pool_size=self.pool_size,
            reset_every=self.reset_every,
            target_batch=self.target_batch,
            lr_tuning=self.lr_tuning,  # type: ignore[arg-type]
            adabelief=self.adabelief,  # type: ignore[arg-type]
            pool_max_steps=self.pool_steps,
            pool_drift=self.pool_drift != "none",
            drift_order="before" if self.pool_drift == "before" else "stepwise",
            ema_decay=self.ema,
            flip=self.flip,
            n_subset=self.n_subset,
            width=self.width,
            depth=self.depth,
            checkpoint_every=checkpoint_every,
            mixed_precision=self.mixed_precision,
            norm=self.norm,  # type: ignore[arg-type]
            # The random-subset baseline: real images with one-hot labels, temperature 0.1.
            center_labels=learns,
            init_temperature=1.0 if learns else 0.1,
            init_draw=self.init_draw,  # type: ignore[arg-type]
        )


def _learns(method: str) -> bool:
    """Whether the method optimises its support set (the random subset does not)."""
    from distillation._algorithms import ALGORITHMS

    return ALGORITHMS[method]().learns


def _resolve(args, dataset, method: str, seed: int) -> RunSettings:
    """The run's :class:`RunSettings` from the arguments and the dataset."""
    small = _is_small(dataset)
    n_support = args.ipc * dataset.num_classes
    learns = _learns(method)
    steps = args.steps if args.steps is not None else (300 if small else table7_steps(args.ipc))
    flip = (not dataset.grayscale and n_support <= 1000) if args.flip is None else args.flip
    return RunSettings(
        method=method,
        seed=seed,
        dataset=args.dataset,
        ipc=args.ipc,
        steps=steps if learns else 0,
        width=args.width or (32 if small else 128),
        depth=args.depth,
        pool_size=args.pool_size or (10 if small else 30),
        reset_every=args.reset_every,
        target_batch=args.target_batch,
        n_inner=args.n_inner,
        n_hessian=args.n_hessian,
        linear_solver=args.linear_solver,
        flip=flip and learns,
        n_subset=args.n_subset or (2000 if n_support > 1000 else None),
        lr_tuning=args.lr_tuning,
        pool_steps=args.pool_steps,
        ema=args.ema,
        float64_solve=args.float64_solve,
        image_size=args.image_size,
        zca_block=args.zca_block,
        mixed_precision=args.mixed_precision,
        norm=getattr(args, "norm", "none"),
        adabelief=getattr(args, "adabelief", "released"),
        pool_drift=getattr(args, "pool_drift", "released"),
        frozen_weight=getattr(args, "frozen_weight", "released"),
        init_draw=getattr(args, "init_draw", "released") if learns else "uniform",
        inner_lr=getattr(args, "inner_lr", None),
        hessian_lr=getattr(args, "hessian_lr", None),
    )


def _eval_config(args, s: RunSettings, models: int):
    from distillation.evaluation._evaluate import EvalConfig

    return EvalConfig(
        models=models,
        augment=args.eval_augment,
        width=s.width,
        depth=s.depth,
        steps=args.eval_steps,
        # A set distilled with batch norm is evaluated on the batch-normalised ConvNet.
        norm=s.norm,  # type: ignore[arg-type]
    )


def run_one(
    args,
    dataset,
    method: str,
    seed: int,
    out: Path,
    resume: bool,
    eval_models: int,
    interrupts: InterruptGuard,
):
    """Distil, export, evaluate; returns the metrics dict.

    ``out`` must be open (:func:`~distillation._run_folder.open_run_folder`: checked, locked).
    """
    import contextlib

    import jax

    from distillation._checkpoint import read_checkpoint_meta
    from distillation._distill import check_resumable

    s = _resolve(args, dataset, method, seed)
    meta = read_checkpoint_meta(out) if resume else None
    if meta is not None:  # before anything is traced or compiled
        check_resumable(out, meta, s.fingerprint(), s.record())
    # 64-bit JAX only for a run that asked for it, and only while it runs.
    with jax.enable_x64(True) if s.float64_solve else contextlib.nullcontext():
        return _distill_export_evaluate(args, dataset, s, out, resume, eval_models, interrupts)


def _distill_export_evaluate(args, dataset, s: RunSettings, out, resume, eval_models, interrupts):
    import jax

    import bilevel
    from distillation._distill import data_parallel_mesh, distill
    from distillation.data._export import save_curves, save_distilled, save_image_grid, save_metrics
    from distillation.evaluation._evaluate import evaluate_support

    key = jax.random.key(s.seed)
    mesh = None
    if jax.process_count() > 1:  # every device of every host
        mesh = data_parallel_mesh()
    elif args.devices is not None:
        mesh = data_parallel_mesh(jax.local_devices()[: args.devices])
    result = distill(
        dataset.x_train,
        dataset.y_train,
        dataset.num_classes,
        s.algorithm(),
        args.ipc,
        s.distill_config(args.checkpoint_every),
        key=key,
        checkpoint_dir=out,
        resume=resume,
        fingerprint=s.fingerprint(),
        settings=s.record(),
        progress=not args.no_progress and s.steps > 0,
        interrupts=interrupts,
        mesh=mesh,
    )
    if jax.process_index() != 0:  # process 0 exports and evaluates
        return {}
    support, history = result.support, result.history
    interrupts.set_phase(
        "exporting",
        f"the run's checkpoint (step {result.steps}) in {out} is kept; run the same command "
        "with --resume to export and evaluate it"
        if result.steps
        else None,
    )
    config_record = {**s.record(), "library_version": bilevel.__version__}
    npz = save_distilled(
        out / "distilled.npz",
        support.images,
        support.labels,
        dataset.preprocessor,
        flip=s.flip,
        log_temperature=float(support.log_temperature),
        config=config_record,
    )
    png = save_image_grid(
        out / "distilled.png", support.images, support.labels, dataset.preprocessor
    )
    curves = save_curves(
        out / "curves.png", history, f"{s.method} on {args.dataset}, {args.ipc} ipc"
    )
    seconds = result.total_seconds if result.steps else 0.0
    metrics = {
        **config_record,
        # Wall-clock time of the whole run, summed over its resumed segments.
        "distill_seconds": seconds,
        "seconds_per_step": seconds / result.steps if result.steps else None,
        "steps_done": result.steps,
        "final": history[-1] if history else None,
        # Between the first and the last logged step: compilation and the pre-round excluded.
        "seconds_per_step_steady": _steady_seconds_per_step(history),
    }
    if history and "inner_lr" in history[0]:
        # "start": after the pre-round (replay it with --lr-tuning schedule --inner-lr/--hessian-lr)
        metrics["learning_rates"] = {
            "start": [history[0]["inner_lr"], history[0].get("hessian_lr")],
            "end": list(result.learning_rates),
        }
    if eval_models > 0:
        interrupts.set_phase("evaluating")
        print(f"evaluating with {eval_models} fresh ConvNets (width {s.width}) ...", flush=True)
        t0 = time.perf_counter()
        res = evaluate_support(
            support.images,
            support.labels,
            dataset.x_test,
            dataset.y_test,
            _eval_config(args, s, eval_models),
            key=jax.random.fold_in(key, 1),
            flip=s.flip,
            progress=not args.no_progress,
        )
        metrics["eval"] = {
            **res.as_dict(),
            "models": eval_models,
            "augment": args.eval_augment,
            "seconds": time.perf_counter() - t0,
        }
        print(f"test accuracy: {res}")
    elif resume and result.steps_run == 0:  # a finished run exported again: keep its evaluation
        previous = _read_json(out / "metrics.json")
        if isinstance(previous.get("eval"), dict):
            metrics["eval"] = previous["eval"]
    interrupts.set_phase("writing metrics")
    save_metrics(out / "metrics.json", metrics)
    print(
        f"outputs: {npz}  {png}" + (f"  {curves}" if curves else "") + f"  {out / 'metrics.json'}"
    )
    return metrics


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _default_out(args) -> Path:
    return Path("runs") / f"{Path(args.dataset).name}-{args.method}-ipc{args.ipc}-seed{args.seed}"


def cmd_distill(args, interrupts: InterruptGuard) -> int:
    from distillation._checkpoint import read_checkpoint_meta
    from distillation._run_folder import open_run_folder

    out = args.out or _default_out(args)
    # Before any data is loaded or anything compiled: writable, not in use, not another run's.
    import contextlib

    import jax

    # Across hosts process 0 holds the folder; the others read its checkpoints.
    lead = jax.process_index() == 0
    folder = open_run_folder(out, resume=args.resume, overwrite=args.overwrite)
    with folder if lead else contextlib.nullcontext():
        meta = read_checkpoint_meta(out) if args.resume else None
        if args.resume and meta is None:
            print(f"rcig: --resume: no checkpoint in {out}; starting from scratch", file=sys.stderr)
        kept = (
            f"the checkpoint at step {meta.get('step')} in {out} is kept; run the same command "
            "with --resume to continue"
            if meta is not None
            else None
        )
        interrupts.set_phase("loading the data", kept)
        dataset = _load_training_set(args)
        small = _is_small(dataset)
        eval_models = args.eval_models if args.eval_models is not None else (3 if small else 5)
        run_one(args, dataset, args.method, args.seed, out, args.resume, eval_models, interrupts)
    return 0


def cmd_evaluate(args, interrupts: InterruptGuard) -> int:
    import jax

    from distillation.evaluation._evaluate import EvalConfig, evaluate_support

    interrupts.set_phase("loading the data")
    distilled, raw, x_test = _distilled_and_dataset(args)
    small = min(x_test.shape[1:3]) < 28
    config = EvalConfig(
        models=args.models,
        augment=args.augment,
        augment_style=args.augment_style,
        released_loop=args.released_loop,
        protocol=args.protocol,
        width=args.width or (32 if small else 128),
        depth=args.depth,
        steps=args.steps,
        definition=args.definition,
    )
    networks = [(a, n) for a in args.arch for n in args.norm]
    if any(a != "convnet" for a, _ in networks) and not 28 <= min(x_test.shape[1:3]) <= 32:
        raise ValueError(
            f"--arch {','.join(args.arch)}: ResNet-18, VGG-11 and AlexNet are defined for 28- "
            f"to 32-px images and {args.dataset} has {x_test.shape[1]}x{x_test.shape[2]}; "
            "use --arch convnet."
        )
    interrupts.set_phase("evaluating")
    if args.dd_ranking:
        return _dd_ranking(args, config, networks, distilled, raw, x_test)
    augments = [False, True] if args.both else [args.augment]
    results: dict[str, Any] = {}
    for arch, norm in networks:
        for augmented in augments:
            run_config = dataclasses.replace(config, arch=arch, norm=norm, augment=augmented)
            if not args.json and len(networks) > 1:
                print(f"{arch}, norm {norm}, augment={augmented}:", flush=True)
            result = evaluate_support(
                distilled.images,
                distilled.labels,
                x_test,
                raw.y_test,
                run_config,
                key=jax.random.key(args.seed),
                flip=distilled.flip,
                progress=not args.json,
            )
            style = f", {args.augment_style}" if augmented else ""
            style += ", protocol dc" if args.protocol == "dc" else ""
            where = f"{arch}/{norm}" + (f" ({args.definition})" if arch != "convnet" else "")
            print(f"{args.file}: {where} test accuracy {result} (augment={augmented}{style})")
            key = "augment" if augmented else "no_augment"
            results.setdefault(f"{arch}/{norm}", {})[key] = result.as_dict()
    if args.json:
        if len(networks) == 1:
            results = next(iter(results.values()))
            if not args.both:
                results = next(iter(results.values()))
        print(json.dumps(results))
    return 0


def _dd_ranking(args, config, networks, distilled, raw, x_test) -> int:
    """``rcig evaluate --dd-ranking``: the scores for every network asked for."""
    import jax

    from distillation.evaluation._ranking import dd_ranking

    if args.full_accuracy is not None and not 0.0 <= args.full_accuracy <= 100.0:
        raise ValueError(
            f"--full-accuracy must be a percentage in [0, 100], got {args.full_accuracy}."
        )
    x_train = distilled.preprocessor(raw.x_train)
    results: dict[str, Any] = {}
    for arch, norm in networks:
        run_config = dataclasses.replace(config, arch=arch, norm=norm)
        if not args.json:
            print(f"{arch}, norm {norm}: DD-Ranking scores ({config.models} rounds)", flush=True)
        ranking = dd_ranking(
            distilled.images,
            distilled.labels,
            x_train,
            raw.y_train,
            x_test,
            raw.y_test,
            run_config,
            key=jax.random.key(args.seed),
            flip=distilled.flip,
            full_accuracy=args.full_accuracy,
            full_steps=args.full_steps,
            progress=not args.json,
        )
        s = ranking.scores
        print(
            f"{args.file}: {arch}/{norm} LRS {s['lrs']['mean']:.2f} ± {s['lrs']['std']:.2f} "
            f"(HLR {s['hlr']['mean']:.2f}, IOR {s['ior']['mean']:.2f}), "
            f"ARS {s['ars']['mean']:.2f} ± {s['ars']['std']:.2f}; whole split "
            f"{ranking.full_accuracy:.2f} %"
        )
        results[f"{arch}/{norm}"] = ranking.as_dict()
    if args.json:
        print(json.dumps(results if len(networks) > 1 else next(iter(results.values()))))
    return 0


def _distilled_and_dataset(args):
    """The distilled set, the raw dataset and its test images in the set's own preprocessing,
    checked against each other."""
    from distillation.data._datasets import load_raw
    from distillation.data._export import load_distilled

    distilled = load_distilled(args.file)
    h, w = distilled.images.shape[1:3]
    # The set's own size by default: a no-op for a dataset of that size, the resize it was
    # distilled at for one of another or of mixed sizes.
    size = args.image_size if args.image_size is not None else (h if h == w else None)
    raw = load_raw(args.dataset, image_size=size)
    if distilled.num_classes != len(raw.class_names):
        raise ValueError(
            f"{args.file} has {distilled.num_classes} classes but {args.dataset!r} has "
            f"{len(raw.class_names)}."
        )
    if distilled.images.shape[1:] != raw.x_test.shape[1:]:
        raise ValueError(
            f"{args.file} holds images of shape {distilled.images.shape[1:]} but "
            f"{args.dataset!r} has images of shape {raw.x_test.shape[1:]}."
        )
    return distilled, raw, distilled.preprocessor(raw.x_test)  # the file's own preprocessing


def cmd_privacy(args, interrupts: InterruptGuard) -> int:
    import jax

    from distillation.data._export import save_metrics
    from distillation.evaluation._evaluate import EvalConfig
    from distillation.evaluation._privacy import privacy_evaluation, save_privacy_figure

    try:
        steps = [int(x) for x in args.train_steps.split(",") if x.strip()]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise ValueError(
            f"--train-steps must be comma-separated positive integers, got {args.train_steps!r}."
        )
    if args.file.suffix != ".npz" or not args.file.is_file():
        raise ValueError(f"{args.file}: expected an existing distilled-set .npz.")
    out = args.out or args.file.parent
    interrupts.set_phase("loading the data")
    distilled, raw, x_test = _distilled_and_dataset(args)
    if args.chunk > len(raw.y_train):
        raise ValueError(
            f"--chunk {args.chunk} is larger than {args.dataset!r}'s training split "
            f"({len(raw.y_train)} images)."
        )
    x_train = distilled.preprocessor(raw.x_train)
    small = min(x_test.shape[1:3]) < 28
    config = EvalConfig(width=args.width or (32 if small else 128), depth=args.depth)
    interrupts.set_phase("evaluating")
    rows = privacy_evaluation(
        distilled.images,
        distilled.labels,
        x_train,
        raw.y_train,
        x_test,
        raw.y_test,
        config,
        key=jax.random.key(args.seed),
        flip=distilled.flip,
        chunk=args.chunk,
        steps=steps,
        progress=not args.json,
    )
    out.mkdir(parents=True, exist_ok=True)
    stem = args.file.stem
    record = {"file": str(args.file), "dataset": args.dataset, "chunk": args.chunk,
              "rows": [r.as_dict() for r in rows]}  # fmt: skip
    save_metrics(out / f"{stem}_privacy.json", record)
    save_privacy_figure(out / f"{stem}_privacy.png", rows, f"{stem} on {args.dataset}")
    for r in rows:
        aucs = "  ".join(f"{k} {v:.3f}" for k, v in r.aucs.items())
        print(f"{r.target:>18} {r.steps:>5} steps: {r.test_accuracy:6.2f} %  AUC {aucs}")
    print(f"outputs: {out / (stem + '_privacy.json')}  {out / (stem + '_privacy.png')}")
    if args.json:
        print(json.dumps(record))
    return 0


def cmd_import_official(args, interrupts: InterruptGuard) -> int:
    from distillation.data._datasets import load_dataset
    from distillation.data._official import import_official, official_support, read_flax_msgpack

    if not args.checkpoint.is_file():
        raise ValueError(f"{args.checkpoint}: no such file (an official RCIG checkpoint).")
    if args.out.suffix != ".npz":
        raise ValueError(f"--out {args.out}: expected a path ending in .npz.")
    # The checkpoint is checked before the (longer) loading of the dataset.
    official_support(
        read_flax_msgpack(args.checkpoint), ema=not args.raw, where=str(args.checkpoint)
    )
    interrupts.set_phase("loading the data")
    dataset = load_dataset(args.dataset)  # its preprocessing: the images' model-input space
    interrupts.set_phase("writing the export")
    path = import_official(
        args.checkpoint,
        args.out,
        dataset.preprocessor,
        image_shape=dataset.image_shape,
        num_classes=len(dataset.class_names),
        ema=not args.raw,
        flip={"auto": None, "yes": True, "no": False}[args.flip],
        dataset=args.dataset,
    )
    print(f"wrote {path}")
    return 0


def cmd_ablate(args, interrupts: InterruptGuard) -> int:
    import numpy as np

    from distillation._run_folder import check_writable, open_run_folder

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown {bad}; expected a subset of {', '.join(METHODS)}.")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
    name = Path(args.dataset).name
    out = args.out or Path("runs") / f"ablate-{name}-ipc{args.ipc}"
    check_writable(out)  # before any data is loaded or anything compiled
    interrupts.set_phase("loading the data")
    dataset = _load_training_set(args)
    small = _is_small(dataset)
    eval_models = args.eval_models if args.eval_models is not None else (3 if small else 5)
    rows = {}
    for method in methods:
        runs = []
        for seed in seeds:
            print(f"== {method}, seed {seed}", flush=True)
            folder = out / f"{method}-seed{seed}"
            # Each run resumes from its checkpoint, if any (an interrupted ablation continues).
            with open_run_folder(folder, resume=True, overwrite=False):
                runs.append(
                    run_one(args, dataset, method, seed, folder, True, eval_models, interrupts)
                )
        rows[method] = runs
    s = _resolve(args, dataset, "rcig", seeds[0] if seeds else 0)
    lines = [
        f"Ablation on `{args.dataset}`, {args.ipc} image(s) per class, "
        f"{s.steps} meta-iterations, "
        f"width {s.width}, seeds {seeds}, {eval_models} evaluation models per seed "
        f"(augment={args.eval_augment}).",
        "",
        "| method | test accuracy (%) mean ± std | per-seed means | distill time / run (s) |",
        "|---|---|---|---|",
    ]
    summary = {}
    for method, runs in rows.items():
        accs = [a for r in runs if "eval" in r for a in r["eval"]["accs"]]
        seed_means = [r["eval"]["acc_mean"] for r in runs if "eval" in r]
        mean, std = (float(np.mean(accs)), float(np.std(accs))) if accs else (float("nan"),) * 2
        secs = float(np.mean([r["distill_seconds"] for r in runs]))
        summary[method] = {
            "acc_mean": mean,
            "acc_std": std,
            "accs": accs,
            "seed_means": seed_means,
            "distill_seconds": secs,
        }
        lines.append(
            f"| {method} | {mean:.2f} ± {std:.2f} | "
            f"{', '.join(f'{m:.2f}' for m in seed_means)} | {secs:.0f} |"
        )
    paper = PAPER_TABLE1.get((name, args.ipc))
    if paper:
        lines += [
            "",
            "Paper (Table 1, full protocol): "
            + ", ".join(f"{k} {v}" for k, v in paper.items())
            + ".",
        ]
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    print(table)
    print(f"outputs: {out / 'table.md'}  {out / 'ablation.json'}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise ValueError(f"{flag} must be comma-separated integers >= 0, got {text!r}.")
    return values


def cmd_sweep(args, interrupts: InterruptGuard) -> int:
    """Every (n_inner, n_hessian) pair as its own resumable run (``<out>/inner<a>-hessian<b>``);
    a pair finished with the same settings (fingerprint) is read from ``sweep.json`` and not run
    again, and an interrupted pair continues from its checkpoint."""
    from distillation._run_folder import check_writable, open_run_folder
    from distillation.data._export import save_metrics, save_sweep_figure

    inner = _int_list(args.inner_steps, "--inner-steps")
    hessian = _int_list(args.hessian_steps, "--hessian-steps")
    if args.n_inner is not None or args.n_hessian is not None:
        raise ValueError(
            "rcig sweep sets --n-inner/--n-hessian itself: use --inner-steps and --hessian-steps."
        )
    name = Path(args.dataset).name
    out = args.out or Path("runs") / f"sweep-{name}-{args.method}-ipc{args.ipc}-seed{args.seed}"
    check_writable(out)  # before any data is loaded or anything compiled
    interrupts.set_phase("loading the data")
    dataset = _load_training_set(args)
    eval_models = args.eval_models if args.eval_models is not None else 1
    record_path = out / "sweep.json"
    record = _read_json(record_path)
    cells = {(c["n_inner"], c["n_hessian"]): c for c in record.get("cells", [])}
    for a in inner:
        for b in hessian:
            pair = argparse.Namespace(**{**vars(args), "n_inner": a, "n_hessian": b})
            fingerprint = _resolve(pair, dataset, args.method, args.seed).fingerprint()
            if cells.get((a, b), {}).get("fingerprint") == fingerprint:
                print(f"== n_inner {a}, n_hessian {b}: done earlier", flush=True)
                continue
            print(f"== n_inner {a}, n_hessian {b}", flush=True)
            folder = out / f"inner{a}-hessian{b}"
            with open_run_folder(folder, resume=True, overwrite=False):
                metrics = run_one(
                    pair, dataset, args.method, args.seed, folder, True, eval_models, interrupts
                )
            cells[(a, b)] = {
                "n_inner": a,
                "n_hessian": b,
                "seconds_per_iteration": metrics["seconds_per_step_steady"]
                or metrics["seconds_per_step"],
                "acc_mean": metrics.get("eval", {}).get("acc_mean"),
                "acc_std": metrics.get("eval", {}).get("acc_std"),
                "steps": metrics["steps_done"],
                "fingerprint": fingerprint,
            }
            record = {
                "dataset": args.dataset,
                "ipc": args.ipc,
                "method": args.method,
                "seed": args.seed,
                "cells": sorted(cells.values(), key=_cell_key),
            }
            save_metrics(record_path, record)
    figure = save_sweep_figure(
        out / "sweep.png", sorted(cells.values(), key=_cell_key), f"{args.method} on {name}"
    )
    print(f"outputs: {record_path}  {figure}")
    return 0


def _cell_key(cell: dict) -> tuple[int, int]:
    return cell["n_inner"], cell["n_hessian"]


def _steady_seconds_per_step(history: list[dict]) -> float | None:
    """Seconds per iteration between the first and the last logged step of a run's history
    (compilation and the learning-rate pre-round excluded); ``None`` with fewer than two."""
    if len(history) >= 2 and history[-1]["step"] > history[0]["step"]:
        first, last = history[0], history[-1]
        return (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])
    return None


def _start_distributed(args) -> str | None:
    """Join the multi-host run the flags describe (before anything else touches JAX); the
    problem with the flags, if any."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(f is None for f in flags):
        return None
    if args.distributed and any(f is not None for f in flags):
        return (
            "--distributed detects the cluster; do not also give --coordinator, "
            "--num-processes or --process-id"
        )
    if args.devices is not None:
        return "--devices applies to one process; across processes every device is used"
    from distillation._distill import initialize_distributed

    try:
        if args.distributed:
            initialize_distributed()
        else:
            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    except ValueError as exc:
        return (
            str(exc)
            .replace("initialize_distributed: ", "")
            .replace(
                "coordinator, num_processes and process_id",
                "--coordinator, --num-processes and --process-id",
            )
        )
    return None


def _devices_problem(args) -> str | None:
    """Why ``--devices`` cannot work with the other settings (checked before any data loads)."""
    import jax

    available = jax.local_device_count()
    if args.devices > available:
        return (
            f"only {available} local device(s) ({jax.default_backend()}); on CPU, "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={args.devices} makes more"
        )
    for name, value in (("--target-batch", args.target_batch), ("--pool-size", args.pool_size)):
        if value is not None and value % args.devices:
            return f"{name} {value} is not divisible by {args.devices} devices"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["distill"]  # the bundled default, end to end
    args = parser.parse_args(argv)
    commands = {
        "distill": cmd_distill,
        "evaluate": cmd_evaluate,
        "import-official": cmd_import_official,
        "privacy": cmd_privacy,
        "sweep": cmd_sweep,
        "ablate": cmd_ablate,
    }
    if args.command not in commands:
        parser.print_help()
        return 2
    # Before anything runs on JAX: XLA:CPU's per-step buffers stay in the heap instead of being
    # mapped (and page-faulted) anew every step; RCIG_HOST_MEMORY=system keeps the defaults.
    from distillation._host_memory import reuse_host_memory

    try:
        reuse_host_memory()
    except ValueError as exc:
        print(f"rcig: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. a later jax without the dispatch setting: run as before
        print(f"rcig: warning: host memory left at the defaults ({exc!r})", file=sys.stderr)
    if args.command == "distill":
        problem = _start_distributed(args)
        if problem:
            print(f"rcig: error: {problem}", file=sys.stderr)
            return 2
    if args.command in ("distill", "ablate", "sweep") and args.devices is not None:
        problem = _devices_problem(args)
        if problem:
            print(f"rcig: error: --devices {args.devices}: {problem}", file=sys.stderr)
            return 2
    from distillation._checkpoint import RunFailed
    from distillation._loop import Interrupted

    # One SIGTERM / Ctrl-C handling for the whole command (distillation/interrupts.py).
    with InterruptGuard("rcig") as interrupts:
        try:
            return commands[args.command](args, interrupts)
        except ImportError as exc:
            print(
                f"rcig: missing dependency ({exc}); install with: pip install 'rcig[distill]'",
                file=sys.stderr,
            )
            return 1
        except ValueError as exc:
            print(f"rcig: error: {exc}", file=sys.stderr)
            return 2
        except Interrupted as exc:
            print(f"rcig: {exc}", file=sys.stderr)
            interrupts.set_done()
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:  # only where no guard could be installed (not the main thread)
            print("rcig: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except RunFailed as exc:
            print(f"rcig: error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # a disk that fills up or goes away during the run
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"rcig: error: {exc.strerror or exc}{where}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
