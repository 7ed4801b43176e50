"""Typed nodes of the network graph, defined once for the trainer, exporter, artifact,
emulator, Lava backend and fidelity harness.

Every node emits one kind of signal:
    spikes   0/1 per neuron and time step (Input, LIF)
    pooled   averages of spikes (AvgPool2d); only a synapse may read them, and the
             exporter folds the pool into that synapse (pooling is linear)
    current  the synaptic input a population integrates (Dense, Conv2d, Sum)
and accepts the kinds listed in `accepts`. A LIF population reads exactly one current (a
Sum node adds several: on Lava, several Dense processes feeding one LIF's `a_in`).

Parameters are optional and come at two levels:
    float      the trained values (Dense/Conv2d `weight`, LIF `bias`) in the trained
               network's potential units;
    quantized  the Loihi integer form written by the exporter (`QuantizedSynapse`,
               `QuantizedLIF`).
A graph built from a run config has neither, a checkpoint's graph has float parameters,
an exported graph has both (the float ones drive Lava's floating_pt models).

Shapes: a node's `output_shape(inputs)` derives what it emits from what it reads and
raises GraphError naming the edge when they do not fit. Populations are flattened in C
order wherever they are stored (bias, recorded spikes).
"""
from __future__ import annotations

import abc
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from netgraph.decision import READOUTS
from netgraph.errors import GraphError
from netgraph.geometry import ConvGeometry, pooled_shape

SPIKES, POOLED, CURRENT = "spikes", "pooled", "current"
SIGN_MODES = ("mixed", "excitatory", "inhibitory")
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,199}")


def unique_name(wanted: str, taken) -> str:
    """`wanted` made a valid node name (letters, digits, '_', starting with a letter, at most
    200 characters) that is not in `taken`: the first free of wanted, wanted_1, wanted_2, ..."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", str(wanted))[:190] or "node"
    base = base if base[0].isalpha() else f"n_{base}"
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name

# (source name, source output shape) for each input edge of a node, in edge order.
Inputs = Sequence[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True, eq=False)
class QuantizedSynapse:
    """A synapse in Loihi integer form, as handed to Lava's Dense.

    weight: int64 mantissas in the float weight's layout, on the sign mode's grid.
    weight_exp: the synaptic sum is shifted left by it (right if negative).
    num_weight_bits: weight precision (<= the hardware's weight bits).
    sign_mode: 'mixed', 'excitatory' or 'inhibitory' (written out, never guessed).
    """

    weight: np.ndarray
    weight_exp: int
    num_weight_bits: int
    sign_mode: str


@dataclass(frozen=True, eq=False)
class QuantizedLIF:
    """A LIF population in Loihi integer form, as handed to Lava's LIF.

    du, dv: 12-bit current and voltage decays; vth: threshold mantissa (fires when
    v > vth << vth_shift); bias_mant: (neurons,) int64, bias = bias_mant << bias_exp;
    scale: weight units per potential unit of the trained network, shared by every synapse
    feeding the population (w_int ~= w * scale).
    """

    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray
    bias_exp: int
    scale: float


@dataclass(frozen=True, eq=False)
class Node(abc.ABC):
    """Base of every node type: a unique name (a letter, then letters, digits, '_')."""

    name: str

    accepts: ClassVar[tuple[str, ...]] = ()
    emits: ClassVar[str | None] = None
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise GraphError(f"node name {self.name!r} must be 1-200 characters: a letter, then letters, digits or '_'")

    @property
    def kind(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def output_shape(self, inputs: Inputs) -> tuple[int, ...]:
        """The shape this node emits, given (source name, shape) of each input edge."""


def _check_shape(name: str, what: str, array: np.ndarray | None, expected: tuple[int, ...]) -> None:
    if array is not None and tuple(np.shape(array)) != tuple(expected):
        raise GraphError(f"node {name}: {what} has shape {tuple(np.shape(array))}, expected {tuple(expected)}")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_dimensions(name: str, what: str, shape: tuple[int, ...]) -> None:
    """A node's shape: at least one dimension, each a positive integer."""
    if not shape:
        raise GraphError(f"node {name}: {what} needs a shape")
    for d in shape:
        _positive_int(name, "every dimension of shape", d)


def _positive_int(name: str, field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise GraphError(f"node {name}: {field} must be a positive integer, got {value!r}")


@dataclass(frozen=True, eq=False)
class Input(Node):
    """The network's input: one sample's spikes at one time step have `shape`
    ((channels, height, width) for images and event frames, (features,) otherwise)."""

    shape: tuple[int, ...] = ()
    emits: ClassVar[str] = SPIKES
    min_inputs: ClassVar[int] = 0
    max_inputs: ClassVar[int] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dimensions(self.name, "an input", self.shape)

    def output_shape(self, inputs: Inputs) -> tuple[int, ...]:
        return tuple(self.shape)


@dataclass(frozen=True, eq=False)
class Synapse(Node):
    """Base of the synapse types: reads spikes (or pooled spikes), emits a current.
    weight: the trained float weights; quantized: their Loihi integer form (keywords only)."""

    weight: np.ndarray | None = field(default=None, kw_only=True)
    quantized: QuantizedSynapse | None = field(default=None, kw_only=True)
    accepts: ClassVar[tuple[str, ...]] = (SPIKES, POOLED)
    emits: ClassVar[str] = CURRENT

    def _check_weights(self, source: str, expected: tuple[int, ...], gives: str) -> None:
        """The float and quantized weights have the `expected` shape (the source `gives` what
        decides it), and the quantized ones are integers."""
        quantized = None if self.quantized is None else self.quantized.weight
        for what, array in (("weight", self.weight), ("quantized weight", quantized)):
            if array is not None and tuple(np.shape(array)) != tuple(expected):
                raise GraphError(f"edge {source} -> {self.name}: {source} gives {gives}, but {self.name}'s {what} has "
                                 f"shape {tuple(np.shape(array))} (expected {tuple(expected)})")
        if quantized is not None and not np.issubdtype(np.asarray(quantized).dtype, np.integer):
            raise GraphError(f"node {self.name}: quantized weight must be integers, got {np.asarray(quantized).dtype}")


@dataclass(frozen=True, eq=False)
class Dense(Synapse):
    """Fully connected synapses x = W s: reads spikes (flattened in C order), emits
    `out_features` currents. weight: float (out_features, in_features)."""

    out_features: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self.name, "out_features", self.out_features)

    def weight_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The weights' shape when reading a source of shape `in_shape`: (out_features, in_features)."""
        return (self.out_features, math.prod(in_shape))

    def output_shape(self, inputs: Inputs) -> tuple[int, ...]:
        (source, in_shape), = inputs
        self._check_weights(source, self.weight_shape(in_shape), f"{math.prod(in_shape)} values {tuple(in_shape)}")
        return (self.out_features,)


@dataclass(frozen=True, eq=False)
class Conv2d(Synapse):
    """2-D convolution (cross-correlation, zero padding) of a (C, H, W) spike map into
    `out_channels` maps of currents. weight: float (out_channels, C, kh, kw)."""

    out_channels: int = 0
    kernel_size: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self.name, "out_channels", self.out_channels)
        _positive_int(self.name, "stride", self.stride)
        if len(tuple(self.kernel_size)) != 2:
            raise GraphError(f"node {self.name}: kernel_size must be (height, width), got {self.kernel_size!r}")
        for k in self.kernel_size:
            _positive_int(self.name, "kernel_size", k)
        if isinstance(self.padding, bool) or not isinstance(self.padding, (int, np.integer)) or self.padding < 0:
            raise GraphError(f"node {self.name}: padding must be an integer >= 0, got {self.padding!r}")

    def weight_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The kernel's shape when reading a (C, H, W) source: (out_channels, C, kh, kw)."""
        return (self.out_channels, in_shape[0], *self.kernel_size)

    def geometry(self, in_shape: tuple[int, ...]) -> ConvGeometry:
        return ConvGeometry(tuple(in_shape), tuple(self.kernel_size), int(self.stride), int(self.padding))

    def output_shape(self, inputs: Inputs) -> tuple[int, ...]:
        (source, in_shape), = inputs
        if len(in_shape) != 3:
            raise GraphError(f"edge {source} -> {self.name}: a conv needs a (channels, height, width) input, "
                             f"{source} gives {in_shape}")
        geometry = self.geometry(in_shape)
        problem = geometry.problem()
        if problem:
            raise GraphError(f"edge {source} -> {self.name}: {problem}")
        self._check_weights(source, self.weight_shape(in_shape), f"{in_shape[0]} channels")
        return geometry.out_shape(self.out_channels)


@dataclass(frozen=True, eq=False)
class AvgPool2d(Node):
    """Average of non-overlapping k x k windows of a spike map (Wu et al. 2018, section
    3.2.2): no neurons; only synapses read it, and the exporter folds it into them."""

    kernel_size: int = 2
    accepts: ClassVar[tuple[str, ...]] = (SPIKES,)
    emits: ClassVar[str] = POOLED

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self.name, "kernel_size", self.kernel_size)

    def output_shape(self, inputs: Inputs) -> tuple[int, ...]:
        (source, in_shape), = inputs
        try:
            return pooled_shape(tuple(in_shape), int(self.kernel_size))
        except ValueError as exc:
            raise GraphError(f"edge {source} -> {self.name}: {exc}") from exc


@dataclass(frozen=True, eq=False)
class Sum(Node):
    """Adds two or more currents of one shape into the input of one population (on Lava:
    several Dense processes connected to the same LIF `a_in`)."""

    accepts: ClassVar[tuple[str, ...]] = (CURRENT,)
    emits: ClassVar[str] = CURRENT
    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = None

    def output_shape(self, inputs: Inputs) -> tuple[int, ...]:
        first, shape = inputs[0]
        for source, other in inputs[1:]:
            if tuple(other) != tuple(shape):
                raise GraphError(f"edges {first} -> {self.name} and {source} -> {self.name}: a sum needs inputs of "
                                 f"one shape, {first} gives {tuple(shape)} and {source} gives {tuple(other)}")
        return tuple(shape)


@dataclass(frozen=True, eq=False)
class LIF(Node):
    """A population of leaky integrate-and-fire neurons of `shape`, as Loihi runs them:

        i[t] = tau_current * i[t-1] + x[t]                    synaptic current
        v[t] = tau * v[t-1] * (1 - o[t-1]) + i[t] + b         membrane potential
        o[t] = 1 if v[t] >= v_threshold else 0                spike, then v resets to 0

    tau: fraction of the potential kept per step (STBP's tau; Loihi's voltage decay dv).
    tau_current: fraction of the current kept per step; 0 (STBP) means the current is each
        step's input (Loihi's du = 4095); above 0 the neuron is current-based (CUBA).
    v_threshold: Vth (> 0); bias: float (neurons,), in potential units. Vth = inf makes a
        non-spiking population, a leaky integrator whose potential is the network's output
        (only the population an Output with readout 'potential' reads; on Loihi a LIF whose
        threshold its potential cannot reach, export.quantize).
    The trainer's float step is trainer.neuron, Loihi's integer step export.fixed_point.
    """

    shape: tuple[int, ...] = ()
    tau: float = 0.2
    v_threshold: float = 0.5
    tau_current: float = 0.0
    bias: np.ndarray | None = None
    quantized: QuantizedLIF | None = None
    accepts: ClassVar[tuple[str, ...]] = (CURRENT,)
    emits: ClassVar[str] = SPIKES

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dimensions(self.name, "a LIF population", self.shape)
        for parameter, value in (("tau", self.tau), ("tau_current", self.tau_current)):
            if not (_is_real(value) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise GraphError(f"node {self.name}: {parameter} must lie in [0, 1], got {value!r}")
        if not (_is_real(self.v_threshold) and not math.isnan(self.v_threshold) and self.v_threshold > 0):
            raise GraphError(f"node {self.name}: v_threshold must be a positive number (inf: never fires), "
                             f"got {self.v_threshold!r}")
        _check_shape(self.name, "bias", self.bias, (self.neurons,))
        if self.quantized is not None:
            _check_shape(self.name, "bias_mant", self.quantized.bias_mant, (self.neurons,))

    @property
    def neurons(self) -> int:
        return math.prod(self.shape)

    @property
    def spiking(self) -> bool:
        """False for a non-spiking population (v_threshold = inf)."""
        return math.isfinite(self.v_threshold)

    def output_shape(self, inputs: Inputs) -> tuple[int, ...]:
        (source, in_shape), = inputs
        if tuple(in_shape) != tuple(self.shape):
            raise GraphError(f"edge {source} -> {self.name}: {source} gives a current of shape {tuple(in_shape)}, "
                             f"the population has shape {tuple(self.shape)}")
        return tuple(self.shape)


@dataclass(frozen=True, eq=False)
class Output(Node):
    """Marks the population that is the network's output. readout: what the decision rule
    (netgraph.decision) reads of it, 'spikes' (counts) or 'potential' (the potential at the
    sample's last step, of a non-spiking population: v_threshold = inf)."""

    readout: str = "spikes"
    accepts: ClassVar[tuple[str, ...]] = (SPIKES,)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.readout not in READOUTS:
            raise GraphError(f"node {self.name}: readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")

    def output_shape(self, inputs: Inputs) -> tuple[int, ...]:
        (_, in_shape), = inputs
        return tuple(in_shape)


