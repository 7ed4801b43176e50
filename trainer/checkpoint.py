"""Checkpoints: safetensors files (tensors + string metadata) that cannot execute code.

A checkpoint holds the run config, the model weights, the Adam state, the number of
completed epochs, the per-epoch history and the versions that produced it. Training that
resumes from it continues exactly as if it had not stopped (per-epoch random streams are
derived from the seed and the epoch number, so no RNG state needs saving).

Format 2 keys the weights by network-graph node (`nodes.<node>.weight|bias`, see
trainer.network). Format 1 (before the graph: `layers.<config index>.weight|bias`) is read
and its keys mapped onto the graph the same config builds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from netgraph import LIF, Graph, Synapse
from netgraph.errors import CheckpointError
from netgraph.provenance import atomic_write, package_versions
from trainer.architecture import layers_from_graph, synapse_name, synapse_names_in_config
from trainer.config import ConfigError, RunConfig, config_from_dict, float_only_neuron
from trainer.network import SpikingNetwork

CHECKPOINT_FORMAT = "stbp-checkpoint"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = ("1", "2")




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


def _flatten_optimizer(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).clone()
    return tensors


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}


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
    payload = save(tensors, metadata=metadata)
    with atomic_write(path) as handle:
        handle.write(payload)


def _read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Reads and validates a checkpoint; every error names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        metadata = _read_metadata(path)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an {CHECKPOINT_FORMAT} file (format={metadata.get('format')!r})")
    if metadata.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint format version {metadata.get('format_version')!r} is not "
            f"supported (this program reads versions {', '.join(READABLE_VERSIONS)})"
        )
    try:
        config = config_from_dict(json.loads(metadata["config"]), f"{path} (embedded config)")
        groups = json.loads(metadata["optimizer_param_groups"])
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        if metadata["format_version"] == "1":
            model_state = _keys_from_format_1(model_state, config)
        optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
        return Checkpoint(
            config=config,
            input_shape=tuple(json.loads(metadata["input_shape"])),
            num_classes=int(metadata["num_classes"]),
            epochs_completed=int(metadata["epochs_completed"]),
            model_state=model_state,
            optimizer_state=_unflatten_optimizer(optimizer_tensors, groups) if groups else None,
            history=json.loads(metadata["history"]),
            versions=json.loads(metadata["versions"]),
            path=path,
            origin=json.loads(metadata["origin"]) if "origin" in metadata else None,
        )
    except (KeyError, json.JSONDecodeError, ConfigError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete or invalid: {exc}") from exc


def _keys_from_format_1(state: dict[str, torch.Tensor], config: RunConfig) -> dict[str, torch.Tensor]:
    """Format 1 named parameters by config index (`layers.<i>.weight|bias`); each spiking
    layer then had one input, so its weight is its one synapse's and its bias its population's."""
    renamed = {}
    for key, value in state.items():
        prefix, index, leaf = key.split(".", 2) if key.count(".") == 2 else (key, "", "")
        if prefix != "layers" or not index.isdigit() or int(index) >= len(config.model.layers):
            raise CheckpointError(f"format-1 checkpoint holds an unexpected tensor {key!r}")
        layer = config.model.layers[int(index)]
        node = layer.name if leaf == "bias" else synapse_name(layer.name, layer.inputs[0])
        renamed[f"nodes.{node}.{leaf}"] = value
    return renamed


def build_model(checkpoint: Checkpoint) -> SpikingNetwork:
    """The SpikingNetwork of a checkpoint with its trained weights, in eval mode, on CPU."""
    try:
        model = SpikingNetwork.from_config(checkpoint.config.model, checkpoint.input_shape,
                                           source=f"{checkpoint.path} (embedded config)",
                                           threshold_gains=checkpoint.config.training.per_neuron_thresholds)
    except (ConfigError, ValueError) as exc:
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
    model = SpikingNetwork.from_config(config.model, tuple(graph.input.shape), source=source)
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
