"""Training images that stay uint8 on disk until a batch is drawn (ImageNet-1K at 64 px is
15.7 GB as uint8 and 63 GB as float32).

:func:`stream_dataset` decodes a dataset's training split once, a chunk at a time, into a
memory-mapped uint8 ``.npy`` file in a cache folder, fits the preprocessing (per-channel
statistics, dense or block ZCA) from that file a chunk at a time, and returns an
:class:`~distillation.ImageDataset` whose ``x_train`` is a :class:`HostImages`: indexing it with
an array of indices reads those rows from the file and returns them as model input, so host
memory holds one chunk or one batch at a time, whatever the dataset's size. The test split is
held in memory (model input, float32). :func:`~distillation.distill` draws its target batches
from a :class:`HostImages` on the host.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from distillation.data._datasets import (
    DEFAULT_IMAGE_SIZE,
    HostImages,
    ImageDataset,
    Preprocessor,
    RawSplits,
    _check_raw,
    _from_dataset_dict,
    _whitening,
    block_zca_whitening,
    default_zca_block,
    load_raw,
)


def stream_dataset(
    name_or_path: str,
    cache_dir: str | Path,
    *,
    image_size: int | None = None,
    zca: bool | None = None,
    zca_strength: float = 0.1,
    zca_block: int | None = None,
    chunk: int = 1000,
) -> ImageDataset:
    """Like :func:`~distillation.load_dataset`, with the training images streamed: decoded
    ``chunk`` at a time into ``cache_dir/<name>-<hash>.npy`` (uint8, reused by later calls with
    the same source and size), and ``x_train`` a :class:`HostImages` over that memory-mapped
    file. Sources read through Hugging Face ``datasets`` (hub ids and names, parquet folders,
    ImageFolder trees) are decoded chunk by chunk from ``datasets``' own memory-mapped Arrow
    cache; ``.npz``, IDX and ``digits`` are read whole first (they are small).

    Resized images are stored rounded to 8 bits. The preprocessing is fitted from the file a
    chunk at a time: per-channel mean and standard deviation, then the covariance for ZCA
    (dense up to 64 px, blocks above, as :func:`~distillation.load_dataset`).
    """
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE.get(name_or_path)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(json.dumps([name_or_path, image_size]).encode()).hexdigest()[:12]
    stem = f"{Path(name_or_path).name or 'dataset'}-{tag}"
    pixels_path, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    if not (pixels_path.exists() and meta_path.exists()):
        _write_cache(name_or_path, image_size, chunk, pixels_path, meta_path)
    meta = json.loads(meta_path.read_text())
    pixels = np.load(pixels_path, mmap_mode="r")
    y_train = np.load(cache_dir / f"{stem}-labels.npy")
    test = np.load(cache_dir / f"{stem}-test.npz")
    use_zca = (pixels.shape[-1] == 3) if zca is None else zca
    if zca_block is not None and not use_zca:
        raise ValueError(
            f"zca_block={zca_block} is given but {name_or_path!r} is not ZCA-whitened."
        )
    pre = _fit_streaming(pixels, use_zca, zca_strength, zca_block, chunk)
    return ImageDataset(
        name=name_or_path,
        x_train=HostImages(pixels, pre),
        y_train=y_train,
        x_test=pre(test["x"] / np.float32(255.0)),
        y_test=test["y"],
        class_names=tuple(meta["class_names"]),
        preprocessor=pre,
    )


def _write_cache(name_or_path, image_size, chunk, pixels_path: Path, meta_path: Path) -> None:
    dsd = _dataset_dict(name_or_path)
    if dsd is None:  # a small in-memory source: decoded whole, then stored the same way
        raw = load_raw(name_or_path, image_size=image_size)
        train01, test01 = raw.x_train, raw.x_test
        y_train, y_test, names = raw.y_train, raw.y_test, raw.class_names
        out = np.lib.format.open_memmap(pixels_path, "w+", np.uint8, train01.shape)
        out[:] = _to_uint8(train01)
    else:
        from distillation.data._datasets import _columns

        train = dsd["train"]
        image_col, label_col = _columns(train, name_or_path)
        where = f"{name_or_path}:train"
        first = _decode_chunk(train, image_col, 0, 1, where, image_size)
        out = np.lib.format.open_memmap(pixels_path, "w+", np.uint8, (len(train), *first.shape[1:]))
        for start in range(0, len(train), chunk):
            part = _decode_chunk(train, image_col, start, chunk, where, image_size)
            if part.shape[1:] != first.shape[1:]:
                raise ValueError(
                    f"{where}: images from {start} on are {part.shape[1:]}, the first "
                    f"{first.shape[1:]}; give image_size to resize them all."
                )
            out[start : start + len(part)] = part
        small = _from_dataset_dict(_only_test(dsd), name_or_path, image_size)
        test01, y_test = small.x_test, small.y_test
        y_train = np.asarray(train[label_col], np.int64)
        names = small.class_names
        train01 = None
    out.flush()
    # The boundary checks of load_raw: the test split whole, the training labels by range.
    _check_raw(RawSplits(test01, y_test, test01, y_test, names), name_or_path)
    y_train = np.asarray(y_train)
    bad = (y_train < 0) | (y_train >= len(names))
    if bad.any():
        raise ValueError(
            f"{name_or_path}: y_train holds label {int(y_train[bad][0])}, outside the "
            f"{len(names)} classes (0 to {len(names) - 1})."
        )
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"{name_or_path}: y_train holds a single class.")
    del train01
    stem = pixels_path.with_suffix("")
    np.save(f"{stem}-labels.npy", np.asarray(y_train, np.int64))
    np.savez(f"{stem}-test.npz", x=_to_uint8(test01), y=np.asarray(y_test, np.int64))
    meta_path.write_text(json.dumps({"class_names": list(names), "source": name_or_path}))


def _dataset_dict(name_or_path: str):
    """The ``datasets.DatasetDict`` of a source read through ``datasets``, else ``None``."""
    from distillation.data import _datasets as d

    if name_or_path == "digits":
        return None
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_file() or any("idx3-ubyte" in p.name for p in path.iterdir()):
            return None
        import datasets

        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            return datasets.load_dataset("parquet", data_files=d.parquet_data_files(parquet))
        test = next((n for n in d.TEST_SPLITS if (path / n).is_dir()), "test")
        files = {"train": [str(path / "train" / "**")], "test": [str(path / test / "**")]}
        return datasets.load_dataset("imagefolder", data_files=files)
    import datasets

    hub_id = d.KNOWN_HUB_IDS.get(name_or_path, name_or_path)
    return datasets.load_dataset(hub_id, d.HUB_CONFIGS.get(name_or_path))


def _only_test(dsd):
    """The dataset dict with a one-example training split (the test split is what is read)."""
    import datasets

    from distillation.data._datasets import test_split_name

    name = test_split_name(list(dsd.keys()))
    if name is None:
        raise ValueError(f"missing split 'test' (found {list(dsd.keys())}).")
    return datasets.DatasetDict({"train": dsd["train"].select(range(1)), "test": dsd[name]})


def _decode_chunk(ds, image_col, start, size, where, image_size) -> np.ndarray:
    import datasets

    from distillation.data._datasets import _images

    part = ds.select(range(start, min(start + size, len(ds))))
    if isinstance(part.features[image_col], datasets.Image):
        part = part.cast_column(image_col, datasets.Image(decode=False))
    return _to_uint8(_images(part[image_col], where, image_size))


def _to_uint8(images01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(images01) * 255.0), 0, 255).astype(np.uint8)


def _fit_streaming(pixels, use_zca, strength, zca_block, chunk) -> Preprocessor:
    n, h, w, c = pixels.shape
    total, total_sq = np.zeros(c), np.zeros(c)
    for start in range(0, n, chunk):
        part = pixels[start : start + chunk] / np.float32(255.0)
        total += part.sum((0, 1, 2), dtype=np.float64)
        total_sq += (part.astype(np.float64) ** 2).sum((0, 1, 2))
    count = n * h * w
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    mean, std = mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)
    pre = Preprocessor(mean, std)
    if not use_zca:
        return pre
    images = HostImages(pixels, pre)
    block = default_zca_block(h, w) if zca_block is None else zca_block
    if block is not None:
        standardised = _Standardised(images, chunk)
        zmean, wz = block_zca_whitening(standardised, block, strength, chunk=chunk)  # type: ignore[arg-type]
        return Preprocessor(mean, std, zmean, wz, block)
    d = h * w * c
    ztotal = np.zeros(d)
    for part in images.chunks01(chunk):
        ztotal += pre(part).reshape(len(part), d).sum(0, dtype=np.float64)
    zmean = ztotal / n
    cov = np.zeros((d, d))
    for part in images.chunks01(chunk):
        centred = pre(part).reshape(len(part), d).astype(np.float64) - zmean
        cov += centred.T @ centred
    return Preprocessor(mean, std, zmean.astype(np.float32), _whitening(cov / n, strength))


class _Standardised:
    """The standardised images, sliced a chunk at a time (what block_zca_whitening reads)."""

    def __init__(self, images: HostImages, chunk: int):
        self.images, self.chunk = images, chunk
        self.shape = images.shape

    def __getitem__(self, window: slice) -> np.ndarray:
        return self.images.preprocessor(self.images.pixels[window] / np.float32(255.0))
