"""lava-dl netx HDF5 export (export.netx): files that lava-dl 0.6.0's netx loads and runs on
Lava fixed_pt spike-identical to the emulator (dense, CUBA, conv with a folded pool), the
mirror of netx's weight arithmetic checked against lava-dl's own code, and the refusals."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from export.emulator import emulate
from export.netx import (NETX_BIAS_EXP, NetxExportError, check_netx, netx_dense_arithmetic, run_netx,
                         save_netx)
from export.quantize import quantize_graph
from export.validate import ExportRangeError
from helpers import HW, chain_structure, float_chain, integer_network, recurrent_structure, skip_structure
from netgraph import LIF, AvgPool2d, Conv2d, Dense, Edge, Graph, Input, Output

_NO_NETX = importlib.util.find_spec("lava") is None or importlib.util.find_spec("lava.lib.dl") is None


def netx_test(test):
    """Marks a test that runs lava-dl's netx on Lava (`lava` marker), skipped without them."""
    skip = pytest.mark.skipif(_NO_NETX, reason="needs lava-nc 0.10.0 and lava-dl 0.6.0 (installed by ./run)")
    return pytest.mark.lava(skip(test))


@pytest.fixture(scope="module", autouse=True)
def _lava_importable():
    if not _NO_NETX:
        from lava_backend.runner import import_lava

        import_lava()  # Lava sets multiprocessing's start method on import; make that harmless


def quantized(graph: Graph, time_steps: int, **kwargs):
    network, _ = quantize_graph(graph, "bernoulli", time_steps, 5, HW, netx=True, **kwargs)
    return network


def assert_netx_matches_emulator(network, spikes, tmp_path):
    """Writes the file, runs it through netx on Lava and compares every layer with the emulator."""
    path = tmp_path / "net.h5"
    save_netx(network, path)
    expected = emulate(network, spikes).population_spikes
    got, _ = run_netx(path, spikes)
    assert len(got) == len(expected)
    for index, (name, spikes_expected) in enumerate(expected.items()):
        np.testing.assert_array_equal(got[index], spikes_expected, err_msg=f"population {name}")
        assert 0 < spikes_expected.mean() < 0.9, f"population {name}: the comparison would be vacuous"
    return path


def mlp(rng, tau_current=0.0) -> Graph:
    """20-16-12-5 with mixed-sign weights and biases, the middle layer's weights all positive
    (excitatory: the sign mode whose largest weight netx must not see at 255)."""
    sizes = (20, 16, 12, 5)
    layers = [(rng.normal(0.0, 0.4, (n_out, n_in)), rng.normal(0.05, 0.1, n_out)) for n_in, n_out in
              zip(sizes[:-1], sizes[1:])]
    layers[1] = (np.abs(layers[1][0]) * 0.5 * (1 - tau_current), layers[1][1] - 0.3)  # a current adds up
    return float_chain(layers, (20,), tau=0.3, v_threshold=0.6, tau_current=tau_current)


def conv_net(rng) -> Graph:
    """(2, 8, 7) -> conv 3 @ 3x2 pad 1 -> avg pool 2 -> conv 4 @ 2x3 pad 1 -> dense 5: non-square
    kernels and maps, biases per neuron (a flipped kernel or a bias in (C, H, W) instead of
    Lava's (W, H, C) order changes the spikes), the pooled conv folded into a 4x6 kernel with
    stride 2 and padding 2."""
    nodes = [Input("input", (2, 8, 7)),
             Conv2d("c0", out_channels=3, kernel_size=(3, 2), padding=1, weight=rng.normal(0.2, 0.5, (3, 2, 3, 2))),
             LIF("p0", (3, 8, 8), tau=0.3, v_threshold=0.5, bias=rng.normal(0.0, 0.1, 192)),
             AvgPool2d("pool", kernel_size=2),
             Conv2d("c1", out_channels=4, kernel_size=(2, 3), padding=1, weight=rng.normal(0.0, 1.0, (4, 3, 2, 3))),
             LIF("p1", (4, 5, 4), tau=0.3, v_threshold=0.5, bias=rng.normal(0.0, 0.1, 80)),
             Dense("d2", 5, weight=rng.normal(0.0, 0.3, (5, 80))),
             LIF("p2", (5,), tau=0.3, v_threshold=0.5, bias=rng.normal(0.0, 0.1, 5)), Output("output")]
    names = ["input", "c0", "p0", "pool", "c1", "p1", "d2", "p2", "output"]
    return Graph(tuple(nodes), tuple(Edge(a, b) for a, b in zip(names[:-1], names[1:])))


# --------------------------------------------------------------------------- exactness on Lava


@netx_test
@pytest.mark.parametrize("tau_current", [0.0, 0.4])
def test_netx_runs_an_mlp_spike_identical_to_the_emulator(tmp_path, tau_current):
    rng = np.random.default_rng(11)
    network = quantized(mlp(rng, tau_current), time_steps=7)
    assert {p.quantized.bias_exp for p in network.populations} == {NETX_BIAS_EXP}
    excitatory = network.graph.node("layer1_from_layer0").quantized
    assert excitatory.sign_mode == "excitatory" and excitatory.weight.max() == 254  # full range, but not 255
    spikes = (rng.random((5, 7, 20)) < 0.4).astype(np.uint8)
    assert_netx_matches_emulator(network, spikes, tmp_path)


@netx_test
def test_netx_runs_an_image_into_a_dense_layer_in_our_flattening_order(tmp_path):
    rng = np.random.default_rng(8)
    layers = [(rng.normal(0.0, 0.4, (9, 24)), rng.normal(0.05, 0.1, 9)), (rng.normal(0.0, 0.5, (4, 9)), np.zeros(4))]
    network = quantized(float_chain(layers, (2, 3, 4)), time_steps=4)
    spikes = (rng.random((3, 4, 2, 3, 4)) < 0.4).astype(np.uint8)
    assert_netx_matches_emulator(network, spikes, tmp_path)


@netx_test
def test_netx_runs_convs_and_a_folded_pool_spike_identical_to_the_emulator(tmp_path):
    rng = np.random.default_rng(4)
    network = quantized(conv_net(rng), time_steps=5)
    folded = network.graph.node("c1")
    assert folded.kernel_size == (4, 6) and folded.stride == 2 and folded.padding == 2
    spikes = (rng.random((3, 5, 2, 8, 7)) < 0.4).astype(np.uint8)
    assert_netx_matches_emulator(network, spikes, tmp_path)


@netx_test
def test_the_file_records_our_provenance_and_netx_arguments(tmp_path):
    import h5py

    rng = np.random.default_rng(2)
    network = quantized(float_chain([(rng.normal(0, 0.4, (4, 6)), np.zeros(4))], (6,)), time_steps=3,
                        metadata={"source_checkpoint": "x.pt"})
    path = tmp_path / "net.h5"
    save_netx(network, path)
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["stbp_metadata"])["source_checkpoint"] == "x.pt"
        assert "lava-nc" in json.loads(f.attrs["stbp_versions"])
        assert (f.attrs["netx_reset_interval"], f.attrs["netx_reset_offset"]) == (3, 1)
        assert [f["layer"][str(i)]["type"][0] for i in range(2)] == [b"input", b"dense"]
        assert f["layer/1/neuron/iDecay"][()] == 4096  # du 4095 + 1: netx hands Lava du = iDecay - 1
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left beside it


@netx_test
def test_the_weight_mirror_matches_lava_dl_and_lava(tmp_path):
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    rng = np.random.default_rng(0)
    cases = [np.array([[-128, -3, 0]]), np.array([[-255, -6]]), np.array([[0, -64]]), np.array([[2, -2]]),
             np.array([[64, 0]]), np.array([[-256, 254]]), np.array([[1, 3, 255]])]
    for _ in range(400):
        bits = int(rng.integers(1, 9))
        w = rng.integers(-(1 << bits), 1 << bits, size=(3, 4)) << int(rng.integers(0, 9 - bits))
        cases.append([w, np.abs(w), -np.abs(w)][int(rng.integers(3))].clip(-256, 255))
    exact = 0
    for w in cases:
        if not np.any(w):
            continue
        with np.errstate(divide="ignore"):  # netx divides by a largest weight of 0 (to inf) in mixed mode
            shifted, num_bits, exponent, _ = optimize_weight_bits(w.copy())
        mode = determine_sign_mode(shifted)
        lava = truncate_weights(clip_weights(shifted, mode, num_bits=8), mode, num_bits)
        mine, my_exponent = netx_dense_arithmetic(w)
        assert my_exponent == exponent, w
        if mine is None:  # Lava would shift by a negative count (undefined); the export refuses these
            continue
        assert np.array_equal(mine, lava), w
        exact += np.array_equal(lava, w.astype(np.int64) << -exponent)
    assert 0 < exact < len(cases)  # both exact and altered matrices were covered


# --------------------------------------------------------------------------- refusals (no Lava needed)


def test_a_network_with_a_bias_exponent_other_than_6_is_not_written(tmp_path):
    rng = np.random.default_rng(3)
    network, _ = quantize_graph(mlp(rng), "bernoulli", 4, 5, HW)  # the default: smallest exponent that fits
    assert {p.quantized.bias_exp for p in network.populations} != {NETX_BIAS_EXP}
    with pytest.raises(NetxExportError, match=r"node layer\d: bias_mant << bias_exp .* quantize with netx=True"):
        save_netx(network, tmp_path / "net.h5")
    assert not list(tmp_path.iterdir())


def test_a_bias_that_is_a_multiple_of_64_at_another_exponent_is_exact_and_accepted():
    network = integer_network(chain_structure((6, 4)), 3, np.random.default_rng(1), bias={"l0": [16, -32, 0, 48]},
                              bias_exp=2)
    assert check_netx(network)


@pytest.mark.parametrize("structure, message", [
    (skip_structure(), r"^node a: read by b_in, c_skip; netx builds a chain"),
    (recurrent_structure(), r"^recurrent edge h -> h_rec: netx's layer chain has no recurrent"),
])
def test_graphs_netx_cannot_build_are_refused_naming_the_node(structure, message):
    network = integer_network(structure, 4, np.random.default_rng(0), bias=(-5, 5), bias_exp=6)
    with pytest.raises(NetxExportError, match=message):
        check_netx(network)


def test_an_unfolded_pool_is_refused_naming_it():
    nodes = [Input("input", (1, 4, 4)), Conv2d("c0", out_channels=2, kernel_size=(3, 3), padding=1),
             LIF("p0", (2, 4, 4)), AvgPool2d("pool", kernel_size=2), Dense("d1", 3), LIF("p1", (3,)), Output("output")]
    names = [n.name for n in nodes]
    structure = Graph(tuple(nodes), tuple(Edge(a, b) for a, b in zip(names[:-1], names[1:])))
    network = integer_network(structure, 4, np.random.default_rng(0), bias=(-5, 5), bias_exp=6)
    with pytest.raises(NetxExportError, match=r"^node pool: average pool not folded"):
        check_netx(network)


def test_quantizing_a_skip_connection_for_netx_fails_with_the_node():
    rng = np.random.default_rng(0)
    float_nodes = []
    for node in skip_structure().nodes:
        if isinstance(node, Dense):
            in_size = 10 if node.name == "a_in" else 8
            node = Dense(node.name, node.out_features, weight=rng.normal(0, 0.3, (node.out_features, in_size)))
        elif isinstance(node, LIF):
            node = LIF(node.name, node.shape, bias=np.zeros(node.neurons))
        float_nodes.append(node)
    graph = Graph(tuple(float_nodes), skip_structure().edges)
    with pytest.raises(ExportRangeError, match=r"^node a: read by b_in, c_skip"):
        quantize_graph(graph, "bernoulli", 4, 5, HW, netx=True)


@pytest.mark.parametrize("weight, message", [
    (np.array([[255, 4, 0], [3, 0, 1]]), r"^node d0: its largest weight is 255, which lava-dl#170 reports"),
    (np.array([[-128, -4, 0], [-3, 0, -1]]), r"^node d0: every weight is <= 0 and the largest magnitude 128"),
    (np.zeros((2, 3), np.int64), r"^node d0: every weight is zero"),
])
def test_weights_netx_would_alter_are_refused(weight, message):
    mode = "excitatory" if weight.min() >= 0 else "inhibitory"
    network = integer_network(chain_structure((3, 2)), 3, np.random.default_rng(0), weights={"d0": weight},
                              bias=(-5, 5), bias_exp=6, sign_mode=mode)
    with pytest.raises(NetxExportError, match=message):
        check_netx(network)


def test_a_weight_exponent_is_refused():
    network = integer_network(chain_structure((3, 2)), 3, np.random.default_rng(0), bias=(-5, 5), bias_exp=6,
                              weight_exp=1)
    with pytest.raises(NetxExportError, match=r"^node d0: weight_exp 1; netx has no weight-exponent field"):
        check_netx(network)
