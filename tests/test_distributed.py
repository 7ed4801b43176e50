"""Data-parallel training (trainer.distributed), on CPU only: 2 gloo processes started by the
README's command (`torchrun ... --no-python stbp train`) train the run one process trains
(loss, accuracy, firing rates and final weights equal within float rounding), a checkpoint
resumes across process counts, and a process that fails ends the others instead of leaving
them waiting."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import distributed as dist

from netgraph.errors import CheckpointError, ConfigError, UsageError
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.config import config_from_dict
from trainer.distributed import DistributedContext, Launch, launch_from_environment, process_device, processes_of_launch
from trainer.train import train

# Float rounding only: the processes sum the same per-sample terms in another order. One
# spike flipped by it would move the weights by far more (the different-seed check below).
TOLERANCE = 1e-5
LAUNCH_TIMEOUT_S = 240
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _executable(name: str) -> str:
    """A console script of this environment (beside its python), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found beside {sys.executable} or on PATH")
    return found


def _raw_config(output_dir: Path, **training) -> dict:
    """The digits MLP, short: 201 training samples in global batches of 25, so 2 processes
    take 13 and 12 samples and the last batch (1 sample) leaves process 1 without any."""
    return {
        "seed": 3, "output_dir": str(output_dir),
        "data": {"name": "digits", "train_limit": 201, "test_limit": 101},
        "encoding": {"kind": "bernoulli", "time_steps": 6},
        "model": {"layers": [{"type": "dense", "units": 32}, {"type": "dense", "units": 10}]},
        "training": {"epochs": 2, "batch_size": 25, "learning_rate": 0.002, "device": "cpu", **training},
    }


def _one_process(raw: dict, resume: Path | None = None, **changes):
    """train() in this process (no launcher variables: one process)."""
    raw = {**raw, **changes}
    return train(config_from_dict(raw), resume=resume, progress=False, log=lambda _: None)


def _torchrun(config: dict, tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    """The README's command, on 2 gloo processes on this machine (--standalone: a free port)."""
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    environment = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    command = [_executable("torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", _executable("stbp"),
               "train", "--config", str(path), "--no-progress", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=environment)


def _trained_by_two(config: dict, tmp_path: Path, *arguments: str):
    """(checkpoint, stdout) of a torchrun run that must succeed."""
    done = _torchrun(config, tmp_path, *arguments)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return load_checkpoint(Path(config["output_dir"]) / "checkpoint.safetensors"), done.stdout


def assert_same_run(history: list[dict], state: dict[str, torch.Tensor], reference) -> None:
    """The same epochs, loss, accuracies and firing rates, and the same final weights as
    `reference` (a TrainResult), within TOLERANCE (the throughput aside)."""
    assert [h["epoch"] for h in history] == [h["epoch"] for h in reference.history]
    for record, expected in zip(history, reference.history):
        for key in ("loss", "train_accuracy", "test_accuracy", "train_firing_rates", "test_firing_rates"):
            assert record[key] == pytest.approx(expected[key], abs=TOLERANCE, rel=0), key
    reference_state = reference.model.state_dict()
    assert state.keys() == reference_state.keys()
    for name, value in state.items():
        torch.testing.assert_close(value, reference_state[name], atol=TOLERANCE, rtol=0, msg=name)


def _largest_difference(state: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    return max(float((value - other[name]).abs().max()) for name, value in state.items())


# --------------------------------------------------------------------------- no processes started


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shares_split_a_batch_into_contiguous_parts_that_differ_by_at_most_one(world_size):
    for size in range(0, 30):
        shares = [DistributedContext(rank=rank, world_size=world_size).share(size) for rank in range(world_size)]
        assert shares[0].start == 0 and shares[-1].stop == size
        assert all(a.stop == b.start for a, b in zip(shares, shares[1:]))
        lengths = [s.stop - s.start for s in shares]
        assert max(lengths) - min(lengths) <= 1
        assert max(lengths) == DistributedContext(rank=0, world_size=world_size).largest_share(size)


def test_launcher_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launch_from_environment() is None  # no launcher: one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="RANK is missing"):
        launch_from_environment()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UsageError, match="RANK=2"):
        launch_from_environment()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert launch_from_environment() == Launch(rank=1, world_size=2, local_rank=1, local_world_size=2)


def test_one_gpu_named_for_several_processes_on_a_machine_is_refused():
    with pytest.raises(ConfigError, match="training.device 'cuda:1'.*'cuda' or 'auto'"):
        process_device(torch.device("cuda", 1), Launch(rank=0, world_size=2, local_rank=0, local_world_size=2))
    assert process_device(torch.device("cpu"), Launch(0, 2, 0, 2)) == torch.device("cpu")


def test_checkpoints_record_their_process_count_and_older_ones_still_load(tmp_path):
    older = load_checkpoint(Path(__file__).parent / "data" / "v1_checkpoint.safetensors")
    assert older.world_size is None  # written before the record
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, dataclasses.replace(older, world_size=3))
    assert load_checkpoint(path).world_size == 3
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    save_file(tensors, str(path), metadata={**metadata, "world_size": "0"})
    with pytest.raises(CheckpointError, match="world_size' must be a number of processes >= 1, got 0"):
        load_checkpoint(path)


def test_a_process_group_the_caller_initialised_is_used_and_left_to_it(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with processes_of_launch(torch.device("cpu")) as processes:
            assert (processes.rank, processes.world_size, processes.backend) == (0, 1, "gloo")
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- 2 gloo processes (torchrun)


@pytest.mark.slow
def test_two_processes_train_the_single_process_run_and_resume_across_process_counts(tmp_path):
    raw = _raw_config(tmp_path / "one")
    one_epoch = _one_process(raw, training={**raw["training"], "epochs": 1})
    first_checkpoint = tmp_path / "one_process_epoch1.safetensors"
    shutil.copy(one_epoch.checkpoint_path, first_checkpoint)
    straight = _one_process(raw)

    # 2 processes, from the start: the first epoch as one process trains it.
    two = _raw_config(tmp_path / "two")
    checkpoint, stdout = _trained_by_two(two, tmp_path, "--epochs", "1")
    assert_same_run(checkpoint.history, checkpoint.model_state, one_epoch)
    assert checkpoint.world_size == 2 and one_epoch.world_size == 1
    assert stdout.count("data-parallel on 2 processes (gloo on cpu)") == 1  # rank 0 alone logs
    assert "global batch 25 (training.batch_size), 12 to 13 samples per process" in stdout
    assert stdout.count("epoch   1/1") == 1 and (tmp_path / "two" / "history.json").is_file()

    # ... resumed by one process: the uninterrupted run.
    resumed_by_one = _one_process(_raw_config(tmp_path / "two_then_one"), resume=checkpoint.path)
    assert_same_run(resumed_by_one.history, resumed_by_one.model.state_dict(), straight)

    # A one-process checkpoint resumed by 2 processes: the uninterrupted run too.
    checkpoint, stdout = _trained_by_two(_raw_config(tmp_path / "one_then_two"), tmp_path,
                                         "--resume", str(first_checkpoint))
    assert "after epoch 1, trained on 1 process(es)" in stdout
    assert_same_run(checkpoint.history, checkpoint.model_state, straight)

    # The comparison can fail: another seed trains other weights, by far more than TOLERANCE.
    other = _one_process(raw, seed=4, training={**raw["training"], "epochs": 1})
    assert _largest_difference(other.model.state_dict(), one_epoch.model.state_dict()) > 100 * TOLERANCE


METHODS = {
    "hm2bp": ({"tau": 0.9375, "tau_current": 0.75, "v_threshold": 1.0},
              {"hm2bp": {"desired_count": 5, "undesired_count": 1, "margin": 1}}),
    "mpbp": ({"tau": 0.953125, "v_threshold": 1.0},
             {"mpbp": {"alpha": 3.0, "weight_lambda": 0.001, "weight_beta": 5.0, "threshold_rho": 0.0001}}),
    "lee2019": ({"tau": 0.99, "v_threshold": 1.0, "readout": "potential"},
                {"lee2019": {"dropout": 0.25, "init_gain": 1.0}, "optimizer": "sgd", "weight_decay": 0.0005}),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_train_each_method_as_one_does(method, tmp_path):
    """HM2-BP and MPBP fill .grad by hand (summed over the processes, MPBP's threshold
    regularization on the global batch's counts); lee2019 draws its dropout masks per sample.
    100 samples in batches of 9: shares of 5 and 4, the last batch (1 sample) one process's."""
    model, training = METHODS[method]
    hidden = {"type": "dense", "units": 24, **({"lateral_inhibition": 0.1} if method == "mpbp" else {})}
    raw = {**_raw_config(tmp_path / "one"), "encoding": {"kind": "bernoulli", "time_steps": 10},
           "data": {"name": "digits", "train_limit": 100, "test_limit": 51},
           "model": {"layers": [hidden, {"type": "dense", "units": 10}], **model},
           "training": {"method": method, "epochs": 1, "batch_size": 9, "learning_rate": 0.002, "device": "cpu",
                        **training}}
    one = _one_process(raw)
    checkpoint, _ = _trained_by_two({**raw, "output_dir": str(tmp_path / "two")}, tmp_path)
    assert_same_run(checkpoint.history, checkpoint.model_state, one)
    if method == "mpbp":  # the threshold regularization did act
        gains = [v for k, v in checkpoint.model_state.items() if k.endswith("threshold_gain")]
        assert gains and any(float((g - 1).abs().max()) > 1e-4 for g in gains)


@pytest.mark.slow
def test_a_process_that_fails_ends_the_other_with_one_line(tmp_path):
    """Rank 0 cannot write the checkpoint (its directory is a file) while rank 1 waits for it."""
    (tmp_path / "blocked").write_text("a file, not a directory")
    raw = _raw_config(tmp_path / "blocked" / "run", epochs=1)
    raw["data"]["train_limit"] = 50
    done = _torchrun(raw, tmp_path)
    assert done.returncode != 0
    assert "stbp train: error: " in done.stderr and "Not a directory" in done.stderr
    # Rank 1 learns it from gloo (the connection closed) or from torchrun (SIGTERM), whichever
    # comes first; either way one line, no traceback.
    assert ("process 1 of 2: waiting for the other processes failed (when another process ended" in done.stderr
            or "stbp train: terminated" in done.stderr)
    assert "RuntimeError" not in done.stderr
