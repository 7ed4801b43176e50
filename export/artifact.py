"""The deployable artifact: one self-describing ONNX file per exported network.

Graph (per time step; opens in Netron, valid under `onnx.checker`):

    input_spikes (batch, *input_shape) uint8 -> Flatten -> Cast int64
      -> per layer: MatMul(spikes, layer{i}.weights_t)     (dense)
                    or LoihiConv(spikes, layer{i}.kernel)  (conv; avgpool folded in)
                 -> LoihiDense scaling -> LoihiLIF -> spikes (flat, C order)

`LoihiLIF` and `LoihiDense` live in the custom domain `ai.stbp_loihi`; their attributes
hold the integer parameters (du, dv, vth, bias_exp, weight_exp, num_weight_bits,
sign_mode) and their inputs the integer tensors (bias_mant). The float parameters the
network was trained with travel along (`layer{i}.weight_float`, `layer{i}.bias_float`,
attributes tau and v_threshold) so Lava's floating-point model can run the trained
network from this file alone. Model metadata: schema version, hw config, encoding, time
steps, input shape, evaluation seed, the quantization report and the versions/seed of the
run that produced it.

Reading needs onnx and numpy only (no torch).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.conv import ConvGeometry, conv_matrix, validate_geometry
from export.hw_config import HardwareConfig, HardwareConfigError, hardware_config_from_dict

SCHEMA_NAME = "stbp-loihi-network"
SCHEMA_VERSION = 1
DOMAIN = "ai.stbp_loihi"
INPUT_NAME = "input_spikes"
OUTPUT_NAME = "output_spikes"


class ArtifactError(ValueError):
    """An artifact file is missing, of an unknown schema, or its tensors are wrong."""


@dataclass(frozen=True)
class ExportedLayer:
    """One synaptic layer + LIF population in Loihi integer form, with its float origin.

    kind: 'dense' or 'conv' (an average pool before it is already folded in, see export.conv).
    weights: int64 weight mantissas, dense (out, in) or conv (out_ch, in_ch, kh, kw), already
        within the sign mode's range and on its grid, so Lava's clip/truncate keep them.
    in_shape: conv only, the (C, H, W) input map; stride, padding: conv only.
    bias_mant: (neurons,) int64, one per neuron; bias in v units = bias_mant << bias_exp.
    scale: weight units per potential unit of the trained network (w_int ~= w * scale).
    weight_float, bias_float, tau, v_threshold: the trained float parameters (same shapes).
    """

    name: str
    weights: np.ndarray
    weight_exp: int
    num_weight_bits: int
    sign_mode: str
    bias_mant: np.ndarray
    bias_exp: int
    vth: int
    du: int
    dv: int
    scale: float
    weight_float: np.ndarray
    bias_float: np.ndarray
    tau: float
    v_threshold: float
    kind: str = "dense"
    in_shape: tuple[int, ...] = ()
    stride: int = 1
    padding: int = 0

    @property
    def geometry(self) -> ConvGeometry:
        return ConvGeometry(tuple(self.in_shape), tuple(self.weights.shape[2:]), self.stride, self.padding)

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.kind == "conv":
            return self.geometry.out_shape(int(self.weights.shape[0]))
        return (int(self.weights.shape[0]),)

    @property
    def in_features(self) -> int:
        return int(np.prod(self.in_shape)) if self.kind == "conv" else int(self.weights.shape[1])

    @property
    def out_features(self) -> int:
        return int(np.prod(self.out_shape))

    def weight_matrix(self, float_weights: bool = False) -> np.ndarray:
        """The synapses as a (out_features, in_features) matrix (a conv unrolled)."""
        weights = self.weight_float if float_weights else self.weights
        return conv_matrix(weights, self.geometry) if self.kind == "conv" else weights


@dataclass(frozen=True)
class ExportedNetwork:
    layers: tuple[ExportedLayer, ...]
    input_shape: tuple[int, ...]
    encoding: str
    time_steps: int
    eval_seed: int
    hardware: HardwareConfig
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return self.layers[-1].out_features


# --------------------------------------------------------------------------- writing


def to_onnx(network: ExportedNetwork):
    """Builds the ONNX ModelProto of an exported network."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Flatten", [INPUT_NAME], ["flat_spikes"], axis=1, name="flatten"),
        helper.make_node("Cast", ["flat_spikes"], ["layer_input_0"], to=TensorProto.INT64, name="cast_in"),
    ]
    initializers = []
    for i, layer in enumerate(network.layers):
        p = f"layer{i}"
        if layer.kind == "conv":
            weight_tensor = numpy_helper.from_array(layer.weights.astype(np.int64), f"{p}.kernel")
            synapses = helper.make_node(
                "LoihiConv", [f"layer_input_{i}", f"{p}.kernel"], [f"{p}.accumulated"], domain=DOMAIN,
                name=f"{p}.conv", in_shape=list(layer.in_shape), strides=[layer.stride, layer.stride],
                pads=[layer.padding] * 4, out_shape=list(layer.out_shape))
        else:
            weight_tensor = numpy_helper.from_array(np.ascontiguousarray(layer.weights.T.astype(np.int64)),
                                                    f"{p}.weights_t")
            synapses = helper.make_node("MatMul", [f"layer_input_{i}", f"{p}.weights_t"], [f"{p}.accumulated"],
                                        name=f"{p}.matmul")
        initializers += [
            weight_tensor,
            numpy_helper.from_array(layer.bias_mant.astype(np.int64), f"{p}.bias_mant"),
            numpy_helper.from_array(layer.weight_float.astype(np.float32), f"{p}.weight_float"),
            numpy_helper.from_array(layer.bias_float.astype(np.float32), f"{p}.bias_float"),
        ]
        out_name = OUTPUT_NAME if i == len(network.layers) - 1 else f"layer_input_{i + 1}"
        nodes += [
            synapses,
            helper.make_node(
                "LoihiDense", [f"{p}.accumulated", f"{p}.weight_float"], [f"{p}.activation"],
                domain=DOMAIN, name=f"{p}.dense", weight_exp=layer.weight_exp,
                num_weight_bits=layer.num_weight_bits, sign_mode=layer.sign_mode,
            ),
            helper.make_node(
                "LoihiLIF", [f"{p}.activation", f"{p}.bias_mant", f"{p}.bias_float"], [out_name],
                domain=DOMAIN, name=layer.name, du=layer.du, dv=layer.dv, vth=layer.vth,
                bias_exp=layer.bias_exp, scale=float(layer.scale), tau=float(layer.tau),
                v_threshold=float(layer.v_threshold),
            ),
        ]
    graph = helper.make_graph(
        nodes, "stbp_loihi_network",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", *network.input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.INT64, ["batch", network.num_outputs])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
        producer_name="stbp-loihi",
        doc_string="STBP LIF network quantized for Loihi; one graph evaluation = one time step.",
    )
    meta = {
        "schema": SCHEMA_NAME,
        "schema_version": str(SCHEMA_VERSION),
        "hw_config": json.dumps(dataclasses.asdict(network.hardware)),
        "encoding": network.encoding,
        "time_steps": str(network.time_steps),
        "eval_seed": str(network.eval_seed),
        "input_shape": json.dumps(list(network.input_shape)),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in network.metadata.items()},
    }
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def save_artifact(network: ExportedNetwork, path: str | Path) -> None:
    """Writes the artifact atomically (a crash never leaves a half-written file)."""
    from trainer.provenance import atomic_write

    payload = to_onnx(network).SerializeToString()
    with atomic_write(path) as handle:
        handle.write(payload)


# --------------------------------------------------------------------------- reading


def _int_attr(node, name: str, where: str) -> int:
    for attr in node.attribute:
        if attr.name == name:
            if attr.type != attr.INT:
                raise ArtifactError(f"{where}: attribute '{name}' must be an integer")
            return int(attr.i)
    raise ArtifactError(f"{where}: missing attribute '{name}'")


def _attr(node, name: str, where: str):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    raise ArtifactError(f"{where}: missing attribute '{name}'")


def _read_layer(i: int, dense, lif, conv_nodes: dict, tensor, features: int, path: Path, where: str):
    """One layer of the artifact: (ExportedLayer, its number of outputs)."""
    p = f"layer{i}"
    conv = conv_nodes.get(f"{p}.conv")
    conv_fields: dict[str, Any] = {}
    if conv is not None:
        weights = tensor(f"{p}.kernel", 4, where, integer=True).astype(np.int64)
        weight_float = tensor(f"{p}.weight_float", 4, where)
        in_shape = tuple(int(d) for d in _attr(conv, "in_shape", where))
        strides, pads = list(_attr(conv, "strides", where)), list(_attr(conv, "pads", where))
        if len(in_shape) != 3 or len(set(strides)) != 1 or len(set(pads)) != 1:
            raise ArtifactError(f"{path}: {where}: conv needs a (C, H, W) in_shape and equal strides/pads")
        geometry = ConvGeometry(in_shape, tuple(weights.shape[2:]), int(strides[0]), int(pads[0]))
        try:
            validate_geometry(geometry, where)
        except ValueError as exc:
            raise ArtifactError(f"{path}: {exc}") from exc
        if in_shape[0] != weights.shape[1]:
            raise ArtifactError(f"{path}: {where}: kernel takes {weights.shape[1]} channels, in_shape has {in_shape[0]}")
        conv_fields = {"kind": "conv", "in_shape": in_shape, "stride": geometry.stride, "padding": geometry.padding}
        in_features = int(np.prod(in_shape))
        out_features = int(np.prod(geometry.out_shape(weights.shape[0])))
    else:
        weights = tensor(f"{p}.weights_t", 2, where, integer=True).T.astype(np.int64)
        weight_float = tensor(f"{p}.weight_float", 2, where)
        in_features, out_features = weights.shape[1], weights.shape[0]
    bias_mant = tensor(f"{p}.bias_mant", 1, where, integer=True).astype(np.int64)
    bias_float = tensor(f"{p}.bias_float", 1, where)
    if in_features != features:
        raise ArtifactError(f"{path}: {where}: weights take {in_features} inputs, the previous layer gives {features}")
    for name, value, shape in (("bias_mant", bias_mant, (out_features,)),
                               ("weight_float", weight_float, weights.shape),
                               ("bias_float", bias_float, (out_features,))):
        if value.shape != shape:
            raise ArtifactError(f"{path}: {where}: '{name}' has shape {value.shape}, expected {shape}")
    layer = ExportedLayer(
        name=lif.name, weights=weights, weight_exp=_int_attr(dense, "weight_exp", where),
        num_weight_bits=_int_attr(dense, "num_weight_bits", where),
        sign_mode=str(_attr(dense, "sign_mode", where)), bias_mant=bias_mant,
        bias_exp=_int_attr(lif, "bias_exp", where), vth=_int_attr(lif, "vth", where),
        du=_int_attr(lif, "du", where), dv=_int_attr(lif, "dv", where),
        scale=float(_attr(lif, "scale", where)), weight_float=weight_float.astype(np.float32),
        bias_float=bias_float.astype(np.float32), tau=float(_attr(lif, "tau", where)),
        v_threshold=float(_attr(lif, "v_threshold", where)), **conv_fields,
    )
    return layer, out_features


def load_artifact(path: str | Path) -> ExportedNetwork:
    """Reads and validates an artifact; every error names the file and the layer/tensor."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others
        raise ArtifactError(f"{path}: not a readable ONNX file ({exc})") from exc
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("schema") != SCHEMA_NAME:
        raise ArtifactError(f"{path}: not an {SCHEMA_NAME} artifact (schema={meta.get('schema')!r})")
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise ArtifactError(
            f"{path}: artifact schema version {meta.get('schema_version')!r} is not supported "
            f"(this program reads version {SCHEMA_VERSION})"
        )
    try:
        input_shape = tuple(int(d) for d in json.loads(meta["input_shape"]))
        time_steps, eval_seed = int(meta["time_steps"]), int(meta["eval_seed"])
        encoding = meta["encoding"]
        hardware = hardware_config_from_dict(json.loads(meta["hw_config"]), f"{path} (embedded hw_config)")
    except (KeyError, ValueError, TypeError, HardwareConfigError) as exc:
        raise ArtifactError(f"{path}: metadata is incomplete or invalid: {exc}") from exc
    tensors = {}
    for initializer in model.graph.initializer:
        try:
            tensors[initializer.name] = numpy_helper.to_array(initializer)
        except Exception as exc:  # wrong raw_data length, unknown data type, ...
            raise ArtifactError(f"{path}: tensor '{initializer.name}' cannot be read ({exc})") from exc
    lif_nodes = [n for n in model.graph.node if n.op_type == "LoihiLIF" and n.domain == DOMAIN]
    dense_nodes = [n for n in model.graph.node if n.op_type == "LoihiDense" and n.domain == DOMAIN]
    if not lif_nodes or len(lif_nodes) != len(dense_nodes):
        raise ArtifactError(f"{path}: graph has {len(lif_nodes)} LoihiLIF and {len(dense_nodes)} LoihiDense nodes")

    def tensor(name: str, ndim: int, where: str, integer: bool = False) -> np.ndarray:
        if name not in tensors:
            raise ArtifactError(f"{path}: {where}: missing tensor '{name}'")
        value = tensors[name]
        expected_kind = "iu" if integer else "f"
        if value.dtype.kind not in expected_kind:
            raise ArtifactError(f"{path}: {where}: tensor '{name}' has dtype {value.dtype}, expected "
                                + ("integers" if integer else "floats"))
        if value.ndim != ndim:
            raise ArtifactError(f"{path}: {where}: tensor '{name}' has shape {value.shape}, expected {ndim} dimensions")
        return value

    conv_nodes = {n.name: n for n in model.graph.node if n.op_type == "LoihiConv" and n.domain == DOMAIN}
    layers = []
    features = int(np.prod(input_shape))
    for i, (dense, lif) in enumerate(zip(dense_nodes, lif_nodes)):
        where = f"layer {i} ({lif.name})"
        try:
            layer, features = _read_layer(i, dense, lif, conv_nodes, tensor, features, path, where)
        except (TypeError, ValueError) as exc:
            message = str(exc) if isinstance(exc, ArtifactError) else f"{where}: malformed layer ({exc})"
            raise ArtifactError(message if message.startswith(str(path)) else f"{path}: {message}") from exc
        layers.append(layer)
    known = {"schema", "schema_version", "hw_config", "encoding", "time_steps", "eval_seed", "input_shape"}
    extra = {}
    for key, value in meta.items():
        if key in known:
            continue
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    network = ExportedNetwork(tuple(layers), input_shape, encoding, time_steps, eval_seed, hardware, extra)
    from export.validate import ExportRangeError, validate_network

    try:
        validate_network(network, where=str(path))
    except ExportRangeError as exc:
        raise ArtifactError(str(exc)) from exc
    return network
