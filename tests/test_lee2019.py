"""Lee, Sarwar, Panda, Srinivasan & Roy 2019 (trainer.lee2019): the leak-corrected spike
derivative against the paper's formula, the backward pass by hand, dropout held over time, the
potential readout through every stage, and a residual network trained and deployed bit-exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from export.artifact import ArtifactError, load_artifact, save_artifact
from export.hw_config import resolve_hardware_config
from export.validate import ExportRangeError, validate_network
from helpers import assert_bit_exact, assert_resume_continues_exactly
from netgraph import LIF, Dense, Edge, Graph, GraphError, Input, Output, predict_from_potential
from spikedata import load_dataset
from stbp_cli.pipeline import export_checkpoint, trained_run
from trainer.checkpoint import float_graph, load_checkpoint
from trainer.config import ConfigError, config_from_dict
from trainer.encoding import encode_split
from trainer.lee2019 import LeakAwarePopulation, leak_aware_sequence, leak_correction
from trainer.neuron import LIFParameters, lif_sequence
from trainer.surrogate import Surrogate
from trainer.train import train

LOIHI2 = resolve_hardware_config("loihi2")
TAU = 1 - 41 / 4096  # the paper's leak 0.99 as Loihi's dv = 41


def test_leak_correction_is_the_papers_factor():
    # lambda = 0.5, T = 4: spikes at t = 1 and 3 -> filtered 0.5^2 + 0.5^0 = 1.25 over 2 spikes
    spikes = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]])
    correction = leak_correction(spikes, 0.5)
    # paper: 1 - (1 / (tau_m gamma)) sum_k exp(-(T - t_k) / tau_m), lambda = exp(-1 / tau_m), T - t_k counted
    # from the last step (T - 1 - t_k here)
    tau_m = -1 / math.log(0.5)
    expected_first = 1 - (math.exp(-2 / tau_m) + math.exp(0)) / (tau_m * 2)
    expected_third = 1 - (0.5 ** 3 + 0.5 ** 2 + 0.5 + 1) / (tau_m * 4)
    assert correction[0].tolist() == pytest.approx([expected_first, 0.0, expected_third])
    assert expected_first == pytest.approx(0.566784, abs=1e-6)  # by hand: 1 + ln(0.5) * 0.625
    # an integrate-and-fire neuron (lambda = 1) has no leak to correct
    assert leak_correction(spikes, 1.0)[0].tolist() == [1.0, 0.0, 1.0]


def test_forward_is_the_graphs_lif_bit_for_bit():
    current = torch.randn(5, 40, 7, generator=torch.Generator().manual_seed(0)) * 0.6
    params = LIFParameters(TAU, 1.0)
    reference, reference_v = lif_sequence(current, params, Surrogate())
    spikes, potentials = leak_aware_sequence(current, params)
    assert torch.equal(spikes, reference) and torch.equal(potentials, reference_v)
    assert spikes.sum() > 20


def test_backward_ignores_the_leak_and_the_reset_and_passes_only_at_spikes():
    # tau 0.5, Vth 1: U = 0.6, then 0.3 + 0.8 = 1.1 (fires), then 0 + 0.5 = 0.5
    current = torch.tensor([[0.6, 0.8, 0.5]], requires_grad=True)
    spikes, _ = leak_aware_sequence(current, LIFParameters(0.5, 1.0))
    assert spikes.tolist() == [[0.0, 1.0, 0.0]]
    spikes.sum().backward()
    ng = 1 + math.log(0.5) * 0.5 ** (3 - 1 - 1) / 1
    # d s1 / d U1 = NG / Vth; dU1/dx1 = 1 and dU1/dx0 = dU1/dU0 = 1 - s0 = 1 (the leak's 0.5 left out);
    # x2 reaches no spike (and U2 no longer sees U1: reset)
    assert current.grad.tolist() == [pytest.approx([ng, ng, 0.0])]
    # Vth scales the pass-through
    current = torch.tensor([[0.6, 1.7, 0.5]], requires_grad=True)
    leak_aware_sequence(current, LIFParameters(0.5, 2.0))[0].sum().backward()
    assert current.grad.tolist() == [pytest.approx([ng / 2, ng / 2, 0.0])]


def test_non_spiking_output_integrates_with_gradient_one_per_step():
    current = torch.tensor([[0.5, -0.25, 1.0]], requires_grad=True)
    spikes, potentials = leak_aware_sequence(current, LIFParameters(0.5, math.inf), spiking=False)
    assert spikes.sum() == 0
    assert potentials[0].tolist() == [0.5, 0.0, 1.0]  # 0.5; 0.25 - 0.25; 0 + 1
    potentials[0, -1].backward()
    assert current.grad.tolist() == [[1.0, 1.0, 1.0]]  # the paper's do/d(Ws)[t] = 1 (before 1/T)


def _population(dropout: bool) -> LeakAwarePopulation:
    graph = Graph((Input("i", (6,)), Dense("d", 6), LIF("p", (6,), tau=0.9, v_threshold=0.5), Output("o")),
                  (Edge("i", "d"), Edge("d", "p"), Edge("p", "o")))
    return LeakAwarePopulation(graph.node("p"), graph, dropout)


def test_dropout_mask_is_held_over_all_steps_of_a_sample():
    population = _population(dropout=True).train()
    population.mask = torch.tensor([[2.0, 0.0, 2.0, 0.0, 2.0, 2.0]])  # p = 0.5: kept spikes count twice
    current = torch.full((1, 12, 6), 0.6)
    spikes = population.over_time([current])
    fired = leak_aware_sequence(current, population.params)[0]
    assert fired[0, :, 1].sum() > 0
    assert torch.equal(spikes, fired * population.mask.unsqueeze(1))
    population.eval()  # never at evaluation
    assert torch.equal(population.over_time([current]), fired)


def test_dropout_masks_one_per_sample_and_neuron_not_on_pools_or_output(tmp_path):
    from trainer.lee2019 import draw_dropout_masks, prepare
    from trainer.network import SpikingNetwork

    config = _config(tmp_path)
    model = SpikingNetwork.from_config(config.model, (1, 8, 8))
    prepare(model, config.training.lee2019, seed=0)
    draw_dropout_masks(model, 64, config.training.lee2019, torch.Generator().manual_seed(0))
    masks = {name: model.nodes[name].mask for name in ("stem", "b1", "b2", "pool", "fc")}
    assert masks["pool"] is None and masks["fc"] is None
    for name in ("stem", "b1", "b2"):
        mask = masks[name]
        assert mask.shape == (64, *model.graph.node(name).shape)
        assert set(mask.unique().tolist()) == {0.0, 1 / 0.8}  # inverted dropout at p = 0.2
        assert abs(float((mask == 0).float().mean()) - 0.2) < 0.02
        assert not torch.equal(mask[0], mask[1])  # each sample its own mask


def test_state_bounds_by_hand():
    from export.fixed_point import FixedLIFParameters, integrator_headroom, state_bounds

    # du 4095: u = a << 6 each step; dv 2048: v halves (toward zero); bias -10
    params = FixedLIFParameters(du=4095, dv=2048, vth=8, bias_mant=np.array([-10]), bias_exp=0)
    bounds = state_bounds(np.array([5]), np.array([-3]), params, 3, LOIHI2)
    # highest: 320 - 10 = 310; 155 + 310 = 465; 232 + 310 = 542. lowest: -202; -101 - 202 = -303; -151 - 202 = -353
    assert (bounds.u_high[0], bounds.v_high[0], bounds.u_low[0], bounds.v_low[0]) == (320, 542, -192, -353)
    assert "can reach 542, above its firing level 512" in integrator_headroom(bounds, 8, LOIHI2)
    assert integrator_headroom(bounds, 9, LOIHI2) is None  # 542 <= 576
    # a current that decays by half builds up: u = 320, 480, 560; v (bias 0) = 320, 640, 880
    params = FixedLIFParameters(du=2047, dv=2048, vth=8, bias_mant=np.array([0]), bias_exp=0)
    bounds = state_bounds(np.array([5]), np.array([0]), params, 3, LOIHI2)
    assert (bounds.u_high[0], bounds.v_high[0]) == (560, 880)
    # the current wraps at 2^23 even when a negative bias keeps v in range
    params = FixedLIFParameters(du=4095, dv=2048, vth=LOIHI2.vth_max, bias_mant=np.array([-4095]), bias_exp=10)
    bounds = state_bounds(np.array([(1 << 17) + 1]), np.array([0]), params, 1, LOIHI2)
    assert "where the 24-bit current wraps" in integrator_headroom(bounds, LOIHI2.vth_max, LOIHI2)
    low = state_bounds(np.array([0]), np.array([-(1 << 17)]), FixedLIFParameters(4095, 0, 1, np.array([-1]), 0), 1,
                       LOIHI2)
    assert "below the 24-bit clip" in integrator_headroom(low, 1, LOIHI2)


def test_export_lowers_the_scale_until_the_current_cannot_wrap():
    # 530 inputs of weight 1 and a negative bias: at the weights' own scale (254 per unit) the current
    # would reach 530 * 254 << 6 > 2^23 while the bias keeps v in range (the float potential: 497.9)
    from export.emulator import emulate
    from export.quantize import quantize_graph

    graph = Graph((Input("i", (530,)), Dense("d", 1, weight=np.ones((1, 530))),
                   LIF("p", (1,), tau=0.5, v_threshold=math.inf, bias=np.array([-32.1])), Output("o", "potential")),
                  (Edge("i", "d"), Edge("d", "p"), Edge("p", "o")))
    network, _ = quantize_graph(graph, "bernoulli", 1, 0, LOIHI2)
    emulated = emulate(network, np.ones((1, 1, 530), np.uint8))
    assert network.potential_in_trained_units(emulated.output_potential)[0, 0, 0] == pytest.approx(497.9, rel=0.01)


def test_old_artifacts_without_a_readout_read_spikes(trained, tmp_path):
    import onnx

    _, result = trained
    network, _ = export_checkpoint(result.checkpoint_path, LOIHI2)
    save_artifact(network, tmp_path / "net.onnx")
    model = onnx.load(str(tmp_path / "net.onnx"))
    kept = [p for p in model.metadata_props if p.key != "output_readout"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "old.onnx"))
    # without the key the Output reads spikes, which a never-firing population cannot feed: refused by name
    with pytest.raises(ArtifactError, match="node fc: a population that never fires"):
        load_artifact(tmp_path / "old.onnx")


def test_spiking_pool_config_errors(tmp_path):
    config = _config(tmp_path).to_dict()
    layers = config["model"]["layers"]
    with pytest.raises(ConfigError, match="must be dense or conv"):
        config_from_dict({**config, "model": {**config["model"], "layers": layers[:4]}})
    bad = [*layers[:4], {"name": "h", "type": "dense", "units": 5}, {"name": "p2", "type": "avgpool", "kernel_size": 2,
                                                                     "v_threshold": 0.875}, layers[4]]
    with pytest.raises(ConfigError, match="avgpool must read a conv layer or the input"):
        config_from_dict({**config, "model": {**config["model"], "layers": bad}})


def _config(tmp_path, **overrides):
    raw = {
        "seed": 1, "output_dir": str(tmp_path / "run"),
        "data": {"name": "digits", "train_limit": 256, "test_limit": 96},
        "encoding": {"kind": "bernoulli", "time_steps": 10},
        "model": {"layers": [
            {"name": "stem", "type": "conv", "channels": 4, "kernel_size": 3, "padding": 1},
            {"name": "b1", "type": "conv", "channels": 4, "kernel_size": 3, "padding": 1},
            {"name": "b2", "type": "conv", "channels": 6, "kernel_size": 3, "padding": 1,
             "inputs": ["b1", {"source": "stem", "kernel_size": 1, "padding": 0}]},
            {"name": "pool", "type": "avgpool", "kernel_size": 2, "v_threshold": 0.875},
            {"name": "fc", "type": "dense", "units": 10}],
            "tau": TAU, "v_threshold": 1.0, "readout": "potential"},
        "training": {"method": "lee2019", "lee2019": {"dropout": 0.2, "init_gain": 1.0}, "optimizer": "sgd",
                     "weight_decay": 5e-4, "epochs": 2, "batch_size": 16, "learning_rate": 0.03, "device": "cpu"},
    }
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = value
    return config_from_dict(raw)


def test_config_refusals(tmp_path):
    with pytest.raises(ConfigError, match="readout: potential"):
        _config(tmp_path, **{"model.readout": "spikes"})
    config = _config(tmp_path).to_dict()
    config["model"]["layers"][-1]["v_threshold"] = 2.0
    with pytest.raises(ConfigError, match=r"layers\[4\].v_threshold: with readout 'potential'"):
        config_from_dict(config)
    with pytest.raises(ConfigError, match=r"dropout: must lie in \[0, 1\)"):
        _config(tmp_path, **{"training.lee2019": {"dropout": 1.0}})
    with pytest.raises(ConfigError, match="trains on output spike counts"):
        _config(tmp_path, **{"training.method": "hm2bp"})
    with pytest.raises(ConfigError, match=r"layers\[0\]: .*leak's logarithm; layer 'stem' has tau 0.0"):
        _config(tmp_path, **{"model.tau": 0.0})
    with pytest.raises(ConfigError, match=r"layers\[0\]: .*no synaptic current; layer 'stem' has tau_current 0.5"):
        _config(tmp_path, **{"model.tau_current": 0.5})
    with pytest.raises(ConfigError, match="model.init: training.method 'lee2019' draws its weights by its own rule"):
        _config(tmp_path, **{"model.init": "paper"})
    with pytest.raises(ConfigError, match="training.loss: .*not 'ce'"):
        _config(tmp_path, **{"training.loss": "ce"})
    with pytest.raises(ConfigError, match="model.temporal_gradient: training.method 'lee2019'"):
        _config(tmp_path, **{"model.temporal_gradient": False})
    recurrent = _config(tmp_path).to_dict()
    recurrent["model"]["layers"][1]["inputs"] = ["stem", {"source": "b1", "recurrent": True}]
    with pytest.raises(ConfigError, match=r"layers\[1\]: .*feed-forward networks; layer 'b1' has a recurrent input"):
        config_from_dict(recurrent)


def test_graph_checks_of_the_potential_readout():
    lif = lambda name, vth: LIF(name, (3,), v_threshold=vth)  # noqa: E731
    nodes = (Input("i", (2,)), Dense("d", 3), lif("p", math.inf), Dense("d2", 3), lif("q", 1.0), Output("o"))
    with pytest.raises(GraphError, match="node p: a population that never fires"):
        Graph(nodes, (Edge("i", "d"), Edge("d", "p"), Edge("p", "d2"), Edge("d2", "q"), Edge("q", "o")))
    with pytest.raises(GraphError, match="node o: a potential readout reads a non-spiking population"):
        Graph((Input("i", (2,)), Dense("d", 3), lif("q", 1.0), Output("o", readout="potential")),
              (Edge("i", "d"), Edge("d", "q"), Edge("q", "o")))
    with pytest.raises(GraphError, match="readout must be one of spikes, potential"):
        Output("o", readout="voltage")
    potentials = np.array([[[1, 5], [4, 2]], [[3, 3], [7, 7]]])
    assert predict_from_potential(potentials).tolist() == [0, 0]  # the last step decides; ties to the lowest


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lee2019")
    return tmp_path, train(_config(tmp_path), progress=False, log=lambda _: None)


def test_residual_network_trains_with_frozen_biases_and_fixed_pool(trained):
    tmp_path, result = trained
    assert result.history[-1]["test_accuracy"] > 0.25  # chance: 0.1
    state = result.model.state_dict()
    assert all(not value.any() for key, value in state.items() if key.endswith(".bias"))
    pool = result.model.nodes["pool_from_b2"].weight
    assert "nodes.pool_from_b2.weight" not in state  # rebuilt from the config, never trained
    assert float(pool[1, 1, 0, 0]) == 0.25 and float(pool[0, 1, 0, 0]) == 0.0
    assert all(rate > 0 for rate in result.history[-1]["test_firing_rates"][:-1])  # every hidden population fires


def test_training_resumes_bit_for_bit(tmp_path, trained):
    _, straight = trained
    first = train(_config(tmp_path, **{"training.epochs": 1}), progress=False, log=lambda _: None)
    assert_resume_continues_exactly(straight, lambda: _config(tmp_path), first.checkpoint_path)


def test_export_keeps_the_integrator_below_its_firing_level(trained, tmp_path):
    _, result = trained
    network, report = export_checkpoint(result.checkpoint_path, LOIHI2)
    fc = network.graph.node("fc")
    assert not fc.spiking and fc.quantized.vth == LOIHI2.vth_max and not report.population("fc").spiking
    assert network.graph.output.readout == "potential"
    assert [report.population(n).depth for n in ("stem", "b1", "b2", "pool", "fc")] == [1, 2, 3, 4, 5]
    assert "non-spiking" in report.format_table() and f"about {report.total_cores} cores" in report.format_table()
    save_artifact(network, tmp_path / "net.onnx")
    loaded = load_artifact(tmp_path / "net.onnx")
    assert loaded.graph.output.readout == "potential" and math.isinf(loaded.graph.node("fc").v_threshold)
    # an artifact whose integrator could reach its firing level is refused, naming the node
    bigger = network.graph.node("fc_from_pool").quantized
    louder = network.graph.replace(nodes=[type(network.graph.node("fc_from_pool"))(
        "fc_from_pool", out_features=10, weight=network.graph.node("fc_from_pool").weight,
        quantized=type(bigger)(np.full_like(bigger.weight, 254), 6, bigger.num_weight_bits, "mixed"))])
    with pytest.raises(ExportRangeError, match="node fc .*above its firing level"):
        validate_network(type(network)(louder, network.encoding, network.time_steps, network.eval_seed, LOIHI2))


@pytest.mark.lava
def test_residual_network_with_potential_readout_deploys_bit_exact(trained):
    pytest.importorskip("lava", reason="needs lava-nc")
    _, result = trained
    network, _ = export_checkpoint(result.checkpoint_path, LOIHI2)
    test = load_dataset("digits").test.head(24)
    spikes = encode_split("bernoulli", test.inputs, 10, network.eval_seed)
    emulated, lava = assert_bit_exact(network, spikes, require_firing=True)
    # the deployed potential, in trained units, follows the float network's
    float_run = trained_run(load_checkpoint(result.checkpoint_path), spikes)
    deployed = network.potential_in_trained_units(emulated.output_potential)
    error = np.abs(deployed - float_run.output_potential).mean() / np.abs(float_run.output_potential).mean()
    assert error < 0.3
    assert (float_run.predictions == emulated.predictions).mean() > 0.6


def test_spiking_pool_is_a_fixed_average_into_integrate_and_fire_neurons(tmp_path):
    from trainer.architecture import build_graph

    graph = build_graph(_config(tmp_path).model, (1, 8, 8))
    synapse, population = graph.node("pool_from_b2"), graph.node("pool")
    assert (synapse.stride, synapse.padding, synapse.kernel_size) == (2, 0, (2, 2))
    assert synapse.weight.shape == (6, 6, 2, 2) and synapse.weight.sum() == pytest.approx(6.0)
    assert (population.tau, population.v_threshold, population.shape) == (1.0, 0.875, (6, 4, 4))
    # the paper's '> 0.75' on quarter spikes: 3 spikes (0.75) do not fire, 4 (1.0) do; with dropout at
    # p = 0.2 each spike counts 1.25 quarters and 3 fire (0.9375), as in the authors' code
    assert 3 * 0.25 < population.v_threshold <= 4 * 0.25 and 3 * 0.25 * 1.25 >= population.v_threshold


def test_export_measures_error_growth_with_depth(trained):
    _, result = trained
    network, report = export_checkpoint(result.checkpoint_path, LOIHI2, measure_samples=40)
    assert report.measured_samples == 40
    assert [m.population for m in report.measured] == ["stem", "b1", "b2", "pool"]  # not the non-spiking output
    assert [m.depth for m in report.measured] == [1, 2, 3, 4]
    assert all(0 < m.spike_train_match <= 1 for m in report.measured)
    assert 0 <= report.measured_output_potential_error < 0.5
    assert "error growth with depth" in report.format_table()
    assert network.metadata["quantization_report"]["measured_samples"] == 40


def test_export_without_the_data_files_says_the_error_was_not_measured(trained, monkeypatch):
    from spikedata import DataError
    from stbp_cli import pipeline

    def missing(*_args):
        raise DataError("mnist: no idx files in /nowhere")

    monkeypatch.setattr(pipeline, "evaluation_split", missing)
    _, result = trained
    network, report = export_checkpoint(result.checkpoint_path, LOIHI2, measure_samples=40)
    assert report.measured == () and network.graph.node("fc").quantized is not None
    assert "quantization error not measured on data (mnist: no idx files in /nowhere)" in report.format_table()
    assert list(network.metadata["quantization_report"]["warnings"]) == list(report.warnings)


def test_the_readout_travels_through_every_file_format(trained, tmp_path):
    import nir
    import onnx

    from export.netx import NetxExportError, check_netx
    from interchange.nir_export import graph_to_nir

    _, result = trained
    network, _ = export_checkpoint(result.checkpoint_path, LOIHI2)
    written = graph_to_nir(float_graph(load_checkpoint(result.checkpoint_path)))
    assert isinstance(written.nodes["fc"], nir.LI)  # NIR's leaky integrator: the output never fires
    with pytest.raises(NetxExportError, match="potential"):
        check_netx(network)
    save_artifact(network, tmp_path / "net.onnx")
    model = onnx.load(str(tmp_path / "net.onnx"))
    for prop in model.metadata_props:
        if prop.key == "output_readout":
            prop.value = "voltage"
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ArtifactError, match="output_readout' must be one of spikes, potential"):
        load_artifact(tmp_path / "bad.onnx")
