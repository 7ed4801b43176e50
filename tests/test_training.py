"""Training behaviour users rely on: it learns, it is deterministic, and it resumes exactly."""
import dataclasses

import pytest
import torch

from trainer.checkpoint import CheckpointError, build_model, load_checkpoint
from trainer.config import config_from_dict
from netgraph import predict_classes
from trainer.network import SpikingNetwork, paper_init_
from trainer.train import train

from helpers import tiny_digits_config


def test_short_digits_run_beats_chance_by_a_wide_margin(tmp_path):
    config = config_from_dict({
        "seed": 0, "output_dir": str(tmp_path / "run"),
        "data": {"name": "digits"}, "encoding": {"time_steps": 8},
        "model": {"layers": [{"type": "dense", "units": 64}, {"type": "dense", "units": 10}]},
        "training": {"epochs": 3, "batch_size": 32, "device": "cpu", "learning_rate": 0.002},
    })
    result = train(config, progress=False, log=lambda _: None)
    assert result.history[-1]["test_accuracy"] > 0.80  # chance is 0.10
    assert len(result.history) == 3


def test_same_seed_same_weights_and_resume_equals_uninterrupted(tmp_path):
    straight = train(tiny_digits_config(tmp_path / "a"), progress=False, log=lambda _: None)
    again = train(tiny_digits_config(tmp_path / "b"), progress=False, log=lambda _: None)
    for p, q in zip(straight.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)

    first = train(tiny_digits_config(tmp_path / "c", epochs=1), progress=False, log=lambda _: None)
    resumed = train(tiny_digits_config(tmp_path / "c", epochs=2), resume=first.checkpoint_path,
                    progress=False, log=lambda _: None)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_resume_refuses_a_changed_model(tmp_path):
    first = train(tiny_digits_config(tmp_path, epochs=1), progress=False, log=lambda _: None)
    changed = dataclasses.replace(
        tiny_digits_config(tmp_path), training=dataclasses.replace(tiny_digits_config(tmp_path).training, learning_rate=0.1)
    )
    with pytest.raises(CheckpointError, match="training"):
        train(changed, resume=first.checkpoint_path, progress=False, log=lambda _: None)


def test_checkpoint_round_trip_records_config_and_versions(tmp_path):
    result = train(tiny_digits_config(tmp_path, epochs=1), progress=False, log=lambda _: None)
    ck = load_checkpoint(result.checkpoint_path)
    assert ck.config == tiny_digits_config(tmp_path, epochs=1)
    assert ck.epochs_completed == 1 and ck.input_shape == (1, 8, 8)
    assert ck.versions["torch"] == torch.__version__ and "python" in ck.versions
    model = build_model(ck)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_checkpoint_does_not_execute_code_and_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04 this is a pickle, not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_paper_init_gives_unit_norm_rows():
    w = torch.empty(20, 50)
    paper_init_(w, torch.Generator().manual_seed(1))
    assert torch.allclose(w.norm(dim=1), torch.ones(20))
    assert w.abs().max() <= 1.0


def test_prediction_ties_go_to_the_lowest_class():
    spikes = torch.tensor([[[1, 0, 1], [0, 0, 1], [1, 0, 0]]], dtype=torch.float32)  # counts 2,0,2
    assert predict_classes(spikes).tolist() == [0]
    assert predict_classes(spikes.numpy()).tolist() == [0]


def test_network_rejects_wrong_input_shape(tmp_path):
    net = SpikingNetwork.from_config(tiny_digits_config(tmp_path).model, (1, 8, 8))
    with pytest.raises(ValueError, match="expected"):
        net(torch.zeros(2, 6, 64))
