"""Strided window slices, shared by the im2col convolution and dilated max pooling."""

from __future__ import annotations

import jax
from jax import lax


def strided_windows(
    x: jax.Array,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
) -> list[jax.Array]:
    """For each kernel offset (u, v), row-major, the NHWC slice of ``x`` (already padded) that the
    offset reads for every output position: a list of kH*kW arrays of shape (N, oH, oW, C)."""
    n, _, _, c = x.shape
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel_size, stride, dilation, out_size
    return [
        lax.slice(
            x,
            (0, u * dh, v * dw, 0),
            (n, u * dh + (oh - 1) * sh + 1, v * dw + (ow - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for u in range(kh)
        for v in range(kw)
    ]
