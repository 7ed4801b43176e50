"""Versions, seeds and atomic file writes: what every artifact records about its origin.

Torch-free, so the exporter's artifact reader and the Lava backend can use it too.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterator

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


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, epoch, stream id), stable everywhere."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator:
    """Writes to a temporary file beside `path`, fsyncs and renames it into place.

    A crash or Ctrl-C never leaves a half-written file at `path`; the old file (if any)
    stays intact until the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
