"""lava-dl netx HDF5 export: the file `lava.lib.dl.netx.hdf5.Network` (lava-dl 0.6.0) loads,
so a network can run through netx on a Loihi 2 board, spike for spike as our emulator.

What netx does with each HDF5 field (lava/lib/dl/netx/hdf5.py, blocks/process.py, utils.py)
and how an exported network is made to survive it unchanged:

    neuron 'CUBA'  Lava's LIF (LIFReset when loaded with reset_interval) with vth = vThMant,
                   du = iDecay - 1, dv = vDecay; refDelay and gradedSpike are not read.
                   We write iDecay = du + 1 (4096: the current decays fully, STBP's input).
    bias           bias_mant = int(bias) with bias_exp fixed at 6: our effective bias
                   bias_mant << bias_exp must be a multiple of 64 with a 13-bit mantissa,
                   which `quantize_graph(..., netx=True)` guarantees (bias exponent 6).
    dense weight   read as integers; netx derives its own exponent e and shifts the weights
                   left by -e (utils.optimize_weight_bits), then Lava's bit-accurate Dense
                   clips them to 8 bits in the sign mode it infers from the values, drops low
                   bits and shifts the synaptic sum right by -e. `netx_dense_arithmetic`
                   mirrors that; the export requires it to hand back our weights << -e, so
                   the sum is ours exactly. It is not for: all-zero weights (netx divides by
                   the largest weight and crashes), weights that are all <= 0 with a largest
                   magnitude that is a power of two (netx scales them to -256, Lava's
                   inhibitory range ends at -255), and a largest weight of 255, which
                   lava-dl#170 reports loading as zeros (0.6.0 on Lava's CPU models computes
                   it exactly, but a board's netx may not; `netx=True` caps weights at 254).
                   There is no weight-exponent field (wgtExp is not read): weight_exp must be 0.
    conv weight    (out, in, kh, kw), PyTorch's layout: netx flips the kernel and transposes
                   it to Lava's (out, x, y, in), and Lava's Conv convolves (flips it back), so
                   the result is our cross-correlation (the transposition reported in
                   lava-dl#260 concerns slayer's own layout; tests/test_netx.py proves ours on
                   a non-square kernel and map). Lava's fixed-point Conv neither clips nor
                   shifts, so only weight_exp = 0 is needed. Maps are (x, y, c) = (W, H, C) in
                   Lava: conv biases are written (W, H, C), a 'flatten' layer before a dense
                   makes netx read the map back in our (C, H, W) C order.
    layers         netx builds a chain: input, then one block per layer, each fed by the one
                   before. Pools, averages, concatenation raise NotImplementedError there, and
                   there is no way to add two synapses into one population, so a network
                   that is not such a chain is refused (`NetxExportError`, naming the node).

Timing (the same pipeline as lava_backend.runner): netx's Network has no input neurons (the
'input' layer holds only a shape), so Network.inp is the first synapse's input. With sample
k's step j arriving there at Lava step k T + j + 1 (steps count from 1), the Dense delivers
it one step later, so layer i (0 = first) integrates it at step k T + j + 2 + i. netx gives
layer i the LIFReset offset reset_offset + 1 + i (hdf5.Network._create), so loading with
reset_interval = T, reset_offset = 1 (`netx_load_arguments`) zeroes u and v exactly when a
sample's first input reaches each layer, as the emulator starts every sample from zero.
Layer i's spikes for sample k, step j leave at step k T + j + 2 + i (row k T + j + 1 + i of
a recording from step 1), and a run of S samples needs S T + layers steps.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from export.hw_config import lava_arithmetic_mismatch
from export.network import ExportedNetwork
from export.validate import ExportRangeError, validate_network
from netgraph import LIF, AvgPool2d, Conv2d, Dense, Graph, Output, Sum, Synapse
from netgraph.provenance import atomic_write, package_versions

NETX_BIAS_EXP = 6  # netx/hdf5.py get_neuron_params: 'bias_exp': 6 for CUBA neurons
NETX_WEIGHT_MAX = 254  # never 255 (lava-dl#170); netx also clips mixed-sign weights above 254
NETX_RESET_OFFSET = 1  # with input from Lava step 1, see the module docstring
_LIF_BIAS_MANT = (-(1 << 12), (1 << 12) - 1)  # Lava LIF bias_mant: int16 with precision 13


class NetxExportError(ExportRangeError):
    """netx cannot express the network exactly; the message names the node and the reason
    (an ExportRangeError, so a ValueError: the CLI's export errors)."""


def netx_load_arguments(network: ExportedNetwork) -> dict[str, int]:
    """Keyword arguments of `lava.lib.dl.netx.hdf5.Network` that reset every layer between
    samples in step with the input (sample k, step j fed at Lava step k T + j + 1)."""
    return {"reset_interval": int(network.time_steps), "reset_offset": NETX_RESET_OFFSET}


# --------------------------------------------------------------------------- netx's arithmetic


def _lava_dense_weights(weight: np.ndarray, sign_mode: str, num_weight_bits: int) -> np.ndarray | None:
    """Lava's Dense weight preparation (clip_weights(num_bits=8), truncate_weights) of netx's
    shifted weights, or None where Lava would shift by a negative count (undefined in numpy)."""
    mixed, inhibitory = sign_mode == "mixed", sign_mode == "inhibitory"
    w = -weight if inhibitory else weight.copy()
    w = np.clip(w, -256 if mixed else 0, 255)
    dropped = 8 - num_weight_bits + int(mixed)
    if dropped < 0:
        return None
    w = (w >> dropped) << dropped
    return -w if inhibitory else w


def netx_dense_arithmetic(weight: np.ndarray) -> tuple[np.ndarray | None, int]:
    """What netx (lava-dl 0.6.0) and Lava 0.10.0's Dense make of an HDF5 weight matrix:
    (effective weights int64 (out, in) or None if undefined, exponent e <= 0); the synaptic
    sum is (effective @ spikes) >> -e. Mirrors netx/utils.py optimize_weight_bits, then
    lava/utils/weightutils.py determine_sign_mode, clip_weights and truncate_weights.
    Raises ValueError where netx itself fails (all weights zero: it divides by the largest)."""
    w = np.asarray(weight).astype(np.int64)
    high, low = int(w.max()), int(w.min())
    if high > 254 and low < 0:  # netx clips, warning on stdout
        w = np.clip(w, -256, 254)
        high = int(w.max())
    if low < -256 and high > 0:
        w = np.clip(w, -256, 254)
        low = int(w.min())
    if high == 0 and low == 0:
        raise NetxExportError("every weight is zero: netx's optimize_weight_bits divides by the largest weight")
    signed = int(high >= 0 and low < 0)
    if high < 0:
        scale = -256 / low
    elif low >= 0:
        scale = 255 / high
    else:
        scale = min(127 / high if high > 0 else math.inf, -128 / low)
    scale_bits = math.floor(math.log2(scale)) + signed
    n = 8
    while n > 0 and np.any(w % (1 << n)):
        n -= 1
    num_weight_bits = 8 - scale_bits - (n - signed)
    if scale_bits < 0:  # a weight outside 8 bits: numpy's shift by a negative count is undefined
        return None, -scale_bits
    shifted = w << scale_bits
    lava_mode = "excitatory" if shifted.min() >= 0 else "inhibitory" if shifted.max() <= 0 else "mixed"
    return _lava_dense_weights(shifted, lava_mode, num_weight_bits), -scale_bits


def _check_dense_weights(name: str, weight: np.ndarray) -> None:
    w = np.asarray(weight, np.int64)
    if w.size and int(w.max()) == 255:
        raise NetxExportError(f"node {name}: its largest weight is 255, which lava-dl#170 reports netx loading as "
                              f"zeros; quantize with netx=True (weights capped at {NETX_WEIGHT_MAX})")
    try:
        effective, exponent = netx_dense_arithmetic(w)
    except ValueError as exc:
        raise NetxExportError(f"node {name}: {exc}") from None
    if effective is not None and np.array_equal(effective, w << -exponent):
        return
    if w.max() <= 0:
        raise NetxExportError(f"node {name}: every weight is <= 0 and the largest magnitude {-int(w.min())} is a "
                              "power of two: netx scales it to -256, which Lava's inhibitory Dense clips to -255")
    raise NetxExportError(f"node {name}: netx would change these weights (range [{w.min()}, {w.max()}]) when "
                          "fitting them to 8 bits")


# --------------------------------------------------------------------------- what netx can express


def _only_consumer(graph: Graph, name: str) -> str:
    edges = graph.consumers_of(name)
    if len(edges) != 1:
        targets = ", ".join(e.target for e in edges) or "nothing"
        raise NetxExportError(f"node {name}: read by {targets}; netx builds a chain in which every layer feeds "
                              "exactly one next layer (no branches or skip connections)")
    return edges[0].target


def _refuse_node(node) -> None:
    if isinstance(node, AvgPool2d):
        raise NetxExportError(f"node {node.name}: average pool not folded into the next synapse; netx has no pool "
                              "layer (it raises NotImplementedError); quantize_graph folds pools")
    if isinstance(node, Sum):
        raise NetxExportError(f"node {node.name}: adds several synapses into one population (a skip connection or "
                              "recurrence); netx has one synapse per layer")
    if not isinstance(node, (Dense, Conv2d)):
        raise NetxExportError(f"node {node.name}: a {node.kind} where netx expects a Dense or Conv2d synapse")


def netx_chain(graph: Graph) -> list[tuple[Synapse, LIF]]:
    """(synapse, population) of every layer, input to output; raises NetxExportError naming
    the node where the graph is not the single chain of Dense/Conv2d layers netx builds."""
    for edge in graph.edges:
        if edge.recurrent:
            raise NetxExportError(f"recurrent edge {edge.source} -> {edge.target}: netx's layer chain has no "
                                  "recurrent connections")
    chain: list[tuple[Synapse, LIF]] = []
    current = graph.input.name
    while True:
        target = graph.node(_only_consumer(graph, current))
        if isinstance(target, Output):
            break
        _refuse_node(target)
        population = graph.node(_only_consumer(graph, target.name))
        if not isinstance(population, LIF):
            _refuse_node(population)
        if len(graph.inputs_of(population.name)) != 1:
            raise NetxExportError(f"node {population.name}: several synapses feed it; netx has one per layer")
        chain.append((target, population))
        current = population.name
    if not chain or chain[-1][1].name != graph.output_population.name:
        raise NetxExportError("the output must read the last population of the chain")
    if len(chain) != len(graph.populations):
        stray = sorted({p.name for p in graph.populations} - {p.name for _, p in chain})
        raise NetxExportError(f"node {stray[0]}: not on the chain from input to output; netx builds a single chain")
    return chain


def _netx_bias(population: LIF) -> np.ndarray:
    """The bias mantissa netx needs (exponent 6), or NetxExportError naming the population."""
    q = population.quantized
    effective = np.asarray(q.bias_mant, np.int64) << int(q.bias_exp)
    if np.any(effective % (1 << NETX_BIAS_EXP)):
        raise NetxExportError(f"node {population.name}: bias_mant << bias_exp (bias_exp {q.bias_exp}) is not a "
                              f"multiple of 2^{NETX_BIAS_EXP}; netx fixes the bias exponent at {NETX_BIAS_EXP} and "
                              "would round it: quantize with netx=True")
    mantissa = effective >> NETX_BIAS_EXP
    if mantissa.size and (mantissa.min() < _LIF_BIAS_MANT[0] or mantissa.max() > _LIF_BIAS_MANT[1]):
        raise NetxExportError(f"node {population.name}: bias mantissa at exponent {NETX_BIAS_EXP} spans "
                              f"[{mantissa.min()}, {mantissa.max()}], outside Lava's 13 bits {list(_LIF_BIAS_MANT)}")
    return mantissa


def _check_synapse(synapse: Synapse) -> None:
    q = synapse.quantized
    if q.weight_exp != 0:
        raise NetxExportError(f"node {synapse.name}: weight_exp {q.weight_exp}; netx has no weight-exponent field "
                              "(it derives its own), so only 0 is exact")
    if isinstance(synapse, Dense):
        _check_dense_weights(synapse.name, q.weight)


def check_netx(network: ExportedNetwork) -> list[tuple[Synapse, LIF]]:
    """Raises NetxExportError (one line, naming the node) unless netx reproduces `network`
    exactly; returns its layers as (synapse, population), input to output."""
    if network.graph.output.readout != "spikes":
        raise NetxExportError(f"node {network.graph.output.name}: this network is read through its output "
                              "population's potential (readout 'potential'), which a netx network's spike output "
                              "does not carry; export it without netx (the artifact and Lava backend read it)")
    chain = netx_chain(network.graph)  # structure first: an unfolded pool is named as such
    validate_network(network)
    hw = network.hardware
    mismatch = lava_arithmetic_mismatch(hw)  # netx builds Lava's own LIF and Dense
    if mismatch:
        raise NetxExportError(f"{mismatch}; netx builds those models")
    for synapse, population in chain:
        _check_synapse(synapse)
        _netx_bias(population)
    return chain


# --------------------------------------------------------------------------- the HDF5 file


def _neuron(population: LIF) -> dict[str, Any]:
    q = population.quantized
    return {"type": "CUBA", "iDecay": q.du + 1, "vDecay": q.dv, "vThMant": q.vth, "refDelay": 1,
            "gradedSpike": False}


def netx_layers(network: ExportedNetwork) -> list[dict[str, Any]]:
    """The layer descriptions netx reads, in order (after `check_netx`): 'type', 'shape'
    ((C, H, W) or (n,); netx reverses it to Lava's (x, y, c)), and for dense/conv layers
    'weight', 'bias', 'neuron' (and conv 'stride', 'padding', 'dilation', 'groups')."""
    graph = network.graph
    layers: list[dict[str, Any]] = [{"type": "input", "shape": network.input_shape}]
    previous_conv = False
    for synapse, population in check_netx(network):
        bias = _netx_bias(population)
        layer = {"shape": tuple(population.shape), "weight": np.asarray(synapse.quantized.weight, np.int64),
                 "neuron": _neuron(population), "attrs": {"node": synapse.name, "population": population.name,
                                                          "weight_exp": 0, "bias_exp": NETX_BIAS_EXP}}
        if isinstance(synapse, Conv2d):
            # netx broadcasts a bias of the layer's Lava shape (W, H, C) neuron by neuron.
            layer.update(type="conv", bias=bias.reshape(population.shape).transpose(2, 1, 0),
                         stride=int(synapse.stride), padding=int(synapse.padding), dilation=1, groups=1)
        else:
            if previous_conv:  # netx reads a (W, H, C) map back in (C, H, W) C order only after 'flatten'
                layers.append({"type": "flatten", "shape": tuple(graph.read_shape(synapse.name))})
            _, exponent = netx_dense_arithmetic(layer["weight"])
            layer.update(type="dense", bias=bias)
            layer["attrs"]["netx_weight_exp"] = exponent
        previous_conv = isinstance(synapse, Conv2d)
        layers.append(layer)
    return layers


def _write_layer(group, layer: dict[str, Any]) -> None:
    group.create_dataset("type", data=np.array([layer["type"].encode("ascii")], dtype="S10"))
    group.create_dataset("shape", data=np.asarray(layer["shape"], np.int64))
    for key in ("weight", "bias", "stride", "padding", "dilation", "groups"):
        if key in layer:
            group.create_dataset(key, data=np.asarray(layer[key], np.int64))
    if "neuron" in layer:
        neuron = group.create_group("neuron")
        for key, value in layer["neuron"].items():
            data = np.array([value.encode("ascii")], dtype="S10") if isinstance(value, str) else value
            neuron.create_dataset(key, data=data)
    # Attributes: netx reads datasets only (utils.NetDict), so these travel unseen by it.
    for key, value in layer.get("attrs", {}).items():
        group.attrs[key] = value


def write_netx(network: ExportedNetwork, handle) -> list[dict[str, Any]]:
    """Writes `network` as a lava-dl netx HDF5 file into the open binary `handle` (read-write),
    after `check_netx`. Root attributes (ignored by netx) record our provenance:
    'stbp_metadata' (JSON of the network's metadata), 'stbp_versions', 'time_steps', 'encoding',
    'eval_seed', 'hardware', and the Network arguments 'netx_reset_interval' /
    'netx_reset_offset'. Returns the layer descriptions written."""
    layers = netx_layers(network)
    load = netx_load_arguments(network)
    with h5py.File(handle, "w") as f:
        root = f.create_group("layer")
        for index, layer in enumerate(layers):
            _write_layer(root.create_group(str(index)), layer)
        f.attrs.update({
            "stbp_metadata": json.dumps(network.metadata, default=str),
            "stbp_versions": json.dumps(package_versions()),
            "time_steps": network.time_steps, "encoding": network.encoding, "eval_seed": network.eval_seed,
            "hardware": network.hardware.name, "netx_reset_interval": load["reset_interval"],
            "netx_reset_offset": load["reset_offset"],
        })
    return layers


def save_netx(network: ExportedNetwork, path: str | Path) -> list[dict[str, Any]]:
    """`write_netx` into `path`, atomically."""
    with atomic_write(path, "w+b") as handle:
        return write_netx(network, handle)


# --------------------------------------------------------------------------- running a file on Lava


def _lava_layout(rows: np.ndarray, lava_shape: tuple[int, ...]) -> np.ndarray:
    """Input rows (rows, *our shape) -> (*lava_shape, rows) int32: flattened in C order for a
    dense first layer, a (C, H, W) map as (W, H, C) for a conv."""
    rows = rows.reshape(len(rows), -1) if len(lava_shape) == 1 else rows.transpose(0, 3, 2, 1)
    return np.ascontiguousarray(np.moveaxis(rows, 0, -1)).astype(np.int32)


def _our_layout(recorded: np.ndarray) -> np.ndarray:
    """A recording (*Lava shape, steps) -> (steps, neurons), neurons in our (C, H, W) C order."""
    rows = np.moveaxis(np.asarray(recorded), -1, 0)
    if rows.ndim == 4:
        rows = rows.transpose(0, 3, 2, 1)
    return rows.reshape(rows.shape[0], -1)


def run_netx(path: str | Path, input_spikes: np.ndarray, record: str = "all") -> tuple[dict[int, np.ndarray], float]:
    """Loads a netx file with lava-dl and runs `input_spikes` (samples, T, *input_shape) of 0/1
    through it on Lava's CPU simulator (fixed_pt): samples back to back, each layer reset in
    step with its input (`netx_load_arguments`), input and recordings through Lava's own
    RingBuffer processes. Returns ({layer index (0 = first population): uint8 (samples, T,
    neurons), neurons in our (C, H, W) C order} for every layer ('all') or the last
    ('output'), seconds the run took (building excluded, reading the recordings included)).
    In a process that set a multiprocessing start method, call
    lava_backend.runner.import_lava() first (Lava sets 'fork' when imported)."""
    from lava.lib.dl.netx.hdf5 import Network  # lava-dl: loaded only when a netx file is run
    from lava.magma.core.run_conditions import RunSteps  # lava: (same)
    from lava.magma.core.run_configs import Loihi2SimCfg  # (same)
    from lava.proc.io.sink import RingBuffer as Sink  # (same)
    from lava.proc.io.source import RingBuffer as Source  # (same)

    spikes = np.asarray(input_spikes)
    samples, steps = spikes.shape[:2]
    network = Network(net_config=str(path), reset_interval=steps, reset_offset=NETX_RESET_OFFSET)
    recorded = range(len(network.layers)) if record == "all" else [len(network.layers) - 1]
    total = samples * steps + len(network.layers)  # the last layer's last step leaves at row S T + layers - 1
    rows = np.zeros((total, *spikes.shape[2:]), spikes.dtype)
    rows[: samples * steps] = spikes.reshape(samples * steps, *spikes.shape[2:])
    source = Source(data=_lava_layout(rows, tuple(network.inp.shape)))
    source.s_out.connect(network.inp)
    sinks = {}
    for index in recorded:
        sinks[index] = Sink(shape=tuple(network.layers[index].out.shape), buffer=total)
        network.layers[index].out.connect(sinks[index].a_in)
    started = time.perf_counter()
    try:
        network.run(condition=RunSteps(num_steps=total), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        data = {index: sink.data.get() for index, sink in sinks.items()}
    finally:
        network.stop()
    wall = time.perf_counter() - started
    # Layer i's spikes for sample k, step j sit in row k T + j + 1 + i (module docstring).
    spikes_of = {}
    for index, recording in data.items():
        rows = _our_layout(recording)[1 + index : 1 + index + samples * steps]
        spikes_of[index] = rows.reshape(samples, steps, -1).astype(np.uint8)
    return spikes_of, wall
