"""Surrogate derivatives of the spike function (Wu et al. 2018, section 2.3, eqs. 24-27).

The forward pass is the Heaviside step H(z) with H(0) = 1 (z = u - Vth, so a potential
exactly at threshold fires). The backward pass replaces dH/dz with one of four curves,
each integrating to 1 over z, parameterised by the paper's `a`:

    h1 (rectangular): (1/a) * [|z| < a/2]                              support width a
    h2 (polynomial):  (sqrt(a)/2 - a/4 |z|) * [|z| < 2/sqrt(a)]         support width 4/sqrt(a)
    h3 (sigmoid):     (1/a) e^{-z/a} / (1 + e^{-z/a})^2                 logistic scale a
    h4 (Gaussian):    exp(-z^2 / (2a)) / sqrt(2 pi a)                   variance a
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from netgraph.errors import ConfigError

SURROGATE_NAMES = ("h1", "h2", "h3", "h4")


@dataclass(frozen=True)
class Surrogate:
    """A named surrogate derivative with its width parameter `a` (> 0, potential units)."""

    name: str = "h1"
    a: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SURROGATE_NAMES:
            raise ConfigError(
                f"unknown surrogate {self.name!r}; choose one of {', '.join(SURROGATE_NAMES)}"
            )
        if not (self.a > 0 and math.isfinite(self.a)):
            raise ConfigError(f"surrogate width 'a' must be a positive number, got {self.a}")

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """The surrogate dH/dz evaluated at z = u - Vth (same shape as z)."""
        a = self.a
        if self.name == "h1":
            return (z.abs() < a / 2).to(z.dtype) / a
        if self.name == "h2":
            return torch.clamp(math.sqrt(a) / 2 - a / 4 * z.abs(), min=0.0)
        if self.name == "h3":
            s = torch.sigmoid(z / a)
            return s * (1 - s) / a
        return torch.exp(-(z * z) / (2 * a)) / math.sqrt(2 * math.pi * a)

    def kernel_form(self) -> tuple[int, float]:
        """(kind, width) of this derivative in trainer.lif_cpu.surrogate_derivative, the scalar
        form of the same equations the compiled CPU recurrence evaluates (h1-h4: 1-4)."""
        return SURROGATE_NAMES.index(self.name) + 1, self.a


class _SpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.surrogate = surrogate
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(z), None


def spike(z: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """H(z) (1.0 where z >= 0) with the surrogate's derivative in the backward pass."""
    return _SpikeFunction.apply(z, surrogate)
