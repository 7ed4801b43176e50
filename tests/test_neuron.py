"""The STBP LIF neuron against traces worked by hand from the paper's equations 3-5."""
import pytest
import torch

from trainer.neuron import LIFParameters, LIFState, lif_sequence, lif_step
from trainer.surrogate import Surrogate

H1 = Surrogate("h1", 1.0)


def run(inputs, tau, vth, bias=0.0):
    x = torch.tensor(inputs, dtype=torch.float64).view(1, -1, 1)
    spikes, potentials = lif_sequence(x, LIFParameters(tau, vth), H1, bias)
    return spikes.flatten().tolist(), potentials.flatten().tolist()


def test_trace_with_reset_and_spike_exactly_at_threshold():
    # tau = 0.5, Vth = 1 (all values exact in binary floating point):
    # t0: u = 0.5                        -> 0
    # t1: u = 0.5*0.5 + 0.75 = 1.0       -> 1  (exactly at Vth fires: H(0) = 1)
    # t2: u = 0.5*1.0*(1-1) + 0.25 = 0.25 -> 0  (reset by the spike)
    # t3: u = 0.5*0.25 + 1.0 = 1.125     -> 1
    # t4: u = 0 + 0 = 0                  -> 0
    spikes, potentials = run([0.5, 0.75, 0.25, 1.0, 0.0], tau=0.5, vth=1.0)
    assert spikes == [0, 1, 0, 1, 0]
    assert potentials == [0.5, 1.0, 0.25, 1.125, 0.0]


def test_just_below_threshold_does_not_fire():
    spikes, _ = run([1.0 - 2**-20], tau=0.5, vth=1.0)
    assert spikes == [0]


def test_bias_is_added_every_step():
    # tau = 0.5, Vth = 1, b = 0.5, no input: u = 0.5, 0.75, 0.875, 0.9375 never fires;
    # with input 0.0625 at t3: u = 0.4375 + 0.0625 + 0.5 = 1.0 fires.
    spikes, potentials = run([0, 0, 0, 0.0625], tau=0.5, vth=1.0, bias=0.5)
    assert potentials == [0.5, 0.75, 0.875, 1.0]
    assert spikes == [0, 0, 0, 1]


def test_tau_zero_forgets_and_tau_one_integrates():
    assert run([0.6, 0.6, 0.6], tau=0.0, vth=1.0)[0] == [0, 0, 0]
    assert run([0.25, 0.25, 0.25, 0.25], tau=1.0, vth=1.0)[0] == [0, 0, 0, 1]


def test_step_matches_sequence_and_is_pure():
    params = LIFParameters(0.3, 0.7)
    x = torch.rand(4, 6, 5, generator=torch.Generator().manual_seed(0))
    state = LIFState.zeros_like(x[:, 0])
    before = state.potential.clone()
    manual = []
    for t in range(6):
        out, new_state = lif_step(x[:, t], state, params, H1, 0.1)
        assert torch.equal(state.potential, before) or t > 0
        state = new_state
        manual.append(out)
    seq, _ = lif_sequence(x, params, H1, 0.1)
    assert torch.equal(torch.stack(manual, 1), seq)


@pytest.mark.parametrize("tau,vth", [(-0.1, 1.0), (1.5, 1.0), (0.5, 0.0), (0.5, -1.0)])
def test_invalid_parameters_are_rejected_by_name(tau, vth):
    with pytest.raises(ValueError, match="tau|v_threshold"):
        LIFParameters(tau, vth)


def _input_gradient(temporal_gradient: bool) -> torch.Tensor:
    x = torch.full((1, 4, 1), 0.3, dtype=torch.float64, requires_grad=True)
    spikes, _ = lif_sequence(x, LIFParameters(0.5, 10.0), Surrogate("h4", 100.0),
                             temporal_gradient=temporal_gradient)
    spikes[:, -1].sum().backward()
    return x.grad.flatten()


def test_stbp_gradient_flows_back_through_time():
    grad = _input_gradient(temporal_gradient=True)
    # No spike occurs (Vth = 10), so u[t] = sum_k 0.5^(t-k) * 0.3. By the chain rule of
    # u[t] = tau u[t-1] (1 - o[t-1]) + x[t] with do/du = h(u - Vth):
    #   du[t]/du[t-1] = tau (1 - o[t-1] - u[t-1] h(u[t-1] - Vth)),  do[3]/du[3] = h(u[3] - Vth).
    h = Surrogate("h4", 100.0).derivative
    u = [0.3, 0.45, 0.525, 0.5625]
    factor = [0.5 * (1 - u[k] * float(h(torch.tensor(u[k] - 10.0, dtype=torch.float64)))) for k in range(3)]
    d3 = float(h(torch.tensor(u[3] - 10.0, dtype=torch.float64)))
    expected = [d3 * factor[0] * factor[1] * factor[2], d3 * factor[1] * factor[2], d3 * factor[2], d3]
    assert grad.tolist() == pytest.approx(expected, rel=1e-9)
    assert (grad[:3] != 0).all()


def test_sdbp_cuts_the_temporal_path():
    grad = _input_gradient(temporal_gradient=False)
    assert (grad[:3] == 0).all()
    assert grad[3] != 0
