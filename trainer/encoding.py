"""Input encoders: static images and event frames to spike tensors (batch, time, ...).

Pure functions; the random source is always passed in, so every backend (PyTorch,
emulator, Lava) can be fed the very same input spikes.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from netgraph.encodings import ENCODINGS
from netgraph.errors import ConfigError


def bernoulli_encode(
    images: torch.Tensor, time_steps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bernoulli rate coding (Wu et al. 2018, section 3.2).

    images: (batch, ...) intensities in [0, 1], the spike probability per time step.
    Returns (batch, time_steps, ...) of 0.0/1.0 in the images' dtype.
    """
    if time_steps < 1:
        raise ConfigError(f"time_steps must be >= 1, got {time_steps}")
    shape = (images.shape[0], time_steps, *images.shape[1:])
    draws = torch.rand(shape, generator=generator, device=images.device, dtype=images.dtype)
    return (draws < images.unsqueeze(1)).to(images.dtype)


def passthrough_events(frames: torch.Tensor, time_steps: int) -> torch.Tensor:
    """Event frames already binned to (batch, time, ...): clipped to spikes {0, 1}.

    Several events of one pixel in one bin still make one spike, as on the chip.
    """
    if frames.shape[1] != time_steps:
        raise ConfigError(
            f"event tensor has {frames.shape[1]} time bins but the model expects {time_steps}"
        )
    return (frames > 0).to(torch.float32)


def encode(
    kind: str, batch: torch.Tensor, time_steps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Dispatches on the encoding name ('bernoulli' or 'events')."""
    if kind == "bernoulli":
        return bernoulli_encode(batch, time_steps, generator)
    if kind == "events":
        return passthrough_events(batch, time_steps)
    raise ConfigError(f"unknown encoding {kind!r}; choose one of {', '.join(ENCODINGS)}")



EVAL_CHUNK = 1024


def iter_encoded_batches(
    kind: str, inputs: np.ndarray, time_steps: int, seed: int, chunk: int = EVAL_CHUNK
) -> Iterator[tuple[slice, torch.Tensor]]:
    """The evaluation encoding: fixed seed and fixed chunking, in data order, on CPU.

    Every consumer (trainer evaluation, emulator, Lava, fidelity harness) draws the test
    spikes through this function, so all of them see identical spikes for a given seed.
    inputs: a split's inputs (N, ...). Yields (sample slice, spikes (chunk, T, ...) float32 0/1).
    """
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(inputs), chunk):
        window = slice(start, min(start + chunk, len(inputs)))
        batch = torch.from_numpy(np.ascontiguousarray(inputs[window])).float()
        yield window, encode(kind, batch, time_steps, generator)


def encode_split(kind: str, inputs: np.ndarray, time_steps: int, seed: int) -> np.ndarray:
    """All evaluation spikes of a split's inputs as uint8 (N, T, ...), see `iter_encoded_batches`."""
    return np.concatenate(
        [s.to(torch.uint8).numpy() for _, s in iter_encoded_batches(kind, inputs, time_steps, seed)]
    )
