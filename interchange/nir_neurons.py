"""How a NIR neuron node and the graph's discrete-time LIF mean the same thing: the one place
both directions of the mapping are written.

NIR (nir 1.0.8, nir/ir/neuron.py) states its neurons in continuous time, in seconds:

    LIF      tau dv/dt = (v_leak - v) + r I                  spike when v > v_threshold, v -> v_reset
    CubaLIF  tau_syn dI/dt = -I + w_in S;  tau_mem dv/dt = (v_leak - v) + r I
    IF       dv/dt = r I

Frameworks run them with forward Euler at a time step dt (snnTorch's import_from_nir fixes
dt = 1e-4 s; norse's from_nir takes dt, default 1e-3 s). One Euler step of dt is:

    LIF      v[t] = (1 - dt/tau) v[t-1] + (dt/tau) v_leak + (dt r / tau) I[t]
    CubaLIF  I[t] = (1 - dt/tau_syn) I[t-1] + (dt/tau_syn) w_in S[t]
             v[t] = (1 - dt/tau_mem) v[t-1] + (dt/tau_mem) v_leak + (dt r / tau_mem) I[t]
    IF       v[t] = v[t-1] + dt r I[t]

which is the graph's LIF (netgraph.nodes.LIF) with

    tau         = 1 - dt/tau (tau_mem)       voltage kept per step (1 for IF)
    tau_current = 1 - dt/tau_syn              current kept per step (0: no synaptic current)
    input gain  = dt r / tau  (LIF), dt r (IF), (dt r / tau_mem)(dt w_in / tau_syn) (CubaLIF):
                  multiplies the weights of every synapse into the population
    bias        = (dt/tau) v_leak + gain * (the bias of an Affine feeding it)

Conventions that differ and are documented rather than hidden:
- Threshold: NIR spikes when v > v_threshold, STBP (and this graph) when v >= v_threshold;
  they differ only when v lands exactly on the threshold.
- Reset: NIR sets v to v_reset; Loihi (Lava's LIF) and STBP reset to 0, so v_reset must be 0.
- Bias: STBP adds its bias to v every step; in NIR it is an Affine bias (LIF, exact) or
  v_leak = bias / (1 - tau) (CubaLIF, where an Affine bias would be filtered by the current).
- Recurrence: a NIR cycle is read as one step of delay on the edge that closes it, which is
  the graph's recurrent edge.
"""
from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

from netgraph import LIF, GraphError

DEFAULT_DT = 1e-4  # seconds per step: snnTorch's import_from_nir hard-codes it
NIR_NEURONS = (nir.LIF, nir.CubaLIF, nir.IF)  # the NIR neuron nodes that map onto the graph's LIF
NIR_INTEGRATORS = (nir.LI, nir.I)  # what a non-spiking output (potential readout) is written as


def _clean(values: np.ndarray, digits: int) -> np.ndarray:
    """Undoes the rounding noise of the tau <-> seconds reparametrization (1 - dt/(dt/0.8) is
    0.19999999999999996 in float64; a float32 file's r * dt / tau is 0.9999999): values are
    rounded to the significant digits the file's numbers hold (15 for float64, 7 for float32),
    far below any quantization step (Loihi decays have 12 bits)."""
    flat = np.asarray(values, np.float64).ravel()
    return np.array([float(f"{v:.{digits}g}") for v in flat]).reshape(np.shape(values))


def _digits(*arrays) -> int:
    """Significant decimal digits of the least precise of the node's arrays."""
    return min(7 if np.asarray(a).dtype.itemsize < 8 and np.issubdtype(np.asarray(a).dtype, np.floating) else 15
               for a in arrays)


@dataclass(frozen=True)
class DiscreteNeuron:
    """One NIR neuron node as one Euler step of dt, per neuron (arrays of the node's shape)."""

    tau: np.ndarray
    tau_current: np.ndarray
    input_gain: np.ndarray
    leak_bias: np.ndarray  # (dt/tau) v_leak, added to v every step
    v_threshold: np.ndarray
    v_reset: np.ndarray
    current_based: bool


def discretize(node, dt: float) -> DiscreteNeuron:
    """The per-step meaning of a nir.LIF, nir.CubaLIF or nir.IF node at time step dt (s)."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    if isinstance(node, nir.CubaLIF):
        digits = _digits(node.tau_mem, node.tau_syn, node.r, node.w_in)
        mem, syn = f64(node.tau_mem), f64(node.tau_syn)
        gain = (dt * f64(node.r) / mem) * (dt * f64(node.w_in) / syn)
        return DiscreteNeuron(_clean(1 - dt / mem, digits), _clean(1 - dt / syn, digits), _clean(gain, digits),
                              dt / mem * f64(node.v_leak), f64(node.v_threshold), f64(node.v_reset), True)
    if isinstance(node, nir.LIF):
        digits, tau = _digits(node.tau, node.r), f64(node.tau)
        return DiscreteNeuron(_clean(1 - dt / tau, digits), np.zeros_like(tau), _clean(dt * f64(node.r) / tau, digits),
                              dt / tau * f64(node.v_leak), f64(node.v_threshold), f64(node.v_reset), False)
    r = f64(node.r)  # nir.IF
    return DiscreteNeuron(np.ones_like(r), np.zeros_like(r), _clean(dt * r, _digits(node.r)), np.zeros_like(r),
                          f64(node.v_threshold), f64(node.v_reset), False)


R_CONVENTIONS = ("tau", "unit")


def synaptic_scale(population: LIF, r_convention: str) -> float:
    """What the weights (and Affine bias) into `population` are multiplied by in NIR.

    'tau' (default, snnTorch's convention): r = tau_mem / dt, so dt r / tau_mem = 1 and the
    weights are the trained ones. 'unit': r = 1 on LIF nodes, for readers that ignore r
    (norse 1.1.0's LIFBoxCell steps v += dt/tau (v_leak - v + I)); the weights then carry
    tau_mem / dt = 1 / (1 - tau). Current-based and non-leaking nodes keep r as for 'tau'
    (norse honours r on CubaLIF; snnTorch requires r = tau_mem / dt there).
    """
    if r_convention not in R_CONVENTIONS:
        raise GraphError(f"unknown NIR r convention {r_convention!r}; choose one of {', '.join(R_CONVENTIONS)}")
    if r_convention == "unit" and population.tau_current == 0 and population.tau < 1:
        return 1.0 / (1.0 - float(population.tau))
    return 1.0


def _integrator(population: LIF, dt: float, bias: np.ndarray, bias_as_leak: bool, r_convention: str):
    """A never-firing population (potential readout) as NIR's leaky integrator LI (or I, tau = 1)."""
    shape, tau = population.shape, float(population.tau)
    if population.tau_current > 0:
        raise GraphError(f"node {population.name}: a non-spiking current-based population has no NIR node here "
                         "(NIR's LI has no synaptic current)")
    if tau >= 1:
        if bias_as_leak and np.any(bias):
            raise GraphError(f"node {population.name}: a non-leaking integrator (tau = 1) has no v_leak to carry its "
                             "bias")
        return nir.I(r=np.full(shape, 1 / dt))
    tau_mem = dt / (1 - tau)
    r = tau_mem / dt / synaptic_scale(population, r_convention)
    return nir.LI(tau=np.full(shape, tau_mem), r=np.full(shape, r),
                  v_leak=(bias / (1 - tau)).reshape(shape) if bias_as_leak else np.zeros(shape))


def nir_neuron(population: LIF, dt: float, bias_as_leak: bool, r_convention: str = "tau"):
    """The NIR node that steps like `population` at time step dt (s).

    bias_as_leak: carry the population's bias as v_leak (needed for current-based neurons,
    where an Affine bias would be filtered by the current); otherwise the caller puts it on
    an Affine feeding the population and v_leak is 0.
    r_convention: see synaptic_scale (the caller scales the weights into the population).
    Raises GraphError for what NIR's Euler step cannot express (see the module docstring).
    """
    shape = population.shape
    full = lambda value: np.full(shape, float(value))  # noqa: E731  (NIR wants per-neuron arrays)
    tau, tau_current = float(population.tau), float(population.tau_current)
    bias = np.zeros(population.neurons) if population.bias is None else np.asarray(population.bias, np.float64)
    if not population.spiking:
        return _integrator(population, dt, bias, bias_as_leak, r_convention)
    if tau_current > 0:
        if tau >= 1 or tau_current >= 1:
            raise GraphError(f"node {population.name}: a current-based neuron with tau = {tau:g} and tau_current = "
                             f"{tau_current:g} has no finite NIR CubaLIF time constants (both must be below 1)")
        tau_mem, tau_syn = dt / (1 - tau), dt / (1 - tau_current)
        return nir.CubaLIF(tau_syn=full(tau_syn), tau_mem=full(tau_mem), r=full(tau_mem / dt),
                           v_leak=(bias / (1 - tau)).reshape(shape), v_threshold=full(population.v_threshold),
                           v_reset=full(0.0), w_in=full(tau_syn / dt))
    if bias_as_leak and tau >= 1 and np.any(bias):
        raise GraphError(f"node {population.name}: a non-leaking neuron (tau = 1) has no v_leak to carry its bias")
    if tau >= 1:
        return nir.IF(r=full(1 / dt), v_threshold=full(population.v_threshold), v_reset=full(0.0))
    tau_mem = dt / (1 - tau)
    leak = (bias / (1 - tau)).reshape(shape) if bias_as_leak else np.zeros(shape)
    r = tau_mem / dt / synaptic_scale(population, r_convention)  # 1 for 'unit'
    return nir.LIF(tau=full(tau_mem), r=full(r), v_leak=leak, v_threshold=full(population.v_threshold),
                   v_reset=full(0.0))
