"""Average-pool folding, conv synaptic sums and the conv as a matrix: one definition used
by the exporter, the emulator and the Lava mapping (the shape arithmetic is
netgraph.geometry).

Layout: feature maps are (channels, height, width), flattened in C order; kernels are
(out_channels, in_channels, kernel_h, kernel_w) as in PyTorch's Conv2d (cross-correlation,
zero padding).

Average pooling is not a spiking layer in STBP (the paper pools the spikes and feeds the
result to the next layer), and a Loihi core only receives binary spikes. So a p x p average
pool (stride p) is folded into the synaptic layer after it, which is exact because pooling
is linear:
    conv_k(avgpool_p(s)) = conv with kernel K'[o, c, p u + a, p v + b] = K[o, c, u, v] / p^2,
                           stride p * stride, padding p * padding, applied to s itself;
    W avgpool_p(s)       = W' s with W'[o, (c, y, x)] = W[o, (c, y // p, x // p)] / p^2.
The folded layer reads the pre-pool spikes directly; the scale of the quantization is set
by the largest folded weight, so the 8-bit precision of the weights is unchanged (every
weight is divided by the same p^2). Pool sizes must divide the map they pool, otherwise the
folded conv's padding would read real pixels where the pooled map had zeros.
"""
from __future__ import annotations

import numpy as np

from netgraph.geometry import ConvGeometry
from netgraph.limits import check_memory


def fold_avgpool_into_conv(kernel: np.ndarray, stride: int, padding: int, pool: int) -> tuple[np.ndarray, int, int]:
    """(kernel', stride', padding') of conv_k(avgpool_pool(s)) written as one conv on s."""
    folded = np.repeat(np.repeat(kernel, pool, axis=2), pool, axis=3) / float(pool * pool)
    return folded, stride * pool, padding * pool


def fold_avgpool_into_dense(weight: np.ndarray, pooled_shape: tuple[int, int, int], pool: int) -> np.ndarray:
    """W' (out, C*H*W) acting on the pre-pool map of W (out, C*Hp*Wp) after a pool x pool average."""
    c, hp, wp = pooled_shape
    w = weight.reshape(weight.shape[0], c, hp, wp)
    folded = np.repeat(np.repeat(w, pool, axis=2), pool, axis=3) / float(pool * pool)
    return folded.reshape(weight.shape[0], -1)


def _windows(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """x (N, C, H, W) -> (N, H', W', C * kh * kw) patches (a view where possible)."""
    p = geometry.padding
    if p:
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    kh, kw = geometry.kernel
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    view = view[:, :, :: geometry.stride, :: geometry.stride]  # (N, C, H', W', kh, kw)
    oh, ow = geometry.out_hw
    view = view[:, :, :oh, :ow]
    return view.transpose(0, 2, 3, 1, 4, 5).reshape(x.shape[0], oh, ow, -1)


def conv_accumulate(x_flat: np.ndarray, kernel: np.ndarray, geometry: ConvGeometry, dtype=np.float64,
                    max_elements: int = 1 << 24) -> np.ndarray:
    """Synaptic sums of a conv: x_flat (N, C*H*W) -> (N, O*H'*W') in C order, computed in
    `dtype` (exact for integer inputs when every partial sum fits the float's mantissa).
    Works in blocks of samples so the patch matrix stays below `max_elements`."""
    n = x_flat.shape[0]
    out_channels = kernel.shape[0]
    oh, ow = geometry.out_hw
    k = kernel.reshape(out_channels, -1).T.astype(dtype)
    per_sample = oh * ow * k.shape[0]
    block = max(1, max_elements // max(1, per_sample))
    out = np.empty((n, out_channels * oh * ow), dtype=dtype)
    for start in range(0, n, block):
        x = x_flat[start : start + block].reshape(-1, *geometry.in_shape).astype(dtype)
        patches = _windows(x, geometry)  # (b, H', W', C kh kw)
        sums = patches @ k  # (b, H', W', O)
        out[start : start + block] = sums.transpose(0, 3, 1, 2).reshape(len(x), -1)
    return out


def conv_matrix(kernel: np.ndarray, geometry: ConvGeometry, what: str = "conv") -> np.ndarray:
    """The conv as a dense (O*H'*W', C*H*W) matrix: row (o, i, j) holds the kernel weights at
    the inputs its receptive field covers, so matrix @ x_flat == conv_accumulate(x_flat).
    Refused (ResourceLimitError naming `what`) past netgraph.limits.memory_limit()."""
    c, h, w = geometry.in_shape
    out_channels = kernel.shape[0]
    oh, ow = geometry.out_hw
    kh, kw = geometry.kernel
    check_memory(out_channels * oh * ow * c * h * w * kernel.dtype.itemsize, f"{what}: the unrolled conv matrix")
    matrix = np.zeros((out_channels, oh, ow, c, h, w), dtype=kernel.dtype)
    for i in range(oh):
        for j in range(ow):
            y0, x0 = i * geometry.stride - geometry.padding, j * geometry.stride - geometry.padding
            ys, xs = slice(max(0, y0), min(h, y0 + kh)), slice(max(0, x0), min(w, x0 + kw))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                continue  # the window lies entirely in the zero padding
            ky = slice(ys.start - y0, ys.stop - y0)
            kx = slice(xs.start - x0, xs.stop - x0)
            matrix[:, i, j, :, ys, xs] = kernel[:, :, ky, kx]
    return matrix.reshape(out_channels * oh * ow, c * h * w)
