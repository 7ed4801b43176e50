"""Small builders shared by tests."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from export.emulator import emulate
from export.hw_config import resolve_hardware_config
from export.network import ExportedNetwork
from lava_backend.runner import run_network  # imports lava only when a run is built
from netgraph import (LIF, Dense, Edge, Graph, Input, Output, QuantizedLIF, QuantizedSynapse, Sum,
                      Synapse)
from trainer.config import RunConfig, config_from_dict
from trainer.train import train

HW = resolve_hardware_config("loihi2")


def tiny_digits_config(tmp_path, **training) -> RunConfig:
    """A fast digits run: 64-32-10, T = 6, a subset of the data."""
    return config_from_dict(
        {
            "seed": 3,
            "output_dir": str(tmp_path / "run"),
            "data": {"name": "digits", "train_limit": 300, "test_limit": 120},
            "encoding": {"kind": "bernoulli", "time_steps": 6},
            "model": {"layers": [{"type": "dense", "units": 32}, {"type": "dense", "units": 10}]},
            "training": {"epochs": 2, "batch_size": 32, "learning_rate": 0.002, "device": "cpu", **training},
        }
    )


def float_chain(layers, input_shape, tau=0.2, v_threshold=0.5, tau_current=0.0) -> Graph:
    """input -> [Dense -> LIF] per (weight (out, in), bias) -> output, with float parameters;
    populations are named layer0, layer1, ..."""
    nodes, edges, previous = [Input("input", tuple(input_shape))], [], "input"
    for i, (weight, bias) in enumerate(layers):
        weight, name = np.asarray(weight, np.float64), f"layer{i}"
        synapse = f"{name}_from_{previous}"
        nodes += [Dense(synapse, weight.shape[0], weight=weight),
                  LIF(name, (weight.shape[0],), tau=tau, v_threshold=v_threshold, tau_current=tau_current,
                      bias=np.asarray(bias, np.float64))]
        edges += [Edge(previous, synapse), Edge(synapse, name)]
        previous = name
    return Graph(tuple(nodes + [Output("output")]), tuple(edges + [Edge(previous, "output")]))


def random_float_chain(rng, sizes, tau=0.2, v_threshold=0.5) -> Graph:
    return float_chain([(rng.normal(0, 0.3, (n_out, n_in)), rng.normal(0, 0.05, n_out))
                        for n_in, n_out in zip(sizes[:-1], sizes[1:])], (sizes[0],), tau, v_threshold)




def integer_network(structure: Graph, time_steps: int, rng=None, weights=None, dv=3277, du=4095, vth=200,
                    bias=(-300, 300), bias_exp=0, weight_exp=0, sign_mode="mixed", bits=8,
                    hw=HW) -> ExportedNetwork:
    """A deployable network on `structure` with integer parameters chosen directly: weights
    (a dict by synapse name, else random on the sign mode's grid with both clip limits
    present), bias_mant uniform in `bias` (or a dict by population), one du/dv/vth for all."""
    low, high, step = hw.weight_range(sign_mode, bits)
    nodes = []
    for node in structure.nodes:
        if isinstance(node, Synapse):
            if weights is not None and node.name in weights:
                w = np.asarray(weights[node.name], np.int64)
            else:
                w = rng.integers(low // step, high // step + 1, size=node.weight_shape(structure.read_shape(node.name))) * step
                w.flat[:2] = [low, high]
            node = type(node)(**{**_fields(node), "weight": w.astype(np.float32),
                                 "quantized": QuantizedSynapse(w, weight_exp, bits, sign_mode)})
        elif isinstance(node, LIF):
            mant = (np.asarray(bias[node.name], np.int64) if isinstance(bias, dict)
                    else rng.integers(bias[0], bias[1], size=node.neurons))
            node = LIF(node.name, node.shape, tau=0.5, v_threshold=1.0, tau_current=node.tau_current,
                       bias=np.zeros(node.neurons, np.float32),
                       quantized=QuantizedLIF(du, dv, vth, mant.astype(np.int64), bias_exp, 1.0))
        nodes.append(node)
    return ExportedNetwork(Graph(tuple(nodes), structure.edges), "bernoulli", time_steps, 0, hw)


def _fields(node) -> dict:
    return {f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.init}


def chain_structure(sizes) -> Graph:
    """input -> Dense -> LIF ... (no parameters), populations l0, l1, ..."""
    nodes, edges, previous = [Input("input", (sizes[0],))], [], "input"
    for i, n in enumerate(sizes[1:]):
        nodes += [Dense(f"d{i}", n), LIF(f"l{i}", (n,))]
        edges += [Edge(previous, f"d{i}"), Edge(f"d{i}", f"l{i}")]
        previous = f"l{i}"
    return Graph(tuple(nodes + [Output("output")]), tuple(edges + [Edge(previous, "output")]))


def skip_structure(n_in=10, hidden=8, classes=4) -> Graph:
    """input -> a -> b -> c, with c also reading a directly (a skip over b): c's paths have
    one and two synapses, the shape of a residual block."""
    nodes = [Input("input", (n_in,)), Dense("a_in", hidden), LIF("a", (hidden,)), Dense("b_in", hidden),
             LIF("b", (hidden,)), Dense("c_main", classes), Dense("c_skip", classes), Sum("c_sum"),
             LIF("c", (classes,)), Output("output")]
    edges = [Edge("input", "a_in"), Edge("a_in", "a"), Edge("a", "b_in"), Edge("b_in", "b"), Edge("b", "c_main"),
             Edge("a", "c_skip"), Edge("c_main", "c_sum"), Edge("c_skip", "c_sum"), Edge("c_sum", "c"),
             Edge("c", "output")]
    return Graph(tuple(nodes), tuple(edges))


def recurrent_structure(n_in=10, hidden=8, classes=4) -> Graph:
    """input -> h (with h's own spikes fed back through h_rec) -> out."""
    nodes = [Input("input", (n_in,)), Dense("h_in", hidden), Dense("h_rec", hidden), Sum("h_sum"), LIF("h", (hidden,)),
             Dense("out_in", classes), LIF("out", (classes,)), Output("output")]
    edges = [Edge("input", "h_in"), Edge("h", "h_rec", recurrent=True), Edge("h_in", "h_sum"), Edge("h_rec", "h_sum"),
             Edge("h_sum", "h"), Edge("h", "out_in"), Edge("out_in", "out"), Edge("out", "output")]
    return Graph(tuple(nodes), tuple(edges))


def assert_bit_exact(network: ExportedNetwork, spikes, require_firing: bool = False, **kwargs):
    """Runs the emulator and Lava fixed_pt (run_network keyword arguments) on the same spikes and
    asserts identical spikes in every population, in the same order; require_firing: each
    population must fire somewhere, so that the comparison is not vacuous. Returns (emulated, lava)."""
    emulated = emulate(network, spikes)
    lava = run_network(network, spikes, mode="fixed_pt", progress=False, **kwargs)
    assert list(lava.population_spikes) == list(emulated.population_spikes)
    for name, expected in emulated.population_spikes.items():
        np.testing.assert_array_equal(lava.population_spikes[name], expected, err_msg=f"population {name}")
        if require_firing and network.graph.node(name).spiking:
            assert expected.sum() > 0, f"population {name} never fires: the comparison would be vacuous"
    if emulated.output_potential is not None or lava.output_potential is not None:
        np.testing.assert_array_equal(lava.output_potential, emulated.output_potential, err_msg="output potential")
        if require_firing:
            assert np.abs(emulated.output_potential).sum() > 0, "the output potential stays 0: a vacuous comparison"
    return emulated, lava


def assert_resume_continues_exactly(straight, make_config, first_checkpoint) -> None:
    """Resuming a one-epoch run from its checkpoint to the config `make_config()` (two epochs)
    gives the uninterrupted run `straight` (a TrainResult) loss for loss and bit for bit."""
    resumed = train(make_config(), resume=first_checkpoint, progress=False, log=lambda _: None)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
