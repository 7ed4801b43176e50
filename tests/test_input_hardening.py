"""Hostile and corrupted input (issue 14): every bad YAML file, hardware config and checkpoint
ends in one line naming the file and the key or tensor (exit 2 on the command line), quickly
and before anything is trained or allocated; none ends in a traceback, a hang or silence."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from export.hw_config import HW_CONFIG_DIR, load_hardware_config
from netgraph.errors import CheckpointError, ConfigError, HardwareConfigError, ResourceLimitError
from netgraph.limits import MAX_YAML_BYTES, MAX_YAML_DEPTH
from netgraph.yaml_input import read_yaml
from stbp_cli.main import main
from trainer.checkpoint import load_checkpoint
from trainer.config import config_from_dict, load_config
from trainer.train import train

from helpers import tiny_digits_config

WEIGHT = "model.nodes.layer0_from_input.weight"
BIAS = "model.nodes.layer0.bias"


def one_error_line(capsys, argv: list[str], *named: str) -> str:
    """Runs `stbp argv`; asserts exit 2 and a single stderr line naming every string of `named`."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in named:
        assert text in err, err
    return err


# --------------------------------------------------------------------------- YAML


def run_config_text(tmp_path) -> str:
    return yaml.safe_dump(tiny_digits_config(tmp_path, epochs=1).to_dict())


BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
) + "\n"


@pytest.mark.parametrize("label, text, message", [
    ("alias_bomb", BILLION_LAUGHS, "line 1: YAML aliases and anchors are not supported: write the values out"),
    ("duplicate", "seed: 1\nencoding: {time_steps: 4}\nseed: 2\n", "line 3: duplicate key 'seed'"),
    ("duplicate_nested", "encoding:\n  time_steps: 4\n  time_steps: 5\n", "line 3: duplicate key 'time_steps'"),
    ("deep", "[" * 5000 + "]" * 5000, f"nesting deeper than {MAX_YAML_DEPTH} levels"),
    ("merge", "base: {seed: 1}\nrun:\n  <<: {seed: 2}\n", "line 3: YAML merge keys (<<) are not supported"),
    ("python_tag", "seed: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    ("huge_int", "seed: " + "9" * 5000 + "\n", "a value cannot be read"),
    ("control_char", "seed: 1\x00\n", "not valid YAML at line 1"),
])
def test_bad_yaml_run_config_ends_in_one_line(tmp_path, capsys, label, text, message):
    path = tmp_path / f"{label}.yaml"
    path.write_text(text)
    started = time.perf_counter()
    one_error_line(capsys, ["train", "--config", str(path)], str(path), message)
    assert time.perf_counter() - started < 5


def test_oversize_and_non_utf8_yaml_are_refused_naming_the_file(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text(run_config_text(tmp_path) + "#" * MAX_YAML_BYTES)
    one_error_line(capsys, ["train", "--config", str(big)], str(big), "more than the limit of 1,048,576")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("seed: 1\noutput_dir: caf\xe9\n".encode("latin-1"))
    one_error_line(capsys, ["train", "--config", str(latin1)], str(latin1), "line 2", "not UTF-8")


def test_the_reader_keeps_safe_load_semantics_for_good_files(tmp_path):
    path = tmp_path / "good.yaml"
    text = run_config_text(tmp_path) + "# a comment\n"
    path.write_text(text)
    assert read_yaml(path, "run config") == yaml.safe_load(text)
    nested = tmp_path / "nested.yaml"
    nested.write_text("[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH)
    assert read_yaml(nested, "run config") is not None
    assert load_config(path).encoding.time_steps == 6


def test_hw_config_yaml_errors_are_hardware_config_errors(tmp_path, capsys):
    good = (HW_CONFIG_DIR / "loihi2.yaml").read_text()
    duplicate = tmp_path / "duplicate.yaml"
    duplicate.write_text(good + "vth_shift: 3\n")
    with pytest.raises(HardwareConfigError, match="duplicate key 'vth_shift'") as info:
        load_hardware_config(duplicate)
    assert str(duplicate) in str(info.value)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    one_error_line(capsys, ["export", str(tmp_path / "none.safetensors"), "--hw", str(bomb), "-o",
                            str(tmp_path / "x.onnx")], str(bomb), "aliases")


@pytest.mark.parametrize("key, value, shown", [
    ("state_bits", 1, "'state_bits' = 1 is outside [2, 32]"),
    ("state_bits", 1000, "'state_bits' = 1000 is outside [2, 32]"),
    ("vth_shift", 100, "'vth_shift' = 100 is outside [0, 8]"),
    ("bias_mant_bits", 2**70, f"'bias_mant_bits' = {2**70} is outside [1, 32]"),
    ("activation_shift", -3, "'activation_shift' = -3 is outside [0, 8]"),
    ("name", {"a": 1}, "'name' must be text"),
])
def test_hw_config_values_out_of_range_end_in_one_line(tmp_path, capsys, key, value, shown):
    raw = yaml.safe_load((HW_CONFIG_DIR / "loihi2.yaml").read_text())
    path = tmp_path / f"{key}.yaml"
    path.write_text(yaml.safe_dump({**raw, key: value}))
    one_error_line(capsys, ["export", str(tmp_path / "none.safetensors"), "--hw", str(path), "-o",
                            str(tmp_path / "x.onnx")], str(path), shown)


# --------------------------------------------------------------------------- config bounds


@pytest.mark.parametrize("dotted, value, key", [
    ("encoding.time_steps", 10**12, "encoding: time_steps = 1000000000000"),
    ("model.layers.0.units", 1 << 30, "model.layers[0].units"),
    ("training.batch_size", 10**9, "training.batch_size"),
    ("training.epochs", 10**9, "training.epochs"),
    ("data.train_limit", 10**12, "data.train_limit"),
])
def test_declared_sizes_are_bounded_naming_the_key(tmp_path, dotted, value, key):
    raw = tiny_digits_config(tmp_path).to_dict()
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    node[leaf] = value
    with pytest.raises(ResourceLimitError, match=f"run.yaml: {key}".replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(raw, "run.yaml")


def test_fixed_weights_and_seeds_are_bounded(tmp_path):
    raw = tiny_digits_config(tmp_path).to_dict()
    raw["model"]["layers"][0].update(units=200_000, lateral_inhibition=1.0)
    with pytest.raises(ResourceLimitError, match=r"model.layers\[0\].lateral_inhibition"):
        config_from_dict(raw, "run.yaml")
    raw = tiny_digits_config(tmp_path).to_dict()
    raw["seed"] = 2**64
    with pytest.raises(ConfigError, match="run.yaml: seed"):
        config_from_dict(raw, "run.yaml")


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint_and_config(tmp_path_factory):
    """A one-epoch tiny digits run: (its checkpoint, a YAML config that resumes it to 2 epochs)."""
    out = tmp_path_factory.mktemp("hardening")
    result = train(tiny_digits_config(out, epochs=1), progress=False, log=lambda _: None)
    config = out / "resume.yaml"
    config.write_text(yaml.safe_dump(tiny_digits_config(out, epochs=2).to_dict()))
    return result.checkpoint_path, config


def corrupted(source, target, tensors=None, metadata=None):
    """A copy of the checkpoint `source` at `target` with tensors edited by tensors(dict) and
    metadata by metadata(dict) (each edits in place)."""
    state = load_file(str(source))
    with safe_open(str(source), framework="pt") as handle:
        meta = dict(handle.metadata())
    if tensors is not None:
        tensors(state)
    if metadata is not None:
        metadata(meta)
    save_file(state, str(target), metadata=meta)
    return target


def _json_edit(key, edit):
    def apply(meta):
        value = json.loads(meta[key])
        value = edit(value)
        meta[key] = json.dumps(value)
    return apply


def _set_nan(state):
    state[WEIGHT][0, 0] = math.nan


def _history_missing_loss(history):
    del history[0]["loss"]
    return history


def _config_time_steps(config):
    config["encoding"]["time_steps"] = 10**12
    return config


CORRUPTIONS = {
    "missing_tensor": (dict(tensors=lambda s: s.pop(BIAS)), f"tensor {BIAS} is missing"),
    "wrong_shape": (dict(tensors=lambda s: s.update({WEIGHT: torch.zeros(31, 64)})),
                    f"tensor {WEIGHT} has shape (31, 64), expected (32, 64)"),
    "wrong_dtype": (dict(tensors=lambda s: s.update({BIAS: s[BIAS].double()})), f"tensor {BIAS} has dtype"),
    "unexpected_tensor": (dict(tensors=lambda s: s.update({"model.nodes.extra.weight": torch.zeros(2)})),
                          "unexpected tensor model.nodes.extra.weight"),
    "nan_weights": (dict(tensors=_set_nan), f"tensor {WEIGHT} holds 1 NaN or infinite value(s)"),
    "history_type": (dict(metadata=lambda m: m.update(history=json.dumps({"epoch": 1}))),
                     "metadata 'history' must be a list"),
    "history_key": (dict(metadata=_json_edit("history", _history_missing_loss)), "history[0]: key 'loss' is missing"),
    "optimizer_shape": (dict(tensors=lambda s: s.update({"optimizer.0.exp_avg": torch.zeros(3)})),
                        "tensor optimizer.0.exp_avg has shape (3,), expected (32, 64)"),
    "optimizer_step": (dict(tensors=lambda s: s.pop("optimizer.1.step")), "tensor optimizer.1.step is missing"),
    "optimizer_index": (dict(tensors=lambda s: s.update({"optimizer.9.step": torch.tensor(1.0)})),
                        "unexpected tensor optimizer.9.step"),
    "param_groups": (dict(metadata=lambda m: m.update(optimizer_param_groups=json.dumps([{"lr": 0.1}]))),
                     "optimizer_param_groups[0]: key "),
    "param_groups_json": (dict(metadata=lambda m: m.update(optimizer_param_groups="[" * 100_000)),
                          "metadata 'optimizer_param_groups' is not valid JSON"),
    "epochs_negative": (dict(metadata=lambda m: m.update(epochs_completed="-1")),
                        "epochs_completed = -1 is outside [0, 1]"),
    "epochs_beyond": (dict(metadata=lambda m: m.update(epochs_completed="5")),
                      "epochs_completed = 5 is outside [0, 1]"),
    "input_shape": (dict(metadata=lambda m: m.update(input_shape="[1, 8, 9]")),
                    f"tensor {WEIGHT} has shape (32, 64), expected (32, 72)"),
    "time_steps": (dict(metadata=_json_edit("config", _config_time_steps)),
                   "encoding: time_steps = 1000000000000 is more than the limit"),
}


@pytest.mark.parametrize("label", sorted(CORRUPTIONS))
def test_a_corrupted_checkpoint_is_refused_before_the_first_epoch(tmp_path, capsys, checkpoint_and_config, label):
    checkpoint, config = checkpoint_and_config
    edits, message = CORRUPTIONS[label]
    bad = corrupted(checkpoint, tmp_path / f"{label}.safetensors", **edits)
    err = one_error_line(capsys, ["train", "--config", str(config), "--output-dir", str(tmp_path / "out"),
                                  "--resume", str(bad), "--no-progress"], str(bad), message)
    assert "resuming" not in capsys.readouterr().out + err
    assert not (tmp_path / "out" / "checkpoint.safetensors").exists()  # no epoch ran


def test_export_refuses_a_checkpoint_with_10_to_the_12_time_steps_quickly(tmp_path, capsys, checkpoint_and_config):
    bad = corrupted(checkpoint_and_config[0], tmp_path / "steps.safetensors",
                    metadata=_json_edit("config", _config_time_steps))
    started = time.perf_counter()
    one_error_line(capsys, ["export", str(bad), "-o", str(tmp_path / "x.onnx"), "--measure", "0"], str(bad),
                   "(embedded config): encoding: time_steps = 1000000000000 is more than the limit of 1,000,000")
    assert time.perf_counter() - started < 10


def test_nan_weights_load_only_when_asked(tmp_path, checkpoint_and_config):
    bad = corrupted(checkpoint_and_config[0], tmp_path / "nan.safetensors", tensors=_set_nan)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(bad)
    assert math.isnan(float(load_checkpoint(bad, allow_nonfinite=True).model_state[WEIGHT[len("model."):]][0, 0]))


def test_an_intact_checkpoint_still_resumes(tmp_path, capsys, checkpoint_and_config):
    checkpoint, config = checkpoint_and_config
    code = main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out"), "--resume",
                 str(checkpoint), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(tmp_path / "out" / "checkpoint.safetensors").epochs_completed == 2


def _drop_group_key(key):
    def edit(groups):
        for group in groups:
            group.pop(key)
        return groups
    return _json_edit("optimizer_param_groups", edit)


def test_optimizer_state_of_another_torch_version_resumes_and_only_resuming_checks_it(tmp_path, capsys,
                                                                                    checkpoint_and_config):
    checkpoint, config = checkpoint_and_config
    # A torch that predates 'decoupled_weight_decay' saved no such key; torch fills in its default.
    older = corrupted(checkpoint, tmp_path / "older.safetensors", metadata=_drop_group_key("decoupled_weight_decay"))
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out"), "--resume", str(older),
                 "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    # A malformed optimizer state does not keep export (which never steps the optimizer) from reading the weights.
    broken = corrupted(checkpoint, tmp_path / "broken.safetensors", metadata=_drop_group_key("params"))
    assert load_checkpoint(broken).model_state
    assert main(["export", str(broken), "-o", str(tmp_path / "net.onnx"), "--measure", "0"]) == 0


def test_a_number_too_large_for_a_float_is_one_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: {layers: [{type: dense, units: 10, tau: " + "9" * 400 + "}]}\n")
    one_error_line(capsys, ["train", "--config", str(config)], str(config), "tau: 999999", "too large for a float")
