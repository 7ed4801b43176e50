"""Surrogate derivatives h1-h4 (paper section 2.3): unit integral, widths, and use in backward."""
import math

import pytest
import torch

from trainer.surrogate import Surrogate, spike

Z = torch.linspace(-60, 60, 1_200_001, dtype=torch.float64)
DZ = float(Z[1] - Z[0])


def integral(values: torch.Tensor) -> float:
    return float(torch.trapezoid(values, dx=DZ))


@pytest.mark.parametrize("name", ["h1", "h2", "h3", "h4"])
@pytest.mark.parametrize("a", [0.25, 1.0, 4.0])
def test_unit_integral(name, a):
    assert integral(Surrogate(name, a).derivative(Z)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_h1_is_a_rectangle_of_width_a_and_height_1_over_a(a):
    h = Surrogate("h1", a).derivative(Z)
    inside = Z.abs() < a / 2 - 1e-6
    outside = Z.abs() > a / 2 + 1e-6
    assert torch.allclose(h[inside], torch.full_like(h[inside], 1 / a))
    assert (h[outside] == 0).all()


@pytest.mark.parametrize("a", [0.5, 1.0, 4.0])
def test_h2_is_a_triangle_reaching_zero_at_2_over_sqrt_a(a):
    s = Surrogate("h2", a)
    assert float(s.derivative(torch.tensor(0.0))) == pytest.approx(math.sqrt(a) / 2)
    edge = 2 / math.sqrt(a)
    assert float(s.derivative(torch.tensor(edge * 0.999))) > 0
    assert float(s.derivative(torch.tensor(edge * 1.001))) == 0


@pytest.mark.parametrize("a", [0.3, 1.0])
def test_h3_and_h4_spread_with_a(a):
    # Second moments: logistic with scale a has variance (pi a)^2 / 3; h4 has variance a.
    second = lambda h: integral(Z * Z * h)  # noqa: E731
    assert second(Surrogate("h3", a).derivative(Z)) == pytest.approx((math.pi * a) ** 2 / 3, rel=1e-3)
    assert second(Surrogate("h4", a).derivative(Z)) == pytest.approx(a, rel=1e-3)
    assert float(Surrogate("h3", a).derivative(torch.tensor(0.0))) == pytest.approx(1 / (4 * a))


@pytest.mark.parametrize("name", ["h1", "h2", "h3", "h4"])
def test_spike_forward_is_heaviside_and_backward_is_the_surrogate(name):
    surrogate = Surrogate(name, 1.0)
    z = torch.tensor([-1.0, -0.2, 0.0, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    out = spike(z, surrogate)
    assert out.tolist() == [0, 0, 1, 1, 1]
    out.sum().backward()
    assert torch.allclose(z.grad, surrogate.derivative(z.detach()))


def test_unknown_surrogate_and_bad_width_are_rejected():
    with pytest.raises(ValueError, match="h5"):
        Surrogate("h5", 1.0)
    with pytest.raises(ValueError, match="width"):
        Surrogate("h1", 0.0)
