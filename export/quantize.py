"""Quantization of a trained STBP network into Loihi integer parameters, with a report.

Mapping of one STBP layer (weights W, bias b, decay tau, threshold Vth, all float) to
Lava's LIF + Dense in fixed point, with a per-layer scale s (weight units per potential
unit) and the hardware's activation shift A (= 6: v is in units of 2^-A weight units):

    weights    w_int = round(W s) on the sign mode's grid (even numbers for 8-bit mixed)
    current    du = 2^12 - du_offset: u[t] = a[t] << A, STBP's instantaneous input
    voltage    dv = round(2^12 (1 - tau)) - dv_offset: v decays by (2^12 - dv)/2^12 ~ tau
    bias       bias_mant << bias_exp = round(b s 2^A), smallest exponent that fits
    threshold  STBP fires when u >= Vth, Loihi when v > vth << S (S = vth_shift = 6), i.e.
               v >= (vth << S) + 1; vth = round((Vth s 2^A - 1) / 2^S) puts that firing level
               nearest to Vth s 2^A (with A = S = 6: vth = round(Vth s - 2^-6)).
    reset      both reset v to 0 after a spike (STBP's factor (1 - o[t-1])).

s = (largest weight magnitude of the sign mode) / max|W|, so the weights use the full
8-bit range; it is lowered only if Vth s would not fit vth's bits. Weights and
threshold/bias share s, so behaviour is preserved up to rounding, which the report
quantifies per layer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import ExportedLayer, ExportedNetwork
from export.conv import (ConvGeometry, conv_accumulate, fold_avgpool_into_conv, fold_avgpool_into_dense,
                         validate_geometry)
from export.fixed_point import FixedLIFParameters, lif_fixed_step, shift_activation
from export.hw_config import HardwareConfig
from export.validate import ExportRangeError, validate_network


class QuantizationWarning(UserWarning):
    """An out-of-range value was clipped because clipping was explicitly allowed."""


@dataclass(frozen=True)
class FloatLayer:
    """The float parameters of one trained spiking layer (see trainer.neuron for their meaning).

    weight: dense (out, in) or conv kernel (out_ch, in_ch, kh, kw), any preceding average
        pool already folded in (export.conv); bias: (neurons,), one value per neuron.
    geometry: conv only.
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray
    tau: float
    v_threshold: float
    kind: str = "dense"
    geometry: ConvGeometry | None = None

    @property
    def in_features(self) -> int:
        return int(np.prod(self.geometry.in_shape)) if self.kind == "conv" else int(np.asarray(self.weight).shape[1])

    @property
    def out_features(self) -> int:
        if self.kind == "conv":
            return int(np.prod(self.geometry.out_shape(np.asarray(self.weight).shape[0])))
        return int(np.asarray(self.weight).shape[0])


@dataclass(frozen=True)
class LayerReport:
    """What quantization did to one layer. Errors are in the trained network's potential units."""

    name: str
    sign_mode: str
    scale: float
    weight_levels_used: int
    weights_clipped: int
    weight_max_abs_error: float
    weight_rms_error: float
    bias_exp: int
    bias_clipped: int
    bias_max_abs_error: float
    vth: int
    threshold_error: float
    dv: int
    tau_effective: float
    tau_error: float
    max_activation: int
    activation_exceeds_hw_bits: bool
    current_may_wrap: bool
    voltage_may_saturate: bool
    never_fire: int
    always_fire: int
    neurons: int
    cores_needed: int
    fan_in_exceeds_core: bool


@dataclass(frozen=True)
class QuantizationReport:
    hardware: str
    layers: tuple[LayerReport, ...]
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        header = (f"{'layer':<10}{'sign':<7}{'scale':>9}{'w clip':>7}{'w maxerr':>10}{'b exp':>6}"
                  f"{'b clip':>7}{'b maxerr':>10}{'vth':>7}{'vth err':>9}{'dv':>6}{'tau eff':>9}"
                  f"{'|a| max':>9}{'never':>7}{'always':>7}{'cores':>6}  flags")
        lines = [f"quantization report ({self.hardware})", header]
        for r in self.layers:
            flags = [name for name, on in (("act>16bit", r.activation_exceeds_hw_bits), ("u-may-wrap", r.current_may_wrap),
                                           ("v-may-saturate", r.voltage_may_saturate)) if on]
            lines.append(
                f"{r.name:<10}{r.sign_mode[:6]:<7}{r.scale:>9.2f}{r.weights_clipped:>7d}{r.weight_max_abs_error:>10.2e}"
                f"{r.bias_exp:>6d}{r.bias_clipped:>7d}{r.bias_max_abs_error:>10.2e}{r.vth:>7d}{r.threshold_error:>9.1e}"
                f"{r.dv:>6d}{r.tau_effective:>9.5f}{r.max_activation:>9d}{r.never_fire:>7d}{r.always_fire:>7d}{r.cores_needed:>6d}  "
                + (", ".join(flags) or "-")
            )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def cores_needed(in_features: int, out_features: int, num_weight_bits: int, hw: HardwareConfig) -> int:
    """A lower bound on the cores one dense layer occupies: enough compartments for its
    neurons and enough synaptic memory for its dense weight matrix (no compression)."""
    for_neurons = -(-out_features // hw.neurons_per_core)
    for_synapses = -(-(in_features * out_features * num_weight_bits) // hw.synaptic_memory_bits_per_core)
    return max(1, for_neurons, for_synapses)


def _sign_mode(weight: np.ndarray) -> str:
    if weight.size and weight.min() >= 0:
        return "excitatory"
    if weight.size and weight.max() <= 0:
        return "inhibitory"
    return "mixed"


def _fit_or_fail(name: str, count: int, message: str, allow_clip: bool, notes: list[str]) -> None:
    if count == 0:
        return
    text = f"layer {name}: {message}"
    if not allow_clip:
        raise ExportRangeError(text + " (pass --allow-clip to clip with a warning instead)")
    warnings.warn(text, QuantizationWarning, stacklevel=3)
    notes.append(text)


def input_extremes(weights: np.ndarray, kind: str, geometry: ConvGeometry | None) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron: sum of its positive weights and sum of its negative weights (the largest
    and smallest synaptic sum one step can bring), padding taken into account for convs."""
    positive, negative = np.where(weights > 0, weights, 0), np.where(weights < 0, weights, 0)
    if kind == "conv":
        ones = np.ones((1, int(np.prod(geometry.in_shape))))
        return (np.rint(conv_accumulate(ones, positive, geometry)[0]).astype(np.int64),
                np.rint(conv_accumulate(ones, negative, geometry)[0]).astype(np.int64))
    return positive.sum(axis=1), negative.sum(axis=1)


def _firing_extremes(largest_sum: np.ndarray, smallest_sum: np.ndarray, params: FixedLIFParameters, weight_exp: int,
                     time_steps: int, hw: HardwareConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron: (can never fire, fires every step whatever the input), from the integer step.

    Largest input each step (every positive-weight input spiking) maximises v at every step
    before the first spike, because decay and the clip are monotone; if even that never
    crosses the threshold within `time_steps`, the neuron is dead. Smallest input (every
    negative-weight input spiking) that still crosses on step one crosses on every step,
    since v restarts from 0 after each spike.
    """
    largest = shift_activation(largest_sum, weight_exp)
    smallest = shift_activation(smallest_sum, weight_exp)
    u = np.zeros_like(largest)
    v = np.zeros_like(largest)
    fired = np.zeros(largest.shape, dtype=bool)
    for _ in range(time_steps):
        spikes, u, v = lif_fixed_step(largest, u, v, params, hw)
        fired |= spikes
    always, _, _ = lif_fixed_step(smallest, np.zeros_like(smallest), np.zeros_like(smallest), params, hw)
    return ~fired, always


def quantize_layer(layer: FloatLayer, hw: HardwareConfig, time_steps: int,
                   allow_clip: bool = False) -> tuple[ExportedLayer, LayerReport, list[str]]:
    """Maps one float layer to integer Loihi parameters (see the module docstring)."""
    notes: list[str] = []
    w, b = np.asarray(layer.weight, np.float64), np.asarray(layer.bias, np.float64)
    for pname, value in (("weight", w), ("bias", b)):
        if not np.all(np.isfinite(value)):
            raise ExportRangeError(f"layer {layer.name}: parameter '{pname}' holds NaN or inf")
    if layer.kind == "conv":
        if w.ndim != 4 or layer.geometry is None or layer.geometry.in_shape[0] != w.shape[1]:
            raise ExportRangeError(f"layer {layer.name}: conv kernel {w.shape} does not fit geometry {layer.geometry}")
        try:
            validate_geometry(layer.geometry, f"layer {layer.name}")
        except ValueError as exc:
            raise ExportRangeError(str(exc)) from exc
    elif w.ndim != 2:
        raise ExportRangeError(f"layer {layer.name}: dense weight must be 2-D, got shape {w.shape}")
    if b.shape != (layer.out_features,):
        raise ExportRangeError(f"layer {layer.name}: weight {w.shape} and bias {b.shape} shapes do not match "
                               f"({layer.out_features} neurons)")
    for pname, value in (("tau", layer.tau), ("v_threshold", layer.v_threshold)):
        if not math.isfinite(value):
            raise ExportRangeError(f"layer {layer.name}: parameter '{pname}' is {value}")
    if layer.v_threshold <= 0:
        raise ExportRangeError(f"layer {layer.name}: v_threshold must be positive, got {layer.v_threshold}")

    sign_mode = _sign_mode(w)
    bits = hw.num_weight_bits_max
    low, high, step = hw.weight_range(sign_mode, bits)
    capacity = min(high, -low) if sign_mode == "mixed" else max(high, -low)
    max_abs = float(np.abs(w).max()) if w.size else 0.0
    shift = 1 << hw.activation_shift  # v units per weight unit
    vth_unit = 1 << hw.vth_shift  # v units per vth unit
    scale = capacity / max_abs if max_abs > 0 else capacity / layer.v_threshold
    # Keep the threshold within vth's bits (only for thresholds far above the weights).
    scale = min(scale, (hw.vth_max + 0.5) * vth_unit / (layer.v_threshold * shift))

    levels = np.round(w * scale / step)
    clipped_w = np.clip(levels * step, low, high)
    _fit_or_fail(layer.name, int(np.sum(clipped_w != levels * step)),
                 f"{int(np.sum(clipped_w != levels * step))} weights outside [{low}, {high}]", allow_clip, notes)
    weights = clipped_w.astype(np.int64)

    # Loihi fires at v >= vth * vth_unit + 1; put that level nearest to Vth * scale * shift.
    vth_exact = (layer.v_threshold * scale * shift - 1.0) / vth_unit
    vth = int(np.clip(round(vth_exact), 0, hw.vth_max))

    bias_v = b * scale * shift
    largest_bias = float(np.abs(bias_v).max()) if b.size else 0.0
    bias_exp = hw.bias_exp_min
    while bias_exp < hw.bias_exp_max and round(largest_bias / (1 << bias_exp)) > hw.bias_mant_max:
        bias_exp += 1
    bias_levels = np.round(bias_v / (1 << bias_exp))
    bias_mant = np.clip(bias_levels, hw.bias_mant_min, hw.bias_mant_max).astype(np.int64)
    n_bias_clipped = int(np.sum(bias_mant != bias_levels))
    _fit_or_fail(layer.name, n_bias_clipped,
                 f"{n_bias_clipped} biases exceed bias_mant range [{hw.bias_mant_min}, {hw.bias_mant_max}] "
                 f"even with bias_exp {bias_exp}", allow_clip, notes)

    dv_exact = round(hw.decay_unity * (1.0 - layer.tau)) - hw.dv_offset
    dv = int(np.clip(dv_exact, 0, hw.decay_max))
    _fit_or_fail(layer.name, int(dv != dv_exact),
                 f"tau = {layer.tau} needs dv = {dv_exact}, outside [0, {hw.decay_max}]", allow_clip, notes)
    du = hw.decay_unity - hw.du_offset
    if du > hw.decay_max:
        raise ExportRangeError(f"layer {layer.name}: {hw.name} cannot make the current decay complete "
                               f"(du = {du} > {hw.decay_max}); STBP's instantaneous input is not representable")

    exported = ExportedLayer(
        name=layer.name, weights=weights, weight_exp=0, num_weight_bits=bits, sign_mode=sign_mode,
        bias_mant=bias_mant, bias_exp=bias_exp, vth=vth, du=du, dv=dv, scale=float(scale),
        weight_float=w.astype(np.float32), bias_float=b.astype(np.float32),
        tau=float(layer.tau), v_threshold=float(layer.v_threshold),
        **({"kind": "conv", "in_shape": tuple(layer.geometry.in_shape), "stride": layer.geometry.stride,
            "padding": layer.geometry.padding} if layer.kind == "conv" else {}),
    )
    params = FixedLIFParameters(du, dv, vth, bias_mant, bias_exp)
    largest_in, smallest_in = input_extremes(weights, layer.kind, layer.geometry)
    never, always = _firing_extremes(largest_in, smallest_in, params, 0, time_steps, hw)
    max_activation = int(max(largest_in.max(initial=0), -smallest_in.min(initial=0)))
    bias_eff = bias_mant << bias_exp
    tau_effective = (hw.decay_unity - dv - hw.dv_offset) / hw.decay_unity
    report = LayerReport(
        name=layer.name, sign_mode=sign_mode, scale=float(scale),
        weight_levels_used=int(len(np.unique(weights))),
        weights_clipped=int(np.sum(clipped_w != levels * step)),
        weight_max_abs_error=float(np.abs(weights / scale - w).max(initial=0.0)),
        weight_rms_error=float(np.sqrt(np.mean((weights / scale - w) ** 2))) if w.size else 0.0,
        bias_exp=bias_exp, bias_clipped=n_bias_clipped,
        bias_max_abs_error=float(np.abs(bias_eff / (scale * shift) - b).max(initial=0.0)),
        vth=vth, threshold_error=float((vth * vth_unit + 1) / (scale * shift) - layer.v_threshold),
        dv=dv, tau_effective=tau_effective, tau_error=tau_effective - layer.tau,
        max_activation=max_activation,
        activation_exceeds_hw_bits=max_activation > (1 << (hw.activation_bits - 1)) - 1,
        current_may_wrap=max_activation * shift >= hw.state_limit,
        voltage_may_saturate=bool(np.any(np.abs(np.stack([largest_in, smallest_in])) * shift
                                         + np.abs(bias_eff) >= hw.state_limit - 1)),
        never_fire=int(never.sum()), always_fire=int(always.sum()), neurons=layer.out_features,
        cores_needed=cores_needed(w.size // w.shape[0] if layer.kind == "conv" else layer.in_features,
                                  layer.out_features, bits, hw),
        fan_in_exceeds_core=layer.in_features > hw.fan_in_axons_per_core,
    )
    return exported, report, notes


def quantize_network(float_layers: list[FloatLayer], input_shape: tuple[int, ...], encoding: str,
                     time_steps: int, eval_seed: int, hw: HardwareConfig, allow_clip: bool = False,
                     metadata: dict[str, Any] | None = None) -> tuple[ExportedNetwork, QuantizationReport]:
    features = int(np.prod(input_shape))
    layers, reports, notes = [], [], []
    for layer in float_layers:
        if layer.kind == "dense" and np.asarray(layer.weight).ndim != 2 or layer.in_features != features:
            raise ExportRangeError(f"layer {layer.name}: weight shape {np.asarray(layer.weight).shape} "
                                   f"does not take the previous layer's {features} outputs")
        exported, report, layer_notes = quantize_layer(layer, hw, time_steps, allow_clip)
        layers.append(exported)
        reports.append(report)
        notes += layer_notes
        features = exported.out_features
    total_cores = sum(r.cores_needed for r in reports)
    if total_cores > hw.cores_per_chip:
        notes.append(f"the network needs at least {total_cores} cores, more than one {hw.name} chip's {hw.cores_per_chip}")
    notes += [f"layer {r.name}: fan-in {l.in_features} exceeds the {hw.fan_in_axons_per_core} input "
              f"axons of one core; the mapper must split it" for r, l in zip(reports, float_layers) if r.fan_in_exceeds_core]
    report = QuantizationReport(hw.name, tuple(reports), tuple(notes))
    network = ExportedNetwork(tuple(layers), tuple(input_shape), encoding, time_steps, eval_seed, hw,
                              {**(metadata or {}), "quantization_report": report.to_dict()})
    validate_network(network)
    return network, report


def float_layers_from_checkpoint(checkpoint) -> list[FloatLayer]:
    """The float parameters of a trainer checkpoint, one FloatLayer per spiking layer, with
    each average pool folded into the layer after it (export.conv explains why that is exact)."""
    from trainer.network import layer_lif_parameters, layer_shapes

    model = checkpoint.config.model
    state = checkpoint.model_state
    shapes = layer_shapes(model, checkpoint.input_shape)
    input_shape = tuple(checkpoint.input_shape)
    spike_shape = (1, *input_shape) if len(input_shape) == 2 else input_shape  # shape of the previous spikes
    pool = 1
    layers: list[FloatLayer] = []
    for i, (layer_config, shape) in enumerate(zip(model.layers, shapes)):
        if layer_config.type == "avgpool":
            pool = layer_config.kernel_size
            continue
        try:
            weight = state[f"layers.{i}.weight"].double().numpy()
            bias = state[f"layers.{i}.bias"].double().numpy()
        except KeyError as exc:
            raise ExportRangeError(f"layer {i}: checkpoint has no tensor {exc}") from exc
        lif = layer_lif_parameters(layer_config, model)
        name = f"layer{len(layers)}"
        if layer_config.type == "conv":
            stride, padding = layer_config.stride, layer_config.padding
            if pool > 1:
                weight, stride, padding = fold_avgpool_into_conv(weight, stride, padding, pool)
            geometry = ConvGeometry(tuple(spike_shape), tuple(weight.shape[2:]), stride, padding)
            neurons_per_map = int(np.prod(shape[1:]))
            layers.append(FloatLayer(name, weight, np.repeat(bias, neurons_per_map), lif.tau, lif.v_threshold,
                                     "conv", geometry))
        else:
            if pool > 1:
                c, h, w = spike_shape
                weight = fold_avgpool_into_dense(weight, (c, h // pool, w // pool), pool)
            layers.append(FloatLayer(name, weight, bias, lif.tau, lif.v_threshold))
        pool = 1
        spike_shape = shape
    return layers


def export_checkpoint(checkpoint_path: str | Path, hw: HardwareConfig,
                      allow_clip: bool = False) -> tuple[ExportedNetwork, QuantizationReport]:
    """Quantizes a trainer checkpoint; the artifact records where it came from."""
    from trainer.checkpoint import load_checkpoint
    from trainer.provenance import package_versions

    checkpoint = load_checkpoint(checkpoint_path)
    history = checkpoint.history[-1] if checkpoint.history else {}
    metadata = {
        "source_checkpoint": str(checkpoint_path),
        "source_checkpoint_sha256": hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest(),
        "training_config": checkpoint.config.to_dict(),
        "training_versions": checkpoint.versions,
        "training_seed": checkpoint.config.seed,
        "trained_test_accuracy": history.get("test_accuracy"),
        "export_versions": package_versions(),
    }
    return quantize_network(
        float_layers_from_checkpoint(checkpoint), checkpoint.input_shape, checkpoint.config.encoding.kind,
        checkpoint.config.encoding.time_steps, checkpoint.config.training.eval_seed, hw, allow_clip, metadata,
    )
