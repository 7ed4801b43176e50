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


@dataclass
class NetworkOutput:
    """Spike trains of every layer, each (batch, time, neurons); the last is the output."""

    layer_spikes: list[torch.Tensor]

    @property
    def output_spikes(self) -> torch.Tensor:
        return self.layer_spikes[-1]

    @property
    def output_rates(self) -> torch.Tensor:
        """Mean output spike rate over time (batch, classes), the paper's decoded output."""
        return self.output_spikes.mean(dim=1)


class SpikingNetwork(nn.Module):
    """A feed-forward STBP network. Input spikes (batch, time, *input_shape) are flattened
    (C-order) before the first dense layer."""

    def __init__(self, model: ModelConfig, input_shape: tuple[int, ...], seed: int | None = None):
        super().__init__()
        self.config = model
        self.input_shape = tuple(input_shape)
        self.surrogate = Surrogate(model.surrogate, model.surrogate_width)
        features = math.prod(self.input_shape)
        layers = []
        for layer in model.layers:
            if layer.type != "dense":
                raise ValueError(f"layer type {layer.type!r} is not supported")
            layers.append(SpikingDense(features, layer.units, layer_lif_parameters(layer, model)))
            features = layer.units
        self.layers = nn.ModuleList(layers)
        if model.init == "paper":
            generator = torch.Generator().manual_seed(seed or 0)
            for layer in self.layers:
                paper_init_(layer.weight, generator)
                nn.init.zeros_(layer.bias)

    @property
    def num_outputs(self) -> int:
        return self.config.layers[-1].units

    def forward(self, input_spikes: torch.Tensor) -> NetworkOutput:
        if tuple(input_spikes.shape[2:]) != self.input_shape:
            raise ValueError(
                f"input spikes have shape {tuple(input_spikes.shape)}; expected "
                f"(batch, time, {', '.join(map(str, self.input_shape))})"
            )
        x = input_spikes.flatten(2)
        recorded = []
        for layer in self.layers:
            x = layer(x, self.surrogate, self.config.temporal_gradient)
            recorded.append(x)
        return NetworkOutput(recorded)


def predict(output_spikes: torch.Tensor) -> torch.Tensor:
    """Class with the most output spikes; ties go to the lowest class index.

    output_spikes: (batch, time, classes), any numeric dtype. Every backend decodes with
    this rule so that predictions are comparable.
    """
    counts = output_spikes.sum(dim=1)
    return counts.argmax(dim=1)
