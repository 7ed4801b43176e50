"""Deep spike-based backpropagation: Lee, Sarwar, Panda, Srinivasan & Roy, "Enabling Spike-Based
Backpropagation for Training Deep Neural Network Architectures", Front. Neurosci. 14:119 (2020),
arXiv:1903.06379, on any feed-forward network graph (VGG- and ResNet-style included).

Sources. The paper's abstract and its dropout paragraph were readable here, and the authors' code
(github.com/chan8972/Enabling_Spikebased_Backpropagation: src/mnist_LeNet.py, cifar10_VGG9.py,
cifar10_ResNet11.py), which produced the published models; where this module cites the paper's
rules it follows that code, named by function.

Neuron (the code's LIF_sNeuron, the paper's LIF with hard reset), in the graph's form:
    U[t] = lambda U[t-1] (1 - s[t-1]) + W s_in[t],   s[t] = 1 if U[t] >= Vth,
which is the code's U[t] = V[t-1] + W s_in[t], V[t] = lambda U[t] (1 - s[t]) with the same
spikes (the graph's decay comes before the input instead of after the reset: an identical
sequence), and is trainer.neuron's LIF with tau = lambda, no bias, no synaptic current; its
forward values here are that function's, bit for bit. Only '>' (the code) differs from the
graph's '>=', at potentials exactly at the threshold.
Backward pass (the code's LIF_sNeuron, SpikingNN and grad_cal):
  - the leak is left out of the gradient: dU[t]/dU[t-1] = 1 - s[t-1] (the code's
    `l * V.detach() + V - V.detach()`), and nothing flows through the reset's spike;
  - the spike's derivative is the leak-corrected pass-through of a spiking neuron:
        ds[t]/dU[t] = 1[s[t] = 1] * NG / Vth,
        NG = 1 + ln(lambda) * (sum_t lambda^(T-1-t) s[t]) / (sum_t s[t])   (0 if it never fired),
    the factor the paper derives from the LIF's leaky, low-pass-filtered output spike train
    (lambda = 1, an integrate-and-fire neuron, gives NG = 1). `leak_correction` computes it.
Spiking pooling (the code's Pooling_sNeuron): 2x2 average pools of spikes into integrate-and-fire
neurons (tau 1), threshold 0.75 with '>' on quarter-spike potentials; the graph's '>=' needs a
threshold between 0.75 and 1 for the same spikes (0.875 in the configs: 4 input spikes at
inference, 3 when dropout scales them by 1/(1-p) in training, as in the code).
Output (the code's last layer): non-spiking leaky integrators, output o = V(T) / (Vth T) with
Vth = 1: here the graph's potential readout, o = v[T-1] / T (netgraph.decision: the class with
the highest potential); its gradient ignores the leak too (do/d(W s)[t] = 1/T).
Loss: summed squared error sum_batch sum_k (o_k - y_k)^2 against one-hot labels (the code's
MSELoss(size_average=False); lr therefore scales with the batch).
Dropout (the paper, quoted by SpikingJelly's layer.Dropout): one mask per sample and neuron,
drawn once per batch and held over all T steps, inverted (kept spikes scaled by 1/(1-p)), on
every hidden population's spikes except the pooling neurons'; never at evaluation.
Initialisation: W ~ N(0, gain / fan_in) per synapse, fan_in = in_channels kh kw or in_features
(gain 2 for LeNet/VGG, 1 for ResNet in the code); no biases (held at 0, not trained); fixed
thresholds. Residual blocks (cifar10_ResNet11.py): the block's input spikes reach the block's
second conv population through a 1x1 conv added to its input current, which is the graph's
Sum of two synapses. Optimiser: plain SGD with weight decay 5e-4 in the code (training.optimizer).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from netgraph import LIF, Graph
from trainer.config import Lee2019Config
from trainer.network import ConvSynapse, DenseSynapse, LIFPopulation, NetworkOutput, SpikingNetwork
from trainer.neuron import BackwardRule, LIFParameters, lif_recurrence
from trainer.surrogate import Surrogate


def leak_correction(spikes: torch.Tensor, tau: float) -> torch.Tensor:
    """NG per neuron (module docstring): spikes (batch, time, ...) of 0/1 -> (batch, ...)."""
    steps = spikes.shape[1]
    weights = tau ** torch.arange(steps - 1, -1, -1, dtype=torch.float64, device=spikes.device)
    weights = weights.to(spikes.dtype).view(1, steps, *([1] * (spikes.dim() - 2)))
    filtered = (spikes * weights).sum(dim=1)
    count = spikes.sum(dim=1)
    correction = 1.0 + math.log(tau) * filtered / count.clamp_min(1.0)
    return torch.where(count > 0, correction, torch.zeros_like(correction))


@dataclasses.dataclass(frozen=True)
class FiredOverThreshold:
    """The paper's spike derivative: 1[fired] / Vth (fired: z = u - Vth >= 0, the graph's rule)."""

    v_threshold: float

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return (z >= 0).to(z.dtype) / self.v_threshold

    def kernel_form(self) -> tuple[int, float]:
        return 0, self.v_threshold  # trainer.lif_cpu.surrogate_derivative's kind 0


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `factor` (broadcast)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (factor,) = ctx.saved_tensors
        return grad_output * factor, None


def leak_aware_sequence(current: torch.Tensor, params: LIFParameters, spiking: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's LIF over time, current (batch, time, ...) -> (spikes, potentials).

    Forward values are trainer.neuron.lif_step's (tau_current 0, no bias); the backward pass
    is the paper's (module docstring): no gradient through the leak's factor or the reset's
    spike, 1[fired] NG / Vth through each spike. spiking False: a non-spiking output (no
    spikes, no reset; the potentials carry the gradient)."""
    # The forward is lif_step's (no bias); the gradient passes the leak unscaled (leak_gradient
    # 1: d u[t]/d u[t-1] = 1 - o[t-1]), not through the reset's spike, and through each spike as
    # 1[fired] / Vth. A non-spiking population's Vth is inf: it never fires nor resets.
    if not spiking:
        params = dataclasses.replace(params, v_threshold=math.inf)
    rule = BackwardRule(FiredOverThreshold(params.v_threshold), leak_gradient=1.0, reset_gradient=False)
    spikes_over_time, potentials = lif_recurrence(current, params, rule)
    if spiking:
        factor = leak_correction(spikes_over_time.detach(), params.tau).unsqueeze(1)
        spikes_over_time = _ScaleGradient.apply(spikes_over_time, factor)
    return spikes_over_time, potentials


class LeakAwarePopulation(LIFPopulation):
    """A population trained with the paper's neuron (leak_aware_sequence): no bias (held at 0,
    not trained), and the dropout mask of the current batch applied to its spikes in training
    (`mask`, set per batch by train_step) when it `dropout`s."""

    def __init__(self, node: LIF, graph: Graph, dropout: bool):
        super().__init__(node, graph, Surrogate(), temporal_gradient=True)  # the surrogate is not used
        with torch.no_grad():
            self.bias.zero_()
        self.bias.requires_grad_(False)
        self.dropout = dropout
        self.mask: torch.Tensor | None = None

    def over_time(self, inputs):
        spikes, potentials = leak_aware_sequence(inputs[0], self.params, self.spiking)
        if not self.spiking:
            return potentials
        if self.training and self.mask is not None:
            spikes = spikes * self.mask.unsqueeze(1)
        return spikes

    def step(self, inputs, state):
        raise TypeError("training.method 'lee2019' trains feed-forward networks; a recurrent edge has no rule here")


def _fixed_input(model: SpikingNetwork, population: str) -> bool:
    """A population fed only by synapses whose weights the config fixes (a spiking pool)."""
    return all(synapse.weight is not None for synapse, _ in model.graph.synapses_into(population))


def prepare(model: SpikingNetwork, config: Lee2019Config, seed: int) -> None:
    """Gives every population the paper's neuron (LeakAwarePopulation: no bias) and draws the
    weights (module docstring) from `seed`. Call before building the optimizer."""
    generator = torch.Generator().manual_seed(seed)
    output = model.graph.output_population.name
    for name in model.graph.order:
        module = model.nodes[name]
        if isinstance(module, (DenseSynapse, ConvSynapse)) and isinstance(module.weight, nn.Parameter):
            fan_in = module.weight[0].numel()
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator, dtype=torch.float64)
                                    * math.sqrt(config.init_gain / fan_in))
        elif isinstance(module, LIFPopulation):
            dropout = config.dropout > 0 and name != output and not _fixed_input(model, name)
            model.nodes[name] = LeakAwarePopulation(model.graph.node(name), model.graph, dropout)


def draw_dropout_masks(model: SpikingNetwork, batch: int, config: Lee2019Config,
                       generator: torch.Generator | None, rows: slice = slice(None)) -> None:
    """One inverted-dropout mask per sample and neuron of each population that drops, drawn for
    a batch of `batch` samples; the population keeps the masks of `rows` (a data-parallel
    process draws the whole global batch's masks, the draws one process makes, and keeps its share)."""
    for module in model.nodes.values():
        if isinstance(module, LeakAwarePopulation):
            module.mask = None
    for lif in model.graph.populations:
        module = model.nodes[lif.name]
        if isinstance(module, LeakAwarePopulation) and module.dropout:
            keep = torch.rand((batch, *lif.shape), generator=generator, device=generator.device if generator else None)
            module.mask = ((keep >= config.dropout).to(torch.float32) / (1.0 - config.dropout))[rows]


def sum_squared_error(out: NetworkOutput, labels: torch.Tensor) -> torch.Tensor:
    """The paper's loss: sum over the batch and classes of (V(T)/T - one-hot)^2."""
    target = F.one_hot(labels, out.decoded.shape[1]).to(out.decoded.dtype)
    return ((out.decoded - target) ** 2).sum()


def train_step(model: SpikingNetwork, input_spikes: torch.Tensor, labels: torch.Tensor, config: Lee2019Config,
               generator: torch.Generator | None) -> tuple[torch.Tensor, NetworkOutput]:
    """One batch: masks drawn from `generator`, forward, the paper's gradient into `.grad`."""
    draw_dropout_masks(model, len(labels), config, generator)
    out = model(input_spikes)
    loss = sum_squared_error(out, labels)
    loss.backward()
    return loss, out
