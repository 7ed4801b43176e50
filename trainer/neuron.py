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

Over time, `lif_sequence` runs the recurrence as one fused operation with its own backward
pass (`_LIFRecurrence`: the forward in place, without autograd's per-step graph; the backward
is STBP's equations written out, see `_potential_gradient` and `_current_gradient`). `lif_sequence_reference` is the same
recurrence stepped with `lif_step` under autograd: the reference the tests compare the fused
operation with (identical spikes and potentials, gradients within float tolerance).

Everything here is a pure function of tensors; `trainer.network` wraps it in modules and
`export.fixed_point` holds its integer (Loihi) counterpart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from netgraph.errors import ConfigError, UsageError
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


def lif_sequence_reference(
    synaptic_input: torch.Tensor,
    params: LIFParameters,
    surrogate: Surrogate,
    bias: torch.Tensor | float = 0.0,
    temporal_gradient: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs `lif_step` over time from a zero state, under autograd (the reference of
    `lif_sequence`).

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


class SpikeDerivative(Protocol):
    """What the backward pass differentiates H(z) with: a tensor form, and the same equation's
    (kind, width) in trainer.lif_cpu.surrogate_derivative for the compiled CPU recurrence."""

    def derivative(self, z: torch.Tensor) -> torch.Tensor: ...

    def kernel_form(self) -> tuple[int, float]: ...


@dataclass(frozen=True)
class BackwardRule:
    """How gradients flow through the recurrence (the forward values never change).

    spike_derivative: dH/dz at z = u - Vth: STBP's surrogate, or a training method's own
        rule (Lee et al. 2019: 1[fired] / Vth).
    leak_gradient: du[t]/du[t-1] where o[t-1] = 0. STBP differentiates tau * u, so tau;
        Lee et al. 2019 pass the gradient through the leak unscaled, 1.
    reset_gradient: whether the reset's spike carries gradient, du[t]/do[t-1] = -tau u[t-1]
        (STBP: yes; Lee et al. 2019: no).
    temporal: False cuts every path from step t back to step t-1 (SDBP).
    """

    spike_derivative: SpikeDerivative
    leak_gradient: float
    reset_gradient: bool = True
    temporal: bool = True


def stbp_rule(params: LIFParameters, surrogate: Surrogate, temporal_gradient: bool = True) -> BackwardRule:
    """STBP's backward pass (Wu et al. 2018, eqs. 6-8): autograd's gradient of `lif_step`."""
    return BackwardRule(surrogate, params.tau, True, temporal_gradient)


def lif_sequence(
    synaptic_input: torch.Tensor,
    params: LIFParameters,
    surrogate: Surrogate,
    bias: torch.Tensor | float = 0.0,
    temporal_gradient: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`lif_step` over time from a zero state, as one fused operation with STBP's backward pass.

    synaptic_input: (batch, time, ...). bias: a float, or a tensor of the input's dtype
    broadcastable to one sample's step (the input's shape after (batch, time)): per neuron or
    per channel, as the network's populations hold it.
    Returns (spikes, potentials), both (batch, time, ...), equal to lif_sequence_reference's.
    """
    return lif_recurrence(synaptic_input, params, stbp_rule(params, surrogate, temporal_gradient), bias)


def lif_recurrence(synaptic_input: torch.Tensor, params: LIFParameters, rule: BackwardRule,
                   bias: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused recurrence with any backward rule (training methods other than STBP use it with
    their own). Shapes and bias as `lif_sequence`."""
    if not isinstance(bias, torch.Tensor):
        bias = synaptic_input.new_full((), float(bias))
    _check_bias(bias, synaptic_input)
    return _LIFRecurrence.apply(synaptic_input, bias, params, rule)


def _check_bias(bias: torch.Tensor, synaptic_input: torch.Tensor) -> None:
    """The fused op sums the bias's gradient over batch and time and adds it in the input's
    dtype: a per-sample bias or another dtype would silently differ from lif_step's."""
    step_shape = tuple(synaptic_input.shape[2:])
    try:
        fits = torch.broadcast_shapes(tuple(bias.shape), step_shape) == step_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise UsageError(f"bias of shape {tuple(bias.shape)} does not broadcast to one step of one sample "
                         f"{step_shape} (the input is (batch, time, ...) {tuple(synaptic_input.shape)})")
    if bias.dtype != synaptic_input.dtype:
        raise UsageError(f"bias is {bias.dtype} but the input is {synaptic_input.dtype}; give both one dtype")


def _lif_forward(x: torch.Tensor, bias: torch.Tensor, params: LIFParameters) -> tuple[torch.Tensor, torch.Tensor]:
    """lif_step's arithmetic over time, in place: (fired bool, potentials), (batch, time, ...).

    The operations and their order are lif_step's (tau * u, then the reset, then + current,
    then + bias; a spike where u - Vth >= 0, i.e. u >= Vth in the input's dtype), so the
    values are bit-identical. The reset multiplies by 1 - o; masking to 0 is the same value."""
    steps = x.shape[1]
    potentials = torch.empty_like(x)
    fired = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    current = torch.zeros_like(x[:, 0]) if params.tau_current != 0 else None
    for t in range(steps):
        u = potentials[:, t]
        if t == 0:
            u.zero_()  # tau * 0 * (1 - 0)
        else:
            torch.mul(potentials[:, t - 1], params.tau, out=u)
            u.masked_fill_(fired[:, t - 1], 0.0)
        if current is None:
            u.add_(x[:, t])
        else:
            current.mul_(params.tau_current).add_(x[:, t])
            u.add_(current)
        u.add_(bias)
        torch.ge(u, params.v_threshold, out=fired[:, t])
    return fired, potentials


def _potential_gradient(grad_spikes: torch.Tensor | None, grad_potentials: torch.Tensor | None,
                        fired: torch.Tensor, potentials: torch.Tensor, params: LIFParameters,
                        rule: BackwardRule) -> torch.Tensor:
    """g_u (batch, time, ...): the gradient reaching each step's potential, from dL/do and dL/du
    of every step (either may be None: no gradient).

    With g_u[t] gathering every later use of u[t], backward from the last step:
        g_u[t] = dL/du[t] + h(u[t] - Vth) (dL/do[t] + g_u[t+1] r[t]) + g_u[t+1] l[t]
        r[t] = -tau u[t]          (the reset: u[t+1] holds tau u[t] (1 - o[t]); 0 without reset_gradient)
        l[t] = leak (1 - o[t])    (the leak; STBP's leak_gradient is tau)
    The terms without g_u[t+1] are computed for all steps at once, leaving one fused
    multiply-add per step. Without temporal gradient the g_u[t+1] terms vanish (SDBP)."""
    derivative = rule.spike_derivative.derivative(potentials - params.v_threshold)
    grad = grad_spikes * derivative if grad_spikes is not None else torch.zeros_like(potentials)
    if grad_potentials is not None:
        grad.add_(grad_potentials)
    if not rule.temporal:
        return grad
    through_next = (~fired).to(potentials.dtype).mul_(rule.leak_gradient)
    if rule.reset_gradient:
        through_next.addcmul_(derivative, potentials, value=-params.tau)
    for t in range(potentials.shape[1] - 2, -1, -1):  # in place, from the last step
        grad[:, t].addcmul_(grad[:, t + 1], through_next[:, t])
    return grad


def _current_gradient(grad_potential: torch.Tensor, params: LIFParameters, rule: BackwardRule) -> torch.Tensor:
    """dL/dx (batch, time, ...) from g_u, in place: g_i[t] = g_u[t] + tau_current g_i[t+1]
    (i[t+1] holds tau_current i[t]; the path is cut without temporal gradient)."""
    if params.tau_current != 0 and rule.temporal:
        for t in range(grad_potential.shape[1] - 2, -1, -1):
            grad_potential[:, t].add_(grad_potential[:, t + 1], alpha=params.tau_current)
    return grad_potential


def _compiled_kernels():
    """trainer.lif_cpu, or None where numba cannot be loaded (then the tensor path runs)."""
    global _KERNELS
    if _KERNELS is False:
        try:
            import trainer.lif_cpu as lif_cpu  # numba loads for a moment; only CPU training needs it
            _KERNELS = lif_cpu
        except (ImportError, RuntimeError, OSError):  # numba missing, or no place to cache its
            _KERNELS = None  # compiled code: the tensor path computes the same, only slower
    return _KERNELS


_KERNELS: object = False
USE_COMPILED_CPU = True  # False runs the tensor path on the CPU too (benchmarks, tests)


def _use_kernels(x: torch.Tensor):
    """The compiled kernels for a float32 CPU input (threads matched to torch's), else None."""
    if not (USE_COMPILED_CPU and x.device.type == "cpu" and x.dtype == torch.float32):
        return None
    kernels = _compiled_kernels()
    if kernels is not None:
        kernels.use_threads(torch.get_num_threads())
    return kernels


def _flat(tensor: torch.Tensor) -> np.ndarray:
    """(batch, time, ...) -> its (batch, time, neurons) numpy view (contiguous copy if need be)."""
    neurons = math.prod(tensor.shape[2:])  # not -1: a batch of 0 samples leaves it undetermined
    return tensor.detach().contiguous().view(tensor.shape[0], tensor.shape[1], neurons).numpy()


def _forward_compiled(kernels, x: torch.Tensor, bias: torch.Tensor, params: LIFParameters):
    """(spikes, potentials) by lif_cpu.forward_kernel, both float (batch, time, ...)."""
    potentials = torch.empty_like(x, memory_format=torch.contiguous_format)
    spikes = torch.empty_like(potentials)
    bias_per_neuron = bias.detach().to(x.dtype).expand(x.shape[2:]).contiguous().view(-1).numpy()
    kernels.forward_kernel(_flat(x), bias_per_neuron, np.float32(params.tau), np.float32(params.tau_current),
                           np.float32(params.v_threshold), _flat(potentials), _flat(spikes))
    return spikes, potentials


def _backward_compiled(kernels, grad_spikes, grad_potentials, spikes, potentials, params: LIFParameters,
                       rule: BackwardRule):
    """(dL/dx, per-neuron sum of dL/du over batch and time) by lif_cpu.backward_kernel."""
    none = np.zeros((0, 0, 0), dtype=np.float32)
    kind, width = rule.spike_derivative.kernel_form()
    grad_x = torch.empty_like(potentials)
    grad_bias = torch.empty(potentials.shape[0], math.prod(potentials.shape[2:]), dtype=potentials.dtype)
    kernels.backward_kernel(none if grad_spikes is None else _flat(grad_spikes),
                            none if grad_potentials is None else _flat(grad_potentials),
                            _flat(spikes), _flat(potentials), kind, np.float32(width), np.float32(params.tau),
                            np.float32(params.v_threshold), np.float32(rule.leak_gradient), rule.reset_gradient,
                            rule.temporal, np.float32(params.tau_current), _flat(grad_x), grad_bias.numpy())
    return grad_x, grad_bias.sum(dim=0).view(potentials.shape[2:])


class _LIFRecurrence(torch.autograd.Function):
    """x (batch, time, ...), bias -> (spikes, potentials): the compiled CPU kernels
    (trainer.lif_cpu) for float32 CPU tensors, else the tensor path (_lif_forward,
    _potential_gradient, _current_gradient), which runs on any device."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor, params: LIFParameters,  # type: ignore[override]
                rule: BackwardRule):
        kernels = _use_kernels(x)
        if kernels is not None:
            spikes, potentials = _forward_compiled(kernels, x, bias, params)
            ctx.save_for_backward(spikes, potentials)
        else:
            fired, potentials = _lif_forward(x.detach(), bias.detach(), params)
            spikes = fired.to(x.dtype)
            ctx.save_for_backward(fired, potentials)
        ctx.params, ctx.rule, ctx.bias_shape, ctx.kernels = params, rule, bias.shape, kernels
        ctx.set_materialize_grads(False)  # an output the loss never reads: None, not a tensor of zeros
        return spikes, potentials

    @staticmethod
    @once_differentiable  # the backward is not itself differentiable: a second derivative is refused
    def backward(ctx, grad_spikes, grad_potentials):  # type: ignore[override]
        spikes_or_fired, potentials = ctx.saved_tensors
        params, rule = ctx.params, ctx.rule
        if ctx.kernels is not None:
            grad_x, grad_u_sum = _backward_compiled(ctx.kernels, grad_spikes, grad_potentials, spikes_or_fired,
                                                    potentials, params, rule)
        else:
            grad_u = _potential_gradient(grad_spikes, grad_potentials, spikes_or_fired, potentials, params, rule)
            grad_u_sum = grad_u.sum(dim=(0, 1))  # the bias enters u[t] directly, the input through the current
            grad_x = _current_gradient(grad_u, params, rule)
        grad_bias = grad_u_sum.sum_to_size(ctx.bias_shape) if ctx.needs_input_grad[1] else None
        return (grad_x if ctx.needs_input_grad[0] else None), grad_bias, None, None
