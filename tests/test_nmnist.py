"""N-MNIST: the 40-bit file format, binning, the local-folder loader (no download), and an
event-driven network through export and Lava."""
from __future__ import annotations

import numpy as np
import pytest

from spikedata import DataError, bin_events, load_dataset, read_events, write_nmnist_file


def write_fake_nmnist(root, per_digit=3, seed=0, with_test=False):
    """A tree in the original layout: <root>/Train/<digit>/<NNNNN>.bin, events around a
    digit-dependent pixel so a network can tell the classes apart."""
    rng = np.random.default_rng(seed)
    folders = ["Train", "Test"] if with_test else ["Train"]
    for folder in folders:
        for digit in range(10):
            for k in range(per_digit):
                n = 200
                x = np.clip(rng.normal(3 + 3 * digit, 1.5, n), 0, 33).astype(int)
                y = np.clip(rng.normal(17, 6, n), 0, 33).astype(int)
                t = np.sort(rng.integers(0, 300_000, n))
                write_nmnist_file(root / folder / str(digit) / f"{k:05d}.bin", x, y, rng.integers(0, 2, n), t)
    return root


def test_written_events_read_back_through_tonic(tmp_path):
    x, y, p, t = [0, 33, 7, 255], [0, 33, 20, 239 - 1], [0, 1, 1, 0], [0, 65_535, 65_536, 2**23 - 1]
    write_nmnist_file(tmp_path / "a.bin", x, y, p, t)
    assert (tmp_path / "a.bin").stat().st_size == 4 * 5  # 40 bits per event
    events = read_events(tmp_path / "a.bin")
    assert events["x"].tolist() == x and events["y"].tolist() == y
    assert events["p"].tolist() == p and events["t"].tolist() == t
    with pytest.raises(ValueError, match="out of range"):
        write_nmnist_file(tmp_path / "b.bin", [0], [240], [0], [0])  # y = 240 marks overflow events


def test_binning_keeps_every_event_and_clips_repeats(tmp_path):
    # span [0, 100] us in 2 bins of 50.5 us: t = 0, 10 -> bin 0; t = 60, 100 -> bin 1.
    write_nmnist_file(tmp_path / "e.bin", [1, 1, 3, 5], [2, 2, 4, 6], [0, 0, 1, 1], [0, 10, 60, 100])
    frames = bin_events(read_events(tmp_path / "e.bin"), 2)
    assert frames.shape == (2, 2, 34, 34) and frames.dtype == np.uint8
    assert np.argwhere(frames).tolist() == [[0, 0, 2, 1], [1, 1, 4, 3], [1, 1, 6, 5]]  # (t, p, y, x)
    assert frames.sum() == 3  # the two events of pixel (1, 2) in bin 0 make one spike


def test_loader_splits_a_train_only_folder_and_never_downloads(tmp_path):
    root = write_fake_nmnist(tmp_path / "nmnist")
    dataset = load_dataset("nmnist", str(root), time_steps=5)
    assert dataset.train.inputs.shape == (20, 5, 2, 34, 34) and dataset.test.inputs.shape == (10, 5, 2, 34, 34)
    assert sorted(dataset.test.labels.tolist()) == list(range(10))  # stratified: one per digit
    assert set(np.unique(dataset.train.inputs)) <= {0.0, 1.0}
    with_test = load_dataset("nmnist", str(write_fake_nmnist(tmp_path / "both", 2, with_test=True)), time_steps=4)
    assert len(with_test.train.labels) == 20 and len(with_test.test.labels) == 20
    with pytest.raises(DataError, match="has no Train/ subfolder"):
        load_dataset("nmnist", str(tmp_path / "nothing"), time_steps=5)
    (tmp_path / "empty" / "Train").mkdir(parents=True)
    with pytest.raises(DataError, match="nothing is downloaded"):
        load_dataset("nmnist", str(tmp_path / "empty"), time_steps=5)


def test_event_network_trains_exports_and_runs_bit_exact_on_lava(tmp_path):
    pytest.importorskip("lava")
    from export.emulator import emulate
    from export.hw_config import resolve_hardware_config
    from lava_backend.runner import run_network
    from stbp_cli.pipeline import export_checkpoint
    from trainer.config import config_from_dict
    from trainer.encoding import encode_split
    from trainer.train import train

    root = write_fake_nmnist(tmp_path / "nmnist", per_digit=4)
    config = config_from_dict({
        "seed": 0, "output_dir": str(tmp_path / "run"), "data": {"name": "nmnist", "path": str(root)},
        "encoding": {"kind": "events", "time_steps": 6},
        "model": {"layers": [{"type": "dense", "units": 30}, {"type": "dense", "units": 10}]},
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 0.003, "device": "cpu"},
    })
    result = train(config, progress=False)
    network, _ = export_checkpoint(result.checkpoint_path, resolve_hardware_config("loihi2"))
    assert network.encoding == "events" and network.input_shape == (2, 34, 34)
    spikes = encode_split("events", result.dataset.test.inputs, 6, network.eval_seed)
    assert np.array_equal(spikes, result.dataset.test.inputs.astype(np.uint8))  # events pass through
    emulated = emulate(network, spikes)
    lava = run_network(network, spikes, progress=False)
    assert list(lava.population_spikes) == ["layer0", "layer1"]
    for name, expected in emulated.population_spikes.items():
        np.testing.assert_array_equal(lava.population_spikes[name], expected, err_msg=name)


def test_real_nmnist_subset_loads(shared_nmnist):
    dataset = load_dataset("nmnist", str(shared_nmnist.parent), time_steps=10)
    labels = np.concatenate([dataset.train.labels, dataset.test.labels])
    assert np.bincount(labels).tolist() == [97, 116, 99, 93, 105, 92, 94, 117, 87, 100]  # per the data README
    assert dataset.input_shape == (10, 2, 34, 34)
    assert 0.01 < dataset.train.inputs.mean() < 0.2
