"""What every data set loader returns: splits of inputs and labels, and the one error type."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from netgraph.errors import DataError


@dataclass(frozen=True)
class Split:
    inputs: np.ndarray  # float32 (N, C, H, W) in [0, 1], or (N, T, C, H, W) event frames
    labels: np.ndarray  # int64 (N,)

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise DataError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")

    def head(self, limit: int | None) -> "Split":
        return self if limit is None else Split(self.inputs[:limit], self.labels[:limit])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])


def stratified_split(inputs: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, test): round(test_fraction x n) samples of each class (in label order) drawn into
    the test split with numpy's PCG64 from `seed` (stable across versions, so the same samples
    are held out on every machine); inputs (N, ...), labels (N,)."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        is_test[rng.permutation(members)[: round(len(members) * test_fraction)]] = True
    return Split(inputs[~is_test], labels[~is_test]), Split(inputs[is_test], labels[is_test])


def local_tonic_class(name: str, root: Path, exists: Callable[[object], bool], missing: str):
    """tonic.datasets.<name> reading the folder `root` as is and never downloading: tonic's own
    class fetches its archive when its existence check fails; here `exists(dataset)` is that
    check and a download raises DataError(`missing`). Construct with save_to=str(root)."""
    import tonic.datasets  # tonic imports torch (~3 s): only when an event data set is read

    class Local(getattr(tonic.datasets, name)):
        @property
        def location_on_system(self) -> str:
            return str(root)

        @location_on_system.setter
        def location_on_system(self, _value) -> None:
            pass  # tonic appends its class name to save_to; the user's folder is used as is

        def _check_exists(self) -> bool:
            return exists(self)

        def download(self) -> None:
            raise DataError(missing)

        def _copy_and_extract_local_data(self) -> None:
            self.download()

    Local.__name__ = Local.__qualname__ = f"Local{name}"
    return Local
