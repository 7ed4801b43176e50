"""What every data set loader returns: splits of inputs and labels, and the one error type."""
from __future__ import annotations

from dataclasses import dataclass

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
