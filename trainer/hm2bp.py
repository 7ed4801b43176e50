"""HM2-BP: hybrid macro/micro-level backpropagation (Jin, Zhang & Li, "Hybrid Macro/Micro Level
Backpropagation for Training Deep Spiking Neural Networks", NeurIPS 2018, arXiv:1805.07866;
the authors' CUDA code jinyyy666/mm-bp-snn), for the current-based LIF neurons Loihi runs.

Neuron (trainer.neuron, one step of Loihi's CUBA LIF; the authors' Spiking.cu steps the same
first-order synapse into a leaky membrane, tau_s -> tau_current = 1 - 1/tau_s, tau_m -> tau =
1 - 1/tau_m, with reset to 0):
    c_i[t] = tau_current c_i[t-1] + sum_j w_ij s_j[t]      v_i[t] = tau v_i[t-1] (1 - o_i[t-1]) + c_i[t]
and, only in training, an optional refractory period that holds v at 0 for R steps after a
spike (the paper's neuron; Lava's fixed-point LIF has none, so deployable networks use R = 0).

Spike-train-level post-synaptic potential (S-PSP). Input j's share of v_i at time t is
P_ij[t] = sum over m in (r_i(t), t] of tau^(t-m) C_j[m], with C_j the input's own current
trace (C_j[t] = tau_current C_j[t-1] + s_j[t]) and r_i(t) the last step v_i was held at 0
(previous spike + R). The S-PSP sums it over i's spikes,
    e_ij = sum_t o_i[t] P_ij[t],   and   sum_t o_i[t] v_i[t] = sum_j w_ij e_ij   exactly,
so the firing count obeys the macro-level relation o_i ~ sum_j w_ij e_ij / Vth (each spike
uses up about Vth of potential). Presynaptic spikes before a reset still count through the
current they leave behind, like the authors' kernel (common/cuBase.cu, which also drops input
spikes at the output spike's own step and beyond a 4 tau_m window; this sum is exact). With
Q_j[t] = tau Q_j[t-1] + C_j[t] (no resets), P_ij[t] = Q_j[t] - tau^(t - r) Q_j[r], so
e = M^T Q per sample, with M_ti = o_i[t] minus, at each reset point r followed by a spike
at n, tau^(n - r): matrix products only, never a (samples, I, J) tensor.

Loss (eq. 1 with the authors' margin): E = 1/2 sum_k d_k^2, d_k = o_k - y_k where
|o_k - y_k| > margin (else 0), y = desired_count for the label, undesired_count otherwise.

Backward (macro level through the counts, micro level through the S-PSP):
    dE/dw_ij = g_i e_ij,  g_i = delta_i / Vth_l        (delta_i = dE/do_i)
    delta_j = sum_i g_i w_ij alpha_ij,  alpha_ij = de_ij/do_j ~ e_ij / o_j   (the decoupled
    micro-level model: each presynaptic spike contributes its average share).
Silent neurons, which the count relation cannot differentiate: a silent postsynaptic neuron
takes e_ij = mean_t Q_j[t], the S-PSP of one spike fired at any step alike (so that a
neuron silenced early in training is pulled back by the inputs that drive it); a silent
presynaptic neuron takes alpha_ij as the average alpha of the firing inputs of neuron i.
(The authors' code uses constants there: e = 0.1, alpha = 1.) The code's (1 + S_i) factor on the weight gradient, its lateral
inhibition at the output, label-neuron spike insertion, sample boosting and weight
regularizer are not used: the gradient here is the paper's macro/micro chain rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from netgraph import LIF
from trainer.config import HM2BPConfig
from trainer.network import NetworkOutput
from trainer.neuron import LIFParameters, LIFState, lif_sequence, lif_step
from trainer.surrogate import Surrogate

_NO_SURROGATE = Surrogate("h1", 1.0)  # the forward pass only: HM2-BP never differentiates the spike


@dataclass
class LayerRecord:
    """One layer of a forward pass: its input spikes (B, T, J), its spikes and potentials
    (B, T, I), its constants and its weight (I, J)."""

    inputs: torch.Tensor
    spikes: torch.Tensor
    potentials: torch.Tensor
    params: LIFParameters
    weight: torch.Tensor


def layer_forward(inputs: torch.Tensor, weight: torch.Tensor, params: LIFParameters, refractory_steps: int = 0,
                  bias: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense layer of LIF neurons over time: inputs (B, T, J) -> (spikes, potentials), (B, T, I).
    With refractory_steps R > 0 the potential is held at 0 (and no spike fires) for R steps
    after each spike; R = 0 is exactly trainer.neuron's LIF."""
    currents = F.linear(inputs, weight)
    if not refractory_steps:  # exactly lif_step's neuron: the fused recurrence computes it in one pass
        return lif_sequence(currents, params, _NO_SURROGATE, bias)
    state = LIFState.zeros_like(currents[:, 0])
    holding = torch.zeros_like(currents[:, 0])
    spikes, potentials = [], []
    for t in range(currents.shape[1]):
        out, state = lif_step(currents[:, t], state, params, _NO_SURROGATE, bias)
        held = holding > 0
        out = out.masked_fill(held, 0.0)
        state = LIFState(state.potential.masked_fill(held, 0.0), out, state.current)
        holding = torch.where(out > 0, float(refractory_steps), (holding - 1).clamp(min=0))
        spikes.append(out)
        potentials.append(state.potential)
    return torch.stack(spikes, 1), torch.stack(potentials, 1)


def chain_forward(populations: list[LIF], weights: list[torch.Tensor], biases: list[torch.Tensor],
                  input_spikes: torch.Tensor, refractory_steps: int = 0) -> list[LayerRecord]:
    """The forward pass of a dense chain on input spikes (B, T, *input_shape), layer by layer."""
    records, spikes = [], input_spikes.flatten(2)
    for population, weight, bias in zip(populations, weights, biases):
        params = LIFParameters(population.tau, population.v_threshold, population.tau_current)
        out, potentials = layer_forward(spikes, weight, params, refractory_steps, bias)
        records.append(LayerRecord(spikes, out, potentials, params, weight))
        spikes = out
    return records


def _trace(spikes: torch.Tensor, decay: float) -> torch.Tensor:
    """x[t] = decay x[t-1] + spikes[t] along time: (B, T, N) -> (B, T, N)."""
    if decay == 0:
        return spikes
    out, x = [], torch.zeros_like(spikes[:, 0])
    for t in range(spikes.shape[1]):
        x = decay * x + spikes[:, t]
        out.append(x)
    return torch.stack(out, 1)


def potential_traces(record: LayerRecord) -> torch.Tensor:
    """Q_j[t]: each input's share of the potential with no reset, per unit weight: (B, T, J)."""
    return _trace(_trace(record.inputs, record.params.tau_current), record.params.tau)


def spsp_weights(record: LayerRecord, refractory_steps: int = 0) -> torch.Tensor:
    """M (B, T, I) with e_ij = sum_t M_ti Q_j[t] (see the module docstring): o_i[t], minus
    tau^(n - r) at each reset point r followed by a spike at n; for a silent neuron 1/T at
    every step (e_ij = the mean of Q_j over time)."""
    spikes, tau = record.spikes, record.params.tau
    batch, steps, neurons = spikes.shape
    m = spikes.clone()
    reset = torch.full((batch, neurons), -1, dtype=torch.long, device=spikes.device)  # last reset point r
    for t in range(steps):  # a scatter per step, no host synchronisation
        fired = spikes[:, t] > 0
        after_reset = fired & (reset >= 0)  # then r < t: no spike fires while v is held
        lag = (t - reset).clamp(min=1).to(spikes.dtype)
        drop = torch.where(after_reset, -(tau ** lag), torch.zeros_like(lag))
        m.scatter_add_(1, reset.clamp(0, steps - 1)[:, None, :], drop[:, None, :])
        reset = torch.where(fired, t + refractory_steps, reset)
    silent = spikes.sum(1) == 0  # (B, I): as if it fired once, at any step alike
    return m + silent[:, None, :].to(m.dtype) / steps


def spsp(record: LayerRecord, refractory_steps: int = 0) -> torch.Tensor:
    """The S-PSPs e (B, I, J) of one layer (for tests and inspection; training never forms them)."""
    return torch.einsum("bti,btj->bij", spsp_weights(record, refractory_steps), potential_traces(record))


def count_error(output_counts: torch.Tensor, labels: torch.Tensor, config: HM2BPConfig) -> torch.Tensor:
    """d = o - y where |o - y| > margin, else 0: (B, K). y = desired_count for the label."""
    target = torch.full_like(output_counts, config.undesired_count)
    target.scatter_(1, labels[:, None], config.desired_count)
    error = output_counts - target
    return torch.where(error.abs() > config.margin, error, torch.zeros_like(error))


def loss_value(error: torch.Tensor) -> torch.Tensor:
    """E = 1/2 sum_k d_k^2, averaged over the batch."""
    return 0.5 * (error ** 2).sum(1).mean()


def _delta_below(g: torch.Tensor, m: torch.Tensor, q: torch.Tensor, weight: torch.Tensor,
                 input_counts: torch.Tensor) -> torch.Tensor:
    """delta_j = sum_i g_i w_ij alpha_ij with alpha_ij = e_ij / o_j (firing j) or the mean
    alpha over the firing inputs of i (silent j): (B, J)."""
    mg = m * g[:, None, :]  # (B, T, I)
    weighted = ((mg @ weight) * q).sum(1)  # sum_i g_i w_ij e_ij, in this order: never a (B, I, J) tensor
    firing = input_counts > 0
    delta = torch.where(firing, weighted / input_counts.clamp(min=1), torch.zeros_like(weighted))
    if (~firing).any():
        per_spike = q / input_counts.clamp(min=1)[:, None, :] * firing[:, None, :]  # Q_j / o_j over firing j
        mean_alpha = torch.einsum("bti,btj->bi", m, per_spike) / firing.sum(1, keepdim=True).clamp(min=1)
        silent_delta = (g * mean_alpha) @ weight  # (B, J)
        delta = torch.where(firing, delta, silent_delta)
    return delta


def gradients(records: list[LayerRecord], labels: torch.Tensor, config: HM2BPConfig) -> tuple[torch.Tensor,
                                                                                               list[torch.Tensor]]:
    """(loss, dE/dW per layer, each (I, J), averaged over the batch) of a forward pass."""
    error = count_error(records[-1].spikes.sum(1), labels, config)
    delta, grads = error, []
    for index in range(len(records) - 1, -1, -1):
        record = records[index]
        m, q = spsp_weights(record, config.refractory_steps), potential_traces(record)
        g = delta / record.params.v_threshold  # (B, I)
        grads.append(torch.einsum("bti,btj->ij", m * g[:, None, :], q) / len(labels))
        if index:
            delta = _delta_below(g, m, q, record.weight, record.inputs.sum(1))
    return loss_value(error), grads[::-1]


def _chain(model) -> tuple[list[LIF], list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The populations of a dense chain and the weight and bias parameters feeding them."""
    layers = model.dense_chain()
    return [la.population for la in layers], [la.weight for la in layers], [la.bias for la in layers]


def _records(chain, input_spikes: torch.Tensor, config: HM2BPConfig) -> list[LayerRecord]:
    populations, weights, biases = chain
    return chain_forward(populations, [w.detach() for w in weights], [b.detach() for b in biases], input_spikes,
                         config.refractory_steps)


def _output(model, records: list[LayerRecord]) -> NetworkOutput:
    return NetworkOutput({p.name: r.spikes for p, r in zip(model.graph.populations, records)},
                         model.graph.output_population.name)


@torch.no_grad()
def forward(model, input_spikes: torch.Tensor, config: HM2BPConfig) -> NetworkOutput:
    """The network's spikes with HM2-BP's neuron (its refractory period included)."""
    return _output(model, _records(_chain(model), input_spikes, config))


def prepare(model) -> None:
    """HM2-BP's neurons have no bias: zeroed here, and never given a gradient."""
    with torch.no_grad():
        for bias in _chain(model)[2]:
            bias.zero_()


def train_step(model, input_spikes: torch.Tensor, labels: torch.Tensor, config: HM2BPConfig) -> tuple[torch.Tensor,
                                                                                                        NetworkOutput]:
    """Runs the batch forward and stores HM2-BP's gradient in every weight's `.grad` (biases:
    none, so they stay 0). Returns (loss, the spikes of every population)."""
    chain = _chain(model)
    with torch.no_grad():
        records = _records(chain, input_spikes, config)
        loss, grads = gradients(records, labels, config)
    _, weights, biases = chain
    for weight, grad in zip(weights, grads):
        weight.grad = grad
    for bias in biases:
        bias.grad = None  # the optimizer skips them: they stay 0
    return loss, _output(model, records)
