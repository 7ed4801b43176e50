"""N-MNIST (Orchard et al. 2015) from a local folder in the original layout, through tonic.

Layout: ROOT/Train/<digit>/<NNNNN>.bin (and ROOT/Test/... when present); each file holds
40-bit events: x (8 bit), y (8 bit), polarity (1 bit) and a 23-bit timestamp in
microseconds, with y = 240 marking a timestamp overflow. tonic reads the files
(`tonic.datasets.NMNIST`, `tonic.io.read_mnist_file`); `bin_events` bins them into a
fixed number of frames without losing an event; nothing is ever downloaded:
tonic's own class would fetch the archive when it does not find all 60,000 files, so
`spikedata.base.local_tonic_class` replaces its existence check and download with a plain folder check.

`write_nmnist_file` writes the same format, for tests and for users' own recordings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from netgraph.errors import one_line
from netgraph.limits import check_memory
from netgraph.provenance import atomic_write
from spikedata.base import DataError, Dataset, Split, local_tonic_class, stratified_split

SENSOR_SIZE = (34, 34, 2)  # x, y, polarity
NMNIST_SPLIT_SEED = 0
NMNIST_TEST_FRACTION = 0.2


def read_events(path: str | Path) -> np.ndarray:
    """Events of one file as tonic's structured array (fields x, y, t [us], p)."""
    from tonic.datasets import NMNIST  # tonic imports torch (~3 s): only when N-MNIST is read
    from tonic.io import read_mnist_file  # (same package)

    return read_mnist_file(str(path), dtype=NMNIST.dtype)


def _check_events(events: np.ndarray, where: str, sensor_size: tuple[int, int, int] = SENSOR_SIZE) -> None:
    """A recording outside its sensor (N-MNIST's: 34 x 34, two polarities) is corrupt."""
    width, height, polarities = sensor_size
    names = events.dtype.names or ()
    if not len(events):
        return
    x_max = int(events["x"].max()) if "x" in names else 0
    y_max = int(events["y"].max()) if "y" in names else 0
    p_max = int(events["p"].max()) if "p" in names and polarities > 1 else 0
    low = min(int(events[f].min()) for f in ("x", "y", "p") if f in names)
    if x_max >= width or y_max >= height or p_max >= polarities or low < 0:
        raise DataError(f"{where}: events outside the {width}x{height} sensor or its {polarities} "
                        f"polarit{'ies' if polarities > 1 else 'y'} (x <= {x_max}, y <= {y_max}): not a recording of "
                        "this data set, or a corrupt one")


def bin_events(events: np.ndarray, time_steps: int, where: str = "events",
               sensor_size: tuple[int, int, int] = SENSOR_SIZE) -> np.ndarray:
    """Events -> (time_steps, polarities, height, width) uint8 spike frames (T, p, y, x);
    sensor_size is tonic's (width, height, polarities), N-MNIST's (34, 34, 2) by default.
    Events without a y field (audio: SHD) sit in row 0; a one-polarity sensor puts every
    event in channel 0 (SHD's events carry p = 1).

    The recording's span [t_first, t_last] is cut into `time_steps` equal bins and a pixel
    that saw at least one event of a polarity within a bin spikes once in that frame, as a
    Loihi input axon carries one spike per step. Every event lands in a bin. (tonic's
    `ToFrame(n_time_bins=T)` floors the bin width to whole microseconds and uses half-open
    bins, so it silently drops the events at the last timestamp; hence this binning.)
    """
    _check_events(events, where, sensor_size)
    width, height, polarities = sensor_size
    frames = np.zeros((time_steps, polarities, height, width), dtype=np.uint8)
    if len(events) == 0:
        return frames
    names = events.dtype.names
    zeros = np.zeros(len(events), dtype=np.int64)
    t = events["t"].astype(np.int64)
    span = int(t.max() - t.min()) + 1
    bins = np.minimum((t - t.min()) * time_steps // span, time_steps - 1)
    p = events["p"].astype(np.int64) if "p" in names and polarities > 1 else zeros
    y = events["y"].astype(np.int64) if "y" in names else zeros
    frames[bins, p, y, events["x"].astype(np.int64)] = 1
    return frames


def load_nmnist_split(root: str | Path, train: bool, time_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """All samples of ROOT/Train (train=True) or ROOT/Test as (frames (N, T, 2, 34, 34) uint8, labels)."""
    root = Path(root)
    local = local_tonic_class("NMNIST", root, lambda d: any((root / d.folder_name).glob("*/*.bin")),
                              f"N-MNIST files not found in {root / ('Train' if train else 'Test')} "
                              "(expected <digit>/*.bin; nothing is downloaded)")
    dataset = local(save_to=str(root), train=train)
    check_memory(len(dataset) * time_steps * 2 * 34 * 34 * (1 + 4),  # uint8 frames, then their float32 copy
                 f"{root}: {len(dataset)} N-MNIST samples of {time_steps} time bins (encoding.time_steps)")
    frames = np.empty((len(dataset), time_steps, 2, 34, 34), dtype=np.uint8)
    labels = np.empty(len(dataset), dtype=np.int64)
    files = getattr(dataset, "data", None)  # tonic's list of the recordings' paths
    for i in range(len(dataset)):
        where = str(files[i]) if files is not None and i < len(files) else f"{root}: recording {i}"
        try:
            events, label = dataset[i]
        except (OSError, ValueError, IndexError) as exc:
            raise DataError(f"{where}: cannot be read as an N-MNIST recording ({one_line(exc)})") from exc
        frames[i] = bin_events(events, time_steps, where)
        labels[i] = label
    return frames, labels


def load_nmnist_dataset(root: str | Path, time_steps: int) -> Dataset:
    """N-MNIST binned to `time_steps` frames. With ROOT/Test present it is the test set;
    otherwise ROOT/Train is split 80/20, stratified per digit with a fixed seed, so a subset
    such as ../shared/data/nmnist (1,000 training recordings) gives a train and a test set."""
    root = Path(root)
    if not (root / "Train").is_dir():
        raise DataError(f"N-MNIST folder {root} has no Train/ subfolder (expected the original layout "
                        "Train/<digit>/<NNNNN>.bin)")
    frames, labels = load_nmnist_split(root, True, time_steps)
    if len(labels) == 0:
        raise DataError(f"no N-MNIST .bin files under {root / 'Train'}")
    if (root / "Test").is_dir():
        test_frames, test_labels = load_nmnist_split(root, False, time_steps)
        train, test = Split(frames.astype(np.float32), labels), Split(test_frames.astype(np.float32), test_labels)
    else:
        train, test = stratified_split(frames.astype(np.float32), labels, NMNIST_TEST_FRACTION,
                                       NMNIST_SPLIT_SEED)
    return Dataset(name="nmnist", train=train, test=test, num_classes=10)


def write_nmnist_file(path: str | Path, x, y, polarity, timestamp_us) -> None:
    """Writes events in N-MNIST's 40-bit format (timestamps below 2^23 us, ~8.4 s)."""
    x, y, p, t = (np.asarray(a, dtype=np.int64) for a in (x, y, polarity, timestamp_us))
    if len(x) and (x.max() > 255 or y.max() >= 240 or t.max() >= 1 << 23 or t.min() < 0):
        raise DataError("events out of range: x < 256, y < 240, 0 <= t < 2^23 us")
    raw = np.empty((len(x), 5), dtype=np.uint8)
    raw[:, 0] = x
    raw[:, 1] = y
    raw[:, 2] = (p.astype(np.uint8) << 7) | ((t >> 16) & 0x7F)
    raw[:, 3] = (t >> 8) & 0xFF
    raw[:, 4] = t & 0xFF
    with atomic_write(path) as handle:
        handle.write(raw.tobytes())
