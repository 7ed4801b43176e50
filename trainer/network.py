"""The trainable spiking network: a PyTorch module per node of the network graph.

Each node type has one module class here (chosen by `_make_module`), with two ways to run it:
    over_time(inputs)    all time steps at once, tensors (batch, time, *shape)
    step(inputs, state)  one time step, tensors (batch, *shape)
The network follows the graph's execution plan (netgraph.Graph.plan): nodes outside
cycles run over all time steps at once (a synapse is one batched product for every step),
and a cycle closed by recurrent edges runs step by step, each recurrent edge reading its
source's spikes of the previous step (zeros at step 0), as the graph's timing says.

Parameters: a synapse holds `weight` (Dense (out, in), Conv2d (out, in, kh, kw)); a LIF
population holds `bias`, one per neuron, or one per channel for a (C, H, W) population (the
bias of a conv layer). State-dict keys are `nodes.<node name>.weight|bias`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from netgraph import (CURRENT, LIF, AvgPool2d, Conv2d, Dense, Edge, Graph, Input, Node, Output, Sum, final_potential,
                      predict)
from netgraph.errors import DataError
from trainer.architecture import build_graph, fan_in
from trainer.config import ModelConfig
from trainer.neuron import LIFParameters, LIFState, lif_sequence, lif_step
from trainer.surrogate import Surrogate


def paper_init_(weight: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Wu et al. 2018 eqs. 29-30: W ~ U[-1, 1], then each row (one post-synaptic neuron's
    fan-in) divided by its L2 norm, so every neuron starts with a unit-norm weight vector."""
    with torch.no_grad():
        weight.uniform_(-1.0, 1.0, generator=generator)
        norms = weight.flatten(1).norm(dim=1).clamp_min(1e-12)
        weight.div_(norms.view(-1, *([1] * (weight.dim() - 1))))


class NodeModule(nn.Module):
    """Base of the node modules: `over_time(inputs)` and `step(inputs, state) -> (out, state)`."""


class Passthrough(NodeModule):
    """Input and Output: the spikes themselves."""

    def over_time(self, inputs):
        return inputs[0]

    def step(self, inputs, state):
        return inputs[0], None


class DenseSynapse(NodeModule):
    """x = W s (no bias: the bias belongs to the population). weight: (out, in_features).
    A Dense whose graph node already holds weights (a lateral inhibition the config fixes)
    keeps them as a buffer, never trained and not saved: the config rebuilds them."""

    def __init__(self, node: Dense, graph: Graph):
        super().__init__()
        if node.weight is not None:
            self.register_buffer("weight", torch.as_tensor(node.weight, dtype=torch.float32).clone(),
                                 persistent=False)
            return
        self.weight = nn.Parameter(torch.empty(node.weight_shape(graph.read_shape(node.name))))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # PyTorch's nn.Linear default

    def over_time(self, inputs):
        return F.linear(inputs[0].flatten(2), self.weight)

    def step(self, inputs, state):
        return F.linear(inputs[0].flatten(1), self.weight), None


class ConvSynapse(NodeModule):
    """x = K * s (cross-correlation, zero padding). weight: (out_channels, in_channels, kh, kw).
    A Conv2d whose graph node already holds weights (a spiking pool's averaging kernel) keeps
    them as a buffer, as DenseSynapse does."""

    def __init__(self, node: Conv2d, graph: Graph):
        super().__init__()
        self.stride, self.padding = node.stride, node.padding
        if node.weight is not None:
            self.register_buffer("weight", torch.as_tensor(node.weight, dtype=torch.float32).clone(),
                                 persistent=False)
            return
        self.weight = nn.Parameter(torch.empty(node.weight_shape(graph.read_shape(node.name))))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # PyTorch's nn.Conv2d default

    def over_time(self, inputs):
        spikes = inputs[0]
        batch, steps = spikes.shape[:2]
        out = F.conv2d(spikes.flatten(0, 1), self.weight, stride=self.stride, padding=self.padding)
        return out.unflatten(0, (batch, steps))

    def step(self, inputs, state):
        return F.conv2d(inputs[0], self.weight, stride=self.stride, padding=self.padding), None


class AveragePool(NodeModule):
    """Average of non-overlapping k x k windows of spike maps (paper section 3.2.2)."""

    def __init__(self, node: AvgPool2d, graph: Graph):
        super().__init__()
        self.kernel_size = node.kernel_size

    def over_time(self, inputs):
        spikes = inputs[0]
        batch, steps = spikes.shape[:2]
        return F.avg_pool2d(spikes.flatten(0, 1), self.kernel_size).unflatten(0, (batch, steps))

    def step(self, inputs, state):
        return F.avg_pool2d(inputs[0], self.kernel_size), None


class CurrentSum(NodeModule):
    """Adds its input currents, in edge order."""

    def over_time(self, inputs):
        return sum(inputs[1:], inputs[0])

    def step(self, inputs, state):
        return self.over_time(inputs), None


class LIFPopulation(NodeModule):
    """STBP LIF neurons (trainer.neuron) with a trainable bias: one per neuron, or one per
    channel for a (C, H, W) population. A non-spiking population (v_threshold inf, the
    potential readout) emits its potentials (batch, time, *shape) instead of spikes: only the
    Output reads it.

    threshold_gains: also hold `threshold_gain` (neurons,), each neuron's own threshold over
    the population's Vth, for training methods that adapt thresholds per neuron (trainer.mpbp).
    The weights and bias are kept divided by it (neuron i with threshold g_i Vth fires exactly
    as one with threshold Vth and inputs / g_i), so the forward pass, the graph and Lava
    (one threshold per population) never read it."""

    def __init__(self, node: LIF, graph: Graph, surrogate: Surrogate, temporal_gradient: bool,
                 threshold_gains: bool = False):
        super().__init__()
        self.params = LIFParameters(node.tau, node.v_threshold, node.tau_current)
        self.surrogate, self.temporal_gradient = surrogate, temporal_gradient
        self.spiking = node.spiking
        self.per_channel = len(node.shape) == 3
        self.bias = nn.Parameter(torch.empty(node.shape[0] if self.per_channel else node.neurons))
        inputs = fan_in(graph, node.name)
        if inputs == 0:  # the config fixes every synapse into it (a spiking pool): no bias, none trained
            nn.init.zeros_(self.bias)
            self.bias.requires_grad_(False)
        else:
            bound = 1 / math.sqrt(inputs)  # PyTorch's Linear/Conv2d bias default
            nn.init.uniform_(self.bias, -bound, bound)
        if threshold_gains:
            self.register_buffer("threshold_gain", torch.ones(node.neurons))

    def _bias(self) -> torch.Tensor:
        return self.bias.view(-1, 1, 1) if self.per_channel else self.bias

    def over_time(self, inputs):
        spikes, potentials = lif_sequence(inputs[0], self.params, self.surrogate, self._bias(), self.temporal_gradient)
        return spikes if self.spiking else potentials

    def step(self, inputs, state):
        current = inputs[0]
        state = LIFState.zeros_like(current) if state is None else state
        return lif_step(current, state, self.params, self.surrogate, self._bias(), self.temporal_gradient)

    def bias_per_neuron(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The bias as the population's (neurons,) vector, C order."""
        return self._bias().detach().expand(*shape).reshape(-1) if self.per_channel else self.bias.detach()


def _make_module(node: Node, graph: Graph, surrogate: Surrogate, temporal_gradient: bool,
                 threshold_gains: bool) -> NodeModule:
    if isinstance(node, (Input, Output)):
        return Passthrough()
    if isinstance(node, Dense):
        return DenseSynapse(node, graph)
    if isinstance(node, Conv2d):
        return ConvSynapse(node, graph)
    if isinstance(node, AvgPool2d):
        return AveragePool(node, graph)
    if isinstance(node, Sum):
        return CurrentSum()
    if isinstance(node, LIF):
        return LIFPopulation(node, graph, surrogate, temporal_gradient, threshold_gains)
    raise TypeError(f"node {node.name}: the trainer has no module for node type {node.kind}")


@dataclass
class ChainLayer:
    """One population of a dense feed-forward chain with the model's own tensors (not copies):
    the weight (out, in) of the synapse from the layer before, the bias, the threshold gains
    (None without them) and the weight of a recurrent synapse into it (None without one; the
    training methods that read chains allow only a lateral inhibition there)."""

    population: LIF
    weight: torch.Tensor
    bias: torch.Tensor
    gain: torch.Tensor | None
    recurrent: torch.Tensor | None


@dataclass
class NetworkOutput:
    """Spike trains of every LIF population, each (batch, time, neurons) with maps
    flattened in C order, in the graph's order; `output` names the output population and
    `readout` the decision rule (netgraph.decision). With a potential readout,
    `output_potential` (batch, time, neurons) holds the non-spiking output's potentials (its
    spikes are all 0)."""

    population_spikes: dict[str, torch.Tensor]
    output: str
    readout: str = "spikes"
    output_potential: torch.Tensor | None = None

    @property
    def output_spikes(self) -> torch.Tensor:
        return self.population_spikes[self.output]

    @property
    def output_rates(self) -> torch.Tensor:
        """Mean output spike rate over time (batch, classes), the paper's decoded output."""
        return self.output_spikes.mean(dim=1)

    @property
    def decoded(self) -> torch.Tensor:
        """What the loss compares with the label (batch, classes): the output spike rates, or
        the output potential at the last step over the number of steps (Lee et al. 2019's
        V(T) / T)."""
        if self.readout == "potential":
            return final_potential(self.output_potential) / self.output_potential.shape[1]
        return self.output_rates

    @property
    def predictions(self) -> torch.Tensor:
        return predict(self.readout, self.output_spikes, self.output_potential)


class SpikingNetwork(nn.Module):
    """The network of a graph, trainable with STBP. Input spikes (batch, time, *input shape).

    surrogate: the spike derivative used in the backward pass; temporal_gradient False
    trains with SDBP (no gradient through time, recurrent edges included); init 'paper'
    draws weights with `paper_init_` from `seed` and zeroes the biases; threshold_gains gives
    every population per-neuron threshold gains (LIFPopulation).
    """

    def __init__(self, graph: Graph, surrogate: Surrogate, temporal_gradient: bool = True,
                 init: str = "pytorch", seed: int | None = None, threshold_gains: bool = False):
        super().__init__()
        self.graph = graph
        self.temporal_gradient = temporal_gradient
        self.input_shape = tuple(graph.input.shape)
        self.plan = graph.plan()
        # Module (and parameter) order is the graph's order: synapse weights then the
        # population's bias, layer by layer, so the random initialisation is stable.
        self.nodes = nn.ModuleDict({name: _make_module(graph.node(name), graph, surrogate, temporal_gradient,
                                                       threshold_gains) for name in graph.order})
        if init == "paper":
            generator = torch.Generator().manual_seed(seed or 0)
            for module in self.nodes.values():
                if isinstance(module, (DenseSynapse, ConvSynapse)) and isinstance(module.weight, nn.Parameter):
                    paper_init_(module.weight, generator)
                elif isinstance(module, LIFPopulation):
                    nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, model: ModelConfig, input_shape: tuple[int, ...], seed: int | None = None,
                    source: str = "config", threshold_gains: bool = False) -> "SpikingNetwork":
        """The configured network for inputs of `input_shape` (one sample at one step);
        `source` (the config's file) prefixes the errors of a network that does not fit."""
        return cls(build_graph(model, input_shape, source), Surrogate(model.surrogate, model.surrogate_width),
                   model.temporal_gradient, model.init, seed, threshold_gains)

    @property
    def num_outputs(self) -> int:
        return self.graph.output_population.neurons

    def forward(self, input_spikes: torch.Tensor) -> NetworkOutput:
        if tuple(input_spikes.shape[2:]) != self.input_shape:
            raise DataError(
                f"input spikes have shape {tuple(input_spikes.shape)}; expected "
                f"(batch, time, {', '.join(map(str, self.input_shape))})"
            )
        values: dict[str, torch.Tensor] = {self.graph.input.name: input_spikes}
        for stage in self.plan:
            if stage.recurrent:
                self._run_cycle(stage.nodes, values, input_spikes.shape[1])
            elif stage.nodes[0] not in values:
                name = stage.nodes[0]
                inputs = [self._delayed(values[e.source]) if e.recurrent else values[e.source]
                          for e in self.graph.inputs_of(name)]
                values[name] = self.nodes[name].over_time(inputs)
        return self._output(values)

    def _output(self, values: dict[str, torch.Tensor]) -> NetworkOutput:
        """The recordings of a forward pass: every population's spikes (a non-spiking one's are
        0; its module emitted potentials), and the output's potentials for a potential readout."""
        populations, potential = {}, None
        for lif in self.graph.populations:
            flat = values[lif.name].flatten(2)
            if lif.spiking:
                populations[lif.name] = flat
            else:
                populations[lif.name], potential = torch.zeros_like(flat), flat
        return NetworkOutput(populations, self.graph.output_population.name, self.graph.output.readout, potential)

    def _delayed(self, spikes: torch.Tensor) -> torch.Tensor:
        """A recurrent edge outside a cycle: the source's spikes one step later, zeros first."""
        shifted = torch.cat([torch.zeros_like(spikes[:, :1]), spikes[:, :-1]], dim=1)
        return shifted if self.temporal_gradient else shifted.detach()

    def _run_cycle(self, members: tuple[str, ...], values: dict[str, torch.Tensor], steps: int) -> None:
        """Steps the nodes of one cycle through time together (see the module docstring)."""
        inside = set(members)
        states: dict[str, object] = {name: None for name in members}
        previous: dict[str, torch.Tensor] = {}
        # Currents never leave a cycle (each feeds one node, inside it); spikes may.
        kept = [name for name in members if self.graph.node(name).emits != CURRENT]
        history: dict[str, list[torch.Tensor]] = {name: [] for name in kept}
        for t in range(steps):
            now: dict[str, torch.Tensor] = {}
            for name in members:
                inputs = [self._edge_value(edge, t, values, now, previous, inside) for edge in self.graph.inputs_of(name)]
                now[name], states[name] = self.nodes[name].step(inputs, states[name])
            for name in kept:
                history[name].append(now[name])
            previous = now
        for name in kept:
            values[name] = torch.stack(history[name], dim=1)

    def _edge_value(self, edge: Edge, t: int, values, now, previous, inside) -> torch.Tensor:
        if not edge.recurrent:
            return now[edge.source] if edge.source in inside else values[edge.source][:, t]
        if t == 0:
            reference = values[self.graph.input.name]
            return reference.new_zeros((reference.shape[0], *self.graph.shape_of(edge.source)))
        spikes = previous[edge.source] if edge.source in inside else values[edge.source][:, t - 1]
        return spikes if self.temporal_gradient else spikes.detach()

    def dense_chain(self) -> list[ChainLayer]:
        """The populations in graph order, each with the tensors of its synapses and neurons
        (for the methods that train dense chains: trainer.hm2bp, trainer.mpbp)."""
        layers = []
        for population in self.graph.populations:
            synapses = self.graph.synapses_into(population.name)
            forward = next(s for s, e in synapses if not e.recurrent)
            recurrent = next((s for s, e in synapses if e.recurrent), None)
            module = self.nodes[population.name]
            layers.append(ChainLayer(population, self.nodes[forward.name].weight, module.bias,
                                     getattr(module, "threshold_gain", None),
                                     None if recurrent is None else self.nodes[recurrent.name].weight))
        return layers

    def float_graph(self) -> Graph:
        """The graph with this network's trained parameters (float64 numpy): synapse weights
        and per-neuron biases, ready for the exporter."""
        replaced = []
        for name, module in self.nodes.items():
            node = self.graph.node(name)
            if isinstance(module, (DenseSynapse, ConvSynapse)):
                replaced.append(dataclasses.replace(node, weight=module.weight.detach().cpu().double().numpy()))
            elif isinstance(module, LIFPopulation):
                bias = module.bias_per_neuron(node.shape).cpu().double().numpy()
                replaced.append(dataclasses.replace(node, bias=np.ascontiguousarray(bias)))
        return self.graph.replace(nodes=replaced)

