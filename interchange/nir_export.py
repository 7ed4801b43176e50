"""The float network graph as a NIR graph (nir 1.0.8), for snnTorch, norse, sinabs, Rockpool and
the chips that read NIR.

Node by node: Dense -> Affine (after a Flatten when its source is a (C, H, W) map), Conv2d ->
Conv2d, AvgPool2d -> AvgPool2d (kernel = stride, no padding), Sum -> nothing (NIR adds every
edge into a node), LIF -> LIF / CubaLIF / IF (interchange.nir_neurons), Input and Output.
A recurrent edge becomes the NIR edge that closes a cycle. Node names are the graph's.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nir
import numpy as np

from interchange.nir_neurons import DEFAULT_DT, nir_neuron, synaptic_scale
from netgraph import LIF, AvgPool2d, Conv2d, Dense, Graph, GraphError, Input, Node, Output, Sum, unique_name
from netgraph.provenance import atomic_write, package_versions

PRODUCER = "stbp-loihi"


def _bias_carriers(graph: Graph) -> dict[str, str | None]:
    """Population -> the synapse whose NIR bias carries the population's bias, or None when
    it goes into v_leak instead: current-based neurons (an Affine bias would be filtered by
    the current) and conv populations whose bias is not one value per channel."""
    carriers: dict[str, str | None] = {}
    for population in graph.populations:
        feeds = [s for s, edge in graph.synapses_into(population.name) if not edge.recurrent]
        carrier = feeds[0] if feeds and population.tau_current == 0 else None
        if carrier is not None and isinstance(carrier, Conv2d) and population.bias is not None:
            per_channel = np.asarray(population.bias).reshape(population.shape[0], -1)
            if not np.all(per_channel == per_channel[:, :1]):
                carrier = None
        carriers[population.name] = None if carrier is None else carrier.name
    return carriers


@dataclass(frozen=True)
class _Conversion:
    graph: Graph
    carriers: dict[str, str | None]  # population -> the synapse carrying its bias (None: v_leak)
    dt: float
    r_convention: str

    def scale(self, synapse: Node) -> float:
        return synaptic_scale(self.graph.population_of(synapse.name), self.r_convention)


def _synapse_bias(c: _Conversion, synapse: Node) -> np.ndarray:
    """The NIR bias of a synapse: its population's bias if it carries it, else zeros."""
    population = c.graph.population_of(synapse.name)
    rows = synapse.out_channels if isinstance(synapse, Conv2d) else synapse.out_features
    if c.carriers[population.name] != synapse.name or population.bias is None:
        return np.zeros(rows)
    bias = np.asarray(population.bias, np.float64) * c.scale(synapse)
    return bias.reshape(rows, -1)[:, 0] if isinstance(synapse, Conv2d) else bias


def _dense(c: _Conversion, node: Dense) -> nir.NIRNode:
    return nir.Affine(weight=np.asarray(node.weight, np.float64) * c.scale(node), bias=_synapse_bias(c, node))


def _conv(c: _Conversion, node: Conv2d) -> nir.NIRNode:
    _, height, width = c.graph.read_shape(node.name)
    stride, padding = int(node.stride), int(node.padding)
    return nir.Conv2d(input_shape=(height, width), weight=np.asarray(node.weight, np.float64) * c.scale(node),
                      stride=(stride, stride), padding=(padding, padding), dilation=(1, 1), groups=1,
                      bias=_synapse_bias(c, node))


def _pool(c: _Conversion, node: AvgPool2d) -> nir.NIRNode:
    k = int(node.kernel_size)
    return nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]), padding=np.array([0, 0]))


def _population(c: _Conversion, node: LIF) -> nir.NIRNode:
    return nir_neuron(node, c.dt, bias_as_leak=c.carriers[node.name] is None, r_convention=c.r_convention)


_CONVERTERS: dict[type, Callable] = {
    Input: lambda c, node: nir.Input(input_type=np.array(node.shape)),
    Dense: _dense, Conv2d: _conv, AvgPool2d: _pool, LIF: _population,
    Output: lambda c, node: nir.Output(output_type=np.array(c.graph.shape_of(node.name))),
}


def graph_to_nir(graph: Graph, dt: float = DEFAULT_DT, metadata: dict | None = None,
                 r_convention: str = "tau") -> nir.NIRGraph:
    """The NIR graph of a float network graph at time step `dt` seconds.

    metadata: extra string/number entries for the NIR graph's metadata (provenance).
    r_convention: 'tau' (r = tau_mem / dt, weights as trained) or 'unit' (r = 1 on LIF nodes,
        for readers that ignore r, such as norse); see interchange.nir_neurons.synaptic_scale.
    Raises GraphError (naming the node) for what NIR cannot express.
    """
    if not (isinstance(dt, float) and np.isfinite(dt) and dt > 0):
        raise GraphError(f"dt must be a positive number of seconds, got {dt!r}")
    conversion = _Conversion(graph, _bias_carriers(graph), dt, r_convention)
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    for name in graph.order:
        node = graph.node(name)
        if isinstance(node, Sum):
            continue  # NIR sums every edge into a node: the synapses feed the population directly
        if isinstance(node, LIF) and not np.all(np.isfinite(node.bias if node.bias is not None else 0.0)):
            raise GraphError(f"node {name}: bias is not finite")
        nodes[name] = _CONVERTERS[type(node)](conversion, node)
        for edge in graph.inputs_of(name):
            source = edge.source
            if isinstance(graph.node(source), Sum):
                edges += [(inner.source, name) for inner in graph.inputs_of(source)]
                continue
            if isinstance(node, Dense) and len(graph.shape_of(source)) > 1:
                flatten = unique_name(f"{name}_flatten", set(nodes) | {n.name for n in graph.nodes})
                nodes[flatten] = nir.Flatten(input_type={"input": np.array(graph.shape_of(source))}, start_dim=0)
                edges.append((source, flatten))
                source = flatten
            edges.append((source, name))
    delayed = sorted(e.target for e in graph.edges if e.recurrent)  # NIR cannot say which edge of a cycle waits
    info = {"producer": PRODUCER, "dt": float(dt), "threshold_rule": "v >= v_threshold", "r_convention": r_convention,
            "recurrent_synapses": json.dumps(delayed),
            "versions": json.dumps(package_versions(), sort_keys=True)}
    info.update(metadata or {})
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=info, type_check=True)


def write_nir(graph: Graph, path: str | Path, dt: float = DEFAULT_DT, metadata: dict | None = None,
              r_convention: str = "tau") -> nir.NIRGraph:
    """Writes the graph as a NIR HDF5 file, atomically; returns the NIR graph written."""
    converted = graph_to_nir(graph, dt, metadata, r_convention)
    buffer = io.BytesIO()
    nir.write(buffer, converted)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())
    return converted
