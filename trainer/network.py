"""Spiking networks built from a layer list: synapses + STBP LIF neurons.

The layer list (`ModelConfig.layers`) is the deployable description: each entry is a
synaptic operation whose output feeds a population of LIF neurons. The network is
feed-forward, so each layer's synaptic input for all time steps is one batched
operation, followed by the LIF recurrence over time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from trainer.config import LayerConfig, ModelConfig
from trainer.neuron import LIFParameters, lif_sequence
from trainer.surrogate import Surrogate


def layer_lif_parameters(layer: LayerConfig, model: ModelConfig) -> LIFParameters:
    """The LIF constants of one layer: its overrides, else the network-wide values."""
    return LIFParameters(
        tau=model.tau if layer.tau is None else layer.tau,
        v_threshold=model.v_threshold if layer.v_threshold is None else layer.v_threshold,
    )


def paper_init_(weight: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Wu et al. 2018 eqs. 29-30: W ~ U[-1, 1], then each row (one post-synaptic neuron's
    fan-in) divided by its L2 norm, so every neuron starts with a unit-norm weight vector."""
    with torch.no_grad():
        weight.uniform_(-1.0, 1.0, generator=generator)
        norms = weight.flatten(1).norm(dim=1).clamp_min(1e-12)
        weight.div_(norms.view(-1, *([1] * (weight.dim() - 1))))


class SpikingDense(nn.Module):
    """Fully connected synapses x = W o + b feeding STBP LIF neurons.

    weight: (out_features, in_features); bias: (out_features,), both in potential units
    per input spike.
    """

    def __init__(self, in_features: int, out_features: int, lif: LIFParameters):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.lif = lif
        # PyTorch's nn.Linear default initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self, spikes: torch.Tensor, surrogate: Surrogate, temporal_gradient: bool
    ) -> torch.Tensor:
        """spikes: (batch, time, in_features) -> (batch, time, out_features)."""
        synaptic_input = F.linear(spikes, self.weight)
        out, _ = lif_sequence(synaptic_input, self.lif, surrogate, self.bias, temporal_gradient)
        return out


class SpikingConv2d(nn.Module):
    """2-D convolution x = K * o (cross-correlation, zero padding) feeding STBP LIF neurons.

    weight: (out_channels, in_channels, k, k); bias: (out_channels,), one per feature map,
    in potential units per input spike.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 lif: LIFParameters):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.stride, self.padding, self.lif = stride, padding, lif
        # PyTorch's nn.Conv2d default initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, spikes: torch.Tensor, surrogate: Surrogate, temporal_gradient: bool) -> torch.Tensor:
        """spikes: (batch, time, C, H, W) -> (batch, time, out_channels, H', W')."""
        batch, steps = spikes.shape[:2]
        synaptic_input = F.conv2d(spikes.flatten(0, 1), self.weight, stride=self.stride, padding=self.padding)
        synaptic_input = synaptic_input.unflatten(0, (batch, steps))
        bias = self.bias.view(-1, 1, 1)
        out, _ = lif_sequence(synaptic_input, self.lif, surrogate, bias, temporal_gradient)
        return out


class AveragePool2d(nn.Module):
    """Average of non-overlapping k x k windows of spike maps (paper section 3.2.2): no
    neurons; its output, a fraction of spikes, feeds the next layer's synapses."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, spikes: torch.Tensor, surrogate: Surrogate, temporal_gradient: bool) -> torch.Tensor:
        batch, steps = spikes.shape[:2]
        pooled = F.avg_pool2d(spikes.flatten(0, 1), self.kernel_size)
        return pooled.unflatten(0, (batch, steps))


def layer_shapes(model: ModelConfig, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Output shape of every configured layer (C, H, W) or (features,); raises ValueError
    naming the layer when a layer does not fit its input."""
    shape = tuple(input_shape)
    shapes = []
    for i, layer in enumerate(model.layers):
        where = f"model.layers[{i}] ({layer.type})"
        if layer.type == "dense":
            shape = (layer.units,)
        else:
            if len(shape) == 2:
                shape = (1, *shape)
            if len(shape) != 3:
                raise ValueError(f"{where}: needs a (channels, height, width) input, got {shape}")
            c, h, w = shape
            k = layer.kernel_size
            if layer.type == "conv":
                oh = (h + 2 * layer.padding - k) // layer.stride + 1
                ow = (w + 2 * layer.padding - k) // layer.stride + 1
                if oh < 1 or ow < 1:
                    raise ValueError(f"{where}: kernel {k} does not fit the {h}x{w} input")
                shape = (layer.channels, oh, ow)
            else:
                if h % k or w % k:
                    raise ValueError(f"{where}: pool size {k} must divide the {h}x{w} map (folding into the "
                                     f"next layer is exact only then)")
                shape = (c, h // k, w // k)
        shapes.append(shape)
    return shapes


@dataclass
class NetworkOutput:
    """Spike trains of every spiking layer (dense, conv; not avgpool), each (batch, time,
    neurons) with conv maps flattened in C order; the last is the output."""

    layer_spikes: list[torch.Tensor]

    @property
    def output_spikes(self) -> torch.Tensor:
        return self.layer_spikes[-1]

    @property
    def output_rates(self) -> torch.Tensor:
        """Mean output spike rate over time (batch, classes), the paper's decoded output."""
        return self.output_spikes.mean(dim=1)


class SpikingNetwork(nn.Module):
    """A feed-forward STBP network. Input spikes (batch, time, *input_shape); inputs of shape
    (H, W) are taken as one channel; every dense layer flattens its input in C order.

    `layers` follows `model.layers` index for index (avgpool entries have no parameters), so
    checkpoint keys are `layers.{i}.weight` / `layers.{i}.bias` with i the config index.
    """

    def __init__(self, model: ModelConfig, input_shape: tuple[int, ...], seed: int | None = None):
        super().__init__()
        self.config = model
        self.input_shape = tuple(input_shape)
        self.surrogate = Surrogate(model.surrogate, model.surrogate_width)
        self.shapes = layer_shapes(model, self.input_shape)
        previous = self.input_shape if len(self.input_shape) != 2 else (1, *self.input_shape)
        layers = []
        for layer, shape in zip(model.layers, self.shapes):
            lif = layer_lif_parameters(layer, model)
            if layer.type == "dense":
                layers.append(SpikingDense(math.prod(previous), layer.units, lif))
            elif layer.type == "conv":
                layers.append(SpikingConv2d(previous[0], layer.channels, layer.kernel_size, layer.stride,
                                            layer.padding, lif))
            else:
                layers.append(AveragePool2d(layer.kernel_size))
            previous = shape
        self.layers = nn.ModuleList(layers)
        if model.init == "paper":
            generator = torch.Generator().manual_seed(seed or 0)
            for layer in self.layers:
                if isinstance(layer, (SpikingDense, SpikingConv2d)):
                    paper_init_(layer.weight, generator)
                    nn.init.zeros_(layer.bias)

    @property
    def num_outputs(self) -> int:
        return math.prod(self.shapes[-1])

    def forward(self, input_spikes: torch.Tensor) -> NetworkOutput:
        if tuple(input_spikes.shape[2:]) != self.input_shape:
            raise ValueError(
                f"input spikes have shape {tuple(input_spikes.shape)}; expected "
                f"(batch, time, {', '.join(map(str, self.input_shape))})"
            )
        x = input_spikes if len(self.input_shape) != 2 else input_spikes.unsqueeze(2)
        recorded = []
        for config, layer in zip(self.config.layers, self.layers):
            if config.type == "dense":
                x = x.flatten(2)
            x = layer(x, self.surrogate, self.config.temporal_gradient)
            if config.spiking:
                recorded.append(x.flatten(2))
        return NetworkOutput(recorded)


def predict(output_spikes: torch.Tensor) -> torch.Tensor:
    """Class with the most output spikes; ties go to the lowest class index.

    output_spikes: (batch, time, classes), any numeric dtype. Every backend decodes with
    this rule so that predictions are comparable.
    """
    counts = output_spikes.sum(dim=1)
    return counts.argmax(dim=1)
