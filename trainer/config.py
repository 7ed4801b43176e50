"""Run configuration: typed dataclasses, loaded from YAML and validated at the boundary.

Every error names the file and the key path (e.g. ``model.layers[1].units``) so a user
can fix the config without reading code.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.encoding import ENCODINGS
from trainer.surrogate import SURROGATE_NAMES

LAYER_TYPES = ("dense", "conv", "avgpool")
SPIKING_LAYER_TYPES = ("dense", "conv")
DATASETS = ("digits", "mnist", "nmnist")
LOSSES = ("mse", "ce")
INITS = ("pytorch", "paper")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class LayerConfig:
    """One layer of the feed-forward network.

    type: 'dense' (fully connected synapses + LIF neurons; `units` neurons; its input is
        flattened in C order), 'conv' (2-D convolution + LIF neurons; `channels` output
        maps, square `kernel_size`, `stride`, zero `padding`), or 'avgpool' (average of
        non-overlapping `kernel_size` x `kernel_size` windows of the previous conv layer's
        spikes, no neurons: paper section 3.2.2; the exporter folds it into the next layer).
    tau, v_threshold: per-layer overrides of the network-wide LIF constants (not for avgpool).
    """

    type: str
    units: int | None = None
    channels: int | None = None
    kernel_size: int | None = None
    stride: int = 1
    padding: int = 0
    tau: float | None = None
    v_threshold: float | None = None

    @property
    def spiking(self) -> bool:
        return self.type in SPIKING_LAYER_TYPES


@dataclass(frozen=True)
class ModelConfig:
    layers: tuple[LayerConfig, ...]
    tau: float = 0.2
    v_threshold: float = 0.5
    surrogate: str = "h1"
    surrogate_width: float = 1.0
    init: str = "pytorch"
    # False trains with SDBP: the temporal gradient path is cut (paper Table 7).
    temporal_gradient: bool = True


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    # Directory holding the dataset's files (MNIST idx files); unused for 'digits'.
    path: str | None = None
    # Use only the first N training / test samples (None = all); for quick runs.
    train_limit: int | None = None
    test_limit: int | None = None


@dataclass(frozen=True)
class EncodingConfig:
    kind: str = "bernoulli"
    time_steps: int = 16


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    loss: str = "mse"
    # 'auto' picks CUDA when available.
    device: str = "auto"
    # Seed of the encoder used for the test set, fixed so that every backend sees the
    # same test spikes.
    eval_seed: int = 12345


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    seed: int = 0
    output_dir: str = "runs/default"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- parsing


def _check_keys(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _get(raw: dict, key: str, where: str, kind: type | tuple, default: Any, *, required=False):
    if key not in raw or raw[key] is None:
        if required:
            raise ConfigError(f"{where}.{key}: required key is missing")
        return default
    value = raw[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}.{key}: expected {kinds[0].__name__}, got boolean {value}")
    if not isinstance(value, kinds):
        raise ConfigError(
            f"{where}.{key}: expected {kinds[0].__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _positive_int(value, where: str):
    if value is not None and value < 1:
        raise ConfigError(f"{where}: must be a positive integer, got {value}")
    return value


def _finite_positive(value, where: str):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{where}: must be a finite positive number, got {value}")
    return value


def _tau(value, where: str):
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: decay factor must lie in [0, 1], got {value}")
    return value


def _choice(value: str, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _section(raw: dict, key: str, where: str) -> dict:
    section = raw.get(key) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}.{key}: expected a mapping, got {type(section).__name__}")
    return section


def _layer(raw: Any, where: str) -> LayerConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: dense, units: 100}}")
    _check_keys(raw, {f.name for f in dataclasses.fields(LayerConfig)}, where)
    layer_type = _choice(_get(raw, "type", where, str, None, required=True), LAYER_TYPES, f"{where}.type")
    needed = {"dense": {"units"}, "conv": {"channels", "kernel_size"}, "avgpool": {"kernel_size"}}[layer_type]
    allowed = needed | {"type"} | ({"stride", "padding"} if layer_type == "conv" else set()) | (
        {"tau", "v_threshold"} if layer_type != "avgpool" else set())
    defaults = {"stride": 1, "padding": 0}
    extra = sorted(k for k in set(raw) - allowed if raw[k] is not None and raw[k] != defaults.get(k))
    if extra:
        raise ConfigError(f"{where}: key(s) {', '.join(extra)} do not apply to a {layer_type} layer")
    stride = _positive_int(_get(raw, "stride", where, int, 1), f"{where}.stride")
    padding = _get(raw, "padding", where, int, 0)
    if padding < 0:
        raise ConfigError(f"{where}.padding: must be >= 0, got {padding}")
    return LayerConfig(
        type=layer_type,
        units=_positive_int(_get(raw, "units", where, int, None, required="units" in needed), f"{where}.units"),
        channels=_positive_int(_get(raw, "channels", where, int, None, required="channels" in needed),
                               f"{where}.channels"),
        kernel_size=_positive_int(_get(raw, "kernel_size", where, int, None, required="kernel_size" in needed),
                                  f"{where}.kernel_size"),
        stride=stride,
        padding=padding,
        tau=_tau(_get(raw, "tau", where, float, None), f"{where}.tau"),
        v_threshold=_finite_positive(
            _get(raw, "v_threshold", where, float, None), f"{where}.v_threshold"
        ),
    )


def _check_layer_order(layers: tuple[LayerConfig, ...], where: str) -> None:
    """avgpool only between a conv and a conv/dense; the network ends with a spiking layer."""
    for i, layer in enumerate(layers):
        if layer.type == "avgpool":
            if i == 0 or layers[i - 1].type != "conv":
                raise ConfigError(f"{where}[{i}]: avgpool must follow a conv layer")
            if i == len(layers) - 1:
                raise ConfigError(f"{where}[{i}]: avgpool cannot be the last layer (its output does not spike)")
        if layer.type == "conv" and any(l.type == "dense" for l in layers[:i]):
            raise ConfigError(f"{where}[{i}]: conv after a dense layer is not supported (dense flattens)")
    if not layers[-1].spiking:
        raise ConfigError(f"{where}[{len(layers) - 1}]: the last layer must be dense or conv")


def config_from_dict(raw: Any, source: str = "config") -> RunConfig:
    """Builds a validated RunConfig; `source` (a file name) prefixes every error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    top = {f.name for f in dataclasses.fields(RunConfig)}
    _check_keys(raw, top, source)

    m = _section(raw, "model", source)
    w = f"{source}: model"
    _check_keys(m, {f.name for f in dataclasses.fields(ModelConfig)}, w)
    layers_raw = m.get("layers")
    if not isinstance(layers_raw, list) or not layers_raw:
        raise ConfigError(f"{w}.layers: a non-empty list of layers is required")
    layers = tuple(_layer(layer, f"{w}.layers[{i}]") for i, layer in enumerate(layers_raw))
    _check_layer_order(layers, f"{w}.layers")
    model = ModelConfig(
        layers=layers,
        tau=_tau(_get(m, "tau", w, float, 0.2), f"{w}.tau"),
        v_threshold=_finite_positive(_get(m, "v_threshold", w, float, 0.5), f"{w}.v_threshold"),
        surrogate=_choice(_get(m, "surrogate", w, str, "h1"), SURROGATE_NAMES, f"{w}.surrogate"),
        surrogate_width=_finite_positive(
            _get(m, "surrogate_width", w, float, 1.0), f"{w}.surrogate_width"
        ),
        init=_choice(_get(m, "init", w, str, "pytorch"), INITS, f"{w}.init"),
        temporal_gradient=_get(m, "temporal_gradient", w, bool, True),
    )

    d = _section(raw, "data", source)
    w = f"{source}: data"
    _check_keys(d, {f.name for f in dataclasses.fields(DataConfig)}, w)
    data = DataConfig(
        name=_choice(_get(d, "name", w, str, "digits"), DATASETS, f"{w}.name"),
        path=_get(d, "path", w, str, None),
        train_limit=_positive_int(_get(d, "train_limit", w, int, None), f"{w}.train_limit"),
        test_limit=_positive_int(_get(d, "test_limit", w, int, None), f"{w}.test_limit"),
    )
    if data.name in ("mnist", "nmnist") and not data.path:
        raise ConfigError(f"{w}.path: the {data.name} dataset needs the directory of its files")

    e = _section(raw, "encoding", source)
    w = f"{source}: encoding"
    _check_keys(e, {f.name for f in dataclasses.fields(EncodingConfig)}, w)
    encoding = EncodingConfig(
        kind=_choice(_get(e, "kind", w, str, "bernoulli"), ENCODINGS, f"{w}.kind"),
        time_steps=_positive_int(_get(e, "time_steps", w, int, 16), f"{w}.time_steps"),
    )

    t = _section(raw, "training", source)
    w = f"{source}: training"
    _check_keys(t, {f.name for f in dataclasses.fields(TrainingConfig)}, w)
    device = _get(t, "device", w, str, "auto")
    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"{w}.device: expected 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    training = TrainingConfig(
        epochs=_positive_int(_get(t, "epochs", w, int, 10), f"{w}.epochs"),
        batch_size=_positive_int(_get(t, "batch_size", w, int, 64), f"{w}.batch_size"),
        learning_rate=_finite_positive(_get(t, "learning_rate", w, float, 1e-3), f"{w}.learning_rate"),
        loss=_choice(_get(t, "loss", w, str, "mse"), LOSSES, f"{w}.loss"),
        device=device,
        eval_seed=_get(t, "eval_seed", w, int, 12345),
    )
    return RunConfig(
        model=model,
        data=data,
        encoding=encoding,
        training=training,
        seed=_get(raw, "seed", source, int, 0),
        output_dir=_get(raw, "output_dir", source, str, "runs/default"),
    )


def load_config(path: str | Path) -> RunConfig:
    """Reads and validates a YAML run config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return config_from_dict(raw, str(path))


def config_with_overrides(config: RunConfig, **overrides: Any) -> RunConfig:
    """Returns a copy with dotted-path overrides, e.g. {'training.epochs': 3}; None skipped."""
    raw = config.to_dict()
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    raw["model"]["layers"] = [dict(layer) for layer in raw["model"]["layers"]]
    return config_from_dict(raw, "config (with command-line overrides)")
