"""Range checks of everything that is handed to Lava.

Lava 0.10.0 stores its fixed-point parameters in narrow integer types and does not check
them: bias_mant wraps silently as int16, a non-integer vth/du/dv makes a fixed-point run
hang, a weight off the sign mode's grid is silently truncated. So every exported value
is checked here, at the boundary, with the node and parameter named.
"""
from __future__ import annotations

import math

import numpy as np

from export.emulator import check_emulation_memory
from export.fixed_point import (FixedLIFParameters, input_reach, integrator_headroom, max_input_reach,
                                population_activation_extremes, state_bounds)
from export.hw_config import HardwareConfig
from export.network import ExportedNetwork
from export.timing import TimingError, deployment_timing
from netgraph import LIF, SIGN_MODES, AvgPool2d, Node, Synapse
from netgraph.errors import HardwareConfigError
from netgraph.limits import check_time_steps


class ExportRangeError(HardwareConfigError):
    """A quantized parameter lies outside what the hardware config can represent."""


def _check_int(value, low: int, high: int, what: str) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ExportRangeError(f"{what} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ExportRangeError(f"{what} = {value} is outside [{low}, {high}]")


def _check_float_array(value, what: str) -> None:
    if value is None:
        raise ExportRangeError(f"{what} is missing (the trained float parameters travel with the integer ones)")
    if not np.all(np.isfinite(value)):
        raise ExportRangeError(f"{what} holds NaN or inf")


def _validate_synapse(node: Node, hw: HardwareConfig, name: str) -> None:
    q = node.quantized
    if q is None:
        raise ExportRangeError(f"{name}: has no quantized parameters")
    if q.sign_mode not in SIGN_MODES:
        raise ExportRangeError(f"{name}: sign_mode {q.sign_mode!r} is not one of {', '.join(SIGN_MODES)}")
    _check_int(q.num_weight_bits, 1, hw.num_weight_bits_max, f"{name}: num_weight_bits")
    _check_int(q.weight_exp, hw.weight_exp_min, hw.weight_exp_max, f"{name}: weight_exp")
    w = np.asarray(q.weight)
    if not np.issubdtype(w.dtype, np.integer):
        raise ExportRangeError(f"{name}: weights must be integers, got dtype {w.dtype}")
    low, high, step = hw.weight_range(q.sign_mode, q.num_weight_bits)
    if w.size and (w.min() < low or w.max() > high):
        raise ExportRangeError(f"{name}: weights span [{w.min()}, {w.max()}], outside the {q.sign_mode} range "
                               f"[{low}, {high}]")
    if np.any(w % step):
        raise ExportRangeError(f"{name}: weights must be multiples of {step} for {q.sign_mode} sign mode with "
                               f"{q.num_weight_bits} bits (Lava would silently truncate them)")
    _check_float_array(node.weight, f"{name}: weight_float")


def _validate_population(node: LIF, hw: HardwareConfig, name: str) -> None:
    q = node.quantized
    if q is None:
        raise ExportRangeError(f"{name}: has no quantized parameters")
    _check_int(q.bias_exp, hw.bias_exp_min, hw.bias_exp_max, f"{name}: bias_exp")
    _check_int(q.vth, 0, hw.vth_max, f"{name}: vth")
    _check_int(q.du, 0, hw.decay_max, f"{name}: du")
    _check_int(q.dv, 0, hw.decay_max, f"{name}: dv")
    b = np.asarray(q.bias_mant)
    if not np.issubdtype(b.dtype, np.integer):
        raise ExportRangeError(f"{name}: bias_mant must be integers, got dtype {b.dtype}")
    if b.size and (b.min() < hw.bias_mant_min or b.max() > hw.bias_mant_max):
        raise ExportRangeError(f"{name}: bias_mant spans [{b.min()}, {b.max()}], outside "
                               f"[{hw.bias_mant_min}, {hw.bias_mant_max}]")
    _check_float_array(node.bias, f"{name}: bias_float")
    if not (isinstance(q.scale, (int, float)) and math.isfinite(q.scale) and q.scale > 0):
        raise ExportRangeError(f"{name}: scale must be a finite positive number, got {q.scale!r}")


def _validate_integrator(network: ExportedNetwork, population: LIF, name: str) -> None:
    """A non-spiking population must provably never fire nor clip: its potential is the readout."""
    hw, q = network.hardware, population.quantized
    largest, smallest = population_activation_extremes(network.graph, population, hw)
    params = FixedLIFParameters(q.du, q.dv, q.vth, np.asarray(q.bias_mant, np.int64), q.bias_exp)
    problem = integrator_headroom(state_bounds(largest, smallest, params, network.time_steps, hw), q.vth, hw)
    if problem:
        raise ExportRangeError(f"{name}: never fires in the trained network (v_threshold inf, read through its "
                               f"potential), but on the chip {problem} within {network.time_steps} steps")


def _validate_input_reach(network: ExportedNetwork, population: LIF, name: str) -> None:
    """One step's synaptic input within export.fixed_point.max_input_reach (the bound within
    which Lava's int32 arithmetic and the int64 emulator agree): refuse anything past it."""
    hw = network.hardware
    reach = input_reach(*population_activation_extremes(network.graph, population, hw))
    if reach > max_input_reach(hw):
        raise ExportRangeError(f"{name}: one step of its synaptic input can reach {reach} (<< {hw.activation_shift} = "
                               f"{reach << hw.activation_shift}), past the {2 * hw.state_limit} within which the "
                               f"{hw.state_bits}-bit current stays in range (beyond it Lava's int32 arithmetic "
                               "overflows); lower the weights or weight_exp")


def validate_network(network: ExportedNetwork, where: str = "network") -> None:
    """Raises ExportRangeError (or ResourceLimitError) naming `where`, the node and the parameter."""
    hw = network.hardware
    if isinstance(network.time_steps, bool) or not isinstance(network.time_steps, int) or network.time_steps < 1:
        raise ExportRangeError(f"{where}: time_steps must be an integer >= 1, got {network.time_steps!r}")
    check_time_steps(network.time_steps, where)
    check_emulation_memory(network, where)
    for node in network.graph.nodes:
        name = f"{where}: node {node.name} ({node.kind})"
        if isinstance(node, AvgPool2d):
            raise ExportRangeError(f"{name}: a deployed graph cannot hold an average pool (the exporter folds it "
                                   "into the synapses that read it)")
        if isinstance(node, Synapse):
            _validate_synapse(node, hw, name)
        elif isinstance(node, LIF):
            _validate_population(node, hw, name)
    for population in network.graph.populations:
        name = f"{where}: node {population.name} (LIF)"
        if not population.spiking:  # the tighter bound, with the more specific message
            _validate_integrator(network, population, name)
        _validate_input_reach(network, population, name)
    try:
        deployment_timing(network.graph, hw.max_synaptic_delay)
    except TimingError as exc:
        raise ExportRangeError(f"{where}: {exc}") from exc
