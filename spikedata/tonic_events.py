"""tonic's event data sets read from a local folder (nothing is ever downloaded), binned into
T frames by the same `bin_events` as N-MNIST (one source of truth for binning).

    dataset     folder layout under data.path (as tonic extracts its archives)
    NMNIST      Train/<digit>/<NNNNN>.bin [Test/...]          (spikedata.nmnist)
    POKERDVS    pips_train/<cl|he|di|sp>/*.npy, pips_test/... (int arrays (n, 4): t [us], x, y, p)
    DVSGesture  ibmGestureTrain/user<NN>_<lighting>/<label>.npy, ibmGestureTest/...
                (arrays (n, 4): x, y, p, t [ms])
    SHD         shd_train.h5, shd_test.h5 (HDF5: spikes/times [s], spikes/units, labels)

tonic's own classes download their archive when `_check_exists` fails; here the folder is
checked first (a missing one is refused with the layout expected) and each class is
subclassed so that it reads the user's folder as is and can never download. The sensor size
comes from tonic's class, the number of classes from the data set's definition (_LAYOUT). When the test part is absent, the train
part is split 80/20, stratified per class with a fixed seed (as N-MNIST's subset is).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from netgraph.errors import one_line
from netgraph.limits import check_memory
from spikedata.base import DataError, Dataset, Split, local_tonic_class, stratified_split
from spikedata.nmnist import NMNIST_SPLIT_SEED, NMNIST_TEST_FRACTION, bin_events, load_nmnist_dataset

TONIC_DATASETS = ("NMNIST", "POKERDVS", "DVSGesture", "SHD")

# dataset -> (train part, test part, how each part looks, file pattern inside a part, number of classes)
_LAYOUT = {
    "POKERDVS": ("pips_train", "pips_test", "<cl|he|di|sp>/*.npy", "*/*.npy", 4),
    "DVSGesture": ("ibmGestureTrain", "ibmGestureTest", "user<NN>_<lighting>/<label>.npy", "*/*.npy", 11),
    "SHD": ("shd_train.h5", "shd_test.h5", "an HDF5 file", None, 20),
}


def _present(root: Path, part: str, pattern: str | None) -> bool:
    where = root / part
    return where.is_file() if pattern is None else where.is_dir() and any(where.glob(pattern))


def _read_part(name: str, root: Path, part: str, train: bool, time_steps: int) -> tuple[np.ndarray, np.ndarray]:
    cls = local_tonic_class(name, root, lambda _dataset: True,  # checked before construction (_present)
                            f"{name} files not found in {root} (nothing is downloaded)")
    try:
        dataset = cls(save_to=str(root), train=train)
        _sort_by_file(dataset)
        count = len(dataset)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{root / part}: cannot be read as {name} ({one_line(exc)})") from exc
    width, height, polarities = cls.sensor_size
    # uint8 frames, their float32 copy, and a float32 split of that when the test part is held out
    check_memory(count * time_steps * polarities * height * width * (1 + 4 + 4),
                 f"{root / part}: {count} {name} samples of {time_steps} time bins (encoding.time_steps)")
    frames = np.empty((count, time_steps, polarities, height, width), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    files = _recording_files(name, root / part, dataset)
    for i in range(count):
        where = files[i] if i < len(files) else f"{root / part}: sample {i}"
        try:
            events, label = dataset[i]
        except (OSError, ValueError, IndexError, KeyError, TypeError) as exc:
            raise DataError(f"{where}: cannot be read as a {name} recording ({one_line(exc)})") from exc
        frames[i] = bin_events(events, time_steps, where, cls.sensor_size)
        labels[i] = int(label)
    return frames, labels


def _sort_by_file(dataset) -> None:
    """Orders the samples of a data set that lists them by file (DVSGesture) by path: tonic
    keeps the file system's walk order, which differs between copies of the same folder, and
    the held-out 20% must not."""
    files, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if isinstance(files, list) and isinstance(targets, list) and len(files) == len(targets) \
            and all(isinstance(f, (str, os.PathLike)) for f in files):
        order = sorted(range(len(files)), key=lambda i: str(files[i]))
        dataset.data, dataset.targets = [files[i] for i in order], [targets[i] for i in order]


def _recording_files(name: str, folder: Path, dataset) -> list[str]:
    """Each sample's file, for error messages (tonic keeps DVSGesture's paths; POKERDVS's
    arrays are loaded, in the order of the same walk)."""
    if name == "POKERDVS":
        return [os.path.join(path, file) for path, _dirs, files in os.walk(folder)
                for file in sorted(files) if file.endswith("npy")]
    files = getattr(dataset, "data", None)
    return [str(f) for f in files] if name == "DVSGesture" and isinstance(files, list) else []


def load_tonic_dataset(dataset: str | None, root: str | Path | None, time_steps: int | None) -> Dataset:
    """tonic's `dataset` from the local folder `root`, binned to `time_steps` frames."""
    if dataset not in TONIC_DATASETS:
        raise DataError(f"the tonic data set must be one of {', '.join(TONIC_DATASETS)} (data.dataset), got {dataset!r}")
    if not root:
        raise DataError(f"the tonic {dataset} data set needs the folder of its files (data.path / --data-path)")
    if not time_steps:
        raise DataError("a tonic data set needs the number of time bins (encoding.time_steps)")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"tonic {dataset} folder not found: {root}")
    if dataset == "NMNIST":
        return dataclasses.replace(load_nmnist_dataset(root, time_steps), name="tonic:NMNIST")
    train_part, test_part, looks, pattern, num_classes = _LAYOUT[dataset]
    if not _present(root, train_part, pattern):
        raise DataError(f"{root}: no {dataset} training data: expected {root / train_part}"
                        f"{'' if pattern is None else '/' + looks} (and {test_part} likewise, optional; "
                        "nothing is downloaded)")
    frames, labels = _read_part(dataset, root, train_part, True, time_steps)
    if len(labels) == 0:
        raise DataError(f"{root / train_part}: holds no {dataset} samples")
    if _present(root, test_part, pattern):
        test_frames, test_labels = _read_part(dataset, root, test_part, False, time_steps)
        train, test = Split(frames.astype(np.float32), labels), Split(test_frames.astype(np.float32), test_labels)
    else:
        train, test = stratified_split(frames.astype(np.float32), labels, NMNIST_TEST_FRACTION,
                                       NMNIST_SPLIT_SEED)
    if len(test.labels) == 0:
        raise DataError(f"{root}: too few {dataset} samples in {train_part} to hold out a test set (20% per class); "
                        f"add {test_part}")
    for split in (train, test):
        outside = split.labels[(split.labels < 0) | (split.labels >= num_classes)]
        if len(outside):
            raise DataError(f"{root}: {dataset} label {outside[0]} outside 0..{num_classes - 1}")
    return Dataset(name=f"tonic:{dataset}", train=train, test=test, num_classes=num_classes)
