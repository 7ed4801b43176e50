"""Versions, seeds and atomic file writes: what every artifact records about its origin.

Torch-free, so the exporter's artifact reader and the Lava backend can use it too.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import stat
import subprocess
import sys
import tempfile
from importlib import metadata
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterator, Sequence

PACKAGE_NAME = "stbp-loihi"
_TRACKED_PACKAGES = ("stbp-loihi", "torch", "numpy", "onnx", "lava-nc", "scikit-learn", "tonic")


def package_versions() -> dict[str, str]:
    """Python, platform and the versions of the packages that shape results."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _TRACKED_PACKAGES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            # The runtime version carries the build (e.g. torch's '+cu130').
            versions[name] = str(module.__version__)
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    commit = git_commit()
    if commit:
        versions["git_commit"] = commit
    return versions


def git_commit() -> str | None:
    """The source tree's commit (with '+dirty' for uncommitted changes), if it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )
        commit = head.stdout.strip() if head.returncode == 0 else ""
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) if commit else None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"key(s) {', '.join(repr(k[:40]) for k in repeated)} given twice")
    return dict(pairs)


def read_json(text: str):
    """JSON as every file this program writes records it: an object's keys must be unique
    (json.loads would keep the last of repeated keys, another reader maybe the first, so two
    tools could read the file as different things). Raises ValueError (json.JSONDecodeError,
    repeated keys, or nesting too deep for the parser)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None


_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")


def read_integer(text: str) -> int:
    """An integer as every file this program writes records it: str(int), at most 20 digits
    (so "1_000", " 12", "1e3", "007" or a 5,000-digit number are refused). Raises ValueError."""
    if not _INTEGER_TEXT.fullmatch(text) or str(int(text)) != text:
        raise ValueError(f"not an integer written in decimal: {text[:40]!r}")
    return int(text)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, epoch, stream id), stable everywhere."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


_TMP_SUFFIX = ".tmp"
_BACKUP_SUFFIX = ".bak"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def _leftover_pattern(path: Path) -> re.Pattern:
    """`.<name>.<pid>.<8 random characters>.tmp|.bak`: the whole name, so the temporaries of a
    sibling such as `<name>.99999` never match."""
    return re.compile(re.escape(_tmp_prefix(path)) + r"(\d+)\.[a-z0-9_]{8}(\.tmp|\.bak)")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Removes the temporary and backup files that interrupted writes of `path` left beside it
    (their name carries the writing process's id; those of a process still running are kept)."""
    removed = []
    pattern = _leftover_pattern(path)
    for candidate in path.parent.glob(f"{glob_escape(_tmp_prefix(path))}*"):
        match = pattern.fullmatch(candidate.name)
        if match and not _process_alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, which would
    race with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode a plain open() would give `path`: the existing file's, else 0o666 less the umask
    (mkstemp creates 0o600 whatever the umask)."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(os.stat(path).st_mode)
    return 0o666 & ~_umask()


def _open_temporary(path: Path, mode: str, temporaries: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}.", suffix=_TMP_SUFFIX, dir=path.parent)
    temporaries.append(tmp)
    try:
        os.fchmod(fd, _new_file_mode(path))
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def _commit(temporaries: list[str], paths: list[Path]) -> None:
    """Renames every temporary onto its path, or none: an existing file is first linked to a
    backup, and if any rename fails the files already replaced get their backups back."""
    for path in paths:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    backups: dict[Path, str] = {}
    replaced: list[Path] = []
    try:
        for path in paths:
            if path.exists():
                backup = tempfile.mktemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}.", suffix=_BACKUP_SUFFIX,
                                         dir=path.parent)
                os.link(path, backup)  # the old file stays reachable until every rename succeeded
                backups[path] = backup
        for tmp, path in zip(temporaries, paths):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
            replaced.append(path)
    except BaseException:
        for path in replaced:
            if path in backups:
                os.replace(backups.pop(path), path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        raise
    finally:
        for backup in backups.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)


@contextlib.contextmanager
def atomic_files(paths: Sequence[str | Path], mode: str = "wb") -> Iterator[list]:
    """Writes several files as one unit: each to a temporary file beside it, and only when every
    one of them is complete and fsynced are they renamed into place, all or none (`_commit`):
    a crash, a full disk, a failed rename or Ctrl-C while writing leaves the old files as they
    were and no new one (a power cut between two renames is the one window left). Temporary
    files left by an interrupted earlier write of the same paths are removed first."""
    paths = [Path(p) for p in paths]
    temporaries: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(_open_temporary(path, mode, temporaries)) for path in paths]
            yield handles
            for handle in handles:
                handle.flush()
                os.fsync(handle.fileno())
        _commit(temporaries, paths)
    except BaseException:
        for tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator:
    """Writes one file atomically (see atomic_files): the old file stays intact until the new
    one is complete."""
    with atomic_files([path], mode) as (handle,):
        yield handle


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
