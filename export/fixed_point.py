"""Loihi's integer neuron and synapse arithmetic, defined once.

This module is the single definition of the deployed dynamics. The exporter uses it to
predict saturation and dead or always-on neurons, the emulator runs it (numpy on CPU,
torch on a GPU), and the tests check it against hand-worked traces and against Lava
0.10.0's bit-accurate models (lava/proc/lif/models.py `AbstractPyLifModelFixed`,
lava/proc/dense/models.py `AbstractPyDenseModelBitAcc`, lava/utils/weightutils.py).

Functions take an array namespace `xp` (numpy or torch); both provide the few functions
used here under the same names. Integer arrays are int64 throughout, wide enough that no
intermediate overflows before the explicit wrap/clip.

`lif_fixed_step` is the definition. `InPlaceLIF` (end of this module) is the emulator's
fast kernel of the same arithmetic: in place, in int32 and float64 where those are provably
exact (`in_place_lif_applies`); tests/test_emulator_speed.py compares the two on edge values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.conv import conv_accumulate
from export.hw_config import HardwareConfig
from netgraph import LIF, Conv2d, Graph, Node


@dataclass(frozen=True)
class FixedLIFParameters:
    """Integer LIF parameters of one layer, as handed to Lava's LIF process.

    du, dv: 12-bit decay constants (0..4095); du = 4095 turns the current decay 'off' in the
        sense that u takes each step's input only (4095 + du_offset = 4096 = full decay).
    vth: unsigned threshold mantissa; the neuron spikes when v > vth << vth_shift.
    bias_mant: per-neuron signed mantissa (int64 array), bias = bias_mant << bias_exp.
    """

    du: int
    dv: int
    vth: int
    bias_mant: Any
    bias_exp: int


def truncate_toward_zero_shift(x, shift: int, xp=np):
    """sign(x) * (|x| >> shift): Loihi's decay rounding (toward zero, not floor)."""
    return xp.sign(x) * (xp.abs(x) >> shift)


def decay(x, decay_constant: int, hw: HardwareConfig, xp=np):
    """x * (2^12 - d) / 2^12 truncated toward zero, as Lava's fixed-point LIF does."""
    return truncate_toward_zero_shift(x * (hw.decay_unity - decay_constant), hw.decay_bits, xp)


def wrap_current(u, hw: HardwareConfig, xp=np):
    """Lava's 24-bit wrap of the current u: values above +2^23 or at/below -2^23 wrap once."""
    limit = hw.state_limit
    wrapped = xp.where(u > limit, u - 2 * limit, u)
    return xp.where(wrapped <= -limit, u + 2 * limit, wrapped)


def effective_bias(params: FixedLIFParameters, xp=np):
    return params.bias_mant << params.bias_exp


def lif_subthreshold(activation, u, v, params: FixedLIFParameters, hw: HardwareConfig, xp=np, saturate: bool = True):
    """u and v after one step of Loihi's LIF, before the spike test: u wrapped to 24 bits and v
    clipped, as Lava does (saturate False: neither, to see where the unbounded values go)."""
    u = decay(u, params.du + hw.du_offset, hw, xp) + (activation << hw.activation_shift)
    u = wrap_current(u, hw, xp) if saturate else u
    v = decay(v, params.dv + hw.dv_offset, hw, xp) + u + effective_bias(params, xp)
    v_limit = hw.state_limit - 1
    return u, (xp.clip(v, -v_limit, v_limit) if saturate else v)


def lif_fixed_step(activation, u, v, params: FixedLIFParameters, hw: HardwareConfig, xp=np):
    """One time step of Loihi's LIF neuron on integer arrays (batch, neurons).

    activation: synaptic input a[t] (int64) as delivered by the Dense process.
    Returns (spikes bool, u, v); v is already reset to 0 where a spike occurred.
    """
    u, v = lif_subthreshold(activation, u, v, params, hw, xp)
    spikes = v > (params.vth << hw.vth_shift)
    v = xp.where(spikes, xp.zeros_like(v), v)
    return spikes, u, v


def effective_weights(weights: np.ndarray, sign_mode: str, num_weight_bits: int, hw: HardwareConfig) -> np.ndarray:
    """The weights Lava's bit-accurate Dense actually uses: cast to int (truncating toward
    zero), clipped to the sign mode's 8-bit range, then the low bits dropped by an arithmetic
    shift (`clip_weights` then `truncate_weights` in lava/utils/weightutils.py)."""
    w = np.asarray(weights).astype(np.int64)  # float -> int truncates toward zero, as LavaPyType does
    inhibitory = sign_mode == "inhibitory"
    if inhibitory:
        w = -w
    low = -(1 << hw.weight_bits) if sign_mode == "mixed" else 0
    w = np.clip(w, low, (1 << hw.weight_bits) - 1)
    dropped = hw.weight_bits - num_weight_bits + (1 if sign_mode == "mixed" else 0)
    w = (w >> dropped) << dropped
    return -w if inhibitory else w


def shift_activation(accumulated, weight_exp: int):
    """Dense's output scaling: a << weight_exp if weight_exp > 0, else a >> -weight_exp (floor)."""
    return accumulated << weight_exp if weight_exp > 0 else accumulated >> -weight_exp


def shift_activation_in_place(accumulated, weight_exp: int):
    """shift_activation, overwriting `accumulated` (a numpy or torch integer array): the emulator's."""
    if weight_exp > 0:
        accumulated <<= weight_exp
    elif weight_exp < 0:
        accumulated >>= -weight_exp
    return accumulated


def input_extremes(synapse: Node, weights: np.ndarray, source_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron: sum of its positive weights and sum of its negative weights (the largest
    and smallest synaptic sum one step can bring, 0/1 spikes in), padding taken into account
    for convs. weights: integers in the synapse's layout; returns two int64 (neurons,)."""
    positive, negative = np.where(weights > 0, weights, 0), np.where(weights < 0, weights, 0)
    if isinstance(synapse, Conv2d):
        geometry = synapse.geometry(source_shape)
        ones = np.ones((1, math.prod(source_shape)))
        return (np.rint(conv_accumulate(ones, positive, geometry)[0]).astype(np.int64),
                np.rint(conv_accumulate(ones, negative, geometry)[0]).astype(np.int64))
    return positive.sum(axis=1).astype(np.int64), negative.sum(axis=1).astype(np.int64)


@dataclass(frozen=True)
class StateBounds:
    """The extremes of a never-firing population's current u and potential v over a sample,
    per neuron (int64 (neurons,)), computed without Lava's wrap and clip."""

    u_high: np.ndarray
    u_low: np.ndarray
    v_high: np.ndarray
    v_low: np.ndarray


def _extreme_states(activation: np.ndarray, params: FixedLIFParameters, time_steps: int, hw: HardwareConfig,
                    pick) -> tuple[np.ndarray, np.ndarray]:
    u = v = reached_u = reached_v = np.zeros_like(activation)
    for _ in range(time_steps):
        u_next, v_next = lif_subthreshold(activation, u, v, params, hw, saturate=False)
        if np.array_equal(u_next, u) and np.array_equal(v_next, v):
            break  # a fixed point: every later step repeats it
        u, v = u_next, v_next
        reached_u, reached_v = pick(reached_u, u), pick(reached_v, v)
        if max(np.abs(u).max(initial=0), np.abs(v).max(initial=0)) > hw.state_limit:
            break  # already past what the state can hold: the bound has failed, however long it runs
    return reached_u, reached_v


def state_bounds(largest_activation: np.ndarray, smallest_activation: np.ndarray, params: FixedLIFParameters,
                 time_steps: int, hw: HardwareConfig) -> StateBounds:
    """How high and low u and v of a population that never fires can go within `time_steps`
    steps from zero state, when every step brings an activation between `smallest_activation`
    and `largest_activation` (int64 (neurons,), after weight_exp).

    The step without wrap and clip is monotone in u, v and the activation (decay truncates
    toward zero, the bias is fixed), so the largest input at every step gives the highest u and
    v at every step, the smallest the lowest."""
    u_high, v_high = _extreme_states(largest_activation, params, time_steps, hw, np.maximum)
    u_low, v_low = _extreme_states(smallest_activation, params, time_steps, hw, np.minimum)
    return StateBounds(u_high, u_low, v_high, v_low)


def integrator_headroom(bounds: StateBounds, vth: int, hw: HardwareConfig) -> str | None:
    """Why a population that must never fire could fire, clip or wrap (None when it cannot):
    v must stay at or below vth << vth_shift and above the 24-bit clip, u within the 24-bit
    range Lava wraps it to (wrap_current)."""
    firing_level, floor, limit = vth << hw.vth_shift, -(hw.state_limit - 1), hw.state_limit
    v_top, v_bottom = int(bounds.v_high.max(initial=0)), int(bounds.v_low.min(initial=0))
    u_top, u_bottom = int(bounds.u_high.max(initial=0)), int(bounds.u_low.min(initial=0))
    if v_top > firing_level:
        return f"its potential can reach {v_top}, above its firing level {firing_level} (vth {vth} << {hw.vth_shift})"
    if v_top > -floor:
        return f"its potential can reach {v_top}, above the {hw.state_bits}-bit clip at {-floor}"
    if v_bottom < floor:
        return f"its potential can fall to {v_bottom}, below the {hw.state_bits}-bit clip at {floor}"
    if u_top > limit or u_bottom <= -limit:
        return (f"its current can reach {u_top if u_top > limit else u_bottom}, where the {hw.state_bits}-bit "
                "current wraps")
    return None


def activation_extremes(synapse: Node, quantized, source_shape: tuple[int, ...],
                        hw: HardwareConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron, the largest and smallest activation one step of this integer synapse
    (QuantizedSynapse) can deliver: Lava's effective weights, summed, shifted by weight_exp."""
    weights = effective_weights(quantized.weight, quantized.sign_mode, quantized.num_weight_bits, hw)
    high, low = input_extremes(synapse, weights, source_shape)
    return shift_activation(high, quantized.weight_exp), shift_activation(low, quantized.weight_exp)


def max_input_reach(hw: HardwareConfig) -> int:
    """The largest |synaptic input| one step may bring a population (a, before the activation
    shift) for the deployed arithmetic to stay exact: u wraps once per step (wrap_current),
    which keeps it within its state_bits only while a << activation_shift <= 2 x state_limit;
    past that u leaves its range and Lava's int32 arithmetic (Dense's output port, a_in <<
    act_shift, u + a, v + u + bias) overflows where the emulator computes in int64. Within it
    nothing Lava computes reaches 2^31 (for Lava's 24 state bits)."""
    return (2 * hw.state_limit) >> hw.activation_shift


def input_reach(largest: np.ndarray, smallest: np.ndarray) -> int:
    """The largest |input| of one step, from population_activation_extremes."""
    return max(int(largest.max(initial=0)), -int(smallest.min(initial=0)))


def population_activation_extremes(graph: Graph, population: LIF, hw: HardwareConfig,
                                   quantized: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """activation_extremes summed over every synapse into `population`: what all its inputs
    together can bring in one step. quantized: each synapse's QuantizedSynapse by name (default:
    the graph's own)."""
    largest = np.zeros(population.neurons, np.int64)
    smallest = np.zeros(population.neurons, np.int64)
    for synapse, edge in graph.synapses_into(population.name):
        q = synapse.quantized if quantized is None else quantized[synapse.name]
        high, low = activation_extremes(synapse, q, graph.shape_of(edge.source), hw)
        largest, smallest = largest + high, smallest + low
    return largest, smallest


# ---- the emulator's fast kernel: lif_fixed_step's arithmetic in place, in the narrowest exact types

INT32_LIMIT = 1 << 31
FLOAT64_MANTISSA_BITS = 53


def in_place_lif_applies(params: FixedLIFParameters, reach: int, hw: HardwareConfig) -> bool:
    """Whether InPlaceLIF gives exactly lif_fixed_step's results for a population whose one-step
    input never exceeds `reach` in magnitude (input_reach of population_activation_extremes, after
    weight_exp; params.bias_mant numpy int64).

    Within max_input_reach (what validation enforces) an input shifted by activation_shift is
    at most 2 x state_limit, so the current before its wrap stays within 3 x state_limit and
    after it in (-state_limit, state_limit]; v is clipped to +-(state_limit - 1). No sum the
    kernel forms then exceeds 4 x state_limit + |bias|, which int32 holds while that is < 2^31.
    The decay product (state_bits + decay_bits bits) is exact in float64 below 53 bits."""
    largest_bias = int(np.abs(effective_bias(params)).max(initial=0))
    return (reach <= max_input_reach(hw) and 4 * hw.state_limit + largest_bias < INT32_LIMIT
            and (params.vth << hw.vth_shift) < INT32_LIMIT
            and hw.state_bits + hw.decay_bits <= FLOAT64_MANTISSA_BITS)


def current_may_wrap(largest: np.ndarray, smallest: np.ndarray, params: FixedLIFParameters, time_steps: int,
                     hw: HardwareConfig) -> bool:
    """Whether a population's current u can leave (-state_limit, state_limit], where wrap_current
    acts, within `time_steps` steps from zero, every step's input lying between `smallest` and
    `largest` (int64 (neurons,), after weight_exp). u depends on neither v nor the spikes, and its
    step without the wrap is monotone in u and the input (decay truncates toward zero), so the
    two extreme inputs bound it at every step."""
    limit = hw.state_limit
    for extreme in (largest, smallest):
        u = np.zeros_like(extreme)
        for _ in range(time_steps):
            following, _ = lif_subthreshold(extreme, u, u, params, hw, saturate=False)
            if following.max(initial=0) > limit or following.min(initial=0) <= -limit:
                return True
            if np.array_equal(following, u):
                break  # a fixed point: every later step repeats it
            u = following
    return False


def _zeros(xp, shape, dtype, device):
    return xp.zeros(shape, dtype=dtype) if xp is np else xp.zeros(shape, dtype=dtype, device=device)


def _assign(target, source, xp) -> None:
    """target[...] = source in target's type; float to int is the C cast, truncating toward zero."""
    if xp is np:
        np.copyto(target, source, casting="unsafe")
    else:
        target.copy_(source)


def _at_most(values, level: int, out, xp) -> None:
    """out (uint8) = values <= level; numpy writes its comparisons fastest as bool, torch as uint8."""
    if xp is np:
        np.less_equal(values, level, out=out.view(np.bool_))
    else:
        xp.less_equal(values, level, out=out)


def _shifted_into(target, values, shift: int, xp) -> None:
    """target = values << shift (int32, no overflow within in_place_lif_applies)."""
    if xp is np:
        np.left_shift(values, shift, out=target)
    else:
        xp.bitwise_left_shift(values, shift, out=target)


def _add_shifted(target, values, shift: int, scratch, xp) -> None:
    """target += values << shift: torch in one pass (add with alpha), numpy through scratch."""
    if shift == 0:
        target += values
    elif xp is np:
        _shifted_into(scratch, values, shift, xp)
        target += scratch
    else:
        target.add_(values, alpha=1 << shift)


class InPlaceLIF:
    """One population's LIF state for a batch, stepped with lif_fixed_step's arithmetic in place:
    the emulator's kernel, for a population where in_place_lif_applies.

    The same operations as lif_subthreshold and lif_fixed_step; only the types and the passes
    differ (tests/test_emulator_speed.py compares the two, edge values included):
    - u, v, the input and every sum are int32 (exact by in_place_lif_applies);
    - the input a << activation_shift is added in the same pass as the sum (torch), and so may
      a left shift by weight_exp the synapse left to the population (`input_shift`);
    - decay(x, d): x * (2^decay_bits - d) needs up to 36 bits, so it is taken in float64 as
      x * ((2^decay_bits - d) / 2^decay_bits), which is exact (an integer below 2^53 scaled by a
      power of two), and the cast back to int32 truncates toward zero as decay does; a factor of
      1 or 0 is skipped or written as zeros;
    - wrap_current: u - 2 L floor((u + L - 1) / 2 L) (L = state_limit), u's representative in
      (-L, L], which is its single wrap for every u within 3 L; skipped where the current provably
      never leaves its range (`wraps` False, from current_may_wrap). A current that keeps nothing
      from one step to the next (du + du_offset = 2^decay_bits) and never wraps is no array: its
      input goes straight into v;
    - v's decay comes before u's new value is added (it does not depend on it), and the reset is
      v *= (v <= threshold), the spikes the complement of that mask.

    xp: numpy or torch; shape: (batch, neurons); bias: the effective bias (bias_mant << bias_exp)
    as int32 (neurons,) of xp on `device`; input_shift: the step's activation arrives as a >>
    input_shift (a left shift still to apply). The state starts at zero; `v` is readable after a step.
    """

    def __init__(self, params: FixedLIFParameters, hw: HardwareConfig, bias, shape: tuple[int, int], xp,
                 device=None, wraps: bool = True, input_shift: int = 0):
        self.xp, self.hw, self.bias, self.wraps = xp, hw, bias, wraps
        self.shift = hw.activation_shift + input_shift
        self.current_factor = (hw.decay_unity - params.du - hw.du_offset) / hw.decay_unity  # exact in float64
        self.voltage_factor = (hw.decay_unity - params.dv - hw.dv_offset) / hw.decay_unity
        self.threshold = params.vth << hw.vth_shift
        self.v = _zeros(xp, shape, xp.int32, device)
        self.u = _zeros(xp, shape, xp.int32, device) if self.current_factor != 0 or wraps else None
        self.scratch = _zeros(xp, shape, xp.int32, device) if wraps or (xp is np and self.shift) else None
        decays = self.current_factor not in (0, 1) or self.voltage_factor not in (0, 1)
        self.product = _zeros(xp, shape, xp.float64, device) if decays else None
        self.kept = _zeros(xp, shape, xp.uint8, device)  # 1 where v stays, 0 where the neuron fires

    def step(self, activation, spikes) -> None:
        """One step: activation (int32 (batch, neurons), the synaptic input >> input_shift, may be
        a strided view); writes spikes (uint8 (batch, neurons) of 0/1, may be a strided view) and
        leaves v reset to 0 where they are 1."""
        xp, v, u = self.xp, self.v, self.u
        self._decay(v, self.voltage_factor)
        if u is None:
            _add_shifted(v, activation, self.shift, self.scratch, xp)
        else:
            if self.current_factor == 0:
                _shifted_into(u, activation, self.shift, xp)
            else:
                self._decay(u, self.current_factor)
                _add_shifted(u, activation, self.shift, self.scratch, xp)
            if self.wraps:
                self._wrap(u, self.scratch)
            v += u
        v += self.bias
        limit = self.hw.state_limit - 1
        xp.clip(v, -limit, limit, out=v)
        _at_most(v, self.threshold, self.kept, xp)
        v *= self.kept
        xp.bitwise_xor(self.kept, 1, out=spikes)

    def _decay(self, state, factor: float) -> None:
        """state (int32) to decay(state, d), factor being (2^decay_bits - d) / 2^decay_bits."""
        if factor == 1:
            return
        if factor == 0:
            state[...] = 0
            return
        _assign(self.product, state, self.xp)
        self.product *= factor  # float64 times a Python float: float64 in numpy and torch alike
        _assign(state, self.product, self.xp)

    def _wrap(self, current, carry) -> None:
        """current in place to its representative in (-L, L]; carry: int32 scratch of its shape.
        x & -2L is 2L floor(x / 2L) in two's complement."""
        limit = self.hw.state_limit
        self.xp.add(current, limit - 1, out=carry)
        self.xp.bitwise_and(carry, -2 * limit, out=carry)
        current -= carry
