"""Quantization, hardware configs and the bit-exact emulator, against hand-worked values."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import yaml

from export.emulator import emulate
from export.hw_config import HW_CONFIG_DIR, HardwareConfigError, load_hardware_config, resolve_hardware_config
from export.quantize import QuantizationWarning, quantize_graph
from export.validate import ExportRangeError
from helpers import (HW, chain_structure, float_chain, integer_network, random_float_chain, recurrent_structure,
                     skip_structure)
from netgraph import LIF, Dense, Edge, Graph, Input, Output, Sum


def quantize(graph, time_steps=5, **kwargs):
    return quantize_graph(graph, "bernoulli", time_steps, 11, HW, **kwargs)


def small_network(seed=0, sizes=(12, 9, 4), time_steps=5):
    return quantize(random_float_chain(np.random.default_rng(seed), list(sizes)), time_steps)


# --------------------------------------------------------------------------- hw configs


@pytest.mark.parametrize("name", ["loihi1", "loihi2"])
def test_shipped_hw_configs_hold_lavas_fixed_point_limits(name):
    hw = load_hardware_config(HW_CONFIG_DIR / f"{name}.yaml")
    assert hw.weight_range("mixed") == (-256, 254, 2)
    assert (hw.bias_mant_min, hw.bias_mant_max, hw.bias_exp_max) == (-4096, 4095, 7)
    assert (hw.vth_max, hw.vth_shift, hw.activation_shift) == (131071, 6, 6)
    assert (hw.decay_max, hw.du_offset, hw.dv_offset, hw.state_limit) == (4095, 1, 0, 2**23)
    assert hw.max_synaptic_delay == 63  # DelayDense's 6-bit delays


def test_every_integer_hw_field_is_bounded():
    import dataclasses

    from export.hw_config import FIELD_RANGES, HardwareConfig

    integer_fields = {f.name for f in dataclasses.fields(HardwareConfig) if f.type == "int"}
    assert integer_fields == set(FIELD_RANGES)


def test_hw_config_errors_name_file_and_key(tmp_path):
    good = yaml.safe_load((HW_CONFIG_DIR / "loihi2.yaml").read_text())
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "vth_bits"}, "missing key 'vth_bits'"),
        "unknown": ({**good, "vth_bitz": 3}, "unknown key(s) vth_bitz"),
        "not_int": ({**good, "decay_bits": "12"}, "'decay_bits' must be an integer"),
        "negative": ({**good, "weight_bits": 0}, "'weight_bits' = 0 is outside [1, 16]"),
        "offset": ({**good, "du_offset": 2}, "'du_offset' = 2 is outside [0, 1]"),
        "huge": ({**good, "vth_bits": 10**12}, "'vth_bits' = 1000000000000 is outside [1, 32]"),
        "negative_shift": ({**good, "activation_shift": -3}, "'activation_shift' = -3 is outside [0, 8]"),
    }
    for label, (raw, message) in cases.items():
        path = tmp_path / f"{label}.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(HardwareConfigError, match=re.escape(message)) as info:
            load_hardware_config(path)
        assert str(path) in str(info.value)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed")
    with pytest.raises(HardwareConfigError, match="not valid YAML"):
        load_hardware_config(bad_yaml)
    with pytest.raises(HardwareConfigError, match="not found"):
        load_hardware_config(tmp_path / "nope.yaml")
    with pytest.raises(HardwareConfigError, match="loihi1, loihi2"):
        resolve_hardware_config("loihi9")


# --------------------------------------------------------------------------- quantization


def test_weights_fill_the_8_bit_range_and_share_the_threshold_scale():
    graph = float_chain([(np.array([[0.5, -0.25], [0.1, 0.0]]), np.array([0.0, 0.125]))], (2,))
    net, report = quantize(graph, 4)
    synapse, lif = net.graph.node("layer0_from_input").quantized, net.graph.node("layer0").quantized
    scale = 254 / 0.5  # the largest weight takes the largest even mixed-mode weight
    assert lif.scale == pytest.approx(scale)
    assert synapse.weight.tolist() == [[254, -128], [50, 0]]  # 0.1 * 508 = 50.8 -> nearest even 50
    # Loihi fires at v >= (vth << 6) + 1, placed nearest to Vth * scale * 64 = 16256.
    assert lif.vth == 254 and (lif.vth << 6) + 1 == 16257
    assert lif.bias_mant.tolist() == [0, 4064] and lif.bias_exp == 0  # 0.125 * 508 * 64
    assert lif.du == 4095 and lif.dv == round(4096 * 0.8)
    assert report.population("layer0").weights_clipped == 0


def test_synapses_into_one_population_share_its_scale():
    # Two synapses sum into c: the one with the largest weight (0.8, mixed) sets the scale
    # 254 / 0.8 = 317.5 for both; the other (all positive: excitatory) is quantized on it.
    graph = Graph((Input("input", (2,)), Dense("a", 2, weight=np.array([[0.8, -0.4], [0.2, 0.0]])),
                   Dense("b", 2, weight=np.array([[0.1, 0.3], [0.0, 0.05]])), Sum("s"),
                   LIF("c", (2,), bias=np.zeros(2)), Output("output")),
                  (Edge("input", "a"), Edge("input", "b"), Edge("a", "s"), Edge("b", "s"), Edge("s", "c"),
                   Edge("c", "output")))
    net, report = quantize(graph)
    assert net.graph.node("c").quantized.scale == pytest.approx(317.5)
    a, b = net.graph.node("a").quantized, net.graph.node("b").quantized
    assert a.sign_mode == "mixed" and a.weight.tolist() == [[254, -128], [64, 0]]  # 0.2 * 317.5 = 63.5 -> even 64
    assert b.sign_mode == "excitatory" and b.weight.tolist() == [[32, 95], [0, 16]]  # 31.75, 95.25, 15.875
    assert [s.name for s in report.population("c").synapses] == ["a", "b"]


def test_current_decay_maps_to_du():
    # tau_current = 0.75: Loihi keeps (4096 - (du + 1)) / 4096 of u, so du = 4096 * 0.25 - 1 = 1023.
    graph = float_chain([(np.array([[0.5]]), np.zeros(1))], (1,), tau_current=0.75)
    net, report = quantize(graph)
    assert net.graph.node("layer0").quantized.du == 1023
    assert report.population("layer0").tau_current_effective == pytest.approx(0.75)
    assert "current-based du=1023" in report.format_table()


def test_dead_and_always_on_neurons_are_reported():
    w = np.array([[-0.3, -0.2], [0.4, 0.2], [0.1, 0.1]])
    b = np.array([0.0, 0.0, 0.6])  # neuron 2's bias alone exceeds Vth = 0.5
    _, report = quantize(float_chain([(w, b)], (2,)))
    assert report.population("layer0").never_fire == 1
    assert report.population("layer0").always_fire == 1
    table = report.format_table()
    assert "population" in table and "never" in table and "layer0 " in table


def test_export_refuses_nan_inf_and_mismatched_shapes_naming_the_node():
    rng = np.random.default_rng(0)
    w0, w1 = rng.normal(size=(3, 4)), rng.normal(size=(2, 3))
    w1[0, 0] = np.nan
    with pytest.raises(ExportRangeError, match="node layer1_from_layer0: parameter 'weight' holds NaN"):
        quantize(float_chain([(w0, np.zeros(3)), (w1, np.zeros(2))], (4,)))
    with pytest.raises(ValueError, match="tau must lie in \\[0, 1\\]"):
        float_chain([(w0, np.zeros(3))], (4,), tau=float("inf"))
    with pytest.raises(ValueError, match="edge layer0 -> layer1_from_layer0: layer0 gives 3 values"):
        float_chain([(w0, np.zeros(3)), (np.ones((2, 5)), np.zeros(2))], (4,))


def test_a_graph_without_trained_parameters_is_refused_naming_the_node():
    from netgraph import AvgPool2d

    with pytest.raises(ExportRangeError, match="node d0: has no trained weight"):
        quantize(chain_structure((4, 3)))
    pooled = Graph((Input("input", (1, 4, 4)), AvgPool2d("pool", 2), Dense("d", 2), LIF("p", (2,), bias=np.zeros(2)),
                    Output("output")),
                   (Edge("input", "pool"), Edge("pool", "d"), Edge("d", "p"), Edge("p", "output")))
    with pytest.raises(ExportRangeError, match="node d: has no trained weight to fold pool into"):
        quantize(pooled)


def test_compare_refuses_an_artifact_that_does_not_name_its_checkpoint(trained_digits, tmp_path, capsys):
    import onnx

    from stbp_cli.main import main

    checkpoint_path, _ = trained_digits
    artifact = tmp_path / "net.onnx"
    assert main(["export", str(checkpoint_path), "-o", str(artifact)]) == 0
    model = onnx.load(str(artifact))
    keep = [p for p in model.metadata_props if p.key != "source_checkpoint_sha256"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    artifact.write_bytes(model.SerializeToString())
    capsys.readouterr()
    assert main(["compare", str(checkpoint_path), str(artifact), "--backends", "trained", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{artifact} does not record the checkpoint it was exported from (source_checkpoint_sha256)" in err


def test_out_of_range_bias_is_refused_unless_clipping_is_allowed():
    graph = float_chain([(np.array([[0.5, -0.5]]), np.array([100.0]))], (2,))
    with pytest.raises(ExportRangeError, match="node layer0: 1 biases exceed bias_mant range"):
        quantize(graph, 4)
    with pytest.warns(QuantizationWarning, match="node layer0"):
        net, report = quantize(graph, 4, allow_clip=True)
    assert net.graph.node("layer0").quantized.bias_mant.tolist() == [4095]
    assert net.graph.node("layer0").quantized.bias_exp == 7
    assert report.population("layer0").bias_clipped == 1 and report.warnings


def test_unrepresentable_decay_is_refused():
    with pytest.raises(ExportRangeError, match="node layer0: tau = 0.0 needs dv = 4096"):
        quantize(float_chain([(np.ones((1, 1)), np.zeros(1))], (1,), tau=0.0), 4)


def test_skip_path_gets_a_delay_in_the_report():
    rng = np.random.default_rng(1)
    structure = skip_structure()
    float_graph = structure.replace(nodes=[
        *(Dense(n.name, n.out_features, weight=rng.normal(0, 0.3, (n.out_features, 10 if n.name == "a_in" else 8)))
          for n in structure.nodes if isinstance(n, Dense)),
        *(LIF(n.name, n.shape, bias=np.zeros(n.neurons)) for n in structure.populations)])
    _, report = quantize(float_graph)
    delays = {s.name: s.delay for s in report.population("c").synapses}
    assert delays == {"c_main": 0, "c_skip": 1}  # a -> c directly is one Dense shorter than a -> b -> c
    assert "delayed 1 step(s) on Lava" in report.format_table()


# --------------------------------------------------------------------------- emulator


def test_emulator_has_no_delay_between_layers_and_resets_per_sample():
    # 1 -> 1 -> 1 chain: each weight alone crosses its threshold, so a spike travels through
    # both populations within the same time step.
    net, _ = quantize(float_chain([(np.array([[1.0]]), np.zeros(1))] * 2, (1,), tau=0.5), 4)
    spikes = np.zeros((2, 4, 1), np.uint8)
    spikes[0, 2, 0] = 1
    result = emulate(net, spikes)
    for population_spikes in result.population_spikes.values():
        assert population_spikes[0, :, 0].tolist() == [0, 0, 1, 0]
        assert population_spikes[1].sum() == 0  # the second sample starts from zero state


def test_emulator_integrates_subthreshold_input_with_the_leak():
    # w = 0.3, Vth = 0.5, tau = 0.5 (dv = 2048): integer trace worked by hand.
    # A positive-only matrix is excitatory: 8 bits, no sign bit, so scale = 255 / 0.3 = 850,
    # w_int = 255; vth = round(0.5 * 850 - 1/64) = 425 -> fires at v > 425 * 64 = 27200.
    # v: 255*64 = 16320, then 16320/2 + 16320 = 24480, then 12240 + 16320 = 28560 > 27200 -> spike.
    net, _ = quantize(float_chain([(np.array([[0.3]]), np.zeros(1))], (1,), tau=0.5), 4)
    q_syn, q_lif = net.graph.node("layer0_from_input").quantized, net.graph.node("layer0").quantized
    assert (q_syn.weight.item(), q_lif.vth, q_lif.dv) == (255, 425, 2048)
    out = emulate(net, np.ones((1, 4, 1), np.uint8)).output_spikes
    assert out[0, :, 0].tolist() == [0, 0, 1, 0]  # float STBP: u = 0.3, 0.45, 0.525 -> spike, then 0.3


def test_emulator_current_decay_by_hand():
    # Weight 100, du = 2047 (u keeps (4096 - 2048) / 4096 = 1/2 per step), dv = 4095 (v keeps
    # 1/4096 of itself, truncated), vth = 120 -> fires when v > 7680.
    # One spike (step 0): u = 6400, 3200, 1600; v = 6400, 1 + 3200, 0 + 1600 -> silent.
    # Two spikes (steps 0, 1): u = 6400, 3200 + 6400 = 9600: v = 1 + 9600 > 7680 fires at step 1.
    net = integer_network(Graph((Input("input", (1,)), Dense("d", 1), LIF("p", (1,)), Output("output")),
                                (Edge("input", "d"), Edge("d", "p"), Edge("p", "output"))),
                          3, weights={"d": [[100]]}, du=2047, dv=4095, vth=120, bias={"p": [0]})
    one = np.array([[[1], [0], [0]]], np.uint8)
    two = np.array([[[1], [1], [0]]], np.uint8)
    assert emulate(net, one).output_spikes[0, :, 0].tolist() == [0, 0, 0]
    assert emulate(net, two).output_spikes[0, :, 0].tolist() == [0, 1, 0]


def test_emulator_recurrent_edge_delivers_the_previous_step_by_hand():
    # h: input weight 130, vth = 120 (fires when v > 7680); du = 4095 (u = this step's input
    # << 6) and dv = 4095 (v keeps 1/4096 of itself). One input spike, at step 0:
    # step 0: v = 130 * 64 = 8320 -> fires (v back to 0);
    # step 1: no input, the recurrent weight 60 brings step 0's spike: v = 3840 -> silent;
    # step 2: nothing arrives, v = 3840 // 4096 = 0 -> silent.      h = [1, 0, 0]
    # With a recurrent weight of 130, step 1 gets v = 8320 and fires, and so on: h = [1, 1, 1].
    structure = recurrent_structure(n_in=1, hidden=1, classes=1)
    spikes = np.array([[[1], [0], [0]]], np.uint8)

    def run(rec):
        net = integer_network(structure, 3, weights={"h_in": [[130]], "h_rec": [[rec]], "out_in": [[0]]},
                              du=4095, dv=4095, vth=120, bias={"h": [0], "out": [0]})
        return emulate(net, spikes).population_spikes["h"][0, :, 0].tolist()

    assert run(60) == [1, 0, 0]
    assert run(130) == [1, 1, 1]
    # Zero input and a self-exciting recurrence: nothing starts it (step 0 reads zeros).
    net = integer_network(structure, 3, weights={"h_in": [[0]], "h_rec": [[254]], "out_in": [[0]]},
                          du=4095, dv=4095, vth=0, bias={"h": [0], "out": [0]})
    assert emulate(net, spikes).population_spikes["h"].sum() == 0


def test_emulator_adds_the_currents_of_a_sum():
    # c reads b (through c_main) and a (through c_skip) in the same step: 40 + 50 = 90 > 80.
    structure = skip_structure(n_in=1, hidden=1, classes=1)
    weights = {"a_in": [[200]], "b_in": [[200]], "c_main": [[40]], "c_skip": [[50]]}
    net = integer_network(structure, 2, weights=weights, du=4095, dv=4095, vth=80,
                          bias={"a": [0], "b": [0], "c": [0]})
    out = emulate(net, np.array([[[1], [0]]], np.uint8)).population_spikes
    assert [out[n][0, :, 0].tolist() for n in ("a", "b", "c")] == [[1, 0], [1, 0], [1, 0]]
    half = integer_network(structure, 2, weights={**weights, "c_skip": [[0]]}, du=4095, dv=4095, vth=80,
                           bias={"a": [0], "b": [0], "c": [0]})
    assert emulate(half, np.array([[[1], [0]]], np.uint8)).population_spikes["c"].sum() == 0


def test_numpy_and_torch_emulators_give_identical_spikes():
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    for structure in (skip_structure(30, 20, 5), recurrent_structure(30, 20, 5)):
        net = integer_network(structure, 7, rng, vth=150)
        spikes = (rng.random((37, 7, 30)) < 0.4).astype(np.uint8)
        a = emulate(net, spikes, backend="numpy", batch_size=10)
        b = emulate(net, spikes, backend="torch", device="cpu", batch_size=16)
        for name in a.population_spikes:
            np.testing.assert_array_equal(a.population_spikes[name], b.population_spikes[name])
        assert sum(s.sum() for s in a.population_spikes.values()) > 0


def test_emulator_rejects_wrong_input_shape():
    net, _ = small_network()
    with pytest.raises(ValueError, match="expected \\(samples, 5, 12\\)"):
        emulate(net, np.zeros((3, 4, 12)))


def test_exported_digits_mlp_matches_float_accuracy(trained_digits, tmp_path):
    import torch

    from export.artifact import load_artifact, save_artifact
    from spikedata import load_dataset
    from stbp_cli.pipeline import export_checkpoint
    from trainer.checkpoint import build_model, load_checkpoint
    from trainer.encoding import encode_split

    checkpoint_path, config = trained_digits
    net, report = export_checkpoint(checkpoint_path, HW)
    save_artifact(net, tmp_path / "digits.onnx")
    net = load_artifact(tmp_path / "digits.onnx")
    test = load_dataset("digits").test
    spikes = encode_split(net.encoding, test.inputs, net.time_steps, net.eval_seed)
    with torch.no_grad():
        float_out = build_model(load_checkpoint(checkpoint_path))(torch.from_numpy(spikes).float())
    float_predictions = float_out.output_spikes.sum(1).argmax(1).numpy()
    emulated = emulate(net, spikes).predictions
    float_accuracy = (float_predictions == test.labels).mean()
    emulated_accuracy = (emulated == test.labels).mean()
    assert float_accuracy > 0.85
    assert abs(float_accuracy - emulated_accuracy) <= 0.01
    assert (float_predictions == emulated).mean() >= 0.97
    assert net.metadata["training_seed"] == config.seed
    assert "torch" in net.metadata["export_versions"]


def test_cli_export_writes_artifact_and_report(trained_digits, tmp_path, capsys):
    from export.artifact import load_artifact
    from stbp_cli.main import main

    checkpoint_path, _ = trained_digits
    out = tmp_path / "net.onnx"
    assert main(["export", str(checkpoint_path), "--hw", str(HW_CONFIG_DIR / "loihi2.yaml"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "quantization report (loihi2)" in printed and "layer0 " in printed and "layer1 " in printed
    report = json.loads((tmp_path / "net.onnx.report.json").read_text())
    assert [p["name"] for p in report["populations"]] == ["layer0", "layer1"]
    assert [s["name"] for s in report["populations"][1]["synapses"]] == ["layer1_from_layer0"]
    assert load_artifact(out).graph.shape_of("layer0_from_input") == (64,)
    assert main(["export", str(tmp_path / "nope.safetensors"), "-o", str(out)]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    assert main(["export", str(checkpoint_path), "--hw", "loihi9", "-o", str(out)]) == 2


def test_quantization_warnings_are_collected_not_lost():
    graph = float_chain([(np.array([[0.5, -0.5]]), np.array([100.0]))], (2,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = quantize(graph, 4, allow_clip=True)
    assert any("node layer0" in str(w.message) for w in caught)
    assert any("node layer0" in text for text in report.warnings)
