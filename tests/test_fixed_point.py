"""Loihi's integer arithmetic against traces worked by hand from Lava 0.10.0's source
(lava/proc/lif/models.py AbstractPyLifModelFixed, lava/utils/weightutils.py)."""
from __future__ import annotations

import numpy as np
import pytest

from export.fixed_point import FixedLIFParameters, effective_weights, lif_fixed_step, shift_activation
from export.hw_config import resolve_hardware_config

HW = resolve_hardware_config("loihi2")


def step(activation, u, v, du=4095, dv=0, vth=1, bias_mant=0, bias_exp=0):
    params = FixedLIFParameters(du, dv, vth, np.array([bias_mant], dtype=np.int64), bias_exp)
    s, u, v = lif_fixed_step(np.array([activation], dtype=np.int64), np.array([u], dtype=np.int64),
                             np.array([v], dtype=np.int64), params, HW)
    return bool(s[0]), int(u[0]), int(v[0])


def test_spike_exactly_at_threshold_does_not_fire():
    # vth = 1 -> firing needs v > 1 << 6 = 64; one input of weight 1 gives u = 64, v = 64.
    assert step(1, 0, 0) == (False, 64, 64)
    # du = 4095 (+1 offset) empties u each step; dv = 0 keeps v: v stays exactly at 64.
    assert step(0, 64, 64) == (False, 0, 64)
    # One more input: v = 128 > 64 fires and resets v to 0 (u keeps its value).
    assert step(1, 0, 64) == (True, 64, 0)


def test_decay_of_negative_voltage_truncates_toward_zero():
    # dv = 1024: v * (4096 - 1024) / 4096 = 0.75 v; -101 * 0.75 = -75.75 -> -75 (floor gives -76).
    assert step(0, 0, -101, dv=1024, vth=100) == (False, 0, -75)
    assert step(0, 0, 101, dv=1024, vth=100) == (False, 0, 75)


def test_current_decay_offset_is_one_and_voltage_offset_zero():
    # du = 0 still decays u by 1/4096 (ds_offset = 1): 4096 -> 4095.
    assert step(0, 4096, 0, du=0, vth=10**5)[1] == 4095
    # dv = 0 keeps v exactly (dm_offset = 0).
    assert step(0, 0, 4096, du=4095, dv=0, vth=10**5)[2] == 4096


def test_bias_is_mantissa_shifted_by_exponent_and_not_by_six():
    assert step(0, 0, 0, bias_mant=3, bias_exp=2, vth=100) == (False, 0, 12)
    assert step(0, 0, 0, bias_mant=-5, bias_exp=0, vth=100) == (False, 0, -5)


def test_voltage_saturates_at_24_bits():
    top = 2**23 - 1
    params = FixedLIFParameters(4095, 0, 2**17 - 1, np.array([0, 0, 0]), 0)
    # v = -top + 10 - 64 would pass -(2^23 - 1): clipped there; no wrap to a positive value.
    _, _, v = lif_fixed_step(np.array([-1, -(2**16), 2**16]), np.zeros(3, np.int64),
                             np.array([-top + 10, -top, top - 10]), params, HW)
    assert v[:2].tolist() == [-top, -top]
    # The largest threshold, (2^17 - 1) << 6 = 2^23 - 64, lies below the positive clip, so a
    # saturating neuron fires (and resets) rather than wrapping negative.
    s, _, v = lif_fixed_step(np.array([2**16]), np.zeros(1, np.int64), np.array([top - 10]),
                             FixedLIFParameters(4095, 0, 2**17 - 1, np.array([0]), 0), HW)
    assert bool(s[0]) and int(v[0]) == 0


def test_current_wraps_like_lava():
    # a << 6 = 2^23 is not above 2^23, so Lava keeps it; 2^23 + 64 wraps to 64 - 2^23.
    assert step(2**17, 0, 0, vth=2**17 - 1)[1] == 2**23
    assert step(2**17 + 1, 0, 0, vth=2**17 - 1)[1] == 64 - 2**23
    assert step(-(2**17), 0, 0, vth=2**17 - 1)[1] == 2**23  # -2^23 wraps up to +2^23


def test_effective_weights_mixed_8_bit_are_even_and_floor():
    raw = np.array([255, 254, 253, 3, -3, -255, -256, 300, -300, 254.9, -1.5])
    expected = [254, 254, 252, 2, -4, -256, -256, 254, -256, 254, -2]
    assert effective_weights(raw, "mixed", 8, HW).tolist() == expected


def test_effective_weights_other_sign_modes_and_bit_widths():
    assert effective_weights(np.array([255, 300, -5]), "excitatory", 8, HW).tolist() == [255, 255, 0]
    assert effective_weights(np.array([-255, -300, 5]), "inhibitory", 8, HW).tolist() == [-255, -255, 0]
    # 6 bits mixed drops 8 - 6 + 1 = 3 bits: multiples of 8, floor.
    assert effective_weights(np.array([255, -1, 9]), "mixed", 6, HW).tolist() == [248, -8, 8]


def test_effective_weights_match_lavas_own_functions():
    weightutils = pytest.importorskip("lava.utils.weightutils")
    rng = np.random.default_rng(0)
    raw = rng.integers(-400, 400, size=(20, 30)).astype(np.float64) + rng.random((20, 30))
    for mode, bits in (("mixed", 8), ("mixed", 5), ("excitatory", 8), ("inhibitory", 7)):
        sign_mode = getattr(weightutils.SignMode, mode.upper())
        lava = weightutils.truncate_weights(
            weightutils.clip_weights(raw.astype(int), sign_mode=sign_mode, num_bits=8),
            sign_mode=sign_mode, num_weight_bits=bits)
        np.testing.assert_array_equal(effective_weights(raw, mode, bits, HW), lava, err_msg=f"{mode} {bits}")


def test_weight_exponent_shifts_left_or_floors_right():
    a = np.array([5, -5, 7])
    assert shift_activation(a, 2).tolist() == [20, -20, 28]
    assert shift_activation(a, -1).tolist() == [2, -3, 3]
    assert shift_activation(a, 0).tolist() == [5, -5, 7]


def test_numpy_and_torch_steps_agree():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    a = rng.integers(-(2**15), 2**15, size=(50, 40))
    u = rng.integers(-(2**23) + 1, 2**23, size=(50, 40))
    v = rng.integers(-(2**23) + 1, 2**23, size=(50, 40))
    bias = rng.integers(-4096, 4096, size=40)
    params_np = FixedLIFParameters(1000, 700, 5000, bias, 3)
    params_t = FixedLIFParameters(1000, 700, 5000, torch.from_numpy(bias), 3)
    s1, u1, v1 = lif_fixed_step(a, u, v, params_np, HW, np)
    s2, u2, v2 = lif_fixed_step(torch.from_numpy(a), torch.from_numpy(u), torch.from_numpy(v), params_t, HW, torch)
    np.testing.assert_array_equal(s1, s2.numpy())
    np.testing.assert_array_equal(u1, u2.numpy())
    np.testing.assert_array_equal(v1, v2.numpy())
