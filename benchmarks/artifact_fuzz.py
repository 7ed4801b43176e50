"""Seeded mutations of deployable artifacts, and a classifier of what `load_artifact` makes of
each one (issue 14, part 7). Imported by benchmarks/bench_fuzz.py (many cases, one worker
process per core) and tests/test_fuzz.py (2,000 cases in-process, about 1 ms each).

Bases: five small integer networks built here with numpy + netgraph + export (no torch, no
training) and written with `export.artifact.to_onnx`: a dense chain 64-32-10, a conv network
(1, 8, 8) -> Conv2d -> LIF -> Dense -> LIF, a residual block (a Sum of a skip and a main
path), a recurrent population, and a chain read through its output potential (v_threshold
inf, readout 'potential').

Mutations: `make_mutant(base, base_model, seed, index)` draws one operator of OPERATORS with
equal probability from `random.Random(f"{base}/{seed}/{index}")` and applies it once, so
every mutant is reproducible from (base, seed, index). An operator that has nothing to act
on in a base (conv geometry in a dense chain) is drawn again from the same generator.

Classes (CLASSES) of one mutant file:
    clean      load_artifact raised a StbpError whose message is one line naming the file
    loaded     it returned a network that re-serializes (to_onnx) to the file's own graph,
               metadata and opsets, and that the emulator runs on 4 random samples (a
               StbpError refusing the run, or a numpy RuntimeWarning, is noted in the detail)
    different  it returned a network, but not the one the file describes (the field is named)
    traceback  any other exception, or a StbpError of several lines or not naming the file
    hang       loading, comparing or emulating took longer than the timeout
    crash      the worker process died (only bench_fuzz, which runs cases in worker processes)
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import signal
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from export import artifact, hw_config
from export.artifact import DOMAIN, READOUT_KEY, load_artifact, to_onnx
from export.emulator import emulate
from export.hw_config import HardwareConfig, resolve_hardware_config
from export.network import ExportedNetwork
from netgraph import LIF, Conv2d, Dense, Edge, Graph, Input, Output, QuantizedLIF, QuantizedSynapse, Sum, Synapse
from netgraph.errors import StbpError

REPO_ROOT = Path(__file__).resolve().parent.parent
# Metadata keys of the artifact's own fields (not provenance); getattr: older loaders lack some.
_OWN_METADATA_KEYS = tuple(getattr(artifact, "_META_KEYS", ()))
METADATA_FORMAT_KEY = getattr(artifact, "METADATA_FORMAT_KEY", "metadata_format")
CLASSES = ("clean", "loaded", "different", "traceback", "hang", "crash")
TIME_STEPS = 8
SMOKE_SAMPLES = 4

# =========================================================================== bases


def _grid_weights(rng: np.random.Generator, shape: tuple[int, ...], hw: HardwareConfig) -> np.ndarray:
    """Random int64 weights on the 'mixed' 8-bit grid, both clip limits present."""
    low, high, step = hw.weight_range("mixed", 8)
    weights = rng.integers(low // step, high // step + 1, size=shape) * step
    weights.flat[:2] = [low, high]
    return weights.astype(np.int64)


def _with_parameters(structure: Graph, rng: np.random.Generator, hw: HardwareConfig) -> tuple:
    """The structure's nodes with integer parameters (du 4095, dv 3277, vth 200, bias in
    [-300, 300)) and float copies; a population with v_threshold inf keeps it (a readout)."""
    nodes = []
    for node in structure.nodes:
        if isinstance(node, Synapse):
            weights = _grid_weights(rng, node.weight_shape(structure.read_shape(node.name)), hw)
            fields = {"out_channels": node.out_channels, "kernel_size": node.kernel_size, "stride": node.stride,
                      "padding": node.padding} if isinstance(node, Conv2d) else {"out_features": node.out_features}
            node = type(node)(node.name, **fields, weight=weights.astype(np.float32),
                              quantized=QuantizedSynapse(weights, 0, 8, "mixed"))
        elif isinstance(node, LIF):
            spiking = math.isfinite(node.v_threshold)
            mant = rng.integers(-300, 300, size=node.neurons) if spiking else np.zeros(node.neurons, np.int64)
            node = LIF(node.name, node.shape, tau=0.5, v_threshold=node.v_threshold, tau_current=0.0,
                       bias=np.zeros(node.neurons, np.float32),
                       quantized=QuantizedLIF(4095, 3277 if spiking else 0, 200 if spiking else hw.vth_max,
                                              mant.astype(np.int64), 0, 1.0))
        nodes.append(node)
    return tuple(nodes)


def _chain(nodes: list) -> Graph:
    return Graph(tuple(nodes), tuple(Edge(a.name, b.name) for a, b in zip(nodes[:-1], nodes[1:])))


def _dense_structure() -> Graph:
    return _chain([Input("input", (64,)), Dense("d0", 32), LIF("l0", (32,)), Dense("d1", 10), LIF("l1", (10,)),
                   Output("output")])


def _conv_structure() -> Graph:
    return _chain([Input("input", (1, 8, 8)), Conv2d("c0", 4, (3, 3), stride=1, padding=1), LIF("l0", (4, 8, 8)),
                   Dense("d1", 10), LIF("l1", (10,)), Output("output")])


def _residual_structure() -> Graph:
    """input -> a -> b -> c, c also reading a directly (a skip over b through a Sum)."""
    nodes = [Input("input", (10,)), Dense("a_in", 8), LIF("a", (8,)), Dense("b_in", 8), LIF("b", (8,)),
             Dense("c_main", 4), Dense("c_skip", 4), Sum("c_sum"), LIF("c", (4,)), Output("output")]
    pairs = [("input", "a_in"), ("a_in", "a"), ("a", "b_in"), ("b_in", "b"), ("b", "c_main"), ("a", "c_skip"),
             ("c_main", "c_sum"), ("c_skip", "c_sum"), ("c_sum", "c"), ("c", "output")]
    return Graph(tuple(nodes), tuple(Edge(a, b) for a, b in pairs))


def _recurrent_structure() -> Graph:
    """input -> h (h's own spikes fed back through h_rec, one step late) -> out."""
    nodes = [Input("input", (10,)), Dense("h_in", 8), Dense("h_rec", 8), Sum("h_sum"), LIF("h", (8,)),
             Dense("out_in", 4), LIF("out", (4,)), Output("output")]
    edges = [Edge("input", "h_in"), Edge("h", "h_rec", recurrent=True), Edge("h_in", "h_sum"), Edge("h_rec", "h_sum"),
             Edge("h_sum", "h"), Edge("h", "out_in"), Edge("out_in", "out"), Edge("out", "output")]
    return Graph(tuple(nodes), tuple(edges))


def _potential_structure() -> Graph:
    """A chain whose output population never fires and is read through its potential."""
    return _chain([Input("input", (16,)), Dense("d0", 8), LIF("l0", (8,)), Dense("d1", 4),
                   LIF("l1", (4,), v_threshold=math.inf), Output("output", readout="potential")])


BASE_STRUCTURES: dict[str, Callable[[], Graph]] = {
    "dense": _dense_structure, "conv": _conv_structure, "residual": _residual_structure,
    "recurrent": _recurrent_structure, "potential": _potential_structure,
}
BASE_NAMES = tuple(BASE_STRUCTURES)


def base_network(name: str) -> ExportedNetwork:
    """The base network `name`, the same on every call (numpy generator seeded with 0)."""
    hw = resolve_hardware_config("loihi2")
    structure = BASE_STRUCTURES[name]()
    graph = Graph(_with_parameters(structure, np.random.default_rng(0), hw), structure.edges)
    return ExportedNetwork(graph, "bernoulli", TIME_STEPS, 0, hw,
                           metadata={"training_seed": 7, "source_checkpoint": f"{name}.safetensors",
                                     "training_config": {"epochs": 2, "seed": 7}})


def base_models() -> dict[str, onnx.ModelProto]:
    """Every base as the ModelProto `save_artifact` would write."""
    return {name: to_onnx(base_network(name)) for name in BASE_NAMES}


def base_for_index(index: int) -> str:
    """Cases cycle through the bases: case `index` mutates BASE_NAMES[index % 5]."""
    return BASE_NAMES[index % len(BASE_NAMES)]


# =========================================================================== mutation plumbing


@dataclass(frozen=True)
class Mutant:
    operator: str
    description: str
    data: bytes


# A string field set to this placeholder is turned into invalid UTF-8 of the same length in
# the serialized bytes: protobuf's Python API refuses to store invalid UTF-8 in a string
# field, and an equal length keeps every length prefix valid.
_PLACEHOLDER = "FUZZ_BAD_UTF8"
_INVALID_UTF8 = b"\xff\xfe\xc3\x28\xed\xa0\x80\xc0\xaf\xf8\x88\x80\x80"
assert len(_PLACEHOLDER) == len(_INVALID_UTF8)

EDGE_INTS = (0, -1, 1, 2**7, 2**15, 2**31 - 1, -2**31, 2**62, 2**63 - 1, -2**63)
# An operator mutates the model in place and returns its description (None: not applicable
# to this base), or for byte-level operators returns (description, bytes).
OPERATORS: dict[str, Callable] = {}
_BYTE_LEVEL: set[str] = set()


def _operator(name: str, byte_level: bool = False):
    def register(function: Callable) -> Callable:
        OPERATORS[name] = function
        if byte_level:
            _BYTE_LEVEL.add(name)
        return function
    return register


def case_rng(base: str, seed: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512: the same stream on every run and platform.
    return random.Random(f"{base}/{seed}/{index}")


def make_mutant(base: str, base_model: onnx.ModelProto, seed: int, index: int) -> Mutant:
    """The mutant (base, seed, index): one operator, drawn with equal probability, applied once."""
    rng = case_rng(base, seed, index)
    names = sorted(OPERATORS)
    while True:
        name = rng.choice(names)
        if name in _BYTE_LEVEL:
            outcome = OPERATORS[name](base_model.SerializeToString(), rng)
            if outcome is not None:
                return Mutant(name, outcome[0], outcome[1])
            continue
        model = copy.deepcopy(base_model)
        description = OPERATORS[name](model, rng)
        if description is not None:
            data = model.SerializeToString().replace(_PLACEHOLDER.encode(), _INVALID_UTF8)
            return Mutant(name, description, data)


def _other(rng: random.Random, choices, current):
    """One of `choices` other than `current`: a mutation always changes something."""
    return rng.choice([c for c in choices if not (type(c) is type(current) and c == current)])


def _choose(rng: random.Random, items):
    items = list(items)
    return rng.choice(items) if items else None


def _attributes(model, *types: int) -> list:
    return [(node, attr) for node in model.graph.node for attr in node.attribute if attr.type in types]


def _replace_repeated(field, items) -> None:
    """Sets a repeated message field to `items` (copied first: they may belong to it)."""
    items = [copy.deepcopy(item) for item in items]
    del field[:]
    field.extend(items)


def _set_strings(field, values) -> None:
    del field[:]
    field.extend(values)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# =========================================================================== attribute operators


@_operator("int_attribute")
def _int_attribute(model, rng):
    picked = _choose(rng, _attributes(model, AttributeProto.INT))
    if picked is None:
        return None
    node, attr = picked
    new = _other(rng, EDGE_INTS + (attr.i - 1, attr.i + 1), attr.i)
    description = f"node {node.name}: INT attribute {attr.name} {attr.i} -> {new}"
    attr.i = new
    return description


@_operator("ints_attribute")
def _ints_attribute(model, rng):
    picked = _choose(rng, _attributes(model, AttributeProto.INTS))
    if picked is None:
        return None
    node, attr = picked
    values = list(attr.ints)
    action = rng.choice(("edge", "off_by_one", "append", "drop", "empty"))
    position = rng.randrange(len(values)) if values else 0
    if action == "edge" and values:
        values[position] = _other(rng, EDGE_INTS, values[position])
    elif action == "off_by_one" and values:
        values[position] += rng.choice((-1, 1))
    elif action == "append":
        values.append(rng.choice((1, values[-1] if values else 1)))
    elif action == "drop" and values:
        del values[position]
    else:
        values = []
    description = f"node {node.name}: INTS attribute {attr.name} {list(attr.ints)} -> {values} ({action})"
    del attr.ints[:]
    attr.ints.extend(values)
    return description


def _is_float_attribute(attr) -> bool:
    """A FLOAT, or a scalar TENSOR (the writer stores float parameters as float64 scalars)."""
    return attr.type == AttributeProto.FLOAT or (attr.type == AttributeProto.TENSOR and not attr.t.dims)


def _float_value(attr) -> float:
    return float(attr.f) if attr.type == AttributeProto.FLOAT else float(numpy_helper.to_array(attr.t))


def _set_float(attr, value: float) -> None:
    if attr.type == AttributeProto.FLOAT:
        attr.f = value
    else:
        attr.t.CopyFrom(numpy_helper.from_array(np.array(value, numpy_helper.to_array(attr.t).dtype)))


@_operator("float_attribute")
def _float_attribute(model, rng):
    picked = _choose(rng, [(n, a) for n, a in _attributes(model, AttributeProto.FLOAT, AttributeProto.TENSOR)
                           if _is_float_attribute(a)])
    if picked is None:
        return None
    node, attr = picked
    old = _float_value(attr)
    above = float(np.nextafter(old, np.inf))
    new = _other(rng, (math.nan, math.inf, -math.inf, -0.0, 0.0, 1e38, 1e-45, 1e300, 5e-324, -abs(old) or -1.0,
                       above), old)
    if attr.type == AttributeProto.TENSOR and rng.random() < 0.3:  # the older 32-bit FLOAT spelling
        attr.CopyFrom(helper.make_attribute(attr.name, 0.0))
    _set_float(attr, new)
    kind = AttributeProto.AttributeType.Name(attr.type)
    return f"node {node.name}: {kind} attribute {attr.name} {old!r} -> {_float_value(attr)!r}"


@_operator("string_attribute")
def _string_attribute(model, rng):
    picked = _choose(rng, _attributes(model, AttributeProto.STRING))
    if picked is None:
        return None
    node, attr = picked
    new = _other(rng, (b"\xff\xfe", b"", b"rot13", b"mixed", b"excitatory", b"inhibitory", b"MIXED", b"mixed\x00",
                       b"mixed "), attr.s)
    description = f"node {node.name}: STRING attribute {attr.name} {attr.s!r} -> {new!r}"
    attr.s = new
    return description


@_operator("attribute_removed")
def _attribute_removed(model, rng):
    picked = _choose(rng, _attributes(model, *range(0, 16)))
    if picked is None:
        return None
    node, attr = picked
    _replace_repeated(node.attribute, [a for a in node.attribute if a.name != attr.name])
    return f"node {node.name}: attribute {attr.name} removed"


def _changed_value(attr) -> Any:
    """A different value of the attribute's own type."""
    value = helper.get_attribute_value(attr)
    if attr.type == AttributeProto.TENSOR:
        return numpy_helper.from_array(numpy_helper.to_array(value) * 2 + 1)
    if attr.type == AttributeProto.INT:
        return value + 1
    if attr.type == AttributeProto.FLOAT:
        return value * 2 + 1
    if attr.type == AttributeProto.STRING:
        return b"rot13"
    return [*reversed(value), 1]


@_operator("attribute_duplicated")
def _attribute_duplicated(model, rng):
    picked = _choose(rng, _attributes(model, *range(0, 16)))
    if picked is None:
        return None
    node, attr = picked
    same = rng.random() < 0.5
    duplicate = copy.deepcopy(attr) if same else helper.make_attribute(attr.name, _changed_value(attr))
    node.attribute.append(duplicate)
    return f"node {node.name}: attribute {attr.name} duplicated ({'same value' if same else 'another value'})"


def _as_number(attr) -> float | int:
    """The attribute's value as one finite number (0 when it has none)."""
    if attr.type == AttributeProto.TENSOR:
        value = numpy_helper.to_array(attr.t).flatten()
        value = value[0].item() if value.size else 0
    else:
        value = helper.get_attribute_value(attr)
        value = value[0] if isinstance(value, list) and value else value
    return value if isinstance(value, (int, float)) and math.isfinite(value) else 0


def _converted(attr, target: int):
    """The attribute's value converted to AttributeProto type `target` (for make_attribute)."""
    number = _as_number(attr)
    return {AttributeProto.INT: int(number), AttributeProto.FLOAT: float(number),
            AttributeProto.STRING: str(number).encode(), AttributeProto.INTS: [int(number)],
            AttributeProto.FLOATS: [float(number)],
            AttributeProto.TENSOR: numpy_helper.from_array(np.array(float(number), np.float64))}[target]


@_operator("attribute_retyped")
def _attribute_retyped(model, rng):
    kinds = (AttributeProto.INT, AttributeProto.FLOAT, AttributeProto.STRING, AttributeProto.INTS,
             AttributeProto.TENSOR)
    picked = _choose(rng, _attributes(model, *kinds))
    if picked is None:
        return None
    node, attr = picked
    target = rng.choice([k for k in (*kinds, AttributeProto.FLOATS) if k != attr.type])
    old_name, new_name = AttributeProto.AttributeType.Name(attr.type), AttributeProto.AttributeType.Name(target)
    if rng.random() < 0.25:  # the type tag alone: the value stays in the old type's field
        attr.type = target
        return f"node {node.name}: attribute {attr.name} type tag {old_name} -> {new_name}, value left in place"
    attr.CopyFrom(helper.make_attribute(attr.name, _converted(attr, target)))
    value = _short(helper.get_attribute_value(attr)) if target != AttributeProto.TENSOR else repr(_as_number(attr))
    return f"node {node.name}: attribute {attr.name} {old_name} -> {new_name} {value}"


# =========================================================================== tensor operators


def _pick_tensor(model, rng):
    """(tensor, its array, a label): an initializer or a tensor attribute, each equally likely."""
    tensors = [(t, f"tensor {t.name}") for t in model.graph.initializer]
    tensors += [(a.t, f"tensor attribute {n.name}.{a.name}") for n, a in _attributes(model, AttributeProto.TENSOR)]
    if not tensors:
        return None, None, None
    tensor, label = tensors[rng.randrange(len(tensors))]
    return tensor, numpy_helper.to_array(tensor), label


def _store(tensor, array: np.ndarray) -> None:
    # copy(order="C"), not ascontiguousarray, which turns a scalar into shape (1,)
    tensor.CopyFrom(numpy_helper.from_array(np.asarray(array).copy(order="C"), tensor.name))


def _near_limit(dtype: np.dtype, rng: random.Random):
    """A value within a few units of the type's largest or smallest value."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.choice((int(info.max) - rng.randrange(4), int(info.min) + rng.randrange(4)))
    info = np.finfo(dtype)
    return rng.choice((float(info.max), float(info.min), float(info.tiny), float(info.smallest_subnormal)))


_RETYPES = {np.dtype(np.int64): (np.uint64, np.int32, np.float32, np.float64, np.int16, np.uint8),
            np.dtype(np.float32): (np.float64, np.float16, np.int64, np.int32, np.uint64),
            np.dtype(np.float64): (np.float32, np.float16, np.int64, np.uint64, np.int32)}
# Data type codes written without converting the data (0 UNDEFINED, 8 STRING, 16 BFLOAT16,
# 17 FLOAT8E4M3FN, 22 INT4, 9999 unknown).
_TAG_ONLY_TYPES = (0, 1, 2, 6, 7, 8, 9, 10, 11, 13, 16, 17, 22, 9999)


@_operator("tensor_dtype")
def _tensor_dtype(model, rng):
    tensor, array, label = _pick_tensor(model, rng)
    if tensor is None:
        return None
    action = rng.choice(("same_values", "near_limits", "tag_only"))
    if action == "tag_only":
        code = _other(rng, _TAG_ONLY_TYPES, tensor.data_type)
        description = f"{label}: data_type {tensor.data_type} -> {code}, data unchanged"
        tensor.data_type = code
        return description
    target = np.dtype(rng.choice(_RETYPES[array.dtype]))
    with np.errstate(all="ignore"):  # negative -> unsigned wraps, float -> int truncates: intended
        converted = array.astype(target)
    if action == "near_limits" and converted.size:
        position = rng.randrange(converted.size)
        converted.flat[position] = _near_limit(target, rng)
        action = f"element {position} = {converted.flat[position]!r}"
    _store(tensor, converted)
    return f"{label}: dtype {array.dtype} -> {target} ({action})"


@_operator("tensor_dims")
def _tensor_dims(model, rng):
    tensor, array, label = _pick_tensor(model, rng)
    if tensor is None:
        return None
    shape = list(array.shape)
    axis = rng.randrange(len(shape)) if shape else 0
    action = rng.choice(("plus_one_data_kept", "minus_one_data_kept", "resized_with_data", "added", "removed",
                         "zero", "negative")) if shape else "added"
    if action in ("plus_one_data_kept", "minus_one_data_kept", "zero", "negative") and shape:
        new = {"plus_one_data_kept": shape[axis] + 1, "minus_one_data_kept": shape[axis] - 1, "zero": 0,
               "negative": -1}[action]
        tensor.dims[axis] = new
        return f"{label}: dim {axis} {shape[axis]} -> {new} ({action})"
    if action == "resized_with_data" and shape:
        shape[axis] += rng.choice((-1, 1))
        _store(tensor, np.resize(array, shape))
    elif action == "removed" and len(shape) >= 2:
        axis = rng.randrange(len(shape) - 1)
        shape[axis: axis + 2] = [shape[axis] * shape[axis + 1]]  # two axes merged: the same data
        _store(tensor, array.reshape(shape))
    elif action == "removed":
        del tensor.dims[:]
        action = "removed, data kept"
    else:
        shape.insert(rng.randrange(len(shape) + 1), 1)
        _store(tensor, array.reshape(shape))
        action = "added"
    return f"{label}: shape {tuple(array.shape)} -> {tuple(tensor.dims)} ({action})"


@_operator("tensor_raw_data")
def _tensor_raw_data(model, rng):
    tensor, _, label = _pick_tensor(model, rng)
    if tensor is None or not tensor.raw_data:
        return None
    size = len(tensor.raw_data)
    cut = rng.choice((1, 7, 8, size // 2, size))
    if rng.random() < 0.5:
        tensor.raw_data = tensor.raw_data[: size - cut]
        return f"{label}: raw_data truncated by {cut} of {size} bytes"
    extra = rng.choice((1, 8, size))
    tensor.raw_data = tensor.raw_data + bytes(rng.randrange(256) for _ in range(extra))
    return f"{label}: raw_data extended by {extra} bytes (had {size})"


@_operator("tensor_values")
def _tensor_values(model, rng):
    tensor, array, label = _pick_tensor(model, rng)
    if tensor is None or not array.size:
        return None
    array = array.copy()
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        value = rng.choice((int(info.max), int(info.min), 0, 1, -1, 2**31, int(array.flat[0]) + 1))
    else:
        value = rng.choice((math.nan, math.inf, -math.inf, 1e38, -0.0, float(np.finfo(np.float32).max), 1e-45))
    if rng.random() < 0.5:
        position = rng.randrange(array.size)
        array.flat[position] = value
        where = f"element {position}"
    else:
        array[...] = value
        where = "every element"
    _store(tensor, array)
    return f"{label}: {where} = {value!r}"


def _external(tensor, rng: random.Random) -> str:
    """Points the tensor at external data (a missing file, a path outside the model's folder)."""
    location = rng.choice(("missing.bin", "../../../../../../etc/hostname", "/etc/hostname", "",
                           "nested/../../outside.bin", "../../../../../../dev/zero"))
    length = rng.choice((len(tensor.raw_data), 2**40))
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return f"external data location={location!r} length={length}"


@_operator("tensor_storage")
def _tensor_storage(model, rng):
    tensor, array, label = _pick_tensor(model, rng)
    if tensor is None:
        return None
    action = rng.choice(("typed_field", "typed_field_and_raw", "external"))
    if action == "external":
        return f"{label}: {_external(tensor, rng)}"
    typed = helper.make_tensor(tensor.name, tensor.data_type, array.shape, array.flatten().tolist(), raw=False)
    if action == "typed_field":
        tensor.CopyFrom(typed)
        return f"{label}: values moved from raw_data to the typed field (an equivalent encoding)"
    typed.raw_data = tensor.raw_data
    tensor.CopyFrom(typed)
    return f"{label}: values in both raw_data and the typed field"


# =========================================================================== node operators


def _pick_node(model, rng):
    nodes = model.graph.node
    if not nodes:
        return None, None
    position = rng.randrange(len(nodes))
    return position, nodes[position]


def _tensor_names(model) -> list[str]:
    """Every tensor name the graph knows: graph inputs, node outputs, initializers."""
    graph = model.graph
    return ([v.name for v in graph.input] + [o for n in graph.node for o in n.output]
            + [t.name for t in graph.initializer])


@_operator("node_removed")
def _node_removed(model, rng):
    position, node = _pick_node(model, rng)
    if node is None:
        return None
    name = node.name
    del model.graph.node[position]
    return f"node {name} (position {position}) removed"


@_operator("node_duplicated")
def _node_duplicated(model, rng):
    position, node = _pick_node(model, rng)
    if node is None:
        return None
    duplicate = copy.deepcopy(node)
    action = rng.choice(("same_name", "renamed_same_output", "renamed_own_output"))
    if action != "same_name":
        duplicate.name = node.name + "_copy"
    if action == "renamed_own_output":
        _set_strings(duplicate.output, [duplicate.name])
    nodes = list(model.graph.node)
    _replace_repeated(model.graph.node, nodes[: position + 1] + [duplicate] + nodes[position + 1:])
    return f"node {node.name} duplicated after itself ({action})"


@_operator("node_reordered")
def _node_reordered(model, rng):
    nodes = list(model.graph.node)
    if len(nodes) < 2:
        return None
    action = rng.choice(("moved", "swapped_adjacent", "reversed"))
    if action == "reversed":
        _replace_repeated(model.graph.node, nodes[::-1])
        return "node order reversed"
    source = rng.randrange(len(nodes) - (1 if action == "swapped_adjacent" else 0))
    target = source + 1 if action == "swapped_adjacent" else _other(rng, range(len(nodes)), source)
    if action == "swapped_adjacent":
        nodes[source], nodes[target] = nodes[target], nodes[source]
    else:
        nodes.insert(target, nodes.pop(source))
    _replace_repeated(model.graph.node, nodes)
    return f"node {model.graph.node[target].name} {action}: position {source} -> {target}"


def _rename_everywhere(model, old: str, new: str) -> None:
    """Renames a tensor in every node input/output and graph input/output/value_info."""
    graph = model.graph
    for node in graph.node:
        _set_strings(node.input, [new if name == old else name for name in node.input])
        _set_strings(node.output, [new if name == old else name for name in node.output])
    for entry in (*graph.input, *graph.output, *graph.value_info):
        if entry.name == old:
            entry.name = new


@_operator("node_renamed")
def _node_renamed(model, rng):
    _, node = _pick_node(model, rng)
    if node is None:
        return None
    candidates = ["x_renamed", "", "9bad", "a.b", "a" * 201, "a" * 200, "\u00fcml", "input"]
    others = [n.name for n in model.graph.node if n.name != node.name]
    candidates += [rng.choice(others)] if others else []  # another node's name
    new = rng.choice(candidates)
    old = node.name
    action = rng.choice(("name_only", "name_and_output", "everywhere", "everywhere_with_initializers"))
    node.name = new
    if action == "name_and_output":
        _set_strings(node.output, [new if o == old else o for o in node.output])
    elif action != "name_only":
        _rename_everywhere(model, old, new)
    if action == "everywhere_with_initializers":
        for tensor in model.graph.initializer:
            if tensor.name.startswith(old + "."):
                renamed = new + tensor.name[len(old):]
                _rename_everywhere(model, tensor.name, renamed)
                tensor.name = renamed
    return f"node {old} renamed {new!r} ({action})"


@_operator("node_inputs")
def _node_inputs(model, rng):
    _, node = _pick_node(model, rng)
    if node is None:
        return None
    inputs = list(node.input)
    position = rng.randrange(len(inputs)) if inputs else 0
    action = rng.choice(("renamed_existing", "renamed_unknown", "emptied", "removed", "added", "swapped"))
    if action == "renamed_existing" and inputs:
        inputs[position] = _other(rng, _tensor_names(model), inputs[position])
    elif action == "renamed_unknown" and inputs:
        inputs[position] = "no_such_tensor"
    elif action == "emptied" and inputs:
        inputs[position] = ""  # ONNX's mark of an omitted optional input
    elif action == "removed" and inputs:
        del inputs[position]
    elif action == "swapped" and len(inputs) >= 2:
        other = (position + 1) % len(inputs)
        inputs[position], inputs[other] = inputs[other], inputs[position]
    else:
        inputs.insert(rng.randrange(len(inputs) + 1), rng.choice(_tensor_names(model)))
        action = "added"
    description = f"node {node.name}: inputs {list(node.input)} -> {inputs} ({action})"
    _set_strings(node.input, inputs)
    return description


@_operator("node_outputs")
def _node_outputs(model, rng):
    _, node = _pick_node(model, rng)
    if node is None:
        return None
    action = rng.choice(("renamed", "second_added", "removed", "emptied", "other_node_output"))
    outputs = {"renamed": [node.name + "_out"], "second_added": [*node.output, node.name + "_extra"],
               "removed": [], "emptied": [""],
               "other_node_output": [_other(rng, [o for n in model.graph.node for o in n.output], node.output[0]
                                            if node.output else None)]}[action]
    description = f"node {node.name}: outputs {list(node.output)} -> {outputs} ({action})"
    _set_strings(node.output, outputs)
    return description


@_operator("node_op")
def _node_op(model, rng):
    _, node = _pick_node(model, rng)
    if node is None:
        return None
    if rng.random() < 0.5:
        new = _other(rng, ("LoihiDense", "LoihiConv", "LoihiSum", "LoihiLIF", "Identity", "LoihiFoo", "",
                           "loihidense", "Relu"), node.op_type)
        description = f"node {node.name}: op_type {node.op_type} -> {new!r}"
        node.op_type = new
    else:
        new = _other(rng, ("", "ai.onnx", DOMAIN + ".v2", "com.microsoft", DOMAIN.upper(), DOMAIN), node.domain)
        description = f"node {node.name}: domain {node.domain!r} -> {new!r}"
        node.domain = new
    return description


# =========================================================================== graph interface, opsets


def _mutate_dim(dims, rng: random.Random) -> str:
    """Changes, removes or adds one dimension of a declared shape."""
    action = rng.choice(("value", "param", "unknown", "removed", "added"))
    position = rng.randrange(len(dims)) if len(dims) else 0
    if action == "added" or not len(dims):
        dims.add().dim_value = 1
        return "a dim 1 added"
    if action == "removed":
        del dims[position]
        return f"dim {position} removed"
    dim = dims[position]
    if action == "param":
        dim.dim_param = "N"
        return f"dim {position} -> 'N'"
    if action == "unknown":
        dim.Clear()
        return f"dim {position} -> unknown"
    new = rng.choice((dim.dim_value + 1, dim.dim_value - 1, 0, -1, 2**62))
    dim.dim_value = new
    return f"dim {position} -> {new}"


@_operator("graph_interface")
def _graph_interface(model, rng):
    kind = rng.choice(("input", "output", "value_info"))
    entries = getattr(model.graph, kind)
    if not entries:
        return None
    position = rng.randrange(len(entries))
    entry, name = entries[position], entries[position].name
    action = rng.choice(("elem_type", "dim", "shape_removed", "type_removed", "removed", "duplicated", "added",
                         "renamed"))
    if action == "elem_type":
        new = _other(rng, (TensorProto.UINT8, TensorProto.INT64, TensorProto.FLOAT, TensorProto.INT8,
                           TensorProto.UINT16, TensorProto.BOOL, 0, 1000), entry.type.tensor_type.elem_type)
        entry.type.tensor_type.elem_type = new
        action = f"elem_type -> {new}"
    elif action == "dim":
        action = _mutate_dim(entry.type.tensor_type.shape.dim, rng)
    elif action == "shape_removed":
        entry.type.tensor_type.ClearField("shape")
    elif action == "type_removed":
        entry.ClearField("type")
    elif action == "removed":
        del entries[position]
    elif action == "duplicated":
        entries.add().CopyFrom(entry)
    elif action == "added":
        new_name = rng.choice(("extra", f"{model.graph.node[0].name}.previous", "input"))
        entries.add().CopyFrom(helper.make_tensor_value_info(new_name, TensorProto.UINT8, ["batch", 4]))
        action = f"added {new_name!r}"
    else:
        entry.name = rng.choice((name + "_renamed", name + ".previous", ""))
        action = f"renamed {entry.name!r}"
    return f"graph {kind} {name!r}: {action}"


@_operator("opset")
def _opset(model, rng):
    imports = model.opset_import
    position = rng.randrange(len(imports))
    entry = imports[position]
    action = rng.choice(("version", "removed", "duplicated", "added"))
    if action == "version":
        old = entry.version
        entry.version = _other(rng, (0, 1, 3, -1, 9, 13, 16, 18, 21, 9999, 2**62) if entry.domain == ""
                               else (0, 1, 3, -1, 2**62), old)
        return f"opset {entry.domain or 'ai.onnx'} version {old} -> {entry.version}"
    if action == "removed":
        del imports[position]
        return f"opset {entry.domain or 'ai.onnx'} removed"
    if action == "duplicated":
        duplicate = imports.add()
        duplicate.CopyFrom(entry)
        duplicate.version = rng.choice((entry.version, entry.version + 1))
        return f"opset {entry.domain or 'ai.onnx'} listed twice (versions {entry.version}, {duplicate.version})"
    added = imports.add()
    added.domain, added.version = "com.example", 1
    return "opset com.example 1 added"


# =========================================================================== metadata


def _metadata(model) -> dict[str, Any]:
    return {p.key: p for p in model.metadata_props}


def _set_metadata(model, key: str, value: str) -> None:
    entry = _metadata(model).get(key) or model.metadata_props.add()
    entry.key, entry.value = key, value


@_operator("metadata_invalid_utf8")
def _metadata_invalid_utf8(model, rng):
    entry = model.metadata_props[rng.randrange(len(model.metadata_props))]
    key = entry.key
    if rng.random() < 0.5:
        entry.value = rng.choice(("", entry.value[:3])) + _PLACEHOLDER
        return f"metadata {key!r}: value -> invalid UTF-8 bytes"
    entry.key = _PLACEHOLDER
    return f"metadata key {key!r} -> invalid UTF-8 bytes"


@_operator("name_invalid_utf8")
def _name_invalid_utf8(model, rng):
    """A name the loader reads (node, tensor, op, domain, attribute) made invalid UTF-8."""
    graph = model.graph
    node = graph.node[rng.randrange(len(graph.node))]
    choices = {
        f"node {node.name} name": lambda: setattr(node, "name", _PLACEHOLDER),
        f"node {node.name} op_type": lambda: setattr(node, "op_type", _PLACEHOLDER),
        f"node {node.name} domain": lambda: setattr(node, "domain", _PLACEHOLDER),
        f"node {node.name} input 0": lambda: _set_strings(node.input, [_PLACEHOLDER, *node.input[1:]]),
        f"graph input {graph.input[0].name}": lambda: setattr(graph.input[0], "name", _PLACEHOLDER),
        f"initializer {graph.initializer[0].name}": lambda: setattr(graph.initializer[0], "name", _PLACEHOLDER),
        f"opset domain {model.opset_import[-1].domain}": lambda: setattr(model.opset_import[-1], "domain",
                                                                         _PLACEHOLDER),
    }
    if node.attribute:
        choices[f"node {node.name} attribute {node.attribute[0].name} name"] = (
            lambda: setattr(node.attribute[0], "name", _PLACEHOLDER))
    what = rng.choice(sorted(choices))
    choices[what]()
    return f"{what} -> invalid UTF-8 bytes"


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and value else None


@_operator("metadata_json_like")
def _metadata_json_like(model, rng):
    key = rng.choice(sorted(_metadata(model)))
    text = _metadata(model)[key].value
    if _json_object(text) is not None and rng.random() < 0.3:  # JSON allows it; which value wins is up to the reader
        field = rng.choice(sorted(_json_object(text)))
        _set_metadata(model, key, text.rstrip()[:-1] + f', "{field}": "rot13"}}')
        return f"metadata {key!r}: JSON key {field!r} given twice"
    value = _other(rng, ("123", "true", "null", "[]", "{}", '"text"', "NaN", "1e400", "-0", "0", '{"a": 1}', "1.5"),
                   text)
    _set_metadata(model, key, value)
    return f"metadata {key!r} -> {value!r}"


@_operator("metadata_time_steps")
def _metadata_time_steps(model, rng):
    if rng.random() < 0.7:
        key, values = "time_steps", (10**12, 0, -1, "1e3", 10**6 + 1, 2**63, "8.0", " 8", "+8", "\uff18", "0x8",
                                     "1_0", "", "8\n", "08")
    else:
        key, values = "eval_seed", (-1, 2**64, "x", 10**30, " 0", "0.5", "\uff10")
    value = _other(rng, [str(v) for v in values], _metadata(model)[key].value)
    _set_metadata(model, key, value)
    return f"metadata {key!r} -> {value!r}"


@_operator("metadata_encoding")
def _metadata_encoding(model, rng):
    if rng.random() < 0.6:
        key, values = "encoding", ("rot13", "", "BERNOULLI", "bernoulli ", "poisson", "rate", "direct", "bernoulli")
    else:
        key, values = READOUT_KEY, ("potential", "spikes", "", "Spikes", "rot13", None)
    current = _metadata(model)[key].value if key in _metadata(model) else None
    value = _other(rng, values, current)
    if value is None:
        _replace_repeated(model.metadata_props, [p for p in model.metadata_props if p.key != key])
        return f"metadata {key!r} removed"
    _set_metadata(model, key, value)
    return f"metadata {key!r} -> {value!r}"


# Values of the embedded hw_config's fields, and pairs the issue names.
_HW_EDGE_VALUES = (2**70, -3, -1, 0, 1, 1000, 100, 2**31, 2**63, 1.5, 16.0, "8", None, True, math.nan, math.inf, [], {})
_HW_NAMED_EDGES = (("bias_mant_bits", 2**70), ("activation_shift", -3), ("state_bits", 1), ("state_bits", 1000),
                   ("vth_shift", 100), ("decay_bits", 62), ("weight_bits", 63), ("delay_bits", 64),
                   ("vth_bits", 64), ("weight_exp_min", 5), ("bias_exp_min", 8), ("name", 5))
# Whole texts in place of the JSON object; the deep nesting checks the JSON parser's recursion.
_HW_TEXTS = ("[]", "null", "{", '"loihi2"', "", "[" * 100_000 + "]" * 100_000, '{"a": ' * 50_000 + "1" + "}" * 50_000)


# Values each accepted on their own, together at the limits of the integer arithmetic.
_HW_COMBINATIONS = ({"state_bits": 2}, {"state_bits": 32, "activation_shift": 8}, {"vth_bits": 32, "vth_shift": 8},
                    {"decay_bits": 16}, {"weight_bits": 16, "num_weight_bits_max": 16}, {"bias_mant_bits": 32},
                    {"bias_mant_bits": 1}, {"activation_bits": 1}, {"delay_bits": 1},
                    {"weight_exp_min": 8, "weight_exp_max": 8}, {"bias_exp_min": 16, "bias_exp_max": 16},
                    {"neurons_per_core": 1}, {"synaptic_memory_bits_per_core": 1}, {"fan_in_axons_per_core": 1},
                    {"state_bits": 32, "activation_shift": 8, "weight_exp_max": 8, "vth_bits": 32, "vth_shift": 8})


def _hw_bound(field: str, rng: random.Random):
    """A field's lowest or highest accepted value (export.hw_config.FIELD_RANGES), else an edge value."""
    ranges = getattr(hw_config, "FIELD_RANGES", {})
    return rng.choice(ranges[field]) if field in ranges else rng.choice(_HW_EDGE_VALUES)


@_operator("metadata_hw_config")
def _metadata_hw_config(model, rng):
    raw = json.loads(_metadata(model)["hw_config"].value)
    action = rng.choice(("edge", "named_edge", "range_bound", "combination", "removed", "unknown_added",
                         "duplicate_key", "text"))
    field = rng.choice(sorted(raw))
    if action == "text":
        text = rng.choice(_HW_TEXTS)
        _set_metadata(model, "hw_config", text)
        return f"metadata 'hw_config' -> {_short(text, 30)} ({len(text)} characters)"
    if action == "combination":
        changes = rng.choice(_HW_COMBINATIONS)
        raw.update(changes)
        detail = ", ".join(f"{k} = {v}" for k, v in changes.items())
    elif action in ("edge", "named_edge", "range_bound"):
        field, value = {"edge": lambda: (field, rng.choice(_HW_EDGE_VALUES)),
                        "named_edge": lambda: rng.choice(_HW_NAMED_EDGES),
                        "range_bound": lambda: (field, _hw_bound(field, rng))}[action]()
        raw[field] = value
        detail = f"{field} = {value!r}"
    elif action == "removed":
        del raw[field]
        detail = f"{field} removed"
    elif action == "unknown_added":
        raw["rot13"] = 1
        detail = "unknown field 'rot13' added"
    text = json.dumps(raw)
    if action == "duplicate_key":  # JSON allows it; Python keeps the last value
        text = text[:-1] + f', "{field}": {json.dumps(rng.choice(_HW_EDGE_VALUES))}}}'
        detail = f"{field} given twice"
    _set_metadata(model, "hw_config", text)
    return f"metadata 'hw_config': {detail}"


_PROVENANCE_WRONG = (("training_seed", '"seven"'), ("training_seed", "7.5"), ("trained_test_accuracy", '"high"'),
                     ("training_config", "[]"), ("quantization_report", "1"), ("source_checkpoint", "123"),
                     ("export_versions", "null"))


@_operator("metadata_keys")
def _metadata_keys(model, rng):
    props = list(model.metadata_props)
    entry = props[rng.randrange(len(props))]
    action = rng.choice(("removed", "duplicated_same", "duplicated_other", "unknown_added", "renamed_upper",
                         "provenance_wrong_type", "schema"))
    if action == "removed":
        _replace_repeated(model.metadata_props, [p for p in props if p.key != entry.key])
        return f"metadata {entry.key!r} removed"
    if action.startswith("duplicated"):
        duplicate = model.metadata_props.add()
        duplicate.key = entry.key
        duplicate.value = entry.value if action == "duplicated_same" else "rot13"
        return f"metadata {entry.key!r} listed twice ({action})"
    if action == "unknown_added":
        _set_metadata(model, "zz_unknown", "1")
        return "metadata 'zz_unknown' = '1' added"
    if action == "renamed_upper":
        old, entry.key = entry.key, entry.key.upper()
        return f"metadata key {old!r} -> {entry.key!r}"
    key, value = rng.choice(_PROVENANCE_WRONG) if action == "provenance_wrong_type" else (
        rng.choice((("schema", "stbp-loihi-network "), ("schema_version", "1"), ("schema_version", "3"),
                    ("schema_version", "02"), ("schema_version", "2.0"), ("schema", ""))))
    _set_metadata(model, key, value)
    return f"metadata {key!r} -> {value!r}"


@_operator("conv_geometry")
def _conv_geometry(model, rng):
    convs = [n for n in model.graph.node if n.op_type == "LoihiConv"]
    if not convs:
        return None
    node = rng.choice(convs)
    name, values = rng.choice((("pads", [1000] * 4), ("strides", [1000] * 2), ("kernel_shape", [1000, 1000]),
                               ("pads", [2**31 - 1] * 4), ("strides", [0, 0]), ("pads", [-1] * 4),
                               ("kernel_shape", [0, 0]), ("strides", [2, 2]), ("pads", [2] * 4),
                               ("kernel_shape", [9, 9]), ("pads", [1, 1, 2, 2]), ("strides", [2**62] * 2)))
    attr = next(a for a in node.attribute if a.name == name)
    description = f"node {node.name}: {name} {list(attr.ints)} -> {values}"
    _set_strings(attr.ints, values)
    return description


# =========================================================================== byte-level operators


@_operator("byte_flip", byte_level=True)
def _byte_flip(data: bytes, rng):
    buffer = bytearray(data)
    positions = sorted(rng.randrange(len(buffer)) for _ in range(rng.randint(1, 8)))
    for position in positions:
        buffer[position] ^= rng.randint(1, 255)
    return f"bytes flipped at {positions} of {len(buffer)}", bytes(buffer)


@_operator("file_truncated", byte_level=True)
def _file_truncated(data: bytes, rng):
    keep = rng.randrange(len(data))
    return f"file truncated to {keep} of {len(data)} bytes", data[:keep]


def _fragment(rng: random.Random) -> tuple[str, bytes]:
    """A serialized ModelProto fragment: appended to a file, protobuf merges it into the model
    (repeated fields gain entries, scalar fields take the fragment's value)."""
    fragment = onnx.ModelProto()
    kind = rng.choice(("metadata", "node", "opset", "initializer"))
    if kind == "metadata":
        entry = fragment.metadata_props.add()
        entry.key, entry.value = rng.choice((("time_steps", "9"), ("encoding", "rot13"), ("schema_version", "2")))
        what = f"metadata {entry.key}={entry.value!r}"
    elif kind == "node":
        fragment.graph.node.add().CopyFrom(helper.make_node("Identity", ["input"], ["extra"], name="extra"))
        what = "node extra (Identity of input)"
    elif kind == "opset":
        fragment.opset_import.add().CopyFrom(helper.make_opsetid(DOMAIN, 2))
        what = f"opset {DOMAIN} 2 again"
    else:
        fragment.graph.initializer.add().CopyFrom(numpy_helper.from_array(np.zeros(3, np.int64), "unused.weight"))
        what = "initializer unused.weight"
    return what, fragment.SerializeToString()


@_operator("garbage_appended", byte_level=True)
def _garbage_appended(data: bytes, rng):
    if rng.random() < 0.5:
        garbage = rng.randbytes(rng.choice((1, 2, 16, 64)))
        return f"{len(garbage)} random bytes appended", data + garbage
    what, fragment = _fragment(rng)
    return f"protobuf fragment appended ({what})", data + fragment


# The widest hw_config FIELD_RANGES accepts.
_WIDEST_HW = {"state_bits": 32, "activation_shift": 8, "weight_exp_min": -8, "weight_exp_max": 8, "vth_bits": 32,
              "vth_shift": 8, "bias_mant_bits": 32, "bias_exp_min": 0, "bias_exp_max": 16, "decay_bits": 16}


def _parameter_limits(hw: dict) -> dict[str, tuple[int, ...]]:
    """Each integer node parameter's extreme values under the hw_config `hw` (a JSON dict)."""
    decay_max = (1 << hw["decay_bits"]) - 1
    return {"weight_exp": (hw["weight_exp_max"], hw["weight_exp_min"]), "vth": ((1 << hw["vth_bits"]) - 1, 0, 1),
            "bias_exp": (hw["bias_exp_max"],), "du": (0, decay_max), "dv": (0, decay_max),
            "bias_mant": ((1 << (hw["bias_mant_bits"] - 1)) - 1, -(1 << (hw["bias_mant_bits"] - 1)))}


@_operator("arithmetic_extremes")
def _arithmetic_extremes(model, rng):
    """Parameters at the limits of the file's own hw_config (one Lava runs) or of the widest
    one: a file every range check accepts, whose integer arithmetic runs at its extremes."""
    hw = json.loads(_metadata(model)["hw_config"].value)
    widest = rng.random() < 0.5
    if widest:
        hw.update(_WIDEST_HW)
        _set_metadata(model, "hw_config", json.dumps(hw))
    limits, changed = _parameter_limits(hw), []
    for node, attr in _attributes(model, AttributeProto.INT):
        if attr.name in limits and rng.random() < 0.5:
            attr.i = rng.choice(limits[attr.name])
            changed.append(f"{node.name}.{attr.name}={attr.i}")
    for tensor in model.graph.initializer:
        if tensor.name.endswith(".bias_mant") and rng.random() < 0.5:
            array = numpy_helper.to_array(tensor).copy()
            array[...] = rng.choice(limits["bias_mant"])
            _store(tensor, array)
            changed.append(f"{tensor.name}={array.flat[0]}")
    return f"{'widest' if widest else 'own'} hw_config; {', '.join(changed) or 'parameters unchanged'}"


# =========================================================================== model extras, stacking


def _local_function(model, node) -> str:
    """A model-local function defining the node's op (ONNX runtimes would run it instead)."""
    inputs = [f"x{i}" for i in range(max(1, len(node.input)))]
    body = [helper.make_node("Identity", [inputs[0]], ["y"])]
    model.functions.append(helper.make_function(node.domain, node.op_type, inputs, ["y"], body,
                                                [helper.make_opsetid("", 17)],
                                                attributes=[a.name for a in node.attribute]))
    return f"a local function {node.domain}.{node.op_type} (Identity) added"


@_operator("model_extras")
def _model_extras(model, rng):
    """Parts of ONNX the writer never uses: each changes what another ONNX reader sees."""
    node = model.graph.node[rng.randrange(len(model.graph.node))]
    action = rng.choice(("function", "overload", "sparse_initializer", "training_info", "quantization_annotation"))
    if action == "function":
        return _local_function(model, node)
    if action == "overload":
        node.overload = "v2"
        return f"node {node.name}: overload 'v2'"
    if action == "sparse_initializer":
        values = numpy_helper.from_array(np.array([1], np.int64), "sparse_extra")
        indices = numpy_helper.from_array(np.array([0], np.int64), "")
        model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
        return "a sparse initializer 'sparse_extra' added"
    if action == "training_info":
        model.training_info.add().algorithm.name = "extra"
        return "a training_info entry added"
    annotation = model.graph.quantization_annotation.add()
    annotation.tensor_name = node.name
    return f"a quantization annotation of {node.name} added"


@_operator("stacked")
def _stacked(model, rng):
    """Two or three other model-level operators applied one after the other."""
    names = sorted(n for n in OPERATORS if n not in _BYTE_LEVEL and n != "stacked")
    applied, wanted = [], rng.choice((2, 3))
    while len(applied) < wanted:
        before = copy.deepcopy(model)
        try:
            description = OPERATORS[rng.choice(names)](model, rng)
        except Exception:  # noqa: BLE001 -- an earlier step made a part unreadable: try another
            model.CopyFrom(before)
            continue
        if description is not None:
            applied.append(description)
    return " ; then ".join(applied)


# =========================================================================== canonical form


def _canonical_float(value: float):
    return "nan" if math.isnan(value) else float(value)


def _canonical_attribute(attr) -> tuple:
    kind = AttributeProto.AttributeType.Name(attr.type) if attr.type in AttributeProto.AttributeType.values() \
        else str(attr.type)
    if attr.type == AttributeProto.FLOAT or (attr.type == AttributeProto.TENSOR and not attr.t.dims
                                             and attr.t.data_type == TensorProto.DOUBLE):
        # The loader reads a 32-bit FLOAT as the older spelling of the float64 scalar the
        # writer uses: the same parameter, the same value (float32 -> float64 is exact).
        kind, value = "float parameter", _canonical_float(_float_value(attr))
    elif attr.type == AttributeProto.FLOAT:
        value = _canonical_float(attr.f)
    elif attr.type == AttributeProto.FLOATS:
        value = tuple(_canonical_float(f) for f in attr.floats)
    elif attr.type == AttributeProto.TENSOR:
        value = _canonical_tensor(attr.t)
    elif attr.type in (AttributeProto.INT, AttributeProto.STRING, AttributeProto.INTS, AttributeProto.STRINGS):
        value = helper.get_attribute_value(attr)
        value = tuple(value) if isinstance(value, list) else value
    else:  # tensors, graphs, ...: the whole message, without its documentation
        stripped = copy.deepcopy(attr)
        stripped.ClearField("doc_string")
        value = stripped.SerializeToString()
    return (attr.name, kind, value, attr.ref_attr_name)


def _canonical_node(node) -> dict:
    return {"name": node.name, "op_type": node.op_type, "domain": node.domain, "overload": node.overload,
            "inputs": list(node.input), "outputs": list(node.output),
            "attributes": sorted((_canonical_attribute(a) for a in node.attribute), key=repr)}


def _canonical_tensor(tensor) -> tuple:
    array = numpy_helper.to_array(tensor)
    if np.issubdtype(array.dtype, np.floating):  # every NaN alike (payload and sign ignored)
        array = np.where(np.isnan(array), np.nan, array)
    return (tensor.name, str(array.dtype), tuple(array.shape), array.tobytes())


def _canonical_value_info(entry) -> tuple:
    if entry.type.WhichOneof("value") != "tensor_type":
        return (entry.name, f"type {entry.type.WhichOneof('value')}")
    tensor_type = entry.type.tensor_type
    dims = None if not tensor_type.HasField("shape") else tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
        for d in tensor_type.shape.dim)
    return (entry.name, tensor_type.elem_type, dims)


def _unique_pairs(pairs: list) -> dict:
    """A JSON object; a key given twice is kept as a visible difference (JSON readers disagree
    on which value wins; Python's json keeps the last)."""
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set = set()
    twice = sorted({key for key, _ in pairs if key in seen or seen.add(key)})
    return {"(keys given twice)": twice, **result}


def _json_tree(value):
    """Parsed JSON with every scalar tagged by its type (True != 1, 16 != 16.0) and NaN equal to NaN."""
    if isinstance(value, dict):
        return {key: _json_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_tree(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def _canonical_metadata_value(value, legacy_text: bool = False):
    """JSON-equal values compare equal ('[1,2]' and '[1, 2]'); bytes (invalid UTF-8) stay bytes.
    legacy_text: a provenance value of an artifact without metadata_format, where a string
    was written as it was (export.artifact): text that is not JSON is that string."""
    if isinstance(value, bytes):
        return ("bytes", value)
    try:
        return {"json": _json_tree(json.loads(value, object_pairs_hook=_unique_pairs))}
    except (ValueError, RecursionError):
        return {"json": _json_tree(value)} if legacy_text else ("text", value)


def _with_hw_defaults(value):
    """The embedded hw_config with HardwareConfig's defaults for the fields it omits (a missing
    'source' reads as ''): a default is what the file describes, not a difference."""
    tree = value.get("json") if isinstance(value, dict) else None
    if not isinstance(tree, dict):
        return value
    defaults = {f.name: _json_tree(f.default) for f in dataclasses.fields(HardwareConfig)
                if f.default is not dataclasses.MISSING}
    return {"json": {**defaults, **tree}}


def _canonical_metadata(props) -> dict:
    keys = [entry.key for entry in props]
    legacy = METADATA_FORMAT_KEY not in keys
    values: dict[Any, list] = {}
    for entry in props:
        provenance = entry.key not in (*_OWN_METADATA_KEYS, READOUT_KEY, METADATA_FORMAT_KEY)
        value = _canonical_metadata_value(entry.value, legacy and provenance)
        if entry.key == "hw_config":
            value = _with_hw_defaults(value)
        values.setdefault(entry.key, []).append(value)
    # Documented defaults (export.artifact), not differences: no readout means spikes, and no
    # metadata_format means the older provenance format, which the writer re-writes as JSON.
    values.setdefault(READOUT_KEY, [_canonical_metadata_value("spikes")])
    values.setdefault(METADATA_FORMAT_KEY, [_canonical_metadata_value("json")])
    return values


def canonical_model(model: onnx.ModelProto) -> dict[str, Any]:
    """What a reader of the file sees as the network (see the module docstring); ignores
    doc strings, producer, ir_version and model_version, and the order of attributes,
    initializers, value_info and opset imports (none of which carries meaning)."""
    graph = model.graph
    return {
        "opset_import": sorted((o.domain, o.version) for o in model.opset_import),
        "metadata": _canonical_metadata(model.metadata_props),
        "graph.input": [_canonical_value_info(v) for v in graph.input],
        "graph.output": [_canonical_value_info(v) for v in graph.output],
        "graph.value_info": sorted((_canonical_value_info(v) for v in graph.value_info), key=repr),
        "node": [_canonical_node(n) for n in graph.node],
        "initializer": sorted((_canonical_tensor(t) for t in graph.initializer), key=lambda t: (t[0], repr(t[1:3]))),
        "sparse_initializer": len(graph.sparse_initializer),
        "functions": [f"{f.domain}.{f.name}" for f in model.functions],
        "training_info": len(model.training_info),
        "quantization_annotation": len(graph.quantization_annotation),
    }


def first_difference(file_side, written_side, where: str = "") -> str | None:
    """The first place where two canonical forms differ, as 'path: file value != written value'."""
    if isinstance(file_side, dict) and isinstance(written_side, dict):
        for key in [*file_side, *(k for k in written_side if k not in file_side)]:
            if key not in file_side or key not in written_side:
                side = "the file" if key in file_side else "the re-written network"
                return f"{where}{_short(key)}: only in {side}"
            found = first_difference(file_side[key], written_side[key], f"{where}{key}.")
            if found:
                return found
        return None
    if isinstance(file_side, list) and isinstance(written_side, list):
        for position, (a, b) in enumerate(zip(file_side, written_side)):
            label = f"[{position}:{a['name']}]" if isinstance(a, dict) and "name" in a else f"[{position}]"
            found = first_difference(a, b, where.rstrip(".") + label + ".")
            if found:
                return found
        if len(file_side) != len(written_side):
            return f"{where.rstrip('.')}: {len(file_side)} entries in the file, {len(written_side)} re-written"
        return None
    if file_side != written_side:
        return f"{where.rstrip('.')}: {_short(file_side)} in the file != {_short(written_side)} re-written"
    return None


# =========================================================================== classification


class CaseTimeout(BaseException):
    """Raised by the alarm when a case runs past its timeout (a BaseException, so that the
    loader's `except Exception` clauses cannot swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raises CaseTimeout in the main thread after `seconds` (wall clock); Python-level loops
    only: a hang inside one C call is caught by bench_fuzz's parent process instead."""
    def expire(signum, frame):
        raise CaseTimeout(f"no result within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _where_raised(exc: BaseException) -> str:
    """The innermost frame inside this repository, as 'file:line in function'."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith(str(REPO_ROOT)) and "/.venv/" not in f.filename]
    if not frames:
        return "outside the repository"
    frame = frames[-1]
    return f"{Path(frame.filename).relative_to(REPO_ROOT)}:{frame.lineno} in {frame.name}"


def describe_exception(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {_short(lines[0], 300)} [{_where_raised(exc)}]"


def _judge_refusal(exc: StbpError, path: Path) -> tuple[str, str]:
    message = str(exc)
    if "\n" in message.strip() or str(path) not in message:
        why = "several lines" if "\n" in message.strip() else "the message does not name the file"
        return "traceback", f"{describe_exception(exc)} ({why})"
    return "clean", describe_exception(exc)


def faithfulness_difference(path: Path, network: ExportedNetwork) -> str | None:
    """None when the loaded network, written back with to_onnx, is the file's own network."""
    # External data is not read (the loader refuses it): nothing outside the file is opened.
    described = onnx.load(str(path), load_external_data=False)
    try:
        written = to_onnx(network)
    except Exception as exc:  # the loader accepted what the writer cannot write
        return f"to_onnx cannot write the loaded network back: {describe_exception(exc)}"
    return first_difference(canonical_model(described), canonical_model(written))


def _emulation_smoke(network: ExportedNetwork, seed: int) -> str | None:
    """Runs the emulator on SMOKE_SAMPLES random spike trains; returns its StbpError (allowed:
    the run is refused with a message) or the first RuntimeWarning (an overflow numpy noticed),
    if any. Any other exception propagates."""
    rng = np.random.default_rng(seed)
    spikes = rng.integers(0, 2, size=(SMOKE_SAMPLES, network.time_steps, *network.input_shape), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            emulate(network, spikes)
        except StbpError as exc:
            return f"emulator refused: {describe_exception(exc)}"
    noticed = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    return f"emulator warned: {noticed[0].message} ({Path(noticed[0].filename).name}:{noticed[0].lineno})" \
        if noticed else None


def classify_file(path: Path, timeout_s: float, seed: int = 0) -> tuple[str, str, str]:
    """(class, phase, detail) of one artifact file: see CLASSES in the module docstring."""
    phase = "load"
    try:
        with deadline(timeout_s):
            try:
                network = load_artifact(path)
            except StbpError as exc:
                kind, detail = _judge_refusal(exc, path)
                return kind, phase, detail
            phase = "compare"
            difference = faithfulness_difference(path, network)
            if difference:
                return "different", phase, difference
            phase = "emulate"
            return "loaded", phase, _emulation_smoke(network, seed) or ""
    except CaseTimeout as exc:
        return "hang", phase, str(exc)
    except Exception as exc:  # noqa: BLE001 -- the point: anything but a StbpError is a finding
        return "traceback", phase, describe_exception(exc)


@dataclass
class CaseResult:
    base: str
    seed: int
    index: int
    operator: str
    description: str
    kind: str
    phase: str
    detail: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mutant_path(directory: Path, base: str, seed: int, index: int) -> Path:
    return Path(directory) / f"{base}-s{seed}-i{index}.onnx"


def run_case(base_models_by_name: dict[str, onnx.ModelProto], seed: int, index: int, directory: Path,
             timeout_s: float, keep: bool = False) -> CaseResult:
    """Writes mutant (base_for_index(index), seed, index) into `directory`, classifies it and
    removes it again (unless keep). timeout_s: seconds for load + compare + emulation."""
    base = base_for_index(index)
    started = time.perf_counter()
    mutant = make_mutant(base, base_models_by_name[base], seed, index)
    path = mutant_path(directory, base, seed, index)
    path.write_bytes(mutant.data)
    try:
        kind, phase, detail = classify_file(path, timeout_s, seed=index)
    finally:
        if not keep:
            path.unlink(missing_ok=True)
    return CaseResult(base, seed, index, mutant.operator, mutant.description, kind, phase, detail,
                      round(time.perf_counter() - started, 4))
