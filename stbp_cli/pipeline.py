"""The stages composed: a checkpoint exported, test spikes encoded once, and the trained
model, the emulator and Lava run on them for the fidelity harness.

This is the one place that joins the trainer (torch) with the deployment side (export,
lava_backend), which never import it or each other's upward neighbours.
"""
from __future__ import annotations

import dataclasses
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
from export.report import MeasuredLayerError, QuantizationReport
from interchange.nir_export import write_nir
from interchange.nir_import import ImportedNetwork, NIRImportError, import_nir, read_nir
from lava_backend.fidelity import BACKENDS, REFERENCE, BackendRun, FidelityReport, build_report, compare_pair
from lava_backend.runner import run_network
from netgraph import Dense, Graph, Input
from netgraph.errors import FidelityError
from netgraph.limits import check_memory
from netgraph.provenance import package_versions
from spikedata import DataError, Split, load_dataset
from trainer.checkpoint import Checkpoint, build_model, checkpoint_from_graph, float_graph, load_checkpoint, save_checkpoint
from trainer.encoding import encode_split


def export_checkpoint(checkpoint_path: str | Path, hw: HardwareConfig, allow_clip: bool = False,
                      netx: bool = False, measure_samples: int = 0,
                      data_path: str | None = None) -> tuple[ExportedNetwork, QuantizationReport]:
    """Quantizes a trainer checkpoint's network graph; the artifact records where it came from.
    netx: quantize so that lava-dl netx reproduces the integers exactly (export.netx).
    measure_samples: also measure each population's quantization error on the first N test
    samples of the checkpoint's data set (data_path, else the config's), into the report; when
    the data set's files are missing, the report says so instead (the export itself stands)."""
    checkpoint = load_checkpoint(checkpoint_path)
    history = checkpoint.history[-1] if checkpoint.history else {}
    metadata = {
        "source_checkpoint": str(checkpoint_path),
        "source_checkpoint_sha256": hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest(),
        "training_config": checkpoint.config.to_dict(),
        "training_versions": checkpoint.versions,
        "origin": checkpoint.origin,
        "training_seed": checkpoint.config.seed,
        "trained_test_accuracy": history.get("test_accuracy"),
        "export_versions": package_versions(),
    }
    config = checkpoint.config
    network, report = quantize_graph(float_graph(checkpoint), config.encoding.kind, config.encoding.time_steps,
                                     config.training.eval_seed, hw, allow_clip, metadata, netx=netx)
    if measure_samples:
        try:
            report = measure_layer_errors(checkpoint, network, report, measure_samples, data_path or config.data.path)
        except DataError as exc:
            report = dataclasses.replace(report, warnings=(*report.warnings, f"quantization error not measured on "
                                                           f"data ({exc}); pass --data-path, or --measure 0"))
    network = dataclasses.replace(network, metadata={**network.metadata, "quantization_report": report.to_dict()})
    return network, report


def measure_layer_errors(checkpoint: Checkpoint, network: ExportedNetwork, report: QuantizationReport, samples: int,
                         data_path: str | None) -> QuantizationReport:
    """The report with each population's trained-vs-integer error on `samples` test samples
    (error growth with depth); raises the data set's own error when its files are missing."""
    split = evaluation_split(network, checkpoint.config.data.name, data_path, samples, checkpoint.config.data.dataset)
    spikes = evaluation_spikes(network, split)
    comparison = compare_pair(trained_run(checkpoint, spikes), emulator_run(network, spikes), False)
    depth = {p.name: p.depth for p in report.populations}
    measured = tuple(MeasuredLayerError(p.population, depth[p.population], p.spike_train_match,
                                        p.spike_count_correlation, p.reference_rate, p.candidate_rate)
                     for p in comparison.populations if p.population not in comparison.non_spiking)
    potential = comparison.output_potential
    return dataclasses.replace(report, measured=measured, measured_samples=len(split.labels),
                               measured_output_potential_error=None if potential is None
                               else potential.rms_difference / max(potential.reference_rms, 1e-300))


def evaluation_split(network: ExportedNetwork, name: str, path: str | None, limit: int | None,
                     dataset: str | None = None) -> Split:
    """The test split a network is evaluated on (T frames per event recording); dataset:
    which tonic data set (data.dataset) for name 'tonic'."""
    return load_dataset(name, path, network.time_steps, dataset).test.head(limit)


def evaluation_spikes(network: ExportedNetwork, split: Split) -> np.ndarray:
    """The evaluation encoding of `split` with the network's seed: uint8 (N, T, *input_shape)."""
    check_memory(2 * len(split.labels) * network.time_steps * math.prod(network.input_shape),  # chunks, then joined
                 f"the input spikes of {len(split.labels)} samples (T = {network.time_steps}; use --limit)")
    return encode_split(network.encoding, split.inputs, network.time_steps, network.eval_seed)


def _rate(samples: int, wall: float) -> float:
    return samples / wall if wall > 0 else math.inf


def trained_run(checkpoint: Checkpoint, spikes: np.ndarray, batch_size: int = 256) -> BackendRun:
    """The float PyTorch model on CPU: spikes (samples, T, *input_shape) uint8."""
    model = build_model(checkpoint).cpu().eval()
    started = time.perf_counter()
    chunks: list[dict[str, np.ndarray]] = []
    potentials = []
    with torch.no_grad():
        for start in range(0, len(spikes), batch_size):
            out = model(torch.from_numpy(spikes[start:start + batch_size]).float())
            chunks.append({name: s.to(torch.uint8).numpy() for name, s in out.population_spikes.items()})
            if out.output_potential is not None:
                potentials.append(out.output_potential.double().numpy())
    wall = time.perf_counter() - started
    populations = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
    return BackendRun("trained", populations, model.graph.output_population.name, _rate(len(spikes), wall),
                      model.graph.output.readout, np.concatenate(potentials) if potentials else None)


def emulator_run(network: ExportedNetwork, spikes: np.ndarray, progress: bool = False) -> BackendRun:
    started = time.perf_counter()
    result = emulate(network, spikes, progress=progress)
    potential = None if result.output_potential is None else network.potential_in_trained_units(result.output_potential)
    return BackendRun("emulator", result.population_spikes, result.output,
                      _rate(len(spikes), time.perf_counter() - started), result.readout, potential)


def lava_run(network: ExportedNetwork, spikes: np.ndarray, mode: str, shards: int | None = None,
             progress: bool = False, conv_mapping: str = "conv") -> BackendRun:
    result = run_network(network, spikes, mode=mode, record="all", shards=shards, progress=progress,
                         conv_mapping=conv_mapping)
    name = "lava_fixed" if mode == "fixed_pt" else "lava_float"
    potential = result.output_potential
    if potential is not None and mode == "fixed_pt":
        potential = network.potential_in_trained_units(potential)
    return BackendRun(name, result.population_spikes, result.output, result.samples_per_s, result.readout, potential)


def run_fidelity(checkpoint_path, artifact_path, data_path: str | None = None, limit: int | None = None,
                 backends: tuple[str, ...] = BACKENDS, shards: int | None = None, progress: bool = True,
                 reference: str | None = None,
                 conv_mapping: str = "conv") -> tuple[FidelityReport, dict[str, BackendRun]]:
    """Runs the chosen backends on the checkpoint's test split, encoded once, and compares them.
    reference: a .npz of spikes the source framework recorded on the same input spikes (see
    load_reference), compared with the trained model, the emulator and Lava fixed_pt."""
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
    split = evaluation_split(network, data.name, data_path or data.path, limit if limit is not None else data.test_limit,
                             data.dataset)
    if len(split.labels) == 0:
        raise FidelityError("no test samples to compare (check --limit and the data set)")
    spikes = evaluation_spikes(network, split)
    runs: dict[str, BackendRun] = {}
    if reference is not None:
        runs[REFERENCE] = load_reference(reference, network.graph, checkpoint.origin, spikes.shape[:2])
    runs["trained"] = trained_run(checkpoint, spikes)
    if "emulator" in backends:
        runs["emulator"] = emulator_run(network, spikes, progress)
    for name, mode in (("lava_fixed", "fixed_pt"), ("lava_float", "floating_pt")):
        if name in backends:
            runs[name] = lava_run(network, spikes, mode, shards, progress, conv_mapping)
    metadata = {
        "checkpoint": str(checkpoint_path), "artifact": str(artifact_path),
        "dataset": data.name if data.dataset is None else f"{data.name}:{data.dataset}",
        "data_path": data_path or data.path, "eval_seed": network.eval_seed, "hw_config": network.hardware.name,
        "versions": package_versions(), "reference": reference, "origin": checkpoint.origin,
        "lava_conv_mapping": conv_mapping,
        "population_shapes": {name: list(network.graph.shape_of(name)) for name in runs["trained"].population_spikes},
    }
    return build_report(runs, split.labels, network.time_steps, metadata), runs


def load_reference(path: str | Path, graph: Graph, origin: dict | None, samples_steps: tuple[int, int]) -> BackendRun:
    """Spikes a source framework recorded on the evaluation input spikes (`stbp run
    --save-input-spikes`): a .npz with one uint8/bool array (samples, T, *shape) per population,
    keyed by the graph's population name, the NIR node name it was imported from, or `output`."""
    if graph.output.readout != "spikes":
        raise FidelityError(f"{path}: a framework reference holds spikes, but this network is read through its output "
                            "potential (readout 'potential'); compare it without --reference")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FidelityError(f"{path}: not a readable .npz of spike arrays ({exc})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise FidelityError(f"{path}: a single array; the reference must be a .npz with one array per population")
    with loaded as data:
        arrays = {key: data[key] for key in data.files}
    from_nir = {nir_key: name for name, nir_key in (origin or {}).get("nir_names", {}).items()}
    populations = {p.name: p for p in graph.populations}
    recorded: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        name = graph.output_population.name if key == "output" else from_nir.get(key, key)
        if name not in populations:
            raise FidelityError(f"{path}: array {key!r} names no population of the network "
                                f"({', '.join(populations)}, or 'output')")
        expected = (*samples_steps, populations[name].neurons)
        if array.ndim < 3 or array.shape[:2] != samples_steps or math.prod(array.shape[2:]) != expected[2]:
            raise FidelityError(f"{path}: array {key!r} has shape {array.shape}; expected (samples, T, neurons) = "
                                f"{expected} for population {name} (record it on the inputs `stbp run "
                                "--save-input-spikes` wrote, with the same --limit)")
        if not np.isin(array, (0, 1)).all():
            raise FidelityError(f"{path}: array {key!r} holds values other than 0 and 1")
        recorded[name] = array.reshape(expected).astype(np.uint8)
    if graph.output_population.name not in recorded:
        raise FidelityError(f"{path}: holds no spikes of the output population {graph.output_population.name} "
                            "(key it by that name or 'output')")
    ordered = {p: recorded[p] for p in populations if p in recorded}
    return BackendRun(REFERENCE, ordered, graph.output_population.name, math.nan)


def export_nir(checkpoint_path: str | Path, output: str | Path, dt: float, r_convention: str = "tau"):
    """Writes a checkpoint's float network as a NIR file; returns the NIR graph written."""
    checkpoint = load_checkpoint(checkpoint_path)
    graph = float_graph(checkpoint)
    return write_nir(graph, output, dt, metadata={
        "source_checkpoint": str(checkpoint_path),
        "source_checkpoint_sha256": hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest(),
    }, r_convention=r_convention)


def import_nir_checkpoint(nir_path: str | Path, output_dir: str | Path, dt: float | None, settings: dict,
                          input_shape: tuple[int, ...]) -> tuple[Path, ImportedNetwork]:
    """Imports a NIR file as a checkpoint in `output_dir` (checkpoint.safetensors), for inputs
    of `input_shape` (the data set's: a NIR input of the same size that feeds only dense
    synapses is reshaped to it, since a dense synapse reads its input flattened)."""
    imported = import_nir(read_nir(nir_path), dt, source=str(nir_path))
    graph = _with_input_shape(imported.graph, tuple(input_shape), str(nir_path))
    origin = {
        "nir_file": str(nir_path), "nir_sha256": hashlib.sha256(Path(nir_path).read_bytes()).hexdigest(),
        "dt": imported.dt, "notes": list(imported.notes), "nir_names": imported.nir_names,
    }
    checkpoint = checkpoint_from_graph(graph, settings, f"{nir_path} (imported)", origin)
    path = Path(output_dir) / "checkpoint.safetensors"
    save_checkpoint(path, checkpoint)
    return path, imported


def _with_input_shape(graph: Graph, shape: tuple[int, ...], source: str) -> Graph:
    current = tuple(graph.input.shape)
    if current == shape:
        return graph
    readers = [graph.node(e.target) for e in graph.consumers_of(graph.input.name)]
    if math.prod(current) != math.prod(shape) or not all(isinstance(r, Dense) for r in readers):
        raise NIRImportError(f"{source}: the network's input has shape {current}, the data set's samples {shape}")
    return graph.replace(nodes=[Input(graph.input.name, shape)])
