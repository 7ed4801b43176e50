"""Shared fixtures. Data-driven tests use ../shared/data when present and skip otherwise."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("STBP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_mnist() -> Path:
    path = SHARED_DATA / "mnist"
    if not (path / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not found in {path} (they live beside the repo, not in it)")
    return path


@pytest.fixture
def shared_nmnist() -> Path:
    path = SHARED_DATA / "nmnist" / "Train"
    if not path.is_dir():
        pytest.skip(f"real N-MNIST samples not found in {path} (they live beside the repo, not in it)")
    return path
