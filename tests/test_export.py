"""Quantization, the ONNX artifact, hardware configs and the bit-exact emulator."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import onnx
import pytest
import yaml

from export.artifact import ArtifactError, load_artifact, save_artifact, to_onnx
from export.emulator import emulate
from export.hw_config import HW_CONFIG_DIR, HardwareConfigError, load_hardware_config, resolve_hardware_config
from export.quantize import FloatLayer, QuantizationWarning, export_checkpoint, quantize_network
from export.validate import ExportRangeError
from conftest import REPO_ROOT

HW = resolve_hardware_config("loihi2")


def random_float_layers(rng, sizes, tau=0.2, v_threshold=0.5):
    return [FloatLayer(f"layer{i}", rng.normal(0, 0.3, (n_out, n_in)), rng.normal(0, 0.05, n_out), tau, v_threshold)
            for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))]


def small_network(seed=0, sizes=(12, 9, 4), time_steps=5):
    rng = np.random.default_rng(seed)
    return quantize_network(random_float_layers(rng, list(sizes)), (sizes[0],), "bernoulli", time_steps, 11, HW)


# --------------------------------------------------------------------------- hw configs


@pytest.mark.parametrize("name", ["loihi1", "loihi2"])
def test_shipped_hw_configs_hold_lavas_fixed_point_limits(name):
    hw = load_hardware_config(HW_CONFIG_DIR / f"{name}.yaml")
    assert hw.weight_range("mixed") == (-256, 254, 2)
    assert (hw.bias_mant_min, hw.bias_mant_max, hw.bias_exp_max) == (-4096, 4095, 7)
    assert (hw.vth_max, hw.vth_shift, hw.activation_shift) == (131071, 6, 6)
    assert (hw.decay_max, hw.du_offset, hw.dv_offset, hw.state_limit) == (4095, 1, 0, 2**23)


def test_hw_config_errors_name_file_and_key(tmp_path):
    good = yaml.safe_load((HW_CONFIG_DIR / "loihi2.yaml").read_text())
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "vth_bits"}, "missing key 'vth_bits'"),
        "unknown": ({**good, "vth_bitz": 3}, "unknown key(s) vth_bitz"),
        "not_int": ({**good, "decay_bits": "12"}, "'decay_bits' must be an integer"),
        "negative": ({**good, "weight_bits": 0}, "'weight_bits' must be positive"),
        "offset": ({**good, "du_offset": 2}, "decay offsets"),
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
    layer = FloatLayer("l", np.array([[0.5, -0.25], [0.1, 0.0]]), np.array([0.0, 0.125]), 0.2, 0.5)
    net, report = quantize_network([layer], (2,), "bernoulli", 4, 0, HW)
    q = net.layers[0]
    scale = 254 / 0.5  # the largest weight takes the largest even mixed-mode weight
    assert q.scale == pytest.approx(scale)
    assert q.weights.tolist() == [[254, -128], [50, 0]]  # 0.1 * 508 = 50.8 -> nearest even 50
    # Loihi fires at v >= (vth << 6) + 1, placed nearest to Vth * scale * 64 = 16256.
    assert q.vth == 254 and (q.vth << 6) + 1 == 16257
    assert q.bias_mant.tolist() == [0, 4064] and q.bias_exp == 0  # 0.125 * 508 * 64
    assert q.du == 4095 and q.dv == round(4096 * 0.8)
    assert report.layers[0].weights_clipped == 0


def test_dead_and_always_on_neurons_are_reported():
    w = np.array([[-0.3, -0.2], [0.4, 0.2], [0.1, 0.1]])
    b = np.array([0.0, 0.0, 0.6])  # neuron 2's bias alone exceeds Vth = 0.5
    _, report = quantize_network([FloatLayer("l", w, b, 0.2, 0.5)], (2,), "bernoulli", 5, 0, HW)
    assert report.layers[0].never_fire == 1
    assert report.layers[0].always_fire == 1
    table = report.format_table()
    assert "layer" in table and "never" in table and "l " in table


def test_export_refuses_nan_inf_and_mismatched_shapes_naming_the_layer():
    rng = np.random.default_rng(0)
    layers = random_float_layers(rng, [4, 3, 2])
    bad_w = layers[1].weight.copy()
    bad_w[0, 0] = np.nan
    with pytest.raises(ExportRangeError, match="layer layer1: parameter 'weight' holds NaN"):
        quantize_network([layers[0], FloatLayer("layer1", bad_w, layers[1].bias, 0.2, 0.5)], (4,), "bernoulli", 4, 0, HW)
    with pytest.raises(ExportRangeError, match="layer layer0: parameter 'tau'"):
        quantize_network([FloatLayer("layer0", layers[0].weight, layers[0].bias, float("inf"), 0.5)], (4,), "bernoulli", 4, 0, HW)
    with pytest.raises(ExportRangeError, match="layer layer1: weight shape"):
        quantize_network([layers[0], FloatLayer("layer1", np.ones((2, 5)), np.zeros(2), 0.2, 0.5)], (4,), "bernoulli", 4, 0, HW)


def test_out_of_range_bias_is_refused_unless_clipping_is_allowed():
    layer = FloatLayer("big", np.array([[0.5, -0.5]]), np.array([100.0]), 0.2, 0.5)
    with pytest.raises(ExportRangeError, match="layer big: 1 biases exceed bias_mant range"):
        quantize_network([layer], (2,), "bernoulli", 4, 0, HW)
    with pytest.warns(QuantizationWarning, match="layer big"):
        net, report = quantize_network([layer], (2,), "bernoulli", 4, 0, HW, allow_clip=True)
    assert net.layers[0].bias_mant.tolist() == [4095] and net.layers[0].bias_exp == 7
    assert report.layers[0].bias_clipped == 1 and report.warnings


def test_unrepresentable_decay_is_refused():
    with pytest.raises(ExportRangeError, match="layer l: tau = 0.0 needs dv = 4096"):
        quantize_network([FloatLayer("l", np.ones((1, 1)), np.zeros(1), 0.0, 0.5)], (1,), "bernoulli", 4, 0, HW)


# --------------------------------------------------------------------------- artifact


def test_artifact_round_trip_is_valid_onnx_and_lossless(tmp_path):
    net, _ = small_network()
    path = tmp_path / "net.onnx"
    save_artifact(net, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    loaded = load_artifact(path)
    assert (loaded.input_shape, loaded.encoding, loaded.time_steps, loaded.eval_seed) == ((12,), "bernoulli", 5, 11)
    assert loaded.hardware == HW
    for a, b in zip(net.layers, loaded.layers):
        for field in ("name", "weight_exp", "num_weight_bits", "sign_mode", "bias_exp", "vth", "du", "dv", "tau", "v_threshold"):
            assert getattr(a, field) == pytest.approx(getattr(b, field)) if isinstance(getattr(a, field), float) \
                else getattr(a, field) == getattr(b, field), field
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.bias_mant, b.bias_mant)
        np.testing.assert_array_equal(a.weight_float, b.weight_float)
    assert loaded.metadata["quantization_report"]["hardware"] == "loihi2"


def _rewrite(model, path):
    path.write_bytes(model.SerializeToString())
    return path


def test_loader_rejects_every_kind_of_bad_file(tmp_path):
    net, _ = small_network()
    good = to_onnx(net)

    with pytest.raises(ArtifactError, match="artifact not found"):
        load_artifact(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot onnx at all" * 10)
    with pytest.raises(ArtifactError, match="garbage.onnx"):
        load_artifact(garbage)

    def variant(name, mutate):
        model = onnx.ModelProto()
        model.CopyFrom(good)
        mutate(model)
        return _rewrite(model, tmp_path / f"{name}.onnx")

    def set_meta(key, value):
        def mutate(model):
            for prop in model.metadata_props:
                if prop.key == key:
                    prop.value = value
        return mutate

    with pytest.raises(ArtifactError, match="not an stbp-loihi-network artifact"):
        load_artifact(variant("foreign", set_meta("schema", "something-else")))
    with pytest.raises(ArtifactError, match="schema version '99' is not supported"):
        load_artifact(variant("future", set_meta("schema_version", "99")))
    with pytest.raises(ArtifactError, match="metadata is incomplete"):
        load_artifact(variant("meta", set_meta("time_steps", "five")))

    def drop_tensor(model):
        keep = [t for t in model.graph.initializer if t.name != "layer1.bias_mant"]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    with pytest.raises(ArtifactError, match="layer 1 .*missing tensor 'layer1.bias_mant'"):
        load_artifact(variant("missing_tensor", drop_tensor))

    def reshape_tensor(model):
        for i, t in enumerate(model.graph.initializer):
            if t.name == "layer0.bias_mant":
                model.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(np.zeros(3, np.int64), t.name))
    with pytest.raises(ArtifactError, match="layer 0 .*'bias_mant' has shape \\(3,\\), expected \\(9,\\)"):
        load_artifact(variant("shape", reshape_tensor))

    def set_attr(op, name, value):
        def mutate(model):
            node = next(n for n in model.graph.node if n.op_type == op)
            attr = next(a for a in node.attribute if a.name == name)
            attr.CopyFrom(onnx.helper.make_attribute(name, value))
        return mutate
    with pytest.raises(ArtifactError, match="layer 0 .*vth = 1000000 is outside \\[0, 131071\\]"):
        load_artifact(variant("vth", set_attr("LoihiLIF", "vth", 10**6)))
    with pytest.raises(ArtifactError, match="attribute 'dv' must be an integer"):
        load_artifact(variant("dv_float", set_attr("LoihiLIF", "dv", 3276.8)))
    with pytest.raises(ArtifactError, match="sign_mode 'both'"):
        load_artifact(variant("sign", set_attr("LoihiDense", "sign_mode", "both")))

    def odd_weight(model):
        for i, t in enumerate(model.graph.initializer):
            if t.name == "layer0.weights_t":
                w = onnx.numpy_helper.to_array(t).copy()
                w[0, 0] = 3
                model.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(w, t.name))
    with pytest.raises(ArtifactError, match="multiples of 2"):
        load_artifact(variant("odd", odd_weight))

    def float_weights(model):
        for i, t in enumerate(model.graph.initializer):
            if t.name == "layer0.weights_t":
                w = onnx.numpy_helper.to_array(t).astype(np.float32) + 0.5
                model.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(w, t.name))
    with pytest.raises(ArtifactError, match="'layer0.weights_t' has dtype float32, expected integers"):
        load_artifact(variant("float_weights", float_weights))
    with pytest.raises(ArtifactError, match="tau must lie in \\[0, 1\\], got nan"):
        load_artifact(variant("tau", set_attr("LoihiLIF", "tau", float("nan"))))
    with pytest.raises(ArtifactError, match="nan_tau.onnx|malformed|scale"):
        load_artifact(variant("scale_list", set_attr("LoihiLIF", "scale", [1.0, 2.0])))


def test_artifact_is_readable_and_runnable_without_torch(tmp_path):
    net, _ = small_network()
    path = tmp_path / "net.onnx"
    save_artifact(net, path)
    script = textwrap.dedent(f"""
        import sys
        sys.modules['torch'] = None  # any import of torch now fails
        import numpy as np
        from export.artifact import load_artifact
        from export.emulator import emulate
        net = load_artifact({str(path)!r})
        out = emulate(net, np.ones((2, 5, 12), np.uint8))
        print(out.output_spikes.shape)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "(2, 5, 4)" in result.stdout


# --------------------------------------------------------------------------- emulator


def test_emulator_has_no_delay_between_layers_and_resets_per_sample():
    # 1 -> 1 -> 1 chain: each weight alone crosses its threshold, so a spike travels through
    # both layers within the same time step.
    layers = [FloatLayer(f"l{i}", np.array([[1.0]]), np.array([0.0]), 0.5, 0.5) for i in range(2)]
    net, _ = quantize_network(layers, (1,), "bernoulli", 4, 0, HW)
    spikes = np.zeros((2, 4, 1), np.uint8)
    spikes[0, 2, 0] = 1
    result = emulate(net, spikes)
    for layer_spikes in result.layer_spikes:
        assert layer_spikes[0, :, 0].tolist() == [0, 0, 1, 0]
        assert layer_spikes[1].sum() == 0  # the second sample starts from zero state


def test_emulator_integrates_subthreshold_input_with_the_leak():
    # w = 0.3, Vth = 0.5, tau = 0.5 (dv = 2048): integer trace worked by hand.
    # A positive-only matrix is excitatory: 8 bits, no sign bit, so scale = 255 / 0.3 = 850,
    # w_int = 255; vth = round(0.5 * 850 - 1/64) = 425 -> fires at v > 425 * 64 = 27200.
    # v: 255*64 = 16320, then 16320/2 + 16320 = 24480, then 12240 + 16320 = 28560 > 27200 -> spike.
    net, _ = quantize_network([FloatLayer("l", np.array([[0.3]]), np.array([0.0]), 0.5, 0.5)], (1,), "bernoulli", 4, 0, HW)
    assert (net.layers[0].weights.item(), net.layers[0].vth, net.layers[0].dv) == (255, 425, 2048)
    out = emulate(net, np.ones((1, 4, 1), np.uint8)).output_spikes
    assert out[0, :, 0].tolist() == [0, 0, 1, 0]  # float STBP: u = 0.3, 0.45, 0.525 -> spike, then 0.3


def test_numpy_and_torch_emulators_give_identical_spikes():
    pytest.importorskip("torch")
    net, _ = small_network(seed=3, sizes=(30, 20, 15, 5), time_steps=7)
    rng = np.random.default_rng(5)
    spikes = (rng.random((37, 7, 30)) < 0.4).astype(np.uint8)
    a = emulate(net, spikes, backend="numpy", batch_size=10)
    b = emulate(net, spikes, backend="torch", device="cpu", batch_size=16)
    for x, y in zip(a.layer_spikes, b.layer_spikes):
        np.testing.assert_array_equal(x, y)
    assert sum(s.sum() for s in a.layer_spikes) > 0


def test_emulator_rejects_wrong_input_shape():
    net, _ = small_network()
    with pytest.raises(ValueError, match="expected \\(samples, 5, 12\\)"):
        emulate(net, np.zeros((3, 4, 12)))


def test_exported_digits_mlp_matches_float_accuracy(trained_digits, tmp_path):
    import torch

    from trainer.checkpoint import build_model, load_checkpoint
    from trainer.data import load_dataset
    from trainer.train import encode_split

    checkpoint_path, config = trained_digits
    net, report = export_checkpoint(checkpoint_path, HW)
    save_artifact(net, tmp_path / "digits.onnx")
    net = load_artifact(tmp_path / "digits.onnx")
    test = load_dataset("digits").test
    spikes = encode_split(net.encoding, test, net.time_steps, net.eval_seed)
    with torch.no_grad():
        float_predictions = build_model(load_checkpoint(checkpoint_path))(torch.from_numpy(spikes).float())
    float_predictions = float_predictions.output_spikes.sum(1).argmax(1).numpy()
    emulated = emulate(net, spikes).predictions
    float_accuracy = (float_predictions == test.labels).mean()
    emulated_accuracy = (emulated == test.labels).mean()
    assert float_accuracy > 0.85
    assert abs(float_accuracy - emulated_accuracy) <= 0.01
    assert (float_predictions == emulated).mean() >= 0.97
    assert net.metadata["training_seed"] == config.seed
    assert "torch" in net.metadata["export_versions"]


def test_cli_export_writes_artifact_and_report(trained_digits, tmp_path, capsys):
    from trainer.cli import main

    checkpoint_path, _ = trained_digits
    out = tmp_path / "net.onnx"
    assert main(["export", str(checkpoint_path), "--hw", str(HW_CONFIG_DIR / "loihi2.yaml"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "quantization report (loihi2)" in printed and "layer0" in printed and "layer1" in printed
    report = json.loads((tmp_path / "net.onnx.report.json").read_text())
    assert [layer["name"] for layer in report["layers"]] == ["layer0", "layer1"]
    assert load_artifact(out).layers[0].in_features == 64
    assert main(["export", str(tmp_path / "nope.safetensors"), "-o", str(out)]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    assert main(["export", str(checkpoint_path), "--hw", "loihi9", "-o", str(out)]) == 2
