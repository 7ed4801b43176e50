"""Run configuration: typed dataclasses, loaded from YAML and validated at the boundary.

Every error names the file and the key path (e.g. ``model.layers[1].units``) so a user
can fix the config without reading code.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netgraph import READOUTS
from netgraph.errors import ConfigError, ResourceLimitError, shown
from netgraph.limits import MAX_DIMENSION, MAX_ELEMENTS, MAX_TIME_STEPS, check_memory, check_time_steps
from netgraph.yaml_input import read_yaml
from spikedata import DATASETS, TONIC_DATASETS
from trainer.encoding import ENCODINGS
from trainer.surrogate import SURROGATE_NAMES

LAYER_TYPES = ("dense", "conv", "avgpool")
SPIKING_LAYER_TYPES = ("dense", "conv")
INPUT_NAME = "input"  # what `inputs` calls the network's input
RESERVED_NAMES = (INPUT_NAME, "output")
LAYER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # graph node names built from it stay below 200
LOSSES = ("mse", "ce")
METHODS = ("stbp", "hm2bp", "mpbp", "lee2019")
OPTIMIZERS = ("adam", "sgd")
MPBP_NEURONS = ("loihi", "paper")
# Beyond 10 thresholds per spike, inhibition only costs the layer's other weights precision on
# the chip (they share the layer's weight scale) and one spike silences the layer anyway.
MAX_LATERAL_INHIBITION = 10.0
LR_SCHEDULES = ("constant", "inverse_sqrt")
INITS = ("pytorch", "paper")
# Seeds go to torch.manual_seed, which takes [-2^63, 2^64 - 1] (and into artifacts, which hold the same range).
MIN_SEED, MAX_SEED = -(1 << 63), (1 << 64) - 1
# Fixed weights (a lateral inhibition, a spiking pool's kernel) are built in float64 with the
# network graph, then held again in float32 by the trained network.
FIXED_WEIGHT_BYTES = 8 + 4


@dataclass(frozen=True)
class LayerInput:
    """One input of a layer: the layer it reads (by name, or 'input' for the network's
    input), each through its own synapse of the layer's type.

    recurrent: read the source's spikes of the previous time step (one step of delay); the
        source may then be the layer itself or a later layer.
    kernel_size, stride, padding: conv layers only, this synapse's geometry (default: the
        layer's), e.g. a 1x1 conv on a residual block's shortcut.
    """

    source: str
    recurrent: bool = False
    kernel_size: int | None = None
    stride: int | None = None
    padding: int | None = None


@dataclass(frozen=True)
class LayerConfig:
    """One layer of the network.

    type: 'dense' (fully connected synapses + LIF neurons; `units` neurons; its input is
        flattened in C order), 'conv' (2-D convolution + LIF neurons; `channels` output
        maps, square `kernel_size`, `stride`, zero `padding`), or 'avgpool' (average of
        non-overlapping `kernel_size` x `kernel_size` windows of a spike map, no neurons:
        paper section 3.2.2; the exporter folds it into the synapses that read it; with a
        `v_threshold`, the pooled spikes feed integrate-and-fire neurons (no leak, reset to 0)
        that fire at that threshold: Lee et al. 2019's spiking pooling, a population on the chip).
    name: the layer's node name in the network graph (default layer<k> / pool<k>).
    inputs: what the layer reads (default: the previous layer, or the network input for
        the first). Several inputs are summed into the layer's neurons (skip connections);
        a recurrent input feeds spikes back with one step of delay.
    tau, v_threshold, tau_current: per-layer overrides of the network-wide LIF constants
        (avgpool: v_threshold only, which makes the pool spike).
    lateral_inhibition: kappa (dense layers): each spike lowers the potential of every other
        neuron of the layer by kappa * v_threshold one step later (winner-take-all, Lee,
        Delbruck & Pfeiffer 2016 section 2.3), through a fixed recurrent inhibitory Dense.
    """

    type: str
    units: int | None = None
    channels: int | None = None
    kernel_size: int | None = None
    stride: int = 1
    padding: int = 0
    tau: float | None = None
    v_threshold: float | None = None
    tau_current: float | None = None
    name: str | None = None
    inputs: tuple[LayerInput, ...] | None = None
    lateral_inhibition: float | None = None

    @property
    def spiking(self) -> bool:
        """Whether the layer has neurons (dense, conv, an avgpool with a v_threshold)."""
        return self.type in SPIKING_LAYER_TYPES or self.v_threshold is not None

    @property
    def spiking_pool(self) -> bool:
        return self.type == "avgpool" and self.v_threshold is not None


@dataclass(frozen=True)
class ModelConfig:
    layers: tuple[LayerConfig, ...]
    tau: float = 0.2
    v_threshold: float = 0.5
    # Fraction of the synaptic current kept per step: 0 is STBP (the current is each
    # step's input); above 0 the neurons are current-based (Loihi's du below 4095).
    tau_current: float = 0.0
    surrogate: str = "h1"
    surrogate_width: float = 1.0
    init: str = "pytorch"
    # False trains with SDBP: the temporal gradient path is cut (paper Table 7).
    temporal_gradient: bool = True
    # What the decision reads of the last layer (netgraph.decision): 'spikes' (counts) or
    # 'potential' (the last layer never fires; its potential at the last step decides).
    readout: str = "spikes"


def lif_constants(layer: LayerConfig, model: ModelConfig) -> dict[str, float]:
    """A layer's LIF constants: its overrides, else the network-wide values; a spiking pool's
    neurons integrate and fire (tau 1, no synaptic current) at the pool's v_threshold."""
    if layer.spiking_pool:
        return {"tau": 1.0, "v_threshold": layer.v_threshold, "tau_current": 0.0}
    return {
        "tau": model.tau if layer.tau is None else layer.tau,
        "v_threshold": model.v_threshold if layer.v_threshold is None else layer.v_threshold,
        "tau_current": model.tau_current if layer.tau_current is None else layer.tau_current,
    }


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    # Directory holding the dataset's files (MNIST idx files, a tonic folder), or the .npz
    # file of 'npz'; unused for 'digits'.
    path: str | None = None
    # Use only the first N training / test samples (None = all); for quick runs.
    train_limit: int | None = None
    test_limit: int | None = None
    # Which tonic data set (name 'tonic' only): NMNIST, POKERDVS, DVSGesture or SHD.
    dataset: str | None = None


@dataclass(frozen=True)
class EncodingConfig:
    kind: str = "bernoulli"
    time_steps: int = 16


@dataclass(frozen=True)
class HM2BPConfig:
    """HM2-BP's rate-coded loss (Jin, Zhang & Li 2018, eq. 1 with the authors' margin): over
    the T steps the label neuron should fire `desired_count` times and every other output
    neuron `undesired_count` times; a count within `margin` of its target has no error.
    refractory_steps: steps the potential is held at 0 after a spike (the paper's neuron has
    2); Lava 0.10.0's fixed-point LIF has no refractory period, so only 0 deploys."""

    desired_count: float = 35.0
    undesired_count: float = 5.0
    margin: float = 5.0
    refractory_steps: int = 0


@dataclass(frozen=True)
class MPBPConfig:
    """Membrane-potential backpropagation (Lee, Delbruck & Pfeiffer 2016; trainer.mpbp).

    neuron: 'loihi' (the neuron Lava runs: reset to 0, lateral inhibition one step later,
        deployable) or 'paper' (reset by subtracting the threshold, inhibition in the step of
        the spike; trains and evaluates in float only).
    alpha: initial threshold in units of the initial weight bound sqrt(3 / fan-in) (the
        paper's initialisation: w ~ U[-sqrt(3/M), sqrt(3/M)], V_th = alpha sqrt(3/M)).
    weight_lambda, weight_beta: the exponential weight regularization
        lambda/2 sum_i exp(beta (sum_j w_ij^2 - 1)), weights in the initialisation's units.
    threshold_rho: threshold regularization; per step in which N_w of a layer's N neurons
        fire, each of them raises its threshold by rho N and every neuron lowers it by
        rho N_w (thresholds in units of the initial threshold).
    """

    neuron: str = "loihi"
    alpha: float = 5.0
    weight_lambda: float = 0.0
    weight_beta: float = 10.0
    threshold_rho: float = 0.0


@dataclass(frozen=True)
class Lee2019Config:
    """Deep spike-based backpropagation (Lee, Sarwar, Panda, Srinivasan & Roy 2019; trainer.lee2019).

    dropout: probability of dropping a hidden neuron's spikes, one mask per sample held over
        all its time steps (training only; not on pooling neurons or the output).
    init_gain: weights drawn from N(0, init_gain / fan_in) per synapse (the authors' code: 2
        for LeNet and VGG, 1 for ResNet)."""

    dropout: float = 0.0
    init_gain: float = 2.0


@dataclass(frozen=True)
class TrainingConfig:
    # 'stbp' (surrogate-gradient BPTT, the default), 'hm2bp' (trainer.hm2bp), 'mpbp'
    # (trainer.mpbp) or 'lee2019' (trainer.lee2019).
    method: str = "stbp"
    hm2bp: HM2BPConfig = field(default_factory=HM2BPConfig)
    mpbp: MPBPConfig = field(default_factory=MPBPConfig)
    lee2019: Lee2019Config = field(default_factory=Lee2019Config)
    # 'adam' or 'sgd' (plain, no momentum, as Lee et al. 2019); weight_decay: L2 coefficient.
    optimizer: str = "adam"
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    # 'inverse_sqrt': epoch e (from 1) trains at learning_rate / sqrt(e), as the HM2-BP authors' code does.
    lr_schedule: str = "constant"
    loss: str = "mse"
    # 'auto' picks CUDA when available.
    device: str = "auto"
    # Seed of the encoder used for the test set, fixed so that every backend sees the
    # same test spikes.
    eval_seed: int = 12345

    @property
    def per_neuron_thresholds(self) -> bool:
        """Whether the method adapts each neuron's threshold (held as gains, trainer.network)."""
        return self.method == "mpbp"


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    seed: int = 0
    output_dir: str = "runs/default"
    # Where the config came from (a file name), for error messages; not part of the run.
    source: str = field(default="config", compare=False)

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw.pop("source")
        if raw["data"]["dataset"] is None:  # only tonic's: other configs' dicts stay as they were
            raw["data"].pop("dataset")
        return raw


# --------------------------------------------------------------------------- parsing


def _check_keys(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in set(raw) - allowed)  # YAML keys may be numbers
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
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{where}.{key}: {shown(value)} is too large for a float") from None
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}.{key}: expected {kinds[0].__name__}, got boolean {value}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{where}.{key}: expected {kinds[0].__name__}, got {type(value).__name__} {shown(value)}")
    return value


def _positive_int(value, where: str):
    if value is not None and value < 1:
        raise ConfigError(f"{where}: must be a positive integer, got {value}")
    return value


def _at_most(value, limit: int, where: str):
    """Refuses a declared size above its documented limit (netgraph.limits), so that no file
    can make training or export allocate without bound; None passes."""
    if value is not None and value > limit:
        raise ResourceLimitError(f"{where}: {shown(value)} is more than the limit of {limit:,}")
    return value


def _size(value, limit: int, where: str):
    """A positive integer size of at most `limit`: MAX_DIMENSION for what lies along one axis
    (units, channels, kernel, stride, a batch's samples, the history's epochs), MAX_ELEMENTS
    for a count of samples."""
    return _at_most(_positive_int(value, where), limit, where)


def _seed(value: int, where: str) -> int:
    if not MIN_SEED <= value <= MAX_SEED:
        raise ConfigError(f"{where}: a seed must lie in [-2^63, 2^64 - 1] (torch's range), got {shown(value)}")
    return value


def _finite_positive(value, where: str):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{where}: must be a finite positive number, got {value}")
    return value


def _within(value, low: float, high: float, where: str):
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{where}: must lie in [{low:g}, {high:g}], got {value}")
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
    section = raw.get(key)
    if section is None:  # absent or empty: the defaults
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}.{key}: expected a mapping, got {type(section).__name__}")
    return section


def _layer_input(raw: Any, where: str, layer_type: str) -> LayerInput:
    if isinstance(raw, str):
        return LayerInput(source=raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a layer name or a mapping like {{source: layer0, recurrent: true}}")
    _check_keys(raw, {f.name for f in dataclasses.fields(LayerInput)}, where)
    geometry = {key: _get(raw, key, where, int, None) for key in ("kernel_size", "stride", "padding")}
    if layer_type != "conv" and any(value is not None for value in geometry.values()):
        raise ConfigError(f"{where}: kernel_size, stride and padding apply only to the inputs of a conv layer")
    for key in ("kernel_size", "stride"):
        _size(geometry[key], MAX_DIMENSION, f"{where}.{key}")
    if geometry["padding"] is not None and geometry["padding"] < 0:
        raise ConfigError(f"{where}.padding: must be >= 0, got {geometry['padding']}")
    _at_most(geometry["padding"], MAX_DIMENSION, f"{where}.padding")
    return LayerInput(source=_get(raw, "source", where, str, None, required=True),
                      recurrent=_get(raw, "recurrent", where, bool, False), **geometry)


def _layer(raw: Any, where: str) -> LayerConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: dense, units: 100}}")
    _check_keys(raw, {f.name for f in dataclasses.fields(LayerConfig)}, where)
    layer_type = _choice(_get(raw, "type", where, str, None, required=True), LAYER_TYPES, f"{where}.type")
    needed = {"dense": {"units"}, "conv": {"channels", "kernel_size"}, "avgpool": {"kernel_size"}}[layer_type]
    allowed = needed | {"type", "name", "inputs", "v_threshold"} | (
        {"stride", "padding"} if layer_type == "conv" else set()) | (
        {"tau", "tau_current"} if layer_type != "avgpool" else set()) | (
        {"lateral_inhibition"} if layer_type == "dense" else set())
    defaults = {"stride": 1, "padding": 0}
    extra = sorted(k for k in set(raw) - allowed if raw[k] is not None and raw[k] != defaults.get(k))
    if extra:
        raise ConfigError(f"{where}: key(s) {', '.join(extra)} do not apply to a {layer_type} layer")
    stride = _size(_get(raw, "stride", where, int, 1), MAX_DIMENSION, f"{where}.stride")
    padding = _get(raw, "padding", where, int, 0)
    if padding < 0:
        raise ConfigError(f"{where}.padding: must be >= 0, got {padding}")
    _at_most(padding, MAX_DIMENSION, f"{where}.padding")
    inputs = raw.get("inputs")
    if inputs is not None and (not isinstance(inputs, (list, tuple)) or not inputs):
        raise ConfigError(f"{where}.inputs: expected a non-empty list of layer names or mappings")
    return LayerConfig(
        type=layer_type,
        units=_size(_get(raw, "units", where, int, None, required="units" in needed), MAX_DIMENSION,
                    f"{where}.units"),
        channels=_size(_get(raw, "channels", where, int, None, required="channels" in needed), MAX_DIMENSION,
                       f"{where}.channels"),
        kernel_size=_size(_get(raw, "kernel_size", where, int, None, required="kernel_size" in needed),
                          MAX_DIMENSION, f"{where}.kernel_size"),
        stride=stride,
        padding=padding,
        tau=_tau(_get(raw, "tau", where, float, None), f"{where}.tau"),
        v_threshold=_finite_positive(
            _get(raw, "v_threshold", where, float, None), f"{where}.v_threshold"
        ),
        tau_current=_tau(_get(raw, "tau_current", where, float, None), f"{where}.tau_current"),
        name=_get(raw, "name", where, str, None),
        inputs=None if inputs is None else tuple(
            _layer_input(item, f"{where}.inputs[{j}]", layer_type) for j, item in enumerate(inputs)),
        lateral_inhibition=_lateral_inhibition(raw, where),
    )


def _lateral_inhibition(raw: dict, where: str) -> float | None:
    """kappa in [0, MAX_LATERAL_INHIBITION], on a layer of at least 2 neurons."""
    kappa = _within(_get(raw, "lateral_inhibition", where, float, None), 0.0, MAX_LATERAL_INHIBITION,
                    f"{where}.lateral_inhibition")
    if kappa and raw.get("units") == 1:
        raise ConfigError(f"{where}.lateral_inhibition: a layer of 1 neuron has no other neuron to inhibit")
    return kappa


def _layer_names(layers: tuple[LayerConfig, ...], where: str) -> list[str]:
    """Each layer's graph node name: its own, else layer<k> (k-th spiking layer) / pool<k>."""
    names: list[str] = []
    counts = {"spiking": 0, "pool": 0}
    for i, layer in enumerate(layers):
        group = "pool" if layer.type == "avgpool" else "spiking"
        default = f"layer{counts[group]}" if group == "spiking" else f"pool{counts[group]}"
        counts[group] += 1
        name = layer.name if layer.name is not None else default
        if not LAYER_NAME.fullmatch(name) or name in RESERVED_NAMES:
            raise ConfigError(f"{where}[{i}].name: {name!r} must be a letter followed by letters, digits or '_' "
                              f"(at most 64), and not {' or '.join(RESERVED_NAMES)}")
        if name in names:
            raise ConfigError(f"{where}[{i}].name: {name!r} is already the name of layer {names.index(name)}")
        names.append(name)
    return names


def _check_input(layers, names, i: int, j: int, layer_input: LayerInput, where: str) -> None:
    """One input of layers[i]: it exists, comes earlier unless recurrent, and fits the layer kind."""
    layer, source = layers[i], layer_input.source
    if source != INPUT_NAME and source not in names:
        raise ConfigError(f"{where}.source: no layer is named {source!r} (names: {INPUT_NAME}, {', '.join(names)})")
    source_layer = layers[names.index(source)] if source != INPUT_NAME else None
    if layer_input.recurrent:
        if source_layer is None or not source_layer.spiking:
            raise ConfigError(f"{where}: a recurrent input must read the spikes of a dense or conv layer, "
                              f"not {source!r}")
        if layer.type == "avgpool":
            raise ConfigError(f"{where}: an avgpool layer cannot have a recurrent input")
    elif source != INPUT_NAME and names.index(source) >= i:
        raise ConfigError(f"{where}.source: {source!r} is not an earlier layer (a later layer, or the layer itself, "
                          "can only be read through a recurrent input: {source: NAME, recurrent: true})")
    source_type = "input" if source_layer is None else source_layer.type
    if layer.type == "avgpool" and source_type not in ("input", "conv"):
        raise ConfigError(f"{where}: avgpool must read a conv layer or the input (it pools a spike map), "
                          f"not the {source_type} layer {source!r}")
    if layer.type == "conv" and source_type == "dense":
        raise ConfigError(f"{where}: a conv layer cannot read the dense layer {source!r} (a dense layer's "
                          "output is flat)")


def _resolve_layers(layers: tuple[LayerConfig, ...], where: str) -> tuple[LayerConfig, ...]:
    """Fills in every layer's name and inputs and checks the wiring, naming the key."""
    names = _layer_names(layers, where)
    resolved = []
    for i, layer in enumerate(layers):
        inputs = layer.inputs or (LayerInput(names[i - 1] if i else INPUT_NAME),)
        if layer.type == "avgpool" and len(inputs) != 1:
            raise ConfigError(f"{where}[{i}].inputs: an avgpool layer reads exactly one layer")
        seen = set()
        for j, layer_input in enumerate(inputs):
            _check_input(layers, names, i, j, layer_input, f"{where}[{i}].inputs[{j}]")
            key = (layer_input.source, layer_input.recurrent)
            if key in seen:
                raise ConfigError(f"{where}[{i}].inputs[{j}]: {layer_input.source!r} is read twice"
                                  + (" recurrently" if layer_input.recurrent else ""))
            seen.add(key)
        if all(layer_input.recurrent for layer_input in inputs):
            raise ConfigError(f"{where}[{i}].inputs: needs at least one input that is not recurrent (otherwise "
                              "nothing from the network input reaches it)")
        resolved.append(dataclasses.replace(layer, name=names[i], inputs=tuple(inputs)))
    if resolved[-1].type == "avgpool":
        raise ConfigError(f"{where}[{len(layers) - 1}]: the last layer is the output and must be dense or conv")
    read = {inp.source for layer in resolved for inp in layer.inputs if inp.source != layer.name}
    for i, layer in enumerate(resolved[:-1]):
        if layer.name not in read:
            raise ConfigError(f"{where}[{i}]: layer {layer.name!r} is read by no other layer and is not the output")
    _check_node_names(resolved, where)
    _check_fixed_weight_memory(resolved, where)
    return tuple(resolved)


def _check_fixed_weight_memory(layers: tuple[LayerConfig, ...], where: str) -> None:
    """Bounds the weights the config fixes, which trainer.architecture builds with the graph,
    before any size check on the network can run: a lateral inhibition's (units, units)
    matrix and a spiking pool's (C, C, k, k) kernel, C the channels of the conv it pools (1
    for the network input: only the data set knows its channels, 1 or 2 for the shipped ones)."""
    channels = {layer.name: layer.channels for layer in layers if layer.type == "conv"}
    for i, layer in enumerate(layers):
        if layer.lateral_inhibition:
            check_memory(layer.units ** 2 * FIXED_WEIGHT_BYTES,
                         f"{where}[{i}].lateral_inhibition ({layer.units} x {layer.units} fixed weights)")
        if layer.spiking_pool:
            c, k = channels.get(layer.inputs[0].source) or 1, layer.kernel_size
            check_memory((c * k) ** 2 * FIXED_WEIGHT_BYTES,
                         f"{where}[{i}].kernel_size (a spiking pool's {c} x {c} x {k} x {k} fixed weights)")


def _check_node_names(layers: tuple[LayerConfig, ...], where: str) -> None:
    """The graph nodes a layer builds for its sum and its lateral inhibition must not take
    another layer's name (trainer.architecture names them `<layer>_sum`, `<layer>_inhibition`)."""
    names = {layer.name: i for i, layer in enumerate(layers)}
    for layer in layers:
        built = []
        if layer.lateral_inhibition:
            built.append((f"{layer.name}_inhibition", "the lateral inhibition"))
        if layer.spiking and len(layer.inputs) + bool(layer.lateral_inhibition) > 1:
            built.append((f"{layer.name}_sum", "the node that adds the inputs"))
        for node_name, what in built:
            if node_name in names:
                raise ConfigError(f"{where}[{names[node_name]}].name: {node_name} is the name of {what} of layer "
                                  f"{layer.name!r}; choose another name")


def _model_config(m: dict, w: str) -> ModelConfig:
    _check_keys(m, {f.name for f in dataclasses.fields(ModelConfig)}, w)
    layers_raw = m.get("layers")
    if not isinstance(layers_raw, (list, tuple)) or not layers_raw:
        raise ConfigError(f"{w}.layers: a non-empty list of layers is required")
    layers = _resolve_layers(tuple(_layer(layer, f"{w}.layers[{i}]") for i, layer in enumerate(layers_raw)),
                             f"{w}.layers")
    return ModelConfig(
        layers=layers,
        tau=_tau(_get(m, "tau", w, float, 0.2), f"{w}.tau"),
        v_threshold=_finite_positive(_get(m, "v_threshold", w, float, 0.5), f"{w}.v_threshold"),
        tau_current=_tau(_get(m, "tau_current", w, float, 0.0), f"{w}.tau_current"),
        surrogate=_choice(_get(m, "surrogate", w, str, "h1"), SURROGATE_NAMES, f"{w}.surrogate"),
        surrogate_width=_finite_positive(
            _get(m, "surrogate_width", w, float, 1.0), f"{w}.surrogate_width"
        ),
        init=_choice(_get(m, "init", w, str, "pytorch"), INITS, f"{w}.init"),
        temporal_gradient=_get(m, "temporal_gradient", w, bool, True),
        readout=_readout(m, layers, w),
    )


def _readout(m: dict, layers: tuple[LayerConfig, ...], w: str) -> str:
    readout = _choice(_get(m, "readout", w, str, "spikes"), READOUTS, f"{w}.readout")
    if readout == "potential" and layers[-1].v_threshold is not None:
        raise ConfigError(f"{w}.layers[{len(layers) - 1}].v_threshold: with readout 'potential' the last layer "
                          "never fires (its potential is read); remove its v_threshold")
    return readout


def _hm2bp_config(h: dict, w: str) -> HM2BPConfig:
    _check_keys(h, {f.name for f in dataclasses.fields(HM2BPConfig)}, w)
    config = HM2BPConfig(
        desired_count=_get(h, "desired_count", w, float, 35.0),
        undesired_count=_get(h, "undesired_count", w, float, 5.0),
        margin=_get(h, "margin", w, float, 5.0),
        refractory_steps=_at_most(_get(h, "refractory_steps", w, int, 0), MAX_TIME_STEPS, f"{w}.refractory_steps"),
    )
    if not (math.isfinite(config.desired_count) and math.isfinite(config.undesired_count)
            and 0 <= config.undesired_count < config.desired_count):
        raise ConfigError(f"{w}: needs 0 <= undesired_count < desired_count, got {config.undesired_count} and "
                          f"{config.desired_count}")
    if not (math.isfinite(config.margin) and config.margin >= 0):
        raise ConfigError(f"{w}.margin: must be a finite number >= 0, got {config.margin}")
    if config.refractory_steps < 0:
        raise ConfigError(f"{w}.refractory_steps: must be >= 0, got {config.refractory_steps}")
    return config


def _check_dense_chain(model: ModelConfig, method: str, source: str) -> None:
    """HM2-BP and MPBP (as published and as built here) train fully connected feed-forward
    chains of neurons without a synaptic current (MPBP: with lateral inhibition inside a layer)."""
    for i, layer in enumerate(model.layers):
        where = f"{source}: model.layers[{i}]: training.method {method!r}"
        expected = model.layers[i - 1].name if i else INPUT_NAME
        if layer.type != "dense":
            raise ConfigError(f"{where} trains dense layers only; layer {layer.name!r} is a {layer.type} layer")
        if [(inp.source, inp.recurrent) for inp in layer.inputs] != [(expected, False)]:
            raise ConfigError(f"{where} trains feed-forward chains, each layer reading only the one before; layer "
                              f"{layer.name!r} has other inputs")
        if layer.lateral_inhibition and method != "mpbp":
            raise ConfigError(f"{where} has no rule for lateral inhibition (layer {layer.name!r}); use 'mpbp' or 'stbp'")
        tau_current = lif_constants(layer, model)["tau_current"]
        if method == "mpbp" and tau_current:
            raise ConfigError(f"{where}: the paper's neuron has no synaptic current; layer {layer.name!r} has "
                              f"tau_current {tau_current} (set it to 0)")


def _check_hm2bp_network(model: ModelConfig, hm2bp: HM2BPConfig, time_steps: int, source: str) -> None:
    _check_dense_chain(model, "hm2bp", source)
    most = math.ceil(time_steps / (1 + hm2bp.refractory_steps))  # spikes at 0, 1 + R, 2 (1 + R), ...
    if hm2bp.desired_count > most:
        raise ConfigError(f"{source}: training.hm2bp.desired_count: {hm2bp.desired_count} spikes cannot fit in "
                          f"{time_steps} steps with a refractory period of {hm2bp.refractory_steps}")


def _check_own_initialisation(model: ModelConfig, method: str, rule: str, source: str) -> None:
    """A method that draws its weights itself refuses a model.init it would ignore."""
    if model.init != "pytorch":
        raise ConfigError(f"{source}: model.init: training.method {method!r} draws its weights by its own rule "
                          f"({rule}), not {model.init!r}; remove model.init")


def _check_lee2019_network(model: ModelConfig, source: str) -> None:
    """Lee et al. 2019 read the output's potential and train neurons without a synaptic current."""
    if model.readout != "potential":
        raise ConfigError(f"{source}: model.readout: training.method 'lee2019' reads the output layer's membrane "
                          "potential (the paper's non-spiking output); set readout: potential")
    for i, layer in enumerate(model.layers):
        if layer.type == "avgpool" and not layer.spiking_pool:
            continue  # folded into the next synapse: no neurons
        constants = lif_constants(layer, model)
        tau_current, tau = constants["tau_current"], constants["tau"]
        if tau_current:
            raise ConfigError(f"{source}: model.layers[{i}]: training.method 'lee2019': the paper's neuron has no "
                              f"synaptic current; layer {layer.name!r} has tau_current {tau_current} (set it to 0)")
        if tau <= 0:
            raise ConfigError(f"{source}: model.layers[{i}]: training.method 'lee2019' corrects its gradient by the "
                              f"leak's logarithm; layer {layer.name!r} has tau {tau} (it must be above 0)")
        if layer.lateral_inhibition or any(inp.recurrent for inp in layer.inputs):
            raise ConfigError(f"{source}: model.layers[{i}]: training.method 'lee2019' trains feed-forward networks; "
                              f"layer {layer.name!r} has a recurrent input or lateral inhibition (use 'stbp')")
    _check_own_initialisation(model, "lee2019", "training.lee2019.init_gain", source)


def _check_lee2019_training(model: ModelConfig, training: TrainingConfig, source: str) -> None:
    """Settings Lee et al. 2019 would otherwise ignore without a word."""
    if training.loss != "mse":
        raise ConfigError(f"{source}: training.loss: training.method 'lee2019' trains on the paper's summed squared "
                          f"error of V(T)/T, not {training.loss!r}; remove training.loss")
    if not model.temporal_gradient:
        raise ConfigError(f"{source}: model.temporal_gradient: training.method 'lee2019' backpropagates through "
                          "time (its leak correction assumes it); remove temporal_gradient: false")


def _check_method_network(model: ModelConfig, training: TrainingConfig, time_steps: int, source: str) -> None:
    """What HM2-BP, MPBP and Lee et al. 2019 need of the network (STBP trains any graph)."""
    if training.method in ("hm2bp", "mpbp") and model.readout != "spikes":
        raise ConfigError(f"{source}: model.readout: training.method {training.method!r} trains on output spike "
                          "counts; set readout: spikes")
    if training.method == "lee2019":
        _check_lee2019_network(model, source)
        _check_lee2019_training(model, training, source)
    if training.method == "hm2bp":
        _check_hm2bp_network(model, training.hm2bp, time_steps, source)
    elif training.method == "mpbp":
        _check_dense_chain(model, "mpbp", source)
        _check_own_initialisation(model, "mpbp", "training.mpbp.alpha", source)


def _mpbp_config(m: dict, w: str) -> MPBPConfig:
    _check_keys(m, {f.name for f in dataclasses.fields(MPBPConfig)}, w)
    defaults = MPBPConfig()
    return MPBPConfig(
        neuron=_choice(_get(m, "neuron", w, str, defaults.neuron), MPBP_NEURONS, f"{w}.neuron"),
        alpha=_within(_get(m, "alpha", w, float, defaults.alpha), 0.01, 1000.0, f"{w}.alpha"),
        weight_lambda=_within(_get(m, "weight_lambda", w, float, defaults.weight_lambda), 0.0, 1000.0,
                              f"{w}.weight_lambda"),
        weight_beta=_within(_get(m, "weight_beta", w, float, defaults.weight_beta), 0.0, 100.0, f"{w}.weight_beta"),
        threshold_rho=_within(_get(m, "threshold_rho", w, float, defaults.threshold_rho), 0.0, 1.0,
                              f"{w}.threshold_rho"),
    )


def _lee2019_config(m: dict, w: str) -> Lee2019Config:
    _check_keys(m, {f.name for f in dataclasses.fields(Lee2019Config)}, w)
    defaults = Lee2019Config()
    dropout = _get(m, "dropout", w, float, defaults.dropout)
    if not (math.isfinite(dropout) and 0.0 <= dropout < 1.0):
        raise ConfigError(f"{w}.dropout: must lie in [0, 1), got {dropout}")
    return Lee2019Config(dropout=dropout,
                         init_gain=_within(_get(m, "init_gain", w, float, defaults.init_gain), 1e-3, 100.0,
                                           f"{w}.init_gain"))


def float_only_neuron(training: TrainingConfig) -> str | None:
    """Why the configured method's neuron cannot be exported (None when it can): a neuron the
    network graph's LIF, NIR's and Lava 0.10.0's fixed-point LIF do not have."""
    if training.method == "mpbp" and training.mpbp.neuron == "paper":
        return ("the paper's neuron (training.mpbp.neuron: paper), which resets by subtracting the threshold and "
                "inhibits in the step of the spike, where the network graph (and Lava 0.10.0's fixed-point LIF) "
                "resets to 0 and inhibits one step later; train with neuron: loihi to export it")
    if training.method == "hm2bp" and training.hm2bp.refractory_steps:
        return (f"a refractory period of {training.hm2bp.refractory_steps} steps (training.hm2bp.refractory_steps), "
                "which the network graph cannot hold (nor NIR's LIF, nor Lava 0.10.0's fixed-point LIF); train the "
                "deployable variant (refractory_steps: 0) to export it")
    return None


def config_from_dict(raw: Any, source: str = "config") -> RunConfig:
    """Builds a validated RunConfig; `source` (a file name) prefixes every error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    top = {f.name for f in dataclasses.fields(RunConfig)}
    _check_keys(raw, top, source)

    model = _model_config(_section(raw, "model", source), f"{source}: model")

    d = _section(raw, "data", source)
    w = f"{source}: data"
    _check_keys(d, {f.name for f in dataclasses.fields(DataConfig)}, w)
    data = DataConfig(
        name=_choice(_get(d, "name", w, str, "digits"), DATASETS, f"{w}.name"),
        path=_get(d, "path", w, str, None),
        train_limit=_size(_get(d, "train_limit", w, int, None), MAX_ELEMENTS, f"{w}.train_limit"),
        test_limit=_size(_get(d, "test_limit", w, int, None), MAX_ELEMENTS, f"{w}.test_limit"),
        dataset=_get(d, "dataset", w, str, None),
    )
    if data.name in ("mnist", "nmnist", "tonic") and not data.path:
        raise ConfigError(f"{w}.path: the {data.name} dataset needs the directory of its files")
    if data.name == "npz" and not data.path:
        raise ConfigError(f"{w}.path: the npz dataset needs its .npz file (arrays x_train, y_train, x_test, y_test)")
    if data.name == "tonic":
        _choice(data.dataset if data.dataset is not None else "(missing)", TONIC_DATASETS, f"{w}.dataset")
    elif data.dataset is not None:
        raise ConfigError(f"{w}.dataset: only the tonic dataset names one (data.name is {data.name!r})")

    e = _section(raw, "encoding", source)
    w = f"{source}: encoding"
    _check_keys(e, {f.name for f in dataclasses.fields(EncodingConfig)}, w)
    encoding = EncodingConfig(
        kind=_choice(_get(e, "kind", w, str, "bernoulli"), ENCODINGS, f"{w}.kind"),
        time_steps=_positive_int(_get(e, "time_steps", w, int, 16), f"{w}.time_steps"),
    )
    check_time_steps(encoding.time_steps, w)

    t = _section(raw, "training", source)
    w = f"{source}: training"
    _check_keys(t, {f.name for f in dataclasses.fields(TrainingConfig)}, w)
    device = _get(t, "device", w, str, "auto")
    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"{w}.device: expected 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    training = TrainingConfig(
        method=_choice(_get(t, "method", w, str, "stbp"), METHODS, f"{w}.method"),
        hm2bp=_hm2bp_config(_section(t, "hm2bp", w), f"{w}.hm2bp"),
        mpbp=_mpbp_config(_section(t, "mpbp", w), f"{w}.mpbp"),
        lee2019=_lee2019_config(_section(t, "lee2019", w), f"{w}.lee2019"),
        optimizer=_choice(_get(t, "optimizer", w, str, "adam"), OPTIMIZERS, f"{w}.optimizer"),
        weight_decay=_within(_get(t, "weight_decay", w, float, 0.0), 0.0, 1.0, f"{w}.weight_decay"),
        epochs=_size(_get(t, "epochs", w, int, 10), MAX_DIMENSION, f"{w}.epochs"),
        batch_size=_size(_get(t, "batch_size", w, int, 64), MAX_DIMENSION, f"{w}.batch_size"),
        learning_rate=_finite_positive(_get(t, "learning_rate", w, float, 1e-3), f"{w}.learning_rate"),
        lr_schedule=_choice(_get(t, "lr_schedule", w, str, "constant"), LR_SCHEDULES, f"{w}.lr_schedule"),
        loss=_choice(_get(t, "loss", w, str, "mse"), LOSSES, f"{w}.loss"),
        device=device,
        eval_seed=_seed(_get(t, "eval_seed", w, int, 12345), f"{w}.eval_seed"),
    )
    _check_method_network(model, training, encoding.time_steps, source)
    return RunConfig(
        model=model,
        data=data,
        encoding=encoding,
        training=training,
        seed=_seed(_get(raw, "seed", source, int, 0), f"{source}: seed"),
        output_dir=_get(raw, "output_dir", source, str, "runs/default"),
        source=source,
    )


def load_config(path: str | Path) -> RunConfig:
    """Reads and validates a YAML run config (netgraph.yaml_input bounds the YAML itself)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return config_from_dict(read_yaml(path, "run config", ConfigError), str(path))


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
    return config_from_dict(raw, f"{config.source} (with command-line overrides)")
