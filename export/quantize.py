"""Quantization of a trained network graph into Loihi integer parameters, with a report.

Mapping of one population (LIF with bias b, decays tau and tau_current, threshold Vth) and
the synapses feeding it (weights W_k), all float, to Lava's LIF + one Dense per synapse, in
fixed point, with a per-population scale s (weight units per potential unit) and the
hardware's activation shift A (= 6: v is in units of 2^-A weight units):

    weights    w_int = round(W_k s) on each synapse's sign-mode grid (even numbers for 8-bit mixed)
    current    du = round(2^12 (1 - tau_current)) - du_offset: with tau_current = 0 (STBP)
               du = 4095, the current decays fully and u[t] = a[t] << A, STBP's input
    voltage    dv = round(2^12 (1 - tau)) - dv_offset: v decays by (2^12 - dv)/2^12 ~ tau
    bias       bias_mant << bias_exp = round(b s 2^A), smallest exponent that fits (netx=True:
               exponent 6, the one lava-dl netx hard-codes, see export.netx)
    threshold  STBP fires when u >= Vth, Loihi when v > vth << S (S = vth_shift = 6), i.e.
               v >= (vth << S) + 1; vth = round((Vth s 2^A - 1) / 2^S) puts that firing level
               nearest to Vth s 2^A (with A = S = 6: vth = round(Vth s - 2^-6)).
    reset      both reset v to 0 after a spike (STBP's factor (1 - o[t-1])).
    never      a non-spiking population (Vth = inf, read through its potential) gets the
               largest vth, and a scale low enough that no input can bring its potential to
               that firing level or the 24-bit clip, nor its current to the 24-bit wrap, within
               the T steps of a sample (the integer bound is checked, export.fixed_point.
               state_bounds): on the chip
               it is a LIF that provably never fires, so its potential is the trained one's.

Every synapse into a population adds into the same potential, so they share its scale:
s = min over its synapses of (largest weight magnitude of the synapse's sign mode) /
max|W_k|, which gives the synapse with the largest weights the full 8-bit range; s is
lowered only if Vth s would not fit vth's bits. Weights and threshold/bias share s, so
behaviour is preserved up to rounding, which the report quantifies per population.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.conv import conv_accumulate
from export.fixed_point import (FixedLIFParameters, StateBounds, activation_extremes, input_reach, integrator_headroom,
                                lif_fixed_step, max_input_reach, population_activation_extremes, state_bounds)
from export.fold import fold_average_pools
from export.hw_config import HardwareConfig, lava_arithmetic_mismatch
from export.netx import NETX_BIAS_EXP, NETX_WEIGHT_MAX, check_netx
from export.network import ExportedNetwork
from export.report import PopulationReport, QuantizationReport, SynapseReport, resource_totals
from export.timing import TimingError, deployment_timing
from export.validate import ExportRangeError, validate_network
from netgraph import LIF, Conv2d, Edge, Graph, GraphError, Node, QuantizedLIF, QuantizedSynapse


class QuantizationWarning(UserWarning):
    """An out-of-range value was clipped because clipping was explicitly allowed."""


def cores_needed(synapses: int, neurons: int, num_weight_bits: int, hw: HardwareConfig,
                 shared_weights: int = 0) -> int:
    """The cores a population occupies (an estimate: nothing is placed): enough compartments
    for its neurons, and enough synaptic memory for
      synapses        weights stored once, split between the cores (dense matrices, or convs
                      unrolled into per-neuron synapses), and
      shared_weights  weights every core keeps a copy of: conv kernels, which all the core's
                      neurons share (the shared-weight mapping; assumed, not checked against
                      Loihi 2's actual conv support, whose memory figures hw_configs marks
                      UNVERIFIED).
    Kernels that alone overflow one core's memory are assumed split between cores by output
    channel, each weight then stored once. Weights take num_weight_bits each (no compression)."""
    memory = hw.synaptic_memory_bits_per_core
    split, shared = synapses * num_weight_bits, shared_weights * num_weight_bits
    for_neurons = -(-neurons // hw.neurons_per_core)
    if shared == 0 or shared >= memory:
        for_synapses = -(-(split + shared) // memory)
    else:
        for_synapses = -(-split // (memory - shared))
    return max(1, for_neurons, for_synapses)


def synaptic_memory_bits(synapses: int, shared_weights: int, cores: int, num_weight_bits: int,
                         hw: HardwareConfig) -> int:
    """Synaptic memory a population takes on the chip, over its `cores` (see cores_needed):
    the split weights once, the kernels once per core (once in all when they had to be split)."""
    copies = cores if shared_weights * num_weight_bits < hw.synaptic_memory_bits_per_core else 1
    return (synapses + copies * shared_weights) * num_weight_bits


def conv_connections(synapse: Conv2d, source_shape: tuple[int, ...]) -> int:
    """(input, neuron) pairs a conv links: each neuron's kernel taps that land on the map, not
    on its zero padding; what an unrolled conv stores per neuron."""
    ones = np.ones((1, math.prod(source_shape)))
    taps = np.ones(synapse.weight_shape(source_shape))
    return int(np.rint(conv_accumulate(ones, taps, synapse.geometry(source_shape))).sum())


def _sign_mode(weight: np.ndarray) -> str:
    if weight.size and weight.min() >= 0:
        return "excitatory"
    if weight.size and weight.max() <= 0:
        return "inhibitory"
    return "mixed"


def _fit_or_fail(name: str, count: int, message: str, allow_clip: bool, notes: list[str]) -> None:
    if count == 0:
        return
    text = f"{name}: {message}"
    if not allow_clip:
        raise ExportRangeError(text + " (pass --allow-clip to clip with a warning instead)")
    warnings.warn(text, QuantizationWarning, stacklevel=3)
    notes.append(text)


def _firing_extremes(largest_sum: np.ndarray, smallest_sum: np.ndarray, params: FixedLIFParameters,
                     time_steps: int, hw: HardwareConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron: (can never fire, fires every step whatever the input), from the integer step.

    Largest input each step (every positive-weight input spiking) maximises v at every step
    before the first spike, because decay and the clip are monotone; if even that never
    crosses the threshold within `time_steps`, the neuron is dead. Smallest input (every
    negative-weight input spiking) that still crosses on step one crosses on every step,
    since v restarts from 0 after each spike (and the current from a full decay).
    """
    u = np.zeros_like(largest_sum)
    v = np.zeros_like(largest_sum)
    fired = np.zeros(largest_sum.shape, dtype=bool)
    for _ in range(time_steps):
        spikes, u_next, v_next = lif_fixed_step(largest_sum, u, v, params, hw)
        fired |= spikes
        if fired.all() or (np.array_equal(u_next, u) and np.array_equal(v_next, v)):
            break  # nothing left to learn: every neuron fired, or the state repeats from here on
        u, v = u_next, v_next
    always, _, _ = lif_fixed_step(smallest_sum, np.zeros_like(smallest_sum), np.zeros_like(smallest_sum), params, hw)
    return ~fired, always


def _check_floats(population: LIF, synapses: list[tuple[Node, Edge]]) -> None:
    for synapse, _ in synapses:
        if synapse.weight is None:
            raise ExportRangeError(f"node {synapse.name}: has no trained weight")
        if not np.all(np.isfinite(synapse.weight)):
            raise ExportRangeError(f"node {synapse.name}: parameter 'weight' holds NaN or inf")
    if population.bias is None:
        raise ExportRangeError(f"node {population.name}: has no trained bias")
    if not np.all(np.isfinite(population.bias)):
        raise ExportRangeError(f"node {population.name}: parameter 'bias' holds NaN or inf")


def _weight_range(hw: HardwareConfig, sign_mode: str, netx: bool) -> tuple[int, int, int]:
    """(min, max, step) of the weights; for netx the largest stays below 255 (lava-dl#170)."""
    low, high, step = hw.weight_range(sign_mode, hw.num_weight_bits_max)
    return (low, min(high, NETX_WEIGHT_MAX), step) if netx else (low, high, step)


def _population_scale(population: LIF, weights: list[np.ndarray], hw: HardwareConfig, netx: bool = False) -> float:
    """Weight units per potential unit shared by every synapse into `population`."""
    candidates = []
    for w in weights:
        mode = _sign_mode(w)
        low, high, _ = _weight_range(hw, mode, netx)
        capacity = min(high, -low) if mode == "mixed" else max(high, -low)
        max_abs = float(np.abs(w).max()) if w.size else 0.0
        if max_abs > 0:
            candidates.append(capacity / max_abs)
    if not candidates:  # every weight is zero: any scale works, keep the threshold in range
        low, high, _ = hw.weight_range("mixed", hw.num_weight_bits_max)
        candidates.append(min(high, -low) / (population.v_threshold if population.spiking else 1.0))
    scale = min(candidates)
    if not population.spiking:  # its scale is bounded by its potential instead (_integrator_scale)
        return scale
    # Keep the threshold within vth's bits (only for thresholds far above the weights).
    shift, vth_unit = 1 << hw.activation_shift, 1 << hw.vth_shift
    return min(scale, (hw.vth_max + 0.5) * vth_unit / (population.v_threshold * shift))


def _integrator_bounds(graph: Graph, population: LIF, synapses: list[tuple[Node, Edge]], weights: list[np.ndarray],
                       scale: float, du: int, dv: int, hw: HardwareConfig, time_steps: int, netx: bool) -> StateBounds:
    """The integer state bounds of a non-spiking population quantized at `scale`."""
    quantized = {synapse.name: _quantize_synapse(synapse, w, scale, hw, True, [], netx)[0]
                 for (synapse, _), w in zip(synapses, weights)}
    largest, smallest = population_activation_extremes(graph, population, hw, quantized)
    bias_mant, bias_exp, _ = _bias(population, scale, hw, True, [], NETX_BIAS_EXP if netx else None)
    return state_bounds(largest, smallest, FixedLIFParameters(du, dv, hw.vth_max, bias_mant, bias_exp), time_steps, hw)


def _integrator_scale(graph: Graph, population: LIF, synapses: list[tuple[Node, Edge]], weights: list[np.ndarray],
                      scale: float, hw: HardwareConfig, time_steps: int, netx: bool) -> float:
    """The largest scale <= `scale` (found to within 1%) at which the integer state of a
    non-spiking population provably stays below the largest firing level and inside the 24-bit
    ranges (module docstring). The bounds grow about linearly with the scale: a failing scale is
    cut in proportion to its overshoot, then by 1% steps."""
    du, dv = _decays(population, hw, True, [])
    budget = min(hw.vth_max << hw.vth_shift, hw.state_limit - 1)
    with warnings.catch_warnings():  # trial scales only: the chosen one is quantized (and reported) by the caller
        warnings.simplefilter("ignore", QuantizationWarning)
        for _ in range(400):
            bounds = _integrator_bounds(graph, population, synapses, weights, scale, du, dv, hw, time_steps, netx)
            if integrator_headroom(bounds, hw.vth_max, hw) is None:
                return scale
            reach = max(int(np.abs(bounds.v_high).max(initial=0)), int(np.abs(bounds.v_low).max(initial=0)),
                        int(np.abs(bounds.u_high).max(initial=0)), int(np.abs(bounds.u_low).max(initial=0)))
            scale *= min(0.99, budget / reach) if reach > budget else 0.99
    raise ExportRangeError(f"node {population.name}: no weight scale keeps this non-spiking population's potential "
                           f"below its firing level and inside the 24-bit range over {time_steps} steps")


def _reach_scale(graph: Graph, population: LIF, synapses: list[tuple[Node, Edge]], weights: list[np.ndarray],
                 scale: float, reach: int, hw: HardwareConfig, netx: bool, notes: list[str]) -> float:
    """The largest scale < `scale` (within 1%) at which one step's integer input stays within
    fixed_point.max_input_reach (validation refuses anything past it), for a population whose
    input at `scale` reaches `reach`, past it (only very wide fan-ins of same-sign weights);
    the report notes it."""
    limit, start = max_input_reach(hw), scale
    with warnings.catch_warnings():  # trial scales only: the chosen one is quantized (and reported) by the caller
        warnings.simplefilter("ignore", QuantizationWarning)
        for _ in range(400):
            scale *= min(0.99, limit / reach)
            quantized = {synapse.name: _quantize_synapse(synapse, w, scale, hw, True, [], netx)[0]
                         for (synapse, _), w in zip(synapses, weights)}
            reach = input_reach(*population_activation_extremes(graph, population, hw, quantized))
            if reach <= limit:
                notes.append(f"weight scale lowered {start / scale:.2f}x so that one step's input (at most "
                             f"{reach}) stays within {limit} (<< {hw.activation_shift}: the current's range)")
                return scale
    raise ExportRangeError(f"node {population.name}: no weight scale keeps one step's input within {limit}")


def _quantize_synapse(synapse: Node, weights: np.ndarray, scale: float, hw: HardwareConfig, allow_clip: bool,
                      notes: list[str], netx: bool = False) -> tuple[QuantizedSynapse, int]:
    """The integer synapse and how many weights were clipped."""
    sign_mode = _sign_mode(weights)
    bits = hw.num_weight_bits_max
    low, high, step = _weight_range(hw, sign_mode, netx)
    levels = np.round(weights * scale / step) * step
    clipped = np.clip(levels, low, high)
    n_clipped = int(np.sum(clipped != levels))
    _fit_or_fail(f"node {synapse.name}", n_clipped, f"{n_clipped} weights outside [{low}, {high}]", allow_clip, notes)
    return QuantizedSynapse(clipped.astype(np.int64), weight_exp=0, num_weight_bits=bits, sign_mode=sign_mode), n_clipped


def _decays(population: LIF, hw: HardwareConfig, allow_clip: bool, notes: list[str]) -> tuple[int, int]:
    where = f"node {population.name}"
    dv_exact = round(hw.decay_unity * (1.0 - population.tau)) - hw.dv_offset
    dv = int(np.clip(dv_exact, 0, hw.decay_max))
    _fit_or_fail(where, int(dv != dv_exact),
                 f"tau = {population.tau} needs dv = {dv_exact}, outside [0, {hw.decay_max}]", allow_clip, notes)
    du_exact = round(hw.decay_unity * (1.0 - population.tau_current)) - hw.du_offset
    if population.tau_current == 0 and du_exact > hw.decay_max:
        raise ExportRangeError(f"{where}: {hw.name} cannot make the current decay complete (du = {du_exact} > "
                               f"{hw.decay_max}); STBP's instantaneous input is not representable")
    du = int(np.clip(du_exact, 0, hw.decay_max))
    _fit_or_fail(where, int(du != du_exact), f"tau_current = {population.tau_current} needs du = {du_exact}, "
                 f"outside [0, {hw.decay_max}]", allow_clip, notes)
    return du, dv


def _bias(population: LIF, scale: float, hw: HardwareConfig, allow_clip: bool,
          notes: list[str], fixed_exp: int | None = None) -> tuple[np.ndarray, int, int]:
    """(bias_mant, bias_exp, how many were clipped): the smallest exponent that fits, or
    `fixed_exp` (netx fixes it at 6)."""
    bias_v = np.asarray(population.bias, np.float64) * scale * (1 << hw.activation_shift)
    largest = float(np.abs(bias_v).max()) if bias_v.size else 0.0
    bias_exp = hw.bias_exp_min if fixed_exp is None else fixed_exp
    while fixed_exp is None and bias_exp < hw.bias_exp_max and round(largest / (1 << bias_exp)) > hw.bias_mant_max:
        bias_exp += 1
    levels = np.round(bias_v / (1 << bias_exp))
    mant = np.clip(levels, hw.bias_mant_min, hw.bias_mant_max).astype(np.int64)
    n_clipped = int(np.sum(mant != levels))
    _fit_or_fail(f"node {population.name}", n_clipped,
                 f"{n_clipped} biases exceed bias_mant range [{hw.bias_mant_min}, {hw.bias_mant_max}] even with "
                 f"bias_exp {bias_exp}", allow_clip, notes)
    return mant, bias_exp, n_clipped


@dataclass
class _FedSynapses:
    """The quantized synapses into one population and what the population report needs of them."""

    quantized: list[Node]
    reports: list[SynapseReport]
    largest: np.ndarray  # (neurons,) int64: the largest possible synaptic sum per step
    smallest: np.ndarray
    split_weights: int  # dense weights, stored once and split between cores
    kernel_weights: int  # conv kernel weights, stored once per core (shared by its neurons)
    unrolled_weights: int  # one weight per connection, as an unrolled mapping stores them
    axons: dict[str, int]  # source -> its neurons (a source read twice sends on its own axons once)


def _quantize_synapses(graph: Graph, population: LIF, synapses: list[tuple[Node, Edge]], weights: list[np.ndarray],
                       scale: float, hw: HardwareConfig, allow_clip: bool, notes: list[str],
                       netx: bool) -> _FedSynapses:
    fed = _FedSynapses([], [], np.zeros(population.neurons, np.int64), np.zeros(population.neurons, np.int64),
                       0, 0, 0, {})
    for (synapse, edge), w in zip(synapses, weights):
        q, n_clipped = _quantize_synapse(synapse, w, scale, hw, allow_clip, notes, netx)
        fed.quantized.append(dataclasses.replace(synapse, weight=w.astype(np.float32), quantized=q))
        source_shape = graph.shape_of(edge.source)
        high, low = activation_extremes(synapse, q, source_shape, hw)
        fed.largest, fed.smallest = fed.largest + high, fed.smallest + low
        # A chip keeps a conv's kernel once per core (shared by the core's neurons); unrolled,
        # every connection would hold its own weight. Dense synapses are stored either way.
        connections = conv_connections(synapse, source_shape) if isinstance(synapse, Conv2d) else w.size
        if isinstance(synapse, Conv2d):
            fed.kernel_weights += w.size
        else:
            fed.split_weights += w.size
        fed.unrolled_weights += connections
        fed.axons[edge.source] = math.prod(source_shape)
        error = q.weight / scale - w
        fed.reports.append(SynapseReport(
            name=synapse.name, source=edge.source, sign_mode=q.sign_mode,
            weight_levels_used=int(len(np.unique(q.weight))), weights_clipped=n_clipped,
            weight_max_abs_error=float(np.abs(error).max(initial=0.0)),
            weight_rms_error=float(np.sqrt(np.mean(error ** 2))) if w.size else 0.0, delay=0,
            stored_weights=int(w.size), connections=connections))
    return fed


def quantize_population(graph: Graph, population: LIF, hw: HardwareConfig, time_steps: int, allow_clip: bool = False,
                        netx: bool = False) -> tuple[LIF, list[Node], PopulationReport, list[str]]:
    """The integer form of one population and its synapses (see the module docstring).
    Returns (LIF with `quantized`, synapses with `quantized`, report without delays, notes)."""
    notes: list[str] = []
    synapses = graph.synapses_into(population.name)
    _check_floats(population, synapses)
    weights = [np.asarray(s.weight, np.float64) for s, _ in synapses]
    scale = _population_scale(population, weights, hw, netx)
    if not population.spiking:
        scale = _integrator_scale(graph, population, synapses, weights, scale, hw, time_steps, netx)
    shift, vth_unit = 1 << hw.activation_shift, 1 << hw.vth_shift

    first_notes: list[str] = []
    fed = _quantize_synapses(graph, population, synapses, weights, scale, hw, allow_clip, first_notes, netx)
    reach = input_reach(fed.largest, fed.smallest)
    if reach > max_input_reach(hw):  # only very wide fan-ins of same-sign weights
        scale = _reach_scale(graph, population, synapses, weights, scale, reach, hw, netx, notes)
        fed = _quantize_synapses(graph, population, synapses, weights, scale, hw, allow_clip, notes, netx)
    else:
        notes += first_notes
    largest, smallest = fed.largest, fed.smallest
    split_weights, kernel_weights = fed.split_weights, fed.kernel_weights

    vth = int(np.clip(round((population.v_threshold * scale * shift - 1.0) / vth_unit), 0, hw.vth_max)) \
        if population.spiking else hw.vth_max
    bias_mant, bias_exp, n_bias_clipped = _bias(population, scale, hw, allow_clip, notes,
                                                NETX_BIAS_EXP if netx else None)
    du, dv = _decays(population, hw, allow_clip, notes)
    params = FixedLIFParameters(du, dv, vth, bias_mant, bias_exp)
    never, always = _firing_extremes(largest, smallest, params, time_steps, hw) if population.spiking else (
        np.zeros(population.neurons, bool), np.zeros(population.neurons, bool))
    max_activation = input_reach(largest, smallest)
    bias_eff = bias_mant << bias_exp
    tau_effective = (hw.decay_unity - dv - hw.dv_offset) / hw.decay_unity
    cores = cores_needed(split_weights, population.neurons, hw.num_weight_bits_max, hw, shared_weights=kernel_weights)
    quantized_lif = dataclasses.replace(
        population, bias=np.asarray(population.bias, np.float32),
        quantized=QuantizedLIF(du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp, scale=float(scale)))
    report = PopulationReport(
        name=population.name, synapses=tuple(fed.reports), scale=float(scale),
        bias_exp=bias_exp, bias_clipped=n_bias_clipped,
        bias_max_abs_error=float(np.abs(bias_eff / (scale * shift) - population.bias).max(initial=0.0)),
        vth=vth, threshold_error=float((vth * vth_unit + 1) / (scale * shift) - population.v_threshold)
        if population.spiking else 0.0, spiking=population.spiking,
        dv=dv, tau_effective=tau_effective, tau_error=tau_effective - population.tau,
        du=du, tau_current_effective=(hw.decay_unity - du - hw.du_offset) / hw.decay_unity,
        max_activation=max_activation,
        activation_exceeds_hw_bits=max_activation > (1 << (hw.activation_bits - 1)) - 1,
        current_may_wrap=max_activation * shift >= hw.state_limit,
        voltage_may_saturate=bool(np.any(np.abs(np.stack([largest, smallest])) * shift
                                         + np.abs(bias_eff) >= hw.state_limit - 1)),
        never_fire=int(never.sum()), always_fire=int(always.sum()), neurons=population.neurons,
        cores_needed=cores, synaptic_memory_bits=synaptic_memory_bits(
            split_weights, kernel_weights, cores, hw.num_weight_bits_max, hw),
        cores_needed_unrolled=cores_needed(fed.unrolled_weights, population.neurons, hw.num_weight_bits_max, hw),
        fan_in_exceeds_core=sum(fed.axons.values()) > hw.fan_in_axons_per_core,
    )
    return quantized_lif, fed.quantized, report, notes


def quantize_graph(graph: Graph, encoding: str, time_steps: int, eval_seed: int, hw: HardwareConfig,
                   allow_clip: bool = False, metadata: dict[str, Any] | None = None, netx: bool = False,
                   ) -> tuple[ExportedNetwork, QuantizationReport]:
    """Quantizes a graph with trained float parameters for `hw`: average pools folded into
    the synapses that read them, every population and its synapses mapped to integers,
    the result validated against the hardware and Lava's timing.
    netx: quantize for lava-dl's netx loader (export.netx): bias exponent 6 for every
    population, weights below 255; raises export.netx.NetxExportError (an ExportRangeError)
    naming the node when netx cannot reproduce the network exactly."""
    try:
        folded = fold_average_pools(graph)
    except GraphError as exc:
        raise ExportRangeError(str(exc)) from exc
    replaced, reports, notes = [], [], []
    for population in folded.populations:
        lif, synapses, report, population_notes = quantize_population(folded, population, hw, time_steps, allow_clip,
                                                                      netx)
        replaced += [lif, *synapses]
        reports.append(report)
        notes += population_notes
    deployed = folded.replace(nodes=replaced)
    try:
        timing = deployment_timing(deployed, hw.max_synaptic_delay)
    except TimingError as exc:
        raise ExportRangeError(str(exc)) from exc
    reports = [dataclasses.replace(r, depth=timing.emit[r.name] - timing.emit[deployed.input.name],
                                   synapses=tuple(dataclasses.replace(s, delay=timing.delay[s.name])
                                                  for s in r.synapses)) for r in reports]
    notes += [f"population {r.name}: its synapses read more than the {hw.fan_in_axons_per_core} input axons of one "
              "core; the mapper must split it" for r in reports if r.fan_in_exceeds_core]
    mismatch = lava_arithmetic_mismatch(hw)
    if mismatch:
        notes.append(f"{mismatch}; `stbp run` with Lava fixed_pt will refuse this artifact, the emulator backend "
                     "(--backend emulator) still runs it bit-exactly")
    # whether the network fits one chip is the report's fit check, on its totals
    report = QuantizationReport(hw.name, tuple(reports), warnings=tuple(notes),
                                resources=resource_totals(reports, deployed, hw))
    network = ExportedNetwork(deployed, encoding, time_steps, eval_seed, hw,
                              {**(metadata or {}), "quantization_report": report.to_dict()})
    validate_network(network)
    if netx:
        check_netx(network)
    return network, report
