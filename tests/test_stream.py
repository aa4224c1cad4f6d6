"""Streaming training images: uint8 on disk until drawn, bounded host memory, the same model
input as the in-memory loader, and distillation from them."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest


def _parquet(folder: Path, n_train: int, n_test: int = 50, size: int = 16, seed: int = 0):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    folder.mkdir()
    for split, n in (("train", n_train), ("valid", n_test)):
        pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        ds = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(p) for p in pixels], "label": [i % 3 for i in range(n)]},
            features=features,
        )
        ds.to_parquet(str(folder / f"{split}-00000.parquet"))
    return folder


def test_streamed_images_equal_the_in_memory_loader(tmp_path):
    """Same images, labels, test split and preprocessing (statistics accumulated in float64 a
    chunk at a time: equal to float32 rounding)."""
    from distillation.data._datasets import load_dataset
    from distillation.data._stream import HostImages, stream_dataset

    source = str(_parquet(tmp_path / "pq", 300))
    whole = load_dataset(source)
    streamed = stream_dataset(source, tmp_path / "cache", chunk=64)
    assert isinstance(streamed.x_train, HostImages)
    assert (
        streamed.x_train.shape == whole.x_train.shape and streamed.x_train.pixels.dtype == np.uint8
    )
    np.testing.assert_array_equal(streamed.y_train, whole.y_train)
    np.testing.assert_array_equal(streamed.y_test, whole.y_test)
    index = np.array([299, 3, 150, 3])
    scale = float(np.abs(whole.x_train).max())
    np.testing.assert_allclose(streamed.x_train[index], whole.x_train[index], atol=2e-4 * scale)
    np.testing.assert_allclose(streamed.x_test, whole.x_test, atol=2e-4 * scale)
    # A second call reuses the cache (same file, no decoding).
    again = stream_dataset(source, tmp_path / "cache", chunk=64)
    assert again.x_train.pixels.filename == streamed.x_train.pixels.filename


def _peak_bytes(source, cache, n_draws, batch, zca):
    from distillation.data._stream import _dataset_dict, stream_dataset

    _dataset_dict(source)  # datasets' own parquet -> Arrow conversion, cached: not ours to bound
    tracemalloc.start()
    data = stream_dataset(source, cache, chunk=100, zca=zca)
    rng = np.random.default_rng(0)
    for _ in range(n_draws):
        data.x_train[rng.integers(0, len(data.x_train), batch)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, data


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_the_dataset(tmp_path):
    """Loading 6000 images (18 MB as float32 model input at 16 px) and drawing batches of 256
    from them peaks under a 4 MB budget of Python-visible allocations (numpy reports its
    allocations to tracemalloc; the pixels live in a memory map), and 6000 images cost what
    1500 do (measured after ``datasets`` has built its memory-mapped Arrow cache of the parquet
    files, which it writes in batches of its own). With ZCA the fixed cost of the D×D whitening
    (D = 768: a few 4.7 MB float64 matrices) is added, and still nothing grows with the
    dataset."""
    small = str(_parquet(tmp_path / "small", 1500, seed=1))
    large = str(_parquet(tmp_path / "large", 6000, seed=2))
    budget = 4 * 2**20
    for zca in (False, True):
        peak_small, _ = _peak_bytes(small, tmp_path / f"c1{zca}", 5, 256, zca)
        peak_large, data = _peak_bytes(large, tmp_path / f"c2{zca}", 5, 256, zca)
        float32_bytes = len(data.x_train) * 16 * 16 * 3 * 4
        print(f"zca={zca}: peaks {peak_small} (1500 images), {peak_large} (6000); "
              f"the float32 training set: {float32_bytes}")  # fmt: skip
        assert float32_bytes > 4 * budget
        assert peak_large < peak_small + 2**20, (peak_small, peak_large)
        if not zca:
            assert peak_large < budget, (peak_large, budget)


def test_distill_draws_target_batches_from_host_images(tmp_path):
    """Two RCIG steps from streamed images: the batches are read on the host, the run finishes
    with a finite support set of the right shape."""
    import jax

    from distillation._algorithms import rcig
    from distillation._distill import DistillConfig, distill
    from distillation.data._stream import stream_dataset

    data = stream_dataset(str(_parquet(tmp_path / "pq", 120, size=8)), tmp_path / "cache")
    config = DistillConfig(
        steps=2, pool_size=2, target_batch=32, width=4, lr_tuning="none", pool_max_steps=1
    )
    result = distill(
        data.x_train, data.y_train, 3, rcig(n_inner=2, n_hessian=2), 1, config,
        key=jax.random.key(0), progress=False,
    )  # fmt: skip
    assert result.steps == 2 and result.support.images.shape == (3, 8, 8, 3)
    assert np.all(np.isfinite(np.asarray(result.support.images)))
