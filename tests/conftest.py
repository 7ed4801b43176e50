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


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A digits MLP 64-64-10 (T = 8) trained for a few epochs: (checkpoint path, RunConfig).

    Trained once per test session and shared by the export, emulator, Lava and fidelity tests.
    """
    from trainer.config import config_from_dict
    from trainer.train import train

    out = tmp_path_factory.mktemp("trained_digits")
    config = config_from_dict(
        {
            "seed": 7,
            "output_dir": str(out),
            "data": {"name": "digits"},
            "encoding": {"kind": "bernoulli", "time_steps": 8},
            "model": {"layers": [{"type": "dense", "units": 64}, {"type": "dense", "units": 10}]},
            "training": {"epochs": 4, "batch_size": 32, "learning_rate": 0.002, "device": "cpu"},
        }
    )
    result = train(config, progress=False)
    return result.checkpoint_path, config
