"""When each population runs in a Lava (or Loihi) pipeline, and the synaptic delays that
make the deployed timing equal the trained one.

The trained network (netgraph.graph) has no delay on a forward edge and one step on a
recurrent edge. On Lava, every Dense delivers at step t what it received at step t-1, so a
population two Dense stages deep runs one step behind one a single stage deep. Where two
paths of different depth meet (a skip connection into a Sum), the shorter path must be
slowed down. This module chooses Lava's own DelayDense for that: a synapse with `delay` d
delivers d steps later than a Dense (Loihi 2 synapses hold a 6-bit delay), so no relay
neurons are added and the network's population count and spikes are those trained.

With the input played from Lava step 1 (sample step j at Lava step j + 1):
    emit[input] = 1
    emit[P] = max over P's synapses s (reading source src, lag l = 1 if recurrent else 0)
              of emit[src] + 1 - l                     P's step j runs at Lava step j + emit[P]
    delay[s] = emit[P] - emit[src] + l - 1            (>= 0, <= the hardware's maximum)
A recurrent edge from a population that runs later than its target would need a negative
delay: such a graph trains, but cannot be deployed with its trained timing, and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

from netgraph import LIF, AvgPool2d, Graph


class TimingError(ValueError):
    """The graph cannot run on Lava with its trained timing; the message names the edge."""


@dataclass(frozen=True)
class DeploymentTiming:
    """emit: Lava step (for sample step 0 of the first sample) of every spiking node;
    delay: extra steps each synapse waits beyond the Dense's one."""

    emit: dict[str, int]
    delay: dict[str, int]

    @property
    def last_emit(self) -> int:
        return max(self.emit.values())


def _spike_source(graph: Graph, name: str) -> str:
    """The spiking node a synapse's input comes from (an unfolded pool adds no Lava step)."""
    while isinstance(graph.node(name), AvgPool2d):
        name = graph.inputs_of(name)[0].source
    return name


def deployment_timing(graph: Graph, max_delay: int) -> DeploymentTiming:
    """The pipeline timing of `graph` on Lava; raises TimingError naming the edge that
    cannot keep its trained timing or needs more than `max_delay` steps of delay."""
    emit: dict[str, int] = {graph.input.name: 1}
    for population in graph.nodes_of_type(LIF):
        arrivals = [emit[source] + 1 - edge.recurrent
                    for _, edge in graph.synapses_into(population.name)
                    if (source := _spike_source(graph, edge.source)) in emit]
        if not arrivals:
            raise TimingError(f"population {population.name} reads only recurrent inputs from populations that run "
                              "after it; its place in the Lava pipeline is undefined")
        emit[population.name] = max(arrivals)
    delay: dict[str, int] = {}
    for population in graph.nodes_of_type(LIF):
        for synapse, edge in graph.synapses_into(population.name):
            source = _spike_source(graph, edge.source)
            steps = emit[population.name] - emit[source] + edge.recurrent - 1
            if steps < 0:
                raise TimingError(
                    f"recurrent edge {edge.source} -> {synapse.name}: on Lava every Dense adds a step, so "
                    f"{edge.source}'s spikes reach {population.name} {1 - steps} steps later, but the trained network "
                    f"reads them 1 step later; a recurrent edge must come from {population.name} itself or a "
                    "population that runs no later")
            if steps > max_delay:
                raise TimingError(f"edge {edge.source} -> {synapse.name}: aligning this path with the longest one "
                                  f"into {population.name} needs a delay of {steps} steps, more than the hardware's "
                                  f"{max_delay}")
            delay[synapse.name] = steps
    return DeploymentTiming(emit, delay)
