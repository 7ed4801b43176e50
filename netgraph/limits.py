"""Documented limits on what a file may make this program allocate or compute.

Every size a file declares (a config's time steps, an artifact's shapes, a conv's padding)
is checked against these before anything is allocated, so a corrupted or hostile file ends
in one line naming the node and the estimate instead of a MemoryError, a hang or a machine
that swaps. The limits are far above any network a Loihi system runs:

    MAX_TIME_STEPS        1,000,000 steps per sample (SHD at 1 ms is 1,000; N-MNIST 300)
    MAX_DIMENSION         2^24 along any one axis of a shape
    MAX_ELEMENTS          2^31 elements in any one declared tensor or population
    memory_limit()        bytes one emulation batch, one sample's Lava recording or one
                          unrolled conv matrix may take: 8 GiB by default, or the
                          STBP_MAX_BYTES environment variable (bytes; e.g. 64e9 on a large
                          machine)
    MAX_YAML_BYTES        1 MiB per YAML config or hardware config
    MAX_YAML_DEPTH        50 levels of nesting in a YAML file
"""
from __future__ import annotations

import math
import os

from netgraph.errors import ResourceLimitError

MAX_TIME_STEPS = 1_000_000
MAX_DIMENSION = 1 << 24
MAX_ELEMENTS = 1 << 31
DEFAULT_MEMORY_LIMIT = 8 << 30
MEMORY_LIMIT_VARIABLE = "STBP_MAX_BYTES"
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 50


def memory_limit() -> int:
    """Bytes one allocation-heavy step may take (see the module docstring)."""
    raw = os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_MEMORY_LIMIT
    try:
        value = float(raw)
    except ValueError:
        raise ResourceLimitError(f"{MEMORY_LIMIT_VARIABLE}={raw!r} is not a number of bytes") from None
    if not (math.isfinite(value) and value >= 1):
        raise ResourceLimitError(f"{MEMORY_LIMIT_VARIABLE}={raw!r} must be a positive number of bytes")
    return int(value)


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def check_memory(estimate: int, what: str) -> None:
    """Refuses `what` (naming the node or file) when it would take more than memory_limit()."""
    limit = memory_limit()
    if estimate > limit:
        raise ResourceLimitError(f"{what} would take {format_bytes(estimate)}, more than the limit of "
                                 f"{format_bytes(limit)} (set {MEMORY_LIMIT_VARIABLE} to raise it)")


def check_time_steps(value: int, what: str) -> None:
    if value > MAX_TIME_STEPS:
        raise ResourceLimitError(f"{what}: time_steps = {value} is more than the limit of {MAX_TIME_STEPS:,}")


def check_shape(shape, what: str) -> None:
    """Every dimension in [1, MAX_DIMENSION] and at most MAX_ELEMENTS elements."""
    for size in shape:
        if not 1 <= int(size) <= MAX_DIMENSION:
            raise ResourceLimitError(f"{what}: dimension {size} of shape {tuple(shape)} is outside "
                                     f"[1, {MAX_DIMENSION:,}]")
    if math.prod(int(s) for s in shape) > MAX_ELEMENTS:
        raise ResourceLimitError(f"{what}: shape {tuple(shape)} holds more than {MAX_ELEMENTS:,} elements")
