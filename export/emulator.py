"""Bit-exact emulator of the deployed network: Loihi's integer dynamics, batched.

It reads the exported graph (not the training code), starts every sample from zero state
and follows the graph's timing (netgraph.graph): no delay along a forward edge (a
population at step t sees its inputs' spikes of step t, as in the trained network), one
step along a recurrent edge. (Lava's Dense adds one step of delay per synapse; the Lava
backend re-times its run to this, see export.timing.) The arithmetic is
`export.fixed_point`, run with numpy on the CPU or torch on a GPU. Nodes are evaluated in
the graph's execution plan: outside cycles a synapse is one product over all time steps,
a cycle closed by recurrent edges is stepped through time.

The synaptic sums are computed as a float matrix product, which is exact because every
partial sum is an integer below 2^24 (float32) or 2^53 (float64); the bound is checked
per synapse and the wider type used when needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from export.conv import conv_accumulate
from export.fixed_point import FixedLIFParameters, effective_weights, lif_fixed_step, shift_activation
from export.network import ExportedNetwork
from netgraph import LIF, Conv2d, Edge, Graph, Input, Node, Output, Sum, Synapse, predict
from netgraph.errors import DataError, UsageError
from netgraph.limits import check_memory, format_bytes, memory_limit

FLOAT32_EXACT = 1 << 24


@dataclass
class EmulationResult:
    """Spikes of every LIF population, each uint8 (samples, time, neurons), in the graph's
    order; `output` names the output population, `readout` the decision rule; for a
    potential readout, `output_potential` is that population's v (int64 (samples, time,
    neurons), Loihi units) after each step."""

    population_spikes: dict[str, np.ndarray]
    output: str
    readout: str = "spikes"
    output_potential: np.ndarray | None = None

    @property
    def output_spikes(self) -> np.ndarray:
        return self.population_spikes[self.output]

    @property
    def predictions(self) -> np.ndarray:
        return predict(self.readout, self.output_spikes, self.output_potential)


class _NumpyOps:
    """Array operations of the numpy backend (CPU)."""

    xp = np

    def __init__(self, device=None):
        pass

    def spikes(self, array: np.ndarray):
        return array

    def matmul(self, x, weights_t, dtype):
        return np.rint(x.astype(dtype) @ weights_t).astype(np.int64)

    def conv(self, x, weights, geometry, dtype):
        return np.rint(conv_accumulate(x, weights, geometry, dtype)).astype(np.int64)

    def constant(self, array: np.ndarray, dtype=None):
        return array if dtype is None else array.astype(dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        return array


class _TorchOps:
    """Array operations of the torch backend (CPU or CUDA)."""

    def __init__(self, device=None):
        import torch  # optional: the artifact path stays torch-free unless this backend is chosen

        self.torch, self.xp, self.device = torch, torch, device or "cpu"

    def spikes(self, array: np.ndarray):
        return self.torch.from_numpy(array).to(self.device)

    def matmul(self, x, weights_t, dtype):
        return self.torch.round(x.to(weights_t.dtype) @ weights_t).to(self.torch.int64)

    def conv(self, x, weights, geometry, dtype):
        maps = x.reshape(-1, *geometry.in_shape).to(weights.dtype)
        sums = self.torch.nn.functional.conv2d(maps, weights, stride=geometry.stride, padding=geometry.padding)
        return self.torch.round(sums).to(self.torch.int64).reshape(len(maps), -1)

    def constant(self, array: np.ndarray, dtype=None):
        tensor = self.torch.from_numpy(np.ascontiguousarray(array))
        if dtype is not None:
            tensor = tensor.to(self.torch.float32 if dtype == np.float32 else self.torch.float64)
        return tensor.to(self.device)

    def zeros(self, shape, dtype):
        kind = {np.int64: self.torch.int64, np.uint8: self.torch.uint8}[dtype]
        return self.torch.zeros(shape, dtype=kind, device=self.device)

    def to_numpy(self, array) -> np.ndarray:
        return array.cpu().numpy()


_OPS = {"numpy": _NumpyOps, "torch": _TorchOps}


class _Simulation:
    """The deployed graph on one backend: constants prepared once, then batch after batch."""

    def __init__(self, network: ExportedNetwork, ops):
        self.network, self.graph, self.ops = network, network.graph, ops
        self.potentials: dict[str, object] = {}  # a non-spiking population's v per step, this batch
        self.plan = self.graph.plan()
        self.synapses: dict[str, tuple] = {}
        for node in self.graph.nodes:
            if isinstance(node, Synapse):
                self.synapses[node.name] = self._synapse_constants(node)
        self.params = {lif.name: FixedLIFParameters(lif.quantized.du, lif.quantized.dv, lif.quantized.vth,
                                                    ops.constant(lif.quantized.bias_mant.astype(np.int64)),
                                                    lif.quantized.bias_exp)
                       for lif in self.graph.populations}

    def _synapse_constants(self, node: Node) -> tuple:
        q = node.quantized
        weights = effective_weights(q.weight, q.sign_mode, q.num_weight_bits, self.network.hardware)
        bound = int(np.abs(weights).reshape(weights.shape[0], -1).sum(axis=1).max(initial=0))
        dtype = np.float32 if bound < FLOAT32_EXACT else np.float64
        if isinstance(node, Conv2d):
            return self.ops.constant(weights, dtype), dtype, node.geometry(self.graph.read_shape(node.name))
        return self.ops.constant(np.ascontiguousarray(weights.T), dtype), dtype, None

    # ---- one function per node type: activation of a synapse, sum, population

    def _synapse(self, node: Node, spikes):
        """spikes (..., inputs) -> activation (..., outputs) int64, Lava Dense's arithmetic."""
        weights, dtype, geometry = self.synapses[node.name]
        lead = spikes.shape[:-1]
        flat = spikes.reshape(-1, spikes.shape[-1])
        sums = self.ops.conv(flat, weights, geometry, dtype) if geometry is not None \
            else self.ops.matmul(flat, weights, dtype)
        return shift_activation(sums.reshape(*lead, -1), node.quantized.weight_exp)

    def _population_step(self, node: LIF, activation, state):
        u, v = state if state is not None else (self.ops.zeros(activation.shape, np.int64),) * 2
        spikes, u, v = lif_fixed_step(activation, u, v, self.params[node.name], self.network.hardware, self.ops.xp)
        return spikes, (u, v)

    def _population(self, node: LIF, activation):
        """Spikes (batch, steps, neurons); a non-spiking population's potentials go to `self.potentials`."""
        batch, steps, neurons = activation.shape
        out = self.ops.zeros((batch, steps, neurons), np.uint8)
        potentials = None if node.spiking else self.ops.zeros((batch, steps, neurons), np.int64)
        state = None
        for t in range(steps):
            spikes, state = self._population_step(node, activation[:, t], state)
            out[:, t] = spikes
            if potentials is not None:
                potentials[:, t] = state[1]
        if potentials is not None:
            self.potentials[node.name] = potentials
        return out

    # ---- running the plan

    def _evaluate(self, node: Node, inputs: list, state, over_time: bool):
        if isinstance(node, Synapse):
            return self._synapse(node, inputs[0]), None
        if isinstance(node, Sum):
            return sum(inputs[1:], inputs[0]), None
        if isinstance(node, LIF):
            return (self._population(node, inputs[0]), None) if over_time else self._population_step(node, inputs[0], state)
        if isinstance(node, Output):
            return inputs[0], None
        raise TypeError(f"node {node.name}: the emulator has no rule for node type {node.kind} "
                        "(a deployed graph holds synapses, sums and LIF populations)")

    def _delayed(self, spikes):
        shifted = self.ops.zeros(spikes.shape, np.uint8)
        shifted[:, 1:] = spikes[:, :-1]
        return shifted

    def run(self, spikes: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(spikes of every population, potentials of each non-spiking one), numpy."""
        self.potentials = {}
        batch, steps = spikes.shape[:2]
        values = {self.graph.input.name: self.ops.spikes(spikes.reshape(batch, steps, -1))}
        for stage in self.plan:
            if stage.recurrent:
                self._cycle(stage.nodes, values, batch, steps)
                continue
            node = self.graph.node(stage.nodes[0])
            if isinstance(node, Input):
                continue
            inputs = [self._delayed(values[e.source]) if e.recurrent else values[e.source]
                      for e in self.graph.inputs_of(node.name)]
            values[node.name], _ = self._evaluate(node, inputs, None, over_time=True)
        return ({lif.name: self.ops.to_numpy(values[lif.name]) for lif in self.graph.populations},
                {name: self.ops.to_numpy(v) for name, v in self.potentials.items()})

    def _cycle(self, members: tuple[str, ...], values: dict, batch: int, steps: int) -> None:
        """Steps one cycle of the graph through time (recurrent edges read the previous step)."""
        inside = set(members)
        spiking = [name for name in members if isinstance(self.graph.node(name), LIF)]
        for name in spiking:
            values[name] = self.ops.zeros((batch, steps, self.graph.node(name).neurons), np.uint8)
        states: dict[str, object] = {name: None for name in members}
        for t in range(steps):
            now: dict[str, object] = {}
            for name in members:
                inputs = [self._edge_value(edge, t, values, now, inside, batch) for edge in self.graph.inputs_of(name)]
                now[name], states[name] = self._evaluate(self.graph.node(name), inputs, states[name], over_time=False)
            for name in spiking:
                values[name][:, t] = now[name]

    def _edge_value(self, edge: Edge, t: int, values: dict, now: dict, inside: set, batch: int):
        if not edge.recurrent:
            return now[edge.source] if edge.source in inside else values[edge.source][:, t]
        if t == 0:
            return self.ops.zeros((batch, math.prod(self.graph.shape_of(edge.source))), np.uint8)
        return values[edge.source][:, t - 1]


# Bytes one sample holds per step, per value of each node: the numpy backend keeps every node's
# output for the whole batch (int64 activations, uint8 spikes) and a float copy and its rounding
# while a synapse's product is computed; a non-spiking population also keeps its int64 potentials.
_BYTES_PER_ACTIVATION = 8 + 8 + 8
_BYTES_PER_SUM = 8
_BYTES_PER_SPIKE = 1
_BYTES_PER_POTENTIAL = 8


def emulation_bytes_per_sample(graph: Graph, time_steps: int) -> dict[str, int]:
    """Bytes the emulator holds for one sample of `time_steps` steps, by node (an estimate, from
    above, of the numpy backend's arrays; the conv patch matrix is bounded separately)."""
    sizes = {graph.input.name: time_steps * math.prod(graph.input.shape) * (_BYTES_PER_SPIKE + 8)}
    for node in graph.nodes:
        width = math.prod(graph.shape_of(node.name)) if not isinstance(node, (Input, Output)) else 0
        if isinstance(node, Synapse):
            sizes[node.name] = time_steps * width * _BYTES_PER_ACTIVATION
        elif isinstance(node, Sum):
            sizes[node.name] = time_steps * width * _BYTES_PER_SUM
        elif isinstance(node, LIF):
            per_step = _BYTES_PER_SPIKE + (0 if node.spiking else _BYTES_PER_POTENTIAL)
            sizes[node.name] = time_steps * width * per_step + 4 * 8 * width  # + u, v and a step's temporaries
    return sizes


def check_emulation_memory(network: ExportedNetwork, where: str) -> int:
    """Refuses a network one sample of which would not fit netgraph.limits.memory_limit();
    returns the bytes per sample."""
    sizes = emulation_bytes_per_sample(network.graph, network.time_steps)
    total = sum(sizes.values())
    largest = max(sizes, key=sizes.get)
    check_memory(total, f"{where}: emulating one sample (T = {network.time_steps}; node {largest} alone "
                        f"{format_bytes(sizes[largest])})")
    return total


def _concatenate(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch recordings, by name, joined along the sample axis."""
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def emulate(network: ExportedNetwork, input_spikes: np.ndarray, backend: str = "numpy",
            device: str | None = None, batch_size: int = 256, progress: bool = False) -> EmulationResult:
    """Runs the integer network on input spikes (samples, time, *input_shape) of 0/1.

    backend: 'numpy' (CPU) or 'torch' (device 'cuda' or 'cpu'). Both give identical spikes.
    batch_size: samples per batch, lowered so a batch stays within netgraph.limits.memory_limit().
    """
    spikes = np.asarray(input_spikes)
    expected = (network.time_steps, *network.input_shape)
    if spikes.ndim < 2 or tuple(spikes.shape[1:]) != expected:
        raise DataError(f"input spikes have shape {spikes.shape}; expected (samples, {', '.join(map(str, expected))})")
    if len(spikes) == 0:
        raise DataError("no samples to emulate")
    if np.any(spikes > 1) or np.any(spikes < 0):
        raise DataError("input spikes must be 0 or 1")
    if backend not in _OPS:
        raise UsageError(f"unknown emulator backend {backend!r}; choose 'numpy' or 'torch'")
    per_sample = check_emulation_memory(network, "emulator")
    batch_size = max(1, min(batch_size, memory_limit() // per_sample))
    simulation = _Simulation(network, _OPS[backend](device))
    chunks = [simulation.run(spikes[start : start + batch_size].astype(np.uint8))
              for start in tqdm(range(0, len(spikes), batch_size), desc="emulator", unit="batch", leave=False,
                                disable=not progress)]
    populations = _concatenate([batch_spikes for batch_spikes, _ in chunks])
    potentials = _concatenate([batch_potentials for _, batch_potentials in chunks])
    output = network.graph.output_population.name
    return EmulationResult(populations, output, network.graph.output.readout, potentials.get(output))
