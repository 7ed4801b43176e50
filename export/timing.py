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
emit is the least solution of those inequalities over every synapse, recurrent ones
included, so a population also waits for a recurrent input from a population that runs
later, as long as no loop runs slower on Lava than trained. A loop of populations with a
forward synapse in it (feedback from a deeper population) takes more Lava steps than trained
steps: such a graph trains, but cannot be deployed with its trained timing, and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

from netgraph import LIF, AvgPool2d, Graph
from netgraph.errors import HardwareConfigError


class TimingError(HardwareConfigError):
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


def _links(graph: Graph) -> list[tuple[str, str, int, object, object]]:
    """(source, population, trained lag, synapse, edge) for every synapse: the population at
    step t reads the source's spikes of step t - lag."""
    return [(_spike_source(graph, edge.source), population.name, int(edge.recurrent), synapse, edge)
            for population in graph.nodes_of_type(LIF) for synapse, edge in graph.synapses_into(population.name)]


def _loop_through(links, start: str, parent: dict[str, tuple]) -> list[tuple]:
    """The links of a loop found by following `parent` back from `start` (Bellman-Ford)."""
    node = start
    for _ in range(len(parent) + 1):  # walk far enough back to stand on the loop
        node = parent[node][0]
    loop, current = [], node
    while True:
        link = parent[current]
        loop.append(link)
        current = link[0]
        if current == node:
            return loop[::-1]


def _slow_loop_error(loop: list[tuple]) -> TimingError:
    recurrent = next(link for link in loop if link[2])
    names = " -> ".join([loop[0][0]] + [link[1] for link in loop])
    trained = sum(link[2] for link in loop)
    return TimingError(
        f"recurrent edge {recurrent[4].source} -> {recurrent[3].name}: the loop {names} takes {len(loop)} steps on "
        f"Lava (every synapse adds one) but {trained} in the trained network (only its recurrent edges delay), so "
        "Lava cannot keep the trained timing; feedback from a deeper layer cannot be deployed yet")


def deployment_timing(graph: Graph, max_delay: int) -> DeploymentTiming:
    """The pipeline timing of `graph` on Lava; raises TimingError naming the edge that
    cannot keep its trained timing or needs more than `max_delay` steps of delay.

    emit is the least solution of emit[P] >= emit[src] + 1 - lag over every synapse,
    recurrent ones included (a longest-path problem, solved by Bellman-Ford). It exists
    unless a loop of populations takes more Lava steps (one per synapse) than trained
    steps (one per recurrent edge), i.e. real feedback from a deeper population."""
    links = _links(graph)
    emit: dict[str, int] = {graph.input.name: 1}
    parent: dict[str, tuple] = {}
    for round_ in range(len(links) + 1):
        changed = None
        for link in links:
            source, population, lag = link[:3]
            if source in emit and emit[source] + 1 - lag > emit.get(population, -(1 << 62)):
                emit[population], parent[population], changed = emit[source] + 1 - lag, link, population
        if changed is None:
            break
        if round_ == len(links):
            raise _slow_loop_error(_loop_through(links, changed, parent))
    missing = [p.name for p in graph.nodes_of_type(LIF) if p.name not in emit]
    if missing:
        raise TimingError(f"population(s) {', '.join(missing)} cannot be placed in the Lava pipeline")
    delay: dict[str, int] = {}
    for source, population, lag, synapse, edge in links:
        steps = emit[population] - emit[source] + lag - 1
        if steps > max_delay:
            raise TimingError(f"edge {edge.source} -> {synapse.name}: aligning this path with the longest one "
                              f"into {population} needs a delay of {steps} steps, more than the hardware's "
                              f"{max_delay}")
        delay[synapse.name] = steps
    return DeploymentTiming(emit, delay)
