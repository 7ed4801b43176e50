"""The STBP iterative LIF neuron (Wu et al. 2018, equations 3-5), defined once.

    x[t] = W o_prev[t]                                   (synaptic input, eq. 3)
    u[t] = tau * u[t-1] * (1 - o[t-1]) + x[t] + b        (membrane potential, eq. 4)
    o[t] = H(u[t] - Vth),  H(z) = 1 if z >= 0 else 0      (spike, eq. 5)

`tau` is the per-step decay factor of the potential (dimensionless, in [0, 1]); `Vth` is
the firing threshold and `b` the trainable bias, both in the same (arbitrary) units as
the potential. A spike resets the potential to 0 through the factor (1 - o[t-1]).

Current-based (CUBA) neurons, Loihi's second decay: with `tau_current` > 0 the synaptic
input first passes through a current that keeps that fraction per step,
    i[t] = tau_current * i[t-1] + x[t],   and i[t] replaces x[t] in eq. 4;
`tau_current` = 0 is STBP (i[t] = x[t], computed without the multiplication so that STBP's
arithmetic is unchanged). The current is not reset by a spike, as on Loihi.

Everything here is a pure function of tensors; `trainer.network` wraps it in modules and
`export.fixed_point` holds its integer (Loihi) counterpart.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from netgraph.errors import ConfigError
from trainer.surrogate import Surrogate, spike


@dataclass(frozen=True)
class LIFParameters:
    """Per-layer constants of the STBP LIF neuron.

    tau: decay factor of the membrane potential per time step, 0 <= tau <= 1.
    v_threshold: firing threshold Vth (> 0), in potential units.
    tau_current: decay factor of the synaptic current per step, 0 <= tau_current <= 1
        (0: STBP, the current is each step's input).
    """

    tau: float = 0.2
    v_threshold: float = 0.5
    tau_current: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise ConfigError(f"LIF parameter 'tau' must lie in [0, 1], got {self.tau}")
        if not 0.0 <= self.tau_current <= 1.0:
            raise ConfigError(f"LIF parameter 'tau_current' must lie in [0, 1], got {self.tau_current}")
        if not self.v_threshold > 0.0:
            raise ConfigError(
                f"LIF parameter 'v_threshold' must be positive, got {self.v_threshold}"
            )


@dataclass
class LIFState:
    """State carried between time steps: potential u[t-1], spikes o[t-1] and synaptic
    current i[t-1], same shape."""

    potential: torch.Tensor
    spikes: torch.Tensor
    current: torch.Tensor

    @classmethod
    def zeros_like(cls, x: torch.Tensor) -> "LIFState":
        return cls(torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x))


def lif_step(
    synaptic_input: torch.Tensor,
    state: LIFState,
    params: LIFParameters,
    surrogate: Surrogate,
    bias: torch.Tensor | float = 0.0,
    temporal_gradient: bool = True,
) -> tuple[torch.Tensor, LIFState]:
    """One time step of the STBP LIF neuron.

    synaptic_input: x[t] = W o_prev[t], any shape (batch, ...).
    bias: b, broadcastable to the input's shape.
    temporal_gradient: False gives SDBP (paper Table 7): no gradient flows from u[t]
        back to u[t-1] or o[t-1], only through the spatial (layer-to-layer) path.
    Returns (o[t], new state). o[t] is 0.0/1.0 in the input's dtype.
    """
    previous_potential, previous_spikes, previous_current = state.potential, state.spikes, state.current
    if not temporal_gradient:
        previous_potential = previous_potential.detach()
        previous_spikes = previous_spikes.detach()
        previous_current = previous_current.detach()
    current = synaptic_input if params.tau_current == 0 else params.tau_current * previous_current + synaptic_input
    potential = (
        params.tau * previous_potential * (1.0 - previous_spikes) + current + bias
    )
    spikes = spike(potential - params.v_threshold, surrogate)
    return spikes, LIFState(potential, spikes, current)


def lif_sequence(
    synaptic_input: torch.Tensor,
    params: LIFParameters,
    surrogate: Surrogate,
    bias: torch.Tensor | float = 0.0,
    temporal_gradient: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs `lif_step` over time from a zero state.

    synaptic_input: (batch, time, ...). Returns (spikes, potentials), both (batch, time, ...).
    """
    state = LIFState.zeros_like(synaptic_input[:, 0])
    spikes, potentials = [], []
    for t in range(synaptic_input.shape[1]):
        out, state = lif_step(
            synaptic_input[:, t], state, params, surrogate, bias, temporal_gradient
        )
        spikes.append(out)
        potentials.append(state.potential)
    return torch.stack(spikes, dim=1), torch.stack(potentials, dim=1)
