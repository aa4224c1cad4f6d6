"""Loaders for every kind of source (on small fixtures made here), ZCA, and bad input."""

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distillation._distill import init_support
from distillation.data._datasets import (
    Preprocessor,
    fit_preprocessor,
    load_dataset,
    load_raw,
    zca_whitening,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _images(n, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, size, size, channels) if channels > 1 else (n, size, size)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _write_idx(path: Path, array: np.ndarray, gz: bool = True):
    header = (
        b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    )
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _make_idx(folder: Path, n_train=30, n_test=10):
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte", _images(n_train, 6, 1))
    _write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 3, n_train).astype(np.uint8))
    _write_idx(folder / "t10k-images-idx3-ubyte", _images(n_test, 6, 1), gz=False)
    _write_idx(
        folder / "t10k-labels-idx1-ubyte", rng.integers(0, 3, n_test).astype(np.uint8), gz=False
    )
    return folder


def _make_imagefolder(root: Path, sizes=None, classes=("cat", "dog", "eel"), test="test"):
    for split, n in (("train", 4), (test, 2)):
        for c_i, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                size = 8 if sizes is None else sizes[(c_i + i) % len(sizes)]
                Image.fromarray(_images(1, size, 3, seed=c_i * 10 + i)[0]).save(d / f"{i}.png")
    return root


def test_idx_folder(tmp_path):
    raw = load_raw(str(_make_idx(tmp_path / "idx")))
    assert raw.x_train.shape == (30, 6, 6, 1) and raw.x_test.shape == (10, 6, 6, 1)
    assert raw.x_train.dtype == np.float32 and 0.0 <= raw.x_train.min() and raw.x_train.max() <= 1.0
    assert raw.y_train.dtype == np.int64


def test_imagefolder_through_datasets(tmp_path):
    raw = load_raw(str(_make_imagefolder(tmp_path / "folder")))
    assert raw.x_train.shape == (12, 8, 8, 3) and raw.x_test.shape == (6, 8, 8, 3)
    assert raw.class_names == ("cat", "dog", "eel")
    assert sorted(np.bincount(raw.y_train)) == [4, 4, 4]


def test_parquet_in_hub_schema(tmp_path):
    import datasets

    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    folder = tmp_path / "pq"
    folder.mkdir()
    for split, n in (("train", 6), ("test", 4)):
        imgs = [Image.fromarray(a) for a in _images(n, 8, 3)]
        ds = datasets.Dataset.from_dict(
            {"img": imgs, "label": [i % 2 for i in range(n)]}, features=features
        )
        ds.to_parquet(str(folder / f"{split}-00000.parquet"))
    raw = load_raw(str(folder))
    assert raw.x_train.shape == (6, 8, 8, 3) and raw.class_names == ("a", "b")
    assert list(raw.y_test) == [0, 1, 0, 1]


def test_parquet_without_metadata_decodes_image_structs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "plain"
    folder.mkdir()
    for split in ("train", "test"):
        blobs = []
        for a in _images(3, 5, 1):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            blobs.append({"bytes": buf.getvalue(), "path": None})
        table = pa.table({"image": blobs, "label": [0, 1, 2]})
        pq.write_table(table, folder / f"{split}.parquet")
    raw = load_raw(str(folder))
    assert raw.x_train.shape == (3, 5, 5, 1)


def test_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x_train=_images(20, 4, 1),
        y_train=np.arange(20) % 4,
        x_test=_images(8, 4, 1),
        y_test=np.arange(8) % 4,
    )
    ds = load_dataset(str(path))
    assert ds.x_train.shape == (20, 4, 4, 1) and ds.num_classes == 4
    assert ds.preprocessor.zca_whitening is None  # grayscale: standardisation only
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4


def test_digits_default_and_known_names():
    ds = load_dataset("digits")
    assert ds.image_shape == (8, 8, 1) and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_test) == 1797


@pytest.mark.skipif(not (SHARED / "mnist").exists(), reason="shared data not present")
def test_shared_mnist_idx_matches_its_readme():
    raw = load_raw(str(SHARED / "mnist"))
    assert raw.x_train.shape == (60000, 28, 28, 1) and raw.x_test.shape == (10000, 28, 28, 1)
    assert list(np.bincount(raw.y_train)) == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert abs(float(raw.x_train.mean()) * 255 - 33.318) < 0.01


def test_zca_whitens_and_inverse_restores(tmp_path):
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(48, 48))
    x = (rng.normal(size=(2000, 48)) @ mixing).reshape(2000, 4, 4, 3)
    x01 = (x - x.min()) / (x.max() - x.min())
    # Weak regularisation: covariance of the whitened data is close to the identity.
    pre = fit_preprocessor(x01.astype(np.float32), zca=True, zca_strength=1e-4)
    flat = pre(x01).reshape(2000, -1).astype(np.float64)
    cov = np.cov(flat, rowvar=False)
    assert np.abs(cov - np.eye(48)).max() < 0.05
    # The paper's strength 0.1: not the identity, but the inverse restores the images.
    pre = fit_preprocessor(x01.astype(np.float32), zca=True, zca_strength=0.1)
    assert np.abs(pre.inverse(pre(x01)) - x01).max() < 1e-4
    mean, w = zca_whitening(flat, 0.1)
    assert np.allclose(w, w.T, atol=1e-5)


def test_channel_statistics_are_exact_on_a_large_rgb_split():
    """Per-channel mean and std of 8.4 million float32 values per channel (CIFAR-10 has 51
    million): float64 accumulation, to float32 rounding. NumPy's float32 sum over the strided
    axes of an RGB array is naive; it gave CIFAR-10 a mean of 0.32768 (2**24 / 51.2e6) in every
    channel, and here misses by 5e-5 (mean) and 4e-3 (std)."""
    x = np.random.default_rng(0).random((2048, 64, 64, 3), dtype=np.float32)
    x[..., 1] *= 0.5
    pre = fit_preprocessor(x, zca=False)
    want_mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
    want_std = x.std(axis=(0, 1, 2), dtype=np.float64)
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(pre.mean, want_mean, rtol=2 * eps)
    np.testing.assert_allclose(pre.std, want_std, rtol=2 * eps)
    assert abs(float(want_mean[1]) - 0.25) < 1e-3  # the statistics are the data's


def test_rgb_gets_zca_by_default(tmp_path):
    ds = load_dataset(str(_make_imagefolder(tmp_path / "f")))
    assert ds.preprocessor.zca_whitening is not None
    assert ds.preprocessor.zca_whitening.shape == (192, 192)
    restored = ds.preprocessor.inverse(ds.x_test)
    raw = load_raw(str(tmp_path / "f"))
    assert np.abs(restored - raw.x_test).max() < 1e-3


# ----------------------------------------------------------------------------- bad input


def test_unknown_dataset_names_the_value_and_choices():
    with pytest.raises(ValueError, match="unknown dataset 'not_a_dataset'.*digits"):
        load_dataset("not_a_dataset")


def test_missing_split(tmp_path):
    root = tmp_path / "only_train"
    _make_imagefolder(root)
    import shutil

    shutil.rmtree(root / "test")
    with pytest.raises(ValueError, match="missing split 'test'"):
        load_dataset(str(root))
    path = tmp_path / "d.npz"
    np.savez(path, x_train=_images(4, 4, 1), y_train=np.arange(4))
    with pytest.raises(ValueError, match=r"missing split arrays \['x_test', 'y_test'\]"):
        load_dataset(str(path))


def test_mixed_image_sizes(tmp_path):
    with pytest.raises(ValueError, match="mixed sizes.*--image-size"):
        load_dataset(str(_make_imagefolder(tmp_path / "mixed", sizes=(8, 9))))


def test_mixed_sizes_resized_to_image_size(tmp_path):
    """With `image_size` every image is centre-cropped to a square and area-resized: a 12x8 image
    keeps its middle 8x8, which becomes 4x4 block means."""
    root = _make_imagefolder(tmp_path / "mixed", sizes=(8, 9, 12))
    raw = load_raw(str(root), image_size=4)
    assert raw.x_train.shape == (12, 4, 4, 3) and raw.x_test.shape == (6, 4, 4, 3)
    assert raw.x_train.min() >= 0 and raw.x_train.max() <= 1
    from distillation.data._datasets import resize_images

    image = np.random.default_rng(0).random((12, 8, 3)).astype(np.float32)  # H=12, W=8
    middle = image[2:10]
    expected = middle.reshape(4, 2, 4, 2, 3).mean((1, 3))
    np.testing.assert_allclose(resize_images(image[None], 4)[0], expected, rtol=1e-5, atol=1e-6)
    # Array sources are resized too: the 8x8 digits at 16 px, constant images stay constant.
    assert load_raw("digits", image_size=16).x_train.shape[1:] == (16, 16, 1)
    np.testing.assert_allclose(resize_images(np.full((1, 5, 7, 1), 0.25, np.float32), 3), 0.25)
    with pytest.raises(ValueError, match="image_size must be None or an integer >= 2, got 1"):
        load_raw("digits", image_size=1)


@pytest.mark.parametrize("name", ["val", "valid", "validation"])
def test_validation_split_serves_as_the_test_split(tmp_path, name):
    raw = load_raw(str(_make_imagefolder(tmp_path / "f", test=name)))
    assert raw.x_test.shape == (6, 8, 8, 3) and raw.class_names == ("cat", "dog", "eel")


def test_hub_split_names_are_mapped():
    import datasets

    from distillation.data._datasets import _from_dataset_dict, test_split_name

    assert test_split_name(["train", "valid"]) == "valid"
    assert test_split_name(["train", "validation", "test"]) == "test"
    assert test_split_name(["train"]) is None
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    )

    def split(n, size):
        imgs = [Image.fromarray(a) for a in _images(n, size, 3)]
        return datasets.Dataset.from_dict(
            {"image": imgs, "label": [i % 2 for i in range(n)]}, features=features
        )

    dsd = datasets.DatasetDict({"train": split(4, 8), "valid": split(2, 8)})
    raw = _from_dataset_dict(dsd, "zh-plus/tiny-imagenet")
    assert raw.x_test.shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match=r"missing split 'test' \(found \['train'\]"):
        _from_dataset_dict(datasets.DatasetDict({"train": split(4, 8)}), "x")


def test_the_papers_datasets_by_name(monkeypatch):
    """Known names map to hub ids (and configurations); the mixed-size ones default to 128 px."""
    from distillation.data import _datasets

    calls = []

    def fake_hub(hub_id, image_size, config=None):
        calls.append((hub_id, image_size, config))
        return _datasets._load_digits()

    monkeypatch.setattr(_datasets, "_load_hub", fake_hub)
    for name in ("tiny_imagenet", "imagenette", "cub200", "imagenet-1k"):
        load_raw(name)
    assert calls == [
        ("zh-plus/tiny-imagenet", None, None),
        ("frgfm/imagenette", 128, "320px"),
        ("bentrevett/caltech-ucsd-birds-200-2011", 128, None),
        ("benjamin-paine/imagenet-1k-64x64", None, None),
    ]


def test_non_integer_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x_train=_images(4, 4, 1),
        y_train=np.asarray([0.0, 1.5, 2.0, 1.0]),
        x_test=_images(2, 4, 1),
        y_test=np.asarray([0, 1]),
    )
    with pytest.raises(ValueError, match="integer class indices.*1.5"):
        load_dataset(str(path))
    np.savez(
        path,
        x_train=_images(2, 4, 1),
        y_train=np.asarray(["cat", "dog"]),
        x_test=_images(2, 4, 1),
        y_test=np.asarray([0, 1]),
    )
    with pytest.raises(ValueError, match="integer class indices"):
        load_dataset(str(path))


def test_nan_in_data(tmp_path):
    x = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
    x[2, 1, 1] = np.nan
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.arange(4), x_test=x[:2] * 0, y_test=np.arange(2))
    with pytest.raises(ValueError, match="x_train contains NaN"):
        load_dataset(str(path))


def test_more_images_per_class_than_a_class_has():
    ds = load_dataset("digits")
    import jax

    with pytest.raises(ValueError, match=r"ipc=500 .* class 0 has only \d+ training images"):
        init_support(ds.x_train, ds.y_train, 10, 500, key=jax.random.key(0))


def test_init_support_starts_from_the_given_training_examples():
    ds = load_dataset("digits")
    import jax

    picks = [int(np.flatnonzero(ds.y_train == c)[3]) for c in (4, 0, 9, 1, 2, 3, 5, 6, 7, 8)]
    support = init_support(
        ds.x_train, ds.y_train, 10, 1, key=jax.random.key(0), indices=picks, center_labels=True
    )
    assert np.array_equal(np.asarray(support.images), ds.x_train[picks])
    expected = np.eye(10, dtype=np.float32)[ds.y_train[picks]] - np.float32(0.1)
    assert np.array_equal(np.asarray(support.labels), expected)
    # The key is not used: another key gives the same set; without indices, a draw.
    again = init_support(ds.x_train, ds.y_train, 10, 1, key=jax.random.key(7), indices=picks)
    assert np.array_equal(np.asarray(again.images), ds.x_train[picks])
    drawn = init_support(ds.x_train, ds.y_train, 10, 1, key=jax.random.key(7))
    assert not np.array_equal(np.asarray(drawn.images), ds.x_train[picks])


@pytest.mark.parametrize(
    "indices, message",
    [
        ([0, 1], r"ipc·K = 1·3 = 3 training indices, got 2"),
        ([0, 1, 9], r"init_indices \[9\] are outside the training set's \[0, 6\)"),
        ([-1, 1, 2], r"init_indices \[-1\] are outside"),
        ([0, 3, 2], r"1 image\(s\) of each class, got per-class counts \[2, 0, 1\]"),
        ([0, 0, 1], r"repeat a training example"),
        ([0.5, 1, 2], r"must be a list of integers"),
    ],
)
def test_bad_init_indices_are_refused_with_the_bad_value(indices, message, unchecked_types):
    from distillation._distill import check_init_indices

    labels = np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=message):
        check_init_indices(indices, labels, 3, 1)


def test_distill_refuses_bad_init_indices_before_it_builds_anything():
    import jax

    from distillation import DistillConfig, distill, rcig

    ds = load_dataset("digits")
    picks = [int(np.flatnonzero(ds.y_train == c)[0]) for c in range(10)]
    with pytest.raises(ValueError, match="1 image\\(s\\) of each class"):
        distill(
            ds.x_train,
            ds.y_train,
            10,
            rcig(),
            1,
            DistillConfig(steps=1),
            key=jax.random.key(0),
            progress=False,
            init_indices=picks[:9] + [int(np.flatnonzero(ds.y_train == 0)[1])],
        )


def test_hub_id_without_network_gives_clear_error(monkeypatch):
    # No network here (nor in CI): the reachability check reports it at once. With network the
    # repository does not exist, which gives the same error from datasets.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(ValueError, match="could not load 'someone/missing-set'.*local copy"):
        load_dataset("someone/missing-set")


def test_preprocessor_roundtrip_grayscale():
    pre = Preprocessor(np.asarray([0.2], np.float32), np.asarray([0.5], np.float32))
    x = np.random.default_rng(0).random((3, 4, 4, 1)).astype(np.float32)
    assert np.allclose(pre.inverse(pre(x)), x, atol=1e-6)


@pytest.mark.parametrize("layout", ["checkerboard", "tiles"])
def test_blocks_round_trip_and_checkerboard_blocks_are_subsampled_images(layout):
    from distillation.data._datasets import from_blocks, to_blocks

    x = np.random.default_rng(1).random((3, 8, 12, 2))
    blocks = to_blocks(x, 4, layout)
    assert blocks.shape == (3, 6, 4 * 4 * 2)
    np.testing.assert_array_equal(from_blocks(blocks, x.shape, 4, layout), x)
    if layout == "checkerboard":  # block (i, j) = x[i::2, j::3] (strides 8/4 and 12/4)
        np.testing.assert_array_equal(blocks[:, 1 * 3 + 2], x[:, 1::2, 2::3].reshape(3, -1))
    else:  # tile (1, 2) = x[4:8, 8:12]
        np.testing.assert_array_equal(blocks[:, 1 * 3 + 2], x[:, 4:8, 8:12].reshape(3, -1))


def test_block_zca_whitens_every_block_and_inverts():
    """Unregularised, the pooled covariance of the whitened blocks is the identity; a block the
    size of the image is the dense ZCA; the inverse restores the images (all in float64 sums of
    a few hundred terms, compared at float32 precision)."""
    from distillation.data._datasets import block_zca_whitening, to_blocks

    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(48, 48))
    x = (rng.normal(size=(4000, 48)) @ mixing).reshape(4000, 4, 4, 3).astype(np.float32)
    for layout in ("checkerboard", "tiles"):
        mean, w = block_zca_whitening(x, 2, strength=0.0, layout=layout, chunk=700)
        assert w.shape == (12, 12)
        blocks = to_blocks((x.reshape(4000, -1) - mean).reshape(x.shape), 2, layout)
        white = blocks.reshape(-1, 12).astype(np.float64) @ w
        np.testing.assert_allclose(white.T @ white / len(white), np.eye(12), atol=2e-3)
    mean_b, w_b = block_zca_whitening(x, 4, strength=0.1)
    mean_d, w_d = zca_whitening(x.reshape(4000, -1), 0.1)
    np.testing.assert_allclose(mean_b, mean_d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w_b, w_d, rtol=1e-4, atol=1e-5 * np.abs(w_d).max())
    with pytest.raises(ValueError, match="dividing the image size 4x4, got 3"):
        block_zca_whitening(x, 3)


def test_large_images_get_block_zca_stored_compactly(tmp_path):
    """Over 64 px the default is 64-px checkerboard blocks (here forced small: 16-px images in
    8-px blocks); the export holds the (d, d) block matrix and loads back to the same
    preprocessing; a raw image maps through the file's own documented recipe."""
    from distillation.data._export import load_distilled, save_distilled

    rng = np.random.default_rng(3)
    x01 = rng.random((300, 16, 16, 3)).astype(np.float32)
    pre = fit_preprocessor(x01, zca=True, zca_block=8)
    assert pre.zca_block == 8 and pre.zca_whitening.shape == (192, 192)
    model_input = pre(x01[:5])
    np.testing.assert_allclose(pre.inverse(model_input), x01[:5], atol=1e-4)
    labels = np.eye(5, dtype=np.float32)
    path = save_distilled(
        tmp_path / "s.npz", model_input, labels, pre, flip=False, log_temperature=0.0, config={}
    )
    loaded = load_distilled(path)
    assert loaded.preprocessor.zca_block == 8
    assert loaded.preprocessor.zca_layout == "checkerboard"
    np.testing.assert_array_equal(loaded.preprocessor(x01[:5]), model_input)
    with np.load(path) as f:  # the recipe in the module docstring, with numpy alone
        z = ((x01[:5] - f["mean"]) / f["std"]).reshape(5, -1) - f["zca_mean"]
        b, s = int(f["zca_block"]), 16 // int(f["zca_block"])
        blocks = z.reshape(5, b, s, b, s, 3).transpose(0, 2, 4, 1, 3, 5).reshape(5, s * s, -1)
        back = (blocks @ f["zca_whitening"]).reshape(5, s, s, b, b, 3)
        recipe = back.transpose(0, 3, 1, 4, 2, 5).reshape(5, 16, 16, 3)
    np.testing.assert_allclose(recipe, model_input, rtol=1e-5, atol=1e-5)
    from distillation.data._datasets import default_zca_block

    assert [default_zca_block(s, s) for s in (32, 64, 128)] == [None, None, 64]
    with pytest.raises(ValueError, match="zca_block=2 is given but 'digits' is not ZCA-whitened"):
        load_dataset("digits", zca_block=2)
