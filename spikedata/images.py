"""Static image data sets from local files only: nothing here downloads.

- 'digits': scikit-learn's embedded 8x8 handwritten digits (1,797 images, shipped inside
  the package), with a fixed stratified 80/20 train/test split.
- 'mnist': the original MNIST idx files (optionally .gz) read from a directory.

Images come back as float32 intensities in [0, 1], shape (N, channels, height, width);
labels as int64 (N,).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from spikedata.base import DataError, Dataset, Split, stratified_split

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def load_digits_dataset() -> Dataset:
    """scikit-learn's 8x8 digits, intensities 0..16 scaled to [0, 1], fixed split.

    The split is stratified per class with numpy's PCG64 (stable across versions):
    the same images are in the test set on every machine.
    """
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(images, labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return Dataset(name="digits", train=train, test=test, num_classes=10)


def _open_maybe_gz(path: Path):
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Reads one idx file (uint8 data, as MNIST's) into an array of its declared shape."""
    path = Path(path)
    try:
        with _open_maybe_gz(path) as handle:
            header = handle.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0:
                raise DataError(f"{path}: not an idx file (bad magic number {header!r})")
            if header[2] != 0x08:
                raise DataError(f"{path}: idx data type 0x{header[2]:02x} is not uint8 (0x08)")
            ndim = header[3]
            dims = struct.unpack(f">{ndim}I", handle.read(4 * ndim))
            data = np.frombuffer(handle.read(), dtype=np.uint8)
    except (OSError, EOFError, struct.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"idx file not found: {path}") from exc
        raise DataError(f"{path}: cannot read idx file: {exc}") from exc
    expected = int(np.prod(dims))
    if data.size != expected:
        raise DataError(f"{path}: header declares {dims} = {expected} values, file holds {data.size}")
    return data.reshape(dims)


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_mnist_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST file {stem}[.gz] not found in {directory}")


def load_mnist_dataset(directory: str | Path) -> Dataset:
    """MNIST from the four original idx files (plain or .gz) in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"MNIST directory not found: {directory}")
    arrays = {key: read_idx(_find_mnist_file(directory, stem)) for key, stem in MNIST_FILES.items()}

    def split(images: np.ndarray, labels: np.ndarray, which: str) -> Split:
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{directory}: MNIST {which} images {images.shape} do not match labels {labels.shape}"
            )
        return Split((images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64))

    return Dataset(
        name="mnist",
        train=split(arrays["train_images"], arrays["train_labels"], "train"),
        test=split(arrays["test_images"], arrays["test_labels"], "test"),
        num_classes=10,
    )
