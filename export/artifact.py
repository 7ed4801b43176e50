"""The deployable artifact: one self-describing ONNX file per exported network, whose
wiring is the network graph (schema version 2).

One graph evaluation is one time step. Each graph node is one ONNX node named after it,
whose output tensor carries its name:

    Input      the graph input `<name>`, uint8 (batch, *shape) spikes
    Dense      LoihiDense(spikes, <name>.weight, <name>.weight_float) -> int64 current
    Conv2d     LoihiConv(spikes, <name>.weight, <name>.weight_float) -> int64 current maps
    Sum        LoihiSum(current, current, ...) -> int64 current
    LIF        LoihiLIF(current, <name>.bias_mant, <name>.bias_float) -> uint8 spikes
    Output     Identity(spikes) -> the graph output `<name>`

Lava ops live in the custom domain `ai.stbp_loihi` (opset 2); their attributes hold the
integer parameters (weight_exp, num_weight_bits, sign_mode; du, dv, vth, bias_exp), the
conv geometry and the trained float constants (tau, tau_current, v_threshold, scale), and
their inputs the integer and float tensors (weights (out, in) or (out, in, kh, kw) int64,
bias_mant int64, float copies float32) so Lava's floating-point models can run the trained
network from this file alone. A recurrent edge (one step of delay) reads the graph input
`<population>.previous`, the population's spikes of the previous evaluation, and the
population's own spikes are listed among the graph outputs: ONNX's usual state-in /
state-out form, which keeps the ONNX graph acyclic.

Model metadata: schema name and version, hw config, encoding, time steps, evaluation seed,
the Output's readout (`output_readout`: spikes or potential; absent means spikes),
the quantization report and the versions/seeds of the run that produced it.

Reading needs onnx and numpy only (no torch). The loader rebuilds the network graph from
the nodes' inputs and outputs and refuses, naming the file and node: anything
`onnx.checker.check_model(full_check=True)` refuses, duplicate node or initializer names,
unknown ops or attributes, tensors of the wrong type or shape, unused initializers, nodes
not on a path from input to output, and (through netgraph and export.validate) every
shape or range the hardware cannot hold. A version-1 artifact (before the graph) is
refused with the advice to re-export it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.hw_config import hardware_config_from_dict
from export.network import ExportedNetwork
from export.validate import ExportRangeError, validate_network
from netgraph import (LIF, READOUTS, Conv2d, Dense, Edge, Graph, GraphError, Input, Node, Output, QuantizedLIF,
                      QuantizedSynapse, Sum)
from netgraph.encodings import ENCODINGS
from netgraph.errors import ArtifactError, HardwareConfigError, ResourceLimitError, one_line
from netgraph.limits import MAX_DIMENSION, MAX_TIME_STEPS, check_shape
from netgraph.nodes import NAME_PATTERN
from netgraph.provenance import atomic_write, read_integer, read_json

SCHEMA_NAME = "stbp-loihi-network"
SCHEMA_VERSION = 2
DOMAIN = "ai.stbp_loihi"
DOMAIN_VERSION = 2
STATE_SUFFIX = ".previous"
MAX_ARTIFACT_BYTES = (1 << 31) - 1  # protobuf refuses larger messages
OPSETS = {"": 17, DOMAIN: DOMAIN_VERSION}  # ai.onnx for Identity, ours for the Loihi ops
_META_KEYS = ("schema", "schema_version", "hw_config", "encoding", "time_steps", "eval_seed")
# The Output's decision rule (netgraph.decision); optional, absent in artifacts written before it
# existed, which all read spike counts. A metadata key, because ONNX's Identity takes no attributes.
READOUT_KEY = "output_readout"
# "json": every provenance value is JSON, so a string that looks like a number stays a string.
# Absent in artifacts written before it existed, whose string values were written as they were.
METADATA_FORMAT_KEY = "metadata_format"
# Provenance written by `stbp export` and read back by `stbp run` / `stbp compare`.
_PROVENANCE_TYPES: dict[str, tuple[type, ...]] = {
    "source_checkpoint": (str,), "source_checkpoint_sha256": (str,), "training_config": (dict,),
    "training_versions": (dict,), "export_versions": (dict,), "training_seed": (int,),
    "trained_test_accuracy": (float, int, type(None)), "quantization_report": (dict,),
}


# --------------------------------------------------------------------------- writing


def _spikes_info(name: str, shape: tuple[int, ...]):
    return helper.make_tensor_value_info(name, TensorProto.UINT8, ["batch", *shape])


def _synapse_attributes(node) -> dict[str, Any]:
    q = node.quantized
    return {"weight_exp": int(q.weight_exp), "num_weight_bits": int(q.num_weight_bits), "sign_mode": q.sign_mode}


def _write_dense(node: Dense, inputs: list[str]):
    onnx_node = helper.make_node("LoihiDense", [*inputs, f"{node.name}.weight", f"{node.name}.weight_float"],
                                 [node.name], name=node.name, domain=DOMAIN, out_features=int(node.out_features),
                                 **_synapse_attributes(node))
    return onnx_node, {f"{node.name}.weight": node.quantized.weight.astype(np.int64),
                       f"{node.name}.weight_float": np.asarray(node.weight, np.float32)}


def _write_conv(node: Conv2d, inputs: list[str]):
    onnx_node = helper.make_node("LoihiConv", [*inputs, f"{node.name}.weight", f"{node.name}.weight_float"],
                                 [node.name], name=node.name, domain=DOMAIN, out_channels=int(node.out_channels),
                                 kernel_shape=[int(k) for k in node.kernel_size], strides=[int(node.stride)] * 2,
                                 pads=[int(node.padding)] * 4, **_synapse_attributes(node))
    return onnx_node, {f"{node.name}.weight": node.quantized.weight.astype(np.int64),
                       f"{node.name}.weight_float": np.asarray(node.weight, np.float32)}


def _write_sum(node: Sum, inputs: list[str]):
    return helper.make_node("LoihiSum", inputs, [node.name], name=node.name, domain=DOMAIN), {}


def _write_lif(node: LIF, inputs: list[str]):
    q = node.quantized
    onnx_node = helper.make_node(
        "LoihiLIF", [*inputs, f"{node.name}.bias_mant", f"{node.name}.bias_float"], [node.name], name=node.name,
        domain=DOMAIN, shape=[int(d) for d in node.shape], du=int(q.du), dv=int(q.dv), vth=int(q.vth),
        bias_exp=int(q.bias_exp), **{name: _double(value) for name, value in
                                     (("scale", q.scale), ("tau", node.tau), ("tau_current", node.tau_current),
                                      ("v_threshold", node.v_threshold))})
    return onnx_node, {f"{node.name}.bias_mant": np.asarray(q.bias_mant, np.int64),
                       f"{node.name}.bias_float": np.asarray(node.bias, np.float32)}


def _double(value: float) -> onnx.TensorProto:
    """A float parameter as a float64 scalar tensor attribute: ONNX's FLOAT attribute is 32-bit."""
    return numpy_helper.from_array(np.array(float(value), np.float64))


def _write_output(node: Output, inputs: list[str]):
    return helper.make_node("Identity", inputs, [node.name], name=node.name), {}


_WRITERS: dict[type, Callable] = {Dense: _write_dense, Conv2d: _write_conv, Sum: _write_sum, LIF: _write_lif,
                                  Output: _write_output}


def _value_info(graph: Graph, node: Node):
    shape = graph.shape_of(node.name)
    if isinstance(node, (LIF, Output)):
        return _spikes_info(node.name, shape)
    return helper.make_tensor_value_info(node.name, TensorProto.INT64, ["batch", *shape])


def to_onnx(network: ExportedNetwork) -> onnx.ModelProto:
    """Builds the ONNX ModelProto of an exported network (see the module docstring)."""
    graph = network.graph
    states = [lif for lif in graph.populations if any(e.recurrent for e in graph.consumers_of(lif.name))]
    nodes, initializers, value_info = [], [], []
    for name in graph.order:
        node = graph.node(name)
        if isinstance(node, Input):
            continue
        inputs = [edge.source + STATE_SUFFIX if edge.recurrent else edge.source for edge in graph.inputs_of(name)]
        onnx_node, tensors = _WRITERS[type(node)](node, inputs)
        nodes.append(onnx_node)
        initializers += [numpy_helper.from_array(np.ascontiguousarray(array), tensor) for tensor, array in tensors.items()]
        if not isinstance(node, Output) and node not in states:
            value_info.append(_value_info(graph, node))
    onnx_graph = helper.make_graph(
        nodes, "stbp_loihi_network",
        [_spikes_info(graph.input.name, graph.input.shape)]
        + [_spikes_info(lif.name + STATE_SUFFIX, lif.shape) for lif in states],
        [_spikes_info(graph.output.name, graph.output_population.shape)]
        + [_spikes_info(lif.name, lif.shape) for lif in states],
        initializer=initializers, value_info=value_info,
    )
    model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid(domain, version) for domain, version in OPSETS.items()],
        producer_name="stbp-loihi",
        doc_string="LIF network quantized for Loihi; one graph evaluation = one time step.",
    )
    helper.set_model_props(model, _metadata_props(network))
    onnx.checker.check_model(model, full_check=True)
    return model


def _metadata_props(network: ExportedNetwork) -> dict[str, str]:
    reserved = sorted(set(network.metadata) & {*_META_KEYS, READOUT_KEY, METADATA_FORMAT_KEY})
    if reserved:
        raise ArtifactError(f"provenance key(s) {', '.join(reserved)} are reserved for the artifact's own fields")
    return {
        "schema": SCHEMA_NAME,
        "schema_version": str(SCHEMA_VERSION),
        "hw_config": json.dumps(dataclasses.asdict(network.hardware)),
        "encoding": network.encoding,
        "time_steps": str(network.time_steps),
        "eval_seed": str(network.eval_seed),
        READOUT_KEY: network.graph.output.readout,
        METADATA_FORMAT_KEY: "json",
        **{key: json.dumps(value) for key, value in network.metadata.items()},
    }


def artifact_bytes(network: ExportedNetwork) -> bytes:
    """The artifact file's content (see the module docstring)."""
    return to_onnx(network).SerializeToString()


def save_artifact(network: ExportedNetwork, path: str | Path) -> None:
    """Writes the artifact atomically (a crash never leaves a half-written file)."""
    payload = artifact_bytes(network)
    with atomic_write(path) as handle:
        handle.write(payload)


# --------------------------------------------------------------------------- reading


class _NodeReader:
    """Reads one ONNX node's attributes and initializer inputs, each error naming the node."""

    def __init__(self, onnx_node, tensors: dict[str, np.ndarray], used: set[str]):
        self.node, self.tensors, self.used = onnx_node, tensors, used
        self.where = f"node {onnx_node.name} ({onnx_node.op_type})"
        self.attributes = {attr.name: attr for attr in onnx_node.attribute}

    def expect_attributes(self, names: set[str]) -> None:
        unknown = sorted(set(self.attributes) - names)
        if unknown:
            raise ArtifactError(f"{self.where}: unknown attribute(s) {', '.join(unknown)}")

    def _attr(self, name: str, kind: int, kind_name: str):
        attr = self.attributes.get(name)
        if attr is None:
            raise ArtifactError(f"{self.where}: missing attribute '{name}'")
        if attr.type != kind:
            raise ArtifactError(f"{self.where}: attribute '{name}' must be {kind_name}")
        return helper.get_attribute_value(attr)

    def int(self, name: str, low: int = -(1 << 62), high: int = 1 << 62) -> int:
        value = int(self._attr(name, onnx.AttributeProto.INT, "an integer"))
        if not low <= value <= high:
            raise ArtifactError(f"{self.where}: attribute '{name}' = {value} is outside [{low}, {high}]")
        return value

    def size(self, name: str) -> int:
        """A declared size (features, channels): within netgraph.limits before anything is built."""
        return self.int(name, 1, MAX_DIMENSION)

    def ints(self, name: str, length: int, low: int = 0, high: int = MAX_DIMENSION) -> list[int]:
        values = [int(v) for v in self._attr(name, onnx.AttributeProto.INTS, "a list of integers")]
        if length and len(values) != length:
            raise ArtifactError(f"{self.where}: attribute '{name}' must hold {length} integers, got {len(values)}")
        if not all(low <= v <= high for v in values):
            raise ArtifactError(f"{self.where}: attribute '{name}' = {values[:8]} must lie in [{low}, {high}]")
        return values

    def float(self, name: str) -> float:
        """A float64 scalar tensor attribute (a 32-bit FLOAT in artifacts written before)."""
        attr = self.attributes.get(name)
        if attr is not None and attr.type == onnx.AttributeProto.FLOAT:
            return float(attr.f)
        tensor = self._attr(name, onnx.AttributeProto.TENSOR, "a float64 scalar")
        if tensor.data_type != TensorProto.DOUBLE or list(tensor.dims):
            raise ArtifactError(f"{self.where}: attribute '{name}' must be a float64 scalar")
        try:
            return float(numpy_helper.to_array(tensor))
        except Exception as exc:  # a raw_data of the wrong length
            raise ArtifactError(f"{self.where}: attribute '{name}' cannot be read ({one_line(exc)})") from None

    def string(self, name: str) -> str:
        raw = self._attr(name, onnx.AttributeProto.STRING, "a string")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ArtifactError(f"{self.where}: attribute '{name}' is not UTF-8 text") from None

    def initializer(self, position: int, role: str, dtype: type) -> np.ndarray:
        """The initializer at input `position`, which must be this node's `<node>.<role>`, of `dtype`."""
        if len(self.node.input) <= position:
            raise ArtifactError(f"{self.where}: missing input {position}")
        name = self.node.input[position]
        if name != f"{self.node.name}.{role}" or name not in self.tensors:
            raise ArtifactError(f"{self.where}: input {position} must be its initializer "
                                f"'{self.node.name}.{role}', got '{name}'")
        value = self.tensors[name]
        if value.dtype != np.dtype(dtype):
            raise ArtifactError(f"{self.where}: tensor '{name}' has dtype {value.dtype}, expected {np.dtype(dtype)}")
        self.used.add(name)
        return value

    def expect_inputs(self, signals: int | None, initializers: int = 0) -> None:
        """The node takes `signals` signal inputs (None: two or more) then `initializers` tensors."""
        names = list(self.node.input)
        found = [name for name in names if name not in self.tensors]
        if signals is None:
            if len(found) < 2 or len(names) != len(found):
                raise ArtifactError(f"{self.where}: takes two or more signal inputs and nothing else, got {names}")
            return
        if len(names) != signals + initializers or len(found) != signals:
            raise ArtifactError(f"{self.where}: takes {signals} signal input(s) followed by {initializers} "
                                f"initializer(s), got {names}")


def _read_synapse(reader: _NodeReader, extra: dict[str, Any]):
    weight = reader.initializer(1, "weight", np.int64)
    weight_float = reader.initializer(2, "weight_float", np.float32)
    quantized = QuantizedSynapse(weight=weight, weight_exp=reader.int("weight_exp"),
                                 num_weight_bits=reader.int("num_weight_bits"), sign_mode=reader.string("sign_mode"))
    return dict(weight=weight_float, quantized=quantized, **extra)


def _read_dense(reader: _NodeReader) -> Dense:
    reader.expect_attributes({"out_features", "weight_exp", "num_weight_bits", "sign_mode"})
    reader.expect_inputs(1, 2)
    return Dense(reader.node.name, **_read_synapse(reader, {"out_features": reader.size("out_features")}))


def _read_conv(reader: _NodeReader) -> Conv2d:
    reader.expect_attributes({"out_channels", "kernel_shape", "strides", "pads", "weight_exp", "num_weight_bits",
                              "sign_mode"})
    reader.expect_inputs(1, 2)
    strides, pads = reader.ints("strides", 2, 1), reader.ints("pads", 4)
    if len(set(strides)) != 1 or len(set(pads)) != 1:
        raise ArtifactError(f"{reader.where}: strides and pads must be equal along height and width")
    geometry = {"out_channels": reader.size("out_channels"), "kernel_size": tuple(reader.ints("kernel_shape", 2, 1)),
                "stride": strides[0], "padding": pads[0]}
    return Conv2d(reader.node.name, **_read_synapse(reader, geometry))


def _read_sum(reader: _NodeReader) -> Sum:
    reader.expect_attributes(set())
    reader.expect_inputs(None)
    return Sum(reader.node.name)


def _read_lif(reader: _NodeReader) -> LIF:
    reader.expect_attributes({"shape", "du", "dv", "vth", "bias_exp", "scale", "tau", "tau_current", "v_threshold"})
    reader.expect_inputs(1, 2)
    quantized = QuantizedLIF(du=reader.int("du"), dv=reader.int("dv"), vth=reader.int("vth"),
                             bias_mant=reader.initializer(1, "bias_mant", np.int64), bias_exp=reader.int("bias_exp"),
                             scale=reader.float("scale"))
    shape = tuple(reader.ints("shape", 0, 1))
    try:
        check_shape(shape, f"{reader.where}: attribute 'shape'")
    except ResourceLimitError as exc:
        raise ArtifactError(str(exc)) from None
    return LIF(reader.node.name, shape=shape, tau=reader.float("tau"),
               v_threshold=reader.float("v_threshold"), tau_current=reader.float("tau_current"),
               bias=reader.initializer(2, "bias_float", np.float32), quantized=quantized)


def _read_output(reader: _NodeReader) -> Output:
    reader.expect_attributes(set())
    reader.expect_inputs(1)
    return Output(reader.node.name)


_READERS: dict[tuple[str, str], Callable[[_NodeReader], Node]] = {
    (DOMAIN, "LoihiDense"): _read_dense, (DOMAIN, "LoihiConv"): _read_conv, (DOMAIN, "LoihiSum"): _read_sum,
    (DOMAIN, "LoihiLIF"): _read_lif, ("", "Identity"): _read_output,
}


def _input_node(value_info) -> Input:
    shape = _declared_shape(value_info)
    if shape is None:
        raise ArtifactError(f"graph input '{value_info.name}' must be uint8 spikes of shape (batch, *fixed dimensions)")
    try:
        check_shape(shape, f"graph input '{value_info.name}'")
    except ResourceLimitError as exc:
        raise ArtifactError(str(exc)) from None
    return Input(value_info.name, shape)


def _initializers(onnx_graph) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for initializer in onnx_graph.initializer:
        if initializer.name in tensors:
            raise ArtifactError(f"two initializers are named '{initializer.name}'")
        try:
            tensors[initializer.name] = numpy_helper.to_array(initializer)
        except Exception as exc:  # wrong raw_data length, unknown data type, ...
            raise ArtifactError(f"tensor '{initializer.name}' cannot be read ({exc})") from exc
    return tensors


def _graph_inputs(onnx_graph) -> tuple[Input, set[str]]:
    """The spike input node, and the populations whose previous spikes are state inputs."""
    regular = [v for v in onnx_graph.input if not v.name.endswith(STATE_SUFFIX)]
    if len(regular) != 1:
        raise ArtifactError(f"the graph needs exactly one spike input, found {len(regular)}")
    states = {v.name[: -len(STATE_SUFFIX)] for v in onnx_graph.input if v.name.endswith(STATE_SUFFIX)}
    try:
        return _input_node(regular[0]), states
    except GraphError as exc:
        raise ArtifactError(str(exc)) from exc


def _read_nodes(onnx_graph, tensors: dict[str, np.ndarray]) -> tuple[list[Node], list[Edge]]:
    input_node, states = _graph_inputs(onnx_graph)
    nodes: list[Node] = [input_node]
    edges: list[Edge] = []
    names, used = {input_node.name}, set()
    for onnx_node in onnx_graph.node:
        where = f"node {onnx_node.name or '(unnamed)'} ({onnx_node.op_type})"
        if not NAME_PATTERN.fullmatch(onnx_node.name):
            raise ArtifactError(f"{where}: every node needs a name of letters, digits and '_' starting with a letter")
        if onnx_node.name in names:
            raise ArtifactError(f"{where}: two nodes are named '{onnx_node.name}'")
        names.add(onnx_node.name)
        read = _READERS.get((onnx_node.domain, onnx_node.op_type))
        if read is None:
            raise ArtifactError(f"{where}: op {onnx_node.domain or 'ai.onnx'}.{onnx_node.op_type} is not part of "
                                f"schema {SCHEMA_VERSION}")
        if list(onnx_node.output) != [onnx_node.name]:
            raise ArtifactError(f"{where}: must have one output tensor named after the node, got {list(onnx_node.output)}")
        try:
            nodes.append(read(_NodeReader(onnx_node, tensors, used)))
        except GraphError as exc:
            raise ArtifactError(str(exc)) from exc
        for tensor in onnx_node.input:
            if tensor in tensors:
                continue
            recurrent = tensor.endswith(STATE_SUFFIX) and tensor[: -len(STATE_SUFFIX)] in states
            edges.append(Edge(tensor[: -len(STATE_SUFFIX)] if recurrent else tensor, onnx_node.name, recurrent))
    unused = sorted(set(tensors) - used)
    if unused:
        raise ArtifactError(f"initializer(s) {', '.join(unused)} are used by no node")
    _check_outputs(onnx_graph, nodes, states)
    return nodes, edges


def _check_outputs(onnx_graph, nodes: list[Node], states: set[str]) -> None:
    outputs = [n.name for n in nodes if isinstance(n, Output)]
    lifs = {n.name for n in nodes if isinstance(n, LIF)}
    bad_states = sorted(states - lifs)
    if bad_states:
        raise ArtifactError(f"state input(s) {', '.join(s + STATE_SUFFIX for s in bad_states)} do not name a "
                            "LoihiLIF population")
    expected = set(outputs) | states
    declared = {v.name for v in onnx_graph.output}
    if declared != expected:
        raise ArtifactError(f"graph outputs {sorted(declared)} must be the Output node and the recurrent "
                            f"populations' spikes {sorted(expected)}")


def _declared_shape(value_info) -> tuple[int, ...] | None:
    """A uint8 tensor's shape after the batch dimension, or None when it is not one."""
    return _declared_tensor(value_info, TensorProto.UINT8)


def _declared_tensor(value_info, elem_type: int) -> tuple[int, ...] | None:
    """A tensor's shape after the symbolic batch dimension, or None when it is not one of
    `elem_type` and shape ("batch", fixed dimensions...)."""
    if value_info.type.WhichOneof("value") != "tensor_type":
        return None
    tensor = value_info.type.tensor_type
    dims = tensor.shape.dim
    if tensor.elem_type != elem_type or len(dims) < 2 or dims[0].dim_param != "batch" \
            or not all(d.HasField("dim_value") for d in dims[1:]):
        return None
    return tuple(int(d.dim_value) for d in dims[1:])


def _check_interface(onnx_graph, graph: Graph) -> None:
    """The declared graph outputs and state inputs are uint8 spikes of their population's shape,
    so another ONNX consumer reads the same interface as this loader, in the writer's order."""
    states = [lif.name for lif in graph.populations if lif.name + STATE_SUFFIX in {v.name for v in onnx_graph.input}]
    if [v.name for v in onnx_graph.output] != [graph.output.name, *states]:
        raise ArtifactError(f"graph outputs must be {[graph.output.name, *states]} in this order, "
                            f"got {[v.name for v in onnx_graph.output]}")
    if [v.name for v in onnx_graph.input] != [graph.input.name, *(s + STATE_SUFFIX for s in states)]:
        raise ArtifactError(f"graph inputs must be {[graph.input.name, *(s + STATE_SUFFIX for s in states)]} in this "
                            f"order, got {[v.name for v in onnx_graph.input]}")
    expected = {graph.output.name: graph.output_population.shape}
    expected.update({lif.name: lif.shape for lif in graph.populations})
    for value_info in onnx_graph.output:
        shape = expected[value_info.name]
        if _declared_shape(value_info) != tuple(shape):
            raise ArtifactError(f"graph output '{value_info.name}' must be declared uint8 (batch, "
                                f"{', '.join(map(str, shape))})")
    for value_info in onnx_graph.input:
        if value_info.name.endswith(STATE_SUFFIX):
            shape = graph.node(value_info.name[: -len(STATE_SUFFIX)]).shape
            if _declared_shape(value_info) != tuple(shape):
                raise ArtifactError(f"state input '{value_info.name}' must be declared uint8 (batch, "
                                    f"{', '.join(map(str, shape))})")


def _metadata_dict(model, path: Path) -> dict[str, str]:
    meta: dict[str, str] = {}
    for prop in model.metadata_props:
        if prop.key in meta:
            raise ArtifactError(f"{path}: metadata key '{prop.key}' appears twice")
        meta[prop.key] = prop.value
    return meta


def _integer_text(meta: dict[str, str], key: str, low: int, high: int, path: Path) -> int:
    """An integer metadata value, written as str(int) writes it, within [low, high]."""
    try:
        value = read_integer(meta[key])
    except ValueError:
        raise ArtifactError(f"{path}: metadata is invalid: '{key}' must be an integer, got {meta[key][:40]!r}") from None
    if not low <= value <= high:
        raise ArtifactError(f"{path}: metadata is invalid: '{key}' = {value} is outside [{low}, {high}]")
    return value


def _json_value(text: str, key: str, path: Path) -> Any:
    try:
        return read_json(text)
    except ValueError as exc:
        raise ArtifactError(f"{path}: metadata is invalid: '{key}' is not JSON ({one_line(exc)[:120]})") from None


def _check_schema(meta: dict[str, str], path: Path) -> None:
    if meta.get("schema") != SCHEMA_NAME:
        raise ArtifactError(f"{path}: not an {SCHEMA_NAME} artifact (schema={str(meta.get('schema'))[:60]!r})")
    version = meta.get("schema_version")
    if version == "1":
        raise ArtifactError(f"{path}: artifact schema version 1 predates the network graph (version {SCHEMA_VERSION}); "
                            "re-export it from its checkpoint with `stbp export`")
    if version != str(SCHEMA_VERSION):
        raise ArtifactError(f"{path}: artifact schema version {str(version)[:40]!r} is not supported "
                            f"(this program reads version {SCHEMA_VERSION})")
    missing = [key for key in _META_KEYS if key not in meta]
    if missing:
        raise ArtifactError(f"{path}: metadata is incomplete: missing {', '.join(missing)}")


def _provenance(meta: dict[str, str], path: Path) -> dict[str, Any]:
    """The provenance entries: JSON values (strings as they were in older artifacts), typed."""
    format_ = meta.get(METADATA_FORMAT_KEY)
    if format_ not in (None, "json"):
        raise ArtifactError(f"{path}: metadata is invalid: '{METADATA_FORMAT_KEY}' must be 'json', got {format_[:40]!r}")
    extra = {}
    for key, text in meta.items():
        if key in (*_META_KEYS, READOUT_KEY, METADATA_FORMAT_KEY):
            continue
        if format_ == "json":
            extra[key] = _json_value(text, key, path)
        else:  # older artifacts wrote strings as they were and everything else as JSON
            try:
                extra[key] = read_json(text)
            except json.JSONDecodeError:  # not JSON: a string written as it was
                extra[key] = text
            except ValueError as exc:  # JSON, but repeated keys or nested too deeply
                raise ArtifactError(f"{path}: metadata is invalid: '{key}': {one_line(exc)}") from None
        expected = _PROVENANCE_TYPES.get(key)
        if expected is not None and not isinstance(extra[key], expected):
            raise ArtifactError(f"{path}: metadata is invalid: '{key}' must be "
                                f"{' or '.join(t.__name__ for t in expected)}, got {type(extra[key]).__name__}")
    return extra


def _check_value_info(onnx_graph, graph: Graph) -> None:
    """The declared intermediate tensors are exactly what the writer declares for this graph
    (each node's output: its type and shape), so the file describes no other network."""
    states = {name[: -len(STATE_SUFFIX)] for name in (v.name for v in onnx_graph.input) if name.endswith(STATE_SUFFIX)}
    expected = {node.name: node for node in graph.nodes
                if not isinstance(node, (Input, Output)) and node.name not in states}
    declared = [v.name for v in onnx_graph.value_info]
    if len(set(declared)) != len(declared) or set(declared) != set(expected):
        raise ArtifactError(f"value_info must declare each node's output once: {sorted(expected)}, got {sorted(declared)}")
    for value_info in onnx_graph.value_info:
        node = expected[value_info.name]
        elem_type = TensorProto.UINT8 if isinstance(node, LIF) else TensorProto.INT64
        if _declared_tensor(value_info, elem_type) != tuple(graph.shape_of(node.name)):
            kind = "uint8" if elem_type == TensorProto.UINT8 else "int64"
            raise ArtifactError(f"value_info '{value_info.name}' must be {kind} (batch, "
                                f"{', '.join(map(str, graph.shape_of(node.name)))})")


def _read_metadata(meta: dict[str, str], path: Path) -> dict[str, Any]:
    _check_schema(meta, path)
    readout = meta.get(READOUT_KEY, "spikes")
    if readout not in READOUTS:
        raise ArtifactError(f"{path}: metadata is invalid: '{READOUT_KEY}' must be one of {', '.join(READOUTS)}, "
                            f"got {readout[:40]!r}")
    if meta["encoding"] not in ENCODINGS:
        raise ArtifactError(f"{path}: metadata is invalid: 'encoding' must be one of {', '.join(ENCODINGS)}, got "
                            f"{meta['encoding'][:40]!r}")
    fields: dict[str, Any] = {
        "encoding": meta["encoding"],
        "time_steps": _integer_text(meta, "time_steps", 1, MAX_TIME_STEPS, path),
        "eval_seed": _integer_text(meta, "eval_seed", -(1 << 63), (1 << 64) - 1, path),  # torch's seed range
    }
    try:
        fields["hardware"] = hardware_config_from_dict(_json_value(meta["hw_config"], "hw_config", path),
                                                       f"{path}: metadata 'hw_config'")
    except HardwareConfigError as exc:
        raise ArtifactError(str(exc)) from exc
    return {**fields, "metadata": _provenance(meta, path), "readout": readout}


def _check_no_foreign_parts(model, path: Path) -> None:
    """Refuses what the writer never writes and the loader would otherwise pass over: tensors
    stored in other files, local functions, sparse initializers, training info, quantization
    annotations, a node overload or subgraph attributes."""
    graph = model.graph
    external = [t.name for t in graph.initializer if t.data_location == TensorProto.EXTERNAL or t.external_data]
    if external:
        raise ArtifactError(f"{path}: tensor '{external[0]}' is stored outside the file (external data is not read)")
    foreign = {"local functions": len(model.functions), "training info": len(model.training_info),
               "sparse initializers": len(graph.sparse_initializer),
               "quantization annotations": len(graph.quantization_annotation)}
    present = [what for what, count in foreign.items() if count]
    if present:
        raise ArtifactError(f"{path}: holds {', '.join(present)}, which this schema does not use")
    for node in graph.node:
        if node.overload or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ArtifactError(f"{path}: node {node.name}: overloads and subgraph attributes are not part of the schema")


def _check_text_fields(model, path: Path) -> None:
    """Every name and string the loader reads is text: protobuf hands invalid UTF-8 over as bytes."""
    graph = model.graph
    fields = [("metadata key", p.key) for p in model.metadata_props]
    fields += [(f"metadata '{p.key}'", p.value) for p in model.metadata_props if isinstance(p.key, str)]
    fields += [("opset domain", o.domain) for o in model.opset_import]
    for node in graph.node:
        fields += [("node name", node.name), ("op type", node.op_type), ("op domain", node.domain)]
        fields += [(f"an input of node {node.name}", name) for name in node.input]
        fields += [(f"an output of node {node.name}", name) for name in node.output]
        fields += [(f"an attribute name of node {node.name}", attr.name) for attr in node.attribute]
    for group in (graph.initializer, graph.input, graph.output, graph.value_info):
        fields += [("a tensor name", item.name) for item in group]
    for what, value in fields:
        if not isinstance(value, str):
            raise ArtifactError(f"{path}: {what} is not UTF-8 text ({bytes(value)[:40]!r})")


def load_artifact(path: str | Path) -> ExportedNetwork:
    """Reads and validates an artifact; every error names the file and the node or tensor."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    if path.stat().st_size > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"{path}: {path.stat().st_size} bytes, more than an ONNX file can hold "
                            f"({MAX_ARTIFACT_BYTES} bytes, protobuf's limit)")
    try:
        model = onnx.load(str(path), load_external_data=False)  # never read a file the artifact points at
    except Exception as exc:  # onnx raises DecodeError and others
        raise ArtifactError(f"{path}: not a readable ONNX file ({exc})") from exc
    _check_text_fields(model, path)
    _check_no_foreign_parts(model, path)
    fields = _read_metadata(_metadata_dict(model, path), path)
    readout = fields.pop("readout")
    domains = sorted((o.domain, o.version) for o in model.opset_import)
    if domains != sorted(OPSETS.items()):
        raise ArtifactError(f"{path}: must import the opsets {dict(OPSETS)}, declares {dict(domains)}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        reason = " ".join(str(exc).split())[:400] or type(exc).__name__
        raise ArtifactError(f"{path}: onnx.checker refuses the model: {reason}") from exc
    try:
        nodes, edges = _read_nodes(model.graph, _initializers(model.graph))
        nodes = [dataclasses.replace(n, readout=readout) if isinstance(n, Output) else n for n in nodes]
        graph = Graph(tuple(nodes), tuple(edges))
        _check_interface(model.graph, graph)
        _check_value_info(model.graph, graph)
    except (ArtifactError, GraphError, ResourceLimitError) as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    network = ExportedNetwork(graph, **fields)
    try:
        validate_network(network, where=str(path))
    except ExportRangeError as exc:
        raise ArtifactError(str(exc)) from exc
    return network
