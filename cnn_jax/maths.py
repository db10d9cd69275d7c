"""The convolution arithmetic the course teaches, as small documented functions.

* :func:`correlate2d` / :func:`convolve2d`: what a "convolution" layer computes (cross-correlation,
  no kernel flip) versus the textbook convolution (flipped kernel);
* :func:`naive_conv2d`: a readable loop-over-kernel-offsets reference for ``torch.nn.Conv2d``;
* :func:`conv_output_size`, :func:`pool_output_size`, :func:`conv_transpose_output_size`;
* :func:`conv_param_count`;
* :func:`receptive_field` of a stack of layers;
* :func:`conv2d_weight_grad` / :func:`conv2d_input_grad`: backpropagation through a convolution is
  itself a convolution — dL/dW is the cross-correlation of the input with dL/dY, and dL/dX is the
  transposed convolution of dL/dY with W.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from cnn_jax._utils import IntOr2, pair
from cnn_jax.functional.conv import conv_general, conv_transpose2d, resolve_conv_padding
from cnn_jax.functional.sizes import (
    conv_output_size,
    conv_transpose_output_size,
    pool_output_size,
)

Array = jax.Array

__all__ = [
    "ReceptiveField",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "conv_output_size",
    "conv_param_count",
    "conv_transpose_output_size",
    "convolve2d",
    "correlate2d",
    "naive_conv2d",
    "pool_output_size",
    "receptive_field",
]


def conv_param_count(
    in_channels: int, out_channels: int, kernel_size: IntOr2, groups: int = 1, bias: bool = True
) -> int:
    """Learnable parameters of a Conv2d: ``(kH·kW·C_in/groups + 1)·C_out`` (without +1 if no bias).

    >>> conv_param_count(3, 32, 3)  # (3*3*3 + 1) * 32
    896
    """
    kh, kw = pair(kernel_size, "kernel_size")
    return (kh * kw * in_channels // groups + (1 if bias else 0)) * out_channels


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field after a layer: ``size`` input pixels seen by one output pixel, ``jump``
    input pixels between neighbouring outputs, ``start`` the input coordinate of the centre of the
    first output's field (negative when padding reaches outside the image)."""

    size: int
    jump: int
    start: float


def receptive_field(layers: Sequence[tuple[int, ...]]) -> list[ReceptiveField]:
    """Receptive field after each layer of a stack, one axis.

    Each layer is ``(kernel_size, stride)``, ``(kernel_size, stride, padding)`` or
    ``(kernel_size, stride, padding, dilation)``. With effective kernel ``k' = d(k−1)+1``:
    ``r_out = r_in + (k'−1)·j_in``, ``j_out = j_in·s`` and
    ``start_out = start_in + ((k'−1)/2 − p)·j_in``.

    >>> [rf.size for rf in receptive_field([(3, 1), (3, 1), (2, 2), (3, 1)])]
    [3, 5, 6, 10]
    """
    size, jump, start = 1, 1, 0.5
    out = []
    for layer in layers:
        if not 2 <= len(layer) <= 4:
            raise ValueError(
                "each layer is (kernel_size, stride[, padding[, dilation]]), got " + repr(layer)
            )
        k, s = layer[0], layer[1]
        p = layer[2] if len(layer) > 2 else 0
        d = layer[3] if len(layer) > 3 else 1
        k_eff = d * (k - 1) + 1
        start = start + ((k_eff - 1) / 2 - p) * jump
        size = size + (k_eff - 1) * jump
        jump = jump * s
        out.append(ReceptiveField(size, jump, start))
    return out


def correlate2d(image: Array, kernel: Array) -> Array:
    """Valid 2-D cross-correlation of one image with one kernel (what CNN layers compute):
    ``out[i, j] = Σ_{u,v} image[i+u, j+v] · kernel[u, v]``.

    >>> correlate2d(jnp.arange(9.0).reshape(3, 3), jnp.array([[1.0, 0.0], [0.0, -1.0]]))
    Array([[-4., -4.],
           [-4., -4.]], dtype=float32)
    """
    if image.ndim != 2 or kernel.ndim != 2:
        raise ValueError(
            f"correlate2d takes 2-D image and kernel, got {image.shape} and {kernel.shape}"
        )
    kh, kw = kernel.shape
    oh, ow = image.shape[0] - kh + 1, image.shape[1] - kw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel {kernel.shape} is larger than image {image.shape}")
    out = jnp.zeros((oh, ow), jnp.result_type(image, kernel))
    for u in range(kh):
        for v in range(kw):
            out = out + image[u : u + oh, v : v + ow] * kernel[u, v]
    return out


def convolve2d(image: Array, kernel: Array) -> Array:
    """Valid 2-D *convolution* in the mathematical sense: cross-correlation with the kernel
    flipped in both axes. Equal to :func:`correlate2d` for symmetric kernels only.

    >>> convolve2d(jnp.arange(9.0).reshape(3, 3), jnp.array([[1.0, 0.0], [0.0, -1.0]]))
    Array([[4., 4.],
           [4., 4.]], dtype=float32)
    """
    return correlate2d(image, kernel[::-1, ::-1])


def naive_conv2d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    stride: IntOr2 = 1,
    padding: IntOr2 | str = 0,
    dilation: IntOr2 = 1,
    groups: int = 1,
) -> Array:
    """Reference ``torch.nn.Conv2d`` (zero padding) written as the course explains it: for every
    kernel offset (u, v), take the strided input window it touches and accumulate
    ``window · weight[:, :, u, v]``. NHWC input, OIHW weight. Slow and obviously right.
    """
    out_c, c_per_group, kh, kw = weight.shape
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    pads = resolve_conv_padding(padding, (kh, kw), s, d)
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, h, w, _ = x.shape
    oh = (h - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (w - d[1] * (kw - 1) - 1) // s[1] + 1
    out_per_group = out_c // groups
    y = jnp.zeros((n, oh, ow, out_c), jnp.result_type(x, weight))
    for u in range(kh):
        for v in range(kw):
            r0, c0 = u * d[0], v * d[1]
            window = x[
                :, r0 : r0 + (oh - 1) * s[0] + 1 : s[0], c0 : c0 + (ow - 1) * s[1] + 1 : s[1]
            ]
            for g in range(groups):
                xg = window[..., g * c_per_group : (g + 1) * c_per_group]
                wg = weight[g * out_per_group : (g + 1) * out_per_group, :, u, v]
                y = y.at[..., g * out_per_group : (g + 1) * out_per_group].add(
                    jnp.einsum("nhwc,oc->nhwo", xg, wg)
                )
    if bias is not None:
        y = y + bias
    return y


def conv2d_weight_grad(
    x: Array,
    grad_output: Array,
    kernel_size: IntOr2,
    stride: IntOr2 = 1,
    padding: IntOr2 = 0,
    dilation: IntOr2 = 1,
) -> Array:
    """dL/dW of ``conv2d(x, W)`` (groups=1): the cross-correlation of the padded input with
    dL/dY, where dL/dY acts as the kernel, dilated by the stride (and the input window steps by the
    dilation). Returns OIHW, like the weight.

    For stride 1, dilation 1: ``dW[o, c, u, v] = Σ_{n,i,j} x_pad[n, i+u, j+v, c] · dY[n, i, j, o]``.
    """
    kh, kw = pair(kernel_size, "kernel_size")
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    p = pair(padding, "padding", minimum=0)
    # Treat channels as the batch, the batch as the contracted feature axis:
    # lhs (C, H, W, N)  *  rhs (O, N, Ho, Wo)  ->  (C, kH, kW, O)
    lhs = x.transpose(3, 1, 2, 0)
    rhs = grad_output.transpose(3, 0, 1, 2)
    h, w = x.shape[1] + 2 * p[0], x.shape[2] + 2 * p[1]
    # The window of the last output may stop before the padded edge: crop what it never reads.
    hi = (
        (kh - 1) * d[0] + (grad_output.shape[1] - 1) * s[0] + 1 - h,
        (kw - 1) * d[1] + (grad_output.shape[2] - 1) * s[1] + 1 - w,
    )
    g = conv_general(
        lhs,
        rhs,
        window_strides=d,
        padding=((p[0], p[0] + hi[0]), (p[1], p[1] + hi[1])),
        rhs_dilation=s,
    )
    return g.transpose(3, 0, 1, 2)


def conv2d_input_grad(
    grad_output: Array,
    weight: Array,
    input_size: tuple[int, int],
    stride: IntOr2 = 1,
    padding: IntOr2 = 0,
    dilation: IntOr2 = 1,
) -> Array:
    """dL/dX of ``conv2d(x, W)`` (groups=1): the transposed convolution of dL/dY with the same
    weight — a "full" convolution with the flipped kernel. ``input_size`` picks the
    ``output_padding`` that restores the input's height and width.
    """
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    p = pair(padding, "padding", minimum=0)
    kh, kw = weight.shape[2:]
    output_padding = tuple(
        input_size[i]
        - conv_transpose_output_size(grad_output.shape[1 + i], (kh, kw)[i], s[i], p[i], 0, d[i])
        for i in range(2)
    )
    # A transposed conv's weight is (in, out, kH, kW): conv2d's (O, I) read as (in=O, out=I).
    return conv_transpose2d(
        grad_output, weight, stride=s, padding=p, output_padding=output_padding, dilation=d
    )
