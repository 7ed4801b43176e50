"""The network graph: typed nodes (netgraph.nodes) joined by directed edges, validated
when built.

Timing, the one definition every stage follows: the graph is evaluated once per time step,
and an edge delivers its source's output of the same step, except a recurrent edge, which
delivers the source population's spikes of the previous step (zeros at step 0). Every
sample starts from zero state. (Lava delays every Dense by one step; the Lava backend
re-times its run to this, see export.timing.)

Checks, each failing with GraphError naming the node or both ends of the edge:
- names are unique; edges join existing nodes, at most once per pair;
- exactly one Input and one Output; each node has as many inputs as its type takes, of a
  signal kind it accepts (a synapse reads spikes, a population reads one current, ...);
- a current (Dense, Conv2d, Sum) feeds exactly one node, and the Output reads a LIF; a
  non-spiking LIF (v_threshold inf) is read only by an Output with readout 'potential',
  and such an Output reads only a non-spiking LIF;
- cycles only through recurrent edges, which run from a LIF to a synapse;
- every node lies on a path from the input to the output;
- shapes agree across every edge (parameters included).
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from netgraph.nodes import CURRENT, LIF, GraphError, Input, Node, Output, Synapse


@dataclass(frozen=True)
class Edge:
    """source -> target. recurrent: the target reads the source's spikes of the previous
    time step (one step of delay), so the edge may close a cycle."""

    source: str
    target: str
    recurrent: bool = False

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}" + (" (recurrent)" if self.recurrent else "")


@dataclass(frozen=True)
class Stage:
    """A step of the execution plan. `nodes` in dependency order; `recurrent` stages hold a
    cycle through recurrent edges and are evaluated time step by time step, the others can
    be evaluated for all time steps at once."""

    nodes: tuple[str, ...]
    recurrent: bool


@dataclass(frozen=True, eq=False)
class Graph:
    """Nodes (in a stable order) and edges; validated on construction, immutable."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    _by_name: dict = field(init=False, repr=False)
    _inputs: dict = field(init=False, repr=False)
    _consumers: dict = field(init=False, repr=False)
    _order: tuple = field(init=False, repr=False)
    _shapes: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "edges", tuple(self.edges))
        by_name: dict[str, Node] = {}
        for node in self.nodes:
            if not isinstance(node, Node):
                raise GraphError(f"graph nodes must be netgraph nodes, got {type(node).__name__}")
            if node.name in by_name:
                raise GraphError(f"two nodes are named {node.name!r}")
            by_name[node.name] = node
        object.__setattr__(self, "_by_name", by_name)
        self._index_edges()
        self._check_kinds()
        object.__setattr__(self, "_order", self._topological_order())
        self._check_on_a_path()
        object.__setattr__(self, "_shapes", self._infer_shapes())

    # ------------------------------------------------------------------ lookups

    def node(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise GraphError(f"no node named {name!r}") from None

    def inputs_of(self, name: str) -> tuple[Edge, ...]:
        """Edges into `name`, in the order they were given (the order a Sum adds them)."""
        return self._inputs[name]

    def consumers_of(self, name: str) -> tuple[Edge, ...]:
        return self._consumers[name]

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The shape of what `name` emits (for an Output: of the population it reads)."""
        return self._shapes[name]

    def read_shape(self, name: str) -> tuple[int, ...]:
        """The shape of what a one-input node (a synapse, a pool, a population) reads, through
        a forward or a recurrent edge alike."""
        return self._shapes[self._inputs[name][0].source]

    @property
    def order(self) -> tuple[str, ...]:
        """Node names in a topological order of the non-recurrent edges (stable: ties keep
        the order of `nodes`)."""
        return self._order

    def nodes_of_type(self, *types: type[Node]) -> list[Node]:
        return [self._by_name[n] for n in self._order if isinstance(self._by_name[n], types)]

    @property
    def input(self) -> Input:
        return self.nodes_of_type(Input)[0]

    @property
    def output(self) -> Output:
        return self.nodes_of_type(Output)[0]

    @property
    def populations(self) -> list[LIF]:
        """The LIF populations in topological order: what every backend records."""
        return self.nodes_of_type(LIF)

    @property
    def output_population(self) -> LIF:
        return self.node(self.inputs_of(self.output.name)[0].source)

    def population_of(self, current: str) -> LIF:
        """The LIF population a synapse or Sum ultimately feeds."""
        name = current
        while not isinstance(self.node(name), LIF):
            name = self.consumers_of(name)[0].target
        return self.node(name)

    def synapses_into(self, population: str) -> list[tuple[Node, Edge]]:
        """(synapse node, the edge it reads) for every synapse feeding `population`, directly
        or through Sum nodes, in the order the currents are added."""
        found = []
        pending = [edge.source for edge in self.inputs_of(population)]
        while pending:
            name = pending.pop(0)
            node = self.node(name)
            if isinstance(node, Synapse):
                found.append((node, self.inputs_of(name)[0]))
            else:
                pending = [edge.source for edge in self.inputs_of(name)] + pending
        return found

    def replace(self, nodes: Iterable[Node] | None = None, edges: Iterable[Edge] | None = None) -> "Graph":
        """A new, validated graph with nodes replaced by name (same order) and/or new edges."""
        replaced = {node.name: node for node in (nodes or ())}
        unknown = set(replaced) - set(self._by_name)
        if unknown:
            raise GraphError(f"cannot replace unknown node(s) {', '.join(sorted(unknown))}")
        return Graph(tuple(replaced.get(node.name, node) for node in self.nodes),
                     tuple(self.edges if edges is None else edges))

    # ------------------------------------------------------------------ execution plan

    def plan(self) -> tuple[Stage, ...]:
        """The order in which a simulator evaluates the graph: strongly connected components
        of all edges, in dependency order. A component with a cycle (through recurrent
        edges) must be stepped through time as a whole; every other node is its own stage."""
        components = _strongly_connected(self._order, self._successors(all_edges=True))
        position = {name: i for i, name in enumerate(self._order)}
        component_of = {name: k for k, members in enumerate(components) for name in members}
        waiting = [0] * len(components)
        after: list[set[int]] = [set() for _ in components]
        for edge in self.edges:
            a, b = component_of[edge.source], component_of[edge.target]
            if a != b and b not in after[a]:
                after[a].add(b)
                waiting[b] += 1
        # Kahn over the condensation; ties go to the component whose first member comes first.
        first = [min(position[n] for n in members) for members in components]
        ready = [(first[k], k) for k in range(len(components)) if waiting[k] == 0]
        heapq.heapify(ready)
        stages = []
        while ready:
            _, k = heapq.heappop(ready)
            members = tuple(sorted(components[k], key=position.__getitem__))
            stages.append(Stage(members, recurrent=len(members) > 1))
            for j in after[k]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, (first[j], j))
        return tuple(stages)

    # ------------------------------------------------------------------ validation

    def _index_edges(self) -> None:
        inputs: dict[str, list[Edge]] = {name: [] for name in self._by_name}
        consumers: dict[str, list[Edge]] = {name: [] for name in self._by_name}
        seen = set()
        for edge in self.edges:
            if not isinstance(edge, Edge):
                raise GraphError(f"graph edges must be netgraph.Edge, got {type(edge).__name__}")
            for end in (edge.source, edge.target):
                if end not in self._by_name:
                    raise GraphError(f"edge {edge}: no node named {end!r}")
            if (edge.source, edge.target) in seen:
                raise GraphError(f"edge {edge.source} -> {edge.target} is given twice")
            seen.add((edge.source, edge.target))
            inputs[edge.target].append(edge)
            consumers[edge.source].append(edge)
        object.__setattr__(self, "_inputs", {k: tuple(v) for k, v in inputs.items()})
        object.__setattr__(self, "_consumers", {k: tuple(v) for k, v in consumers.items()})

    def _check_kinds(self) -> None:
        for cls in (Input, Output):
            found = [n.name for n in self.nodes if isinstance(n, cls)]
            if len(found) != 1:
                raise GraphError(f"a graph needs exactly one {cls.__name__} node, found {len(found)}"
                                 + (f" ({', '.join(found)})" if found else ""))
        for node in self.nodes:
            edges = self._inputs[node.name]
            low, high = node.min_inputs, node.max_inputs
            if len(edges) < low or (high is not None and len(edges) > high):
                wanted = (f"exactly {low}" if low == high else f"at least {low}" if high is None
                          else f"{low} to {high}")
                raise GraphError(f"node {node.name} ({node.kind}) takes {wanted} input(s), got {len(edges)}"
                                 + (f" ({', '.join(e.source for e in edges)})" if edges else ""))
            for edge in edges:
                source = self._by_name[edge.source]
                if source.emits not in node.accepts:
                    raise GraphError(f"edge {edge}: {node.name} ({node.kind}) reads "
                                     f"{' or '.join(node.accepts)}, {source.name} ({source.kind}) emits {source.emits}")
                if edge.recurrent and not (isinstance(source, LIF) and isinstance(node, Synapse)):
                    raise GraphError(f"edge {edge}: a recurrent edge must run from a LIF population to a synapse "
                                     "(Dense or Conv2d)")
            if isinstance(node, Output) and not isinstance(self._by_name[edges[0].source], LIF):
                raise GraphError(f"edge {edges[0]}: the output must read a LIF population")
            if isinstance(node, LIF) and not node.spiking:
                self._check_non_spiking(node)
        for node in self.nodes:  # after every edge's kinds, so a wrong edge is named as such
            if node.emits == CURRENT and len(self._consumers[node.name]) != 1:
                raise GraphError(f"node {node.name} ({node.kind}) emits a current, which must feed exactly one node; "
                                 f"it feeds {len(self._consumers[node.name])}")
            if isinstance(node, Output) and self._consumers[node.name]:
                raise GraphError(f"node {node.name} (Output) cannot feed other nodes")
            if isinstance(node, Output) and node.readout == "potential" and self._by_name[
                    self._inputs[node.name][0].source].spiking:
                raise GraphError(f"node {node.name}: a potential readout reads a non-spiking population (v_threshold "
                                 f"inf); {self._inputs[node.name][0].source} fires")

    def _check_non_spiking(self, population: LIF) -> None:
        """A non-spiking population (v_threshold inf) is read only by an Output with a potential readout."""
        readers = [self._by_name[e.target] for e in self._consumers[population.name]]
        if len(readers) != 1 or not isinstance(readers[0], Output) or readers[0].readout != "potential":
            raise GraphError(f"node {population.name}: a population that never fires (v_threshold inf) must be read "
                             "only by the Output, with readout 'potential'")

    def _successors(self, all_edges: bool) -> dict[str, list[str]]:
        return {name: [e.target for e in self._consumers[name] if all_edges or not e.recurrent]
                for name in self._by_name}

    def _topological_order(self) -> tuple[str, ...]:
        position = {node.name: i for i, node in enumerate(self.nodes)}
        remaining = {name: sum(1 for e in self._inputs[name] if not e.recurrent) for name in self._by_name}
        ready = [(position[n], n) for n, k in remaining.items() if k == 0]
        heapq.heapify(ready)
        order: list[str] = []
        successors = self._successors(all_edges=False)
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            for target in successors[name]:
                remaining[target] -= 1
                if remaining[target] == 0:
                    heapq.heappush(ready, (position[target], target))
        if len(order) != len(self.nodes):
            predecessors = {n: [e.source for e in self._inputs[n] if not e.recurrent] for n in self._by_name}
            cycle = _find_cycle([n for n in self._by_name if remaining[n] > 0], predecessors)
            raise GraphError(f"cycle {' -> '.join(cycle)} has no recurrent edge (only a recurrent edge, which "
                             "carries one step of delay, may close a cycle)")
        return tuple(order)

    def _check_on_a_path(self) -> None:
        start, end = self.input.name, self.output.name
        forward = _reachable(start, self._successors(all_edges=True))
        backward = _reachable(end, {n: [e.source for e in self._inputs[n]] for n in self._by_name})
        for node in self.nodes:
            if node.name not in forward or node.name not in backward:
                raise GraphError(f"node {node.name} ({node.kind}) is not on a path from the input {start!r} "
                                 f"to the output {end!r}")

    def _infer_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for name in self._order:
            node = self._by_name[name]
            inputs = []
            for edge in self._inputs[name]:
                # A recurrent edge's source comes later in the order; its shape is declared.
                source_shape = shapes[edge.source] if edge.source in shapes else self._by_name[edge.source].shape
                inputs.append((edge.source, tuple(source_shape)))
            shapes[name] = tuple(node.output_shape(inputs))
        return shapes


def _reachable(start: str, successors: dict[str, list[str]]) -> set[str]:
    seen, queue = {start}, deque([start])
    while queue:
        for nxt in successors[queue.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def _find_cycle(leftover: list[str], predecessors: dict[str, list[str]]) -> list[str]:
    """A cycle among the nodes Kahn's algorithm could not order, as a closed path. Each of
    them waits for a predecessor that is itself left over, so walking predecessors must
    come back to a node already seen."""
    inside = set(leftover)
    path, seen_at = [leftover[0]], {leftover[0]: 0}
    while True:
        previous = next(p for p in predecessors[path[-1]] if p in inside)
        if previous in seen_at:
            cycle = path[seen_at[previous]:] + [previous]
            return cycle[::-1]
        seen_at[previous] = len(path)
        path.append(previous)


def _strongly_connected(order: tuple[str, ...], successors: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep graphs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in order:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(successors[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components
