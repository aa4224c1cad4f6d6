"""Datasets: loading (through Hugging Face ``datasets`` wherever it can), standardisation, ZCA.

``load_dataset(name_or_path)`` accepts

* a known name: ``digits`` (scikit-learn's bundled 8×8 digits, the offline default), ``mnist``,
  ``fashion_mnist``, ``cifar10``, ``cifar100``, and the paper's larger sets ``tiny_imagenet``
  (64 px, 200 classes), ``cub200``, ``imagenette``, ``imagewoof`` (mixed sizes, resized to 128 px
  unless ``image_size`` says otherwise) and ``imagenet-1k`` (64 px), mapped to Hugging Face hub
  ids (:data:`KNOWN_HUB_IDS`);
* any Hugging Face hub id (``owner/name``), loaded with ``datasets.load_dataset``;
* a local path: a folder of IDX files (MNIST's original format, optionally gzipped), an
  ImageFolder tree ``{train,test}/<class>/<image>`` (``datasets``' imagefolder builder), parquet
  files in the hub's schema (``datasets``' parquet builder; files named with ``train`` and
  ``test``), or an ``.npz`` with ``x_train, y_train, x_test, y_test``.

The test split is the one named ``test``, else ``validation``, ``valid`` or ``val`` (hub copies of
Tiny-ImageNet and ImageNette have no ``test``); ImageFolder trees and parquet files are matched
the same way. With ``image_size`` every image is centre-cropped to a square and resized to
``image_size`` px with area averaging (PIL's box filter), as the released code prepares ImageNette;
without it, images of mixed sizes are an error naming the option.

Images become float32 ``(N, H, W, C)`` in model-input space: per-channel standardisation with the
training split's statistics, then (for RGB, by default) ZCA whitening with strength 0.1 computed
on the training split, as in the paper. Up to 64 px the whitening is one dense ``D × D`` matrix;
larger images are whitened in ``64 × 64`` blocks that share one matrix (the released code's
ImageNette/ImageWoof preprocessing: a checkerboard of blocks, ``x[i::s, j::s]``, with the block
covariances averaged), so the matrix does not grow with the image; ``zca_block`` chooses the
block side at any size. The :class:`Preprocessor` keeps both transforms and their
inverse so a distilled set can be exported and viewed.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

KNOWN_HUB_IDS = {
    "mnist": "ylecun/mnist",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "tiny_imagenet": "zh-plus/tiny-imagenet",
    "cub200": "bentrevett/caltech-ucsd-birds-200-2011",
    "imagenette": "frgfm/imagenette",
    "imagewoof": "frgfm/imagewoof",
    "imagenet-1k": "benjamin-paine/imagenet-1k-64x64",
}
# Hub configurations to load (the others have one), and the image size the paper uses for the
# sets whose images come in mixed sizes.
HUB_CONFIGS = {"imagenette": "320px", "imagewoof": "320px"}
DEFAULT_IMAGE_SIZE = {"cub200": 128, "imagenette": 128, "imagewoof": 128}
KNOWN_NAMES = ("digits", *KNOWN_HUB_IDS)
TEST_SPLITS = ("test", "validation", "valid", "val")
ZcaLayout = Literal["checkerboard", "tiles"]
ZCA_LAYOUTS = ("checkerboard", "tiles")
DENSE_ZCA_UP_TO = 64  # px; above, block ZCA with 64-px blocks (the released code at 128 px)


@dataclasses.dataclass(frozen=True)
class RawSplits:
    """Images in ``[0, 1]`` as float32 ``(N, H, W, C)`` and integer labels, before preprocessing."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


def to_blocks(x: np.ndarray, block: int, layout: str = "checkerboard") -> np.ndarray:
    """``(N, H, W, C)`` → ``(N, n_blocks, block·block·C)``. ``"checkerboard"``: block ``(i, j)``
    is ``x[:, i::s, j::s]`` with ``s = H / block`` (a subsampled copy of the whole image, as the
    released code's ``checkboardshaped``); ``"tiles"``: contiguous ``block × block`` tiles."""
    n, h, w, c = x.shape
    sh, sw = h // block, w // block
    if layout == "tiles":
        x = x.reshape(n, sh, block, sw, block, c).transpose(0, 1, 3, 2, 4, 5)
    else:
        x = x.reshape(n, block, sh, block, sw, c).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(n, sh * sw, block * block * c)


def from_blocks(
    blocks: np.ndarray, shape: tuple[int, ...], block: int, layout: str = "checkerboard"
) -> np.ndarray:
    """The inverse of :func:`to_blocks` for images of ``shape`` ``(N, H, W, C)``."""
    n, h, w, c = shape
    sh, sw = h // block, w // block
    x = blocks.reshape(n, sh, sw, block, block, c)
    perm = (0, 1, 3, 2, 4, 5) if layout == "tiles" else (0, 3, 1, 4, 2, 5)
    return x.transpose(perm).reshape(shape)


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """``x = (r/255 − mean)/std``, then with ZCA ``x = (x.ravel() − zca_mean) @ zca_whitening``;
    with block ZCA the centred image is cut into blocks (:func:`to_blocks`), each multiplied by
    the one ``zca_whitening``, and put back.

    Attributes:
        mean, std: per-channel statistics ``(C,)`` of the training split in ``[0, 1]`` units.
        zca_mean: ``(D,)`` per-feature mean of the standardised training images, or ``None``.
        zca_whitening: ``(D, D)`` symmetric whitening matrix (``(d, d)``, ``d = block²·C``, with
            blocks), or ``None``.
        zca_block: the side of a block in pixels, or ``None`` for the dense whitening.
        zca_layout: ``"checkerboard"`` or ``"tiles"`` (see :func:`to_blocks`).
    """

    mean: np.ndarray
    std: np.ndarray
    zca_mean: np.ndarray | None = None
    zca_whitening: np.ndarray | None = None
    zca_block: int | None = None
    zca_layout: str = "checkerboard"

    def __call__(self, images01: np.ndarray) -> np.ndarray:
        """Raw images in ``[0, 1]`` ``(N, H, W, C)`` → model input (float32)."""
        x = (np.asarray(images01, np.float32) - self.mean) / self.std
        if self.zca_whitening is not None:
            shape = x.shape
            x = x.reshape(shape[0], -1) - self.zca_mean
            if self.zca_block is None:
                x = x @ self.zca_whitening
            else:
                blocks = to_blocks(x.reshape(shape), self.zca_block, self.zca_layout)
                x = from_blocks(blocks @ self.zca_whitening, shape, self.zca_block, self.zca_layout)
            x = x.reshape(shape)
        return x.astype(np.float32)

    def inverse(self, x: ArrayLike) -> np.ndarray:
        """Model input → images in ``[0, 1]`` units (not clipped)."""
        x = np.asarray(x, np.float64)
        if self.zca_whitening is not None:
            shape = x.shape
            if self.zca_block is None:
                flat = np.linalg.solve(self.zca_whitening, x.reshape(shape[0], -1).T).T
            else:
                blocks = to_blocks(x, self.zca_block, self.zca_layout)
                d = blocks.shape[-1]
                solved = np.linalg.solve(self.zca_whitening, blocks.reshape(-1, d).T).T
                flat = from_blocks(solved.reshape(blocks.shape), shape, self.zca_block,
                                   self.zca_layout).reshape(shape[0], -1)  # fmt: skip
            x = (flat + self.zca_mean).reshape(shape)
        return (x * self.std + self.mean).astype(np.float32)


class HostImages:
    """uint8 training images ``(N, H, W, C)`` (an array or a memory map) and the preprocessing
    that turns them into model input. ``images[index]`` with an integer array returns the model
    input of those images (float32), reading only their rows; ``shape`` and ``len`` are the
    dataset's. Made by :func:`~distillation.stream_dataset`."""

    def __init__(self, pixels: np.ndarray, preprocessor: Preprocessor):
        if pixels.dtype != np.uint8 or pixels.ndim != 4:
            raise ValueError(
                f"HostImages: expected uint8 pixels (N, H, W, C), got {pixels.dtype} "
                f"{pixels.shape}."
            )
        self.pixels = pixels
        self.preprocessor = preprocessor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    @property
    def dtype(self):
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        index = np.asarray(index)
        if index.dtype == bool or not np.issubdtype(index.dtype, np.integer):
            raise TypeError("HostImages: index with an integer array of image indices.")
        flat = index.reshape(-1)
        order = np.argsort(flat, kind="stable")  # rows in file order: sequential reads
        rows = np.empty((flat.size, *self.pixels.shape[1:]), np.uint8)
        rows[order] = self.pixels[flat[order]]
        return self.preprocessor(rows / np.float32(255.0)).reshape(*index.shape, *self.shape[1:])

    def chunks01(self, size: int):
        """The images in ``[0, 1]`` (float32), ``size`` at a time."""
        for start in range(0, len(self), size):
            yield self.pixels[start : start + size] / np.float32(255.0)


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A dataset ready for distillation: model-input images, labels, and the preprocessing
    (``x_train`` is :class:`HostImages` for a streamed dataset)."""

    name: str
    x_train: np.ndarray | HostImages
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    preprocessor: Preprocessor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def grayscale(self) -> bool:
        return self.x_train.shape[-1] == 1


def zca_whitening(flat: np.ndarray, strength: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """ZCA of centred ``flat`` ``(N, D)``, regularised by ``strength · tr(Σ)/D`` (KIP/FRePo/RCIG).

    Returns:
        ``(mean (D,), W (D, D))`` with ``W = U diag((s + reg)^{-1/2}) Uᵀ``.
    """
    flat = np.asarray(flat, np.float64)
    mean = flat.mean(0)
    centred = flat - mean
    cov = centred.T @ centred / flat.shape[0]
    return mean.astype(np.float32), _whitening(cov, strength)


def _whitening(cov: np.ndarray, strength: float) -> np.ndarray:
    reg = strength * np.trace(cov) / cov.shape[0]
    eigvals, eigvecs = np.linalg.eigh(cov + reg * np.eye(cov.shape[0]))
    whitening = (eigvecs * eigvals**-0.5) @ eigvecs.T
    return whitening.astype(np.float32)


def block_zca_whitening(
    images: np.ndarray,
    block: int,
    strength: float = 0.1,
    layout: str = "checkerboard",
    chunk: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Block ZCA of ``images`` ``(N, H, W, C)``: one whitening for every block, from the
    covariance of the centred blocks pooled over blocks and images (the released code's
    "mean block"), accumulated ``chunk`` images at a time in float64.

    Returns:
        ``(mean (H·W·C,), W (d, d))`` with ``d = block²·C``.
    """
    n, h, w, c = images.shape
    if not (isinstance(block, int) and block >= 1 and h % block == 0 and w % block == 0):
        raise ValueError(
            f"zca_block must be a positive integer dividing the image size {h}x{w}, got {block!r}."
        )
    if layout not in ZCA_LAYOUTS:
        raise ValueError(f"zca_layout must be one of {ZCA_LAYOUTS}, got {layout!r}.")
    total = np.zeros(h * w * c)
    for start in range(0, n, chunk):
        total += images[start : start + chunk].reshape(-1, h * w * c).sum(0, dtype=np.float64)
    mean = total / n
    d = block * block * c
    cov, count = np.zeros((d, d)), 0
    for start in range(0, n, chunk):
        part = images[start : start + chunk].astype(np.float64).reshape(-1, h * w * c) - mean
        blocks = to_blocks(part.reshape(-1, h, w, c), block, layout).reshape(-1, d)
        cov += blocks.T @ blocks
        count += len(blocks)
    return mean.astype(np.float32), _whitening(cov / count, strength)


def default_zca_block(height: int, width: int) -> int | None:
    """The released code's choice: dense ZCA (``None``) up to 64 px, 64-px blocks above."""
    return DENSE_ZCA_UP_TO if max(height, width) > DENSE_ZCA_UP_TO else None


def fit_preprocessor(
    x_train01: np.ndarray,
    zca: bool,
    zca_strength: float = 0.1,
    zca_block: int | None = None,
    zca_layout: str = "checkerboard",
) -> Preprocessor:
    """Per-channel statistics (and ZCA) from the training split in ``[0, 1]`` units.

    ``zca_block``: ``None`` chooses as the released code: dense up to 64 px, 64-px checkerboard
    blocks above; a number is the block side (the image size gives the dense whitening's
    result, through one block).
    """
    # Accumulate in float64: over the strided axes of an RGB array NumPy sums float32 naively, and
    # CIFAR-10's 51 million values per channel stall at 2**24 (the mean came out 0.32768 for all
    # three channels, the std 2-12 % off), which moved every RGB input away from the released
    # code's space by ~4 %.
    mean = x_train01.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = x_train01.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    pre = Preprocessor(mean, std)
    if not zca:
        return pre
    if zca_block is None:
        zca_block = default_zca_block(*x_train01.shape[1:3])
    standardised = pre(x_train01)
    if zca_block is None:
        zmean, wz = zca_whitening(standardised.reshape(len(standardised), -1), zca_strength)
        return Preprocessor(mean, std, zmean, wz)
    zmean, wz = block_zca_whitening(standardised, zca_block, zca_strength, zca_layout)
    return Preprocessor(mean, std, zmean, wz, zca_block, zca_layout)


def load_dataset(
    name_or_path: str,
    *,
    zca: bool | None = None,
    zca_strength: float = 0.1,
    image_size: int | None = None,
    zca_block: int | None = None,
) -> ImageDataset:
    """Load, check and preprocess a dataset (see the module docstring for what is accepted).

    Args:
        name_or_path: a known name, a hub id, or a local path.
        zca: ZCA-whiten; ``None`` means yes for RGB, no for grayscale (the paper's choice).
        zca_strength: the regularisation of the whitening (0.1 in the paper).
        image_size: centre-crop to a square and resize every image to this many pixels
            (``None``: keep the sizes, which must then agree; the known mixed-size sets default
            to the paper's 128).
        zca_block: whiten in blocks of this side sharing one matrix (``None``: dense up to
            64 px, 64-px checkerboard blocks above, as the released code; see
            :func:`block_zca_whitening`).

    Raises:
        ValueError: unknown dataset, missing split, mixed image sizes, non-integer labels,
            NaN in the data, and the other checks of :func:`load_raw`.
    """
    raw = load_raw(name_or_path, image_size=image_size)
    use_zca = (raw.x_train.shape[-1] == 3) if zca is None else zca
    if zca_block is not None and not use_zca:
        raise ValueError(
            f"zca_block={zca_block} is given but {name_or_path!r} is not ZCA-whitened (grayscale "
            "images are not by default; pass zca=True to whiten them)."
        )
    pre = fit_preprocessor(raw.x_train, use_zca, zca_strength, zca_block)
    return ImageDataset(
        name=name_or_path,
        x_train=pre(raw.x_train),
        y_train=raw.y_train,
        x_test=pre(raw.x_test),
        y_test=raw.y_test,
        class_names=raw.class_names,
        preprocessor=pre,
    )


def load_raw(name_or_path: str, *, image_size: int | None = None) -> RawSplits:
    """Images in ``[0, 1]`` and integer labels, without preprocessing, checked at the boundary.

    Raises:
        ValueError: in one line naming the file or field: an unknown or unreadable source, a
            missing split, images and labels of different lengths, an empty split, images
            outside the documented range (uint8 0–255, or floats in [0, 1]) or not finite,
            labels that are negative, not integers, or out of range for the class names, fewer
            than two classes, a file that is not an ``.npz`` (no pickle is ever loaded).
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"dataset must be a non-empty string, got {name_or_path!r}.")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 2
    ):
        raise ValueError(f"image_size must be None or an integer >= 2, got {image_size!r}.")
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE.get(name_or_path)
    raw = _load_source(name_or_path, image_size)
    if image_size is not None and raw.x_train.shape[1:3] != (image_size, image_size):
        raw = dataclasses.replace(  # array sources (digits, IDX, .npz) arrive at their own size
            raw,
            x_train=resize_images(raw.x_train, image_size),
            x_test=resize_images(raw.x_test, image_size),
        )
    _check_raw(raw, name_or_path)
    return raw


def resize_images(images01: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop ``(N, H, W, C)`` images in ``[0, 1]`` to a square and resize them to
    ``size × size`` by area averaging (PIL's box filter), channel by channel in float32."""
    return np.stack([_resize(image, size) for image in np.asarray(images01, np.float32)])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top : top + side, left : left + side]
    if side == size:
        return image.astype(np.float32)
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode="F").resize(
                (size, size), Image.Resampling.BOX
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, -1), 0.0, 1.0)


def _load_source(name_or_path: str, image_size: int | None) -> RawSplits:
    if name_or_path == "digits":
        return _load_digits()
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _load_local(path, image_size)
    if name_or_path in KNOWN_HUB_IDS:
        hub_id = KNOWN_HUB_IDS[name_or_path]
        return _load_hub(hub_id, image_size, HUB_CONFIGS.get(name_or_path))
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        return _load_hub(name_or_path, image_size)
    raise ValueError(
        f"unknown dataset {name_or_path!r}: expected one of {', '.join(KNOWN_NAMES)}, a Hugging "
        "Face hub id (owner/name), or an existing local path (IDX folder, ImageFolder tree, "
        "parquet files, or .npz)."
    )


# --------------------------------------------------------------------------- sources


def _load_digits() -> RawSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)  # pixel values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return RawSplits(
        x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), tuple(str(i) for i in range(10))
    )


def _load_local(path: Path, image_size: int | None) -> RawSplits:
    if path.is_file() and path.suffix == ".npz":
        return _load_npz(path)
    if path.is_file() and path.suffix == ".parquet":
        raise ValueError(
            f"{path}: give the folder holding the parquet files (one for train, one for test), "
            "not a single file."
        )
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        if any("idx3-ubyte" in p.name for p in files):
            return _load_idx(path)
        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            return _load_parquet(parquet, path, image_size)
        if (path / "train").is_dir():
            return _load_imagefolder(path, image_size)
    raise ValueError(
        f"{path}: not a dataset this loader knows: expected an .npz file, a folder of IDX files, "
        "a folder of parquet files, or an ImageFolder tree with train/ and test/ folders."
    )


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file (bad magic number).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=min(4 + 4 * ndim, len(data)))
    if body.size != int(np.prod(dims)):
        raise ValueError(
            f"{path}: a truncated or damaged IDX file (its header says {dims}, "
            f"{int(np.prod(dims))} values, but it holds {body.size})."
        )
    return body.reshape(dims)


def _find(path: Path, patterns: tuple[str, ...], what: str) -> Path:
    for p in sorted(path.iterdir()):
        if any(pat in p.name for pat in patterns):
            return p
    raise ValueError(f"{path}: missing split: no {what} file (looked for {', '.join(patterns)}).")


def _load_idx(path: Path) -> RawSplits:
    x_tr = _read_idx(_find(path, ("train-images",), "training images"))
    y_tr = _read_idx(_find(path, ("train-labels",), "training labels"))
    x_te = _read_idx(_find(path, ("t10k-images", "test-images"), "test images"))
    y_te = _read_idx(_find(path, ("t10k-labels", "test-labels"), "test labels"))
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    return RawSplits(
        (x_tr[..., None] / 255.0).astype(np.float32),
        y_tr.astype(np.int64),
        (x_te[..., None] / 255.0).astype(np.float32),
        y_te.astype(np.int64),
        tuple(str(i) for i in range(n_classes)),
    )


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, read without pickle (``what``: what the file should be, for
    messages).

    Raises:
        ValueError: the file is not an ``.npz`` (a zip of ``.npy`` arrays), or holds an array of
            Python objects (which only pickle could read, and which is never read).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
    if magic != b"PK\x03\x04":
        raise ValueError(
            f"{path}: not an .npz file (expected a zip archive of .npy arrays, as written by "
            f"numpy.savez), so it cannot be {what}."
        )
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError as exc:
                    if "Object arrays" not in str(exc):
                        raise
                    raise ValueError(  # numpy cannot read an object array without pickle
                        f"{path}: `{key}` is an array of Python objects, which is not read (it "
                        "would need pickle); store numbers (uint8, integers, floats) instead."
                    ) from None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        if str(exc).startswith(f"{path}: "):
            raise
        # numpy's own words may advise allow_pickle (unsafe, and wrong here): never repeated.
        detail = type(exc).__name__ if "pickle" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise ValueError(
            f"{path}: a damaged .npz file ({detail}); write it again with numpy.savez."
        ) from None
    return arrays


def _load_npz(path: Path) -> RawSplits:
    data = read_npz(path, "read as a dataset")
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
    if missing:
        raise ValueError(
            f"{path}: missing split arrays {missing}; expected x_train, y_train, x_test, y_test."
        )
    xs = [_images01(data[k], f"{path}: {k}") for k in ("x_train", "x_test")]
    labels = [_as_int_labels(data[k], f"{path}: {k}") for k in ("y_train", "y_test")]
    n_classes = int(max(labels[0].max(initial=0), labels[1].max(initial=0))) + 1
    return RawSplits(xs[0], labels[0], xs[1], labels[1], tuple(str(i) for i in range(n_classes)))


def _images01(x: np.ndarray, where: str) -> np.ndarray:
    """Images of an ``.npz`` in ``[0, 1]`` float32 ``(N, H, W, C)``: uint8 (or other integers)
    0–255 are divided by 255; floats must already be in ``[0, 1]``."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{where} must be (N, H, W) or (N, H, W, C), got shape {x.shape}.")
    if x.dtype == bool or not (
        np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    ):
        raise ValueError(
            f"{where} has dtype {x.dtype}; expected uint8 pixel values 0–255 or floats in [0, 1]."
        )
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            kind = "NaN" if np.isnan(x).any() else "infinite"
            raise ValueError(
                f"{where} contains {kind} values ({int((~finite).sum())} of {x.size})."
            )
    if x.size:
        lo, hi = x.min(), x.max()
        if np.issubdtype(x.dtype, np.integer) and (lo < 0 or hi > 255):
            raise ValueError(
                f"{where} holds integers in [{lo}, {hi}]; expected pixel values 0–255."
            )
        if np.issubdtype(x.dtype, np.floating) and (lo < 0 or hi > 1):
            raise ValueError(
                f"{where} holds floats in [{lo:g}, {hi:g}]; expected floats in [0, 1] (divide "
                "0–255 pixel values by 255, or store them as uint8)."
            )
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def _as_int_labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(
            f"{where}: labels must be a 1-D array of class indices, got shape {y.shape}."
        )
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        out = y.astype(np.int64)
    elif (
        np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    ):
        out = y.astype(np.int64)
    else:
        example = next((v for v in y.ravel() if not _is_integral(v)), y.ravel()[0])
        raise ValueError(
            f"{where}: labels must be integer class indices, got dtype {y.dtype} "
            f"(e.g. {example!r})."
        )
    if out.size and out.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, got {out.min()}.")
    return out


def _is_integral(v) -> bool:
    try:
        return float(v) == int(float(v))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------- through Hugging Face datasets


def _hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (a TCP connect, a few seconds at most), or
    ``None``. Without it, ``datasets`` retries a failing hub for ~30 s before giving up."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} is not reachable ({exc})"
    return None


def _offline_requested() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _load_hub(hub_id: str, image_size: int | None, config: str | None = None) -> RawSplits:
    # With offline mode requested, datasets reads its cache only (fast); otherwise a hub that
    # cannot be reached is reported at once instead of after datasets' retries.
    reason = None if _offline_requested() else _hub_unreachable_reason()
    if reason is not None:
        raise ValueError(
            f"could not load {hub_id!r} from the Hugging Face hub: {reason}. Without network "
            "access, pass a local copy instead (an IDX folder, ImageFolder tree, parquet files "
            "or .npz), or set HF_HUB_OFFLINE=1 to use a copy in the Hugging Face cache."
        )
    import datasets

    try:
        dsd = datasets.load_dataset(hub_id, config)
    except Exception as exc:  # network, auth, missing repo: say which and how to go offline
        raise ValueError(
            f"could not load {hub_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Without network access, pass a local copy instead (an IDX "
            "folder, ImageFolder tree, parquet files or .npz)."
        ) from exc
    return _from_dataset_dict(dsd, hub_id, image_size)


def _load_imagefolder(path: Path, image_size: int | None) -> RawSplits:
    import datasets
    from PIL import Image

    extensions = {e.lower() for e in Image.registered_extensions()}
    test = next((name for name in TEST_SPLITS if (path / name).is_dir()), None)
    if test is None:
        raise ValueError(
            f"{path}: missing split 'test': no folder named {', '.join(TEST_SPLITS)} beside train/."
        )
    for split in ("train", test):
        folder = path / split
        if not any(p.is_file() and p.suffix.lower() in extensions for p in folder.rglob("*")):
            raise ValueError(
                f"{folder}: no image files; expected {folder}/<class>/<image> (PNG, JPEG, ...)."
            )
    classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(
            f"{path / 'train'}: holds {len(classes)} class folder(s) {classes}; a classifier "
            "needs at least two classes (one folder per class)."
        )
    files = {"train": str(path / "train" / "**"), "test": str(path / test / "**")}
    try:
        dsd = datasets.load_dataset("imagefolder", data_files=files)
    except Exception as exc:  # datasets' own errors name its internals, not the user's folder
        raise ValueError(
            f"{path}: not a readable ImageFolder tree ({type(exc).__name__}: {str(exc)[:200]})."
        ) from None
    return _from_dataset_dict(dsd, str(path), image_size)


def parquet_data_files(files: list[Path]) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}`` from parquet file (or folder) names: the test split is
    the first of ``test``, ``validation``, ``valid``, ``val`` that names a file."""
    named = lambda split: [str(p) for p in files if split in p.name or split in p.parent.name]
    data_files = {}
    if named("train"):
        data_files["train"] = named("train")
    test = next((named(name) for name in TEST_SPLITS if named(name)), None)
    if test:
        data_files["test"] = test
    return data_files


def _load_parquet(files: list[Path], root: Path, image_size: int | None) -> RawSplits:
    import datasets

    data_files = parquet_data_files(files)
    if "train" not in data_files:
        raise ValueError(f"{root}: missing split 'train': no parquet file named with 'train'.")
    try:
        dsd = datasets.load_dataset("parquet", data_files=data_files)
    except Exception as exc:  # a damaged parquet file: name the folder, not datasets' internals
        raise ValueError(
            f"{root}: unreadable parquet files ({type(exc).__name__}: {str(exc)[:200]})."
        ) from None
    return _from_dataset_dict(dsd, str(root), image_size)


def test_split_name(splits) -> str | None:
    """The split that serves as the test set: ``test``, else ``validation``, ``valid``, ``val``."""
    return next((name for name in TEST_SPLITS if name in splits), None)


def _from_dataset_dict(dsd, where: str, image_size: int | None = None) -> RawSplits:
    splits = list(dsd.keys())
    test_name = test_split_name(splits)
    if "train" not in dsd:
        raise ValueError(f"{where}: missing split 'train' (found {splits}).")
    if test_name is None:
        raise ValueError(
            f"{where}: missing split 'test' (found {splits}; a split named "
            f"{', '.join(TEST_SPLITS)} is used as the test set)."
        )
    train, test = dsd["train"], dsd[test_name]
    image_col, label_col = _columns(train, where)
    class_names = _class_names(train, label_col)
    x_tr = _images(_undecoded(train, image_col), f"{where}:train", image_size)
    x_te = _images(_undecoded(test, image_col), f"{where}:{test_name}", image_size)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(
            f"{where}: train images are {x_tr.shape[1:]} but test images are {x_te.shape[1:]}; "
            "all images must have the same size."
        )
    y_tr = _as_int_labels(np.asarray(train[label_col]), f"{where}:train:{label_col}")
    y_te = _as_int_labels(np.asarray(test[label_col]), f"{where}:test:{label_col}")
    if class_names is None:
        class_names = tuple(str(i) for i in range(int(max(y_tr.max(), y_te.max())) + 1))
    return RawSplits(x_tr, y_tr, x_te, y_te, class_names)


def _columns(ds, where: str) -> tuple[str, str]:
    import datasets

    features = ds.features
    image_cols = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    if not image_cols:  # parquet without the hub's metadata: {"bytes", "path"} structs
        image_cols = [k for k in ("image", "img") if k in features]
    if not image_cols:
        raise ValueError(f"{where}: no image column (columns: {list(features)}).")
    for candidate in ("label", "fine_label", "labels"):
        if candidate in features:
            return image_cols[0], candidate
    class_cols = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if class_cols:
        return image_cols[0], class_cols[0]
    raise ValueError(f"{where}: no label column (columns: {list(features)}).")


def _class_names(ds, label_col: str):
    import datasets

    feature = ds.features[label_col]
    if isinstance(feature, datasets.ClassLabel):
        return tuple(feature.names)
    return None


def _undecoded(ds, image_col: str):
    """The image column as ``{"bytes", "path"}`` items, so that each image is decoded here and
    an unreadable one is reported with its file name."""
    import datasets

    if isinstance(ds.features[image_col], datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    return ds[image_col]


def _decode(item, where: str, index: int) -> np.ndarray:
    from PIL import Image

    if not isinstance(item, dict):  # already decoded (a PIL image or an array)
        return np.asarray(item)
    name = item.get("path") or f"image {index}"
    try:
        data = item.get("bytes")
        with Image.open(io.BytesIO(data) if data is not None else item["path"]) as image:
            array = np.asarray(image)
    except Exception as exc:  # PIL raises many kinds (UnidentifiedImageError, OSError, ...)
        raise ValueError(
            f"{where}: cannot read image {name} ({type(exc).__name__}: {exc})."
        ) from None
    if array.dtype != np.uint8:
        raise ValueError(
            f"{where}: image {name} has {array.dtype} pixels; expected 8-bit images (uint8)."
        )
    return array


def _images(column, where: str, image_size: int | None = None) -> np.ndarray:
    arrays = [_decode(item, where, i) for i, item in enumerate(column)]
    if not arrays:
        raise ValueError(f"{where}: no images.")
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1 and image_size is None:
        raise ValueError(
            f"{where}: images of mixed sizes {sorted(shapes)[:5]}; give an image size "
            "(`--image-size N`, `load_dataset(..., image_size=N)`) to centre-crop and resize "
            "them all to N x N."
        )
    channels = {a.shape[2] if a.ndim == 3 else 1 for a in arrays}
    n_channels = 3 if 3 in channels or 4 in channels else 1
    size = next(iter(shapes)) if image_size is None else (image_size, image_size)
    out = np.empty((len(arrays), *size, n_channels), np.float32)
    for i, a in enumerate(arrays):
        if a.ndim == 2:
            a = a[..., None]
        a = a[..., :3] if a.shape[2] == 4 else a
        if a.shape[2] != n_channels:
            a = np.repeat(a, n_channels, axis=2)
        a = a / np.float32(255.0)
        out[i] = a if image_size is None or a.shape[:2] == size else _resize(a, image_size)
    return out


def _check_raw(raw: RawSplits, where: str) -> None:
    """The checks every source passes (after its own, which name the field in the file)."""
    for split in ("train", "test"):
        x, y = getattr(raw, f"x_{split}"), getattr(raw, f"y_{split}")
        if len(x) == 0:
            raise ValueError(f"{where}: x_{split} is empty.")
        if len(x) != len(y):
            raise ValueError(
                f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; "
                "expected one label per image."
            )
        finite = np.isfinite(x)
        if not finite.all():
            raise ValueError(
                f"{where}: x_{split} contains NaN or infinite values ({int((~finite).sum())})."
            )
        if x.min() < 0 or x.max() > 1:
            raise ValueError(
                f"{where}: x_{split} holds values in [{x.min():g}, {x.max():g}] after scaling; "
                "expected images in [0, 1] (uint8 0–255 / 255)."
            )
        bad = (y < 0) | (y >= len(raw.class_names))
        if bad.any():
            raise ValueError(
                f"{where}: y_{split} holds label {int(y[bad][0])}, outside the "
                f"{len(raw.class_names)} classes (0 to {len(raw.class_names) - 1})."
            )
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise ValueError(
            f"{where}: train images are {raw.x_train.shape[1:]} but test images are "
            f"{raw.x_test.shape[1:]}; all images must have the same size."
        )
    present = np.unique(raw.y_train)
    if len(present) < 2:
        raise ValueError(
            f"{where}: y_train holds a single class ({int(present[0])}); a classifier needs at "
            "least two classes."
        )
