"""Bit-exact emulator of the deployed network: Loihi's integer dynamics, batched.

It reads the exported graph (not the training code), starts every sample from zero state
and follows the graph's timing (netgraph.graph): no delay along a forward edge (a
population at step t sees its inputs' spikes of step t, as in the trained network), one
step along a recurrent edge. (Lava's Dense adds one step of delay per synapse; the Lava
backend re-times its run to this, see export.timing.) The arithmetic is
`export.fixed_point`. Nodes are evaluated in the graph's execution plan: outside cycles a
synapse is one product over all time steps, a cycle closed by recurrent edges is stepped
through time.

Backends: 'torch' (CPU or CUDA) and 'numpy' (CPU), spike for spike the same; 'auto', the
default, is torch (on CUDA when there is one), else numpy when torch is missing.

Synaptic sums: every weight of a synapse is a multiple of 2^p (mixed-sign 8-bit weights are
even), so the sums are taken over the weights >> p and shifted by weight_exp + p
(shift_activation of the true sum, exactly). On torch's CPU they are an int8 product
(torch._int_mm, int32 accumulation) where those weights fit int8 and every sum stays below
2^31; else a float product, exact because every partial sum is an integer below 2^24
(float32) or 2^53 (float64), checked per synapse, and cast to integers without rounding
(torch still rounds, in case its library picks a transform algorithm for a conv).

Neurons: a population within the input bound validation enforces (in_place_lif_applies) is
stepped by fixed_point.InPlaceLIF, the same arithmetic in place in int32; any other (a
network validation would refuse) by the reference lif_fixed_step in int64, so the emulator
is the definition's arithmetic for every network it accepts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from export.conv import conv_accumulate
from export.fixed_point import (INT32_LIMIT, FixedLIFParameters, InPlaceLIF, current_may_wrap, effective_bias,
                                effective_weights, in_place_lif_applies, input_reach, lif_fixed_step,
                                population_activation_extremes, shift_activation_in_place)
from export.network import ExportedNetwork
from netgraph import LIF, Conv2d, Edge, Graph, Input, Node, Output, Sum, Synapse, predict
from netgraph.errors import DataError, UsageError
from netgraph.geometry import ConvGeometry
from netgraph.limits import check_memory, format_bytes, memory_limit

FLOAT32_EXACT = 1 << 24
INT8_MIN, INT8_MAX = -(1 << 7), (1 << 7) - 1
# The largest |weight| torch's float32 products stay exact for in any precision torch may be
# set to: bfloat16 (set_float32_matmul_precision) and TF32 (CUDA matmuls, cuDNN convs) hold
# integers up to 2^8 exactly, and both accumulate in float32.
REDUCED_PRECISION_EXACT = 1 << 8


@dataclass
class EmulationResult:
    """Spikes of every LIF population, each uint8 (samples, time, neurons), in the graph's
    order; `output` names the output population, `readout` the decision rule; for a
    potential readout, `output_potential` is that population's v (int64 (samples, time,
    neurons), Loihi units) after each step. `backend`: what ran, e.g. 'torch cpu'."""

    population_spikes: dict[str, np.ndarray]
    output: str
    readout: str = "spikes"
    output_potential: np.ndarray | None = None
    backend: str = ""

    @property
    def output_spikes(self) -> np.ndarray:
        return self.population_spikes[self.output]

    @property
    def predictions(self) -> np.ndarray:
        return predict(self.readout, self.output_spikes, self.output_potential)


@dataclass(frozen=True)
class _Product:
    """How one synapse's sums are taken, exactly, over its effective weights >> scale_bits (all
    multiples of 2^scale_bits). integer: weights int8 (inputs, outputs), an int8 product;
    else float weights (inputs, outputs), or the conv kernel (geometry set), of float_dtype.
    The sums come out as out_dtype, and the activation (after the synapse's shift) is
    activation_dtype: int32 for a population InPlaceLIF steps, else int64. They differ where a
    sum before a right shift could pass 2^31 though the shifted activation fits int32."""

    weights: Any
    integer: bool
    float_dtype: Any
    scale_bits: int
    geometry: ConvGeometry | None
    out_dtype: Any
    activation_dtype: Any


class _NumpyOps:
    """Array operations of the numpy backend (CPU): float products (numpy has no fast int8 one)."""

    xp = np
    int8_products = False
    float32_weight_limit = math.inf
    description = "numpy"

    def __init__(self, device=None):
        self.device = None

    def spikes(self, array: np.ndarray):
        return array

    def product(self, spikes, product: _Product):
        """spikes uint8 (rows, inputs) -> exact sums (rows, outputs) in product.out_dtype."""
        if product.geometry is not None:
            sums = conv_accumulate(spikes, product.weights, product.geometry, product.float_dtype)
        else:
            sums = spikes.astype(product.float_dtype) @ product.weights
        return sums.astype(product.out_dtype)  # integer-valued floats: the cast is exact

    def constant(self, array: np.ndarray, dtype):
        return np.ascontiguousarray(array, dtype=dtype)

    def cast(self, array, dtype):
        return array.astype(dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def recording(self, target: np.ndarray):
        """A backend array that records into `target` (numpy), directly where it can."""
        return target

    def store(self, recorded, target: np.ndarray) -> None:
        pass  # recorded is target


class _TorchOps:
    """Array operations of the torch backend (CPU or CUDA). On the CPU the products are int8
    where the weights allow; on CUDA they are float (torch._int_mm has its own shape rules
    there and this path is kept simple)."""

    def __init__(self, device=None):
        import torch  # optional: the artifact path stays torch-free unless this backend is chosen

        self.torch, self.xp = torch, torch
        self.device = torch.device(device or "cpu")
        self.int8_products = self.device.type == "cpu" and hasattr(torch, "_int_mm")
        self.float32_weight_limit = REDUCED_PRECISION_EXACT
        self.description = f"torch {self.device}"

    def _dtype(self, dtype):
        return getattr(self.torch, np.dtype(dtype).name)

    def spikes(self, array: np.ndarray):
        """The input spikes (never written), shared with numpy where they may be."""
        return self.torch.from_numpy(array if array.flags.writeable else array.copy()).to(self.device)

    def product(self, spikes, product: _Product):
        """spikes uint8 (rows, inputs) -> exact sums (rows, outputs) in product.out_dtype."""
        if product.integer:  # 0/1 spikes read as int8 as they are; int32 sums, exact below 2^31
            sums = self.torch._int_mm(spikes.contiguous().view(self.torch.int8), product.weights)
            return sums.to(self._dtype(product.out_dtype))
        if product.geometry is not None:
            maps = spikes.reshape(-1, *product.geometry.in_shape).to(product.weights.dtype)
            sums = self.torch.nn.functional.conv2d(maps, product.weights, stride=product.geometry.stride,
                                                   padding=product.geometry.padding).reshape(len(maps), -1)
        else:
            sums = spikes.to(product.weights.dtype) @ product.weights
        # Summed directly, these are integers; the rounding stays for a library that picks a
        # transform algorithm instead (cuDNN may run a conv as Winograd or FFT).
        return sums.round_().to(self._dtype(product.out_dtype))

    def constant(self, array: np.ndarray, dtype):
        return self.torch.from_numpy(np.ascontiguousarray(array, dtype=dtype)).to(self.device)

    def cast(self, array, dtype):
        return array.to(self._dtype(dtype))

    def zeros(self, shape, dtype):
        return self.torch.zeros(shape, dtype=self._dtype(dtype), device=self.device)

    def recording(self, target: np.ndarray):
        if self.device.type == "cpu":
            return self.torch.from_numpy(target)  # the same memory
        return self.torch.zeros(target.shape, dtype=self._dtype(target.dtype), device=self.device)

    def store(self, recorded, target: np.ndarray) -> None:
        if self.device.type != "cpu":
            target[...] = recorded.cpu().numpy()


BACKENDS = ("auto", "numpy", "torch")  # emulate()'s backend names; 'auto' is the default


def _backend(name: str, device: str | None):
    """The ops of backend `name`; 'auto': torch (on `device`, else CUDA when present, else the
    CPU), numpy when torch cannot be imported."""
    if name == "auto":
        try:
            import torch  # optional: only to see whether it is there and whether a GPU is
        except ImportError:
            return _NumpyOps(device)
        return _TorchOps(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if name not in BACKENDS:
        raise UsageError(f"unknown emulator backend {name!r}; choose one of {', '.join(map(repr, BACKENDS))}")
    return _NumpyOps(device) if name == "numpy" else _TorchOps(device)


def _common_power_of_two(weights: np.ndarray) -> int:
    """The largest p such that every weight (int64) is a multiple of 2^p; 0 when all are zero."""
    bits = int(np.bitwise_or.reduce(np.abs(weights).ravel(), initial=0))
    return (bits & -bits).bit_length() - 1 if bits else 0


def _plan_product(weights: np.ndarray, geometry: ConvGeometry | None, activation_dtype, ops) -> _Product:
    """The fastest exact product this backend has for one synapse's effective weights (int64,
    (outputs, inputs) or a conv kernel): int8 where the scaled weights fit and every sum stays
    below 2^31 (int32 accumulation), else float32 while every partial sum stays below 2^24, else
    float64 (exact below 2^53, which validation's input bound keeps every sum far under)."""
    scale_bits = _common_power_of_two(weights)
    scaled = weights >> scale_bits
    bound = int(np.abs(scaled).reshape(scaled.shape[0], -1).sum(axis=1).max(initial=0))
    out_dtype = np.int64 if bound >= INT32_LIMIT else activation_dtype
    low, high = int(scaled.min(initial=0)), int(scaled.max(initial=0))
    if ops.int8_products and geometry is None and INT8_MIN <= low and high <= INT8_MAX and bound < INT32_LIMIT:
        return _Product(ops.constant(scaled.T, np.int8), True, None, scale_bits, None, out_dtype, activation_dtype)
    exact_in_float32 = bound < FLOAT32_EXACT and max(high, -low) <= ops.float32_weight_limit
    float_dtype = np.float32 if exact_in_float32 else np.float64
    layout = scaled if geometry is not None else scaled.T
    return _Product(ops.constant(layout, float_dtype), False, float_dtype, scale_bits, geometry, out_dtype,
                    activation_dtype)


@dataclass(frozen=True)
class _PopulationPlan:
    """How one population is stepped. params: its integer parameters, bias_mant a backend
    int64 array (the reference step's); bias: the effective bias as a backend int32 array when
    InPlaceLIF steps it (None: the reference step); wraps: whether its current can wrap;
    input_shift: the left shift by weight_exp its synapse leaves to InPlaceLIF's input pass."""

    params: FixedLIFParameters
    bias: Any
    wraps: bool
    input_shift: int = 0

    @property
    def in_place(self) -> bool:
        return self.bias is not None


class _ReferenceLIF:
    """lif_fixed_step itself on int64 state, with InPlaceLIF's interface: for a population
    outside in_place_lif_applies (which validation would refuse)."""

    def __init__(self, params: FixedLIFParameters, hw, ops, shape: tuple[int, int]):
        self.params, self.hw, self.xp = params, hw, ops.xp
        self.u = self.v = ops.zeros(shape, np.int64)

    def step(self, activation, spikes) -> None:
        fired, self.u, self.v = lif_fixed_step(activation, self.u, self.v, self.params, self.hw, self.xp)
        spikes[...] = fired


class _Simulation:
    """The deployed graph on one backend: constants prepared once, then batch after batch."""

    def __init__(self, network: ExportedNetwork, ops):
        self.network, self.graph, self.ops, self.hw = network, network.graph, ops, network.hardware
        self.plan = self.graph.plan()
        self.populations = {lif.name: self._population_plan(lif) for lif in self.graph.populations}
        self.products = {node.name: self._product(node) for node in self.graph.nodes if isinstance(node, Synapse)}
        self.shifts = {name: self.graph.node(name).quantized.weight_exp + product.scale_bits
                       for name, product in self.products.items()}  # what each synapse's sums are shifted by
        self._leave_left_shifts_to_populations()
        self.spikes: dict[str, Any] = {}  # this batch's spike records, by population
        self.potentials: dict[str, Any] = {}  # this batch's potential records, by non-spiking population

    def _population_plan(self, lif: LIF) -> _PopulationPlan:
        q = lif.quantized
        params = FixedLIFParameters(q.du, q.dv, q.vth, np.asarray(q.bias_mant).astype(np.int64), q.bias_exp)
        on_backend = FixedLIFParameters(q.du, q.dv, q.vth, self.ops.constant(params.bias_mant, np.int64), q.bias_exp)
        largest, smallest = population_activation_extremes(self.graph, lif, self.hw)
        if not in_place_lif_applies(params, input_reach(largest, smallest), self.hw):
            return _PopulationPlan(on_backend, None, True)
        wraps = current_may_wrap(largest, smallest, params, self.network.time_steps, self.hw)
        return _PopulationPlan(on_backend, self.ops.constant(effective_bias(params), np.int32), wraps)

    def _product(self, node: Node) -> _Product:
        q = node.quantized
        weights = effective_weights(q.weight, q.sign_mode, q.num_weight_bits, self.hw)
        geometry = node.geometry(self.graph.read_shape(node.name)) if isinstance(node, Conv2d) else None
        out_dtype = np.int32 if self.populations[self.graph.population_of(node.name).name].in_place else np.int64
        return _plan_product(weights, geometry, out_dtype, self.ops)

    def _leave_left_shifts_to_populations(self) -> None:
        """A synapse that alone feeds an InPlaceLIF population leaves its left shift to the
        population's input pass (one pass over the sums fewer). A right shift floors, so it stays
        with its synapse, as does any shift of a synapse feeding a Sum."""
        for name, plan in self.populations.items():
            source = self.graph.inputs_of(name)[0].source
            if plan.in_place and source in self.shifts and self.shifts[source] > 0:
                self.populations[name] = dataclasses.replace(plan, input_shift=self.shifts[source])
                self.shifts[source] = 0

    def _neurons(self, name: str, batch: int):
        """A fresh state for population `name`: InPlaceLIF or the reference step."""
        plan, shape = self.populations[name], (batch, self.graph.node(name).neurons)
        if plan.in_place:
            return InPlaceLIF(plan.params, self.hw, plan.bias, shape, self.ops.xp, self.ops.device, plan.wraps,
                              plan.input_shift)
        return _ReferenceLIF(plan.params, self.hw, self.ops, shape)

    # ---- one function per node type: the activation of a synapse, a sum, a population

    def _synapse(self, node: Node, spikes):
        """spikes (..., inputs) -> activation (..., outputs), Lava Dense's arithmetic."""
        product = self.products[node.name]
        sums = self.ops.product(spikes.reshape(-1, spikes.shape[-1]), product)
        activation = shift_activation_in_place(sums, self.shifts[node.name])
        if product.out_dtype != product.activation_dtype:  # wide sums, shifted into int32's range
            activation = self.ops.cast(activation, product.activation_dtype)
        return activation.reshape(*spikes.shape[:-1], -1)

    def _population(self, node: LIF, activation):
        """activation (batch, steps, neurons) -> this batch's spike record of the population (its
        potentials, if it does not spike, go to its potential record)."""
        batch, steps, _ = activation.shape
        neurons, spikes = self._neurons(node.name, batch), self.spikes[node.name]
        potentials = self.potentials.get(node.name)
        for t in range(steps):
            neurons.step(activation[:, t], spikes[:, t])
            if potentials is not None:
                potentials[:, t] = neurons.v
        return spikes

    def _current(self, node: Node, inputs: list):
        if isinstance(node, Synapse):
            return self._synapse(node, inputs[0])
        if isinstance(node, Sum):
            return sum(inputs[1:], inputs[0])
        if isinstance(node, Output):
            return inputs[0]
        raise TypeError(f"node {node.name}: the emulator has no rule for node type {node.kind} "
                        "(a deployed graph holds synapses, sums and LIF populations)")

    # ---- running the plan

    def _delayed(self, spikes):
        shifted = self.ops.zeros(spikes.shape, np.uint8)
        shifted[:, 1:] = spikes[:, :-1]
        return shifted

    def run(self, spikes: np.ndarray, spike_records: dict[str, np.ndarray],
            potential_records: dict[str, np.ndarray]) -> None:
        """One batch: spikes uint8 (batch, steps, *input_shape); writes every population's spikes
        into spike_records (uint8 (batch, steps, neurons), numpy, by name) and every non-spiking
        population's potentials into potential_records (int64, same shape)."""
        batch, steps = spikes.shape[:2]
        self.spikes = {name: self.ops.recording(target) for name, target in spike_records.items()}
        self.potentials = {name: self.ops.recording(target) for name, target in potential_records.items()}
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
            is_population = isinstance(node, LIF)
            values[node.name] = self._population(node, inputs[0]) if is_population else self._current(node, inputs)
        for records, targets in ((self.spikes, spike_records), (self.potentials, potential_records)):
            for name, target in targets.items():
                self.ops.store(records[name], target)

    def _cycle(self, members: tuple[str, ...], values: dict, batch: int, steps: int) -> None:
        """Steps one cycle of the graph through time (recurrent edges read the previous step)."""
        inside = set(members)
        spiking = [name for name in members if isinstance(self.graph.node(name), LIF)]
        neurons = {name: self._neurons(name, batch) for name in spiking}
        for name in spiking:
            values[name] = self.spikes[name]
        for t in range(steps):
            now: dict[str, object] = {}
            for name in members:
                inputs = [self._edge_value(edge, t, values, now, inside, batch) for edge in self.graph.inputs_of(name)]
                if name in neurons:
                    now[name] = self._population_step(name, neurons[name], inputs[0], t)
                else:
                    now[name] = self._current(self.graph.node(name), inputs)

    def _population_step(self, name: str, neurons, activation, t: int):
        """One step of a population inside a cycle: activation (batch, neurons) -> its spikes of
        step t (a view of its record)."""
        neurons.step(activation, self.spikes[name][:, t])
        if name in self.potentials:
            self.potentials[name][:, t] = neurons.v
        return self.spikes[name][:, t]

    def _edge_value(self, edge: Edge, t: int, values: dict, now: dict, inside: set, batch: int):
        if not edge.recurrent:
            return now[edge.source] if edge.source in inside else values[edge.source][:, t]
        if t == 0:
            return self.ops.zeros((batch, math.prod(self.graph.shape_of(edge.source))), np.uint8)
        return values[edge.source][:, t - 1]


# Bytes one sample holds per step, per value of each node, from above. A synapse's sums: int32
# (int64 where its population takes the reference step) and, for a float product, the float
# product they are cast from: 8 + 8 at most (the int8 product holds 4); the weight_exp shift
# works in place. (The bound keeps 8 more, what the rounded copy took before the products were
# cast directly.) A synapse reading a population also holds, per value of that population, the
# float copy of its spikes a float product takes and, along a recurrent edge, their delayed copy
# (the input's float copy is counted with the input). A Sum: a new array of its inputs' type. A
# population: its uint8 spikes, a non-spiking one's int64 potentials, and per neuron its state
# (InPlaceLIF: int32 v, u and scratch, the float64 decay product and a uint8 mask, 21 bytes; the
# reference step: int64 u, v and its temporaries).
_BYTES_PER_ACTIVATION = 8 + 8 + 8
_BYTES_PER_SPIKE_COPY = 8 + 1
_BYTES_PER_SUM = 8
_BYTES_PER_SPIKE = 1
_BYTES_PER_POTENTIAL = 8
_BYTES_PER_NEURON_STATE = 4 * 8


def emulation_bytes_per_sample(graph: Graph, time_steps: int) -> dict[str, int]:
    """Bytes the emulator holds for one sample of `time_steps` steps, by node (an estimate, from
    above, of either backend's arrays; the conv patch matrix is bounded separately). The input:
    its uint8 spikes and, for a float product, their float copy."""
    sizes = {graph.input.name: time_steps * math.prod(graph.input.shape) * (_BYTES_PER_SPIKE + 8)}
    for node in graph.nodes:
        width = math.prod(graph.shape_of(node.name)) if not isinstance(node, (Input, Output)) else 0
        if isinstance(node, Synapse):
            source = graph.inputs_of(node.name)[0].source
            copies = 0 if source == graph.input.name else math.prod(graph.shape_of(source)) * _BYTES_PER_SPIKE_COPY
            sizes[node.name] = time_steps * (width * _BYTES_PER_ACTIVATION + copies)
        elif isinstance(node, Sum):
            sizes[node.name] = time_steps * width * _BYTES_PER_SUM
        elif isinstance(node, LIF):
            per_step = _BYTES_PER_SPIKE + (0 if node.spiking else _BYTES_PER_POTENTIAL)
            sizes[node.name] = time_steps * width * per_step + _BYTES_PER_NEURON_STATE * width
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


def _check_input(network: ExportedNetwork, spikes: np.ndarray) -> None:
    expected = (network.time_steps, *network.input_shape)
    if spikes.ndim < 2 or tuple(spikes.shape[1:]) != expected:
        raise DataError(f"input spikes have shape {spikes.shape}; expected (samples, {', '.join(map(str, expected))})")
    if len(spikes) == 0:
        raise DataError("no samples to emulate")
    if spikes.dtype == np.uint8:  # one pass, no temporary
        not_binary = spikes.max(initial=0) > 1
    elif spikes.dtype == np.bool_:
        not_binary = False
    else:  # 0.5 or NaN would otherwise be cast to 0 silently
        not_binary = not np.all((spikes == 0) | (spikes == 1))
    if not_binary:
        raise DataError("input spikes must be 0 or 1")


def emulate(network: ExportedNetwork, input_spikes: np.ndarray, backend: str = "auto",
            device: str | None = None, batch_size: int = 256, progress: bool = False) -> EmulationResult:
    """Runs the integer network on input spikes (samples, time, *input_shape) of 0/1.

    backend: 'auto' (torch, on `device` or else CUDA when present, else the CPU; numpy when
    torch is missing), 'torch' (device 'cpu' unless given, or 'cuda') or 'numpy' (CPU). All give
    identical spikes. batch_size: samples per batch, lowered so a batch stays within
    netgraph.limits.memory_limit().
    """
    spikes = np.asarray(input_spikes)
    _check_input(network, spikes)
    ops = _backend(backend, device)
    per_sample = check_emulation_memory(network, "emulator")
    batch_size = max(1, min(batch_size, memory_limit() // per_sample))
    simulation = _Simulation(network, ops)
    samples, steps = len(spikes), network.time_steps
    population_spikes = {lif.name: np.zeros((samples, steps, lif.neurons), np.uint8)
                         for lif in network.graph.populations}
    potentials = {lif.name: np.zeros((samples, steps, lif.neurons), np.int64)
                  for lif in network.graph.populations if not lif.spiking}
    for start in tqdm(range(0, samples, batch_size), desc="emulator", unit="batch", leave=False, disable=not progress):
        part = slice(start, start + batch_size)
        simulation.run(np.ascontiguousarray(spikes[part], dtype=np.uint8),
                       {name: record[part] for name, record in population_spikes.items()},
                       {name: record[part] for name, record in potentials.items()})
    output = network.graph.output_population.name
    return EmulationResult(population_spikes, output, network.graph.output.readout, potentials.get(output),
                           ops.description)
