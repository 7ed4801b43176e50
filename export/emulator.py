"""Bit-exact emulator of the deployed network: Loihi's integer dynamics, batched.

It reads the artifact (not the training code), starts every sample from zero state and
has no pipeline delay between layers: layer l at step t sees layer l-1's spikes of step
t, as in the trained network. (Lava's Dense adds one step of delay per layer; the Lava
backend re-aligns its outputs to this timing.) The arithmetic is `export.fixed_point`,
run with numpy on the CPU or torch on a GPU.

The synaptic sums are computed as a float matrix product, which is exact because every
partial sum is an integer below 2^24 (float32) or 2^53 (float64); the bound is checked
per layer and the wider type used when needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.artifact import ExportedLayer, ExportedNetwork
from export.conv import conv_accumulate
from export.fixed_point import FixedLIFParameters, effective_weights, lif_fixed_step, shift_activation

FLOAT32_EXACT = 1 << 24


def predict_classes(output_spikes: np.ndarray) -> np.ndarray:
    """Class with the most output spikes, ties to the lowest index: output_spikes (samples,
    T, classes) -> (samples,). The decoding of every deployed backend (emulator, Lava, the
    fidelity harness); trainer.network.predict applies the same rule to torch tensors."""
    return np.asarray(output_spikes).sum(axis=1, dtype=np.int64).argmax(axis=1)


@dataclass
class EmulationResult:
    """Spikes of every layer, each uint8 (samples, time, neurons); the last is the output."""

    layer_spikes: list[np.ndarray]

    @property
    def output_spikes(self) -> np.ndarray:
        return self.layer_spikes[-1]

    @property
    def predictions(self) -> np.ndarray:
        return predict_classes(self.output_spikes)


def _layer_constants(layer: ExportedLayer, network: ExportedNetwork):
    weights = effective_weights(layer.weights, layer.sign_mode, layer.num_weight_bits, network.hardware)
    bound = int(np.abs(weights).reshape(weights.shape[0], -1).sum(axis=1).max(initial=0))
    dtype = np.float32 if bound < FLOAT32_EXACT else np.float64
    return weights, dtype


def _emulate_batch_numpy(network: ExportedNetwork, spikes: np.ndarray, constants) -> list[np.ndarray]:
    batch, steps = spikes.shape[:2]
    x = spikes.reshape(batch, steps, -1)
    out = []
    for layer, (weights, dtype) in zip(network.layers, constants):
        if layer.kind == "conv":
            sums = conv_accumulate(x.reshape(batch * steps, -1), weights, layer.geometry, dtype)
            accumulated = np.rint(sums).astype(np.int64).reshape(batch, steps, -1)
        else:
            accumulated = np.rint(x.astype(dtype) @ weights.T.astype(dtype)).astype(np.int64)
        activation = shift_activation(accumulated, layer.weight_exp)
        params = FixedLIFParameters(layer.du, layer.dv, layer.vth, layer.bias_mant.astype(np.int64), layer.bias_exp)
        u = np.zeros((batch, layer.out_features), dtype=np.int64)
        v = np.zeros_like(u)
        layer_out = np.empty((batch, steps, layer.out_features), dtype=np.uint8)
        for t in range(steps):
            s, u, v = lif_fixed_step(activation[:, t], u, v, params, network.hardware, np)
            layer_out[:, t] = s
        out.append(layer_out)
        x = layer_out
    return out


def _emulate_batch_torch(network: ExportedNetwork, spikes: np.ndarray, constants, device) -> list[np.ndarray]:
    import torch

    batch, steps = spikes.shape[:2]
    x = torch.from_numpy(spikes.reshape(batch, steps, -1)).to(device)
    out = []
    for layer, (weights, dtype) in zip(network.layers, constants):
        tdtype = torch.float32 if dtype == np.float32 else torch.float64
        if layer.kind == "conv":
            kernel = torch.from_numpy(weights).to(device=device, dtype=tdtype)
            maps = x.reshape(batch * steps, *layer.in_shape).to(tdtype)
            sums = torch.nn.functional.conv2d(maps, kernel, stride=layer.stride, padding=layer.padding)
            accumulated = torch.round(sums).to(torch.int64).reshape(batch, steps, -1)
        else:
            w = torch.from_numpy(weights.T.copy()).to(device=device, dtype=tdtype)
            accumulated = torch.round(x.to(tdtype) @ w).to(torch.int64)
        activation = shift_activation(accumulated, layer.weight_exp)
        bias = torch.from_numpy(layer.bias_mant.astype(np.int64)).to(device)
        params = FixedLIFParameters(layer.du, layer.dv, layer.vth, bias, layer.bias_exp)
        u = torch.zeros((batch, layer.out_features), dtype=torch.int64, device=device)
        v = torch.zeros_like(u)
        layer_out = torch.empty((batch, steps, layer.out_features), dtype=torch.uint8, device=device)
        for t in range(steps):
            s, u, v = lif_fixed_step(activation[:, t], u, v, params, network.hardware, torch)
            layer_out[:, t] = s
        out.append(layer_out.cpu().numpy())
        x = layer_out
    return out


def emulate(network: ExportedNetwork, input_spikes: np.ndarray, backend: str = "numpy",
            device: str | None = None, batch_size: int = 256, progress: bool = False) -> EmulationResult:
    """Runs the integer network on input spikes (samples, time, *input_shape) of 0/1.

    backend: 'numpy' (CPU) or 'torch' (device 'cuda' or 'cpu'). Both give identical spikes.
    """
    spikes = np.asarray(input_spikes)
    expected = (network.time_steps, *network.input_shape)
    if spikes.ndim < 2 or tuple(spikes.shape[1:]) != expected:
        raise ValueError(f"input spikes have shape {spikes.shape}; expected (samples, {', '.join(map(str, expected))})")
    if len(spikes) == 0:
        raise ValueError("no samples to emulate")
    if np.any(spikes > 1) or np.any(spikes < 0):
        raise ValueError("input spikes must be 0 or 1")
    if backend not in ("numpy", "torch"):
        raise ValueError(f"unknown emulator backend {backend!r}; choose 'numpy' or 'torch'")
    constants = [_layer_constants(layer, network) for layer in network.layers]
    chunks: list[list[np.ndarray]] = []
    starts = range(0, len(spikes), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="emulator", unit="batch", leave=False)
    for start in starts:
        batch = spikes[start : start + batch_size].astype(np.uint8)
        if backend == "numpy":
            chunks.append(_emulate_batch_numpy(network, batch, constants))
        else:
            chunks.append(_emulate_batch_torch(network, batch, constants, device or "cpu"))
    return EmulationResult([np.concatenate([c[i] for c in chunks]) for i in range(len(network.layers))])
