"""What happens to Lava's processes when this process is interrupted or killed.

Lava 0.10.0 forks, when a runtime is built (`create_runtime`, the first `run`), one worker per model
and per runtime service (SystemProcess) and a SharedMemoryManager server that owns the
channels' segments in /dev/shm. Left as they are, those children share this process's
process group and signal handlers, so (measured with `stbp run`, see tests/test_signals.py):

- a signal sent to the process group (a terminal's Ctrl-C, `kill -TERM -PGID`) reaches
  every worker and the manager at once: workers that inherited the CLI's SIGTERM handler
  each print a traceback, or end the run with "a Lava worker ended" (exit 2), and the
  manager dies without unlinking its segments (the resource tracker warns, then does);
- a signal that arrives while Lava forks is handled inside an at-fork callback (logging's
  `_releaseLock`), where Python prints the exception and drops it: the run goes on;
- a process that dies at once (SIGKILL; SIGTERM before the CLI handled it) leaves every
  worker blocked forever, with the manager and the resource tracker.

So, while `starting_runtime()` is active, every child that the starting thread forks is
put into its own process group (signals sent to the user's group reach only this process,
which then stops the workers in order), gets the default action of SIGTERM and SIGHUP and SIGINT ignored
(`terminate()` ends it silently), and asks the kernel to SIGKILL it when its parent thread
dies (Linux prctl PR_SET_PDEATHSIG), so that no worker outlives a killed run. SIGINT and
SIGTERM received meanwhile are held and raised once the start is over (`held_signals`).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from multiprocessing import resource_tracker
from typing import Callable, Iterator

HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # the signals the CLI turns into exceptions
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

# Identity of the thread now starting a runtime (children it forks are isolated), and of
# that process: a child compares its parent's pid with it to notice a parent that died first.
_starter: tuple[int, int] | None = None
_hook_registered = False
_prctl: Callable[..., int] | None = None


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved in the parent (a forked child only calls it); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(parent_pid: int) -> None:
    """Asks for SIGKILL when the forking thread dies; dies now if the parent already has."""
    if _prctl is None or _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    if os.getppid() != parent_pid:  # the parent died between fork() and prctl()
        os.kill(os.getpid(), signal.SIGKILL)


def _isolate_child() -> None:
    """at-fork hook (in every child): isolates only the children of a starting runtime, as
    the module docstring says. It must never raise: Python would print and ignore it."""
    starter = _starter
    if starter is None or starter[0] != threading.get_ident():
        return
    try:
        os.setpgid(0, 0)
        _die_with_parent(starter[1])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (OSError, ValueError):  # ValueError: forked from a thread Python does not take for the main one
        pass


@contextlib.contextmanager
def held_signals(signums: tuple[int, ...] = HELD) -> Iterator[None]:
    """Holds `signums` while inside, then has the handlers that were in place act on the
    first one received (KeyboardInterrupt, the CLI's Terminated...): nothing is swallowed,
    and nothing interrupts what must not be cut in half (forking, stopping workers). Only
    the main thread handles signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])


def _start_resource_tracker() -> None:
    """Starts multiprocessing's resource tracker (which unlinks the segments a dead
    shared-memory manager leaves) with SIGHUP ignored: it ignores SIGINT and SIGTERM itself
    but not SIGHUP, so a closed terminal would end it first; an ignored disposition survives
    the exec that starts it. Does nothing when it runs already or outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


@contextlib.contextmanager
def starting_runtime() -> Iterator[None]:
    """Around the call that makes Lava fork a runtime's workers and its shared-memory
    manager: isolates every child this thread forks meanwhile and holds SIGINT, SIGTERM and SIGHUP."""
    global _starter, _hook_registered, _prctl
    if not _hook_registered:
        _prctl = _load_prctl()
        os.register_at_fork(after_in_child=_isolate_child)
        _hook_registered = True
    _start_resource_tracker()
    previous = _starter
    _starter = (threading.get_ident(), os.getpid())
    try:
        with held_signals():
            yield
    finally:
        _starter = previous
