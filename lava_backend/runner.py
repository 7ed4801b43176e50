"""Runs an exported network on Lava 0.10.0's CPU simulator, many samples per run.

Graph, built from the artifact alone (no trainer import), one factory per node type:

    Input      one SpikeIO process plays the input spikes (and records the populations)
    Dense      Lava Dense, or DelayDense when its path must wait (export.timing)
    Conv2d     Lava Conv (shared kernel), or as a Dense with the conv unrolled (see below)
    Sum        nothing: several synapses connected to one LIF's `a_in` are added by Lava
    LIF        LIFReset, zeroing u and v when a new sample's first input arrives
    Output     the output population's recording: its spikes, or, for a potential readout
               (netgraph.decision), its potential v read after every step through a RefPort
               of the SpikeIO process (the population is a LIF that never fires, export.quantize)

Timing. Lava's Dense sends at step t what it received at step t-1, so a population runs
as many steps behind the input as there are Dense stages on its path (export.timing gives
`emit[P]`: sample step j of population P runs at Lava step j + emit[P] of the first sample,
and the synaptic delays that make every path into a population equally long, so the
deployed timing equals the trained one). Samples are played back to back, T steps each;
P's `LIFReset` offset is emit[P] mod T, its recording of sample k step j lands in row
k T + j + emit[P] - 1, and the run lasts samples * T + max(emit) - 1 steps.
`PipelineSchedule` is this arithmetic, in one place; recordings are re-aligned to
(samples, T, neurons), the emulator's timing.

Recurrent synapses. A recurrent Dense holds the population's last spikes of one sample
when the next sample starts (Lava's Dense has no reset), which the trained network never
sees (every sample starts from zero). So the run pauses where a sample's first step is
about to reach a population with a recurrent input and clears that Dense's in-flight
input (`a_buff`, the value it sends at the next step), as a host resetting a chip between
samples would. Feed-forward networks never pause.

Convolutions (with any average pool folded in by the exporter). `conv_mapping="conv"` (the
default) hands each Conv2d synapse to Lava's own Conv process (lava.proc.conv), which holds
the kernel once, as a chip would; `"dense"` hands it over as a Dense with the unrolled
(out, in) matrix, the same Dense arithmetic as every other synapse. Both are bit-exact:
- Lava's Conv works on (X, Y, C) = (W, H, C) maps and convolves (scipy convolve2d, kernel
  (out, kw, kh, in) flipped), while our maps are (C, H, W) in C order and our kernels
  (out, in, kh, kw) cross-correlate: the kernel is transposed and flipped once, and the
  spikes and currents pass through Lava's virtual ports (reshape, transpose) on the way in
  and out.
- Like Dense, Conv sends at step t what it received at step t - 1 (its `a_buf`), so the
  timing is unchanged.
- Its fixed-point model (0.10.0) neither clips nor truncates the weights and ignores
  weight_exp, where Dense applies clip_weights/truncate_weights (lava/utils/weightutils.py)
  and the exponent: the kernel is put through Lava's own clip/truncate here (elementwise,
  so the kernel gives the unrolled matrix's numbers), and a synapse with weight_exp != 0
  keeps the unrolled Dense. It sums in float64 and wraps the sum to 24 signed bits where
  Dense does not wrap: a synapse whose largest possible sum reaches 2^23 keeps the Dense.
- A synapse whose path must wait (a DelayDense delay, a skip path's shortcut) keeps the
  unrolled Dense: Conv has no synaptic delay. A recurrent conv synapse runs on Conv; its
  `a_buf` is cleared at sample boundaries as a Dense's `a_buff` is.
Which mapping each conv synapse got is in `LavaRunResult.conv_synapses`, and why one fell
back in its `notes`.

Parameters. `fixed_pt` hands Lava the artifact's integers (weights, sign mode, weight_exp,
du, dv, vth, bias_mant, bias_exp), validated first: a non-integer vth/du/dv makes a
fixed-point run hang. `floating_pt` hands it the trained float parameters: du = 1 -
tau_current (1: u takes each step's input), dv = 1 - tau, bias_mant = b, and vth = the
largest float64 below Vth, because Lava fires on v > vth and the trained neuron on v >= Vth.

Stopping. The runtime is always stopped, on success, on exceptions, on Ctrl-C (SIGINT) and
on SIGTERM or SIGHUP (which the CLI turns into `Terminated`), sent to this process or to
its whole process group. Lava's processes are forked inside `lifecycle.starting_runtime()`:
each in its own process group (a signal to the user's group reaches only this process),
with the default action of SIGTERM and SIGHUP and SIGINT ignored, and killed by the kernel
if this process dies first (PR_SET_PDEATHSIG); those signals arriving while Lava forks are
held and raised once it is done (a signal handled inside an at-fork callback was dropped). A run is waited for in
this thread (`_wait_for`), so no thread of ours is left inside Lava's channels. An
interrupted run's workers are terminated (killed after 5 s), its runtime is marked stopped
(a later `stop()` from Lava's `__del__` wrote into unmapped shared memory: a segmentation
fault at exit) and its shared-memory manager shut down, which unlinks its /dev/shm segments;
signals are held while stopping, and raised after. Any worker that survives is terminated.
Shards are capped at the available cores and at the samples (`LavaRunResult.notes` says so).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from export.conv import conv_matrix
from export.hw_config import lava_arithmetic_mismatch
from export.network import ExportedNetwork
from export.timing import DeploymentTiming, deployment_timing
from export.validate import validate_network
from lava_backend import lifecycle
from netgraph import LIF, Conv2d, Graph, Node, Synapse, predict
from netgraph.errors import DataError, HardwareConfigError, LavaRunError, UsageError
from netgraph.limits import check_memory

MODES = ("fixed_pt", "floating_pt")
CONV_MAPPINGS = ("conv", "dense")
# Lava 0.10.0's fixed-point Conv wraps its output to 24 signed bits (PyConvModelFixed.
# clamp_precision, utils.signed_clamp); Dense does not wrap.
CONV_WRAP = 1 << 23

def check_lava_compatible(network: ExportedNetwork) -> None:
    """Raises HardwareConfigError when the artifact's hardware config describes arithmetic
    Lava's fixed-point models do not run (export.hw_config.lava_arithmetic_mismatch)."""
    mismatch = lava_arithmetic_mismatch(network.hardware)
    if mismatch:
        raise HardwareConfigError(f"{mismatch}; Lava fixed_pt cannot run it, the emulator backend can "
                                  "(--backend emulator)")


@dataclass(frozen=True)
class PipelineSchedule:
    """Where each sample's steps sit in one long Lava run (see the module docstring).
    emit: Lava step of sample 0, step 0 of every population (export.timing)."""

    samples: int
    time_steps: int
    emit: dict[str, int]

    @property
    def total_steps(self) -> int:
        return self.samples * self.time_steps + max(self.emit.values()) - 1

    def reset_offset(self, population: str) -> int:
        """Lava step (mod T) at which `population` receives the first input of a sample."""
        return self.emit[population] % self.time_steps

    def first_row(self, population: str) -> int:
        """Recorder row (0-based) holding sample 0, step 0 of `population`."""
        return self.emit[population] - 1

    def clear_points(self, population: str) -> list[int]:
        """Steps after which the run pauses to clear recurrent input into `population`:
        just before each sample's first step reaches it."""
        first = self.emit[population] - 1
        return [first + k * self.time_steps for k in range(self.samples)]

    def align(self, rows: np.ndarray, population: str) -> np.ndarray:
        """Recorder rows (total_steps, neurons) -> (samples, T, neurons) in sample time."""
        start = self.first_row(population)
        used = rows[start : start + self.samples * self.time_steps]
        return used.reshape(self.samples, self.time_steps, -1)


@dataclass
class LavaRunResult:
    """Spikes of the recorded populations, each uint8 (samples, T, neurons), and run figures."""

    mode: str
    population_spikes: dict[str, np.ndarray]
    output: str
    samples: int
    shards: int
    wall_s: float
    lava_steps: int
    setup_s: float = 0.0
    pauses: int = 0
    notes: list[str] = field(default_factory=list)
    # Every Conv2d synapse -> "conv" (ran on Lava's Conv) or "dense" (ran as the unrolled Dense).
    conv_synapses: dict[str, str] = field(default_factory=dict)
    readout: str = "spikes"
    # Potential readout: the output population's v after each step (samples, T, neurons).
    output_potential: np.ndarray | None = None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else math.inf

    @property
    def output_spikes(self) -> np.ndarray:
        return self.population_spikes[self.output]

    @property
    def predictions(self) -> np.ndarray:
        """The Output's decision rule (netgraph.decision) on what Lava recorded."""
        return predict(self.readout, self.output_spikes, self.output_potential)


def import_lava() -> None:
    """Imports Lava's runtime even when this process already fixed multiprocessing's start method.

    Lava 0.10.0 calls `multiprocessing.set_start_method('fork')` without `force` when imported
    (lava/magma/runtime/message_infrastructure/multiprocessing.py), which raises 'context has
    already been set' in a process that trained first (the `demo` command does). When the
    method is already 'fork', or not set, that call is made harmless; any other method is an
    error Lava cannot run under.
    """
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


def _synapse_matrix(graph: Graph, node: Node, float_weights: bool) -> np.ndarray:
    """The synapse as the (out, in) matrix a Lava Dense holds (a conv unrolled)."""
    weights = node.weight if float_weights else node.quantized.weight
    if isinstance(node, Conv2d):
        return conv_matrix(np.asarray(weights), node.geometry(graph.read_shape(node.name)), f"node {node.name}")
    return np.asarray(weights)


def _lava_fixed_kernel(quantized) -> np.ndarray:
    """The integer kernel (out, in, kh, kw) as Lava's bit-accurate Dense would use it: clipped
    to 8 bits and truncated to num_weight_bits in its sign mode, by Lava's own functions
    (PyDenseModelBitAcc.run_spk applies them to its matrix at the first step; Lava 0.10.0's
    fixed-point Conv applies neither). Elementwise and zero-preserving, so the unrolled
    matrix of the result is the matrix Dense ends up with."""
    # lava: loaded only when a Lava run is built
    from lava.utils.weightutils import SignMode, clip_weights, truncate_weights

    sign_mode = SignMode[quantized.sign_mode.upper()]
    clipped = clip_weights(np.asarray(quantized.weight, np.int32), sign_mode, num_bits=8)
    return truncate_weights(clipped, sign_mode, int(quantized.num_weight_bits))


def _conv_fallback(graph: Graph, node: Conv2d, mode: str, delay: int) -> str | None:
    """Why conv synapse `node` cannot run exactly on Lava's Conv (then it runs as the
    unrolled Dense), or None when it can. See the module docstring."""
    if delay:
        return f"its path waits {delay} more step(s) and Lava's Conv has no synaptic delay (DelayDense has)"
    geometry = node.geometry(graph.read_shape(node.name))
    if max(*geometry.kernel, geometry.stride, geometry.padding) > 127:  # AbstractPyConvModel's int8 Vars
        return "Lava's Conv holds kernel size, stride and padding as int8"
    if mode != "fixed_pt":
        return None
    quantized = node.quantized
    if int(quantized.weight_exp) != 0:
        return f"weight_exp = {quantized.weight_exp}, which Lava 0.10.0's fixed-point Conv ignores"
    kernel = _lava_fixed_kernel(quantized).reshape(node.out_channels, -1).astype(np.int64)
    # Largest |sum| one step can bring to a neuron (every input of one sign spiking, no padding).
    reach = max(np.where(kernel > 0, kernel, 0).sum(axis=1).max(), -np.where(kernel < 0, kernel, 0).sum(axis=1).min())
    if reach >= CONV_WRAP:
        return f"its synaptic sum can reach {reach}, past the 24 bits at which Lava's Conv wraps"
    return None


def conv_plan(network: ExportedNetwork, mode: str, conv_mapping: str,
              timing: DeploymentTiming) -> dict[str, str | None]:
    """For every Conv2d synapse, in graph order: None when it runs on Lava's Conv, else why it
    runs as the unrolled Dense ("conv_mapping='dense'" when that was asked for)."""
    if conv_mapping not in CONV_MAPPINGS:
        raise UsageError(f"unknown conv_mapping {conv_mapping!r}; choose one of {', '.join(CONV_MAPPINGS)}")
    graph = network.graph
    return {node.name: ("conv_mapping='dense'" if conv_mapping == "dense"
                        else _conv_fallback(graph, node, mode, timing.delay[node.name]))
            for node in graph.nodes_of_type(Conv2d)}


def lava_conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """Our (out, in, kh, kw) cross-correlation kernel as Lava's Conv kernel (out, kw, kh, in):
    axes reordered for its (W, H, C) maps, and flipped in both spatial axes because Lava
    convolves (lava/proc/conv/utils.py conv_scipy: scipy.signal.convolve2d)."""
    return np.ascontiguousarray(np.asarray(kernel)[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))


def _lava_conv(graph: Graph, node: Conv2d, mode: str):
    """Lava's Conv for a conv synapse, on the source's (W, H, C) map (see `lava_conv_kernel`)."""
    from lava.proc.conv.process import Conv  # lava: loaded only when a Lava run is built

    channels, height, width = graph.read_shape(node.name)
    if mode == "fixed_pt":
        kernel = _lava_fixed_kernel(node.quantized).astype(np.int32)
        bits = int(node.quantized.num_weight_bits)  # Conv's model does not read it: the kernel is truncated already
    else:
        kernel, bits = np.asarray(node.weight, np.float64), 8
    return Conv(weight=lava_conv_kernel(kernel), input_shape=(width, height, channels), padding=int(node.padding),
                stride=int(node.stride), num_weight_bits=bits, name=node.name)


def _connect_synapse(source_port, synapse, target_port, in_shape: tuple[int, ...]) -> None:
    """Connects a synapse between two flat spike/current ports. A Lava Conv reads (W, H, C)
    and writes (W', H', C'): virtual ports turn our flat C-order (C, H, W) vectors into that
    and back (a transpose reverses the axes, the reshape flattens in C order)."""
    from lava.proc.conv.process import Conv  # lava: loaded only when a Lava run is built

    if not isinstance(synapse, Conv):  # Dense, DelayDense: flat in, flat out
        source_port.connect(synapse.s_in)
        synapse.a_out.connect(target_port)
        return
    source_port.reshape(tuple(in_shape)).transpose((2, 1, 0)).connect(synapse.s_in)
    synapse.a_out.transpose((2, 1, 0)).reshape((math.prod(synapse.a_out.shape),)).connect(target_port)


def _lava_synapse(graph: Graph, node: Node, mode: str, delay: int, as_conv: bool = False):
    """Lava's Conv (`as_conv`, a conv synapse that `_conv_fallback` accepts), else Lava's Dense,
    or DelayDense when the path must wait `delay` more steps, for a synapse."""
    from lava.proc.dense.process import DelayDense, Dense  # lava: loaded only when a Lava run is built
    from lava.utils.weightutils import SignMode  # (same)

    if as_conv:
        return _lava_conv(graph, node, mode)
    if mode == "fixed_pt":
        q = node.quantized
        kwargs = dict(weights=_synapse_matrix(graph, node, False).astype(np.int32), weight_exp=int(q.weight_exp),
                      num_weight_bits=int(q.num_weight_bits), sign_mode=SignMode[q.sign_mode.upper()])
    else:
        kwargs = dict(weights=_synapse_matrix(graph, node, True).astype(np.float64))
    if delay:
        return DelayDense(delays=int(delay), name=node.name, **kwargs)
    return Dense(name=node.name, **kwargs)


def _lava_population(node: LIF, mode: str, time_steps: int, reset_offset: int):
    """Lava's LIFReset for a population, zeroing its state every T steps at `reset_offset`."""
    from lava.proc.lif.process import LIFReset  # lava: loaded only when a Lava run is built

    common = dict(shape=(node.neurons,), reset_interval=time_steps, reset_offset=reset_offset, name=node.name)
    if mode == "fixed_pt":
        q = node.quantized
        return LIFReset(du=int(q.du), dv=int(q.dv), vth=int(q.vth), bias_mant=q.bias_mant.astype(np.int32),
                        bias_exp=int(q.bias_exp), **common)
    return LIFReset(du=1.0 - float(node.tau_current), dv=1.0 - float(node.tau),
                    vth=float(np.nextafter(float(node.v_threshold), -np.inf)),
                    bias_mant=np.asarray(node.bias, np.float64), bias_exp=0, **common)


@dataclass
class _ShardGraph:
    io: object
    recorder_paths: dict[str, Path]
    schedule: PipelineSchedule
    run_cfg: object
    clears: dict[int, list] = field(default_factory=dict)  # step -> recurrent Lava synapses to clear
    steps_done: int = 0
    started: bool = False
    workers: list = field(default_factory=list)  # this runtime's worker processes (Lava's SystemProcess)
    helpers: list = field(default_factory=list)  # the other children it forked: its shared-memory manager
    in_flight: bool = False  # a non-blocking run was started and not yet waited for
    broken: bool = False  # a worker died: the runtime can no longer be stopped politely
    potential_path: Path | None = None  # where the output population's potentials land (potential readout)

    @property
    def steps_left(self) -> int:
        return self.schedule.total_steps - self.steps_done

    def next_stop(self, chunk: int) -> int:
        """Steps to run before the next pause: a chunk, the end, or a clearing point."""
        target = min(self.steps_done + chunk, self.schedule.total_steps)
        upcoming = [step for step in self.clears if self.steps_done < step < target]
        return (min(upcoming) if upcoming else target) - self.steps_done


def _build_shard(network: ExportedNetwork, spikes: np.ndarray, mode: str, record: list[str],
                 workdir: Path, shard: int, timing: DeploymentTiming,
                 reset_offsets: dict[str, int] | None, convs: dict[str, str | None]) -> _ShardGraph:
    """One runtime's process graph. convs: `conv_plan` (None: the conv synapse runs on Lava's Conv)."""
    from lava.magma.core.run_configs import Loihi2SimCfg  # lava: loaded only when a Lava run is built

    from lava_backend.spike_io.processes import spike_io_classes  # (same: that module imports lava)

    graph = network.graph
    samples, steps = spikes.shape[:2]
    schedule = PipelineSchedule(samples, steps, {p.name: timing.emit[p.name] for p in graph.populations})
    flat = spikes.reshape(samples * steps, -1).astype(bool)
    output = graph.output_population
    reads_potential = graph.output.readout == "potential"
    io_process, io_model = spike_io_classes(len(record), reads_potential)
    paths = {name: workdir / f"shard{shard}_{name}.npy" for name in record}
    potential_path = workdir / f"shard{shard}_{output.name}.potential.npy" if reads_potential else None
    io = io_process(packed=np.packbits(flat, axis=1), input_neurons=flat.shape[1],
                    record_sizes=[graph.node(name).neurons for name in record], steps=schedule.total_steps,
                    output_paths=[str(paths[name]) for name in record],
                    potential_size=output.neurons if reads_potential else 0,
                    potential_path=str(potential_path or ""), name=f"shard{shard}.io")
    spikes_of = {graph.input.name: io.s_out}
    populations = {}
    for lif in graph.populations:
        offset = schedule.reset_offset(lif.name) if reset_offsets is None else reset_offsets[lif.name]
        populations[lif.name] = _lava_population(lif, mode, steps, offset)
        spikes_of[lif.name] = populations[lif.name].s_out
    clears: dict[int, list] = {}
    for node in graph.nodes_of_type(Synapse):
        edge = graph.inputs_of(node.name)[0]
        as_conv = node.name in convs and convs[node.name] is None
        synapse = _lava_synapse(graph, node, mode, timing.delay[node.name], as_conv)
        target = graph.population_of(node.name).name
        _connect_synapse(spikes_of[edge.source], synapse, populations[target].a_in, graph.read_shape(node.name))
        if edge.recurrent:
            for step in schedule.clear_points(target):
                clears.setdefault(step, []).append(synapse)
    for index, name in enumerate(record):
        populations[name].s_out.connect(getattr(io, f"a_in{index}"))
    if reads_potential:
        io.v_ref.connect_var(populations[output.name].v)
    run_cfg = Loihi2SimCfg(select_tag=mode, exception_proc_model_map={io: io_model})  # keyed by instance
    return _ShardGraph(io, paths, schedule, run_cfg, clears, potential_path=potential_path)


def _clear_in_flight(graph: _ShardGraph) -> None:
    """Zeroes what each recurrent synapse due now would deliver at the next step: all of a
    Dense's buffer or of a Conv's (`a_buf`, (W', H', C')), column 0 of a DelayDense's (its
    later columns belong to the new sample)."""
    from lava.proc.conv.process import Conv  # lava: loaded only when a Lava run is built

    for synapse in graph.clears.get(graph.steps_done, ()):
        if isinstance(synapse, Conv):
            synapse.a_buf.set(np.zeros(synapse.a_buf.shape))
            continue
        if len(synapse.a_buff.shape) == 1:  # a Dense: all of it, no need to read it back
            synapse.a_buff.set(np.zeros(synapse.a_buff.shape))
            continue
        buffer = np.array(synapse.a_buff.get())
        buffer[:, 0] = 0
        synapse.a_buff.set(buffer)


def _is_lava_worker(process) -> bool:
    """One of Lava's worker processes (its SystemProcess), not its shared-memory manager."""
    return type(process).__name__ == "SystemProcess"


def _lava_workers() -> list:
    return [p for p in multiprocessing.active_children() if _is_lava_worker(p)]


def _check_workers(graph: _ShardGraph) -> None:
    """Raises LavaRunError when a worker of `graph` has ended: Lava 0.10.0 does not notice
    one that dies mid-run (an exception in a process model, an out-of-memory kill), and the
    others would block on its spikes forever."""
    dead = [p for p in graph.workers if p.exitcode is not None]
    if dead:
        graph.broken = True
        reported = dead[0].exception  # (exception, traceback) that Lava's SystemProcess sends back
        cause = f": {reported[0]!r}\n{reported[1]}" if reported else ""
        raise LavaRunError(f"a Lava worker process of {graph.io.name} ended during the run "
                           f"(pid {dead[0].pid}, exit code {dead[0].exitcode}){cause}")


def _answered(graph: _ShardGraph) -> bool | None:
    """True when every runtime service of `graph` has answered DONE (so `wait()` returns at
    once), False while one is still running, None when one answered anything else (ERROR:
    a process model failed, and Lava's `wait()` would then join workers that never end)."""
    from lava.magma.runtime.mgmt_token_enums import MGMT_RESPONSE, enum_equal  # lava: loaded only for a Lava run

    ports = graph.io.runtime.service_to_runtime
    for port in ports:
        if port.probe() and not enum_equal(port.peek(), MGMT_RESPONSE.DONE):
            return None
    return all(port.probe() for port in ports)


def _wait_for(graphs: list[_ShardGraph], poll_s: float = 0.05, grace_s: float = 5.0) -> None:
    """Waits for the in-flight runs of `graphs`, in this thread, watching their workers.

    Lava's `wait()` is called only once every answer is in, so it never blocks: no thread
    is left blocked in Lava's channels (reading shared memory that a stop unmaps) when a
    run is interrupted, and a dead worker or an ERROR answer ends the run with LavaRunError
    instead of a hang. Lava's ports call `observer` when an answer arrives, which wakes
    this loop at once; `poll_s` bounds the time to notice a dead worker.
    """
    answered = threading.Event()
    ports = [port for graph in graphs for port in graph.io.runtime.service_to_runtime]
    for port in ports:
        port.observer = answered.set
    pending, failed_at = list(graphs), None
    try:
        while pending:
            answered.clear()
            for graph in list(pending):
                _check_workers(graph)
                state = _answered(graph)
                if state is None:
                    failed_at = failed_at or time.monotonic()
                    if time.monotonic() - failed_at > grace_s:
                        graph.broken = True
                        raise LavaRunError(f"Lava's runtime of {graph.io.name} reported an error during the run")
                elif state:
                    graph.io.wait()
                    graph.in_flight = False
                    pending.remove(graph)
            if pending:
                answered.wait(poll_s)
    finally:
        for port in ports:
            port.observer = None


def _stop(graphs: list[_ShardGraph], notes: list[str]) -> None:
    """Stops every runtime, with SIGINT/SIGTERM held until all are stopped (a second Ctrl-C
    must not leave workers behind): politely when it is idle, else (a run still in flight
    after Ctrl-C, SIGTERM or an error elsewhere; a dead worker, where stop() would wait
    forever) by `_force_stop`."""
    with lifecycle.held_signals():
        started = [g for g in graphs if getattr(g.io, "runtime", None) is not None]
        forced = [g for g in started if g.broken or g.in_flight]
        if forced:
            _force_stop(forced, notes)
        for graph in started:
            if graph.broken or graph.in_flight:
                continue
            try:
                graph.io.stop()
            except Exception as exc:  # keep stopping the others; report, do not mask the first error
                notes.append(f"stopping {graph.io.name} raised {exc!r}")
        _terminate_leftover_workers(notes)


def _end_processes(processes: list, timeout_s: float = 5.0) -> None:
    """SIGTERM (the workers' default action: they end at once, see lifecycle), then SIGKILL
    for any still alive after `timeout_s`; every one is reaped."""
    alive = [p for p in processes if p.exitcode is None]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in alive:  # SystemProcess.join() takes no timeout: Process.join does
        multiprocessing.Process.join(process, max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.kill()
            multiprocessing.Process.join(process, timeout_s)


def _force_stop(graphs: list[_ShardGraph], notes: list[str]) -> None:
    """Ends the runtimes of `graphs` without their cooperation: their workers first, then
    Lava's side in this process (the channels' threads joined, the runtime marked stopped,
    so that no later `stop()`, e.g. from a Lava process's `__del__` at exit, writes into
    shared memory that is no longer mapped: that was a segmentation fault), and last the
    shared-memory manager, whose server unlinks every segment in /dev/shm."""
    _end_processes([worker for graph in graphs for worker in graph.workers])
    for graph in graphs:
        runtime = graph.io.runtime
        try:
            runtime.join()  # sets every port done, which ends their threads
            runtime._is_running = runtime._is_started = False  # private API: Lava's stop() now only releases
            runtime._messaging_infrastructure.stop()  # joins the (ended) workers, shuts the manager down
        except Exception as exc:
            notes.append(f"releasing the shared memory of {graph.io.name} raised {exc!r}")
        _end_processes(graph.helpers, timeout_s=1.0)
        notes.append(f"{graph.io.name}: runtime terminated ({'a worker died' if graph.broken else 'run interrupted'})")


def _terminate_leftover_workers(notes: list[str]) -> None:
    """Lava's workers are forked children of this process; none may outlive a run."""
    for child in _lava_workers():
        _end_processes([child])
        notes.append(f"terminated a Lava worker that survived stop(): pid {child.pid}")


def _records(network: ExportedNetwork, record: str | list[str]) -> list[str]:
    names = [p.name for p in network.populations]
    if record == "all":
        return names
    if record == "output":
        return [network.graph.output_population.name]
    chosen = [str(name) for name in record]
    unknown = sorted(set(chosen) - set(names))
    if not chosen or unknown:
        raise UsageError(f"record must name populations among {', '.join(names)}; got {record}")
    return [name for name in names if name in chosen]


def _check_inputs(network: ExportedNetwork, spikes: np.ndarray, mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"unknown Lava mode {mode!r}; choose one of {', '.join(MODES)}")
    expected = (network.time_steps, *network.input_shape)
    if spikes.ndim < 2 or tuple(spikes.shape[1:]) != expected or len(spikes) == 0:
        raise DataError(f"input spikes have shape {spikes.shape}; expected (samples >= 1, {', '.join(map(str, expected))})")
    validate_network(network)  # a non-integer or out-of-range parameter would make fixed_pt hang
    if mode == "fixed_pt":
        check_lava_compatible(network)
    if np.any(spikes > 1) or np.any(spikes < 0):
        raise DataError("input spikes must be 0 or 1 (Lava treats any non-zero value as a spike)")


def _start_or_continue(graph: _ShardGraph, steps: int, run_steps, pin_to: int | None, cpus: list[int]) -> float:
    """Starts `steps` more steps of one runtime without blocking; returns the set-up time.
    The first call compiles the graph (a Ctrl-C interrupts that at once), then builds the
    runtime, which forks its processes, inside `lifecycle.starting_runtime()` (their own
    process groups; SIGINT/SIGTERM held until the fork is over: see the module docstring)."""
    first = not graph.started
    t0 = time.perf_counter()
    if first and pin_to is not None:
        os.sched_setaffinity(0, {pin_to})  # inherited by the workers forked below
    before = set(multiprocessing.active_children()) if first else set()
    try:
        graph.in_flight = True
        if first:
            executable = graph.io.compile(graph.run_cfg)
            with lifecycle.starting_runtime():
                graph.io.create_runtime(executable=executable)
        graph.io.run(condition=run_steps(num_steps=steps, blocking=False), run_cfg=graph.run_cfg)
    finally:
        if first:
            forked = [p for p in multiprocessing.active_children() if p not in before]
            graph.workers = [p for p in forked if _is_lava_worker(p)]
            graph.helpers = [p for p in forked if not _is_lava_worker(p)]
        if first and pin_to is not None:
            os.sched_setaffinity(0, cpus)
    graph.started = True
    graph.steps_done += steps
    return time.perf_counter() - t0 if first else 0.0


def _collect(graphs: list[_ShardGraph], network: ExportedNetwork, record: list[str]) -> dict[str, np.ndarray]:
    recordings: dict[str, list[np.ndarray]] = {name: [] for name in record}
    for graph in graphs:
        for name, path in graph.recorder_paths.items():
            if not path.is_file():
                raise LavaRunError(f"Lava run ended without the recording of population {name} ({path.name})")
            rows = np.unpackbits(np.load(path), axis=1, count=network.graph.node(name).neurons)
            recordings[name].append(graph.schedule.align(rows, name))
    return {name: np.concatenate(parts) for name, parts in recordings.items()}


def _collect_potential(graphs: list[_ShardGraph], network: ExportedNetwork, mode: str) -> np.ndarray | None:
    """The output population's potentials (samples, T, neurons) in sample time (int64 in
    fixed_pt, float64 in floating_pt), or None when the network reads spikes."""
    if network.graph.output.readout != "potential":
        return None
    output, parts = network.graph.output_population.name, []
    for graph in graphs:
        if graph.potential_path is None or not graph.potential_path.is_file():
            raise LavaRunError(f"Lava run ended without the potentials of the output population {output}")
        parts.append(graph.schedule.align(np.load(graph.potential_path), output))
    potentials = np.concatenate(parts)
    return np.rint(potentials).astype(np.int64) if mode == "fixed_pt" else potentials


def _run_shards(graphs: list[_ShardGraph], cpus: list[int], updates: int, bar, on_progress, run_steps
                ) -> tuple[float, int]:
    """Runs every shard to its end, in parallel chunks, pausing where recurrent input must be
    cleared. Returns (seconds spent starting the runtimes, pauses made)."""
    total = sum(g.schedule.total_steps for g in graphs)
    chunk = max(1, math.ceil(max(g.schedule.total_steps for g in graphs) / max(1, updates)))
    samples = bar.total
    setup_s, done, pauses = 0.0, 0, 0
    pin = (len(graphs) > 1 and len(cpus) > 1 and hasattr(os, "sched_setaffinity")
           and os.environ.get("STBP_LAVA_PIN", "1") == "1")
    while any(g.steps_left for g in graphs):
        active = [g for g in graphs if g.steps_left]
        for index, graph in enumerate(active):
            steps = graph.next_stop(chunk)
            setup_s += _start_or_continue(graph, steps, run_steps, cpus[index % len(cpus)] if pin else None, cpus)
            done += steps
        _wait_for(active)
        for graph in active:
            if graph.steps_done in graph.clears:
                graph.in_flight = True  # interrupted mid-exchange, the runtime cannot be stopped politely
                _clear_in_flight(graph)
                graph.in_flight = False
                pauses += 1
        bar.update(min(samples, round(samples * done / total)) - bar.n)
        if on_progress is not None:
            on_progress(done, total)
    return setup_s, pauses


def _shard_count(requested: int | None, cpus: int, samples: int) -> tuple[int, str | None]:
    """The number of runtimes to run, and a note when fewer than `requested` run. More
    runtimes than cores only add processes (each runtime forks one per process model, plus
    its shared-memory manager: --shards 25 started 177 processes on 2 cores) and a runtime
    without samples has nothing to run."""
    if requested is None:
        return max(1, min(cpus, samples // 100)), None
    if requested < 1:
        raise UsageError(f"shards must be >= 1, got {requested}")
    count = min(requested, cpus, samples)
    if count == requested:
        return count, None
    return count, (f"{requested} shards requested, {count} run: at most one per available CPU core "
                   f"({cpus}) and one per sample ({samples})")


def _check_run_arguments(network: ExportedNetwork, spikes: np.ndarray, mode: str, shards: int | None, cpus: int,
                         reset_offsets: dict[str, int] | None, conv_mapping: str) -> tuple[int, str | None]:
    """Refuses bad arguments before Lava is loaded; returns the number of shards to run and
    the note that says why it is fewer than asked for (None when it is not)."""
    _check_inputs(network, spikes, mode)
    shards, note = _shard_count(shards, cpus, len(spikes))
    recorded_neurons = sum(p.neurons for p in network.populations)  # at most: record="all"
    # Each recording is written packed (1 bit), read back and aligned as uint8: about 2 bytes
    # per neuron per step per sample, for every population recorded.
    check_memory(2 * len(spikes) * network.time_steps * recorded_neurons,
                 f"recording {len(spikes)} samples x {network.time_steps} steps of {recorded_neurons} neurons on Lava")
    names = [p.name for p in network.populations]
    if reset_offsets is not None and set(reset_offsets) != set(names):
        raise UsageError(f"reset_offsets needs one entry per population ({', '.join(names)})")
    if conv_mapping not in CONV_MAPPINGS:
        raise UsageError(f"unknown conv_mapping {conv_mapping!r}; choose one of {', '.join(CONV_MAPPINGS)}")
    return shards, note


def run_network(
    network: ExportedNetwork,
    input_spikes: np.ndarray,
    mode: str = "fixed_pt",
    record: str | list[str] = "all",
    shards: int | None = None,
    progress: bool = True,
    updates: int = 20,
    reset_offsets: dict[str, int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    conv_mapping: str = "conv",
) -> LavaRunResult:
    """Runs `input_spikes` (samples, T, *input_shape) of 0/1 through Lava in one long run per shard.

    record: 'all' populations, 'output', or a list of population names.
    shards: parallel Lava runtimes, each taking a contiguous slice of the samples; None picks
        one per available CPU core, at most one per 100 samples. A number is capped at the
        available cores and at the samples (with a note saying so). With several shards each
        runtime's workers are pinned to one core (set STBP_LAVA_PIN=0 to leave them free):
        on a 2-core machine that is what makes the second runtime pay off.
    reset_offsets: override the populations' LIFReset offsets (for tests of the alignment).
    on_progress(steps_done, steps_total) is called after every chunk of steps.
    conv_mapping: "conv" runs each Conv2d synapse on Lava's Conv process (one shared kernel),
        "dense" as a Dense holding the unrolled (out, in) matrix. Under "conv" a synapse
        falls back to the unrolled Dense, on its own, when Conv cannot run it exactly: a
        path that must wait (Conv has no DelayDense-style delay: skip-path shortcuts), in
        fixed_pt a weight_exp != 0 (ignored by Lava 0.10.0's Conv) or a synaptic sum that can
        reach 2^23 (Conv wraps at 24 bits), or a kernel, stride or padding above 127 (int8
        in Conv's model). Recurrent conv synapses stay on Conv (its buffer is cleared
        between samples). The result's `conv_synapses` says which each got, `notes` why.
    """
    spikes = np.asarray(input_spikes)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    shards, shard_note = _check_run_arguments(network, spikes, mode, shards, len(cpus), reset_offsets, conv_mapping)
    recorded = _records(network, record)
    timing = deployment_timing(network.graph, network.hardware.max_synaptic_delay)

    import_lava()
    from lava.magma.core.run_conditions import RunSteps  # lava: loaded only when a Lava run is built

    convs = conv_plan(network, mode, conv_mapping, timing)

    slices = np.array_split(np.arange(len(spikes)), shards)  # shards <= samples: none is empty
    notes = [shard_note] if shard_note else []
    notes += [f"conv synapse {name}: unrolled Dense, because {why}"
              for name, why in convs.items() if why is not None and conv_mapping == "conv"]
    graphs: list[_ShardGraph] = []
    bar = None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stbp-lava-") as tmp:
        try:
            for shard, indices in enumerate(slices):
                graphs.append(_build_shard(network, spikes[indices[0] : indices[-1] + 1], mode, recorded, Path(tmp),
                                           shard, timing, reset_offsets, convs))
            bar = tqdm(total=len(spikes), desc=f"lava {mode}", unit="sample", leave=False, disable=not progress)
            setup_s, pauses = _run_shards(graphs, cpus, updates, bar, on_progress, RunSteps)
            wall = time.perf_counter() - started
            population_spikes = _collect(graphs, network, recorded)
            output_potential = _collect_potential(graphs, network, mode)
        finally:
            if bar is not None:
                bar.close()
            _stop(graphs, notes)
    return LavaRunResult(
        mode=mode, population_spikes=population_spikes, output=network.graph.output_population.name,
        samples=len(spikes), shards=len(graphs), wall_s=wall, lava_steps=sum(g.schedule.total_steps for g in graphs),
        setup_s=setup_s, pauses=pauses, notes=notes,
        conv_synapses={name: "dense" if why else "conv" for name, why in convs.items()},
        readout=network.graph.output.readout, output_potential=output_potential,
    )
