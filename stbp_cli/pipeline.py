"""The stages composed: a checkpoint exported, test spikes encoded once, and the trained
model, the emulator and Lava run on them for the fidelity harness.

This is the one place that joins the trainer (torch) with the deployment side (export,
lava_backend), which never import it or each other's upward neighbours.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch

from export.artifact import load_artifact
from export.emulator import emulate
from export.hw_config import HardwareConfig
from export.network import ExportedNetwork
from export.quantize import quantize_graph
from export.report import QuantizationReport
from lava_backend.fidelity import BACKENDS, BackendRun, FidelityReport, build_report
from lava_backend.runner import run_network
from netgraph.provenance import package_versions
from spikedata import Split, load_dataset
from trainer.checkpoint import Checkpoint, build_model, float_graph, load_checkpoint
from trainer.encoding import encode_split


class FidelityError(ValueError):
    """The checkpoint, artifact and data cannot be compared (e.g. they do not belong together)."""


def export_checkpoint(checkpoint_path: str | Path, hw: HardwareConfig,
                      allow_clip: bool = False) -> tuple[ExportedNetwork, QuantizationReport]:
    """Quantizes a trainer checkpoint's network graph; the artifact records where it came from."""
    checkpoint = load_checkpoint(checkpoint_path)
    history = checkpoint.history[-1] if checkpoint.history else {}
    metadata = {
        "source_checkpoint": str(checkpoint_path),
        "source_checkpoint_sha256": hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest(),
        "training_config": checkpoint.config.to_dict(),
        "training_versions": checkpoint.versions,
        "training_seed": checkpoint.config.seed,
        "trained_test_accuracy": history.get("test_accuracy"),
        "export_versions": package_versions(),
    }
    config = checkpoint.config
    return quantize_graph(float_graph(checkpoint), config.encoding.kind, config.encoding.time_steps,
                          config.training.eval_seed, hw, allow_clip, metadata)


def evaluation_split(network: ExportedNetwork, name: str, path: str | None, limit: int | None) -> Split:
    """The test split a network is evaluated on (T frames per event recording)."""
    return load_dataset(name, path, network.time_steps).test.head(limit)


def evaluation_spikes(network: ExportedNetwork, split: Split) -> np.ndarray:
    """The evaluation encoding of `split` with the network's seed: uint8 (N, T, *input_shape)."""
    return encode_split(network.encoding, split.inputs, network.time_steps, network.eval_seed)


def _rate(samples: int, wall: float) -> float:
    return samples / wall if wall > 0 else math.inf


def trained_run(checkpoint: Checkpoint, spikes: np.ndarray, batch_size: int = 256) -> BackendRun:
    """The float PyTorch model on CPU: spikes (samples, T, *input_shape) uint8."""
    model = build_model(checkpoint).cpu().eval()
    started = time.perf_counter()
    chunks: list[dict[str, np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, len(spikes), batch_size):
            out = model(torch.from_numpy(spikes[start:start + batch_size]).float())
            chunks.append({name: s.to(torch.uint8).numpy() for name, s in out.population_spikes.items()})
    wall = time.perf_counter() - started
    populations = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
    return BackendRun("trained", populations, model.graph.output_population.name, _rate(len(spikes), wall))


def emulator_run(network: ExportedNetwork, spikes: np.ndarray, progress: bool = False) -> BackendRun:
    started = time.perf_counter()
    result = emulate(network, spikes, progress=progress)
    return BackendRun("emulator", result.population_spikes, result.output,
                      _rate(len(spikes), time.perf_counter() - started))


def lava_run(network: ExportedNetwork, spikes: np.ndarray, mode: str, shards: int | None = None,
             progress: bool = False) -> BackendRun:
    result = run_network(network, spikes, mode=mode, record="all", shards=shards, progress=progress)
    name = "lava_fixed" if mode == "fixed_pt" else "lava_float"
    return BackendRun(name, result.population_spikes, result.output, result.samples_per_s)


def run_fidelity(checkpoint_path, artifact_path, data_path: str | None = None, limit: int | None = None,
                 backends: tuple[str, ...] = BACKENDS, shards: int | None = None,
                 progress: bool = True) -> tuple[FidelityReport, dict[str, BackendRun]]:
    """Runs the chosen backends on the checkpoint's test split, encoded once, and compares them."""
    network = load_artifact(artifact_path)
    checkpoint = load_checkpoint(checkpoint_path)
    expected_hash = network.metadata.get("source_checkpoint_sha256")
    actual_hash = hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest()
    if expected_hash is None:
        raise FidelityError(f"{artifact_path} does not record the checkpoint it was exported from "
                            "(source_checkpoint_sha256), so it cannot be compared with one; export it with `stbp export`")
    if expected_hash != actual_hash:
        raise FidelityError(f"{artifact_path} was exported from a different checkpoint than {checkpoint_path} "
                            f"(sha256 {expected_hash[:12]}... vs {actual_hash[:12]}...); export it again")
    unknown = set(backends) - set(BACKENDS)
    if unknown or "trained" not in backends:
        raise FidelityError(f"backends must include 'trained' and come from {', '.join(BACKENDS)}; "
                            f"got {', '.join(backends)}")
    data = checkpoint.config.data
    split = evaluation_split(network, data.name, data_path or data.path, limit if limit is not None else data.test_limit)
    if len(split.labels) == 0:
        raise FidelityError("no test samples to compare (check --limit and the data set)")
    spikes = evaluation_spikes(network, split)
    runs: dict[str, BackendRun] = {"trained": trained_run(checkpoint, spikes)}
    if "emulator" in backends:
        runs["emulator"] = emulator_run(network, spikes, progress)
    for name, mode in (("lava_fixed", "fixed_pt"), ("lava_float", "floating_pt")):
        if name in backends:
            runs[name] = lava_run(network, spikes, mode, shards, progress)
    metadata = {
        "checkpoint": str(checkpoint_path), "artifact": str(artifact_path), "dataset": data.name,
        "data_path": data_path or data.path, "eval_seed": network.eval_seed, "hw_config": network.hardware.name,
        "versions": package_versions(),
    }
    return build_report(runs, split.labels, network.time_steps, metadata), runs
