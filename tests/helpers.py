"""Small builders shared by tests."""
from __future__ import annotations

from trainer.config import RunConfig, config_from_dict


def tiny_digits_config(tmp_path, **training) -> RunConfig:
    """A fast digits run: 64-32-10, T = 6, a subset of the data."""
    return config_from_dict(
        {
            "seed": 3,
            "output_dir": str(tmp_path / "run"),
            "data": {"name": "digits", "train_limit": 300, "test_limit": 120},
            "encoding": {"kind": "bernoulli", "time_steps": 6},
            "model": {"layers": [{"type": "dense", "units": 32}, {"type": "dense", "units": 10}]},
            "training": {"epochs": 2, "batch_size": 32, "learning_rate": 0.002, "device": "cpu", **training},
        }
    )
