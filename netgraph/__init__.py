"""The typed network graph every stage shares (trainer, exporter, artifact, emulator, Lava
backend, fidelity harness), and what every stage records about its origin.

Torch-free and Lava-free: numpy only.
"""
from netgraph.decision import predict_classes
from netgraph.graph import Edge, Graph, Stage
from netgraph.nodes import (CURRENT, LIF, NODE_TYPES, POOLED, SIGN_MODES, SPIKES, SYNAPSE_TYPES, AvgPool2d, Conv2d,
                            Dense, GraphError, Input, Node, Output, QuantizedLIF, QuantizedSynapse, Sum)

__all__ = [
    "AvgPool2d", "CURRENT", "Conv2d", "Dense", "Edge", "Graph", "GraphError", "Input", "LIF", "NODE_TYPES", "Node",
    "Output", "POOLED", "QuantizedLIF", "QuantizedSynapse", "SIGN_MODES", "SPIKES", "SYNAPSE_TYPES", "Stage", "Sum",
    "predict_classes",
]
