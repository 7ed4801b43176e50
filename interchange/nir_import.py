"""A NIR graph (nir 1.0.8) as the float network graph, so a model trained in snnTorch, norse or
any NIR producer is exported, emulated and run on Lava like one trained here.

Every node and field with an exact meaning in the graph is mapped; the rest is refused with
the node and field named (NIRImportError). Mapped exactly, with a note where it changes the
numbers the user sees: Affine/Linear -> Dense, Conv2d -> Conv2d, AvgPool2d -> AvgPool2d,
SumPool2d -> AvgPool2d with the next weights times kernel area, Flatten -> nothing (Dense
flattens in C order), LIF/CubaLIF/IF -> LIF by one Euler step of dt (interchange.nir_neurons):
the input gain goes into the weights, v_leak and Affine biases into the bias, and per-neuron
thresholds into the weights and bias (LIF with reset to 0 is unchanged when a neuron's
weights, bias and threshold are scaled alike), so the population holds one threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nir
import numpy as np

from interchange.nir_neurons import NIR_INTEGRATORS, NIR_NEURONS, DiscreteNeuron, discretize
from netgraph import LIF, AvgPool2d, Conv2d, Dense, Edge, Graph, GraphError, Input, Output, Sum, unique_name
from netgraph.errors import InterchangeError, one_line
from netgraph.geometry import ConvGeometry, pooled_shape
from netgraph.provenance import read_json

SYNAPSES = (nir.Affine, nir.Linear, nir.Conv2d)
NEURONS = NIR_NEURONS
POOLS = (nir.AvgPool2d, nir.SumPool2d)
SUPPORTED = (nir.Input, nir.Output, nir.Flatten) + SYNAPSES + NEURONS + POOLS


class NIRImportError(InterchangeError):
    """A NIR file or graph that cannot be imported exactly; the message names file, node and field."""


@dataclass(frozen=True)
class ImportedNetwork:
    """graph: the float network graph (node names from the NIR file, made valid);
    nir_names: population name -> NIR node key; dt: seconds per step; notes: what the mapping
    changed that a user should know (one line each)."""

    graph: Graph
    nir_names: dict[str, str]
    dt: float
    notes: tuple[str, ...]


def read_nir(path: str | Path) -> nir.NIRGraph:
    """nir.read with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise NIRImportError(f"{path}: no such file")
    try:
        # nir's own type inference rejects files other tools wrote with a batch dimension on
        # the input (norse: (1, 64) into an Affine of 64); the import checks every shape itself.
        graph = nir.read(str(path), type_check=False)
    except Exception as exc:  # h5py, nir's own asserts and KeyErrors: all mean 'not a NIR graph we can read'
        raise NIRImportError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(graph, nir.NIRGraph):
        raise NIRImportError(f"{path}: holds a single NIR {type(graph).__name__}, not a graph")
    return graph


def recorded_dt(graph: nir.NIRGraph) -> float | None:
    """The time step this toolchain recorded when it wrote the file (None for other producers)."""
    value = (graph.metadata or {}).get("dt") if isinstance(graph.metadata, dict) else None
    try:
        return float(value.decode() if isinstance(value, bytes) else value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _valid_names(graph: nir.NIRGraph) -> dict[str, str]:
    """NIR key -> graph name: valid and unique (netgraph.unique_name); the input and output
    nodes are called `input` and `output`, as in networks trained here."""
    names = {key: "input" if isinstance(node, nir.Input) else "output" for key, node in graph.nodes.items()
             if isinstance(node, (nir.Input, nir.Output))}
    for key in graph.nodes:
        if key not in names:
            names[key] = unique_name(key, set(names.values()))
    return names


class _Importer:
    """One import: the NIR graph's nodes and edges, checked and mapped node by node."""

    def __init__(self, graph: nir.NIRGraph, dt: float, source: str):
        self.nir, self.dt, self.source = graph, dt, source
        self.notes: list[str] = []
        self.names = _valid_names(graph)
        self.preds: dict[str, list[str]] = {k: [] for k in graph.nodes}
        self.succs: dict[str, list[str]] = {k: [] for k in graph.nodes}
        for edge in graph.edges:
            if len(edge) != 2 or any(end not in graph.nodes for end in edge):
                raise self.error(None, f"edge {edge!r} names a node the graph does not have")
            if isinstance(graph.nodes[edge[1]], nir.Input):
                raise self.error(edge[1], f"the input node cannot read {edge[0]!r}")
            self.preds[edge[1]].append(edge[0])
            self.succs[edge[0]].append(edge[1])
        self.taken = set(self.names.values())  # graph names in use, Sum nodes included

    def error(self, key: str | None, message: str) -> NIRImportError:
        where = f"node {key!r}: " if key is not None else ""
        return NIRImportError(f"{self.source}: {where}{message}")

    def kinds(self, kind) -> list[str]:
        return [k for k, node in self.nir.nodes.items() if isinstance(node, kind)]

    def check_types(self) -> None:
        for key, node in self.nir.nodes.items():
            if isinstance(node, nir.NIRGraph):
                raise self.error(key, "nested NIR graphs (subgraphs) are not supported; write the graph flat")
            if not isinstance(node, SUPPORTED):
                names = ", ".join(sorted(t.__name__ for t in SUPPORTED))
                later = (" (a non-spiking output, which export writes as LI or I, is not read back yet)"
                         if isinstance(node, NIR_INTEGRATORS) else "")
                raise self.error(key, f"NIR {type(node).__name__} has no exact Loihi LIF mapping here{later} "
                                      f"(supported: {names})")
        for kind, what in ((nir.Input, "input"), (nir.Output, "output")):
            found = self.kinds(kind)
            if len(found) != 1:
                raise self.error(None, f"needs exactly one {what} node, found {len(found)}")

    def spike_source(self, key: str, reader: str) -> str:
        """What `reader` reads, looking through Flatten nodes (a Dense flattens in C order)."""
        while isinstance(self.nir.nodes[key], nir.Flatten):
            if len(self.preds[key]) != 1:
                raise self.error(key, f"a Flatten needs exactly one input, has {len(self.preds[key])}")
            key = self.preds[key][0]
        if not isinstance(self.nir.nodes[key], (nir.Input,) + NEURONS + POOLS):
            raise self.error(reader, f"reads {key!r}, a NIR {type(self.nir.nodes[key]).__name__}; synapses and pools "
                                     "must read spikes (the input, a neuron node or a pool)")
        return key

    def single_pred(self, key: str) -> str:
        if len(self.preds[key]) != 1:
            raise self.error(key, f"needs exactly one input edge, has {len(self.preds[key])}")
        return self.spike_source(self.preds[key][0], key)

    def wiring(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """synapse/pool -> the spike source it reads; neuron -> the synapses feeding it."""
        reads = {key: self.single_pred(key) for key in self.kinds(SYNAPSES + POOLS)}
        feeds: dict[str, list[str]] = {key: [] for key in self.kinds(NEURONS)}
        for key in self.kinds(SYNAPSES):
            targets = self.succs[key]
            if len(targets) != 1 or not isinstance(self.nir.nodes[targets[0]], NEURONS):
                raise self.error(key, f"a synapse must feed exactly one neuron node, feeds {targets or 'nothing'}")
            feeds[targets[0]].append(key)
        for key, synapses in feeds.items():
            others = [p for p in self.preds[key] if p not in synapses]
            if others:
                raise self.error(key, f"reads {others[0]!r} directly; a neuron node must be fed through weights "
                                      "(Affine, Linear or Conv2d)")
            if not synapses:
                raise self.error(key, "no synapse feeds this neuron node")
        (output,) = self.kinds(nir.Output)
        if len(self.preds[output]) != 1 or not isinstance(self.nir.nodes[self.preds[output][0]], NEURONS):
            raise self.error(output, "the output must read exactly one neuron node (its spikes are the decision)")
        return reads, feeds

    def recurrent_synapses(self, reads: dict[str, str], feeds: dict[str, list[str]]) -> set[str]:
        """Synapses whose edge carries one step of delay. NIR has no delay field, so a cycle
        means one: a self-loop (neuron -> synapse -> same neuron) is delayed at its synapse; a
        file this toolchain wrote names its recurrent synapses in its metadata; any other cycle
        is broken where a depth-first search from the input closes it, with a note (the
        choice depends on the file's node order)."""
        recorded = (self.nir.metadata or {}).get("recurrent_synapses") if isinstance(self.nir.metadata, dict) else None
        if recorded is not None:
            try:
                names = read_json(recorded.decode() if isinstance(recorded, bytes) else str(recorded))
            except (ValueError, UnicodeDecodeError) as exc:
                raise self.error(None, f"metadata recurrent_synapses is not JSON ({one_line(exc)[:120]})") from None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise self.error(None, "metadata recurrent_synapses must be a JSON list of node names")
            unknown = [n for n in names if n not in reads or not isinstance(self.nir.nodes[n], SYNAPSES)]
            if unknown:
                raise self.error(None, f"metadata recurrent_synapses names {unknown}, which are not synapses")
            return set(names)
        loops = {syn for neuron, synapses in feeds.items() for syn in synapses if reads[syn] == neuron}
        closing = self.cycle_closers(reads, feeds, loops)
        for synapse in sorted(closing):
            self.notes.append(f"{synapse}: closes a cycle between populations; its edge carries the one-step delay "
                              "(NIR does not say which edge of a cycle is delayed)")
        return loops | closing

    def cycle_closers(self, reads: dict[str, str], feeds: dict[str, list[str]], loops: set[str]) -> set[str]:
        """Synapses on the back edges of a depth-first search from the input (self-loops
        excluded); raises for a cycle through a pool or a node the input does not reach."""
        successors: dict[str, list[str]] = {key: [] for key in self.nir.nodes}
        for node, source in reads.items():
            successors[source].append(node)
        for neuron, synapses in feeds.items():
            for synapse in synapses:
                if synapse not in loops:
                    successors[synapse].append(neuron)
        (start,) = self.kinds(nir.Input)
        closing, on_stack, done = set(), {start}, set()
        stack = [(start, iter(successors[start]))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_stack.discard(node)
                done.add(node)
            elif child in on_stack:  # node -> child closes a cycle; the synapse on it is delayed
                synapse = node if isinstance(self.nir.nodes[node], SYNAPSES) else child
                if not isinstance(self.nir.nodes[synapse], SYNAPSES):
                    raise self.error(child, "a cycle closes through a pool; only synapses can carry the delay")
                closing.add(synapse)
            elif child not in done:
                on_stack.add(child)
                stack.append((child, iter(successors[child])))
        unreached = [key for key in self.nir.nodes
                     if key not in done and key not in loops and not isinstance(self.nir.nodes[key],
                                                                                 (nir.Flatten, nir.Output))]
        if unreached:
            raise self.error(unreached[0], "is not reachable from the input")
        return closing

    def conv_fields(self, key: str, node: nir.Conv2d) -> tuple[int, int, int]:
        """(kernel, stride, padding) of a NIR Conv2d the graph's Conv2d can hold exactly."""
        weight = np.asarray(node.weight)
        if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
            raise self.error(key, f"weight must be (out, in, k, k) with a square kernel, got shape {weight.shape}")
        kernel = int(weight.shape[2])
        pairs: dict[str, int] = {}
        for field in ("stride", "dilation", "padding"):
            value = getattr(node, field)
            if isinstance(value, str):  # 'same' keeps the map's size only at stride 1 with an odd kernel
                if field != "padding" or value not in ("valid", "same") or (
                        value == "same" and (kernel % 2 == 0 or pairs["stride"] != 1)):
                    raise self.error(key, f"{field} {value!r} is not supported here (with kernel {kernel}, "
                                          f"stride {pairs.get('stride')})")
                value = 0 if value == "valid" else (kernel - 1) // 2
            flat = np.atleast_1d(np.asarray(value)).ravel()
            if flat.size not in (1, 2) or flat.min() != flat.max() or flat[0] != int(flat[0]):
                raise self.error(key, f"{field} must be one integer for height and width, got {value!r}")
            pairs[field] = int(flat[0])
        if pairs["dilation"] != 1 or int(np.asarray(node.groups).ravel()[0]) != 1:
            raise self.error(key, "dilation and groups must be 1 (Loihi conv synapses here are dense kernels)")
        return kernel, pairs["stride"], pairs["padding"]

    def pool_kernel(self, key: str, node) -> int:
        kernel, stride, padding = (np.atleast_1d(np.asarray(getattr(node, f))).ravel()
                                   for f in ("kernel_size", "stride", "padding"))
        if not (kernel.size and kernel.min() == kernel.max() and kernel[0] == int(kernel[0]) and kernel[0] >= 1
                and stride.size in (1, kernel.size) and np.all(stride == kernel[0]) and not np.any(padding)):
            raise self.error(key, f"pools must be square, with stride = kernel and no padding (got kernel "
                                  f"{kernel.tolist()}, stride {stride.tolist()}, padding {padding.tolist()})")
        return int(kernel[0])

    def shapes(self, order: list[str], reads: dict[str, str], feeds: dict[str, list[str]],
               recurrent: set[str]) -> dict[str, tuple]:
        """Each node's output shape (one sample, one step), from the input's shape down."""
        (start,) = self.kinds(nir.Input)
        in_type = np.asarray(self.nir.nodes[start].input_type["input"]).ravel()
        shapes = {start: tuple(int(d) for d in in_type)}
        for key in order:
            node = self.nir.nodes[key]
            if isinstance(node, NEURONS):
                forward = [s for s in feeds[key] if s not in recurrent]
                if not forward:
                    raise self.error(key, "is fed only by delayed (recurrent) synapses; nothing reaches it from the input")
                shapes[key] = shapes[forward[0]]
                size = np.asarray(node.v_threshold).size
                if size == 0 or size != math.prod(shapes[key]):
                    raise self.error(key, f"has {size} neurons but its synapses give {shapes[key]}")
            elif key in reads:
                shapes[key] = self.synapse_shape(key, node, shapes.get(reads[key]))
        return shapes

    def synapse_shape(self, key: str, node, source_shape: tuple | None) -> tuple:
        if source_shape is None:  # a recurrent synapse from a later population: checked by the graph
            return (int(np.asarray(node.weight).shape[0]),) if isinstance(node, (nir.Affine, nir.Linear)) else None
        try:
            if isinstance(node, POOLS):
                return pooled_shape(source_shape, self.pool_kernel(key, node))
            if isinstance(node, nir.Conv2d):
                kernel, stride, padding = self.conv_fields(key, node)
                geometry = ConvGeometry(tuple(source_shape), (kernel, kernel), stride, padding)
                if geometry.problem():
                    raise GraphError(geometry.problem())
                return geometry.out_shape(int(np.asarray(node.weight).shape[0]))
        except NIRImportError:
            raise
        except ValueError as exc:
            raise self.error(key, str(exc)) from exc
        weight = np.asarray(node.weight)
        if weight.ndim != 2 or weight.shape[1] != math.prod(source_shape):
            raise self.error(key, f"weight has shape {weight.shape}, but reads {math.prod(source_shape)} values")
        return (int(weight.shape[0]),)

    def order(self, reads: dict[str, str], feeds: dict[str, list[str]], recurrent: set[str]) -> list[str]:
        """Synapses, pools and neurons in an order where every non-recurrent input comes first."""
        needs = {key: {reads[key]} for key in reads}
        needs.update({key: {s for s in synapses if s not in recurrent} for key, synapses in feeds.items()})
        (start,) = self.kinds(nir.Input)
        done, order = {start}, []
        while len(order) < len(needs):
            ready = [key for key in needs if key not in done and needs[key] <= done]
            if not ready:
                raise self.error(None, "the graph has a cycle that no synapse closes")
            done.update(ready)
            order += ready
        return order

    def population(self, key: str, synapses: list[str], shape: tuple) -> tuple[LIF, np.ndarray]:
        """The LIF of a NIR neuron node, and the factor (neurons,) its incoming weights take."""
        node = self.nir.nodes[key]
        step = discretize(node, self.dt)
        tau, tau_current = self.uniform(key, "tau" if isinstance(node, nir.LIF) else "tau_mem", step.tau), \
            self.uniform(key, "tau_syn", step.tau_current)
        if not (0 <= tau <= 1 and 0 <= tau_current < 1):
            decays = f"{tau:g} (voltage)" + (f" and {tau_current:g} (current)" if step.current_based else "")
            raise self.error(key, f"at dt = {self.dt:g} s the decay per step is {decays}; time constants shorter than "
                                  "dt do not step stably. Pass the dt it was trained with (--dt)")
        if np.any(step.v_reset.ravel() != 0):
            raise self.error(key, "v_reset must be 0: Loihi (and Lava's LIF) reset the potential to 0")
        threshold = step.v_threshold.ravel()
        if not (np.all(np.isfinite(threshold)) and np.all(threshold > 0)):
            raise self.error(key, "v_threshold must be finite and positive for every neuron")
        gain = step.input_gain.ravel()
        if not np.all(np.isfinite(gain)) or np.any(gain == 0):
            raise self.error(key, "r (and w_in) must give a finite, non-zero input gain for every neuron")
        common = float(threshold.max())
        scale = common / threshold  # 1 exactly where every threshold is equal
        if np.any(scale != 1):
            self.notes.append(f"{key}: per-neuron thresholds folded into its weights and bias (threshold {common:g})")
        bias = scale * (step.leak_bias.ravel() + gain * self.synapse_biases(key, synapses, step))
        if not (np.all(np.isfinite(bias)) and np.all(np.isfinite(scale * gain))):
            raise self.error(key, "v_leak, the biases feeding it, r or v_threshold give a bias or input gain that is "
                                  "not finite")
        lif = LIF(self.names[key], shape=tuple(shape), tau=tau, v_threshold=common, tau_current=tau_current, bias=bias)
        return lif, scale * gain

    def uniform(self, key: str, field: str, values: np.ndarray) -> float:
        flat = np.asarray(values, np.float64).ravel()
        if flat.size and np.ptp(flat) > 1e-12 * max(1.0, np.abs(flat).max()):
            raise self.error(key, f"{field} differs between neurons; a Loihi population (Lava LIF) holds one decay")
        return float(flat[0]) if flat.size else 0.0

    def synapse_biases(self, key: str, synapses: list[str], step: DiscreteNeuron) -> np.ndarray:
        """The summed Affine/Conv2d biases entering a neuron node, per neuron."""
        total = 0.0
        for synapse in synapses:
            node = self.nir.nodes[synapse]
            bias = getattr(node, "bias", None)
            if bias is None:
                continue
            bias, rows = np.asarray(bias, np.float64), int(np.asarray(node.weight).shape[0])
            if bias.shape != (rows,):
                raise self.error(synapse, f"bias has shape {bias.shape}; expected ({rows},), one per output "
                                          f"{'channel' if isinstance(node, nir.Conv2d) else 'neuron'}")
            if not np.any(bias):
                continue
            if step.current_based:
                raise self.error(synapse, f"has a bias into current-based neuron {key!r}: Loihi adds biases to the "
                                          "voltage, where NIR's CubaLIF would filter it through the current; carry "
                                          "it as the neuron's v_leak instead")
            total = total + (np.repeat(bias, np.asarray(step.v_threshold).size // bias.size)
                             if isinstance(node, nir.Conv2d) else bias)
        return np.broadcast_to(np.asarray(total, np.float64), np.asarray(step.v_threshold).ravel().shape)

    def synapse(self, key: str, factor: np.ndarray, shape: tuple, source_is_sum_pool: int) -> Dense | Conv2d:
        """The graph synapse of a NIR Affine/Linear/Conv2d, its weights times the target's
        per-neuron factor (and a sum pool's kernel area, which the graph's average pool divides by)."""
        node, name = self.nir.nodes[key], self.names[key]
        weight = np.asarray(node.weight, np.float64) * source_is_sum_pool
        if weight.shape[0] != factor.size // (math.prod(shape[1:]) if isinstance(node, nir.Conv2d) else 1):
            raise self.error(key, f"weight has {weight.shape[0]} output rows; the neuron node it feeds has shape {shape}")
        if isinstance(node, nir.Conv2d):
            per_channel = factor.reshape(shape[0], -1)
            if np.any(per_channel != per_channel[:, :1]):
                raise self.error(key, "feeds neurons whose input gain or threshold varies within a channel; a conv "
                                      "kernel is shared by the whole channel")
            kernel, stride, padding = self.conv_fields(key, node)
            scaled = weight * per_channel[:, 0, None, None, None]
            self.check_finite(key, scaled)
            return Conv2d(name, out_channels=int(weight.shape[0]), kernel_size=(kernel, kernel), stride=stride,
                          padding=padding, weight=scaled)
        scaled = weight * factor[:, None]
        self.check_finite(key, scaled)
        return Dense(name, out_features=int(weight.shape[0]), weight=scaled)

    def check_finite(self, key: str, weight: np.ndarray) -> None:
        if not np.all(np.isfinite(weight)):
            raise self.error(key, "weight holds NaN or infinite values (after the target's input gain)")

    def build(self) -> ImportedNetwork:
        self.check_types()
        reads, feeds = self.wiring()
        recurrent = self.recurrent_synapses(reads, feeds)
        order = self.order(reads, feeds, recurrent)
        shapes = self.shapes(order, reads, feeds, recurrent)
        (start,), (output,) = self.kinds(nir.Input), self.kinds(nir.Output)
        try:
            nodes: list = [Input(self.names[start], shapes[start])]
        except GraphError as exc:
            raise self.error(start, str(exc)) from exc
        edges: list[Edge] = []
        for key in order:
            node = self.nir.nodes[key]
            if isinstance(node, POOLS):
                nodes.append(AvgPool2d(self.names[key], kernel_size=self.pool_kernel(key, node)))
                edges.append(Edge(self.names[reads[key]], self.names[key]))
            elif isinstance(node, NEURONS):
                nodes += self.population_nodes(key, feeds[key], shapes[key], reads, recurrent, edges)
        nodes.append(Output(self.names[output]))
        edges.append(Edge(self.names[self.preds[output][0]], self.names[output]))
        try:
            graph = Graph(tuple(nodes), tuple(edges))
        except GraphError as exc:
            raise self.error(None, str(exc)) from exc
        if any(isinstance(n, nir.SumPool2d) for n in self.nir.nodes.values()):
            self.notes.append("SumPool2d mapped to an average pool with the next weights multiplied by its area")
        self.notes.append("NIR spikes when v > v_threshold, this toolchain when v >= v_threshold: they differ only "
                          "where a potential lands exactly on the threshold")
        populations = {p.name for p in graph.populations}
        return ImportedNetwork(graph, {v: k for k, v in self.names.items() if v in populations}, self.dt,
                               tuple(self.notes))

    def population_nodes(self, key: str, synapses: list[str], shape: tuple, reads: dict[str, str],
                         recurrent: set[str], edges: list[Edge]) -> list:
        """The synapses, Sum and LIF of one NIR neuron node, appending their edges."""
        lif, factor = self.population(key, synapses, shape)
        nodes: list = []
        for synapse in synapses:
            source = self.nir.nodes[reads[synapse]]
            area = self.pool_kernel(reads[synapse], source) ** 2 if isinstance(source, nir.SumPool2d) else 1
            nodes.append(self.synapse(synapse, factor, shape, area))
            edges.append(Edge(self.names[reads[synapse]], self.names[synapse], recurrent=synapse in recurrent))
        if len(synapses) > 1:
            sum_name = self.unused(f"{lif.name}_sum")
            nodes.append(Sum(sum_name))
            edges += [Edge(self.names[s], sum_name) for s in synapses] + [Edge(sum_name, lif.name)]
        else:
            edges.append(Edge(self.names[synapses[0]], lif.name))
        return nodes + [lif]

    def unused(self, wanted: str) -> str:
        name = unique_name(wanted, self.taken)
        self.taken.add(name)
        return name


def import_nir(graph: nir.NIRGraph, dt: float | None = None, source: str = "NIR graph") -> ImportedNetwork:
    """The float network graph of a NIR graph stepped at `dt` seconds (default: the dt this
    toolchain recorded in the file; other producers' files need it given).

    source: names the file in errors. Raises NIRImportError naming the node and field.
    """
    if dt is None:
        dt = recorded_dt(graph)
        if dt is None:
            raise NIRImportError(f"{source}: the file does not record its time step; pass --dt (snnTorch's "
                                 "import/export uses 1e-4 s, norse's default is 1e-3 s)")
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        dt = math.nan
    if not (math.isfinite(dt) and dt > 0):
        raise NIRImportError(f"{source}: dt must be a positive number of seconds, got {dt!r}")
    return _Importer(graph, dt, source).build()
