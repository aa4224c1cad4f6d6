"""Export round trip, the ``rcig`` command line, checkpoints and resume."""

import json

import jax
import numpy as np
import pytest

from distillation._algorithms import rcig
from distillation._distill import DistillConfig, Interrupted, distill
from distillation.cli._commands import main
from distillation.data._datasets import Preprocessor, load_dataset
from distillation.data._export import load_distilled, save_distilled

TINY = [  # the plumbing, not the numbers: short inner and Hessian solves compile fast
    "--n-inner",
    "2",
    "--n-hessian",
    "2",
    "--width",
    "8",
    "--pool-size",
    "2",
    "--target-batch",
    "64",
    "--eval-steps",
    "20",
    "--no-progress",
]


def test_export_round_trip_and_format(tmp_path):
    rng = np.random.default_rng(0)
    pre = Preprocessor(
        np.asarray([0.4, 0.5, 0.6], np.float32),
        np.asarray([0.2, 0.25, 0.3], np.float32),
        rng.normal(size=12).astype(np.float32),
        np.eye(12, dtype=np.float32) * 2,
    )
    images = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
    labels = rng.normal(size=(4, 5)).astype(np.float32)
    path = save_distilled(
        tmp_path / "d.npz",
        images,
        labels,
        pre,
        flip=True,
        log_temperature=-1.5,
        config={"method": "rcig", "ipc": 1},
    )
    loaded = load_distilled(path)
    assert np.array_equal(loaded.images, images) and np.array_equal(loaded.labels, labels)
    assert loaded.flip is True and loaded.log_temperature == pytest.approx(-1.5)
    assert loaded.config == {"method": "rcig", "ipc": 1}
    assert np.array_equal(loaded.preprocessor.zca_whitening, pre.zca_whitening)
    # The documented recipe, with numpy alone: raw uint8 -> model input.
    with np.load(path) as f:
        raw = rng.integers(0, 256, size=(2, 2, 3)).astype(np.uint8)
        x = (raw / 255 - f["mean"]) / f["std"]
        x = ((x.reshape(-1) - f["zca_mean"]) @ f["zca_whitening"]).reshape(raw.shape)
        assert set(f.files) >= {
            "images",
            "labels",
            "mean",
            "std",
            "zca_mean",
            "zca_whitening",
            "flip",
            "log_temperature",
            "config",
        }
    assert np.allclose(x, pre(raw[None] / 255.0)[0], atol=1e-5)
    # Grayscale without ZCA writes no ZCA keys.
    gray = Preprocessor(np.asarray([0.1], np.float32), np.asarray([0.3], np.float32))
    save_distilled(
        tmp_path / "g.npz",
        images[..., :1],
        labels,
        gray,
        flip=False,
        log_temperature=0.0,
        config={},
    )
    with np.load(tmp_path / "g.npz") as f:
        assert "zca_whitening" not in f.files


@pytest.mark.slow
def test_distill_with_batch_norm_then_dd_ranking_scores(tmp_path, capsys):
    """``--norm batch`` (RCIG (BN)) runs, is recorded in the export, and the set is evaluated
    on the batch-normalised ConvNet."""
    out = tmp_path / "bn"
    argv = ["distill", "--norm", "batch", "--steps", "2", "--eval-models", "1", "--out", str(out)]
    assert main([*argv, *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps_done"] == 2 and len(metrics["eval"]["accs"]) == 1
    assert load_distilled(out / "distilled.npz").config["norm"] == "batch"
    # DD-Ranking's scores of the set, with a given whole-split accuracy.
    capsys.readouterr()
    argv = ["evaluate", str(out / "distilled.npz"), "--dataset", "digits", "--dd-ranking",
            "--full-accuracy", "95", "--models", "1", "--steps", "5", "--width", "8",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    ranking = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ranking["full_accuracy"] == 95.0
    assert set(ranking["accuracies"]) == {"syn_hard", "syn", "syn_aug", "random", "random_aug"}
    assert {"lrs", "ars", "hlr", "ior"} <= set(ranking["scores"])
    bad = ["evaluate", str(out / "distilled.npz"), "--dataset", "digits", "--dd-ranking",
           "--full-accuracy", "150"]  # fmt: skip
    assert main(bad) == 2
    assert "--full-accuracy must be a percentage in [0, 100], got 150.0" in capsys.readouterr().err


def test_load_distilled_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match=r"missing keys \['images', 'labels', 'mean', 'std'\]"):
        load_distilled(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="no such file"):
        load_distilled(tmp_path / "missing.npz")


@pytest.mark.slow
def test_distill_then_evaluate_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--steps", "4", "--eval-models", "1", "--out", str(out), *TINY]) == 0
    for name in ("distilled.npz", "distilled.png", "metrics.json", "curves.png"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "rcig" and metrics["steps_done"] == 4
    assert len(metrics["eval"]["accs"]) == 1
    assert metrics["eval"]["acc_mean"] == pytest.approx(metrics["eval"]["accs"][0])
    # The exported file holds the run's final support set and labels.
    exported = load_distilled(out / "distilled.npz")
    assert exported.images.shape == (10, 8, 8, 1) and exported.labels.shape == (10, 10)
    assert exported.config["steps"] == 4 and exported.config["method"] == "rcig"
    # The pre-round's rates, recorded; replayed with --lr-tuning schedule, the same run.
    start = metrics["learning_rates"]["start"]
    assert start[0] > 1e-5 and start[1] > 5e-5
    replay = ["distill", "--steps", "4", "--eval-models", "0", "--out", str(tmp_path / "replay"),
              "--lr-tuning", "schedule", "--inner-lr", repr(start[0]),
              "--hessian-lr", repr(start[1]), *TINY]  # fmt: skip
    assert main(replay) == 0
    again = load_distilled(tmp_path / "replay" / "distilled.npz")
    np.testing.assert_array_equal(again.images, exported.images)
    assert again.config["lr_tuning"] == "schedule" and again.config["inner_lr"] == start[0]
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(out / "distilled.npz"),
                "--dataset",
                "digits",
                "--models",
                "2",
                "--steps",
                "20",
                "--width",
                "8",
                "--json",
            ]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert set(result) == {"acc_mean", "acc_std", "accs"} and len(result["accs"]) == 2
    assert result["acc_mean"] == pytest.approx(np.mean(result["accs"]))
    # --both: without and with augmentation, reported together; the first is the plain run.
    argv = ["evaluate", str(out / "distilled.npz"), "--dataset", "digits", "--models", "2",
            "--steps", "20", "--width", "8", "--json"]  # fmt: skip
    assert main([*argv, "--both"]) == 0
    printed = capsys.readouterr().out
    assert "(augment=False)" in printed and "(augment=True, released)" in printed
    both = json.loads(printed.strip().splitlines()[-1])
    assert set(both) == {"no_augment", "augment"}
    assert both["no_augment"] == result  # the same models and seed as the plain evaluation
    # ... and the second is the augmented evaluation itself. (Not "its accuracies differ from the
    # plain ones": 20 steps of width-8 models on a 4-step set are near chance, where both
    # evaluations can give the same numbers; 2026-12-06 they did, 12.5 and 10.0 each.)
    assert main([*argv, "--augment"]) == 0
    augmented = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert both["augment"] == augmented


@pytest.mark.slow
def test_evaluate_a_set_made_by_another_tool(tmp_path, capsys):
    """Integer labels, no config, no flip key: evaluable, and exactly as if the labels were
    one-hot (the same models, the same accuracies); evaluation is deterministic."""
    ds = load_dataset("digits")
    idx = np.concatenate([np.flatnonzero(ds.y_train == c)[:2] for c in range(10)])
    raw01 = ds.preprocessor.inverse(ds.x_train[idx])
    common = dict(images=raw01, mean=np.zeros(1, np.float32), std=np.ones(1, np.float32))
    np.savez(tmp_path / "int.npz", labels=ds.y_train[idx], **common)
    np.savez(
        tmp_path / "onehot.npz", labels=np.eye(10, dtype=np.float32)[ds.y_train[idx]], **common
    )

    def evaluate(name):
        argv = ["evaluate", str(tmp_path / name), "--dataset", "digits", "--models", "2"]
        assert main([*argv, "--steps", "30", "--width", "8", "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    integer = evaluate("int.npz")
    assert len(integer["accs"]) == 2
    assert integer["acc_mean"] == pytest.approx(np.mean(integer["accs"]))
    assert evaluate("onehot.npz") == integer
    assert evaluate("int.npz") == integer


@pytest.mark.slow
def test_random_baseline_and_ablation_table(tmp_path):
    out = tmp_path / "ablate"
    assert (
        main(
            [
                "ablate",
                "--methods",
                "random,frepo",
                "--steps",
                "3",
                "--seeds",
                "0,1",
                "--eval-models",
                "1",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    table = (out / "table.md").read_text()
    assert "| random |" in table and "| frepo |" in table and "±" in table
    summary = json.loads((out / "ablation.json").read_text())
    assert len(summary["random"]["accs"]) == 2  # 2 seeds x 1 model


@pytest.mark.parametrize(
    "argv, message",
    [
        (["distill", "--dataset", "no_such_set"], "unknown dataset 'no_such_set'"),
        (["distill", "--ipc", "1000", "--steps", "1", "--no-progress"], "ipc=1000"),
        (["ablate", "--methods", "rcig,magic"], "unknown ['magic']"),
        (
            ["distill", "--norm", "batch", "--n-subset", "4", "--steps", "1", "--no-progress"],
            "n_subset=4 < |S|=10",
        ),
        (
            [
                "distill",
                "--hessian-lr",
                "2",
                "--linear-solver",
                "cg",
                "--steps",
                "1",
                "--no-progress",
            ],
            "--hessian-lr 2.0 sets the default AdamQuadratic's learning rate; --linear-solver cg",
        ),  # fmt: skip
    ],
)
def test_bad_input_gives_clear_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_argparse_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--ipc", "0"])
    assert exc.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["distill", "--inner-lr=-1e-3"])
    assert "--inner-lr: expected a positive number, got -0.001" in capsys.readouterr().err


def _digits():
    ds = load_dataset("digits")
    return ds.x_train, ds.y_train


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    x, y = _digits()
    config = DistillConfig(
        steps=6,
        pool_size=2,
        reset_every=3,
        target_batch=32,
        width=4,
        checkpoint_every=100,
        log_every=1,
        tune_every=2,
    )
    full = distill(
        x,
        y,
        10,
        rcig(n_inner=3, n_hessian=3),
        1,
        config,
        key=jax.random.key(3),
        progress=False,
        snapshot_steps=(0, 3, 6),
    )
    # Snapshots: the start, the middle and the end, in wall-clock order.
    assert [s.step for s in full.snapshots] == [0, 3, 6]
    assert all(
        a.seconds <= b.seconds for a, b in zip(full.snapshots[:-1], full.snapshots[1:], strict=True)
    )
    assert np.array_equal(full.snapshots[-1].support.images, np.asarray(full.support.images))
    assert not np.array_equal(full.snapshots[0].support.images, full.snapshots[-1].support.images)
    with pytest.raises(ValueError, match="snapshot_steps must be integers >= 0"):
        distill(x, y, 10, rcig(), 1, config, key=jax.random.key(3), snapshot_steps=(-1,))

    def interrupt_at_3(step, row):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="interrupted at step 3"):
        distill(
            x,
            y,
            10,
            rcig(n_inner=3, n_hessian=3),
            1,
            config,
            key=jax.random.key(3),
            checkpoint_dir=tmp_path,
            fingerprint="f",
            progress=False,
            on_log=interrupt_at_3,
        )
    resumed = distill(
        x,
        y,
        10,
        rcig(n_inner=3, n_hessian=3),
        1,
        config,
        key=jax.random.key(3),
        checkpoint_dir=tmp_path,
        resume=True,
        fingerprint="f",
        progress=False,
    )
    assert resumed.steps == 6
    assert np.array_equal(np.asarray(resumed.support.images), np.asarray(full.support.images))
    assert np.array_equal(np.asarray(resumed.support.labels), np.asarray(full.support.labels))
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    # A checkpoint made with other settings is refused.
    with pytest.raises(ValueError, match="made with other settings"):
        distill(
            x,
            y,
            10,
            rcig(n_inner=3, n_hessian=3),
            1,
            config,
            key=jax.random.key(3),
            checkpoint_dir=tmp_path,
            resume=True,
            fingerprint="other",
            progress=False,
        )


@pytest.mark.slow  # four tiny runs, each compiling its own step (~1-2 min on 2 cores)
def test_sweep_resumes_and_runs_only_the_missing_pairs(tmp_path, capsys):
    import json

    out = tmp_path / "sweep"
    base = ["sweep", "--dataset", "digits", "--steps", "2", "--width", "4", "--pool-size", "2",
            "--target-batch", "32", "--eval-models", "1", "--eval-steps", "5", "--no-progress",
            "--lr-tuning", "none", "--out", str(out)]  # fmt: skip
    assert main([*base, "--inner-steps", "0,1", "--hessian-steps", "0"]) == 0
    first = json.loads((out / "sweep.json").read_text())
    assert [(c["n_inner"], c["n_hessian"]) for c in first["cells"]] == [(0, 0), (1, 0)]
    capsys.readouterr()
    assert main([*base, "--inner-steps", "0,1", "--hessian-steps", "0,1"]) == 0
    printed = capsys.readouterr().out
    assert "n_inner 0, n_hessian 0: done earlier" in printed
    assert "n_inner 1, n_hessian 0: done earlier" in printed
    second = json.loads((out / "sweep.json").read_text())
    assert [(c["n_inner"], c["n_hessian"]) for c in second["cells"]] == [
        (0, 0), (0, 1), (1, 0), (1, 1)
    ]  # fmt: skip
    assert second["cells"][0] == first["cells"][0]  # not run again
    for cell in second["cells"]:
        assert cell["seconds_per_iteration"] > 0 and 0 <= cell["acc_mean"] <= 100
    assert (out / "sweep.png").stat().st_size > 0


def test_sweep_refuses_bad_step_lists(capsys):
    assert main(["sweep", "--inner-steps", "0,-1"]) == 2
    assert "--inner-steps must be comma-separated integers >= 0" in capsys.readouterr().err
    assert main(["sweep", "--n-inner", "3"]) == 2
    assert "use --inner-steps and --hessian-steps" in capsys.readouterr().err


@pytest.mark.slow
def test_image_size_resizes_the_dataset_and_evaluation_follows_the_set(tmp_path, capsys):
    """`--image-size 12` distils 12-px digits (recorded in the export); `rcig evaluate` resizes
    the test images to the set's own size without being told."""
    out = tmp_path / "run"
    argv = ["distill", "--steps", "2", "--eval-models", "0", "--image-size", "12", "--out"]
    assert main([*argv, str(out), *TINY]) == 0
    exported = load_distilled(out / "distilled.npz")
    assert exported.images.shape == (10, 12, 12, 1) and exported.config["image_size"] == 12
    capsys.readouterr()
    argv = ["evaluate", str(out / "distilled.npz"), "--dataset", "digits", "--models", "1"]
    assert main([*argv, "--steps", "5", "--width", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["accs"]) == 1 and 0 <= result["acc_mean"] <= 100
    # A size the set was not distilled at is reported with both shapes.
    assert main([*argv, "--image-size", "16"]) == 2
    assert "(12, 12, 1)" in capsys.readouterr().err
