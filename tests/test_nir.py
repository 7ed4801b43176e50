"""NIR out and in: the mapping's fields against the NIR equations by hand, the exported networks
run in snnTorch (an independent implementation) spike for spike, models made in snnTorch and
norse imported and run here spike for spike with their source, and every refusal named."""
from __future__ import annotations

import dataclasses
import json

import nir
import numpy as np
import pytest
import torch

from helpers import float_chain
from interchange.nir_export import graph_to_nir, write_nir
from interchange.nir_import import NIRImportError, import_nir, read_nir
from netgraph import LIF, Conv2d, Dense
from trainer.checkpoint import build_model, checkpoint_from_graph
from trainer.config import config_from_dict
from trainer.network import SpikingNetwork

DT = 1e-3


def _model_spikes(graph, spikes: np.ndarray) -> dict[str, np.ndarray]:
    """Our float model (trainer) on spikes (samples, T, *shape): uint8 (samples, T, neurons) per population."""
    checkpoint = checkpoint_from_graph(graph, {"data": {"name": "digits"}, "encoding": {"time_steps": spikes.shape[1]}},
                                       "test")
    model = build_model(checkpoint)
    shaped = spikes.reshape(*spikes.shape[:2], *graph.input.shape)  # a dense first layer reads it flattened
    with torch.no_grad():
        out = model(torch.from_numpy(shaped.astype(np.float32)))
    return {name: s.to(torch.uint8).numpy().reshape(len(spikes), spikes.shape[1], -1)
            for name, s in out.population_spikes.items()}


def _configured_graph(layers: list, input_shape, seed: int = 0, scale: float = 3.0, **model):
    """A float graph with random weights (scaled up so that every layer spikes) from config layers."""
    config = config_from_dict({"model": {"layers": layers, **model}})
    torch.manual_seed(seed)
    net = SpikingNetwork.from_config(config.model, input_shape)
    with torch.no_grad():
        for name, module in net.nodes.items():
            if hasattr(module, "weight"):
                module.weight.mul_(scale)
    return net.float_graph()


def _spikes(rng, samples, steps, shape, rate=0.3) -> np.ndarray:
    return (rng.random((samples, steps, *shape)) < rate).astype(np.uint8)


# ----------------------------------------------------------------------------- export


def test_stbp_lif_maps_to_nir_lif_with_the_stated_time_step():
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(0, 1, (3, 4)), np.array([0.1, -0.2, 0.3])
    graph = float_chain([(weight, bias)], (4,), tau=0.2, v_threshold=0.5)
    converted = graph_to_nir(graph, dt=DT)
    lif, affine = converted.nodes["layer0"], converted.nodes["layer0_from_input"]
    assert isinstance(lif, nir.LIF) and isinstance(affine, nir.Affine)
    # tau_mem = dt / (1 - tau), r = tau_mem / dt: one Euler step is v = 0.2 v + (W s + b)
    np.testing.assert_allclose(lif.tau, DT / 0.8)
    np.testing.assert_allclose(lif.r, 1.25)
    np.testing.assert_array_equal(lif.v_leak, 0.0)
    np.testing.assert_array_equal(lif.v_reset, 0.0)
    np.testing.assert_array_equal(lif.v_threshold, 0.5)
    np.testing.assert_array_equal(affine.weight, weight)
    np.testing.assert_array_equal(affine.bias, bias)  # STBP's per-step bias is the Affine's
    assert set(converted.edges) == {("input", "layer0_from_input"), ("layer0_from_input", "layer0"),
                                    ("layer0", "output")}
    assert converted.metadata["dt"] == DT


def test_current_based_neuron_maps_to_cubalif_with_bias_as_leak():
    graph = float_chain([(np.eye(2), np.array([0.4, -0.4]))], (2,), tau=0.2, v_threshold=1.0, tau_current=0.5)
    cuba = graph_to_nir(graph, dt=DT).nodes["layer0"]
    assert isinstance(cuba, nir.CubaLIF)
    np.testing.assert_allclose(cuba.tau_syn, DT / 0.5)  # current kept per step: 1 - dt / tau_syn = 0.5
    np.testing.assert_allclose(cuba.tau_mem, DT / 0.8)
    # dt w_in / tau_syn = 1 and dt r / tau_mem = 1: the current is W s, the voltage adds it whole
    np.testing.assert_allclose(cuba.w_in * DT / cuba.tau_syn, 1.0)
    np.testing.assert_allclose(cuba.r * DT / cuba.tau_mem, 1.0)
    # the bias reaches v as (dt / tau_mem) v_leak = (1 - tau) v_leak per step
    np.testing.assert_allclose(0.8 * cuba.v_leak, [0.4, -0.4])
    assert not np.any(graph_to_nir(graph, dt=DT).nodes["layer0_from_input"].bias)


def test_nir_file_is_written_atomically_and_reads_back(tmp_path):
    graph = float_chain([(np.ones((2, 3)), np.zeros(2))], (3,))
    path = tmp_path / "net.nir"
    write_nir(graph, path, DT, metadata={"source_checkpoint": "x"})
    back = nir.read(str(path))
    assert set(back.nodes) == {"input", "layer0_from_input", "layer0", "output"}
    assert not list(tmp_path.glob("*.tmp*"))


STRUCTURES = {
    "mlp": ([{"type": "dense", "units": 12}, {"type": "dense", "units": 5}], (1, 6, 6)),
    "cnn": ([{"type": "conv", "channels": 4, "kernel_size": 3, "padding": 1}, {"type": "avgpool", "kernel_size": 2},
             {"type": "conv", "channels": 4, "kernel_size": 3, "stride": 2, "padding": 1},
             {"type": "dense", "units": 5}], (2, 8, 6)),
    "resnet": ([{"name": "stem", "type": "conv", "channels": 3, "kernel_size": 3, "padding": 1},
                {"name": "a", "type": "conv", "channels": 3, "kernel_size": 3, "padding": 1},
                {"name": "b", "type": "conv", "channels": 3, "kernel_size": 3, "padding": 1,
                 "inputs": ["a", {"source": "stem", "kernel_size": 1, "padding": 0}]},
                {"name": "pool", "type": "avgpool", "kernel_size": 2}, {"type": "dense", "units": 4}], (1, 6, 6)),
    "recurrent": ([{"name": "hidden", "type": "dense", "units": 10, "inputs": ["input", {"source": "hidden",
                                                                                         "recurrent": True}]},
                   {"type": "dense", "units": 4}], (8,)),
    "cuba": ([{"type": "dense", "units": 10, "tau_current": 0.4}, {"type": "dense", "units": 4}], (8,)),
    "late_recurrent": ([{"name": "hidden", "type": "dense", "units": 10,
                         "inputs": ["input", {"source": "classifier", "recurrent": True}]},
                        {"name": "classifier", "type": "dense", "units": 4}], (8,)),
}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_export_then_import_gives_the_same_network(name):
    layers, shape = STRUCTURES[name]
    graph = _configured_graph(layers, shape)
    back = import_nir(graph_to_nir(graph, DT)).graph
    assert {(e.source, e.target, e.recurrent) for e in back.edges} == {(e.source, e.target, e.recurrent)
                                                                       for e in graph.edges}
    for node in graph.nodes:
        twin = back.node(node.name)
        for field in ("weight", "bias"):
            if getattr(node, field, None) is not None:
                np.testing.assert_array_equal(getattr(twin, field), getattr(node, field), err_msg=f"{node.name}.{field}")
        if isinstance(node, LIF):
            assert (twin.tau, twin.tau_current, twin.v_threshold) == (node.tau, node.tau_current, node.v_threshold)
        if isinstance(node, Conv2d):
            assert (twin.kernel_size, twin.stride, twin.padding) == (node.kernel_size, node.stride, node.padding)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "cuba"])
def test_snntorch_runs_the_exported_network_spike_for_spike(name):
    """snnTorch (import_from_nir, its own Leaky/Synaptic neurons) is an independent
    implementation of the same equations: every population agrees with our float model."""
    pytest.importorskip("snntorch")
    from interchange.frameworks import run_snntorch

    layers, shape = STRUCTURES[name]
    graph = _configured_graph(layers, shape, seed=1)
    if name == "cuba":  # snnTorch's CubaLIF import refuses v_leak, which carries a current-based bias
        graph = graph.replace(nodes=[dataclasses.replace(p, bias=np.zeros(p.neurons)) for p in graph.populations])
    spikes = _spikes(np.random.default_rng(2), 24, 10, shape)
    ours = _model_spikes(graph, spikes)
    theirs = run_snntorch(graph_to_nir(graph, 1e-4), spikes)
    for population, expected in ours.items():
        assert expected.any(), f"{population} never spiked: the comparison would prove nothing"
        np.testing.assert_array_equal(theirs[population], expected, err_msg=population)


# ----------------------------------------------------------------------------- import


def _scaled_linears(sizes, seed, weight_scale, bias_scale=1.0) -> list[torch.nn.Linear]:
    """torch Linear layers between `sizes`, drawn from `seed`, weights and biases scaled up so
    that a framework's neurons fire."""
    torch.manual_seed(seed)
    linears = [torch.nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    with torch.no_grad():
        for linear in linears:
            linear.weight.mul_(weight_scale)
            linear.bias.mul_(bias_scale)
    return linears


def _snntorch_mlp(sizes, beta, threshold, seed=0):
    import snntorch as snn

    layers = []
    for linear in _scaled_linears(sizes, seed, weight_scale=4):
        n_out = linear.out_features
        layers += [linear, snn.Leaky(beta=torch.full((n_out,), beta), threshold=torch.full((n_out,), threshold),
                                     reset_mechanism="zero", init_hidden=True, reset_delay=False,
                                     output=n_out == sizes[-1])]
    return torch.nn.Sequential(*layers)


def _record_module(net, spikes: np.ndarray, cells: tuple, step) -> dict[str, np.ndarray]:
    """A framework's own Sequential-style module (not its NIR import) on spikes (samples, T, n):
    the spikes of its `cells` by layer index, each (samples, T, neurons). step(net, x_t, state) -> state."""
    records: dict[str, list] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, key=str(i): records.setdefault(key, []).append(
        (out[0] if isinstance(out, tuple) else out).to(torch.uint8).numpy()))
        for i, m in enumerate(net) if isinstance(m, cells)]
    state = None
    with torch.no_grad():
        for t in range(spikes.shape[1]):
            state = step(net, torch.from_numpy(spikes[:, t].astype(np.float32)), state)
    for handle in handles:
        handle.remove()
    return {key: np.stack(value, axis=1) for key, value in records.items()}


def _run_snntorch_module(net, spikes: np.ndarray) -> dict[str, np.ndarray]:
    import snntorch as snn
    from snntorch import utils

    utils.reset(net)
    return _record_module(net, spikes, (snn.Leaky,), lambda module, x, state: module(x))


def test_snntorch_made_model_imports_and_spikes_like_its_source(tmp_path):
    pytest.importorskip("snntorch")
    from snntorch.export_nir import export_to_nir

    net = _snntorch_mlp([16, 20, 6], beta=0.7, threshold=1.0)
    graph = export_to_nir(net, torch.zeros(16), model_name="snntorch")
    path = tmp_path / "snn.nir"
    nir.write(str(path), graph)
    imported = import_nir(read_nir(path), dt=1e-4, source=str(path))
    populations = {p.name: p for p in imported.graph.populations}
    assert {p.tau for p in populations.values()} == {0.7}  # beta, from tau = dt / (1 - beta) in float32
    spikes = _spikes(np.random.default_rng(3), 40, 12, (16,))
    theirs = _run_snntorch_module(net, spikes)
    ours = _model_spikes(imported.graph, spikes)
    assert set(theirs) == {"1", "3"}
    for nir_key in theirs:  # NIR keys '1', '3' are population names n_1, n_3 here
        assert ours[f"n_{nir_key}"].any()
        np.testing.assert_array_equal(ours[f"n_{nir_key}"], theirs[nir_key], err_msg=nir_key)


def _norse_mlp(sizes, tau_mem_inv, threshold, seed=0):
    import norse.torch as norse

    layers = []
    for linear in _scaled_linears(sizes, seed, weight_scale=40, bias_scale=10):
        n_out = linear.out_features
        params = norse.LIFBoxParameters(tau_mem_inv=torch.full((n_out,), tau_mem_inv),
                                        v_th=torch.as_tensor(threshold, dtype=torch.float32).expand(n_out).clone(),
                                        v_leak=torch.zeros(n_out), v_reset=torch.zeros(n_out))
        layers += [linear, norse.LIFBoxCell(params)]
    return norse.SequentialState(*layers)


def _run_norse_module(net, spikes):
    import norse.torch as norse

    return _record_module(net, spikes, (norse.LIFBoxCell,), lambda module, x, state: module(x, state)[1])


@pytest.mark.parametrize("threshold", [1.0, np.linspace(0.6, 1.4, 20)], ids=["one threshold", "per-neuron"])
def test_norse_made_model_imports_and_spikes_like_its_source(threshold):
    """norse's cells run at their own dt (1e-3 s); its to_nir writes tau = dt / tau_mem_inv
    (dt times the time constant: a norse 1.1.0 bug), so it is exported at dt = 1 to write
    the time constant itself. Per-neuron thresholds are folded into weights and bias."""
    pytest.importorskip("norse")
    from norse.torch import to_nir

    net = _norse_mlp([16, 20, 20], tau_mem_inv=200.0, threshold=threshold)
    imported = import_nir(to_nir(net, torch.zeros(1, 16), dt=1.0), dt=1e-3)
    hidden = imported.graph.node("n_1")
    assert hidden.tau == pytest.approx(0.8) and hidden.v_threshold == pytest.approx(float(np.max(threshold)))
    spikes = _spikes(np.random.default_rng(4), 40, 15, (16,))
    theirs, ours = _run_norse_module(net, spikes), _model_spikes(imported.graph, spikes)
    for nir_key in ("1", "3"):
        mine = ours[f"n_{nir_key}"]
        assert mine.any()
        agreement = (mine == theirs[nir_key]).mean()
        if np.ndim(threshold) == 0:
            np.testing.assert_array_equal(mine, theirs[nir_key], err_msg=nir_key)
        else:  # weights scaled per neuron: float32 rounding may move a potential across its threshold
            assert agreement > 0.999, f"{nir_key}: {agreement:.5f}"


def _lif_graph(**overrides) -> nir.NIRGraph:
    n = 3
    fields = dict(tau=np.full(n, 1e-3), r=np.full(n, 1.0), v_leak=np.zeros(n), v_threshold=np.ones(n),
                  v_reset=np.zeros(n))
    fields.update(overrides)
    return nir.NIRGraph(nodes={"in": nir.Input(input_type=np.array([2])),
                               "fc": nir.Affine(weight=np.ones((n, 2)), bias=np.zeros(n)),
                               "lif": nir.LIF(**fields), "out": nir.Output(output_type=np.array([n]))},
                        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")], type_check=False)


@pytest.mark.parametrize("graph, message", [
    (_lif_graph(v_reset=np.full(3, 0.1)), "node 'lif': v_reset must be 0"),
    (_lif_graph(tau=np.array([1e-3, 2e-3, 1e-3])), "node 'lif': tau differs between neurons"),
    (_lif_graph(tau=np.full(3, 1e-5)), "node 'lif': at dt = 0.0001 s the decay per step is -9"),
    (_lif_graph(v_threshold=np.array([1.0, -1.0, 1.0])), "node 'lif': v_threshold must be finite and positive"),
], ids=["v_reset", "per-neuron tau", "tau below dt", "negative threshold"])
def test_unmappable_neuron_fields_are_refused_by_name(graph, message):
    with pytest.raises(NIRImportError, match=message.replace("(", r"\(")):
        import_nir(graph, dt=1e-4, source="model.nir")


def test_unsupported_nodes_and_wiring_are_refused_by_name():
    graph = _lif_graph()
    graph.nodes["thr"] = nir.Threshold(threshold=np.ones(3))
    graph.edges.append(("lif", "thr"))
    with pytest.raises(NIRImportError, match="model.nir: node 'thr': NIR Threshold has no exact Loihi LIF mapping"):
        import_nir(graph, dt=1e-4, source="model.nir")
    direct = _lif_graph()
    direct.edges = [("in", "lif"), ("lif", "out"), ("in", "fc"), ("fc", "lif")]
    with pytest.raises(NIRImportError, match="node 'lif': reads 'in' directly"):
        import_nir(direct, dt=1e-4)


def test_bias_into_a_current_based_neuron_is_refused():
    n = 2
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type=np.array([2])), "fc": nir.Affine(weight=np.eye(n), bias=np.array([0.5, 0.0])),
        "cuba": nir.CubaLIF(tau_syn=np.full(n, 2e-3), tau_mem=np.full(n, 1e-3), r=np.ones(n), v_leak=np.zeros(n),
                            v_threshold=np.ones(n)),
        "out": nir.Output(output_type=np.array([n]))}, edges=[("in", "fc"), ("fc", "cuba"), ("cuba", "out")],
        type_check=False)
    with pytest.raises(NIRImportError, match="node 'fc': has a bias into current-based neuron 'cuba'"):
        import_nir(graph, dt=1e-4)


def test_foreign_file_needs_its_time_step_and_corrupt_files_name_themselves(tmp_path):
    with pytest.raises(NIRImportError, match="does not record its time step; pass --dt"):
        import_nir(_lif_graph(), source="model.nir")
    bad = tmp_path / "broken.nir"
    bad.write_bytes(b"\x89HDF\r\n" + bytes(range(200)))
    with pytest.raises(NIRImportError, match=f"{bad}: not a readable NIR file"):
        read_nir(bad)


def test_per_neuron_threshold_folding_matches_the_nir_equations_by_hand():
    """Neuron i with threshold th_i is scaled by max(th) / th_i; its spikes must equal the
    NIR LIF stepped by hand (forward Euler, v > th_i, reset to 0)."""
    rng = np.random.default_rng(5)
    thresholds = np.array([0.5, 1.0, 2.0])
    weight, bias, tau = rng.normal(0.8, 0.5, (3, 2)), np.array([0.05, 0.0, 0.1]), 2e-3
    graph = nir.NIRGraph(nodes={"in": nir.Input(input_type=np.array([2])), "fc": nir.Affine(weight=weight, bias=bias),
                                "lif": nir.LIF(tau=np.full(3, tau), r=np.full(3, 2.0), v_leak=np.full(3, 0.1),
                                               v_threshold=thresholds),
                                "out": nir.Output(output_type=np.array([3]))},
                         edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")], type_check=False)
    spikes = _spikes(rng, 5, 30, (2,), rate=0.5)
    dt, v = 1e-3, np.zeros((5, 3))
    expected = np.zeros((5, 30, 3), np.uint8)
    for t in range(30):
        current = spikes[:, t] @ weight.T + bias
        v = v + dt / tau * (0.1 - v + 2.0 * current)
        expected[:, t] = v > thresholds
        v = np.where(expected[:, t], 0.0, v)
    assert expected.any() and not expected.all()
    imported = import_nir(graph, dt=dt)
    assert imported.graph.node("lif").v_threshold == 2.0 and any("thresholds folded" in n for n in imported.notes)
    np.testing.assert_array_equal(_model_spikes(imported.graph, spikes)["lif"], expected)


def test_dense_weights_carry_the_input_gain():
    """r dt / tau = 0.5: the imported Dense weights are half the Affine's (v = (1 - dt/tau) v + 0.5 W s)."""
    graph = _lif_graph(r=np.full(3, 0.5), tau=np.full(3, 1e-3))
    imported = import_nir(graph, dt=1e-3).graph
    np.testing.assert_array_equal(imported.node("fc").weight, np.full((3, 2), 0.5))
    assert isinstance(imported.node("fc"), Dense) and imported.node("lif").tau == 0.0


def _framework_model(framework: str, path):
    """(module, runner of the module on (samples, T, 64) spikes, dt) for an MLP 64-24-10 written to `path` as NIR."""
    if framework == "snntorch":
        from snntorch.export_nir import export_to_nir

        net = _snntorch_mlp([64, 24, 10], beta=0.8, threshold=1.0, seed=1)
        nir.write(str(path), export_to_nir(net, torch.zeros(64), model_name="snntorch"))
        return lambda spikes: _run_snntorch_module(net, spikes), 1e-4
    from norse.torch import to_nir

    net = _norse_mlp([64, 24, 10], tau_mem_inv=200.0, threshold=1.0, seed=1)
    nir.write(str(path), to_nir(net, torch.zeros(1, 64), dt=1.0))  # dt = 1: norse 1.1.0 writes tau = dt / tau_mem_inv
    return lambda spikes: _run_norse_module(net, spikes), 1e-3


@pytest.mark.lava
@pytest.mark.parametrize("framework", ["snntorch", "norse"])
def test_foreign_model_deploys_through_the_cli_with_its_own_spikes_as_reference(tmp_path, framework):
    """The user's path: framework -> NIR -> `stbp import` -> `stbp export` -> `stbp run
    --save-input-spikes` -> the framework's module on those inputs -> `stbp compare --reference`:
    emulator == Lava fixed_pt bit-exact, and the framework's own spikes equal the imported model's."""
    pytest.importorskip("lava", reason="needs lava-nc")
    pytest.importorskip(framework)
    from stbp_cli.main import main

    nir_path = tmp_path / "model.nir"
    run_source, dt = _framework_model(framework, nir_path)
    out = tmp_path / "imported"
    assert main(["import", str(nir_path), "-o", str(out), "--data", "digits", "--time-steps", "8", "--dt", str(dt)]) == 0
    checkpoint, artifact = out / "checkpoint.safetensors", out / "net.onnx"
    assert main(["export", str(checkpoint), "-o", str(artifact)]) == 0
    inputs = tmp_path / "inputs.npz"
    assert main(["run", str(artifact), "--backend", "emulator", "--limit", "40", "--save-input-spikes", str(inputs),
                 "--no-progress"]) == 0
    with np.load(inputs) as data:
        spikes, labels = data["input_spikes"], data["labels"]
    theirs = run_source(spikes.reshape(len(spikes), spikes.shape[1], -1))
    reference = tmp_path / "source_spikes.npz"
    np.savez(reference, **theirs)  # keyed by the NIR node names '1' and '3'
    report = tmp_path / "fidelity.json"
    assert main(["compare", str(checkpoint), str(artifact), "--limit", "40", "--reference", str(reference),
                 "--require-bit-exact", "--json", str(report), "--plot", str(tmp_path / "f.png"),
                 "--no-progress"]) == 0
    result = json.loads(report.read_text())
    assert result["bit_exact_emulator_vs_lava_fixed"] is True
    assert theirs["3"].any()
    expected_accuracy = float((np.argmax(theirs["3"].sum(axis=1), axis=1) == labels).mean())
    assert result["accuracy"]["reference"] == pytest.approx(expected_accuracy)
    pair = next(p for p in result["pairs"] if (p["reference"], p["candidate"]) == ("reference", "trained"))
    assert pair["identical"] and {p["population"] for p in pair["populations"]} == {"n_1", "n_3"}
    assert any((p["reference"], p["candidate"]) == ("reference", "lava_fixed") for p in result["pairs"])


@pytest.mark.parametrize("name", ["mlp", "recurrent"])
def test_unit_r_export_runs_in_norse_spike_for_spike(name):
    """norse 1.1.0 ignores r on LIF nodes; with r = 1 and the weights carrying tau_mem / dt the
    file states the same dynamics, and norse (an independent implementation, which also runs
    the recurrent graph) agrees with our model in every population."""
    pytest.importorskip("norse")
    from interchange.frameworks import run_norse

    layers, shape = STRUCTURES[name]
    graph = _configured_graph(layers, shape, seed=3)
    converted = graph_to_nir(graph, DT, r_convention="unit")
    assert all(np.all(n.r == 1) for n in converted.nodes.values() if isinstance(n, nir.LIF))
    spikes = _spikes(np.random.default_rng(6), 24, 10, shape)
    ours, theirs = _model_spikes(graph, spikes), run_norse(converted, spikes, DT)
    for population, expected in ours.items():
        assert expected.any()
        np.testing.assert_array_equal(theirs[population], expected, err_msg=population)
    back = import_nir(converted).graph  # the same network, up to float rounding of the scaling
    for node in graph.nodes:
        if getattr(node, "weight", None) is not None:
            np.testing.assert_allclose(back.node(node.name).weight, node.weight, rtol=1e-12)



def _norse_spikes(graph: nir.NIRGraph, spikes: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    from interchange.frameworks import run_norse

    return run_norse(graph, spikes, dt)


def test_recurrent_nir_graph_imports_like_norse_runs_it():
    """A self-loop (lif -> rec -> lif) is one step of delay; norse steps the same file."""
    pytest.importorskip("norse")
    rng, n = np.random.default_rng(7), 12
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type=np.array([6])),
        "fc": nir.Affine(weight=rng.normal(0.6, 0.5, (n, 6)), bias=rng.normal(0, 0.05, n)),
        "rec": nir.Affine(weight=rng.normal(0, 0.4, (n, n)), bias=np.zeros(n)),
        "lif": nir.LIF(tau=np.full(n, 5e-3), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n)),
        "fc2": nir.Affine(weight=rng.normal(0.5, 0.5, (3, n)), bias=np.zeros(3)),
        "lif2": nir.LIF(tau=np.full(3, 5e-3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3)),
        "out": nir.Output(output_type=np.array([3]))},
        edges=[("in", "fc"), ("rec", "lif"), ("fc", "lif"), ("lif", "rec"), ("lif", "fc2"), ("fc2", "lif2"),
               ("lif2", "out")], type_check=False)
    imported = import_nir(graph, dt=1e-3)
    assert [e.recurrent for e in imported.graph.inputs_of("rec")] == [True]
    spikes = _spikes(rng, 30, 20, (6,), rate=0.4)
    ours, theirs = _model_spikes(imported.graph, spikes), _norse_spikes(graph, spikes, 1e-3)
    for name in ("lif", "lif2"):
        assert ours[name].any()
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_conv_and_sum_pool_import_like_norse_runs_them():
    """Conv2d -> LIF -> SumPool2d -> Flatten -> Affine -> LIF: the sum pool becomes an average
    pool with the next weights times its area; norse runs the file as written."""
    pytest.importorskip("norse")
    rng = np.random.default_rng(8)
    lif = lambda shape: nir.LIF(tau=np.full(shape, 4e-3), r=np.ones(shape), v_leak=np.zeros(shape),  # noqa: E731
                                v_threshold=np.ones(shape))
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type=np.array([2, 8, 8])),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(0.8, 0.6, (3, 2, 3, 3)), stride=1, padding=1,
                           dilation=1, groups=1, bias=np.array([0.05, 0.0, -0.05])),
        "lif1": lif((3, 8, 8)),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([3, 4, 4])}, start_dim=0),
        "fc": nir.Affine(weight=rng.normal(0.3, 0.4, (5, 48)), bias=np.zeros(5)),
        "lif2": lif((5,)), "out": nir.Output(output_type=np.array([5]))},
        edges=[("in", "conv"), ("conv", "lif1"), ("lif1", "pool"), ("pool", "flat"), ("flat", "fc"),
               ("fc", "lif2"), ("lif2", "out")], type_check=False)
    imported = import_nir(graph, dt=1e-3)
    assert any("SumPool2d" in note for note in imported.notes)
    spikes = _spikes(rng, 16, 12, (2, 8, 8), rate=0.3)
    ours, theirs = _model_spikes(imported.graph, spikes), _norse_spikes(graph, spikes, 1e-3)
    for name in ("lif1", "lif2"):
        assert ours[name].any()
        agreement = (ours[name] == theirs[name]).mean()  # the area scaling is exact; sums may round differently
        assert agreement > 0.9999, f"{name}: {agreement:.6f}"


def test_if_neuron_steps_by_hand():
    """nir.IF: v[t] = v[t-1] + dt r I[t], no leak; spike when v crosses 1, reset to 0."""
    graph = _lif_graph()
    graph.nodes["lif"] = nir.IF(r=np.full(3, 250.0), v_threshold=np.ones(3))
    graph.nodes["fc"] = nir.Affine(weight=np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.25]]), bias=np.zeros(3))
    imported = import_nir(graph, dt=1e-3).graph  # gain dt r = 0.25
    assert imported.node("lif").tau == 1.0
    spikes = np.ones((1, 8, 2), np.uint8)
    # per step: neuron 0 gets 0.25, neuron 1 0.25, neuron 2 0.0625 -> spikes at steps 3 and 7 (0-based) for 0 and 1
    expected = np.zeros((1, 8, 3), np.uint8)
    expected[0, [3, 7], 0] = expected[0, [3, 7], 1] = 1
    np.testing.assert_array_equal(_model_spikes(imported, spikes)["lif"], expected)


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.nodes.update(fc=nir.Affine(weight=np.ones((3, 2)), bias=np.zeros(4))),
     "node 'fc': bias has shape \\(4,\\); expected \\(3,\\)"),
    (lambda g: g.edges.append(("lif", "in")), "node 'in': the input node cannot read 'lif'"),
    (lambda g: g.nodes["lif"].__setattr__("v_leak", np.array([0.0, np.nan, 0.0])), "node 'lif': v_leak, the biases"),
    (lambda g: g.nodes.update(fc=nir.Affine(weight=np.ones((3, 2)) * 1e308, bias=np.zeros(3))),
     "node 'fc': weight holds NaN or infinite values"),
], ids=["bias length", "edge into input", "NaN v_leak", "overflowing weight"])
def test_malformed_graphs_are_refused_by_name(edit, message):
    graph = _lif_graph(r=np.full(3, 2.0))
    edit(graph)
    with pytest.raises(NIRImportError, match=message):
        import_nir(graph, dt=1e-3)


def test_conv_fields_that_do_not_map_are_refused():
    def conv_graph(**fields):
        conv = dict(input_shape=(6, 6), weight=np.ones((2, 1, 3, 3)), stride=1, padding=0, dilation=1, groups=1,
                    bias=np.zeros(2))
        conv.update(fields)
        shape = (2, 6, 6) if conv["padding"] == "same" and conv["stride"] == 1 else (2, 4, 4)
        return nir.NIRGraph(nodes={"in": nir.Input(input_type=np.array([1, 6, 6])), "c": nir.Conv2d(**conv),
                                   "l": nir.LIF(tau=np.full(shape, 1e-3), r=np.ones(shape), v_leak=np.zeros(shape),
                                                v_threshold=np.ones(shape)),
                                   "out": nir.Output(output_type=np.array(shape))},
                            edges=[("in", "c"), ("c", "l"), ("l", "out")], type_check=False)
    assert import_nir(conv_graph(padding="same"), dt=1e-3).graph.node("c").padding == 1
    for fields, message in (({"padding": "same", "stride": 2}, "padding 'same' is not supported here"),
                            ({"dilation": 2}, "dilation and groups must be 1"),
                            ({"weight": np.ones((2, 1, 3, 2))}, "square kernel")):
        with pytest.raises(NIRImportError, match=f"node 'c': .*{message}"):
            import_nir(conv_graph(**fields), dt=1e-3)


def test_reference_spikes_file_is_checked(tmp_path):
    from stbp_cli.pipeline import FidelityError, load_reference

    graph = float_chain([(np.ones((3, 4)), np.zeros(3)), (np.ones((2, 3)), np.zeros(2))], (4,))
    origin = {"nir_names": {"layer0": "lif1", "layer1": "lif2"}}
    good = tmp_path / "good.npz"
    np.savez(good, lif1=np.zeros((5, 6, 3), np.uint8), output=np.ones((5, 6, 2), bool))
    run = load_reference(good, graph, origin, (5, 6))
    assert list(run.population_spikes) == ["layer0", "layer1"] and run.population_spikes["layer1"].all()
    cases = {
        "single.npy": (lambda p: np.save(p, np.zeros((5, 6, 2))), "a single array"),
        "junk.npz": (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
        "unknown.npz": (lambda p: np.savez(p, hidden=np.zeros((5, 6, 3)), output=np.zeros((5, 6, 2))),
                        "array 'hidden' names no population"),
        "shape.npz": (lambda p: np.savez(p, output=np.zeros((5, 7, 2))), "array 'output' has shape \\(5, 7, 2\\)"),
        "values.npz": (lambda p: np.savez(p, output=np.full((5, 6, 2), 2)), "values other than 0 and 1"),
        "nooutput.npz": (lambda p: np.savez(p, lif1=np.zeros((5, 6, 3))), "no spikes of the output population"),
    }
    for name, (write, message) in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(FidelityError, match=f"{path.name}.*{message}|{message}"):
            load_reference(path, graph, origin, (5, 6))


def test_cli_refuses_output_names_and_input_shapes_that_do_not_fit(tmp_path, capsys):
    from stbp_cli.main import main

    graph = float_chain([(np.ones((3, 64)), np.zeros(3))], (64,))
    nir_path = tmp_path / "net.nir"
    write_nir(graph, nir_path)
    assert main(["import", str(nir_path), "-o", str(tmp_path / "ok"), "--data", "digits", "--time-steps", "4"]) == 0
    checkpoint = tmp_path / "ok" / "checkpoint.safetensors"
    assert main(["export", str(checkpoint), "--format", "nir", "-o", str(tmp_path / "x.ONNX")]) == 2
    assert "x.ONNX: a NIR file should not be named .onnx" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--format", "netx", "-o", str(tmp_path / "y.onnx")]) == 2
    assert "y.onnx: a netx file needs another suffix" in capsys.readouterr().err
    wrong = tmp_path / "wrong.nir"
    write_nir(float_chain([(np.ones((3, 50)), np.zeros(3))], (50,)), wrong)
    assert main(["import", str(wrong), "-o", str(tmp_path / "bad"), "--data", "digits", "--time-steps", "4"]) == 2
    assert f"{wrong}: the network's input has shape (50,), the data set's samples (1, 8, 8)" in capsys.readouterr().err
