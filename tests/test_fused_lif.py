"""The fused LIF recurrence (trainer.neuron.lif_sequence: compiled CPU kernels for float32 CPU
tensors, the tensor path elsewhere) against the reference that steps lif_step under autograd:
identical spikes and potentials, gradients within float tolerance; and against hand traces."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import trainer.neuron as neuron
from trainer import lif_cpu
from trainer.config import config_from_dict
from trainer.lee2019 import FiredOverThreshold
from trainer.network import SpikingNetwork
from trainer.neuron import LIFParameters, lif_sequence, lif_sequence_reference
from trainer.surrogate import SURROGATE_NAMES, Surrogate

PATHS = ["compiled", "tensor"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Runs a test on the compiled CPU kernels and on the tensor path (the one GPUs take)."""
    monkeypatch.setattr(neuron, "USE_COMPILED_CPU", request.param == "compiled")
    return request.param


def _compare(x, bias, params, surrogate, temporal, seed=1):
    """(spikes, potentials, grad x, grad bias) of the fused op and of the reference, under
    the same random loss on spikes and potentials."""
    results = []
    for fn in (lif_sequence, lif_sequence_reference):
        spikes, potentials = fn(x, params, surrogate, bias, temporal)
        generator = torch.Generator().manual_seed(seed)
        weights = torch.randn(spikes.shape, generator=generator, dtype=x.dtype)
        loss = (spikes * weights).sum() + 0.3 * (potentials * weights.flip(1)).sum()
        results.append((spikes, potentials, *torch.autograd.grad(loss, (x, bias))))
    return results


CASES = list(itertools.product(SURROGATE_NAMES, [0.0, 0.6], [True, False], ["dense", "conv"]))


@pytest.mark.parametrize("name,tau_current,temporal,layout", CASES)
def test_fused_equals_reference(path, name, tau_current, temporal, layout):
    generator = torch.Generator().manual_seed(hash((name, tau_current, temporal, layout)) % 2**31)
    shape, bias_shape = ((5, 11, 3, 4, 4), (3, 1, 1)) if layout == "conv" else ((6, 13, 17), (17,))
    x = (torch.randn(shape, generator=generator) * 0.7).requires_grad_()
    bias = (torch.randn(bias_shape, generator=generator) * 0.2).requires_grad_()
    fused, reference = _compare(x, bias, LIFParameters(0.35, 0.5, tau_current), Surrogate(name, 0.8), temporal)
    assert fused[0].sum() > 10  # the case spikes, so reset gradients are exercised
    assert torch.equal(fused[0], reference[0]) and torch.equal(fused[1], reference[1])
    torch.testing.assert_close(fused[2], reference[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[3], reference[3], rtol=1e-5, atol=1e-5)


def test_float64_takes_the_tensor_path_and_matches():
    x = torch.randn(3, 9, 5, dtype=torch.float64).requires_grad_()
    bias = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    fused, reference = _compare(x, bias, LIFParameters(0.5, 0.4), Surrogate("h3", 0.5), True)
    assert torch.equal(fused[0], reference[0])
    torch.testing.assert_close(fused[2], reference[2], rtol=1e-10, atol=1e-12)


def test_hand_trace_in_float32(path):
    # tau 0.5, Vth 1 (exact in float32): u = 0.5, 1.0 (fires at exactly Vth), 0.25 (reset), 1.125, 0
    x = torch.tensor([0.5, 0.75, 0.25, 1.0, 0.0]).view(1, -1, 1)
    spikes, potentials = lif_sequence(x, LIFParameters(0.5, 1.0), Surrogate())
    assert spikes.flatten().tolist() == [0, 1, 0, 1, 0]
    assert potentials.flatten().tolist() == [0.5, 1.0, 0.25, 1.125, 0.0]


def test_current_decay_hand_trace(path):
    # tau_current 0.5, tau 0.5, Vth 2: i = 1, 1.5, 0.75; u = 1, 0.5 + 1.5 = 2 (fires), 0 + 0.75 (reset)
    x = torch.tensor([1.0, 1.0, 0.0]).view(1, -1, 1)
    spikes, potentials = lif_sequence(x, LIFParameters(0.5, 2.0, 0.5), Surrogate())
    assert spikes.flatten().tolist() == [0, 1, 0]
    assert potentials.flatten().tolist() == [1.0, 2.0, 0.75]


def test_gradient_by_hand_two_steps(path):
    # u0 = x0, u1 = tau u0 + x1 (no spike at t0: u0 < Vth - a/2), L = o1, rectangular h1 of width
    # a = 1: h(u1 - Vth) = 1 where |u1 - Vth| < 0.5. dL/dx1 = h = 1, dL/dx0 = tau h = 0.5.
    x = torch.tensor([0.25, 0.75]).view(1, 2, 1).requires_grad_()
    spikes, _ = lif_sequence(x, LIFParameters(0.5, 1.0), Surrogate("h1", 1.0))
    spikes[0, 1, 0].backward()
    assert x.grad.flatten().tolist() == [0.5, 1.0]


def test_gradient_of_potentials_only(path):
    """A potential readout: the loss reads potentials only, spikes get no gradient."""
    x = torch.randn(4, 7, 6).requires_grad_()
    bias = torch.zeros(6, requires_grad=True)
    grads = []
    for fn in (lif_sequence, lif_sequence_reference):
        _, potentials = fn(x, LIFParameters(0.4, 0.3), Surrogate("h2", 1.0), bias)
        grads.append(torch.autograd.grad(potentials[:, -1].sum(), (x, bias)))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)


def test_non_contiguous_input(path):
    base = torch.randn(9, 4, 5)
    x = base.transpose(0, 1).requires_grad_()  # (4, 9, 5), not contiguous
    bias = torch.zeros(5, requires_grad=True)
    fused, reference = _compare(x, bias, LIFParameters(0.3, 0.4), Surrogate(), True)
    assert torch.equal(fused[0], reference[0])
    torch.testing.assert_close(fused[2], reference[2], rtol=1e-5, atol=1e-5)


def test_empty_batch(path):
    """A process of a data-parallel run may get no sample of the last batch."""
    x = torch.zeros(0, 5, 2, 3, 3, requires_grad=True)
    bias = torch.zeros(2, 1, 1, requires_grad=True)
    spikes, potentials = lif_sequence(x, LIFParameters(), Surrogate(), bias)
    spikes.sum().backward()
    assert spikes.shape == potentials.shape == x.shape and x.grad.shape == x.shape
    assert torch.equal(bias.grad, torch.zeros(2, 1, 1))


@pytest.mark.parametrize("name,width", list(itertools.product(SURROGATE_NAMES, [0.1, 0.7, 3.0])))
def test_kernel_surrogates_equal_the_tensor_forms(name, width):
    surrogate = Surrogate(name, width)
    edges = [-width / 2, width / 2, 0.0, -2 / math.sqrt(width), 2 / math.sqrt(width), -100.0, 100.0, -1e4, 1e4]
    z = np.concatenate([np.linspace(-4, 4, 2001), edges]).astype(np.float32)
    kind, width = surrogate.kernel_form()
    out = np.empty_like(z)
    lif_cpu.surrogate_derivative(kind, z, np.float32(width), out)
    expected = surrogate.derivative(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)  # float32 exp rounding


def test_lee2019_rule_kernel_form_equals_tensor_form():
    rule = FiredOverThreshold(0.75)
    z = np.array([-1.0, -1e-7, 0.0, 1e-7, 2.0], dtype=np.float32)
    out = np.empty_like(z)
    kind, width = rule.kernel_form()
    lif_cpu.surrogate_derivative(kind, z, np.float32(width), out)
    height = float(np.float32(1) / np.float32(0.75))
    assert out.tolist() == rule.derivative(torch.from_numpy(z)).tolist() == [0, 0, height, height, height]


def test_training_step_of_a_network_equals_the_reference(path, monkeypatch):
    """Loss and every parameter's gradient of one STBP batch: fused vs lif_step under autograd."""
    config = config_from_dict({"model": {"layers": [{"type": "conv", "channels": 4, "kernel_size": 3},
                                                    {"type": "avgpool", "kernel_size": 2},
                                                    {"type": "dense", "units": 10}]}})
    inputs = (torch.rand(8, 6, 1, 8, 8, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    labels = torch.arange(8) % 10
    results = []
    for sequence in (lif_sequence, lif_sequence_reference):
        monkeypatch.setattr("trainer.network.lif_sequence", sequence)
        torch.manual_seed(0)
        network = SpikingNetwork.from_config(config.model, (1, 8, 8))
        out = network(inputs)
        loss = 0.5 * ((out.output_rates - F.one_hot(labels, 10).float()) ** 2).sum(1).mean()
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in network.named_parameters()},
                        {k: v.clone() for k, v in out.population_spikes.items()}))
    assert torch.equal(results[0][0], results[1][0])
    for name in results[0][2]:
        assert torch.equal(results[0][2][name], results[1][2][name])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6)


def _leak_aware_autograd(current, params):
    """Lee et al. 2019's neuron as trainer.lee2019 wrote it with autograd before the fused op
    (d2af615): the leak's gradient unscaled, none through the reset, 1[fired] / Vth per spike."""
    potential = torch.zeros_like(current[:, 0])
    fired = torch.zeros_like(potential)
    spikes, potentials = [], []
    for t in range(current.shape[1]):
        kept = potential * (1.0 - fired.detach())
        leaked = params.tau * kept
        potential = leaked.detach() + (kept - kept.detach()) + current[:, t]
        z = potential - params.v_threshold
        hard = (z >= 0).to(z.dtype)
        fired = hard.detach() + (z - z.detach()) * hard.detach() / params.v_threshold
        spikes.append(fired)
        potentials.append(potential)
    return torch.stack(spikes, 1), torch.stack(potentials, 1)


def test_lee2019_rule_equals_its_autograd_form(path):
    from trainer.lee2019 import FiredOverThreshold
    from trainer.neuron import BackwardRule, lif_recurrence

    generator = torch.Generator().manual_seed(11)
    current = (torch.randn(5, 12, 9, generator=generator) * 0.8).requires_grad_()
    params = LIFParameters(0.6, 0.5)
    rule = BackwardRule(FiredOverThreshold(params.v_threshold), leak_gradient=1.0, reset_gradient=False)
    results = []
    for run in (lambda: lif_recurrence(current, params, rule), lambda: _leak_aware_autograd(current, params)):
        spikes, potentials = run()
        weights = torch.randn(spikes.shape, generator=torch.Generator().manual_seed(2))
        loss = (spikes * weights).sum() + (potentials * weights).sum() * 0.1
        results.append((spikes.detach(), potentials.detach(), torch.autograd.grad(loss, current)[0]))
    assert results[0][0].sum() > 20
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias,match", [(torch.zeros(4, 6), "does not broadcast"), (torch.zeros(7), "does not broadcast"),
                                        (torch.zeros(6, dtype=torch.float64), "float64")])
def test_a_bias_the_fused_op_cannot_honour_is_refused(bias, match):
    with pytest.raises(ValueError, match=match):
        lif_sequence(torch.zeros(4, 3, 6), LIFParameters(), Surrogate(), bias)


def test_a_second_derivative_is_refused(path):
    x = torch.randn(2, 4, 3, requires_grad=True)
    spikes, _ = lif_sequence(x, LIFParameters(0.5, 0.2), Surrogate("h3", 1.0))
    (grad,) = torch.autograd.grad(spikes.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()
