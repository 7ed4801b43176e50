"""One taxonomy of the errors a user can act on: one class per boundary of the toolchain.

Every error that bad input can cause (a config, a data set, a checkpoint, an artifact, a
hardware config, a Lava run, a NIR file) is a `StbpError` whose message is one line naming
the file, node, key or parameter. The command line prints that line and exits 2; anything
that is not a `StbpError` is a bug and keeps its traceback. They stay `ValueError`s, so
code that catches bad values the Python way keeps working.

Interruptions are not errors: `Terminated` is raised in the main thread when the process
receives SIGTERM or SIGHUP (see `raise_on_sigterm`), like `KeyboardInterrupt` for SIGINT, so
that every `finally` (stopping Lava, removing a temporary file) runs before the process ends.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (whitespace runs folded), or its type's name."""
    return " ".join(str(exc).split()) or type(exc).__name__


def shown(value, width: int = 60) -> str:
    """A value's repr for a one-line message, cut short: a corrupted file may hold a huge one."""
    text = repr(value)
    return text if len(text) <= width else f"{text[:40]}... ({type(value).__name__} of {len(text):,} characters)"


class StbpError(ValueError):
    """Bad input the user can fix; the message is one line naming the file, node or key."""


class UsageError(StbpError):
    """Command-line arguments that contradict each other or the files they name."""


class ConfigError(StbpError):
    """A run config is missing, malformed or inconsistent."""


class DataError(StbpError):
    """A data set is missing, malformed or inconsistent."""


class CheckpointError(StbpError):
    """A checkpoint file is missing, corrupt, or does not fit the requested run."""


class ArtifactError(StbpError):
    """An artifact file is missing, of an unknown schema, or its graph or tensors are wrong."""


class HardwareConfigError(StbpError):
    """A hardware config is missing or malformed, or a network does not fit it."""


class GraphError(StbpError):
    """A network graph is malformed: an error names the node or the edge (source -> target)."""


class LavaRunError(StbpError):
    """A Lava run could not start, failed, or did not produce its recordings."""


class FidelityError(StbpError):
    """What is to be compared does not belong together (checkpoint, artifact, data, reference spikes)."""


class InterchangeError(StbpError):
    """A file of another framework (NIR, lava-dl netx) or the framework itself does not fit."""


class TrainingError(StbpError):
    """Training cannot go on (a loss that became NaN or infinite, a device that is missing)."""


class ResourceLimitError(StbpError):
    """A declared size would allocate more than the documented limit (netgraph.limits)."""


class Terminated(BaseException):
    """The process received SIGTERM (or SIGHUP: its terminal closed): raised like
    KeyboardInterrupt so that cleanup runs. `signum` is the signal's number."""

    def __init__(self, signum: int):
        super().__init__(f"received signal {signal.Signals(signum).name}")
        self.signum = signum


TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise `Terminated` in the main thread (instead of
    ending the process at once, which would leave Lava's worker processes and shared memory
    behind). Does nothing outside the main thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_terminated) for signum in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
