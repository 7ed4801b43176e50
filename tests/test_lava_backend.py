"""The Lava backend (fixed_pt bit-exact with the emulator, floating_pt with the float model),
its multi-sample alignment, runtime cleanup, and the fidelity harness and its gates."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re

import numpy as np
import pytest

pytest.importorskip("lava", reason="the Lava backend needs lava-nc (Python 3.10, `pip install -e .[lava]`)")

from export.emulator import emulate  # noqa: E402
from export.network import ExportedNetwork  # noqa: E402
from export.timing import deployment_timing  # noqa: E402
from export.validate import ExportRangeError  # noqa: E402
from helpers import (HW, assert_bit_exact, chain_structure, integer_network, recurrent_structure,  # noqa: E402
                     skip_structure)
from lava_backend import runner  # noqa: E402
from lava_backend.fidelity import BackendRun, build_report, check_gates, compare_pair  # noqa: E402
from lava_backend.runner import PipelineSchedule, run_network  # noqa: E402
from netgraph import LIF, Conv2d, Dense, Edge, Graph, Input, Output, Sum, Synapse  # noqa: E402


def random_chain(rng, sizes, time_steps, **kwargs) -> ExportedNetwork:
    return integer_network(chain_structure(sizes), time_steps, rng, **kwargs)


# --------------------------------------------------------------------------- alignment (pure)


def test_schedule_offsets_and_rows_follow_one_step_of_delay_per_synapse():
    # Lava step 1 sends input row 0; the l-th population of a chain sees it at step l + 2
    # and its recorder (same step, no delay) stores it in row l + 1.
    timing = deployment_timing(chain_structure((4, 4, 4, 4)), 63)
    assert timing.emit == {"input": 1, "l0": 2, "l1": 3, "l2": 4} and set(timing.delay.values()) == {0}
    schedule = PipelineSchedule(samples=4, time_steps=5, emit={"l0": 2, "l1": 3, "l2": 4})
    assert [schedule.reset_offset(p) for p in ("l0", "l1", "l2")] == [2, 3, 4]
    assert [schedule.first_row(p) for p in ("l0", "l1", "l2")] == [1, 2, 3]
    assert schedule.total_steps == 4 * 5 + 3
    assert [PipelineSchedule(1, 3, {"a": e}).reset_offset("a") for e in (2, 3, 4, 5)] == [2, 0, 1, 2]
    rows = np.arange(schedule.total_steps)[:, None]
    aligned = schedule.align(rows, "l1")
    assert aligned.shape == (4, 5, 1)
    assert aligned[0, :, 0].tolist() == [2, 3, 4, 5, 6] and aligned[3, 4, 0] == 21
    # A recurrent input into l1 is cleared just before each sample's first step reaches it.
    assert schedule.clear_points("l1") == [2, 7, 12, 17]


# --------------------------------------------------------------------------- fixed_pt bit-exactness


@pytest.mark.parametrize(
    "sizes, time_steps, dv, vth, bias_exp, weight_exp, sign_mode, bits",
    [
        ((20, 16, 5), 6, 3277, 300, 0, 0, "mixed", 8),  # tau 0.2, the trainer's default
        ((12, 10), 4, 0, 900, 2, 0, "mixed", 8),  # no leak, shifted bias
        ((15, 12, 9, 4), 5, 4095, 150, 1, 1, "mixed", 6),  # 3 layers, full leak, 6-bit weights, weight_exp 1
        ((10, 8, 3), 7, 1024, 200, 0, -1, "excitatory", 8),  # one-sign weights, weight_exp -1 (floor shift)
        ((9, 6), 3, 2048, 50, 7, 0, "inhibitory", 8),  # inhibitory weights, bias-driven firing
    ],
)
def test_lava_fixed_pt_matches_the_emulator_bit_for_bit(sizes, time_steps, dv, vth, bias_exp, weight_exp, sign_mode, bits):
    rng = np.random.default_rng(sum(sizes) + time_steps)
    network = random_chain(rng, sizes, time_steps, dv=dv, vth=vth, bias_exp=bias_exp, weight_exp=weight_exp,
                           sign_mode=sign_mode, bits=bits)
    spikes = (rng.random((9, time_steps, sizes[0])) < 0.4).astype(np.uint8)
    emulated, _ = assert_bit_exact(network, spikes)
    assert sum(s.sum() for s in emulated.population_spikes.values()) > 0  # the case is not vacuous


def test_lava_fixed_pt_and_emulator_agree_on_ties_at_threshold_and_saturation():
    # vth = 4: one input of weight 4 gives v = 256 = 4 << 6 exactly, which must not fire;
    # two give 512 and fire. A huge bias drives v into the 24-bit clip every step.
    network = integer_network(chain_structure((2, 3)), 4, weights={"d0": [[4, 0], [4, 4], [-256, 254]]},
                              bias={"l0": [0, 0, 4095]}, vth=4, dv=0, bias_exp=7)
    spikes = np.array([[[1, 0], [1, 0], [0, 1], [1, 1]]], dtype=np.uint8)
    emulated, _ = assert_bit_exact(network, spikes)
    # By hand: neuron 0 gets 256, 512 (fires), 0, 256 -> spikes only at step 1.
    assert emulated.output_spikes[0, :, 0].tolist() == [0, 1, 0, 0]


def test_lava_fixed_pt_matches_on_a_trained_network_and_floating_pt_matches_the_float_model(trained_digits):
    import torch

    from spikedata import load_dataset
    from stbp_cli.pipeline import export_checkpoint
    from trainer.checkpoint import build_model, load_checkpoint
    from trainer.encoding import encode_split

    checkpoint_path, _ = trained_digits
    network, _ = export_checkpoint(checkpoint_path, HW)
    test = load_dataset("digits").test.head(60)
    spikes = encode_split(network.encoding, test.inputs, network.time_steps, network.eval_seed)
    assert_bit_exact(network, spikes, shards=2)
    lava_float = run_network(network, spikes, mode="floating_pt", progress=False)
    with torch.no_grad():
        trained = build_model(load_checkpoint(checkpoint_path))(torch.from_numpy(spikes).float())
    for name, expected in trained.population_spikes.items():
        agreement = (lava_float.population_spikes[name] == expected.numpy().astype(np.uint8)).mean()
        assert agreement > 0.999, f"population {name}: {agreement}"
    np.testing.assert_array_equal(lava_float.predictions, trained.output_spikes.sum(1).argmax(1).numpy())


def test_a_wrong_reset_offset_breaks_bit_exactness():
    rng = np.random.default_rng(4)
    network = random_chain(rng, (12, 10, 6), 5, dv=1024, vth=200)
    spikes = (rng.random((6, 5, 12)) < 0.5).astype(np.uint8)
    assert_bit_exact(network, spikes, reset_offsets={"l0": 2, "l1": 3})  # the schedule's own offsets pass
    for wrong in ({"l0": 3, "l1": 3}, {"l0": 2, "l1": 4}, {"l0": 1, "l1": 2}):
        with pytest.raises(AssertionError):
            assert_bit_exact(network, spikes, reset_offsets=wrong)


def test_shards_give_the_same_spikes_as_one_run():
    rng = np.random.default_rng(5)
    network = integer_network(recurrent_structure(), 4, rng, vth=100)
    spikes = (rng.random((7, 4, 10)) < 0.5).astype(np.uint8)
    one = run_network(network, spikes, shards=1, progress=False)
    three = run_network(network, spikes, shards=3, progress=False)
    assert three.shards == min(3, len(os.sched_getaffinity(0)))  # capped at the cores
    for name in one.population_spikes:
        np.testing.assert_array_equal(one.population_spikes[name], three.population_spikes[name])


# --------------------------------------------------------------------------- skip and recurrent connections


def conv_skip_structure() -> Graph:
    """A residual block on 2x6x6 maps: a -> b -> c, and a -> c through a 1x1 conv shortcut."""
    return Graph((Input("input", (2, 6, 6)), Conv2d("a_in", 3, (3, 3), padding=1), LIF("a", (3, 6, 6)),
                  Conv2d("b_in", 3, (3, 3), padding=1), LIF("b", (3, 6, 6)), Conv2d("c_main", 3, (3, 3), padding=1),
                  Conv2d("c_skip", 3, (1, 1)), Sum("c_sum"), LIF("c", (3, 6, 6)), Dense("out_in", 4), LIF("out", (4,)),
                  Output("output")),
                 (Edge("input", "a_in"), Edge("a_in", "a"), Edge("a", "b_in"), Edge("b_in", "b"), Edge("b", "c_main"),
                  Edge("a", "c_skip"), Edge("c_main", "c_sum"), Edge("c_skip", "c_sum"), Edge("c_sum", "c"),
                  Edge("c", "out_in"), Edge("out_in", "out"), Edge("out", "output")))


def _no_alignment(graph, max_delay):
    """The timing without the delays that align paths: each synapse delivers after one step."""
    timing = deployment_timing(graph, max_delay)
    return dataclasses.replace(timing, delay={name: 0 for name in timing.delay})


@pytest.mark.parametrize("structure", ["dense", "conv"])
def test_skip_connection_is_bit_exact_because_the_short_path_is_delayed(structure, monkeypatch):
    rng = np.random.default_rng(11)
    graph = skip_structure(10, 8, 4) if structure == "dense" else conv_skip_structure()
    network = integer_network(graph, 6, rng, vth=180 if structure == "dense" else 400)
    spikes = (rng.random((6, 6, *network.input_shape)) < 0.4).astype(np.uint8)
    assert deployment_timing(network.graph, 63).delay["c_skip"] == 1
    emulated, _ = assert_bit_exact(network, spikes)
    assert emulated.population_spikes["c"].sum() > 0
    # Without the delay the shortcut's spikes arrive a step early: Lava then differs.
    monkeypatch.setattr(runner, "deployment_timing", _no_alignment)
    with pytest.raises(AssertionError, match="population c"):
        assert_bit_exact(network, spikes)


def test_recurrent_connection_is_bit_exact_because_in_flight_input_is_cleared(monkeypatch):
    rng = np.random.default_rng(12)
    network = integer_network(recurrent_structure(10, 8, 4), 5, rng, vth=120)
    spikes = (rng.random((8, 5, 10)) < 0.4).astype(np.uint8)
    emulated, lava = assert_bit_exact(network, spikes, shards=2)
    assert lava.pauses > 0
    assert emulated.population_spikes["h"][:, -1].sum() > 0  # last steps spike: a leak would show
    # Without clearing, a sample's last spikes leak into the next sample's first step.
    monkeypatch.setattr(runner, "_clear_in_flight", lambda graph: None)
    with pytest.raises(AssertionError, match="population h"):
        assert_bit_exact(network, spikes)


def test_a_target_that_waits_for_a_later_recurrent_source_is_bit_exact():
    from test_graph import late_recurrent_structure

    rng = np.random.default_rng(15)
    network = integer_network(late_recurrent_structure(), 5, rng, vth=60)
    spikes = (rng.random((6, 5, 3)) < 0.5).astype(np.uint8)
    emulated, lava = assert_bit_exact(network, spikes)
    assert emulated.population_spikes["a"].sum() > 0 and lava.pauses > 0


def test_current_based_neurons_are_bit_exact():
    rng = np.random.default_rng(13)
    for structure in (chain_structure((10, 8, 4)), recurrent_structure()):
        network = integer_network(structure, 6, rng, du=1024, dv=2048, vth=300)
        spikes = (rng.random((6, 6, 10)) < 0.4).astype(np.uint8)
        emulated, _ = assert_bit_exact(network, spikes)
        assert sum(s.sum() for s in emulated.population_spikes.values()) > 0


def test_floating_pt_follows_the_float_parameters_on_a_skip_and_a_recurrent_graph():
    # Integer-valued float weights equal to the integer ones, no bias, full decays (tau =
    # tau_current = 0): floating_pt fires when the step's input a >= vth + 1/64, i.e. a >= 62
    # for vth = 61; fixed_pt when 64 a + r > 64 * 61, where r = v_prev // 4096 is the
    # residue its 12-bit decay keeps (|r| <= 11 with these small weights). Weights are even
    # and vth odd, so both fire exactly when a >= 62: the modes must agree spike for spike.
    rng = np.random.default_rng(14)
    for structure in (skip_structure(), recurrent_structure()):
        weights = {n.name: rng.integers(-20, 21, size=n.weight_shape(structure.read_shape(n.name))) * 2
                   for n in structure.nodes if isinstance(n, Synapse)}
        fixed = integer_network(structure, 5, weights=weights, du=4095, dv=4095, vth=61,
                                bias={lif.name: np.zeros(lif.neurons) for lif in structure.populations})
        floating = dataclasses.replace(fixed, graph=fixed.graph.replace(nodes=[
            dataclasses.replace(lif, tau=0.0, v_threshold=61.0 + 1.0 / 64) for lif in fixed.graph.populations]))
        spikes = (rng.random((5, 5, 10)) < 0.5).astype(np.uint8)
        a = run_network(fixed, spikes, mode="fixed_pt", progress=False)
        b = run_network(floating, spikes, mode="floating_pt", progress=False)
        assert sum(x.sum() for x in a.population_spikes.values()) > 0
        for name in a.population_spikes:
            np.testing.assert_array_equal(a.population_spikes[name], b.population_spikes[name], err_msg=name)


# --------------------------------------------------------------------------- safety


def _lava_workers():
    return [p for p in multiprocessing.active_children() if type(p).__name__ == "SystemProcess"]


@pytest.mark.parametrize("exception", [RuntimeError("boom"), KeyboardInterrupt()])
def test_runtime_is_stopped_and_no_worker_is_left_after_an_exception(exception):
    rng = np.random.default_rng(6)
    network = random_chain(rng, (8, 6, 3), 4, vth=100)
    spikes = (rng.random((20, 4, 8)) < 0.5).astype(np.uint8)

    def fail(done, total):
        if done < total:
            raise exception

    with pytest.raises(type(exception)):
        run_network(network, spikes, progress=False, on_progress=fail, shards=2, updates=5)
    assert _lava_workers() == []
    # The next run works normally.
    assert_bit_exact(network, spikes[:3])
    assert _lava_workers() == []


def test_non_integer_parameters_are_refused_before_lava_can_hang():
    good = integer_network(chain_structure((1, 1)), 3, weights={"d0": [[2]]}, bias={"l0": [0]}, vth=10, dv=100)
    lif = good.graph.node("l0")
    bad = dataclasses.replace(good, graph=good.graph.replace(
        nodes=[dataclasses.replace(lif, quantized=dataclasses.replace(lif.quantized, vth=10.5))]))
    with pytest.raises(ExportRangeError, match="node l0 \\(LIF\\): vth must be an integer"):
        run_network(bad, np.zeros((1, 3, 1), np.uint8), progress=False)
    with pytest.raises(ValueError, match="expected \\(samples >= 1, 3, 1\\)"):
        run_network(good, np.zeros((1, 4, 1), np.uint8), progress=False)
    with pytest.raises(ValueError, match="unknown Lava mode"):
        run_network(good, np.zeros((1, 3, 1), np.uint8), mode="fixed", progress=False)
    with pytest.raises(ValueError, match="record must name populations among l0; got \\['layer0'\\]"):
        run_network(good, np.zeros((1, 3, 1), np.uint8), record=["layer0"], progress=False)


# --------------------------------------------------------------------------- fidelity harness


def _run(name, *populations):
    spikes = {f"p{i}": np.asarray(p, dtype=np.uint8) for i, p in enumerate(populations)}
    return BackendRun(name, spikes, f"p{len(populations) - 1}", 1.0)


def test_pair_comparison_finds_the_first_divergence_by_hand():
    # 2 samples, T = 3; population p0 has 2 neurons, p1 (the output) 2 classes.
    ref0 = [[[1, 0], [0, 1], [1, 1]], [[0, 0], [1, 0], [0, 0]]]
    ref1 = [[[1, 0], [1, 0], [0, 0]], [[0, 1], [0, 1], [0, 0]]]
    cand0 = [[[1, 0], [0, 1], [1, 1]], [[0, 0], [1, 0], [0, 1]]]  # sample 1 differs at step 2
    cand1 = [[[1, 0], [1, 0], [0, 0]], [[0, 1], [1, 0], [1, 0]]]  # sample 1 differs at step 1
    pair = compare_pair(_run("a", ref0, ref1), _run("b", cand0, cand1), False)
    assert [p.mismatched_spikes for p in pair.populations] == [1, 3]
    assert [p.population for p in pair.populations] == ["p0", "p1"]
    assert pair.populations[0].spike_train_match == pytest.approx(3 / 4)
    assert pair.populations[1].spike_train_match == pytest.approx(2 / 4)
    # The earliest difference of sample 1 is p1 at step 1 (before p0's at step 2).
    assert [(d.sample, d.population, d.time_step) for d in pair.first_divergence] == [(1, "p1", 1)]
    assert pair.divergence_by_population == {"p1": 1}
    # Predictions: sample 1 counts (0, 2) vs (2, 1) -> class 1 vs class 0.
    assert pair.prediction_changes == 1 and not pair.identical


def test_gates_fail_with_a_one_line_reason():
    same = [[[1, 0]], [[0, 1]]]
    labels = np.array([0, 1])
    good = build_report({"trained": _run("trained", same), "emulator": _run("emulator", same),
                         "lava_fixed": _run("lava_fixed", same)}, labels, 1)
    assert check_gates(good, max_accuracy_drop=0.0, require_bit_exact=True) is None
    worse = [[[0, 1]], [[0, 1]]]  # sample 0 now predicted as class 1: accuracy 100% -> 50%
    bad = build_report({"trained": _run("trained", same), "emulator": _run("emulator", same),
                        "lava_fixed": _run("lava_fixed", worse)}, labels, 1)
    reason = check_gates(bad, max_accuracy_drop=None, require_bit_exact=True)
    assert "emulator and Lava fixed_pt differ (p0: 2 spikes in 1 samples)" in reason and "\n" not in reason
    reason = check_gates(bad, max_accuracy_drop=10.0, require_bit_exact=False)
    assert reason.startswith("deployed accuracy dropped 50.00 pp") and "\n" not in reason
    assert check_gates(bad, max_accuracy_drop=60.0, require_bit_exact=False) is None
    no_lava = build_report({"trained": _run("trained", same)}, labels, 1)
    assert "bit-exactness is unproven" in check_gates(no_lava, None, True)


def test_cli_compare_reports_and_gates(trained_digits, tmp_path, capsys):
    import json

    from stbp_cli.main import main

    checkpoint_path, _ = trained_digits
    artifact = tmp_path / "net.onnx"
    assert main(["export", str(checkpoint_path), "-o", str(artifact)]) == 0
    capsys.readouterr()
    common = ["compare", str(checkpoint_path), str(artifact), "--limit", "40", "--no-progress",
              "--json", str(tmp_path / "f.json"), "--plot", str(tmp_path / "f.png")]
    assert main(common + ["--require-bit-exact", "--max-accuracy-drop", "5"]) == 0
    out = capsys.readouterr().out
    assert "emulator == Lava fixed_pt: bit-exact on every population and sample" in out
    report = json.loads((tmp_path / "f.json").read_text())
    assert report["bit_exact_emulator_vs_lava_fixed"] is True
    assert set(report["accuracy"]) == {"trained", "emulator", "lava_fixed", "lava_float"}
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert f"html:   {tmp_path / 'f.html'}" in out
    page = (tmp_path / "f.html").read_text()
    assert "emulator == Lava fixed_pt (bit-exact)" in page and "data:image/png;base64," in page
    for pair in report["pairs"]:  # the listed changes agree with each pair's own count
        listed = [c for c in report["changed_predictions"]
                  if c["predictions"][pair["reference"]] != c["predictions"][pair["candidate"]]]
        assert len(listed) == pair["prediction_changes"]
    # A gate that cannot hold (deployed must beat trained by 100 pp) fails with exit 1 and one line.
    assert main(common + ["--backends", "trained,emulator", "--max-accuracy-drop", "-100"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FAILED: deployed accuracy dropped" in err[0]
    # Subsets of backends: nothing to plot or gate must be said, not crash.
    assert main(common + ["--backends", "trained"]) == 0
    assert "plot:   none (no deployed backend ran)" in capsys.readouterr().out
    assert main(common + ["--backends", "trained", "--max-accuracy-drop", "1"]) == 1
    assert "no deployed backend" in capsys.readouterr().err
    assert main(common + ["--backends", "trained,lava_float", "--require-bit-exact"]) == 1
    assert "emulator and lava_fixed did not run" in capsys.readouterr().err
    from helpers import tiny_digits_config

    from trainer.train import train

    other = train(tiny_digits_config(tmp_path, epochs=1), progress=False).checkpoint_path
    assert main(["compare", str(other), str(artifact), "--no-progress"]) == 2
    assert "exported from a different checkpoint" in capsys.readouterr().err


def test_cli_demo_runs_the_whole_pipeline_and_run_reports_accuracy(tmp_path, capsys):
    from stbp_cli.main import main

    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--epochs", "2", "--limit", "30", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/3] training", "[2/3] exporting", "[3/3]", "quantization report", "lava_fixed",
                  "emulator == Lava fixed_pt: bit-exact on every population and sample"):
        assert stage in printed
    assert all((out / name).is_file() for name in ("checkpoint.safetensors", "net.onnx", "fidelity.json", "fidelity.png",
                                                      "fidelity.html"))
    assert main(["run", str(out / "net.onnx"), "--limit", "25", "--no-progress",
                 "--save-spikes", str(tmp_path / "spikes.npz")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("Lava fixed_pt") and "on 25 digits test samples" in line and "samples/s" in line
    saved = np.load(tmp_path / "spikes.npz")
    assert saved["output_spikes"].shape == (25, 16, 10)
    assert main(["run", str(out / "net.onnx"), "--backend", "emulator", "--limit", "25", "--no-progress"]) == 0
    assert re.search(r"emulator \((numpy|torch cpu|torch cuda\S*)\): accuracy", capsys.readouterr().out)
    assert main(["run", str(tmp_path / "missing.onnx")]) == 2


def test_a_worker_that_dies_mid_run_ends_the_run_with_an_error_not_a_hang():
    # Run in a subprocess with a timeout: before the fix, Lava waited forever.
    import subprocess
    import sys
    import textwrap

    from conftest import REPO_ROOT

    script = textwrap.dedent("""
        import multiprocessing, numpy as np
        import lava_backend.runner as runner
        from lava_backend.spike_io import processes
        import sys
        sys.path.insert(0, "tests")
        from helpers import chain_structure, integer_network

        original = processes.PySpikeIOModelBase.run_spk
        def failing(self):
            if self.time_step == 5:
                raise OSError("disk full (injected)")
            original(self)
        processes.PySpikeIOModelBase.run_spk = failing  # inherited by the forked worker

        net = integer_network(chain_structure((2, 2)), 3, weights={"d0": [[2, -2], [4, 0]]}, bias={"l0": [0, 0]},
                              vth=1, dv=0)
        try:
            runner.run_network(net, np.ones((4, 3, 2), np.uint8), progress=False, shards=1, updates=10)
        except runner.LavaRunError as exc:
            print("LavaRunError:", exc)
        left = [p for p in multiprocessing.active_children() if type(p).__name__ == "SystemProcess"]
        print("workers left:", len(left))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert "LavaRunError: a Lava worker process of shard0.io ended during the run" in result.stdout, result.stderr[-2000:]
    assert "workers left: 0" in result.stdout


def test_ctrl_c_during_a_run_stops_every_lava_process(tmp_path):
    # Ctrl-C in a terminal sends SIGINT to the whole process group, workers included.
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    from conftest import REPO_ROOT

    script = tmp_path / "long_run.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, numpy as np
        import lava_backend.runner as runner
        import sys
        sys.path.insert(0, "tests")
        from helpers import chain_structure, integer_network
        rng = np.random.default_rng(0)
        net = integer_network(chain_structure((40, 50)), 10, rng, bias={"l0": np.zeros(50)}, vth=100, dv=0)
        print("ready", flush=True)
        try:
            runner.run_network(net, (rng.random((5000, 10, 40)) < 0.3).astype(np.uint8), progress=False,
                               shards=2, updates=50, on_progress=lambda done, total: print("step", flush=True))
            print("finished before the interrupt")
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        left = [p for p in multiprocessing.active_children() if type(p).__name__ == "SystemProcess"]
        print("workers left:", len(left), flush=True)
    """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO_ROOT, start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        assert process.stdout.readline().strip() == "step"  # the runtimes are running
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "interrupted" in out and "workers left: 0" in out, err[-2000:]
    assert process.returncode == 0
    survivors = subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout.split()
    assert survivors == []


def test_inputs_lava_cannot_honour_are_refused_naming_the_problem():
    network = integer_network(chain_structure((1, 1)), 3, weights={"d0": [[2]]}, bias={"l0": [0]}, vth=10, dv=100)
    with pytest.raises(ValueError, match="input spikes must be 0 or 1"):
        run_network(network, np.full((1, 3, 1), 2, np.uint8), progress=False)
    with pytest.raises(ValueError, match="input spikes must be 0 or 1"):
        emulate(network, np.full((1, 3, 1), 2, np.uint8))
    for not_binary in (0.5, np.nan, -1.0):  # a float would otherwise be cast to an integer silently
        with pytest.raises(ValueError, match="input spikes must be 0 or 1"):
            emulate(network, np.full((1, 3, 1), not_binary))
    assert emulate(network, np.ones((1, 3, 1), bool)).output_spikes.shape == (1, 3, 1)
    with pytest.raises(ValueError, match="no samples to emulate"):
        emulate(network, np.zeros((0, 3, 1), np.uint8))
    odd_hw = dataclasses.replace(HW, name="odd", vth_shift=5)
    with pytest.raises(ValueError, match="hardware config 'odd' differs .*vth_shift = 5 \\(Lava: 6\\)"):
        run_network(dataclasses.replace(network, hardware=odd_hw), np.zeros((1, 3, 1), np.uint8), progress=False)


def test_backends_that_recorded_different_populations_are_not_compared():
    a = BackendRun("trained", {"x": np.zeros((1, 2, 3), np.uint8)}, "x", 1.0)
    b = BackendRun("emulator", {"y": np.zeros((1, 2, 3), np.uint8)}, "y", 1.0)
    with pytest.raises(ValueError, match="trained recorded populations \\['x'\\] but emulator recorded \\['y'\\]"):
        compare_pair(a, b, True)
