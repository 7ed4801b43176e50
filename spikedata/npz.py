"""Users' own arrays: one `.npz` file (numpy.savez / savez_compressed) holding a train and a
test split, read with allow_pickle=False (a file never runs code).

Arrays, by exact name (no others are read; extra arrays are refused so a typo shows):

    x_train, x_test        static frames, floats in [0, 1] (Bernoulli-encoded: encoding.kind
                           bernoulli), shape (N, C, H, W), (N, H, W) or (N, features)
    spikes_train,          OR spike trains already binned, 0/1 (bool or any integer/float
    spikes_test            dtype), shape (N, T, C, H, W), (N, T, H, W) or (N, T, features),
                           played as they are (encoding.kind events); T must equal
                           encoding.time_steps (refused otherwise: nothing is re-binned)
    y_train, y_test        integer labels 0..K-1, shape (N,); K = the largest label + 1

Samples come back in the project's layout: frames (N, C, H, W) float32 (an (N, H, W) file
gains C = 1; (N, features) becomes (N, 1, 1, features), which a dense layer reads flat) and
spike trains (N, T, C, H, W) likewise.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from netgraph.errors import one_line
from netgraph.limits import check_memory
from spikedata.base import DataError, Dataset, Split

FRAME_KEYS = ("x_train", "x_test")
SPIKE_KEYS = ("spikes_train", "spikes_test")
LABEL_KEYS = ("y_train", "y_test")
NPZ_KEYS = FRAME_KEYS + SPIKE_KEYS + LABEL_KEYS
MAX_CLASSES = 1 << 16  # a label beyond is a mistake, not a class count to allocate


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"npz data file not found: {path} (data.path: a .npz with x_train/y_train/x_test/y_test, "
                        "or spikes_train/y_train/spikes_test/y_test)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({one_line(exc)})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single array; expected a .npz (numpy.savez) of x_train, y_train, x_test, y_test")
    with loaded as data:
        unknown = sorted(set(data.files) - set(NPZ_KEYS))
        if unknown:
            raise DataError(f"{path}: unexpected array(s) {', '.join(unknown)}; the arrays read are "
                            f"{', '.join(NPZ_KEYS)}")
        arrays = {}
        for key in data.files:
            _check_stored_size(path, data, key)
            try:
                arrays[key] = data[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{path}: array {key} cannot be read ({one_line(exc)}; object arrays are refused)") from exc
    return arrays


def _check_stored_size(path: Path, data, key: str) -> None:
    """Refuses an array whose header declares more than the memory limit, before it is read (a
    compressed .npz can inflate far beyond its size on disk)."""
    try:
        with data.zip.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} (numpy.savez writes 1.0 or 2.0)")
            shape, _, dtype = read_header(member)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: array {key} has no readable header ({one_line(exc)})") from exc
    check_memory(math.prod(shape) * max(dtype.itemsize, 4), f"{path}: array {key} of shape {shape}")


def _inputs(path: Path, key: str, array: np.ndarray, spikes: bool, time_steps: int | None) -> np.ndarray:
    where = f"{path}: array {key}"
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {array.dtype}; expected numbers (float, integer or bool)")
    if len(array) == 0:
        raise DataError(f"{where} is empty (shape {array.shape})")
    if spikes:
        if array.ndim not in (3, 4, 5):
            raise DataError(f"{where} has shape {array.shape}; expected spike trains (N, T, C, H, W), (N, T, H, W) "
                            "or (N, T, features)")
        if time_steps is not None and array.shape[1] != time_steps:
            raise DataError(f"{where} has {array.shape[1]} time bins (axis 1) but encoding.time_steps is {time_steps}; "
                            "bin the spikes to that many steps, or set encoding.time_steps to match")
    elif array.ndim not in (2, 3, 4):
        raise DataError(f"{where} has shape {array.shape}; expected frames (N, C, H, W), (N, H, W) or (N, features)"
                        " (0/1 spike trains (N, T, ...) go in spikes_train/spikes_test)")
    if 0 in array.shape:
        raise DataError(f"{where} has an empty axis (shape {array.shape})")
    check_memory(array.size * 4, f"{where} as float32")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{where} holds NaN or infinite values")
    if spikes and not np.isin(values, (0.0, 1.0)).all():
        raise DataError(f"{where} holds values other than 0 and 1 (spike trains are 0/1 per step)")
    if not spikes and (values.min() < 0 or values.max() > 1):
        raise DataError(f"{where} holds values in [{values.min():g}, {values.max():g}]; frames are intensities in "
                        "[0, 1] (the spike probability per step): scale them")
    sample = values.shape[2:] if spikes else values.shape[1:]
    lead = values.shape[:2] if spikes else values.shape[:1]
    if len(sample) == 1:
        sample = (1, 1, *sample)
    elif len(sample) == 2:
        sample = (1, *sample)
    return values.reshape(*lead, *sample)


def _labels(path: Path, key: str, array: np.ndarray, samples: int, inputs_key: str) -> np.ndarray:
    where = f"{path}: array {key}"
    if array.ndim != 1:
        raise DataError(f"{where} has shape {array.shape}; expected integer labels (N,)")
    if array.dtype.kind not in "iu":
        raise DataError(f"{where} has dtype {array.dtype}; expected integer labels 0..K-1")
    if len(array) != samples:
        raise DataError(f"{where} has {len(array)} labels but {inputs_key} has {samples} samples")
    if len(array) and array.min() < 0:
        raise DataError(f"{where} holds label {array.min()}; labels are 0..K-1")
    if len(array) and array.max() >= MAX_CLASSES:  # before the cast: uint64 past 2^63 would turn negative
        raise DataError(f"{where} holds label {array.max()}; labels are 0..K-1 with K at most {MAX_CLASSES}")
    return array.astype(np.int64)


def load_npz_dataset(path: str | Path, time_steps: int | None = None) -> Dataset:
    """A data set from one .npz (the module's docstring gives its arrays); every check at load,
    each error one line naming the file and the array."""
    path = Path(path)
    arrays = _read(path)
    spikes = any(k in arrays for k in SPIKE_KEYS)
    if spikes and any(k in arrays for k in FRAME_KEYS):
        raise DataError(f"{path}: holds both frames (x_*) and spike trains (spikes_*); keep one kind")
    input_keys = SPIKE_KEYS if spikes else FRAME_KEYS
    missing = [k for k in (input_keys[0], LABEL_KEYS[0], input_keys[1], LABEL_KEYS[1]) if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)} (expected {input_keys[0]}, y_train, "
                        f"{input_keys[1]}, y_test)")
    splits = []
    for inputs_key, labels_key in zip(input_keys, LABEL_KEYS):
        inputs = _inputs(path, inputs_key, arrays[inputs_key], spikes, time_steps)
        splits.append(Split(inputs, _labels(path, labels_key, arrays[labels_key], len(inputs), inputs_key)))
    train, test = splits
    if train.inputs.shape[1:] != test.inputs.shape[1:]:
        raise DataError(f"{path}: {input_keys[0]} samples have shape {arrays[input_keys[0]].shape[1:]} but "
                        f"{input_keys[1]} samples {arrays[input_keys[1]].shape[1:]}")
    num_classes = int(train.labels.max()) + 1
    absent = sorted(set(range(num_classes)) - set(np.unique(train.labels).tolist()))
    if absent:
        raise DataError(f"{path}: array y_train has no sample of class(es) {', '.join(map(str, absent[:10]))} "
                        f"of 0..{num_classes - 1}; labels must be 0..K-1 with every class present")
    if test.labels.max() >= num_classes:
        raise DataError(f"{path}: array y_test holds label {test.labels.max()} but y_train only 0..{num_classes - 1} "
                        "(the classes are those the training labels name)")
    if num_classes < 2:
        raise DataError(f"{path}: array y_train names a single class (0); a classifier needs at least two")
    return Dataset(name="npz", train=train, test=test, num_classes=num_classes)
