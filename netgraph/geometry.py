"""Shape arithmetic of convolutions and average pools: the one definition every stage uses.

Layout: feature maps are (channels, height, width), flattened in C order; kernels are
(out_channels, in_channels, kernel_h, kernel_w) as in PyTorch's Conv2d (cross-correlation,
zero padding). Stride and padding are the same along height and width.
"""
from __future__ import annotations

from dataclasses import dataclass

from netgraph.errors import GraphError


@dataclass(frozen=True)
class ConvGeometry:
    """in_shape (C, H, W), kernel (kh, kw), stride and zero padding (same along H and W)."""

    in_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: int = 1
    padding: int = 0

    @property
    def out_hw(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        kh, kw = self.kernel
        return ((h + 2 * self.padding - kh) // self.stride + 1, (w + 2 * self.padding - kw) // self.stride + 1)

    def out_shape(self, out_channels: int) -> tuple[int, int, int]:
        return (out_channels, *self.out_hw)

    def problem(self) -> str | None:
        """Why this geometry is invalid, or None when it is valid."""
        if len(self.in_shape) != 3 or len(self.kernel) != 2:
            return f"needs a (channels, height, width) input and a 2-D kernel, got {self.in_shape} and {self.kernel}"
        c, h, w = self.in_shape
        kh, kw = self.kernel
        if min(c, h, w, kh, kw, self.stride) < 1 or self.padding < 0:
            return (f"invalid conv geometry: input {self.in_shape}, kernel {self.kernel}, stride {self.stride}, "
                    f"padding {self.padding}")
        if self.padding >= min(kh, kw):
            return (f"padding {self.padding} must be smaller than the {kh}x{kw} kernel (wider padding only adds "
                    "outputs that read nothing but zeros)")
        if kh > h + 2 * self.padding or kw > w + 2 * self.padding:
            return f"kernel {kh}x{kw} is larger than the padded {h}x{w} input (padding {self.padding})"
        return None


def pooled_shape(in_shape: tuple[int, ...], pool: int) -> tuple[int, int, int]:
    """(C, H / pool, W / pool) of a non-overlapping pool x pool average; the pool must divide
    the map (folding it into the next synapse is exact only then, see export.conv)."""
    if len(in_shape) != 3:
        raise GraphError(f"needs a (channels, height, width) input, got {in_shape}")
    c, h, w = in_shape
    if pool < 1 or h % pool or w % pool:
        raise GraphError(f"pool size {pool} must divide the {h}x{w} map (folding into the next synapse is "
                         "exact only then)")
    return (c, h // pool, w // pool)
