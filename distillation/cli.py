"""The ``rcig`` command line: ``rcig distill``, ``rcig evaluate``, ``rcig ablate``.

Configuration is parsed here, once, into typed objects (``DistillConfig``, ``EvalConfig``,
an ``Algorithm``) that go down into the library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import time
from pathlib import Path

METHODS = ("random", "vig", "cig", "rig", "rcig", "frepo")
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
    d.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: runs/<dataset>-<method>-ipc<N>-seed<S>)",
    )
    d.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")

    e = sub.add_parser("evaluate", help="evaluate a distilled-set .npz with the paper's protocol")
    e.add_argument("file", type=Path, help="a distilled-set .npz (export format)")
    e.add_argument("--dataset", required=True, help="the dataset whose test split to use")
    e.add_argument("--models", type=_positive_int, default=5, help="models to train (default 5)")
    e.add_argument("--augment", action="store_true", help="train with the DSA augmentations")
    e.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="training steps (default: 1000 when |S| = 10, else 2000)",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object (acc_mean, acc_std in percent, accs) as the last line",
    )
    _add_model_args(e)

    a = sub.add_parser("ablate", help="several methods under the same budget: Table 1's ablation")
    _add_distill_args(a, ablate=True)
    a.add_argument(
        "--methods",
        default="random,vig,cig,rig,rcig",
        help="comma-separated subset of " + ",".join(METHODS),
    )
    a.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    a.add_argument("--out", type=Path, default=None, help="output folder (default runs/ablate-...)")
    return parser


def _add_distill_args(p: argparse.ArgumentParser, ablate: bool = False) -> None:
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
        help="meta-iterations (default: 300 for digits, else 1000)",
    )
    _add_model_args(p)
    p.add_argument(
        "--pool-size",
        type=_positive_int,
        default=None,
        help="model pool size m (default 30; 10 for digits)",
    )
    p.add_argument("--reset-every", type=_positive_int, default=100, help="K (default 100)")
    p.add_argument("--target-batch", type=_positive_int, default=256)
    p.add_argument("--n-inner", type=_nonneg_int, default=20)
    p.add_argument("--n-hessian", type=_nonneg_int, default=20)
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
        "(default: 1000 when |S| > 1000)",
    )
    p.add_argument("--float64-solve", action="store_true", help="|S|×|S| solve in float64")
    p.add_argument("--checkpoint-every", type=_positive_int, default=100)
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


def _is_small(dataset) -> bool:
    return min(dataset.image_shape[:2]) < 28


def _resolve(args, dataset) -> dict:
    """Fill dataset-dependent defaults; returns the run's settings (recorded in the export)."""
    small = _is_small(dataset)
    n_support = args.ipc * dataset.num_classes
    settings = {
        "dataset": args.dataset,
        "ipc": args.ipc,
        "steps": args.steps if args.steps is not None else (300 if small else 1000),
        "width": args.width or (32 if small else 128),
        "depth": args.depth,
        "pool_size": args.pool_size or (10 if small else 30),
        "reset_every": args.reset_every,
        "target_batch": args.target_batch,
        "n_inner": args.n_inner,
        "n_hessian": args.n_hessian,
        "linear_solver": args.linear_solver,
        "flip": (not dataset.grayscale) if args.flip is None else args.flip,
        "n_subset": args.n_subset or (1000 if n_support > 1000 else None),
        "float64_solve": args.float64_solve,
        "checkpoint_every": args.checkpoint_every,
    }
    return settings


def _algorithm(method: str, s: dict):
    import bilevel
    from distillation.algorithms import ALGORITHMS

    solver = {
        "adam": None,
        "cg": bilevel.CG(),
        "neumann": bilevel.Neumann(steps=s["n_hessian"]),
        "dense": bilevel.Dense(),
    }[s["linear_solver"]]
    if method == "frepo":
        return ALGORITHMS["frepo"](precision="float64" if s["float64_solve"] else "float32")
    kwargs = {"n_inner": s["n_inner"], "n_hessian": s["n_hessian"], "linear_solver": solver}
    if method in ("rig", "rcig"):
        kwargs["precision"] = "float64" if s["float64_solve"] else "float32"
    return ALGORITHMS[method](**kwargs)


def _distill_config(s: dict):
    from distillation.distill import DistillConfig

    return DistillConfig(
        steps=s["steps"],
        pool_size=s["pool_size"],
        reset_every=s["reset_every"],
        target_batch=s["target_batch"],
        flip=s["flip"],
        n_subset=s["n_subset"],
        width=s["width"],
        depth=s["depth"],
        checkpoint_every=s["checkpoint_every"],
    )


def _eval_config(args, s: dict, models: int):
    from distillation.evaluate import EvalConfig

    return EvalConfig(
        models=models,
        augment=args.eval_augment,
        width=s["width"],
        depth=s["depth"],
        steps=args.eval_steps,
    )


def _fingerprint(method: str, seed: int, s: dict) -> str:
    text = json.dumps({"method": method, "seed": seed, **s}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_one(args, dataset, method: str, seed: int, out: Path, resume: bool, eval_models: int):
    """Distil (or draw the random subset), export, evaluate; returns the metrics dict."""
    import jax

    import bilevel
    from distillation.distill import Interrupted, distill, random_subset
    from distillation.evaluate import evaluate_support
    from distillation.export import save_curves, save_distilled, save_image_grid, save_metrics

    s = _resolve(args, dataset)
    if s["float64_solve"]:
        jax.config.update("jax_enable_x64", True)
    key = jax.random.key(seed)
    out.mkdir(parents=True, exist_ok=True)
    history, seconds, steps_done, steps_run = [], 0.0, 0, 0
    if method == "random":
        support = random_subset(
            dataset.x_train,
            dataset.y_train,
            dataset.num_classes,
            args.ipc,
            key=jax.random.split(key)[0],
        )
        flip = False
    else:
        algorithm = _algorithm(method, s)
        config = _distill_config(s)
        try:
            result = distill(
                dataset.x_train,
                dataset.y_train,
                dataset.num_classes,
                algorithm,
                args.ipc,
                config,
                key=key,
                checkpoint_dir=out,
                resume=resume,
                fingerprint=_fingerprint(method, seed, s),
                progress=not args.no_progress,
            )
        except Interrupted as exc:
            print(f"\n{exc}", file=sys.stderr)
            raise SystemExit(130) from None
        support, history, seconds, steps_done, steps_run = (
            result.support,
            result.history,
            result.seconds,
            result.steps,
            result.steps_run,
        )
        flip = s["flip"]
    config_record = {"method": method, "seed": seed, "library_version": bilevel.__version__, **s}
    npz = save_distilled(
        out / "distilled.npz",
        support.images,
        support.labels,
        dataset.preprocessor,
        flip=flip,
        log_temperature=float(support.log_temperature),
        config=config_record,
    )
    png = save_image_grid(
        out / "distilled.png", support.images, support.labels, dataset.preprocessor
    )
    curves = save_curves(out / "curves.png", history, f"{method} on {args.dataset}, {args.ipc} ipc")
    metrics = {
        **config_record,
        "distill_seconds": seconds,
        "seconds_per_step": seconds / steps_run if steps_run else None,
        "steps_done": steps_done,
        "final": history[-1] if history else None,
    }
    if eval_models > 0:
        print(f"evaluating with {eval_models} fresh ConvNets (width {s['width']}) ...", flush=True)
        t0 = time.perf_counter()
        res = evaluate_support(
            support.images,
            support.labels,
            dataset.x_test,
            dataset.y_test,
            _eval_config(args, s, eval_models),
            key=jax.random.fold_in(key, 1),
            flip=flip,
            progress=not args.no_progress,
        )
        metrics["eval"] = {
            **res.as_dict(),
            "models": eval_models,
            "augment": args.eval_augment,
            "seconds": time.perf_counter() - t0,
        }
        print(f"test accuracy: {res}")
    save_metrics(out / "metrics.json", metrics)
    print(
        f"outputs: {npz}  {png}" + (f"  {curves}" if curves else "") + f"  {out / 'metrics.json'}"
    )
    return metrics


def cmd_distill(args) -> int:
    from distillation.data import load_dataset

    dataset = load_dataset(args.dataset)
    small = _is_small(dataset)
    out = (
        args.out
        or Path("runs") / f"{Path(args.dataset).name}-{args.method}-ipc{args.ipc}-seed{args.seed}"
    )
    if args.resume and not (out / "checkpoint.json").exists():
        print(f"--resume: no checkpoint in {out}; starting from scratch", file=sys.stderr)
    eval_models = args.eval_models if args.eval_models is not None else (3 if small else 5)
    run_one(args, dataset, args.method, args.seed, out, args.resume, eval_models)
    return 0


def cmd_evaluate(args) -> int:
    import jax

    from distillation.data import load_raw
    from distillation.evaluate import EvalConfig, evaluate_support
    from distillation.export import load_distilled

    distilled = load_distilled(args.file)
    raw = load_raw(args.dataset)
    x_test = distilled.preprocessor(raw.x_test)  # the file's own preprocessing
    if distilled.num_classes != len(raw.class_names):
        raise ValueError(
            f"{args.file} has {distilled.num_classes} classes but {args.dataset!r} has "
            f"{len(raw.class_names)}."
        )
    small = min(x_test.shape[1:3]) < 28
    config = EvalConfig(
        models=args.models,
        augment=args.augment,
        width=args.width or (32 if small else 128),
        depth=args.depth,
        steps=args.steps,
    )
    result = evaluate_support(
        distilled.images,
        distilled.labels,
        x_test,
        raw.y_test,
        config,
        key=jax.random.key(args.seed),
        flip=distilled.flip,
        progress=not args.json,
    )
    print(f"{args.file}: test accuracy {result} (augment={args.augment})")
    if args.json:
        print(json.dumps(result.as_dict()))
    return 0


def cmd_ablate(args) -> int:
    import numpy as np

    from distillation.data import load_dataset

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown {bad}; expected a subset of {', '.join(METHODS)}.")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
    dataset = load_dataset(args.dataset)
    small = _is_small(dataset)
    eval_models = args.eval_models if args.eval_models is not None else (3 if small else 5)
    name = Path(args.dataset).name
    out = args.out or Path("runs") / f"ablate-{name}-ipc{args.ipc}"
    rows = {}
    for method in methods:
        runs = []
        for seed in seeds:
            print(f"== {method}, seed {seed}", flush=True)
            runs.append(
                run_one(
                    args,
                    dataset,
                    method,
                    seed,
                    out / f"{method}-seed{seed}",
                    resume=True,
                    eval_models=eval_models,
                )
            )
        rows[method] = runs
    s = _resolve(args, dataset)
    lines = [
        f"Ablation on `{args.dataset}`, {args.ipc} image(s) per class, "
        f"{s['steps']} meta-iterations, "
        f"width {s['width']}, seeds {seeds}, {eval_models} evaluation models per seed "
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["distill"]  # the bundled default, end to end
    args = parser.parse_args(argv)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, terminate)  # a kill before distillation starts
    except ValueError:  # not the main thread
        previous = None
    try:
        if args.command == "distill":
            return cmd_distill(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "ablate":
            return cmd_ablate(args)
    except ImportError as exc:
        print(
            f"rcig: missing dependency ({exc}); install with: pip install 'rcig[distill]'",
            file=sys.stderr,
        )
        return 1
    except ValueError as exc:
        print(f"rcig: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rcig: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
