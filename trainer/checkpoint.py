"""Checkpoints: safetensors files (tensors + string metadata) that cannot execute code.

A checkpoint holds the run config, the model weights, the optimizer state, the number of
completed epochs, the per-epoch history and the versions that produced it. Training that
resumes from it continues exactly as if it had not stopped (per-epoch random streams are
derived from the seed and the epoch number, so no RNG state needs saving).

Format 2 keys the weights by network-graph node (`nodes.<node>.weight|bias`, see
trainer.network). Format 1 (before the graph: `layers.<config index>.weight|bias`) is read
and its keys mapped onto the graph the same config builds.

load_checkpoint checks all of a checkpoint before anything uses it, against the network
its embedded config builds: the config (with its size limits), every tensor (present, none
unexpected, shape, dtype, finite), epochs_completed and the history train.py writes. The
optimizer state (one entry per trained parameter, of its shape; param_groups agreeing with
those train.py builds) is checked by check_optimizer_state where it is used, before a resumed
run's first epoch. A corrupted file thus ends in one line naming the file and the key or
tensor, not in a RuntimeError or a KeyError in the middle of training.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from netgraph import LIF, Graph, Synapse
from netgraph.errors import CheckpointError, one_line, shown
from netgraph.limits import check_memory, check_shape
from netgraph.provenance import atomic_write, package_versions, read_integer, read_json
from trainer import lee2019, mpbp
from trainer.architecture import build_graph, layers_from_graph, synapse_name, synapse_names_in_config
from trainer.config import ConfigError, RunConfig, TrainingConfig, config_from_dict, float_only_neuron
from trainer.network import SpikingNetwork

CHECKPOINT_FORMAT = "stbp-checkpoint"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = ("1", "2")
# What train.py records per epoch (trainer.train.train): the epoch (from 1), these numbers
# (every method's loss is a sum of squares or a cross-entropy, never negative), and one
# firing rate per population.
HISTORY_NUMBERS = {
    "loss": ("a finite number >= 0", lambda value: value >= 0),
    "train_accuracy": ("a number in [0, 1]", lambda value: 0 <= value <= 1),
    "test_accuracy": ("a number in [0, 1]", lambda value: 0 <= value <= 1),
    "train_samples_per_s": ("a finite number above 0", lambda value: value > 0),
}
HISTORY_RATES = ("train_firing_rates", "test_firing_rates")
HISTORY_KEYS = frozenset(("epoch", *HISTORY_NUMBERS, *HISTORY_RATES))
# The per-parameter state of the optimizers build_optimizer makes: Adam's step count and
# moments; SGD (no momentum) keeps none.
OPTIMIZER_STATE_KEYS = {"adam": frozenset({"step", "exp_avg", "exp_avg_sq"}), "sgd": frozenset()}
OPTIMIZER_TENSOR = re.compile(r"optimizer\.([0-9]{1,9})\.([A-Za-z_]{1,64})")
BYTES_PER_VALUE = 4  # float32: every parameter and every neuron's bias or state


@dataclass
class Checkpoint:
    config: RunConfig
    input_shape: tuple[int, ...]
    num_classes: int
    epochs_completed: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    history: list[dict[str, Any]]
    versions: dict[str, str]
    path: Path | None = None
    origin: dict[str, Any] | None = None  # where a network made elsewhere came from (e.g. a NIR file)
    # How many data-parallel processes trained the epochs up to this checkpoint since the run
    # (re)started (trainer.distributed); None when not recorded (checkpoints written before
    # it was, networks made elsewhere). Informational: the run state is global, so a run
    # resumes on any number of processes.
    world_size: int | None = None


# --------------------------------------------------------------------------- the network and optimizer of a config


def check_network_size(graph: Graph, what: str) -> None:
    """Refuses a network whose weights and neurons (float32 each) would take more than
    netgraph.limits.memory_limit(), or whose populations or weights exceed check_shape, before
    the trained network allocates them; `what` (the config's file) prefixes the error."""
    values = 0
    for node in graph.nodes:
        if isinstance(node, LIF):
            check_shape(node.shape, f"{what}: population {node.name}")
            values += node.neurons
        elif isinstance(node, Synapse):
            shape = node.weight_shape(graph.read_shape(node.name))
            check_shape(shape, f"{what}: synapse {node.name}'s weights")
            values += math.prod(shape)
    check_memory(values * BYTES_PER_VALUE, f"{what}: the network's weights and neurons")


def configured_network(config: RunConfig, input_shape: tuple[int, ...], source: str,
                       seed: int | None = None) -> SpikingNetwork:
    """SpikingNetwork.from_config (on CPU), once check_network_size has passed."""
    check_network_size(build_graph(config.model, input_shape, source), source)
    return SpikingNetwork.from_config(config.model, input_shape, seed=seed, source=source,
                                      threshold_gains=config.training.per_neuron_thresholds)


def training_network(config: RunConfig, input_shape: tuple[int, ...]) -> SpikingNetwork:
    """The configured network as its training method starts it, on CPU: initialised from
    config.seed, with the method's own neurons (lee2019) and trained parameters."""
    model = configured_network(config, input_shape, config.source, seed=config.seed)
    if config.training.method == "mpbp":
        mpbp.initialize(model, config.training.mpbp, config.seed)
    if config.training.method == "lee2019":
        lee2019.prepare(model, config.training.lee2019, config.seed)
    return model


def build_optimizer(parameters: Iterable[torch.nn.Parameter], training: TrainingConfig) -> torch.optim.Optimizer:
    """training.optimizer over the trained parameters (one group): what train.py steps and
    what a checkpoint's optimizer state must fit."""
    parameters = list(parameters)
    if training.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=training.learning_rate, weight_decay=training.weight_decay)
    return torch.optim.Adam(parameters, lr=training.learning_rate, weight_decay=training.weight_decay)


def trained_parameters(model: SpikingNetwork) -> list[torch.nn.Parameter]:
    """The parameters the optimizer steps, in its order (a frozen bias is not one)."""
    return [p for p in model.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- writing


def _flatten_optimizer(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).clone()
    return tensors


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Writes the checkpoint atomically (the previous file survives a crash mid-write)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in checkpoint.model_state.items()}
    groups: list[dict] = []
    if checkpoint.optimizer_state is not None:
        tensors.update(
            {k: v.cpu().contiguous() for k, v in _flatten_optimizer(checkpoint.optimizer_state).items()}
        )
        groups = checkpoint.optimizer_state["param_groups"]
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "config": json.dumps(checkpoint.config.to_dict()),
        "input_shape": json.dumps(list(checkpoint.input_shape)),
        "num_classes": str(checkpoint.num_classes),
        "epochs_completed": str(checkpoint.epochs_completed),
        "optimizer_param_groups": json.dumps(groups),
        "history": json.dumps(checkpoint.history),
        "versions": json.dumps(checkpoint.versions or package_versions()),
    }
    if checkpoint.origin:
        metadata["origin"] = json.dumps(checkpoint.origin)
    if checkpoint.world_size is not None:
        metadata["world_size"] = str(checkpoint.world_size)
    payload = save(tensors, metadata=metadata)
    with atomic_write(path) as handle:
        handle.write(payload)


# --------------------------------------------------------------------------- reading


def load_checkpoint(path: str | Path, allow_nonfinite: bool = False) -> Checkpoint:
    """Reads a checkpoint and checks all of it (module docstring); every error is one line
    naming the file and the key or tensor. allow_nonfinite: accept NaN and infinite weights
    and optimizer moments (to look at a run that diverged) instead of refusing them."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    metadata, tensors = _read_file(path)
    checkpoint = _checkpoint_from_file(metadata, tensors, path)
    model = _network_of(checkpoint)
    check_model_state(checkpoint.model_state, model, str(path), allow_nonfinite)
    if checkpoint.num_classes != model.num_outputs:
        raise CheckpointError(f"{path}: num_classes is {checkpoint.num_classes}, but the network its config describes "
                              f"has {model.num_outputs} output neurons")
    _check_history(checkpoint.history, checkpoint.epochs_completed, len(model.graph.populations), path)
    return checkpoint  # the optimizer state is checked where it is used: resuming (trainer.train)


def _read_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and the tensors of a safetensors file of a readable checkpoint version."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({one_line(exc)})") from exc
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an {CHECKPOINT_FORMAT} file (format={shown(metadata.get('format'))})")
    if metadata.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint format version {shown(metadata.get('format_version'))} is not "
            f"supported (this program reads versions {', '.join(READABLE_VERSIONS)})"
        )
    return metadata, tensors


def _checkpoint_from_file(metadata: dict[str, str], tensors: dict[str, torch.Tensor], path: Path) -> Checkpoint:
    """The checkpoint's fields, each parsed and checked on its own (not yet against the network)."""
    config = _embedded_config(metadata, path)
    epochs = _integer_field(metadata, "epochs_completed", path)
    if not 0 <= epochs <= config.training.epochs:
        raise CheckpointError(f"{path}: epochs_completed = {epochs} is outside [0, {config.training.epochs}] "
                              "(training.epochs of its config)")
    unexpected = sorted(name for name in tensors if not name.startswith(("model.", "optimizer.")))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} (a checkpoint holds model.* and "
                              "optimizer.* tensors)")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if metadata["format_version"] == "1":
        model_state = _keys_from_format_1(model_state, config, path)
    origin = _json_field(metadata, "origin", path) if "origin" in metadata else None
    if origin is not None and not isinstance(origin, dict):
        raise CheckpointError(f"{path}: metadata 'origin' must be a JSON object")
    return Checkpoint(
        config=config, input_shape=_input_shape(metadata, path),
        num_classes=_integer_field(metadata, "num_classes", path), epochs_completed=epochs,
        model_state=model_state,
        optimizer_state=_optimizer_state(tensors, _json_field(metadata, "optimizer_param_groups", path), path),
        history=_json_field(metadata, "history", path), versions=_versions(metadata, path), path=path,
        origin=origin, world_size=_world_size(metadata, path),
    )


def _world_size(metadata: dict[str, str], path: Path) -> int | None:
    """The number of processes that trained the checkpoint (metadata 'world_size', optional)."""
    if "world_size" not in metadata:
        return None
    world_size = _integer_field(metadata, "world_size", path)
    if world_size < 1:
        raise CheckpointError(f"{path}: metadata 'world_size' must be a number of processes >= 1, got {world_size}")
    return world_size


def _json_field(metadata: dict[str, str], key: str, path: Path) -> Any:
    if key not in metadata:
        raise CheckpointError(f"{path}: metadata '{key}' is missing")
    try:
        return read_json(metadata[key])
    except ValueError as exc:  # not JSON, repeated keys, or nested too deeply
        raise CheckpointError(f"{path}: metadata '{key}' is not valid JSON ({one_line(exc)[:200]})") from None


def _integer_field(metadata: dict[str, str], key: str, path: Path) -> int:
    text = metadata.get(key)
    if text is None:
        raise CheckpointError(f"{path}: metadata '{key}' is missing")
    try:
        return read_integer(text)
    except ValueError:
        raise CheckpointError(f"{path}: metadata '{key}' must be an integer, got {shown(text)}") from None


def _embedded_config(metadata: dict[str, str], path: Path) -> RunConfig:
    """The run config the checkpoint was trained with, validated (and bounded) like a file."""
    try:
        return config_from_dict(_json_field(metadata, "config", path), f"{path} (embedded config)")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def _input_shape(metadata: dict[str, str], path: Path) -> tuple[int, ...]:
    """One sample's input at one step: 1 to 3 positive sizes within netgraph.limits."""
    shape = _json_field(metadata, "input_shape", path)
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 3
            or not all(isinstance(size, int) and not isinstance(size, bool) for size in shape)):
        raise CheckpointError(f"{path}: metadata 'input_shape' must be a list of 1 to 3 integers, got {shown(shape)}")
    check_shape(shape, f"{path}: input_shape")
    return tuple(shape)


def _versions(metadata: dict[str, str], path: Path) -> dict[str, str]:
    versions = _json_field(metadata, "versions", path)
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise CheckpointError(f"{path}: metadata 'versions' must map package names to version strings")
    return versions


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: Any, path: Path) -> dict[str, Any] | None:
    """{'state': {parameter index: {key: tensor}}, 'param_groups': groups}, as torch's
    Optimizer.load_state_dict takes it; None when the checkpoint holds none (groups [])."""
    names = sorted(name for name in tensors if name.startswith("optimizer."))
    if groups == []:  # a network made elsewhere (e.g. imported from NIR) has no optimizer state
        if names:
            raise CheckpointError(f"{path}: tensor {names[0]!r} is optimizer state, but optimizer_param_groups "
                                  "is empty")
        return None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name in names:
        match = OPTIMIZER_TENSOR.fullmatch(name)
        if match is None:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} (optimizer state is named "
                                  "optimizer.<parameter index>.<key>)")
        state.setdefault(int(match[1]), {})[match[2]] = tensors[name]
    return {"state": state, "param_groups": groups}


def _keys_from_format_1(state: dict[str, torch.Tensor], config: RunConfig, path: Path) -> dict[str, torch.Tensor]:
    """Format 1 named parameters by config index (`layers.<i>.weight|bias`); each spiking
    layer then had one input, so its weight is its one synapse's and its bias its population's."""
    renamed = {}
    for key, value in state.items():
        prefix, index, leaf = key.split(".", 2) if key.count(".") == 2 else (key, "", "")
        if (prefix != "layers" or not re.fullmatch(r"[0-9]{1,6}", index) or int(index) >= len(config.model.layers)
                or leaf not in ("weight", "bias")):
            raise CheckpointError(f"{path}: format-1 checkpoint holds an unexpected tensor {'model.' + key!r}")
        layer = config.model.layers[int(index)]
        node = layer.name if leaf == "bias" else synapse_name(layer.name, layer.inputs[0])
        renamed[f"nodes.{node}.{leaf}"] = value
    return renamed


# --------------------------------------------------------------------------- checking against the network


def _network_of(checkpoint: Checkpoint) -> SpikingNetwork:
    """The network the checkpoint's config trains, as training builds it (on CPU); the global
    random stream its initialisation draws from is left as it was, so loading a checkpoint
    changes no caller's random numbers."""
    try:
        with torch.random.fork_rng(devices=[]):
            return training_network(checkpoint.config, checkpoint.input_shape)
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint.path}: the network its config describes cannot be built: {exc}") from exc


def check_model_state(state: dict[str, torch.Tensor], model: SpikingNetwork, where: str,
                      allow_nonfinite: bool = False) -> None:
    """`state` holds exactly the tensors of `model`'s state_dict, each of its shape and dtype,
    finite (unless allow_nonfinite), thresholds gains above 0; `where` (the file) prefixes errors."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    if missing:
        raise CheckpointError(f"{where}: tensor model.{missing[0]} is missing"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(name for name in state if name not in expected)
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensor model.{unexpected[0]} (the network its config describes "
                              "has no such parameter)")
    for name, wanted in expected.items():
        _check_tensor(state[name], tuple(wanted.shape), wanted.dtype, f"model.{name}", where, allow_nonfinite)
        if name.endswith(".threshold_gain") and bool((state[name] <= 0).any()):
            raise CheckpointError(f"{where}: tensor model.{name} holds threshold gains <= 0 (thresholds must be "
                                  "positive)")


def _check_tensor(tensor: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, name: str, where: str,
                  allow_nonfinite: bool) -> None:
    if tuple(tensor.shape) != shape:
        raise CheckpointError(f"{where}: tensor {name} has shape {tuple(tensor.shape)}, expected {shape}")
    if tensor.dtype != dtype:
        raise CheckpointError(f"{where}: tensor {name} has dtype {tensor.dtype}, expected {dtype}")
    if not allow_nonfinite:
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise CheckpointError(f"{where}: tensor {name} holds {bad} NaN or infinite value(s) (the run diverged "
                                  "or the file is corrupt)")


def _check_history(history: Any, epochs_completed: int, populations: int, path: Path) -> None:
    """One record per completed epoch, each with the keys and value types train.py writes."""
    if not isinstance(history, list):
        raise CheckpointError(f"{path}: metadata 'history' must be a list of per-epoch records, got "
                              f"{type(history).__name__}")
    if len(history) != epochs_completed:
        raise CheckpointError(f"{path}: metadata 'history' holds {len(history)} epoch records, but "
                              f"epochs_completed is {epochs_completed}")
    for i, record in enumerate(history):
        _check_history_record(record, i, populations, f"{path}: history[{i}]")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_history_record(record: Any, index: int, populations: int, where: str) -> None:
    if not isinstance(record, dict):
        raise CheckpointError(f"{where}: expected a per-epoch record (a JSON object), got {type(record).__name__}")
    missing, extra = sorted(HISTORY_KEYS - record.keys()), sorted(str(k) for k in record.keys() - HISTORY_KEYS)
    if missing or extra:
        raise CheckpointError(f"{where}: " + (f"key '{missing[0]}' is missing" if missing else
                                              f"unexpected key {extra[0]!r}")
                              + f" (a record holds {', '.join(sorted(HISTORY_KEYS))})")
    if record["epoch"] != index + 1 or not isinstance(record["epoch"], int) or isinstance(record["epoch"], bool):
        raise CheckpointError(f"{where}.epoch: expected {index + 1}, got {shown(record['epoch'])}")
    for key, (wanted, holds) in HISTORY_NUMBERS.items():
        if not (_is_number(record[key]) and holds(record[key])):
            raise CheckpointError(f"{where}.{key}: expected {wanted}, got {shown(record[key])}")
    for key in HISTORY_RATES:
        rates = record[key]
        if not isinstance(rates, list) or len(rates) != populations or not all(map(_is_number, rates)):
            raise CheckpointError(f"{where}.{key}: expected a list of {populations} finite numbers (one per "
                                  f"population), got {shown(rates)}")


def check_optimizer_state(state: Any, optimizer: torch.optim.Optimizer, where: str,
                          allow_nonfinite: bool = False) -> None:
    """A saved optimizer state fits `optimizer` (as build_optimizer makes it): the same
    param_groups (the learning rate aside, which train.py sets per epoch), and for each
    parameter either no entry or every key the optimizer keeps, of the parameter's shape
    and dtype (`step` a count); `where` (the file) prefixes errors."""
    fresh = optimizer.state_dict()["param_groups"]
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    _check_param_groups(state["param_groups"], fresh, where)
    kind = "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"
    for index, entry in sorted(state["state"].items()):
        if index >= len(parameters):
            raise CheckpointError(f"{where}: unexpected tensor optimizer.{index}.{sorted(entry)[0]} (the optimizer "
                                  f"steps {len(parameters)} parameters, 0 to {len(parameters) - 1})")
        _check_optimizer_entry(entry, index, parameters[index], kind, where, allow_nonfinite)


def _check_param_groups(groups: Any, fresh: list[dict[str, Any]], where: str) -> None:
    """The saved param_groups (JSON) agree with those of a fresh optimizer on every key both
    hold, the learning rate aside. A key only the fresh one has was added by a later torch
    (its __setstate__ fills torch's default in when the state is loaded); a key only the saved
    one has, by an earlier or later torch: neither makes the file unreadable."""
    if not isinstance(groups, list) or len(groups) != len(fresh) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{where}: metadata 'optimizer_param_groups' must be a list of {len(fresh)} group(s) "
                              f"(JSON objects), got {shown(groups)}")
    for i, (group, wanted) in enumerate(zip(groups, json.loads(json.dumps(fresh)))):  # tuples as JSON lists
        name = f"{where}: optimizer_param_groups[{i}]"
        for key in ("params", "lr"):  # what loading the state and stepping need whatever the version
            if key not in group:
                raise CheckpointError(f"{name}: key '{key}' is missing")
        lr = group["lr"]
        if not (_is_number(lr) and lr > 0):
            raise CheckpointError(f"{name}.lr: expected a positive number, got {shown(lr)}")
        for key, value in wanted.items():
            if key != "lr" and key in group and group[key] != value:
                raise CheckpointError(f"{name}.{key}: expected {shown(value)} (as its config builds the optimizer), "
                                      f"got {shown(group[key])}")


def _check_optimizer_entry(entry: dict[str, torch.Tensor], index: int, parameter: torch.Tensor, kind: str,
                           where: str, allow_nonfinite: bool) -> None:
    wanted = OPTIMIZER_STATE_KEYS[kind]
    extra, missing = sorted(entry.keys() - wanted), sorted(wanted - entry.keys())
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor optimizer.{index}.{extra[0]} ({kind} keeps "
                              f"{', '.join(sorted(wanted)) or 'no state'} per parameter)")
    if missing:
        raise CheckpointError(f"{where}: tensor optimizer.{index}.{missing[0]} is missing (parameter {index} has "
                              f"{', '.join(sorted(entry))} but not {', '.join(missing)})")
    for key in sorted(wanted - {"step"}):  # Adam's moments: the parameter's shape and dtype
        _check_tensor(entry[key], tuple(parameter.shape), parameter.dtype, f"optimizer.{index}.{key}", where,
                      allow_nonfinite)
    if "exp_avg_sq" in entry and bool((entry["exp_avg_sq"] < 0).any()):
        raise CheckpointError(f"{where}: tensor optimizer.{index}.exp_avg_sq holds negative values (it is a mean "
                              "of squares)")
    if "step" in entry:
        step = entry["step"]
        _check_tensor(step, (), torch.float32, f"optimizer.{index}.step", where, False)
        if float(step) < 0 or float(step) != round(float(step)):
            raise CheckpointError(f"{where}: tensor optimizer.{index}.step must count steps (an integer >= 0), "
                                  f"got {float(step)}")


def build_model(checkpoint: Checkpoint) -> SpikingNetwork:
    """The SpikingNetwork of a checkpoint with its trained weights, in eval mode, on CPU."""
    try:
        model = configured_network(checkpoint.config, checkpoint.input_shape, f"{checkpoint.path} (embedded config)")
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint.path}: the network its config describes cannot be built: {exc}") from exc
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{checkpoint.path}: weights do not fit the model described by its config: {exc}"
        ) from exc
    return model.eval()


def float_graph(checkpoint: Checkpoint) -> Graph:
    """The checkpoint's network graph with its trained float parameters (for the exporter).
    Refuses a network trained with a neuron the graph's LIF (and Lava 0.10.0's fixed-point
    LIF) does not have: a refractory period (HM2-BP) or a subtractive reset (MPBP's paper neuron)."""
    reason = float_only_neuron(checkpoint.config.training)
    if reason is not None:
        raise CheckpointError(f"{checkpoint.path}: trained with {reason}")
    return build_model(checkpoint).float_graph()


def _population_bias(graph: Graph, lif: LIF) -> torch.Tensor:
    """A population's bias as the trainer holds it: per neuron, or per channel for (C, H, W)."""
    bias = torch.zeros(lif.neurons, dtype=torch.float64) if lif.bias is None else torch.as_tensor(lif.bias).double()
    if len(lif.shape) != 3:
        return bias.float()
    per_channel = bias.reshape(lif.shape[0], -1)
    if not torch.all(per_channel == per_channel[:, :1]):
        raise ConfigError(f"population {lif.name}: its bias varies within a channel; the trainer's conv layers "
                          "hold one bias per channel")
    return per_channel[:, 0].float()


def checkpoint_from_graph(graph: Graph, settings: dict[str, Any], source: str,
                          origin: dict[str, Any] | None = None) -> Checkpoint:
    """A checkpoint holding a float network made elsewhere (e.g. imported from NIR), so that
    export, run and compare take it like a trained one.

    settings: the run config's other sections as raw mappings (data, encoding, training,
    seed, output_dir; model-wide keys under 'model'); the layers come from the graph.
    origin: where the network came from (file, hash, producer), recorded in the checkpoint.
    Raises ConfigError (naming `source`) for what a run config cannot hold.
    """
    raw = {key: value for key, value in settings.items() if key != "model"}
    try:
        layers = layers_from_graph(graph)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    raw["model"] = {**settings.get("model", {}), "layers": layers}
    config = config_from_dict(raw, source)
    model = configured_network(config, tuple(graph.input.shape), source)
    state = model.state_dict()
    names = synapse_names_in_config(graph)
    for node in graph.nodes:
        if isinstance(node, Synapse):
            state[f"nodes.{names[node.name]}.weight"] = torch.as_tensor(node.weight).float()
        elif isinstance(node, LIF):
            try:
                state[f"nodes.{node.name}.bias"] = _population_bias(graph, node)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{source}: the weights do not fit the network its layers describe: {exc}") from exc
    return Checkpoint(config=config, input_shape=tuple(graph.input.shape), num_classes=graph.output_population.neurons,
                      epochs_completed=0, model_state=model.state_dict(), optimizer_state=None,
                      history=[], versions=package_versions(), origin=origin)
