"""The emulator's fast paths against the definitions they stand for: fixed_point.InPlaceLIF
against lif_fixed_step (edge values: the current's wrap at +-2^23 on both sides, v's clip,
decay truncating toward zero, du/dv 0 and 4095, bias with bias_exp, vth_shift,
activation_shift, potentials exactly at the threshold; and random stress), the int8 and float
synaptic products against each other, and the emulator's backends and its reference step
spike for spike."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from helpers import HW, chain_structure, integer_network, recurrent_structure, skip_structure

import export.emulator as emulator
from export.emulator import _plan_product, _Simulation, _TorchOps, emulate
from export.fixed_point import (FixedLIFParameters, InPlaceLIF, current_may_wrap, effective_bias,
                                in_place_lif_applies, lif_fixed_step, max_input_reach)
from netgraph import Conv2d, Edge, Graph, Input, LIF, Output

torch = pytest.importorskip("torch")
LIMIT = HW.state_limit  # 2^23
TOP = LIMIT - 1
REACH = max_input_reach(HW)  # 2^18: an input << 6 of 2^24


def _params(du, dv, vth, bias_mant, bias_exp=0):
    return FixedLIFParameters(du, dv, vth, np.asarray(bias_mant, np.int64), bias_exp)


def _kernel(params, shape, xp, hw=HW, wraps=True, input_shift=0):
    bias = effective_bias(params).astype(np.int32)
    return InPlaceLIF(params, hw, bias if xp is np else torch.from_numpy(bias), shape, xp, None, wraps, input_shift)


def _as_numpy(array):
    return array.numpy() if hasattr(array, "numpy") else array


def _reference_run(activations, params, hw, u=None, v=None):
    """lif_fixed_step over activations (steps, batch, neurons) int64 -> spikes, u and v per step."""
    u = np.zeros(activations.shape[1:], np.int64) if u is None else u
    v = np.zeros(activations.shape[1:], np.int64) if v is None else v
    trace = []
    for a in activations:
        s, u, v = lif_fixed_step(a, u, v, params, hw)
        trace.append((s.astype(np.uint8), u, v))
    return trace


def _kernel_run(activations, params, xp, hw=HW, wraps=True, u=None, v=None, input_shift=0):
    """InPlaceLIF over the same activations (int32, taken >> input_shift as the synapse leaves
    them), from the given state; spikes, u (where it keeps one) and v per step."""
    kernel = _kernel(params, activations.shape[1:], xp, hw, wraps, input_shift)
    if u is not None and kernel.u is not None:
        kernel.u[...] = xp.asarray(u.astype(np.int32)) if xp is np else torch.from_numpy(u.astype(np.int32))
    if v is not None:
        kernel.v[...] = xp.asarray(v.astype(np.int32)) if xp is np else torch.from_numpy(v.astype(np.int32))
    x = (activations >> input_shift).astype(np.int32)
    x = x if xp is np else torch.from_numpy(x)
    trace = []
    for t in range(len(activations)):
        spikes = np.zeros(activations.shape[1:], np.uint8)
        kernel.step(x[t], spikes if xp is np else torch.from_numpy(spikes))
        u_now = None if kernel.u is None else _as_numpy(kernel.u).astype(np.int64)
        trace.append((spikes, u_now, _as_numpy(kernel.v).astype(np.int64)))
    return trace


def _assert_same(activations, params, hw=HW, u=None, v=None, wraps=True, input_shift=0):
    """Both libraries' kernels against the reference, spikes and v every step (u where kept)."""
    assert in_place_lif_applies(params, int(np.abs(activations).max(initial=0)), hw)
    expected = _reference_run(activations.astype(np.int64), params, hw, u, v)
    for xp in (np, torch):
        got = _kernel_run(activations, params, xp, hw, wraps, u, v, input_shift)
        for t, ((s1, u1, v1), (s2, u2, v2)) in enumerate(zip(expected, got)):
            where = f"{xp.__name__} step {t}"
            np.testing.assert_array_equal(s2, s1, err_msg=f"spikes, {where}")
            np.testing.assert_array_equal(v2, v1, err_msg=f"v, {where}")
            if u2 is not None:
                np.testing.assert_array_equal(u2, u1, err_msg=f"u, {where}")


# ---- one step from edge states

EDGE_U = [-(LIMIT - 1), -(LIMIT - 2), -4097, -4096, -4095, -1, 0, 1, 4095, 4096, LIMIT - 1, LIMIT]
EDGE_V = [-TOP, -TOP + 1, -101, -4097, -1, 0, 1, 63, 64, 65, 4097, TOP - 1, TOP]
EDGE_A = [-REACH, -REACH + 1, -(1 << 17) - 1, -(1 << 17), -1, 0, 1, 1 << 17, (1 << 17) + 1, REACH - 1, REACH]


@pytest.mark.parametrize("du,dv", [(0, 0), (0, 4095), (4095, 0), (4095, 4095), (1000, 3277), (2048, 1)])
def test_one_step_from_every_edge_state_matches_the_reference(du, dv):
    grid = np.array(list(itertools.product(EDGE_U, EDGE_V, EDGE_A)), np.int64)
    u, v, a = grid[:, 0][None], grid[:, 1][None], grid[:, 2][None]
    neurons = grid.shape[0]
    for vth, bias_mant, bias_exp in ((1, 0, 0), (2**17 - 1, -4096, 7), (755, 4095, 2)):
        params = _params(du, dv, vth, np.full(neurons, bias_mant), bias_exp)
        _assert_same(a[None], params, u=u, v=v)


def test_current_wraps_on_both_sides_over_steps():
    # du = 0 keeps u (decay by 1/4096 only): the largest inputs push it past +2^23 and below -2^23.
    steps = np.array([REACH, REACH, REACH, -REACH, -REACH, -REACH, -REACH, REACH // 2, 1 << 17, (1 << 17) + 1])
    activations = np.stack([steps, -steps, steps // 3, -steps // 3], axis=1)[:, None, :]
    params = _params(0, 4095, 2**17 - 1, np.zeros(4), 0)
    expected = _reference_run(activations, params, HW)
    assert max(int(u.max()) for _, u, _ in expected) == LIMIT  # +2^23 kept, -2^23 wraps to it
    _assert_same(activations, params)


def test_a_current_without_state_wraps_in_prepare():
    # du = 4095: u is each step's input << 6, which wraps where it exceeds 2^23 (the prepare path).
    activations = np.array([[[REACH, -REACH, (1 << 17) + 1, 1 << 17, -(1 << 17), -(1 << 17) - 1]]] * 3)
    params = _params(4095, 0, 2**17 - 1, np.array([0, 5, -5, 7, -7, 0]), 3)
    _assert_same(activations, params)


def test_potential_exactly_at_threshold_does_not_fire_and_one_more_does():
    # vth = 2 -> fires only above 128; inputs of 0/1/2 with dv = 0 land on 128 exactly again and again.
    rng = np.random.default_rng(4)
    activations = rng.integers(0, 3, size=(40, 8, 50))
    params = _params(4095, 0, 2, np.zeros(50))
    expected = _reference_run(activations, params, HW)
    assert any(((v == 128) & (s == 0)).any() for s, _, v in expected)
    _assert_same(activations, params)


def test_negative_potentials_decay_toward_zero():
    activations = np.full((6, 1, 5), -7)
    params = _params(4095, 1024, 100, np.array([-3, -1, 0, -11, -4096]), 1)
    expected = _reference_run(activations, params, HW)
    assert (expected[-1][2] < 0).all()
    _assert_same(activations, params)


@pytest.mark.parametrize("seed", range(4))
def test_random_stress_over_many_steps(seed):
    rng = np.random.default_rng(seed)
    du, dv = (int(x) for x in rng.integers(0, 4096, 2))
    neurons = 300
    for scale in (REACH, 1 << 12, 40):
        activations = rng.integers(-scale, scale + 1, size=(30, 4, neurons))
        vth, bias_exp = int(rng.integers(1, 2**17)), int(rng.integers(0, 8))
        params = _params(du, dv, vth, rng.integers(-4096, 4096, neurons), bias_exp)
        _assert_same(activations, params)
    for special in ((0, 0), (4095, 4095), (4095, 0), (0, 4095)):
        params = _params(*special, 300, rng.integers(-4096, 4096, neurons), 2)
        _assert_same(rng.integers(-REACH, REACH + 1, size=(30, 2, neurons)), params)


def test_other_activation_and_threshold_shifts():
    hw = dataclasses.replace(HW, activation_shift=3, vth_shift=2)
    rng = np.random.default_rng(9)
    reach = max_input_reach(hw)
    for du, dv in ((0, 100), (4095, 3000), (77, 4095)):
        params = _params(du, dv, 1000, rng.integers(-4096, 4096, 64), 4)
        _assert_same(rng.integers(-reach, reach + 1, size=(25, 3, 64)), params, hw=hw)


def test_a_left_shift_left_to_the_kernel_is_the_same_arithmetic():
    rng = np.random.default_rng(8)
    for du, dv, wraps in ((0, 100, True), (4095, 3000, True), (4095, 3000, False), (77, 4095, True)):
        params = _params(du, dv, 1000, rng.integers(-4096, 4096, 64), 4)
        for input_shift in (1, 3):
            reach = REACH if wraps else 1 << 10
            activations = rng.integers(-reach, reach + 1, size=(25, 3, 64)) >> input_shift << input_shift
            _assert_same(activations, params, wraps=wraps, input_shift=input_shift)


def test_skipping_the_wrap_is_only_chosen_where_the_current_cannot_wrap():
    params = _params(0, 0, 100, np.zeros(3))
    small, large = np.array([10, 0, -10]), np.array([1 << 17, 0, -5])
    assert not current_may_wrap(small, -small, params, 1000, HW)
    nothing = np.zeros(3, np.int64)
    assert not current_may_wrap(large, nothing, params, 1, HW)  # 2^23 itself does not wrap
    assert current_may_wrap(large, nothing, params, 2, HW)  # 2^23 + decay(2^23) passes 2^23
    assert current_may_wrap(nothing, -large, params, 1, HW)  # -2^23 wraps (to +2^23)
    rng = np.random.default_rng(2)
    activations = rng.integers(-10, 11, size=(50, 2, 3))
    _assert_same(activations, params, wraps=False)


def test_the_kernel_is_refused_past_the_input_bound_and_for_wide_states():
    params = _params(0, 0, 100, np.zeros(2))
    assert in_place_lif_applies(params, REACH, HW)
    assert not in_place_lif_applies(params, REACH + 1, HW)
    assert not in_place_lif_applies(params, 10, dataclasses.replace(HW, state_bits=31))
    assert in_place_lif_applies(_params(0, 0, 100, np.array([1 << 20]), 10), 10, HW)  # 2^25 + 2^30 < 2^31
    assert not in_place_lif_applies(_params(0, 0, 100, np.array([1 << 20]), 11), 10, HW)


# ---- synaptic products

class _CpuTorchWithoutInt8(_TorchOps):
    """The torch backend's float products (the path CUDA takes), on the CPU."""

    def __init__(self, device=None):
        super().__init__("cpu")
        self.int8_products = False


@pytest.mark.parametrize("mode,bits,expected_scale,integer", [("mixed", 8, 1, True), ("mixed", 6, 3, True),
                                                             ("excitatory", 8, 0, False), ("excitatory", 7, 1, True),
                                                             ("inhibitory", 8, 0, False)])
def test_products_pick_int8_where_the_scaled_weights_fit_and_agree_with_float(mode, bits, expected_scale, integer):
    from export.fixed_point import effective_weights

    rng = np.random.default_rng(1)
    raw = rng.integers(-300, 300, size=(37, 129)).astype(np.float64)
    raw[0, :2] = [-300, 300]
    weights = effective_weights(raw, mode, bits, HW)
    spikes = (rng.random((53, 129)) < 0.5).astype(np.uint8)
    expected = spikes.astype(np.int64) @ weights.T
    for ops in (emulator._NumpyOps(), _TorchOps("cpu"), _CpuTorchWithoutInt8()):
        product = _plan_product(weights, None, np.int32, ops)
        assert product.scale_bits == expected_scale
        assert product.integer == (integer and ops.int8_products)
        sums = _as_numpy(ops.product(ops.spikes(spikes), product)).astype(np.int64) << product.scale_bits
        np.testing.assert_array_equal(sums, expected, err_msg=f"{ops.description} {mode} {bits}")


def test_a_sum_past_float32_takes_float64_and_past_int32_leaves_int8():
    wide = np.full((2, 1 << 17), 254, np.int64)  # 2^17 inputs of 127 after the shift: 2^24 - 2^17
    ops = _TorchOps("cpu")
    assert _plan_product(wide, None, np.int64, ops).integer
    assert _plan_product(np.full((1, 1 << 16), 255, np.int64), None, np.int64, ops).float_dtype == np.float32
    assert _plan_product(np.full((1, 1 << 17), 255, np.int64), None, np.int64, ops).float_dtype == np.float64
    assert _plan_product(np.full((1, 10), 1024, np.int64), None, np.int64, _CpuTorchWithoutInt8()).float_dtype \
        == np.float32  # 1024 = 1 << 10: scaled to 1


# ---- whole networks: backends and the reference step, spike for spike

def _conv_structure() -> Graph:
    nodes = (Input("input", (2, 6, 6)), Conv2d("c", 3, (3, 3), padding=1), LIF("l", (3, 6, 6)), Output("output"))
    return Graph(nodes, (Edge("input", "c"), Edge("c", "l"), Edge("l", "output")))


def _networks():
    rng = np.random.default_rng(11)
    yield "chain", integer_network(chain_structure([30, 20, 5]), 9, rng, vth=150, du=300, dv=700), (30,)
    yield "skip", integer_network(skip_structure(30, 20, 5), 9, rng, vth=150, weight_exp=-2, bias_exp=3), (30,)
    yield "recurrent", integer_network(recurrent_structure(30, 20, 5), 9, rng, vth=150, du=0, dv=4095), (30,)
    yield "conv", integer_network(_conv_structure(), 9, rng, vth=100, weight_exp=1), (2, 6, 6)
    yield "excitatory", integer_network(chain_structure([30, 20, 5]), 9, rng, vth=400, sign_mode="excitatory"), (30,)
    at_bound = integer_network(chain_structure([2048, 1]), 40, weights={"d0": np.full((1, 2048), 128)},
                               du=0, dv=0, vth=1, bias={"l0": np.zeros(1)})
    yield "at the input bound (the current wraps)", at_bound, (2048,)
    stateless = integer_network(chain_structure([2048, 1]), 40, weights={"d0": np.full((1, 2048), 128)},
                                du=4095, dv=0, vth=1, bias={"l0": np.zeros(1)})
    yield "at the input bound, u no state (the input wraps)", stateless, (2048,)


def _all_spikes(result):
    return {name: spikes.copy() for name, spikes in result.population_spikes.items()}


@pytest.mark.parametrize("name,network,shape", list(_networks()), ids=lambda x: x if isinstance(x, str) else "")
def test_backends_and_the_reference_step_agree_spike_for_spike(name, network, shape, monkeypatch):
    rng = np.random.default_rng(3)
    density = rng.uniform(0.3, 0.7, size=(23, 1) + (1,) * len(shape))  # past 1/2: the bound networks wrap
    spikes = (rng.random((23, network.time_steps, *shape)) < density).astype(np.uint8)
    runs = {backend: emulate(network, spikes, backend=backend, batch_size=10) for backend in ("auto", "numpy", "torch")}
    assert runs["auto"].backend == ("torch cuda" if torch.cuda.is_available() else "torch cpu")
    simulation = _Simulation(network, _CpuTorchWithoutInt8())
    assert all(plan.in_place for plan in simulation.populations.values())
    assert [plan.wraps for plan in simulation.populations.values()][0] == ("bound" in name)
    if name in ("chain", "conv"):  # their synapses' left shift (weight_exp + the dropped low bit) is the kernel's
        assert all(plan.input_shift > 0 for plan in simulation.populations.values())
    monkeypatch.setattr(emulator, "in_place_lif_applies", lambda *args: False)  # every population: lif_fixed_step
    runs["reference"] = emulate(network, spikes, backend="numpy", batch_size=7)
    reference = _all_spikes(runs["reference"])
    assert sum(s.sum() for s in reference.values()) > 0
    for backend, result in runs.items():
        for population, expected in reference.items():
            np.testing.assert_array_equal(result.population_spikes[population], expected,
                                          err_msg=f"{backend} {population}")


def test_torch_float_products_give_the_same_spikes(monkeypatch):
    for name, network, shape in _networks():
        spikes = (np.random.default_rng(5).random((9, network.time_steps, *shape)) < 0.4).astype(np.uint8)
        expected = emulate(network, spikes, backend="numpy").population_spikes
        monkeypatch.setattr(emulator, "_TorchOps", _CpuTorchWithoutInt8)
        got = emulate(network, spikes, backend="torch").population_spikes
        monkeypatch.undo()
        for population in expected:
            np.testing.assert_array_equal(got[population], expected[population], err_msg=f"{name} {population}")


def test_potentials_of_a_non_spiking_population_match_the_reference(monkeypatch):
    from netgraph import QuantizedLIF

    network = integer_network(chain_structure([30, 20, 5]), 8, np.random.default_rng(6), vth=150, du=500, dv=600)
    out = network.graph.node("l1")
    quiet = LIF("l1", out.shape, tau=0.5, v_threshold=float("inf"), bias=np.zeros(5, np.float32),
                quantized=QuantizedLIF(500, 600, HW.vth_max, out.quantized.bias_mant, 0, 1.0))
    nodes = tuple(quiet if node.name == "l1" else Output("output", readout="potential") if isinstance(node, Output)
                  else node for node in network.graph.nodes)
    network = dataclasses.replace(network, graph=Graph(nodes, network.graph.edges))
    spikes = (np.random.default_rng(7).random((11, 8, 30)) < 0.5).astype(np.uint8)
    fast = emulate(network, spikes)
    monkeypatch.setattr(emulator, "in_place_lif_applies", lambda *args: False)
    reference = emulate(network, spikes, backend="numpy")
    assert fast.output_potential.dtype == np.int64 and np.abs(reference.output_potential).max() > 0
    np.testing.assert_array_equal(fast.output_potential, reference.output_potential)
    np.testing.assert_array_equal(fast.predictions, reference.predictions)


def test_an_unknown_backend_is_refused_naming_the_choices():
    network = integer_network(chain_structure([4, 2]), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown emulator backend 'jax'; choose one of 'auto', 'numpy', 'torch'"):
        emulate(network, np.zeros((1, 2, 4), np.uint8), backend="jax")


def test_the_memory_estimate_bounds_what_the_numpy_backend_holds():
    """numpy's arrays are what tracemalloc sees (torch's are not); a conv's patch matrix is
    bounded on its own (export.conv), so the networks here are dense, one of them recurrent,
    with a wide population read by a narrow synapse (its float copy of the spikes counts)."""
    import tracemalloc

    from export.emulator import emulation_bytes_per_sample

    rng = np.random.default_rng(12)
    for network, shape in ((integer_network(chain_structure([30, 400, 5]), 12, rng, vth=150, du=300), (30,)),
                           (integer_network(recurrent_structure(30, 200, 5), 12, rng, vth=150), (30,))):
        spikes = (rng.random((64, network.time_steps, *shape)) < 0.5).astype(np.uint8)
        outputs = sum(64 * network.time_steps * lif.neurons for lif in network.graph.populations)  # the uint8 result
        tracemalloc.start()
        emulate(network, spikes, backend="numpy", batch_size=64)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak - outputs <= 64 * sum(emulation_bytes_per_sample(network.graph, network.time_steps).values())


def test_sums_past_int32_before_a_right_shift_stay_exact(monkeypatch):
    """A custom hw config (16-bit weights, no activation shift) lets a sum reach 2^31 before
    weight_exp's right shift brings the activation back within the input bound: the sums are
    taken in int64 and narrowed only after the shift (they wrapped to int32 before)."""
    hw = dataclasses.replace(HW, activation_shift=0, weight_bits=16, num_weight_bits_max=16)
    fan_in = 40000
    network = integer_network(chain_structure([fan_in, 1]), 2, weights={"d0": np.full((1, fan_in), 65535)}, du=4095,
                              dv=0, vth=(1 << 17) - 1, bias={"l0": np.zeros(1)}, weight_exp=-8,
                              sign_mode="excitatory", bits=16, hw=hw)
    assert (65535 * fan_in) >= 2**31 and (65535 * fan_in) >> 8 == 10239843
    simulation = _Simulation(network, emulator._NumpyOps())
    assert simulation.populations["l0"].in_place  # the population itself is within int32
    spikes = np.ones((1, 2, fan_in), np.uint8)
    monkeypatch.setattr(emulator, "in_place_lif_applies", lambda *args: False)
    expected = emulate(network, spikes, backend="numpy").output_spikes
    monkeypatch.undo()
    assert expected.tolist() == [[[0], [0]]]  # u takes 10,239,843 > 2^23 each step and wraps negative: no spike
    for backend in ("numpy", "torch"):
        assert emulate(network, spikes, backend=backend).output_spikes.tolist() == expected.tolist(), backend
