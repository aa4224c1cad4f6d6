"""``rcig import-official``: the authors' flax msgpack checkpoints into the export format.

The checkpoints here are written by the test in the official layout (flax's msgpack encoding,
written out below from its documented format, without flax): a map with ``step``, ``params``,
``ema_average`` (each ``x_proto``, ``y_proto``, ``log_temp``) and the optimiser's state.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import pytest

from distillation.cli._commands import main
from distillation.data._datasets import Preprocessor, load_dataset
from distillation.data._export import load_distilled
from distillation.data._official import import_official, read_flax_msgpack


def _flax_array(a: np.ndarray) -> msgpack.ExtType:
    """flax.serialization's encoding of an array: extension 1, ``(shape, dtype, bytes)``."""
    a = np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    return msgpack.ExtType(
        1, msgpack.packb((a.shape, a.dtype.name, a.tobytes()), use_bin_type=True)
    )


def _support(rng, n, shape, k, shift):
    return {
        "log_temp": _flax_array(np.asarray(shift, np.float32)),
        "x_proto": _flax_array(rng.normal(size=(n, *shape)).astype(np.float32) + shift),
        "y_proto": _flax_array(rng.normal(size=(n, k)).astype(np.float32)),
    }


def _official_checkpoint(path: Path, n=10, shape=(8, 8, 1), k=10, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    state = {
        "step": _flax_array(np.asarray(1500, np.int32)),
        "params": _support(rng, n, shape, k, 0.0),
        "ema_average": _support(rng, n, shape, k, 0.5),
        "ema_hidden": _support(rng, n, shape, k, 0.25),
        "opt_state": {"0": {"count": _flax_array(np.asarray(3, np.int32))}, "1": {}},
        "train_it": _flax_array(np.asarray(7, np.int32)),
    }
    path.write_bytes(msgpack.packb(state, use_bin_type=True))
    return read_flax_msgpack(path)


def test_reader_round_trips_the_flax_layout(tmp_path):
    state = _official_checkpoint(tmp_path / "checkpoint_1500")
    assert int(state["step"]) == 1500 and state["step"].dtype == np.int32
    ema = state["ema_average"]
    assert ema["x_proto"].shape == (10, 8, 8, 1) and ema["x_proto"].dtype == np.float32
    assert float(ema["log_temp"]) == 0.5
    assert state["opt_state"]["1"] == {}


def test_import_then_evaluate_on_digits(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint_1500"
    state = _official_checkpoint(ckpt)
    out = tmp_path / "official.npz"
    assert main(["import-official", str(ckpt), "--dataset", "digits", "--out", str(out)]) == 0
    got = load_distilled(out)
    ema = state["ema_average"]
    assert np.array_equal(got.images, ema["x_proto"])  # the EMA, as the official eval.py
    assert np.array_equal(got.labels, ema["y_proto"])
    assert got.log_temperature == pytest.approx(-0.5)  # their e^s scaling is our 1/τ
    assert got.flip is False  # grayscale: the official MNIST config trains without mirrors
    assert got.config["step"] == 1500 and got.config["entry"] == "ema_average"
    # The attached preprocessing is the dataset's own (the images' model-input space).
    pre = load_dataset("digits").preprocessor
    assert np.array_equal(got.preprocessor.mean, pre.mean)
    assert np.array_equal(got.preprocessor.std, pre.std)

    raw = tmp_path / "raw.npz"
    argv = ["import-official", str(ckpt), "--dataset", "digits", "--out", str(raw), "--raw"]
    assert main([*argv, "--flip", "yes"]) == 0
    got_raw = load_distilled(raw)
    assert np.array_equal(got_raw.images, state["params"]["x_proto"]) and got_raw.flip is True

    # And the imported file is evaluated like any other.
    capsys.readouterr()
    argv = ["evaluate", str(out), "--dataset", "digits", "--models", "1", "--steps", "3"]
    assert main([*argv, "--width", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["accs"]) == 1 and result["acc_mean"] == result["accs"][0]


def test_rgb_sets_train_on_mirrors_by_default(tmp_path):
    ckpt = tmp_path / "checkpoint_final"
    _official_checkpoint(ckpt, n=4, shape=(4, 4, 3), k=2)
    pre = Preprocessor(np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))
    out = import_official(ckpt, tmp_path / "a.npz", pre, image_shape=(4, 4, 3), num_classes=2)
    assert load_distilled(out).flip is True


@pytest.mark.parametrize(
    "content, argv_extra, message",
    [
        (b"just some text\n", (), "not a flax msgpack checkpoint"),
        (msgpack.packb({"params": {}}), (), "no 'ema_average' entry"),
        (None, ("--dataset", "cifar10-shape"), "images of shape (8, 8, 1)"),
        (None, ("--out-name", "a.txt"), "expected a path ending in .npz"),
    ],
)
def test_bad_checkpoints_and_arguments_give_one_line(
    tmp_path, capsys, content, argv_extra, message
):
    ckpt = tmp_path / "checkpoint"
    if content is None:
        _official_checkpoint(ckpt)
    else:
        ckpt.write_bytes(content)
    dataset, out = "digits", tmp_path / "x.npz"
    if argv_extra == ("--dataset", "cifar10-shape"):
        rng = np.random.default_rng(0)
        dataset = str(tmp_path / "rgb.npz")
        np.savez(
            dataset,
            x_train=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
            y_train=np.arange(20) % 10,
            x_test=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
            y_test=np.arange(10) % 10,
        )
    if argv_extra == ("--out-name", "a.txt"):
        out = tmp_path / "a.txt"
    code = main(["import-official", str(ckpt), "--dataset", dataset, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("rcig: error: ") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
