"""`stbp run` under SIGINT and SIGTERM, sent to the process and to its process group (a
terminal's Ctrl-C, `kill -TERM -PGID`), at Lava's start and mid-run: exit 130/143 with one
line on stderr, no traceback or segmentation fault, no process of the run's session and no
/dev/shm segment of it left behind. And `--shards` capped at the cores and the samples."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lava", reason="the Lava backend needs lava-nc (Python 3.10, `pip install -e .[lava]`)")
if not sys.platform.startswith("linux"):
    pytest.skip("reads /proc and /dev/shm", allow_module_level=True)

from conftest import REPO_ROOT  # noqa: E402
from export.artifact import save_artifact  # noqa: E402
from helpers import chain_structure, integer_network  # noqa: E402
from lava_backend import lifecycle  # noqa: E402
from lava_backend.runner import run_network  # noqa: E402
from netgraph import Input  # noqa: E402
from stbp_cli.main import main  # noqa: E402

_SCRIPT = Path(sys.executable).with_name("stbp")  # the console script of this environment
STBP = ([str(_SCRIPT)] if _SCRIPT.is_file()
        else [sys.executable, "-c", "import sys; from stbp_cli.main import main; sys.exit(main())"])
TIME_STEPS = 100  # 200 digits samples: 20,000 Lava steps, several seconds on one core
PROCESSES_PER_RUNTIME = 7  # the shared-memory manager, 5 process models, 1 runtime service
MESSAGES = {signal.SIGINT: (130, "stbp run: interrupted"), signal.SIGTERM: (143, "stbp run: terminated"),
            signal.SIGHUP: (129, "stbp run: terminated")}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A digits-shaped (1, 8, 8) chain 64-64-10 with integer parameters, T = 100."""
    structure = chain_structure([64, 64, 10])
    structure = structure.replace(nodes=[Input("input", (1, 8, 8))])
    network = integer_network(structure, TIME_STEPS, np.random.default_rng(0), vth=100)
    path = tmp_path_factory.mktemp("signals") / "chain.onnx"
    save_artifact(network, path)
    return path


# --------------------------------------------------------------------------- /proc and /dev/shm


def _stat(pid: str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return None


def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session."""
    found = []
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else None
        if fields and int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry))
    return found


def children(pid: int) -> list[bytes]:
    """The command lines of the children of `pid`."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    found.append(Path(f"/proc/{child}/cmdline").read_bytes())
    return found


def lava_started(pid: int, processes: int) -> bool:
    """Lava has started building a runtime (the resource tracker runs: SharedMemoryManager
    starts it, just before forking its server) and has forked `processes` processes of its
    own (its workers and managers run this program; so does, briefly, a fork_exec child
    such as the `ldconfig` that importing torch starts, hence the tracker)."""
    with contextlib.suppress(OSError):
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
        found = children(pid)
        return any(b"resource_tracker" in c for c in found) and sum(c == own for c in found) >= processes
    return False


def shm_entries() -> set[str]:
    uid = os.getuid()
    entries = set()
    for name in os.listdir("/dev/shm"):
        with contextlib.suppress(OSError):
            if os.stat(f"/dev/shm/{name}").st_uid == uid:
                entries.add(name)
    return entries


def mapped_elsewhere(names: set[str]) -> set[str]:
    """Those of `names` that a live process maps: segments of other runs on this machine."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                maps = Path(f"/proc/{entry}/maps").read_text()
                found |= {name for name in names if f"/dev/shm/{name}" in maps}
    return found


def wait_until(condition, timeout_s: float, poll_s: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


# --------------------------------------------------------------------------- one interrupted run


def interrupted_run(artifact: Path, args: list[str], send) -> tuple[subprocess.Popen, str, set[str]]:
    """Starts `stbp run` in a new session, calls `send(process)` and waits for the exit (and for
    every process of the session to end). Returns the process, its stderr and the /dev/shm
    entries it left."""
    before = shm_entries()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a segmentation fault prints "Fatal Python error"
    process = subprocess.Popen([*STBP, "run", str(artifact), "--backend", "fixed_pt", "--data", "digits",
                                "--no-progress", *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        send(process)
        _, err = process.communicate(timeout=60)
        wait_until(lambda: not session_processes(process.pid), 5, 0.05)
        survivors = session_processes(process.pid)
        assert survivors == [], f"processes of the run still alive: {survivors}\n{err[-3000:]}"
    finally:
        for pid in session_processes(process.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        process.communicate()
    left = shm_entries() - before
    left -= mapped_elsewhere(left)
    for name in left:  # clean up, so that the next trial starts from a clean /dev/shm
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{name}")
    return process, err, left


def _cases():
    """10 trials per signal: to the process and to its group; while Lava forks the first
    runtime ('starting') and once every runtime runs ('running'); one runtime or --shards 2."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        for i in range(10):
            target, moment, shards = ("pid", "group")[i % 2], ("starting", "running")[i // 2 % 2], (1, 2)[i // 4 % 2]
            yield pytest.param(signum, target, moment, shards, id=f"{signum.name}-{target}-{moment}-{shards}shard-{i}")
    # SIGHUP (the terminal closed) ends the run as SIGTERM does.
    yield pytest.param(signal.SIGHUP, "group", "starting", 1, id="SIGHUP-group-starting-1shard")
    yield pytest.param(signal.SIGHUP, "pid", "running", 2, id="SIGHUP-pid-running-2shard")


@pytest.mark.parametrize("signum, target, moment, shards", list(_cases()))
def test_a_signal_stops_the_run_and_every_lava_process(artifact, signum, target, moment, shards):
    forked = PROCESSES_PER_RUNTIME * shards if moment == "running" else 0

    def send(process):
        assert wait_until(lambda: process.poll() is not None or lava_started(process.pid, forked), 60), \
            f"Lava did not start within 60 s: {children(process.pid)}"
        assert process.poll() is None, f"ended before the signal: {process.communicate()[1][-3000:]}"
        if moment == "running":
            time.sleep(0.3)
        (os.kill if target == "pid" else os.killpg)(process.pid, signum)

    args = ["--limit", "200"] + (["--shards", "2"] if shards == 2 else [])
    process, err, left = interrupted_run(artifact, args, send)
    status, line = MESSAGES[signum]
    assert process.returncode == status, f"exit status {process.returncode}: {err[-3000:]}"
    assert err.strip().splitlines()[-1] == line, err[-3000:]
    for bad in ("Traceback", "Segmentation fault", "Fatal Python error", "leaked"):
        assert bad not in err, err[-3000:]
    assert left == set(), f"shared memory left in /dev/shm: {sorted(left)}"


def test_a_killed_run_leaves_no_worker(artifact):
    # SIGKILL cannot be handled: the workers die with their parent (PR_SET_PDEATHSIG), and the
    # resource tracker (which warns) unlinks the segments the shared-memory manager did not.
    def send(process):
        assert wait_until(lambda: process.poll() is not None or lava_started(process.pid, PROCESSES_PER_RUNTIME), 60)
        assert process.poll() is None, f"ended before the signal: {process.communicate()[1][-3000:]}"
        time.sleep(0.3)
        os.kill(process.pid, signal.SIGKILL)

    process, err, left = interrupted_run(artifact, ["--limit", "200"], send)
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    assert left == set(), f"shared memory left in /dev/shm: {sorted(left)}"


# --------------------------------------------------------------------------- the pieces


def test_signals_received_while_held_are_raised_after():
    with pytest.raises(KeyboardInterrupt):
        with lifecycle.held_signals():
            signal.raise_signal(signal.SIGINT)
            reached = True  # not interrupted inside
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _report(conn) -> None:
    conn.send((os.getpgid(0), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)))


def test_children_forked_while_a_runtime_starts_are_isolated():
    context = multiprocessing.get_context("fork")
    results = []
    for isolated in (True, False):
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_report, args=(send,))
        with lifecycle.starting_runtime() if isolated else contextlib.nullcontext():
            child.start()
        results.append(receive.recv())
        child.join(10)
        assert child.exitcode == 0
    (group, term, interrupt), (plain_group, _, _) = results
    assert group not in (os.getpgid(0), plain_group) and plain_group == os.getpgid(0)
    assert term == signal.SIG_DFL and interrupt == signal.SIG_IGN


def test_shards_are_capped_at_the_cores_and_the_samples(artifact, capsys):
    cores = len(os.sched_getaffinity(0))
    expected = min(cores, 3)
    network = integer_network(chain_structure([4, 3]), 2, np.random.default_rng(1))
    result = run_network(network, np.ones((3, 2, 4), np.uint8), shards=25, progress=False)
    assert result.shards == expected and result.samples == 3
    assert f"25 shards requested, {expected} run" in result.notes[0]
    assert main(["run", str(artifact), "--data", "digits", "--limit", "3", "--shards", "25", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"note: 25 shards requested, {expected} run: at most one per available CPU core ({cores}) " \
           f"and one per sample (3)" in out
    assert f"Lava fixed_pt, {expected} runtime(s)" in out
