"""Data sets read from local files only (nothing is ever downloaded), shared by training,
deployment and the fidelity harness. Torch-free (N-MNIST's reader, tonic, imports torch
only when N-MNIST is read).

    load_dataset('digits')                       scikit-learn's embedded 8x8 digits
    load_dataset('mnist', DIR)                   the original idx files (plain or .gz)
    load_dataset('nmnist', DIR, time_steps=T)    N-MNIST in its original folder layout
    load_dataset('npz', FILE, time_steps=T)      users' own arrays (spikedata.npz)
    load_dataset('tonic', DIR, T, dataset='SHD') tonic's event data sets from a local folder
                                                 (spikedata.tonic_events; also 'tonic:SHD')
"""
from __future__ import annotations

from spikedata.base import DataError, Dataset, Split
from spikedata.images import load_digits_dataset, load_mnist_dataset, read_idx
from spikedata.nmnist import bin_events, load_nmnist_dataset, read_events, write_nmnist_file
from spikedata.npz import NPZ_KEYS, load_npz_dataset
from spikedata.tonic_events import TONIC_DATASETS, load_tonic_dataset

DATASETS = ("digits", "mnist", "nmnist", "npz", "tonic")

__all__ = ["DATASETS", "NPZ_KEYS", "TONIC_DATASETS", "DataError", "Dataset", "Split", "bin_events", "load_dataset",
           "load_digits_dataset", "load_mnist_dataset", "load_nmnist_dataset", "load_npz_dataset",
           "load_tonic_dataset", "read_events", "read_idx", "write_nmnist_file"]


def load_dataset(name: str, path: str | None = None, time_steps: int | None = None,
                 dataset: str | None = None) -> Dataset:
    """Loads a data set by config name from local files. time_steps: the number of frames
    event data (nmnist, tonic) is binned to, and that npz spike trains must have; ignored
    for images. dataset: which tonic data set (name 'tonic'); 'tonic:SHD' names both at once."""
    if name.startswith("tonic:"):
        name, dataset = "tonic", name.split(":", 1)[1]
    if name == "tonic":
        return load_tonic_dataset(dataset, path, time_steps)
    if name == "npz":
        if not path:
            raise DataError("the npz dataset needs its file (data.path / --data-path)")
        return load_npz_dataset(path, time_steps)
    if name == "digits":
        return load_digits_dataset()
    if name == "nmnist":
        if not path:
            raise DataError("the nmnist dataset needs a directory (data.path / --data-path) holding Train/")
        if not time_steps:
            raise DataError("the nmnist dataset needs the number of time bins (encoding.time_steps)")
        return load_nmnist_dataset(path, time_steps)
    if name == "mnist":
        if not path:
            raise DataError("the mnist dataset needs a directory (data.path / --data-path)")
        return load_mnist_dataset(path)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
