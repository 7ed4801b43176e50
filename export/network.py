"""The deployable network: the graph with its Loihi integer parameters, and what a backend
needs to feed it (hardware, encoding, time steps, evaluation seed) and to trace it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from export.hw_config import HardwareConfig
from netgraph import LIF, Graph


@dataclass(frozen=True, eq=False)
class ExportedNetwork:
    """graph: every synapse and population carries `quantized` parameters and the trained
    float ones; average pools are already folded into the synapses that read them.
    encoding, time_steps, eval_seed: how test samples become input spikes (T steps each).
    metadata: provenance (source checkpoint, versions, seeds) and the quantization report.
    """

    graph: Graph
    encoding: str
    time_steps: int
    eval_seed: int
    hardware: HardwareConfig
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.graph.input.shape)

    @property
    def populations(self) -> list[LIF]:
        return self.graph.populations

    @property
    def num_outputs(self) -> int:
        return self.graph.output_population.neurons

    def potential_in_trained_units(self, potential):
        """The output population's integer potential (Loihi units: weight units << activation
        shift) in the trained network's potential units: divided by scale * 2^activation_shift."""
        q = self.graph.output_population.quantized
        return np.asarray(potential, np.float64) / (q.scale * (1 << self.hardware.activation_shift))
