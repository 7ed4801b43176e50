"""Hardware descriptions (hw_configs/*.yaml): every limit the exporter, emulator and Lava
mapping use, loaded into a typed, validated config. Nothing else in the code base holds
these numbers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netgraph.errors import HardwareConfigError, shown
from netgraph.yaml_input import read_yaml


@dataclass(frozen=True)
class HardwareConfig:
    """Fixed-point limits of one chip generation (units: bits unless named otherwise).

    Weights: a signed mantissa of `weight_bits` (+ sign in mixed mode); in mixed mode Lava
    drops `8 - num_weight_bits + 1` least significant bits (arithmetic shift), so with 8 bits
    the effective weights are even numbers in [-2^8, 2^8 - 2].
    The synaptic sum is shifted by `weight_exp` (left if > 0, else arithmetic right).
    Neuron: u[t] = wrap(decay(u, du + du_offset) + a << activation_shift)
            v[t] = clip(decay(v, dv + dv_offset) + u + bias_mant << bias_exp)
            spike when v > vth << vth_shift, then v = 0.
    decay(x, d) = trunc_toward_zero(x * (2^decay_bits - d) / 2^decay_bits).
    A synapse may delay its input by up to 2^delay_bits - 1 steps beyond the Dense's one.
    """

    name: str
    description: str
    # synapses
    weight_bits: int
    num_weight_bits_max: int
    weight_exp_min: int
    weight_exp_max: int
    activation_bits: int
    delay_bits: int
    # neuron parameters
    bias_mant_bits: int
    bias_exp_min: int
    bias_exp_max: int
    vth_bits: int
    vth_shift: int
    activation_shift: int
    decay_bits: int
    du_offset: int
    dv_offset: int
    state_bits: int
    # resources
    neurons_per_core: int
    cores_per_chip: int
    synaptic_memory_bits_per_core: int
    fan_in_axons_per_core: int
    fan_out_axons_per_core: int
    source: str = ""

    # ---- derived limits (one place for the arithmetic on bit widths)
    @property
    def decay_unity(self) -> int:
        return 1 << self.decay_bits

    @property
    def decay_max(self) -> int:
        return self.decay_unity - 1

    @property
    def bias_mant_max(self) -> int:
        return (1 << (self.bias_mant_bits - 1)) - 1

    @property
    def bias_mant_min(self) -> int:
        return -(1 << (self.bias_mant_bits - 1))

    @property
    def vth_max(self) -> int:
        return (1 << self.vth_bits) - 1

    @property
    def max_synaptic_delay(self) -> int:
        return (1 << self.delay_bits) - 1

    @property
    def state_limit(self) -> int:
        """2^(state_bits - 1): u wraps beyond it, v saturates at +-(limit - 1)."""
        return 1 << (self.state_bits - 1)

    def weight_range(self, sign_mode: str, num_weight_bits: int | None = None) -> tuple[int, int, int]:
        """(min, max, step) of the effective weights Lava keeps after clip and truncate."""
        bits = self.weight_bits if num_weight_bits is None else num_weight_bits
        truncated = self.weight_bits - bits + (1 if sign_mode == "mixed" else 0)
        step = 1 << truncated
        top = ((1 << self.weight_bits) - 1) >> truncated << truncated
        if sign_mode == "mixed":
            return -(1 << self.weight_bits), top, step
        if sign_mode == "excitatory":
            return 0, top, step
        return -top, 0, step


# Lava 0.10.0's bit-accurate LIF and Dense hard-code these (lava/proc/lif/models.py
# AbstractPyLifModelFixed.__init__, lava/utils/weightutils.py clip_weights(num_bits=8)); a
# hardware config that says otherwise describes arithmetic Lava's fixed_pt models do not run
# (the emulator, export.emulator, computes any config).
LAVA_FIXED_CONSTANTS = {"vth_shift": 6, "activation_shift": 6, "decay_bits": 12, "du_offset": 1,
                        "dv_offset": 0, "state_bits": 24, "weight_bits": 8}


def lava_arithmetic_mismatch(hw: HardwareConfig) -> str | None:
    """None when Lava 0.10.0's fixed-point models compute `hw`'s arithmetic, else one sentence
    naming the config and every differing field. The one check `stbp run` (refusal) and
    `stbp export` (warning) share."""
    differing = [f"{key} = {getattr(hw, key)} (Lava: {lava})" for key, lava in LAVA_FIXED_CONSTANTS.items()
                 if getattr(hw, key) != lava]
    if not differing:
        return None
    return (f"hardware config {hw.name!r} differs from what Lava 0.10.0's fixed-point models compute: "
            + ", ".join(differing))


# Bounds of every integer field: wide enough for any Loihi-like chip, narrow enough that the
# integer step (int64, export.fixed_point) cannot overflow and no value allocates without bound.
FIELD_RANGES = {
    "weight_bits": (1, 16), "num_weight_bits_max": (1, 16), "weight_exp_min": (-8, 8), "weight_exp_max": (-8, 8),
    "activation_bits": (1, 32), "delay_bits": (1, 16), "bias_mant_bits": (1, 32), "bias_exp_min": (0, 16),
    "bias_exp_max": (0, 16), "vth_bits": (1, 32), "vth_shift": (0, 8), "activation_shift": (0, 8),
    "decay_bits": (1, 16), "du_offset": (0, 1), "dv_offset": (0, 1), "state_bits": (2, 32),
    "neurons_per_core": (1, 1 << 31), "cores_per_chip": (1, 1 << 31), "synaptic_memory_bits_per_core": (1, 1 << 40),
    "fan_in_axons_per_core": (1, 1 << 31), "fan_out_axons_per_core": (1, 1 << 31),
}


def _require_int(raw: dict, key: str, where: str) -> int:
    if key not in raw:
        raise HardwareConfigError(f"{where}: missing key '{key}'")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise HardwareConfigError(f"{where}: '{key}' must be an integer, got {shown(value)}")
    return value


def _require_text(raw: dict, key: str, default: Any, where: str) -> str:
    if key not in raw and default is dataclasses.MISSING:
        raise HardwareConfigError(f"{where}: missing key '{key}'")
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise HardwareConfigError(f"{where}: '{key}' must be text, got {shown(value)}")
    return value


def hardware_config_from_dict(raw: Any, where: str) -> HardwareConfig:
    if not isinstance(raw, dict):
        raise HardwareConfigError(f"{where}: expected a mapping at the top level")
    fields = {f.name: f for f in dataclasses.fields(HardwareConfig)}
    unknown = sorted(str(key) for key in set(raw) - set(fields))  # YAML keys may be numbers
    if unknown:
        raise HardwareConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if f.type == "str":
            values[name] = _require_text(raw, name, f.default, where)
        else:
            values[name] = _require_int(raw, name, where)
    cfg = HardwareConfig(**values)
    for name, (low, high) in FIELD_RANGES.items():
        value = getattr(cfg, name)
        if not low <= value <= high:
            raise HardwareConfigError(f"{where}: '{name}' = {shown(value)} is outside [{low}, {high}] (the range "
                                      "the integer arithmetic supports)")
    if cfg.weight_exp_min > cfg.weight_exp_max or cfg.bias_exp_min > cfg.bias_exp_max:
        raise HardwareConfigError(f"{where}: an exponent range has min > max")
    if cfg.num_weight_bits_max > cfg.weight_bits:
        raise HardwareConfigError(f"{where}: 'num_weight_bits_max' exceeds 'weight_bits'")
    return cfg


def load_hardware_config(path: str | Path) -> HardwareConfig:
    """Reads and validates a hw_configs/*.yaml file (netgraph.yaml_input bounds the YAML itself)."""
    path = Path(path)
    if not path.is_file():
        raise HardwareConfigError(f"hardware config not found: {path}")
    return hardware_config_from_dict(read_yaml(path, "hardware config", HardwareConfigError), str(path))


HW_CONFIG_DIR = Path(__file__).resolve().parent.parent / "hw_configs"


def resolve_hardware_config(name_or_path: str | Path) -> HardwareConfig:
    """A path to a YAML file, or the name of a shipped config ('loihi2', 'loihi1')."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return load_hardware_config(candidate)
    shipped = HW_CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return load_hardware_config(shipped)
    raise HardwareConfigError(
        f"hardware config {name_or_path!r} is neither a file nor one of: "
        + ", ".join(p.stem for p in sorted(HW_CONFIG_DIR.glob("*.yaml")))
    )
