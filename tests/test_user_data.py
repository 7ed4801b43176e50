"""Users' own data: a .npz of frames or spike trains, and tonic event data sets from a local
folder (POKER-DVS, SHD), through load_dataset, the config and the CLI (train, export, compare,
run); every refusal one line naming the file and the array or the layout expected."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from spikedata import DataError, load_dataset
from stbp_cli.main import main
from trainer.config import ConfigError, config_from_dict

POKER_CLASSES = ("cl", "he", "di", "sp")


def separable_images(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 8x8 frames: the left half bright, or the right half."""
    labels = np.arange(n) % 2
    images = rng.uniform(0.0, 0.1, (n, 8, 8)).astype(np.float32)
    for i, label in enumerate(labels):
        images[i, :, 4 * label:4 * label + 4] += 0.85
    return images, labels.astype(np.int64)


def write_image_npz(path, rng, train=40, test=20, **replace) -> None:
    x_train, y_train = separable_images(rng, train)
    x_test, y_test = separable_images(rng, test)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **replace}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def write_poker_folder(root, rng, per_class=(8, 3), events=60) -> None:
    """POKER-DVS's extracted layout: pips_<part>/<class>/*.npy of int (n, 4) t [us], x, y, p;
    class c fires in its own corner of the 35x35 sensor."""
    for part, count in zip(("pips_train", "pips_test"), per_class):
        for c, name in enumerate(POKER_CLASSES):
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(count):
                x0, y0 = 18 * (c % 2), 18 * (c // 2)
                recording = np.stack([np.sort(rng.integers(0, 20_000, events)), x0 + rng.integers(0, 17, events),
                                      y0 + rng.integers(0, 17, events), rng.integers(0, 2, events)], axis=1)
                np.save(folder / f"{name}{i:02d}.npy", recording.astype(np.int64))


def write_config(path, data: dict, kind: str, time_steps: int, units: int, output_dir) -> None:
    path.write_text(yaml.safe_dump({
        "seed": 1, "output_dir": str(output_dir), "data": data,
        "encoding": {"kind": kind, "time_steps": time_steps},
        "model": {"layers": [{"type": "dense", "units": 24}, {"type": "dense", "units": units}]},
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 0.01, "device": "cpu"},
    }))


def train_export_compare(tmp_path, config, capsys) -> dict:
    """`stbp train`, `stbp export --measure`, `stbp compare` (trained, emulator and Lava fixed_pt,
    which must agree with the emulator on every spike); the report."""
    pytest.importorskip("lava", reason="Lava fixed_pt needs lava-nc (Python 3.10, `pip install -e .[lava]`)")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    checkpoint, artifact = out / "checkpoint.safetensors", out / "net.onnx"
    assert main(["export", str(checkpoint), "-o", str(artifact), "--measure", "8"]) == 0
    assert main(["compare", str(checkpoint), str(artifact), "--backends", "trained,emulator,lava_fixed",
                 "--require-bit-exact", "--no-progress"]) == 0
    capsys.readouterr()
    report = json.loads(artifact.with_suffix(".fidelity.json").read_text())
    (pair,) = [p for p in report["pairs"] if (p["reference"], p["candidate"]) == ("emulator", "lava_fixed")]
    assert all(population["mismatched_spikes"] == 0 for population in pair["populations"])
    assert len(pair["populations"]) == 2  # both layers compared
    return report


def accuracy_of(report: dict, backend: str) -> float:
    return report["accuracy"][backend]


def test_npz_frames_train_export_and_compare_through_the_cli(tmp_path, capsys):
    data = tmp_path / "mine.npz"
    write_image_npz(data, np.random.default_rng(0))
    config = tmp_path / "npz.yaml"
    write_config(config, {"name": "npz", "path": str(data)}, "bernoulli", 8, 2, tmp_path / "run")
    report = train_export_compare(tmp_path, config, capsys)
    assert accuracy_of(report, "emulator") > 0.75  # chance is 0.5 on these separable halves


def test_npz_spike_trains_are_played_as_they_are_and_run_on_the_emulator(tmp_path, capsys):
    rng = np.random.default_rng(1)
    images, labels = separable_images(rng, 60)
    spikes = (rng.random((60, 6, 64)) < images.reshape(60, 1, 64)).astype(np.uint8)  # (N, T, features)
    data = tmp_path / "spikes.npz"
    np.savez(data, spikes_train=spikes[:40], y_train=labels[:40], spikes_test=spikes[40:], y_test=labels[40:])
    dataset = load_dataset("npz", str(data), 6)
    assert dataset.input_shape == (6, 1, 1, 64) and dataset.num_classes == 2
    assert np.array_equal(dataset.test.inputs.reshape(20, 6, 64), spikes[40:])
    config = tmp_path / "spikes.yaml"
    write_config(config, {"name": "npz", "path": str(data)}, "events", 6, 2, tmp_path / "run")
    report = train_export_compare(tmp_path, config, capsys)
    assert accuracy_of(report, "emulator") > 0.75
    assert main(["run", str(tmp_path / "run" / "net.onnx"), "--backend", "emulator", "--no-progress"]) == 0
    assert "on 20 npz test samples" in capsys.readouterr().out


def test_a_tonic_poker_dvs_folder_trains_exports_and_compares_through_the_cli(tmp_path, capsys):
    folder = tmp_path / "poker"
    write_poker_folder(folder, np.random.default_rng(2))
    dataset = load_dataset("tonic", str(folder), 5, dataset="POKERDVS")  # read by tonic's own POKERDVS
    assert dataset.input_shape == (5, 2, 35, 35) and dataset.num_classes == 4
    assert len(dataset.train.labels) == 32 and len(dataset.test.labels) == 12
    assert sorted(set(dataset.test.labels.tolist())) == [0, 1, 2, 3]
    config = tmp_path / "poker.yaml"
    write_config(config, {"name": "tonic", "dataset": "POKERDVS", "path": str(folder)}, "events", 5, 4,
                 tmp_path / "run")
    report = train_export_compare(tmp_path, config, capsys)
    assert accuracy_of(report, "emulator") > 0.5  # chance is 0.25
    assert main(["run", str(tmp_path / "run" / "net.onnx"), "--backend", "emulator", "--no-progress"]) == 0
    assert "on 12 tonic test samples" in capsys.readouterr().out


def test_a_tonic_folder_without_a_test_part_is_split_per_class(tmp_path):
    write_poker_folder(tmp_path, np.random.default_rng(3), per_class=(5, 0))
    dataset = load_dataset("tonic:POKERDVS", str(tmp_path), 4)
    assert len(dataset.train.labels) == 16 and np.bincount(dataset.test.labels).tolist() == [1, 1, 1, 1]


def test_shd_from_its_local_hdf5_files(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(4)
    for part, n in (("train", 6), ("test", 2)):
        with h5py.File(tmp_path / f"shd_{part}.h5", "w") as f:
            times = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.dtype("float16")))
            units = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.dtype("uint16")))
            for i in range(n):
                times[i] = np.sort(rng.random(30)).astype(np.float16)
                units[i] = rng.integers(0, 700, 30).astype(np.uint16)
            f.create_dataset("labels", data=(np.arange(n) % 20).astype(np.uint16))
            f.create_dataset("extra/speaker", data=np.zeros(n, np.uint16))
            f.create_dataset("extra/keys", data=np.array([b"digit"] * 20))
    dataset = load_dataset("tonic", str(tmp_path), 7, dataset="SHD")
    assert dataset.input_shape == (7, 1, 1, 700) and dataset.num_classes == 20
    assert dataset.train.inputs.sum() > 0 and len(dataset.test.labels) == 2


@pytest.mark.parametrize("replace, message", [
    ({"x_train": np.zeros((40, 2, 3, 8, 8), np.float32)}, r"array x_train has shape \(40, 2, 3, 8, 8\)"),
    ({"y_test": np.full(20, 5)}, r"array y_test holds label 5 but y_train only 0\.\.1"),
    ({"y_train": np.full(40, -1)}, "array y_train holds label -1"),
    ({"y_train": np.zeros(39, np.int64)}, "array y_train has 39 labels but x_train has 40 samples"),
    ({"y_train": np.zeros(40, np.float32)}, "array y_train has dtype float32"),
    ({"x_test": np.full((20, 8, 8), np.nan, np.float32)}, "array x_test holds NaN"),
    ({"x_train": np.full((40, 8, 8), 3.0, np.float32)}, r"array x_train holds values in \[3, 3\]"),
    ({"x_test": np.zeros((0, 8, 8), np.float32), "y_test": np.zeros(0, np.int64)}, "array x_test is empty"),
    ({"x_test": np.zeros((20, 4, 4), np.float32)}, "x_train samples have shape"),
    ({"y_test": None}, "missing array.s. y_test"),
    ({"x_tset": np.zeros(3)}, "unexpected array.s. x_tset"),
    ({"x_train": np.array([{"a": 1}] * 40, dtype=object)}, "array x_train cannot be read"),
])
def test_npz_refusals_name_the_file_and_the_array(tmp_path, replace, message):
    path = tmp_path / "bad.npz"
    write_image_npz(path, np.random.default_rng(5), **replace)
    with pytest.raises(DataError, match=message) as caught:
        load_dataset("npz", str(path), 8)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_npz_spike_trains_of_another_length_or_not_binary_are_refused(tmp_path):
    path = tmp_path / "s.npz"
    spikes, labels = np.zeros((4, 5, 10), np.uint8), np.array([0, 1, 0, 1])
    np.savez(path, spikes_train=spikes, y_train=labels, spikes_test=spikes, y_test=labels)
    with pytest.raises(DataError, match=r"array spikes_train has 5 time bins .* encoding.time_steps is 8"):
        load_dataset("npz", str(path), 8)
    np.savez(path, spikes_train=spikes + 2, y_train=labels, spikes_test=spikes, y_test=labels)
    with pytest.raises(DataError, match="array spikes_train holds values other than 0 and 1"):
        load_dataset("npz", str(path), 5)
    np.savez(path, spikes_train=spikes, x_train=spikes, y_train=labels, spikes_test=spikes, y_test=labels)
    with pytest.raises(DataError, match="both frames"):
        load_dataset("npz", str(path), 5)


def test_missing_npz_file_and_tonic_folders_are_refused_with_the_layout_expected(tmp_path):
    with pytest.raises(DataError, match=r"npz data file not found: .*nope\.npz"):
        load_dataset("npz", str(tmp_path / "nope.npz"), 8)
    (tmp_path / "not.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not.npz: not a readable .npz file"):
        load_dataset("npz", str(tmp_path / "not.npz"), 8)
    with pytest.raises(DataError, match="tonic POKERDVS folder not found"):
        load_dataset("tonic:POKERDVS", str(tmp_path / "absent"), 8)
    with pytest.raises(DataError, match=r"no POKERDVS training data: expected .*pips_train/<cl\|he\|di\|sp>/\*\.npy"
                                        r".*nothing is downloaded"):
        load_dataset("tonic:POKERDVS", str(tmp_path), 8)
    with pytest.raises(DataError, match=r"no DVSGesture training data: expected .*ibmGestureTrain/user<NN>"):
        load_dataset("tonic:DVSGesture", str(tmp_path), 8)
    with pytest.raises(DataError, match=r"no SHD training data: expected .*shd_train\.h5"):
        load_dataset("tonic", str(tmp_path), 8, dataset="SHD")
    with pytest.raises(DataError, match="must be one of NMNIST, POKERDVS, DVSGesture, SHD"):
        load_dataset("tonic:CIFAR10DVS", str(tmp_path), 8)
    assert not any(tmp_path.rglob("*.tar.gz")) and not (tmp_path / "POKERDVS").exists()  # nothing fetched


def test_a_recording_outside_the_sensor_is_refused_with_its_file(tmp_path):
    write_poker_folder(tmp_path, np.random.default_rng(6), per_class=(2, 0))
    bad = tmp_path / "pips_train" / "cl" / "cl00.npy"
    np.save(bad, np.array([[0, 40, 1, 0], [5, 1, 1, 1]], np.int64))
    with pytest.raises(DataError, match=r"cl00\.npy: events outside the 35x35 sensor"):
        load_dataset("tonic:POKERDVS", str(tmp_path), 4)


@pytest.mark.parametrize("data, message", [
    ({"name": "npz"}, r"data\.path: the npz dataset needs its \.npz file"),
    ({"name": "tonic", "path": "x"}, r"data\.dataset: '\(missing\)' is not one of NMNIST"),
    ({"name": "tonic", "path": "x", "dataset": "MNIST"}, r"data\.dataset: 'MNIST' is not one of"),
    ({"name": "npz", "path": "x.npz", "dataset": "SHD"}, r"data\.dataset: only the tonic dataset names one"),
])
def test_config_data_section_refusals(data, message):
    raw = {"data": data, "model": {"layers": [{"type": "dense", "units": 2}]}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, "my.yaml")


def test_tonic_config_round_trips_and_other_configs_keep_their_dict():
    raw = {"data": {"name": "tonic", "dataset": "SHD", "path": "shd"}, "model": {"layers": [{"type": "dense", "units": 20}]}}
    config = config_from_dict(raw)
    assert config.to_dict()["data"]["dataset"] == "SHD"
    assert config_from_dict(config.to_dict()) == config
    plain = config_from_dict({"data": {"name": "digits"}, "model": {"layers": [{"type": "dense", "units": 10}]}})
    assert "dataset" not in plain.to_dict()["data"]
