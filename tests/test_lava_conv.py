"""Conv synapses on Lava's own Conv process (conv_mapping="conv") and as the unrolled Dense
("dense"): fixed_pt spike-identical to the emulator (the reference, itself proven equal to
Lava's Dense), floating_pt equal to the float model, and the per-synapse fallbacks; and the
quantization report's shared-weight memory and core figures (these need no Lava)."""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from export.conv import conv_accumulate, conv_matrix
from export.hw_config import resolve_hardware_config
from export.quantize import conv_connections, cores_needed, quantize_graph, synaptic_memory_bits
from export.timing import deployment_timing
from export.validate import ExportRangeError, validate_network
import helpers
from helpers import HW, integer_network
from lava_backend import runner  # imports lava only when a run is built
from lava_backend.runner import conv_plan, run_network
from netgraph import LIF, AvgPool2d, Conv2d, Dense, Edge, Graph, Input, Output, Sum

_NO_LAVA = importlib.util.find_spec("lava") is None


def lava_test(test):
    """Marks a test that runs Lava (the `lava` marker) and skips it where lava-nc is missing."""
    skip = pytest.mark.skipif(_NO_LAVA, reason="the Lava backend needs lava-nc (Python 3.10, `pip install -e .[lava]`)")
    return pytest.mark.lava(skip(test))


def assert_bit_exact(network, spikes, **kwargs):
    """helpers.assert_bit_exact, requiring every population to fire."""
    return helpers.assert_bit_exact(network, spikes, require_firing=True, **kwargs)


def _chain(nodes, names) -> Graph:
    edges = [Edge(a, b) for a, b in zip(names[:-1], names[1:])]
    return Graph(tuple(nodes), tuple(edges))


def pooled_cnn(seed: int = 0) -> Graph:
    """Float CNN on a non-square 2x12x16 input: 3x3 conv (stride 2, padding 1) -> 4x6x8,
    2x2 average pool, 3x3 conv (padding 1) -> 5x3x4, dense -> 6. Mixed-sign weights."""
    rng = np.random.default_rng(seed)
    nodes = [Input("input", (2, 12, 16)),
             Conv2d("c0", 4, (3, 3), stride=2, padding=1, weight=rng.normal(0.1, 0.4, (4, 2, 3, 3))),
             LIF("l0", (4, 6, 8), bias=rng.normal(0, 0.05, 4 * 6 * 8)), AvgPool2d("pool", 2),
             Conv2d("c1", 5, (3, 3), padding=1, weight=rng.normal(0.15, 0.5, (5, 4, 3, 3))),
             LIF("l1", (5, 3, 4), bias=rng.normal(0, 0.05, 5 * 3 * 4)),
             Dense("d2", 6, weight=rng.normal(0.05, 0.4, (6, 60))), LIF("l2", (6,), bias=np.zeros(6)),
             Output("output")]
    return _chain(nodes, [n.name for n in nodes])


def exported_cnn():
    network, _ = quantize_graph(pooled_cnn(), "bernoulli", 6, 0, resolve_hardware_config("loihi2"))
    folded = network.graph.node("c1")
    # The pool is folded into c1 (kernel 6x6, stride 2, padding 2, reading l0 directly).
    assert (folded.kernel_size, folded.stride, folded.padding) == ((6, 6), 2, 2)
    assert {network.graph.node(n).quantized.sign_mode for n in ("c0", "c1", "d2")} == {"mixed"}
    return network


def input_spikes(network, samples: int, seed: int, rate: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((samples, network.time_steps, *network.input_shape)) < rate).astype(np.uint8)


# --------------------------------------------------------------------------- fixed_pt, both mappings


@lava_test
@pytest.mark.parametrize("mapping", ["conv", "dense"])
def test_exported_cnn_with_a_folded_pool_is_bit_exact_in_every_population(mapping):
    network = exported_cnn()
    spikes = input_spikes(network, 6, seed=1)
    _, lava = assert_bit_exact(network, spikes, conv_mapping=mapping)
    assert lava.conv_synapses == {"c0": mapping, "c1": mapping}
    assert not any("conv synapse" in note for note in lava.notes)


@lava_test
@pytest.mark.parametrize("sign_mode, bits", [("mixed", 8), ("excitatory", 6), ("inhibitory", 7)])
def test_non_square_kernels_and_every_sign_mode_are_bit_exact_on_lava_conv(sign_mode, bits):
    # A 2x3 kernel on a 7x10 map (height != width everywhere): a kernel given to Lava
    # with height and width swapped, or not flipped, lands on other inputs. Inhibitory
    # weights fire only from the bias.
    structure = _chain([Input("input", (2, 7, 10)), Conv2d("c0", 4, (3, 3), stride=2, padding=1),
                        LIF("l0", (4, 4, 5)), Conv2d("c1", 5, (2, 3), padding=1), LIF("l1", (5, 5, 5)),
                        Output("output")], ["input", "c0", "l0", "c1", "l1", "output"])
    rng = np.random.default_rng(bits)
    bias, bias_exp = ((1000, 2000), 5) if sign_mode == "inhibitory" else ((-300, 300), 0)
    network = integer_network(structure, 5, rng, vth=150, sign_mode=sign_mode, bits=bits, bias=bias, bias_exp=bias_exp)
    spikes = (rng.random((5, 5, 2, 7, 10)) < 0.4).astype(np.uint8)
    _, lava = assert_bit_exact(network, spikes)
    assert lava.conv_synapses == {"c0": "conv", "c1": "conv"}


@lava_test
def test_a_kernel_handed_to_lava_unflipped_breaks_bit_exactness(monkeypatch):
    # The control for the tests above: they do see the kernel's orientation.
    network = exported_cnn()
    spikes = input_spikes(network, 4, seed=2)
    monkeypatch.setattr(runner, "lava_conv_kernel", lambda k: np.ascontiguousarray(np.asarray(k).transpose(0, 3, 2, 1)))
    with pytest.raises(AssertionError, match="population l0"):
        assert_bit_exact(network, spikes)


# --------------------------------------------------------------------------- floating_pt


def float_forward(graph: Graph, spikes: np.ndarray) -> dict[str, np.ndarray]:
    """The float model (netgraph.LIF's equations, tau_current = 0) of a feed-forward chain:
    (samples, T, *input_shape) 0/1 -> every population's (samples, T, neurons) spikes."""
    samples, steps = spikes.shape[:2]
    values, result = {graph.input.name: spikes.reshape(samples, steps, -1).astype(np.float64)}, {}
    for lif in graph.populations:
        (synapse, edge), = graph.synapses_into(lif.name)
        x = values[edge.source].reshape(samples * steps, -1)
        weight = np.asarray(synapse.weight, np.float64)
        if isinstance(synapse, Conv2d):
            current = conv_accumulate(x, weight, synapse.geometry(graph.shape_of(edge.source)))
        else:
            current = x @ weight.T
        current = current.reshape(samples, steps, -1) + np.asarray(lif.bias, np.float64)
        v, out = np.zeros((samples, lif.neurons)), np.zeros((samples, steps, lif.neurons))
        for t in range(steps):
            v = lif.tau * v * (1 - out[:, t - 1]) if t else np.zeros_like(v)
            v = v + current[:, t]
            out[:, t] = v >= lif.v_threshold
        values[lif.name] = result[lif.name] = out
    return {name: s.astype(np.uint8) for name, s in result.items()}


@lava_test
def test_floating_pt_on_lava_conv_follows_the_float_model():
    network = exported_cnn()
    spikes = input_spikes(network, 6, seed=3)
    expected = float_forward(network.graph, spikes)
    runs = {m: run_network(network, spikes, mode="floating_pt", progress=False, conv_mapping=m)
            for m in ("conv", "dense")}
    assert runs["conv"].conv_synapses == {"c0": "conv", "c1": "conv"}
    for name, want in expected.items():
        assert want.sum() > 0, name
        for mapping, run in runs.items():
            # The bar of the existing floating_pt tests: float sums in another order may
            # flip a neuron sitting exactly at its threshold.
            agreement = (run.population_spikes[name] == want).mean()
            assert agreement > 0.999, f"{mapping}, population {name}: {agreement}"


@lava_test
def test_floating_pt_equals_fixed_pt_spike_for_spike_with_integer_valued_weights():
    # As in test_lava_backend: even weights, odd vth = 61, full decays, no bias: both modes
    # fire exactly when a step's input reaches 62, so they must agree on every spike.
    rng = np.random.default_rng(8)
    structure = _chain([Input("input", (3, 6, 9)), Conv2d("c0", 4, (3, 3), stride=2, padding=1),
                        LIF("l0", (4, 3, 5)), Conv2d("c1", 3, (3, 2), padding=1), LIF("l1", (3, 3, 6)),
                        Output("output")], ["input", "c0", "l0", "c1", "l1", "output"])
    weights = {"c0": rng.integers(-8, 21, (4, 3, 3, 3)) * 2, "c1": rng.integers(-8, 21, (3, 4, 3, 2)) * 2}
    fixed = integer_network(structure, 5, weights=weights, du=4095, dv=4095, vth=61,
                            bias={lif.name: np.zeros(lif.neurons) for lif in structure.populations})
    floating = dataclasses.replace(fixed, graph=fixed.graph.replace(nodes=[
        dataclasses.replace(lif, tau=0.0, v_threshold=61.0 + 1.0 / 64) for lif in fixed.graph.populations]))
    spikes = (rng.random((5, 5, 3, 6, 9)) < 0.5).astype(np.uint8)
    emulated, _ = assert_bit_exact(fixed, spikes)
    lava_float = run_network(floating, spikes, mode="floating_pt", progress=False)
    assert lava_float.conv_synapses == {"c0": "conv", "c1": "conv"}
    for name, expected in emulated.population_spikes.items():
        np.testing.assert_array_equal(lava_float.population_spikes[name], expected, err_msg=name)


# --------------------------------------------------------------------------- fallbacks and recurrence


def conv_residual_structure() -> Graph:
    """A residual block on 2x5x7 maps: a -> b -> c, and a -> c through a 1x1 conv shortcut,
    which must wait one step on Lava (export.timing) as in configs/digits_resnet.yaml."""
    return Graph((Input("input", (2, 5, 7)), Conv2d("a_in", 3, (3, 3), padding=1), LIF("a", (3, 5, 7)),
                  Conv2d("b_in", 3, (3, 3), padding=1), LIF("b", (3, 5, 7)), Conv2d("c_main", 3, (3, 3), padding=1),
                  Conv2d("c_skip", 3, (1, 1)), Sum("c_sum"), LIF("c", (3, 5, 7)), Dense("out_in", 4),
                  LIF("out", (4,)), Output("output")),
                 (Edge("input", "a_in"), Edge("a_in", "a"), Edge("a", "b_in"), Edge("b_in", "b"), Edge("b", "c_main"),
                  Edge("a", "c_skip"), Edge("c_main", "c_sum"), Edge("c_skip", "c_sum"), Edge("c_sum", "c"),
                  Edge("c", "out_in"), Edge("out_in", "out"), Edge("out", "output")))


@lava_test
def test_a_delayed_conv_shortcut_falls_back_to_the_unrolled_dense_alone_and_stays_bit_exact():
    rng = np.random.default_rng(11)
    network = integer_network(conv_residual_structure(), 6, rng, vth=400)
    assert deployment_timing(network.graph, 63).delay["c_skip"] == 1
    spikes = input_spikes(network, 6, seed=12)
    _, lava = assert_bit_exact(network, spikes)
    assert lava.conv_synapses == {"a_in": "conv", "b_in": "conv", "c_main": "conv", "c_skip": "dense"}
    assert [n for n in lava.notes if n.startswith("conv synapse")] == [
        "conv synapse c_skip: unrolled Dense, because its path waits 1 more step(s) and Lava's Conv has no "
        "synaptic delay (DelayDense has)"]


def conv_recurrent_structure() -> Graph:
    """input -> h (3x4x6), with h's own spikes fed back through a 3x3 conv (one step late)."""
    return Graph((Input("input", (2, 4, 6)), Conv2d("h_in", 3, (3, 3), padding=1),
                  Conv2d("h_rec", 3, (3, 3), padding=1), Sum("h_sum"), LIF("h", (3, 4, 6)), Dense("out_in", 4),
                  LIF("out", (4,)), Output("output")),
                 (Edge("input", "h_in"), Edge("h", "h_rec", recurrent=True), Edge("h_in", "h_sum"),
                  Edge("h_rec", "h_sum"), Edge("h_sum", "h"), Edge("h", "out_in"), Edge("out_in", "out"),
                  Edge("out", "output")))


@lava_test
def test_a_recurrent_conv_stays_on_lava_conv_because_its_buffer_is_cleared_between_samples(monkeypatch):
    rng = np.random.default_rng(13)
    network = integer_network(conv_recurrent_structure(), 5, rng, vth=250)
    spikes = input_spikes(network, 7, seed=14)
    emulated, lava = assert_bit_exact(network, spikes, shards=2)
    assert lava.conv_synapses == {"h_in": "conv", "h_rec": "conv"} and lava.pauses > 0
    assert emulated.population_spikes["h"][:, -1].sum() > 0  # last steps spike: a leak would show
    # Without clearing Conv's a_buf, a sample's last spikes leak into the next sample.
    monkeypatch.setattr(runner, "_clear_in_flight", lambda graph: None)
    with pytest.raises(AssertionError, match="population h"):
        assert_bit_exact(network, spikes)


@lava_test
def test_a_weight_exponent_falls_back_to_the_dense_which_applies_it():
    # Lava 0.10.0's fixed-point Conv never reads weight_exp: on Conv these runs would differ.
    structure = _chain([Input("input", (2, 5, 6)), Conv2d("c0", 3, (3, 3), padding=1), LIF("l0", (3, 5, 6)),
                        Output("output")], ["input", "c0", "l0", "output"])
    for weight_exp, vth in ((1, 300), (-1, 80)):
        rng = np.random.default_rng(20 + weight_exp)
        network = integer_network(structure, 4, rng, vth=vth, weight_exp=weight_exp)
        _, lava = assert_bit_exact(network, input_spikes(network, 4, seed=21))
        assert lava.conv_synapses == {"c0": "dense"}
        assert any(f"weight_exp = {weight_exp}" in note for note in lava.notes)


@lava_test
def test_a_sum_that_could_wrap_at_24_bits_falls_back_and_unknown_mappings_are_refused():
    # 1024 channels x 6x6 inputs at weight 254 can bring 254 * 36864 >= 2^23 in one step,
    # past the 24 signed bits Lava's Conv wraps at (Dense does not wrap).
    structure = _chain([Input("input", (1024, 6, 6)), Conv2d("wide", 1, (6, 6)), LIF("l0", (1, 1, 1)),
                        Output("output")], ["input", "wide", "l0", "output"])
    no_bias = {"l0": np.zeros(1)}
    full = integer_network(structure, 2, weights={"wide": np.full((1, 1024, 6, 6), 254)}, bias=no_bias)
    timing = deployment_timing(full.graph, 63)
    assert "24 bits" in conv_plan(full, "fixed_pt", "conv", timing)["wide"]
    assert conv_plan(full, "floating_pt", "conv", timing) == {"wide": None}  # floats do not wrap
    half = integer_network(structure, 2, weights={"wide": np.full((1, 1024, 6, 6), 226)}, bias=no_bias)
    assert conv_plan(half, "fixed_pt", "conv", timing) == {"wide": None}  # 226 * 36864 < 2^23
    # Both are refused before any run: one step's input << 6 would pass the 2^24 within which
    # Lava's current stays in range (export.validate); the fallback stays for other configs.
    with pytest.raises(ExportRangeError, match="node l0 .*can reach 9363456 .*past the 16777216"):
        validate_network(full)
    quiet = integer_network(structure, 2, weights={"wide": np.full((1, 1024, 6, 6), 2)}, bias=no_bias)
    with pytest.raises(ValueError, match="unknown conv_mapping 'sparse'"):
        run_network(quiet, np.zeros((1, 2, 1024, 6, 6), np.uint8), conv_mapping="sparse", progress=False)


# --------------------------------------------------------------------------- quantization report (no Lava)


def test_conv_connections_count_the_unrolled_matrix_entries_off_the_padding():
    # conv_matrix with an all-ones kernel has a 1 exactly where a connection exists.
    for in_shape, kernel, stride, padding in (((2, 12, 16), (3, 3), 2, 1), ((4, 6, 8), (6, 6), 2, 2),
                                              ((3, 7, 10), (2, 3), 1, 1)):
        node = Conv2d("c", 5, kernel, stride=stride, padding=padding)
        ones = np.ones((5, in_shape[0], *kernel))
        assert conv_connections(node, in_shape) == int(conv_matrix(ones, node.geometry(in_shape)).sum())


def test_core_model_by_hand():
    # Loihi 2 config: 8192 neurons and 2^20 bits of synaptic memory per core, 8-bit weights.
    assert cores_needed(1_000_000, 10, 8, HW) == 8  # 8e6 bits stored once: ceil(7.63)
    # A 65536-weight kernel (2^19 bits) copied on every core leaves 2^19 bits per core for the
    # dense weights: ceil(8e6 / 2^19) = 16 cores, each holding a copy of the kernel.
    assert cores_needed(1_000_000, 10, 8, HW, shared_weights=65_536) == 16
    assert synaptic_memory_bits(1_000_000, 65_536, 16, 8, HW) == (1_000_000 + 16 * 65_536) * 8
    # A kernel larger than one core is split by output channel: every weight stored once.
    assert cores_needed(1_000_000, 10, 8, HW, shared_weights=200_000) == 10  # ceil(9.6e6 / 2^20)
    assert synaptic_memory_bits(1_000_000, 200_000, 10, 8, HW) == 1_200_000 * 8
    assert cores_needed(0, 20_000, 8, HW, shared_weights=432) == 3  # the neurons decide: ceil(20000 / 8192)


def test_report_counts_a_conv_kernel_once_per_core_not_once_per_neuron():
    # 16 3x3 filters on a 3x32x32 map (padding 1): 16384 neurons, 2 cores' worth; the kernel
    # is 16 * 3 * 9 = 432 weights (3456 bits) per core. Unrolled, each of the 16 * 3 channel
    # pairs links 94 * 94 (input, neuron) pairs (94 = 32 * 3 - 2 taps off the padding per
    # axis): 424128 weights, 3.4e6 bits, 4 cores.
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.3, (16, 3, 3, 3))
    graph = Graph((Input("input", (3, 32, 32)), Conv2d("c", 16, (3, 3), padding=1, weight=kernel),
                   LIF("l", (16, 32, 32), bias=np.zeros(16 * 32 * 32)), Output("output")),
                  (Edge("input", "c"), Edge("c", "l"), Edge("l", "output")))
    _, report = quantize_graph(graph, "bernoulli", 4, 0, HW)
    population = report.population("l")
    (synapse,) = population.synapses
    assert (synapse.stored_weights, synapse.connections) == (432, 16 * 3 * 94 * 94)
    assert (population.cores_needed, population.cores_needed_unrolled) == (2, 4)
    assert population.synaptic_memory_bits == 2 * 432 * 8
    row = next(line for line in report.format_table().splitlines() if line.startswith("l ")).split()
    kib = row.index(f"{2 * 432 * 8 / 8192:.1f}")
    assert row[kib + 1:kib + 3] == ["2", "4"]  # syn KiB, cores, unrolled cores (flags follow)
    assert "kernel stored once per core" in report.format_table()
