"""Runs an exported network on Lava 0.10.0's CPU simulator, many samples per run.

Graph, built from the artifact alone (no trainer import):

    SpikeIO.s_out -> [Dense -> LIFReset] x layers; recorded LIFReset.s_out -> SpikeIO.a_in<i>

Timing. Lava's Dense sends at step t what it accumulated at step t-1, so layer l (0-based)
sees the input of sample step j at Lava step j + l + 2 (steps are 1-based; SpikeIO sends
row j at step j + 1). Samples are played back to back, T steps each; `LIFReset` zeroes u and
v at the start of every step with `time_step % T == reset_offset`, so each layer's
`reset_offset` is (l + 2) mod T: the step at which its first input of a new sample
arrives. The recorder of layer l therefore holds sample k's step j in row k T + j + l + 1,
and the run lasts samples * T + layers steps so the last sample leaves the pipeline.
`PipelineSchedule` is this arithmetic, in one place; outputs are re-aligned to
(samples, T, neurons), the emulator's zero-delay timing.

Convolutions (with any average pool folded in by the exporter) are handed to Lava as a
`Dense` with the conv unrolled into its (out, in) matrix (`ExportedLayer.weight_matrix`): the
same bit-accurate Dense arithmetic that every layer uses, so the mapping is exact by
construction, at the cost of storing every synapse (the quantization report's core count
says what that means on a chip).

Parameters. `fixed_pt` hands Lava the artifact's integers (weights, sign mode, weight_exp,
du, dv, vth, bias_mant, bias_exp), validated first: a non-integer vth/du/dv makes a
fixed-point run hang. `floating_pt` hands it the trained float parameters: du = 1 (u takes
each step's input), dv = 1 - tau, bias_mant = b, and vth = the largest float64 below Vth,
because Lava fires on v > vth and STBP on u >= Vth.

The runtime is always stopped, on success, on exceptions and on Ctrl-C, and any worker
process that survives the stop is terminated.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.artifact import ExportedLayer, ExportedNetwork
from export.emulator import predict_classes
from export.validate import validate_network

MODES = ("fixed_pt", "floating_pt")

# Lava 0.10.0's bit-accurate LIF and Dense hard-code these (lava/proc/lif/models.py
# AbstractPyLifModelFixed.__init__, lava/utils/weightutils.py clip_weights(num_bits=8)); a
# hardware config that says otherwise describes arithmetic Lava does not run.
LAVA_FIXED_CONSTANTS = {"vth_shift": 6, "activation_shift": 6, "decay_bits": 12, "du_offset": 1,
                        "dv_offset": 0, "state_bits": 24, "weight_bits": 8}


def check_lava_compatible(network: ExportedNetwork) -> None:
    """Raises ValueError when the artifact's hardware config differs from Lava's constants."""
    hw = network.hardware
    differing = {k: (getattr(hw, k), v) for k, v in LAVA_FIXED_CONSTANTS.items() if getattr(hw, k) != v}
    if differing:
        raise ValueError(f"hardware config {hw.name!r} differs from what Lava 0.10.0's fixed-point models compute: "
                         + ", ".join(f"{k} = {mine} (Lava: {lava})" for k, (mine, lava) in differing.items()))


class LavaRunError(RuntimeError):
    """A Lava run failed or did not produce its recordings."""


@dataclass(frozen=True)
class PipelineSchedule:
    """Where each sample's steps sit in one long Lava run (see the module docstring)."""

    samples: int
    time_steps: int
    num_layers: int

    @property
    def total_steps(self) -> int:
        return self.samples * self.time_steps + self.num_layers

    def reset_offset(self, layer: int) -> int:
        """Lava step (mod T) at which layer `layer` receives the first input of a sample."""
        return (layer + 2) % self.time_steps

    def first_row(self, layer: int) -> int:
        """Recorder row (0-based) holding sample 0, step 0 of layer `layer`."""
        return layer + 1

    def align(self, rows: np.ndarray, layer: int) -> np.ndarray:
        """Recorder rows (total_steps, neurons) -> (samples, T, neurons) in sample time."""
        start = self.first_row(layer)
        used = rows[start : start + self.samples * self.time_steps]
        return used.reshape(self.samples, self.time_steps, -1)


@dataclass
class LavaRunResult:
    """Spikes of the recorded layers, each uint8 (samples, T, neurons), and run figures."""

    mode: str
    layer_spikes: dict[int, np.ndarray]
    samples: int
    shards: int
    wall_s: float
    lava_steps: int
    setup_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else math.inf

    @property
    def output_spikes(self) -> np.ndarray:
        return self.layer_spikes[max(self.layer_spikes)]

    @property
    def predictions(self) -> np.ndarray:
        """Class with the most output spikes, ties to the lowest index (export.emulator.predict_classes)."""
        return predict_classes(self.output_spikes)


def import_lava() -> None:
    """Imports Lava's runtime even when this process already fixed multiprocessing's start method.

    Lava 0.10.0 calls `multiprocessing.set_start_method('fork')` without `force` when imported
    (lava/magma/runtime/message_infrastructure/multiprocessing.py), which raises 'context has
    already been set' in a process that trained first (the `demo` command does). When the
    method is already 'fork', or not set, that call is made harmless; any other method is an
    error Lava cannot run under.
    """
    import sys

    name = "lava.magma.runtime.message_infrastructure.multiprocessing"
    if name in sys.modules:
        return
    current = multiprocessing.get_start_method(allow_none=True)
    if current not in (None, "fork"):
        raise LavaRunError(f"Lava's CPU runtime needs the 'fork' start method, but this process uses {current!r}")
    original = multiprocessing.set_start_method
    multiprocessing.set_start_method = lambda method, force=False: original(method, force=True)
    try:
        __import__(name)
    finally:
        multiprocessing.set_start_method = original


def _lava_layer(layer: ExportedLayer, mode: str, time_steps: int, reset_offset: int):
    from lava.proc.dense.process import Dense
    from lava.proc.lif.process import LIFReset
    from lava.utils.weightutils import SignMode

    neurons = layer.out_features
    if mode == "fixed_pt":
        dense = Dense(
            weights=layer.weight_matrix().astype(np.int32), weight_exp=int(layer.weight_exp),
            num_weight_bits=int(layer.num_weight_bits), sign_mode=SignMode[layer.sign_mode.upper()],
            name=f"{layer.name}.dense",
        )
        lif = LIFReset(
            shape=(neurons,), du=int(layer.du), dv=int(layer.dv), vth=int(layer.vth),
            bias_mant=layer.bias_mant.astype(np.int32), bias_exp=int(layer.bias_exp),
            reset_interval=time_steps, reset_offset=reset_offset, name=f"{layer.name}.lif",
        )
    else:
        dense = Dense(weights=layer.weight_matrix(float_weights=True).astype(np.float64), name=f"{layer.name}.dense")
        lif = LIFReset(
            shape=(neurons,), du=1.0, dv=1.0 - float(layer.tau),
            vth=float(np.nextafter(float(layer.v_threshold), -np.inf)),
            bias_mant=layer.bias_float.astype(np.float64), bias_exp=0,
            reset_interval=time_steps, reset_offset=reset_offset, name=f"{layer.name}.lif",
        )
    return dense, lif


@dataclass
class _ShardGraph:
    io: object
    recorder_paths: dict[int, Path]
    schedule: PipelineSchedule
    run_cfg: object
    steps_done: int = 0
    started: bool = False
    workers: list = field(default_factory=list)  # this runtime's worker processes
    in_flight: bool = False  # a non-blocking run was started and not yet waited for
    broken: bool = False  # a worker died: the runtime can no longer be stopped politely

    @property
    def steps_left(self) -> int:
        return self.schedule.total_steps - self.steps_done


def _build_shard(network: ExportedNetwork, spikes: np.ndarray, mode: str, record: list[int],
                 workdir: Path, shard: int, reset_offsets: list[int] | None) -> _ShardGraph:
    from lava.magma.core.run_configs import Loihi2SimCfg

    from lava_backend.spike_io.processes import spike_io_classes

    samples, steps = spikes.shape[:2]
    schedule = PipelineSchedule(samples, steps, len(network.layers))
    flat = spikes.reshape(samples * steps, -1).astype(bool)
    io_process, io_model = spike_io_classes(len(record))
    paths = {index: workdir / f"shard{shard}_layer{index}.npy" for index in record}
    io = io_process(packed=np.packbits(flat, axis=1), input_neurons=flat.shape[1],
                    record_sizes=[network.layers[i].out_features for i in record], steps=schedule.total_steps,
                    output_paths=[str(paths[i]) for i in record], name=f"shard{shard}.io")
    previous = io.s_out
    for index, layer in enumerate(network.layers):
        offset = schedule.reset_offset(index) if reset_offsets is None else reset_offsets[index]
        dense, lif = _lava_layer(layer, mode, steps, offset)
        previous.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        previous = lif.s_out
        if index in record:
            lif.s_out.connect(getattr(io, f"a_in{record.index(index)}"))
    run_cfg = Loihi2SimCfg(select_tag=mode, exception_proc_model_map={io: io_model})  # keyed by instance
    return _ShardGraph(io, paths, schedule, run_cfg)


def _lava_workers() -> list:
    return [p for p in multiprocessing.active_children() if type(p).__name__ == "SystemProcess"]


def _wait_for(graphs: list[_ShardGraph], poll_s: float = 0.05) -> None:
    """Waits for the in-flight runs of `graphs`, watching their workers.

    Lava 0.10.0 does not notice a worker that dies mid-run (an exception in a process model,
    an out-of-memory kill): the others block on its spikes and `wait()` never returns. The
    waits run in threads while this loop checks every worker; a dead one ends the run with
    LavaRunError instead of a hang.
    """
    errors: list[BaseException] = []

    def wait(graph: _ShardGraph) -> None:
        try:
            graph.io.wait()
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=wait, args=(g,), daemon=True, name=f"wait-{g.io.name}") for g in graphs]
    for thread in threads:
        thread.start()
    while True:
        alive = [thread for thread in threads if thread.is_alive()]
        if not alive:
            break
        for graph in graphs:
            dead = [p for p in graph.workers if p.exitcode is not None]
            if dead:
                graph.broken = True
                reported = dead[0].exception  # (exception, traceback) that Lava's SystemProcess sends back
                cause = f": {reported[0]!r}\n{reported[1]}" if reported else ""
                raise LavaRunError(f"a Lava worker process of {graph.io.name} ended during the run "
                                   f"(pid {dead[0].pid}, exit code {dead[0].exitcode}){cause}")
        alive[0].join(poll_s)  # returns at once if it has just finished
    if errors:
        raise errors[0]
    for graph in graphs:
        graph.in_flight = False


def _stop(graphs: list[_ShardGraph], notes: list[str]) -> None:
    """Stops every runtime: politely when it is idle, by terminating its workers when a run
    is still in flight (Ctrl-C, an error elsewhere) or a worker died (stop() would wait forever)."""
    for graph in graphs:
        runtime = getattr(graph.io, "runtime", None)
        if runtime is None:
            continue
        if graph.broken or graph.in_flight:
            for worker in graph.workers:
                if worker.exitcode is None:
                    worker.terminate()
                multiprocessing.Process.join(worker, 5)  # SystemProcess.join() takes no timeout
            try:
                runtime._messaging_infrastructure.stop()  # Lava's shared-memory manager (private API)
            except Exception as exc:
                notes.append(f"releasing the shared memory of {graph.io.name} raised {exc!r}")
            notes.append(f"{graph.io.name}: runtime terminated ({'a worker died' if graph.broken else 'run interrupted'})")
            continue
        try:
            graph.io.stop()
        except Exception as exc:  # keep stopping the others; report, do not mask the first error
            notes.append(f"stopping {graph.io.name} raised {exc!r}")
    _terminate_leftover_workers(notes)


def _terminate_leftover_workers(notes: list[str]) -> None:
    """Lava's workers are forked children of this process; none may outlive a run."""
    for child in _lava_workers():
        child.terminate()
        multiprocessing.Process.join(child, 5)
        notes.append(f"terminated a Lava worker that survived stop(): pid {child.pid}")


def run_network(
    network: ExportedNetwork,
    input_spikes: np.ndarray,
    mode: str = "fixed_pt",
    record: str | list[int] = "all",
    shards: int | None = None,
    progress: bool = True,
    updates: int = 20,
    reset_offsets: list[int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LavaRunResult:
    """Runs `input_spikes` (samples, T, *input_shape) of 0/1 through Lava in one long run per shard.

    record: 'all' layers, 'output', or a list of layer indices.
    shards: parallel Lava runtimes, each taking a contiguous slice of the samples; None picks
        one per available CPU core, at most one per 100 samples. With several shards each
        runtime's workers are pinned to one core (set STBP_LAVA_PIN=0 to leave them free):
        on a 2-core machine that is what makes the second runtime pay off.
    reset_offsets: override the per-layer LIFReset offsets (for tests of the alignment).
    on_progress(steps_done, steps_total) is called after every chunk of steps.
    """
    if mode not in MODES:
        raise ValueError(f"unknown Lava mode {mode!r}; choose one of {', '.join(MODES)}")
    spikes = np.asarray(input_spikes)
    expected = (network.time_steps, *network.input_shape)
    if spikes.ndim < 2 or tuple(spikes.shape[1:]) != expected or len(spikes) == 0:
        raise ValueError(f"input spikes have shape {spikes.shape}; expected (samples >= 1, {', '.join(map(str, expected))})")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if shards is None:
        shards = max(1, min(len(cpus), len(spikes) // 100))
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    validate_network(network)  # a non-integer or out-of-range parameter would make fixed_pt hang
    if mode == "fixed_pt":
        check_lava_compatible(network)
    if np.any(spikes > 1) or np.any(spikes < 0):
        raise ValueError("input spikes must be 0 or 1 (Lava treats any non-zero value as a spike)")
    num_layers = len(network.layers)
    if record == "all":
        layers_to_record = list(range(num_layers))
    elif record == "output":
        layers_to_record = [num_layers - 1]
    else:
        layers_to_record = sorted(set(int(i) for i in record))
        if not layers_to_record or not all(0 <= i < num_layers for i in layers_to_record):
            raise ValueError(f"record must name layers in 0..{num_layers - 1}, got {record}")
    if reset_offsets is not None and len(reset_offsets) != num_layers:
        raise ValueError(f"reset_offsets needs {num_layers} entries, got {len(reset_offsets)}")

    import_lava()
    from lava.magma.core.run_conditions import RunSteps

    slices = [s for s in np.array_split(np.arange(len(spikes)), min(shards, len(spikes))) if len(s)]
    notes: list[str] = []
    graphs: list[_ShardGraph] = []
    bar = None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stbp-lava-") as tmp:
        try:
            for shard, indices in enumerate(slices):
                graphs.append(_build_shard(network, spikes[indices[0] : indices[-1] + 1], mode,
                                           layers_to_record, Path(tmp), shard, reset_offsets))
            total = sum(g.schedule.total_steps for g in graphs)
            chunk = max(1, math.ceil(max(g.schedule.total_steps for g in graphs) / max(1, updates)))
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(spikes), desc=f"lava {mode}", unit="sample", leave=False)
            setup_s = 0.0
            pin = (len(graphs) > 1 and len(cpus) > 1 and hasattr(os, "sched_setaffinity")
                   and os.environ.get("STBP_LAVA_PIN", "1") == "1")
            done = 0
            while any(g.steps_left for g in graphs):
                active = [g for g in graphs if g.steps_left]
                for graph_index, graph in enumerate(active):
                    steps = min(chunk, graph.steps_left)
                    first = not graph.started
                    t0 = time.perf_counter()
                    if first and pin:
                        os.sched_setaffinity(0, {cpus[graph_index % len(cpus)]})
                    before = set(_lava_workers()) if first else set()
                    # Workers forked with SIGINT ignored: Ctrl-C reaches only this process,
                    # which then stops them, instead of every worker dying mid-message.
                    quiet = first and threading.current_thread() is threading.main_thread()
                    previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if quiet else None
                    try:
                        graph.in_flight = True
                        graph.io.run(condition=RunSteps(num_steps=steps, blocking=False), run_cfg=graph.run_cfg)
                    finally:
                        if quiet:
                            signal.signal(signal.SIGINT, previous_handler)
                        if first:
                            graph.workers = [p for p in _lava_workers() if p not in before]
                        if first and pin:
                            os.sched_setaffinity(0, cpus)
                    if first:
                        setup_s += time.perf_counter() - t0
                    graph.started = True
                    graph.steps_done += steps
                    done += steps
                _wait_for(active)
                if bar is not None:
                    bar.update(min(len(spikes), round(len(spikes) * done / total)) - bar.n)
                if on_progress is not None:
                    on_progress(done, total)
            wall = time.perf_counter() - started
            recordings: dict[int, list[np.ndarray]] = {i: [] for i in layers_to_record}
            for graph in graphs:
                for index, path in graph.recorder_paths.items():
                    if not path.is_file():
                        raise LavaRunError(f"Lava run ended without the recording of layer {index} ({path.name})")
                    rows = np.unpackbits(np.load(path), axis=1, count=network.layers[index].out_features)
                    recordings[index].append(graph.schedule.align(rows, index))
        finally:
            if bar is not None:
                bar.close()
            _stop(graphs, notes)
    return LavaRunResult(
        mode=mode, layer_spikes={i: np.concatenate(parts) for i, parts in recordings.items()},
        samples=len(spikes), shards=len(graphs), wall_s=wall,
        lava_steps=sum(g.schedule.total_steps for g in graphs), setup_s=setup_s, notes=notes,
    )
