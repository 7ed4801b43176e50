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
