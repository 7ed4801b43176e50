"""A run config's layer list as a network graph (netgraph), the structure every stage reads.

Each spiking layer `name` becomes: one synapse per input (Dense or Conv2d, named
`<name>_from_<source>`, or `<name>_recurrent_from_<source>` for a recurrent input), a Sum
named `<name>_sum` when it has several inputs, and the LIF population `<name>`. A dense layer
with `lateral_inhibition` kappa also gets `<name>_inhibition`, a recurrent Dense from the layer
to itself whose weights the config fixes (lateral_inhibition_weight). An avgpool
layer becomes an AvgPool2d node, or, with a v_threshold (a spiking pool, Lee et al. 2019), a
Conv2d `<name>_from_<source>` whose fixed weights average each channel's windows
(average_pool_weight) into integrate-and-fire neurons `<name>` (tau 1, no bias). The graph's
input is `input`, its output `output`, reading the last layer's spikes (model.readout 'spikes')
or its potential ('potential': the last layer gets v_threshold inf and never fires).
"""
from __future__ import annotations

import math

import numpy as np

from netgraph import LIF, AvgPool2d, Conv2d, Dense, Edge, Graph, GraphError, Input, Output, Sum
from trainer.config import INPUT_NAME, ConfigError, LayerConfig, LayerInput, ModelConfig, lif_constants

OUTPUT_NAME = "output"


def synapse_name(layer: str, layer_input: LayerInput) -> str:
    if layer_input.recurrent:
        return f"{layer}_recurrent" if layer_input.source == layer else f"{layer}_recurrent_from_{layer_input.source}"
    return f"{layer}_from_{layer_input.source}"


def lateral_inhibition_weight(neurons: int, kappa: float, v_threshold: float) -> np.ndarray:
    """Winner-take-all inhibition inside a population (Lee, Delbruck & Pfeiffer 2016, section
    2.3): a spike of neuron k lowers the potential of every other neuron i by kappa * Vth;
    (neurons, neurons), zero diagonal (a neuron's own spike resets it instead)."""
    weight = np.full((neurons, neurons), -kappa * v_threshold)
    np.fill_diagonal(weight, 0.0)
    return weight


def average_pool_weight(channels: int, kernel_size: int) -> np.ndarray:
    """A k x k average pool of each channel as a conv kernel (channels, channels, k, k): 1/k^2
    from a channel to itself, 0 across channels (used with stride k, no padding)."""
    weight = np.zeros((channels, channels, kernel_size, kernel_size))
    weight[np.arange(channels), np.arange(channels)] = 1.0 / kernel_size ** 2
    return weight


def _spiking_pool(layer: LayerConfig, model: ModelConfig, shapes: dict, key: str) -> tuple[list, list[Edge]]:
    """The nodes and edges of a spiking pool (module docstring)."""
    (source_input,) = layer.inputs
    source_shape = shapes[source_input.source]
    if len(source_shape) != 3:
        raise ConfigError(f"{key} ({layer.name}): a pool needs a (channels, height, width) input, "
                          f"{source_input.source} gives {source_shape}")
    k, channels = layer.kernel_size, source_shape[0]
    synapse = Conv2d(synapse_name(layer.name, source_input), out_channels=channels, kernel_size=(k, k), stride=k,
                     weight=average_pool_weight(channels, k))
    try:
        pooled_shape = AvgPool2d(layer.name, kernel_size=k).output_shape([(source_input.source, source_shape)])
    except GraphError as exc:
        raise ConfigError(f"{key} ({layer.name}): {exc}") from exc
    shapes[layer.name] = pooled_shape
    population = LIF(layer.name, shape=pooled_shape, **lif_constants(layer, model))
    return [synapse, population], [Edge(source_input.source, synapse.name), Edge(synapse.name, layer.name)]


def _synapse(layer: LayerConfig, layer_input: LayerInput, name: str):
    if layer.type == "dense":
        return Dense(name, out_features=layer.units)
    kernel = layer_input.kernel_size if layer_input.kernel_size is not None else layer.kernel_size
    return Conv2d(name, out_channels=layer.channels, kernel_size=(kernel, kernel),
                  stride=layer_input.stride if layer_input.stride is not None else layer.stride,
                  padding=layer_input.padding if layer_input.padding is not None else layer.padding)


def _synapse_output(synapse, layer_input: LayerInput, shapes: dict, key: str) -> tuple[int, ...]:
    try:
        return tuple(synapse.output_shape([(layer_input.source, shapes[layer_input.source])]))
    except GraphError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _check_fits(layer: LayerConfig, synapse, layer_input: LayerInput, shapes: dict, key: str) -> None:
    """Every input must bring a current of the layer's shape (they are added)."""
    got, wanted = _synapse_output(synapse, layer_input, shapes, key), shapes[layer.name]
    if got != wanted:
        hint = (f"; set this input's kernel_size, stride or padding so that it gives {wanted[1]}x{wanted[2]} maps"
                if layer.type == "conv" else "")
        raise ConfigError(f"{key} ({layer_input.source}): gives a current of shape {got}, but layer {layer.name}'s "
                          f"neurons have shape {wanted}{hint}")


def build_graph(model: ModelConfig, input_shape: tuple[int, ...], source: str = "config") -> Graph:
    """The structure of the configured network for inputs of `input_shape` (one sample at
    one step, e.g. (1, 8, 8)); raises ConfigError naming `source` (the config file) and the
    layer when a layer does not fit what it reads."""
    where = f"{source}: model.layers"
    nodes: list = [Input(INPUT_NAME, tuple(int(d) for d in input_shape))]
    edges: list[Edge] = []
    shapes = {INPUT_NAME: tuple(input_shape)}  # what each layer emits, by the nodes' own shape rules
    later: list[tuple] = []  # recurrent inputs from layers further down, checked once all shapes are known
    for i, layer in enumerate(model.layers):
        key = f"{where}[{i}]"
        if layer.spiking_pool:
            pool_nodes, pool_edges = _spiking_pool(layer, model, shapes, key)
            nodes += pool_nodes
            edges += pool_edges
            continue
        if layer.type == "avgpool":
            (source_input,) = layer.inputs
            pool = AvgPool2d(layer.name, kernel_size=layer.kernel_size)
            try:
                shapes[layer.name] = pool.output_shape([(source_input.source, shapes[source_input.source])])
            except GraphError as exc:
                raise ConfigError(f"{key} ({layer.name}): {exc}") from exc
            nodes.append(pool)
            edges.append(Edge(source_input.source, layer.name))
            continue
        synapses = [(_synapse(layer, inp, synapse_name(layer.name, inp)), inp) for inp in layer.inputs]
        j, (first, first_input) = next((j, pair) for j, pair in enumerate(synapses) if not pair[1].recurrent)
        shapes[layer.name] = _synapse_output(first, first_input, shapes, f"{key}.inputs[{j}]")
        if layer.lateral_inhibition:
            inhibition = lateral_inhibition_weight(layer.units, layer.lateral_inhibition,
                                                   lif_constants(layer, model)["v_threshold"])
            synapses.append((Dense(f"{layer.name}_inhibition", out_features=layer.units, weight=inhibition),
                             LayerInput(layer.name, recurrent=True)))
        for j, (synapse, inp) in enumerate(synapses):
            if inp.source in shapes:
                _check_fits(layer, synapse, inp, shapes, f"{key}.inputs[{j}]")
            else:
                later.append((layer, synapse, inp, f"{key}.inputs[{j}]"))
            nodes.append(synapse)
            edges.append(Edge(inp.source, synapse.name, recurrent=inp.recurrent))
        if len(synapses) > 1:
            nodes.append(Sum(f"{layer.name}_sum"))
            edges += [Edge(s.name, f"{layer.name}_sum") for s, _ in synapses]
            edges.append(Edge(f"{layer.name}_sum", layer.name))
        else:
            edges.append(Edge(synapses[0][0].name, layer.name))
        constants = lif_constants(layer, model)
        if i == len(model.layers) - 1 and model.readout == "potential":
            constants["v_threshold"] = math.inf  # the output never fires: its potential is read
        nodes.append(LIF(layer.name, shape=shapes[layer.name], **constants))
    for layer, synapse, inp, key in later:
        _check_fits(layer, synapse, inp, shapes, key)
    nodes.append(Output(OUTPUT_NAME, readout=model.readout))
    edges.append(Edge(model.layers[-1].name, OUTPUT_NAME))
    try:
        return Graph(tuple(nodes), tuple(edges))
    except GraphError as exc:
        raise ConfigError(f"{source}: model: {exc}") from exc


def fan_in(graph: Graph, population: str) -> int:
    """Inputs each neuron of `population` sums over all its trained synapses (for
    initialisation; a synapse whose weights the config fixes, e.g. lateral inhibition, is not
    counted)."""
    total = 0
    for synapse, edge in graph.synapses_into(population):
        if synapse.weight is not None:
            continue
        source_shape = graph.shape_of(edge.source)
        total += (math.prod(source_shape) if isinstance(synapse, Dense)
                  else source_shape[0] * math.prod(synapse.kernel_size))
    return total


def _layer_input(graph: Graph, synapse, edge: Edge, layer: dict) -> dict:
    """The config entry for one synapse into a layer (its geometry only where it differs)."""
    source = INPUT_NAME if edge.source == graph.input.name else edge.source
    entry: dict = {"source": source, "recurrent": edge.recurrent}
    if isinstance(synapse, Conv2d):
        for key, value in (("kernel_size", synapse.kernel_size[0]), ("stride", synapse.stride),
                           ("padding", synapse.padding)):
            if value != layer[key]:
                entry[key] = int(value)
    return entry


def _population_layer(graph: Graph, lif: LIF) -> dict:
    if not lif.spiking:
        raise ConfigError(f"population {lif.name}: never fires (its potential is the readout), which a layer "
                          "list written from a graph cannot hold yet")
    synapses = graph.synapses_into(lif.name)
    first = synapses[0][0]
    if any(type(s) is not type(first) for s, _ in synapses):
        raise ConfigError(f"population {lif.name}: mixes dense and conv synapses, which one layer cannot hold")
    for synapse, _ in synapses:
        if isinstance(synapse, Conv2d) and synapse.kernel_size[0] != synapse.kernel_size[1]:
            raise ConfigError(f"synapse {synapse.name}: kernel {synapse.kernel_size} is not square")
    layer: dict = {"name": lif.name, "tau": float(lif.tau), "v_threshold": float(lif.v_threshold),
                   "tau_current": float(lif.tau_current)}
    if isinstance(first, Conv2d):
        layer.update(type="conv", channels=int(first.out_channels), kernel_size=int(first.kernel_size[0]),
                     stride=int(first.stride), padding=int(first.padding))
    else:
        layer.update(type="dense", units=int(first.out_features))
    layer["inputs"] = [_layer_input(graph, s, edge, layer) for s, edge in synapses]
    return layer


def layers_from_graph(graph: Graph) -> list[dict]:
    """The run config's `model.layers` (as raw mappings) whose build_graph has the structure
    of `graph` (the inverse of build_graph, for networks made elsewhere, e.g. imported from
    NIR): one layer per population or average pool, in an order where every feed-forward
    input comes first and the output population comes last. Raises ConfigError for what a
    layer list cannot hold."""
    output = graph.output_population.name
    layers = []
    for name in graph.order:
        node = graph.node(name)
        if isinstance(node, AvgPool2d):
            (edge,) = graph.inputs_of(name)
            source = INPUT_NAME if edge.source == graph.input.name else edge.source
            layers.append({"name": name, "type": "avgpool", "kernel_size": int(node.kernel_size), "inputs": [source]})
        elif isinstance(node, LIF):
            layers.append(_population_layer(graph, node))
    layers.sort(key=lambda layer: layer["name"] == output)  # stable: only moves the output population last
    return layers


def synapse_names_in_config(graph: Graph) -> dict[str, str]:
    """Graph synapse name -> the name build_graph gives it from layers_from_graph's layers."""
    names = {}
    for lif in graph.populations:
        for synapse, edge in graph.synapses_into(lif.name):
            source = INPUT_NAME if edge.source == graph.input.name else edge.source
            names[synapse.name] = synapse_name(lif.name, LayerInput(source=source, recurrent=edge.recurrent))
    return names
