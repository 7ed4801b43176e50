"""The quantization report explains itself: legend, firing flags, totals, chip fit check, and
the warning for hardware configs whose arithmetic Lava's fixed-point models do not run."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from export.hw_config import HW_CONFIG_DIR, lava_arithmetic_mismatch
from export.quantize import quantize_graph
from export.report import COLUMN_LEGEND, FLAG_LEGEND
from helpers import HW, float_chain

# layer0: 3 neurons from 2 inputs; neuron 0 only has negative weights and no bias (never
# fires), neuron 2's bias 0.6 alone exceeds Vth = 0.5 (fires every step).
W0 = np.array([[-0.3, -0.2], [0.4, 0.2], [0.1, 0.1]])
B0 = np.array([0.0, 0.0, 0.6])
# layer1: 1 neuron from 3; one weight exactly zero.
W1 = np.array([[0.5, 0.0, -0.5]])


def report_for(hw=HW):
    _, report = quantize_graph(float_chain([(W0, B0), (W1, np.zeros(1))], (2,)), "bernoulli", 5, 11, hw)
    return report


def test_totals_are_hand_computed():
    t = report_for().resources
    # neurons 3 + 1; weights 6 + 3, of which one is zero; dense: connections = weights
    assert (t.neurons, t.weight_entries, t.nonzero_weights, t.connections) == (4, 9, 8, 9)
    assert t.synaptic_memory_bytes == 9  # 9 weights x 8 bits
    assert (t.cores, t.cores_unrolled) == (2, 2)  # one core per population
    assert (t.chip, t.cores_per_chip, t.neurons_per_chip) == ("loihi2", 128, 128 * 8192)
    assert t.synaptic_memory_bytes_per_chip == 128 * 1048576 // 8
    assert t.overflows() == [] and t.chips_needed == 1


def test_totals_and_fit_are_printed_and_in_the_json():
    report = report_for()
    table = report.format_table()
    assert "4 neurons; synapses: 9 weights stored (8 nonzero), 9 connections unrolled" in table
    assert "synaptic memory 9 bytes" in table and "about 2 cores" in table
    assert "chip fit: fits one loihi2 chip" in table and "using 2 of its 128 cores" in table
    data = json.loads(json.dumps(report.to_dict()))
    assert data["resources"]["nonzero_weights"] == 8 and data["resources"]["fits_one_chip"] is True


def test_dead_and_always_on_neurons_are_flagged_with_counts():
    report = report_for()
    line = next(line for line in report.format_table().splitlines() if line.startswith("layer0 "))
    assert "never-fires 1" in line and "always-fires 1" in line
    line1 = next(line for line in report.format_table().splitlines() if line.startswith("layer1 "))
    assert "never-fires" not in line1 and "always-fires" not in line1


def test_legend_explains_every_column_and_flag():
    report = report_for()
    table = report.format_table()
    for column in ("never", "|a| max", "b exp", "unrl"):
        assert f"  {column}: {COLUMN_LEGEND[column]}" in table
    for flag in ("act>16bit", "u-may-wrap", "never-fires N", "always-fires N"):
        measures, chip, lava = FLAG_LEGEND[flag]
        assert f"  {flag}: {measures} | {chip} | {lava}" in table
    assert "act>16bit" in FLAG_LEGEND and "no effect" in FLAG_LEGEND["act>16bit"][2]
    legend = report.to_dict()["legend"]
    assert set(legend["columns"]) == set(COLUMN_LEGEND)
    assert set(legend["flags"]["act>16bit"]) == {"measures", "on_chip", "in_lava_simulator"}


@pytest.mark.parametrize("limits, named", [
    ({"cores_per_chip": 1}, "cores 2 > 1"),
    ({"cores_per_chip": 1, "neurons_per_core": 3}, "neurons 4 > 3"),
    ({"cores_per_chip": 2, "synaptic_memory_bits_per_core": 32}, "synaptic memory bytes 9 > 8"),  # 2 x 4 bytes
])
def test_fit_check_names_the_resource_and_the_numbers(limits, named):
    hw = dataclasses.replace(HW, **limits)
    resources = report_for(hw).resources
    assert named in resources.overflows()
    assert "chip fit: does NOT fit one loihi2 chip" in resources.fit_line() and named in resources.fit_line()
    assert "the emulator and Lava's CPU simulator still run it" in resources.fit_line()
    assert report_for(hw).to_dict()["resources"]["fits_one_chip"] is False


def test_export_warns_when_lava_cannot_run_the_hw_config():
    hw = dataclasses.replace(HW, name="w4", weight_bits=4, num_weight_bits_max=4)
    assert lava_arithmetic_mismatch(hw) == ("hardware config 'w4' differs from what Lava 0.10.0's fixed-point models "
                                            "compute: weight_bits = 4 (Lava: 8)")
    assert lava_arithmetic_mismatch(HW) is None
    warnings = report_for(hw).warnings
    [line] = [w for w in warnings if "weight_bits = 4" in w]
    assert "Lava fixed_pt will refuse" in line and "emulator backend (--backend emulator) still runs it" in line
    assert not any("Lava" in w for w in report_for().warnings)


def test_run_refuses_with_the_same_predicate_and_suggests_the_emulator():
    from lava_backend.runner import check_lava_compatible
    from netgraph.errors import HardwareConfigError

    hw = dataclasses.replace(HW, name="w4", weight_bits=4, num_weight_bits_max=4)
    network, _ = quantize_graph(float_chain([(W0, B0)], (2,)), "bernoulli", 5, 11, hw)
    with pytest.raises(HardwareConfigError, match=r"weight_bits = 4 \(Lava: 8\); .*--backend emulator"):
        check_lava_compatible(network)


def test_cli_export_prints_the_lava_warning_for_a_4_bit_config(trained_digits, tmp_path, capsys):
    from stbp_cli.main import main

    raw = yaml.safe_load((HW_CONFIG_DIR / "loihi2.yaml").read_text())
    raw.update(name="loihi2_w4", weight_bits=4, num_weight_bits_max=4)
    hw_path = tmp_path / "w4.yaml"
    hw_path.write_text(yaml.safe_dump(raw))
    checkpoint_path, _ = trained_digits
    out = tmp_path / "net.onnx"
    assert main(["export", str(checkpoint_path), "--hw", str(hw_path), "-o", str(out), "--measure", "0"]) == 0
    printed = capsys.readouterr().out
    assert "warning: hardware config 'loihi2_w4' differs" in printed and "--backend emulator" in printed
    assert "chip fit: fits one loihi2_w4 chip" in printed and "legend" in printed
    report = json.loads((tmp_path / "net.onnx.report.json").read_text())
    assert report["resources"]["neurons"] == 64 + 10 and report["legend"]["flags"]
