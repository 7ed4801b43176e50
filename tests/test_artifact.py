"""The ONNX artifact (schema 2): its wiring is the network graph, it round-trips losslessly,
and the loader refuses every malformed file with the file and the node named."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from conftest import REPO_ROOT
from export.artifact import ArtifactError, load_artifact, save_artifact, to_onnx
from helpers import HW, chain_structure, integer_network, recurrent_structure, skip_structure
from netgraph import LIF, Conv2d, Dense, Edge, Graph, Input, Output

FIXTURES = REPO_ROOT / "tests" / "data"


def conv_structure() -> Graph:
    return Graph((Input("input", (2, 6, 6)), Conv2d("c_in", 3, (3, 3), stride=1, padding=1), LIF("c", (3, 6, 6)),
                  Dense("out_in", 4), LIF("out", (4,)), Output("output")),
                 (Edge("input", "c_in"), Edge("c_in", "c"), Edge("c", "out_in"), Edge("out_in", "out"),
                  Edge("out", "output")))


STRUCTURES = {"chain": chain_structure((12, 9, 4)), "skip": skip_structure(), "recurrent": recurrent_structure(),
              "conv": conv_structure()}


def network(kind="chain", time_steps=5):
    return integer_network(STRUCTURES[kind], time_steps, np.random.default_rng(0))


@pytest.mark.parametrize("kind", sorted(STRUCTURES))
def test_round_trip_is_valid_onnx_and_lossless(kind, tmp_path):
    net = network(kind)
    path = tmp_path / "net.onnx"
    save_artifact(net, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    loaded = load_artifact(path)
    assert (loaded.input_shape, loaded.encoding, loaded.time_steps, loaded.eval_seed) == \
        (net.input_shape, "bernoulli", 5, 0)
    assert loaded.hardware == HW
    assert [n.name for n in loaded.graph.nodes] == [n.name for n in net.graph.nodes]
    assert set(loaded.graph.edges) == set(net.graph.edges)
    for original in net.graph.nodes:
        copy = loaded.graph.node(original.name)
        assert type(copy) is type(original)
        for field in ("weight", "bias"):
            if getattr(original, field, None) is not None:
                np.testing.assert_array_equal(getattr(copy, field), getattr(original, field))
        if getattr(original, "quantized", None) is not None:
            for field, value in vars(original.quantized).items():
                np.testing.assert_array_equal(getattr(copy.quantized, field), value, err_msg=f"{original.name}.{field}")


def test_the_onnx_wiring_is_the_graph():
    model = to_onnx(network("recurrent"))
    nodes = {n.name: n for n in model.graph.node}
    assert list(nodes["h_sum"].input) == ["h_in", "h_rec"] and nodes["h_sum"].op_type == "LoihiSum"
    assert list(nodes["h_rec"].input)[0] == "h.previous"  # the recurrent edge: state in
    assert [i.name for i in model.graph.input] == ["input", "h.previous"]
    assert [o.name for o in model.graph.output] == ["output", "h"]  # state out
    assert nodes["output"].op_type == "Identity" and list(nodes["output"].input) == ["out"]


def test_a_version_1_artifact_is_refused_with_re_export_advice():
    with pytest.raises(ArtifactError, match="v1_artifact.onnx: artifact schema version 1 predates the network "
                                            "graph .*re-export it"):
        load_artifact(FIXTURES / "v1_artifact.onnx")


def _variant(tmp_path, good, name, mutate):
    model = onnx.ModelProto()
    model.CopyFrom(good)
    mutate(model)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _set_meta(key, value):
    def mutate(model):
        for prop in model.metadata_props:
            if prop.key == key:
                prop.value = value
                return
        model.metadata_props.add(key=key, value=value)
    return mutate


def _set_attr(node_name, attr_name, value):
    def mutate(model):
        node = next(n for n in model.graph.node if n.name == node_name)
        for i, attr in enumerate(node.attribute):
            if attr.name == attr_name:
                node.attribute[i].CopyFrom(onnx.helper.make_attribute(attr_name, value))
                return
        node.attribute.append(onnx.helper.make_attribute(attr_name, value))
    return mutate


def _replace_tensor(name, transform):
    def mutate(model):
        for i, t in enumerate(model.graph.initializer):
            if t.name == name:
                model.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(transform(onnx.numpy_helper.to_array(t)), name))
    return mutate


def _swap_nodes(a, b):
    def mutate(model):
        nodes = list(model.graph.node)
        i = next(k for k, n in enumerate(nodes) if n.name == a)
        j = next(k for k, n in enumerate(nodes) if n.name == b)
        nodes[i], nodes[j] = nodes[j], nodes[i]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return mutate


def _add_dangling_population(model):
    weight = onnx.numpy_helper.from_array(np.zeros((2, 12), np.int64), "extra_in.weight")
    weight_float = onnx.numpy_helper.from_array(np.zeros((2, 12), np.float32), "extra_in.weight_float")
    model.graph.initializer.extend([weight, weight_float])
    model.graph.node.append(onnx.helper.make_node(
        "LoihiDense", ["input", "extra_in.weight", "extra_in.weight_float"], ["extra_in"], name="extra_in",
        domain="ai.stbp_loihi", out_features=2, weight_exp=0, num_weight_bits=8, sign_mode="mixed"))


def _add_initializer(model):
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.int64), "stray"))


def _duplicate_initializer(model):
    first = next(t for t in model.graph.initializer if t.name == "l0.bias_mant")
    model.graph.initializer.append(first)


def _rename_node(old, new):
    def mutate(model):
        next(n for n in model.graph.node if n.name == old).name = new
    return mutate


def _set_op(node_name, op):
    def mutate(model):
        next(n for n in model.graph.node if n.name == node_name).op_type = op
    return mutate


def _domain_version(version):
    def mutate(model):
        next(o for o in model.opset_import if o.domain == "ai.stbp_loihi").version = version
    return mutate


REFUSALS = {
    "foreign": (_set_meta("schema", "something-else"), "not an stbp-loihi-network artifact"),
    "future": (_set_meta("schema_version", "99"), "schema version '99' is not supported"),
    "meta": (_set_meta("time_steps", "five"), "metadata is invalid: 'time_steps' must be an integer, got 'five'"),
    "domain": (_domain_version(1), "must import the opsets .*ai.stbp_loihi.: 2}, declares .*ai.stbp_loihi.: 1}"),
    "missing_tensor": (lambda m: m.graph.initializer.remove(
        next(t for t in m.graph.initializer if t.name == "l1.bias_mant")), "onnx.checker refuses.*'l1.bias_mant' of node: .*name: l1"),
    "bias_shape": (_replace_tensor("l0.bias_mant", lambda a: np.zeros(3, np.int64)),
                   "node l0: bias_mant has shape \\(3,\\), expected \\(9,\\)"),
    "weight_shape": (_replace_tensor("d1.weight", lambda a: np.zeros((4, 5), np.int64)),
                     "edge l0 -> d1: l0 gives 9 values"),
    "vth": (_set_attr("l0", "vth", 10**6), "node l0 \\(LIF\\): vth = 1000000 is outside \\[0, 131071\\]"),
    "dv_float": (_set_attr("l0", "dv", 3276.8), "node l0 \\(LoihiLIF\\): attribute 'dv' must be an integer"),
    "sign": (_set_attr("d0", "sign_mode", "both"), "node d0 \\(Dense\\): sign_mode 'both'"),
    "odd_weight": (_replace_tensor("d0.weight", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, 3, a)),
                   "node d0 .*multiples of 2"),
    "float_weight": (_replace_tensor("d0.weight", lambda a: a.astype(np.float32) + 0.5),
                     "tensor 'd0.weight' has dtype float32, expected int64"),
    "uint64_weight": (_replace_tensor("d0.weight", lambda a: (a % 256).astype(np.uint64)),
                      "tensor 'd0.weight' has dtype uint64, expected int64"),
    "int32_bias": (_replace_tensor("l0.bias_mant", lambda a: a.astype(np.int32)),
                   "tensor 'l0.bias_mant' has dtype int32, expected int64"),
    "tau": (_set_attr("l0", "tau", float("nan")), "node l0: tau must lie in \\[0, 1\\]"),
    "scale_list": (_set_attr("l0", "scale", [1.0, 2.0]), "attribute 'scale' must be a float"),
    "unknown_attr": (_set_attr("l0", "colour", 3), "node l0 \\(LoihiLIF\\): unknown attribute\\(s\\) colour"),
    "unknown_op": (_set_op("l1", "LoihiIzhikevich"), "op ai.stbp_loihi.LoihiIzhikevich is not part of schema 2"),
    "dangling": (_add_dangling_population, "node extra_in \\(Dense\\) .*emits a current, which must feed exactly one"),
    "unused_initializer": (_add_initializer, "initializer\\(s\\) stray are used by no node"),
    "duplicate_initializer": (_duplicate_initializer, "l0.bias_mant initializer name is not unique"),
    "duplicate_node": (_rename_node("l1", "l0"), "node l0 \\(LoihiLIF\\): two nodes are named 'l0'"),
    "bad_name": (_rename_node("d0", "d0.dense"), "node d0.dense .*needs a name"),
    "swapped": (_swap_nodes("l0", "l1"), "onnx.checker refuses.*topologically sorted"),
    "extra_input": (lambda m: next(n for n in m.graph.node if n.name == "l1").input.append("d0"),
                    "node l1 \\(LoihiLIF\\): takes 1 signal input\\(s\\) followed by 2 initializer\\(s\\)"),
    "borrowed_tensor": (lambda m: next(n for n in m.graph.node if n.name == "l1").input.__setitem__(1, "l0.bias_mant"),
                        "node l1 \\(LoihiLIF\\): input 1 must be its initializer 'l1.bias_mant', got 'l0.bias_mant'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_loader_refuses_a_malformed_file_naming_it(case, tmp_path):
    mutate, message = REFUSALS[case]
    path = _variant(tmp_path, to_onnx(network("chain")), case, mutate)
    with pytest.raises(ArtifactError, match=message) as info:
        load_artifact(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_loader_refuses_missing_and_garbage_files(tmp_path):
    with pytest.raises(ArtifactError, match="artifact not found"):
        load_artifact(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot onnx at all" * 10)
    with pytest.raises(ArtifactError, match="garbage.onnx"):
        load_artifact(garbage)


def test_a_node_off_the_path_to_the_output_is_refused(tmp_path):
    # An extra population reading the input whose spikes nobody reads: valid ONNX, but not
    # part of the network. (The old loader took such a node as a real layer.)
    def add(model):
        _add_dangling_population(model)
        model.graph.initializer.extend([onnx.numpy_helper.from_array(np.zeros(2, np.int64), "extra.bias_mant"),
                                        onnx.numpy_helper.from_array(np.zeros(2, np.float32), "extra.bias_float")])
        model.graph.node.append(onnx.helper.make_node(
            "LoihiLIF", ["extra_in", "extra.bias_mant", "extra.bias_float"], ["extra"], name="extra",
            domain="ai.stbp_loihi", shape=[2], du=4095, dv=0, vth=10, bias_exp=0, scale=1.0, tau=1.0,
            tau_current=0.0, v_threshold=1.0))
    path = _variant(tmp_path, to_onnx(network("chain")), "off_path", add)
    with pytest.raises(ArtifactError, match="node extra_in \\(Dense\\) is not on a path from the input 'input' to "
                                            "the output 'output'"):
        load_artifact(path)


def test_a_state_input_must_name_a_population(tmp_path):
    def rename_state(model):
        model.graph.input[1].name = "ghost.previous"
        next(n for n in model.graph.node if n.name == "h_rec").input[0] = "ghost.previous"
    path = _variant(tmp_path, to_onnx(network("recurrent")), "ghost", rename_state)
    with pytest.raises(ArtifactError, match="ghost"):
        load_artifact(path)


def test_artifact_is_readable_and_runnable_without_torch(tmp_path):
    path = tmp_path / "net.onnx"
    save_artifact(network("recurrent"), path)
    script = textwrap.dedent(f"""
        import sys
        sys.modules['torch'] = None  # any import of torch now fails
        import numpy as np
        from export.artifact import load_artifact
        from export.emulator import emulate
        net = load_artifact({str(path)!r})
        out = emulate(net, np.ones((2, 5, 10), np.uint8))
        print(out.output_spikes.shape)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "(2, 5, 4)" in result.stdout


def _set_value_info(which, name, elem_type, dims):
    def mutate(model):
        items = model.graph.input if which == "input" else model.graph.output
        for i, v in enumerate(items):
            if v.name == name:
                items[i].CopyFrom(onnx.helper.make_tensor_value_info(name, elem_type, dims))
    return mutate


@pytest.mark.parametrize("case, mutate, message", [
    ("state_shape", _set_value_info("input", "h.previous", onnx.TensorProto.UINT8, ["batch", 3]),
     "state input 'h.previous' must be declared uint8 \\(batch, 8\\)"),
    ("output_type", _set_value_info("output", "output", onnx.TensorProto.FLOAT, ["batch", 4]),
     "graph output 'output' must be declared uint8 \\(batch, 4\\)"),
    ("metadata_type", _set_meta("training_config", "[1, 2]"), "metadata is invalid: 'training_config' must be dict, "
                                                             "got list"),
])
def test_loader_checks_the_declared_interface_and_provenance(case, mutate, message, tmp_path):
    path = _variant(tmp_path, to_onnx(network("recurrent")), case, mutate)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(path)


def test_a_conv_with_absurd_padding_is_refused_before_anything_allocates(tmp_path):
    path = _variant(tmp_path, to_onnx(network("conv")), "pads", _set_attr("c_in", "pads", [10**6] * 4))
    with pytest.raises(ArtifactError, match="edge input -> c_in: padding 1000000 must be smaller than the 3x3 kernel"):
        load_artifact(path)
