"""The fused LIF recurrence on the CPU: one compiled pass over time per neuron (numba).

`trainer.neuron._LIFRecurrence` runs these kernels for CPU tensors; their arithmetic is
trainer.neuron's, written as scalar loops so that each neuron's potential stays in a register
through all T steps (autograd's step-by-step graph, and even batched tensor operations, pass
over the (batch, time, neurons) arrays many times; this reads and writes them once).

- Forward (`forward_kernel`): lif_step's float32 operations in lif_step's order, without fused
  multiply-adds (numba's default, no fastmath), so spikes and potentials are bit-identical to
  the reference. Tested against `trainer.neuron.lif_sequence_reference`.
- Backward (`backward_kernel`): trainer.neuron._potential_gradient and _current_gradient's
  recursions, with the surrogate derivative evaluated in the loop by `surrogate_derivative`,
  the scalar form of trainer.surrogate's h1-h4 (Surrogate.kernel_form names the kind; tested
  equal to Surrogate.derivative).

Arrays are (batch, time, neurons), C-contiguous; parallel over the batch.
"""
from __future__ import annotations

import math

import numba
import numpy as np

_PARALLEL = dict(parallel=True, cache=True, nogil=True)


def use_threads(count: int) -> None:
    """Runs the kernels on `count` threads (at most numba's pool): the caller passes torch's
    thread count, so a process that torchrun or the user limits stays within its share."""
    numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))


@numba.njit(cache=True)
def surrogate_derivative(kind, z, a, out):
    """dH/dz of surrogate h<kind> (1-4) at each z (float32 row), width a, into out: the
    equations 24-27 of trainer.surrogate (one branch per row, so the loops vectorize). Kind 0 is
    trainer.lee2019's 1[z >= 0] / a (a = Vth)."""
    half, quarter, one = np.float32(0.5), np.float32(0.25), np.float32(1.0)
    if kind == 0:
        height = one / a
        for n in range(z.shape[0]):
            out[n] = height if z[n] >= 0 else np.float32(0.0)
    elif kind == 1:  # rectangular: (1/a) [|z| < a/2]
        height, reach = one / a, a * half
        for n in range(z.shape[0]):
            out[n] = height if abs(z[n]) < reach else np.float32(0.0)
    elif kind == 2:  # polynomial: (sqrt(a)/2 - a/4 |z|)+
        peak, slope = np.float32(math.sqrt(a)) * half, a * quarter
        for n in range(z.shape[0]):
            out[n] = max(peak - slope * abs(z[n]), np.float32(0.0))
    elif kind == 3:  # sigmoid: s (1 - s) / a, s = sigmoid(z / a)
        for n in range(z.shape[0]):
            s = one / (one + np.exp(-z[n] / a))
            out[n] = s * (one - s) / a
    else:  # Gaussian: exp(-z^2 / (2a)) / sqrt(2 pi a)
        scale = np.float32(1.0 / math.sqrt(2.0 * math.pi * a))
        for n in range(z.shape[0]):
            out[n] = np.exp(-(z[n] * z[n]) / (np.float32(2.0) * a)) * scale


@numba.njit(**_PARALLEL)
def forward_kernel(x, bias, tau, tau_current, v_threshold, potentials, spikes):
    """x (B, T, N) float32, bias (N,) float32 -> potentials and spikes (0.0 / 1.0), (B, T, N)
    float32, written in place. tau_current 0: no current (i[t] = x[t], no multiplication)."""
    batch, steps, neurons = x.shape
    for b in numba.prange(batch):
        u = np.zeros(neurons, dtype=np.float32)
        current = np.zeros(neurons, dtype=np.float32)
        spiked = np.zeros(neurons, dtype=np.bool_)
        for t in range(steps):
            for n in range(neurons):
                leaked = u[n] * tau
                if spiked[n]:
                    leaked = np.float32(0.0)
                if tau_current != 0:
                    current[n] = tau_current * current[n] + x[b, t, n]
                    value = leaked + current[n]
                else:
                    value = leaked + x[b, t, n]
                value = value + bias[n]
                u[n] = value
                spiked[n] = value >= v_threshold
                potentials[b, t, n] = value
                spikes[b, t, n] = np.float32(1.0) if spiked[n] else np.float32(0.0)


@numba.njit(**_PARALLEL)
def backward_kernel(grad_spikes, grad_potentials, spikes, potentials, kind, width, tau, v_threshold,
                    leak_gradient, reset_gradient, temporal, tau_current, grad_x, grad_bias):
    """The backward recursions, written in place: grad_x (B, T, N) = dL/dx and grad_bias (B, N),
    each sample's sum over time of dL/du. grad_spikes / grad_potentials: (B, T, N), or (0, 0, 0)
    when no gradient reaches them."""
    batch, steps, neurons = potentials.shape
    has_spike_grad, has_potential_grad = grad_spikes.shape[0] > 0, grad_potentials.shape[0] > 0
    reset = -tau if (temporal and reset_gradient) else np.float32(0.0)
    leak = leak_gradient if temporal else np.float32(0.0)
    carry_current = tau_current if temporal else np.float32(0.0)
    for b in numba.prange(batch):
        later = np.zeros(neurons, dtype=np.float32)  # g_u[t+1]
        later_current = np.zeros(neurons, dtype=np.float32)  # g_i[t+1]
        total = np.zeros(neurons, dtype=np.float32)
        z = np.empty(neurons, dtype=np.float32)
        derivative = np.empty(neurons, dtype=np.float32)
        for t in range(steps - 1, -1, -1):
            u = potentials[b, t]
            for n in range(neurons):
                z[n] = u[n] - v_threshold
            surrogate_derivative(kind, z, width, derivative)
            for n in range(neurons):
                into_spike = later[n] * (reset * u[n])
                if has_spike_grad:
                    into_spike += grad_spikes[b, t, n]
                kept = np.float32(0.0) if spikes[b, t, n] != 0 else leak
                grad = later[n] * kept + into_spike * derivative[n]
                if has_potential_grad:
                    grad += grad_potentials[b, t, n]
                later[n] = grad
                total[n] += grad
                grad += carry_current * later_current[n]
                later_current[n] = grad
                grad_x[b, t, n] = grad
        grad_bias[b, :] = total
