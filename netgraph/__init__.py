"""The typed network graph every stage shares (trainer, exporter, artifact, emulator, Lava
backend, fidelity harness), and what every stage records about its origin.

Torch-free and Lava-free: numpy only.
"""
from netgraph.decision import READOUTS, final_potential, predict, predict_classes, predict_from_potential
from netgraph.graph import Edge, Graph, Stage
from netgraph.nodes import (CURRENT, LIF, POOLED, SIGN_MODES, SPIKES, AvgPool2d, Conv2d, Dense, GraphError, Input, Node,
                            Output, QuantizedLIF, QuantizedSynapse, Sum, Synapse, unique_name)

__all__ = [
    "AvgPool2d", "CURRENT", "Conv2d", "Dense", "Edge", "Graph", "GraphError", "Input", "LIF", "Node", "Output",
    "POOLED", "QuantizedLIF", "QuantizedSynapse", "READOUTS", "SIGN_MODES", "SPIKES", "Stage", "Sum", "Synapse",
    "final_potential", "predict", "predict_classes", "predict_from_potential", "unique_name",
]
