"""Config validation, data loaders and the encoder: clear errors naming file and key."""
import gzip
import struct

import numpy as np
import pytest
import torch

from trainer.config import ConfigError, config_from_dict, load_config
from spikedata import DataError, load_digits_dataset, load_mnist_dataset, read_idx
from trainer.encoding import bernoulli_encode, encode

VALID = {"model": {"layers": [{"type": "dense", "units": 10}]}}


def test_shipped_configs_are_valid(tmp_path):
    from pathlib import Path

    for path in (Path(__file__).parent.parent / "configs").glob("*.yaml"):
        load_config(path)


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"model": {"layers": []}}, r"model.layers: a non-empty list"),
        ({"model": {"layers": [{"type": "dense", "units": -3}]}}, r"model.layers\[0\].units: must be a positive"),
        ({"model": {"layers": [{"type": "dense"}]}}, r"model.layers\[0\].units: required"),
        ({"model": {"layers": [{"type": "lstm", "units": 3}]}}, r"model.layers\[0\].type: 'lstm' is not one of"),
        ({**VALID, "model": {**VALID["model"], "surrogate": "h9"}}, r"model.surrogate: 'h9'"),
        ({**VALID, "model": {**VALID["model"], "tau": 1.5}}, r"model.tau: decay factor"),
        ({**VALID, "training": {"epochs": "ten"}}, r"training.epochs: expected int"),
        ({**VALID, "training": {"device": "tpu"}}, r"training.device"),
        ({**VALID, "trainig": {}}, r"unknown key\(s\) trainig"),
        ({**VALID, "data": {"name": "mnist"}}, r"data.path: the mnist dataset needs"),
        ({**VALID, "encoding": {"time_steps": 0}}, r"encoding.time_steps: must be a positive"),
    ],
)
def test_bad_configs_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, "my.yaml")
    with pytest.raises(ConfigError, match="my.yaml"):
        config_from_dict(raw, "my.yaml")


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_digits_split_is_fixed_and_stratified():
    a, b = load_digits_dataset(), load_digits_dataset()
    assert np.array_equal(a.test.labels, b.test.labels) and np.array_equal(a.test.inputs, b.test.inputs)
    assert len(a.train.labels) + len(a.test.labels) == 1797
    counts = np.bincount(a.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert a.train.inputs.shape[1:] == (1, 8, 8)
    assert 0.0 <= a.train.inputs.min() and a.train.inputs.max() == 1.0


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mnist_loader_reads_plain_and_gz_idx(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28))
    labels = np.array([3, 1, 4, 1, 5])
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:2])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:2], gz=True)
    ds = load_mnist_dataset(tmp_path)
    assert ds.train.inputs.shape == (5, 1, 28, 28)
    assert np.allclose(ds.train.inputs[:, 0] * 255, images)
    assert ds.test.labels.tolist() == [3, 1]


def test_mnist_loader_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_mnist_dataset(tmp_path / "missing")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist_dataset(tmp_path)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="bad-idx: not an idx file"):
        read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(DataError, match="short-idx: header declares"):
        read_idx(short)


def test_real_mnist_files(shared_mnist):
    ds = load_mnist_dataset(shared_mnist)
    assert ds.train.inputs.shape == (60000, 1, 28, 28) and ds.test.inputs.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.test.labels).tolist()[:3] == [980, 1135, 1032]


def test_bernoulli_rates_follow_intensity():
    images = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    spikes = bernoulli_encode(images.repeat(2000, 1), 10, torch.Generator().manual_seed(0))
    assert spikes.shape == (2000, 10, 4)
    rates = spikes.mean(dim=(0, 1))
    assert rates[0] == 0 and rates[3] == 1
    assert rates[1] == pytest.approx(0.25, abs=0.01) and rates[2] == pytest.approx(0.5, abs=0.01)


def test_encoding_is_reproducible_and_events_pass_through():
    images = torch.rand(3, 1, 8, 8)
    a = encode("bernoulli", images, 5, torch.Generator().manual_seed(7))
    b = encode("bernoulli", images, 5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    frames = torch.tensor([[[0, 2], [1, 0]]], dtype=torch.float32)
    assert encode("events", frames, 2).tolist() == [[[0, 1], [1, 0]]]
    with pytest.raises(ValueError, match="time bins"):
        encode("events", frames, 3)
