"""Range checks of everything that is handed to Lava.

Lava 0.10.0 stores its fixed-point parameters in narrow integer types and does not check
them: bias_mant wraps silently as int16, a non-integer vth/du/dv makes a fixed-point run
hang, a weight off the sign mode's grid is silently truncated. So every exported value
is checked here, at the boundary, with the layer and parameter named.
"""
from __future__ import annotations

import numpy as np

from export.hw_config import SIGN_MODES


class ExportRangeError(ValueError):
    """A quantized parameter lies outside what the hardware config can represent."""


def _check_int(value, low: int, high: int, what: str) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ExportRangeError(f"{what} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ExportRangeError(f"{what} = {value} is outside [{low}, {high}]")


def validate_network(network, where: str = "network") -> None:
    """Raises ExportRangeError naming `where`, the layer and the parameter."""
    hw = network.hardware
    if network.time_steps < 1:
        raise ExportRangeError(f"{where}: time_steps must be >= 1, got {network.time_steps}")
    if not network.input_shape or any(d < 1 for d in network.input_shape):
        raise ExportRangeError(f"{where}: input_shape must be positive dimensions, got {network.input_shape}")
    for i, layer in enumerate(network.layers):
        name = f"{where}: layer {i} ({layer.name})"
        if layer.sign_mode not in SIGN_MODES:
            raise ExportRangeError(f"{name}: sign_mode {layer.sign_mode!r} is not one of {', '.join(SIGN_MODES)}")
        _check_int(layer.num_weight_bits, 1, hw.num_weight_bits_max, f"{name}: num_weight_bits")
        _check_int(layer.weight_exp, hw.weight_exp_min, hw.weight_exp_max, f"{name}: weight_exp")
        _check_int(layer.bias_exp, hw.bias_exp_min, hw.bias_exp_max, f"{name}: bias_exp")
        _check_int(layer.vth, 0, hw.vth_max, f"{name}: vth")
        _check_int(layer.du, 0, hw.decay_max, f"{name}: du")
        _check_int(layer.dv, 0, hw.decay_max, f"{name}: dv")
        for tensor_name in ("weights", "bias_mant"):
            tensor = getattr(layer, tensor_name)
            if not np.issubdtype(tensor.dtype, np.integer):
                raise ExportRangeError(f"{name}: {tensor_name} must be integers, got dtype {tensor.dtype}")
        low, high, step = hw.weight_range(layer.sign_mode, layer.num_weight_bits)
        w = layer.weights
        if w.size and (w.min() < low or w.max() > high):
            raise ExportRangeError(
                f"{name}: weights span [{w.min()}, {w.max()}], outside the {layer.sign_mode} range [{low}, {high}]"
            )
        if np.any(w % step):
            raise ExportRangeError(
                f"{name}: weights must be multiples of {step} for {layer.sign_mode} sign mode with "
                f"{layer.num_weight_bits} bits (Lava would silently truncate them)"
            )
        b = layer.bias_mant
        if b.size and (b.min() < hw.bias_mant_min or b.max() > hw.bias_mant_max):
            raise ExportRangeError(
                f"{name}: bias_mant spans [{b.min()}, {b.max()}], outside [{hw.bias_mant_min}, {hw.bias_mant_max}]"
            )
        for float_name in ("weight_float", "bias_float"):
            if not np.all(np.isfinite(getattr(layer, float_name))):
                raise ExportRangeError(f"{name}: {float_name} holds NaN or inf")
        if not (np.isfinite(layer.tau) and 0.0 <= layer.tau <= 1.0):
            raise ExportRangeError(f"{name}: tau must lie in [0, 1], got {layer.tau}")
        if not (np.isfinite(layer.v_threshold) and layer.v_threshold > 0):
            raise ExportRangeError(f"{name}: v_threshold must be a finite positive number, got {layer.v_threshold}")
        if not (np.isfinite(layer.scale) and layer.scale > 0):
            raise ExportRangeError(f"{name}: scale must be a finite positive number, got {layer.scale}")
