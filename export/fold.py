"""Average pools folded into the synapses that read them (exact: pooling is linear, see
export.conv), so a deployed graph holds only spiking populations and their synapses."""
from __future__ import annotations

import dataclasses

from export.conv import fold_avgpool_into_conv, fold_avgpool_into_dense
from netgraph import AvgPool2d, Conv2d, Dense, Edge, Graph, GraphError


def _folded_synapse(synapse, pool: AvgPool2d, pooled_shape: tuple[int, ...]):
    if synapse.weight is None:
        raise GraphError(f"node {synapse.name}: has no trained weight to fold {pool.name} into")
    p = pool.kernel_size
    if isinstance(synapse, Conv2d):
        weight, stride, padding = fold_avgpool_into_conv(synapse.weight, synapse.stride, synapse.padding, p)
        return dataclasses.replace(synapse, weight=weight, kernel_size=tuple(weight.shape[2:]), stride=stride,
                                   padding=padding)
    if isinstance(synapse, Dense):
        return dataclasses.replace(synapse, weight=fold_avgpool_into_dense(synapse.weight, pooled_shape, p))
    raise GraphError(f"edge {pool.name} -> {synapse.name}: only a synapse can read an average pool")


def fold_average_pools(graph: Graph) -> Graph:
    """The same network without AvgPool2d nodes: each synapse reading a pool reads the
    pool's input instead, with its weights (and conv stride/padding) folded."""
    pools = {node.name: node for node in graph.nodes if isinstance(node, AvgPool2d)}
    if not pools:
        return graph
    replaced = {}
    edges = []
    for edge in graph.edges:
        if edge.target in pools:
            continue
        if edge.source in pools:
            pool = pools[edge.source]
            synapse = replaced.get(edge.target, graph.node(edge.target))
            replaced[edge.target] = _folded_synapse(synapse, pool, graph.shape_of(pool.name))
            edge = Edge(graph.inputs_of(pool.name)[0].source, edge.target, edge.recurrent)
        edges.append(edge)
    nodes = [replaced.get(node.name, node) for node in graph.nodes if node.name not in pools]
    return Graph(tuple(nodes), tuple(edges))
