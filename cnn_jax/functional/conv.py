"""Convolutions with PyTorch's semantics on NHWC arrays.

Weights keep torch's layouts so a ``state_dict`` tensor is a parameter as it is:

* ``conv2d``: ``weight`` is ``(out_channels, in_channels // groups, kH, kW)`` (OIHW);
* ``conv_transpose2d``: ``weight`` is ``(in_channels, out_channels // groups, kH, kW)``.

XLA reads the OIHW kernel through ``dimension_numbers`` and lays it out for its convolution itself
(a copy of the kernel, small beside the convolution). Its convolution computes a weight gradient
in its own layout, input-channel major; for large kernels that gradient is transposed into torch's
layout once, as an array of its own, before the optimiser reads it
(:data:`STORED_WEIGHT_GRADIENT_SIZE`, :func:`~cnn_jax.functional.materialize_gradient`). Under
``'auto'`` a 1x1 kernel's weight gradient is a matmul that comes out in torch's layout, and is
not stored.

Every convolution, transposed ones included, goes through :func:`conv_general`, whose
``backend`` argument says how it is computed: ``'auto'`` by default (XLA's convolution, with a
matmul formulation for the forward pass or input gradient where XLA:CPU is slow, for 1x1
kernels' weight gradients and for convolutions whose products are mostly by padding, elementwise
products for depthwise convolutions (large kernels on small maps: by the unfolded kernel) and a
batched matmul for other grouped ones; :func:`auto_plan` says which part runs how and why),
``'xla'`` (``lax.conv_general_dilated`` always), ``'im2col'`` (explicit patches + one matmul
always), ``'banded'`` (a matmul against a banded matrix built from the kernel, always),
``'depthwise'`` (slices times per-channel weights for
every depthwise convolution, XLA's convolution for the others), ``'grouped'`` (group-major
patches and one matmul batched over the groups for every grouped convolution with several
channels per group, XLA's convolution for the others), ``'unfolded'`` (one matmul per group by
the kernel unfolded into the matrix from the input map to the output map, or for a depthwise
convolution on at most 9 positions a sum of products by that matrix's rows, for every
convolution on a map with at most 1.5 positions per kernel tap; XLA's for the others) or
``'taps'`` (one matmul per kernel tap on the input it reads, no products by padding, for every
ungrouped convolution; XLA's for the others). The layers take it as
``Conv2d(..., backend=)``, and a whole model as :func:`cnn_jax.nn.with_layer_settings`
``(model.apply, conv_backend=...)`` or the step builders' ``conv_backend``: it is an argument of
the function that is traced, never a setting of the process.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from cnn_jax._utils import IntOr2, pair
from cnn_jax.functional._windows import strided_windows
from cnn_jax.functional.fusion import materialize_gradient, store_tangent
from cnn_jax.functional.sizes import conv_output_size, conv_transpose_output_size

Array = jax.Array
Padding2 = tuple[tuple[int, int], tuple[int, int]]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_JNP_PAD_MODE = types.MappingProxyType(
    {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
)

# --------------------------------------------------------------------------------------------------
# The single convolution entry point and its backends.
# --------------------------------------------------------------------------------------------------

ConvBackend = Callable[..., Array]


def _conv_xla(
    x: Array,
    kernel: Array,
    *,
    window_strides: tuple[int, int],
    padding: Padding2,
    lhs_dilation: tuple[int, int],
    rhs_dilation: tuple[int, int],
    groups: int,
    precision: Any,
) -> Array:
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
        feature_group_count=groups,
        precision=precision,
    )


def _pad_for_slicing(
    x: Array,
    kernel: Array,
    window_strides: tuple[int, int],
    padding: Padding2,
    rhs_dilation: tuple[int, int],
) -> tuple[Array, tuple[int, int]]:
    """``x`` zero-padded for the slicing backends (or cropped: ``lax.pad`` takes negative
    padding, as ``lax.conv_general_dilated`` does), and the output's (height, width)."""
    x = lax.pad(
        x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0))
    )
    out_size = tuple(
        conv_output_size(size, k, 0, stride, d)  # x is padded already
        for size, k, stride, d in zip(
            x.shape[1:3], kernel.shape[2:], window_strides, rhs_dilation, strict=True
        )
    )
    return x, out_size


def _is_depthwise(kernel_shape: tuple[int, ...], groups: int) -> bool:
    """One input channel per group (and more than one group)."""
    return groups > 1 and kernel_shape[1] == 1


def _is_grouped(kernel_shape: tuple[int, ...], groups: int) -> bool:
    """Several groups of several input channels each."""
    return groups > 1 and kernel_shape[1] > 1


def _ungrouped(kernel_shape: tuple[int, ...], groups: int) -> bool:
    """One group."""
    return groups == 1


def _or_xla(
    computes: Callable[[tuple[int, ...], int], bool] | None = None,
    *,
    on_maps: Callable[..., bool] | None = None,
) -> Callable[[ConvBackend], ConvBackend]:
    """Makes a backend out of an implementation that computes the convolutions whose
    ``(kernel_shape, groups)`` satisfy ``computes`` (all, if ``None``), whose geometry
    satisfies ``on_maps(spatial, kernel_hw, window_strides, padding, rhs_dilation)`` where
    given, and none with input dilation (transposed convolutions): every other convolution goes
    to :func:`_conv_xla`."""

    def wrap(implementation: ConvBackend) -> ConvBackend:
        @functools.wraps(implementation)
        def backend(x: Array, kernel: Array, **kwargs: Any) -> Array:
            geometry = (kwargs["window_strides"], kwargs["padding"], kwargs["rhs_dilation"])
            if (
                kwargs["lhs_dilation"] != (1, 1)
                or not (computes is None or computes(kernel.shape, kwargs["groups"]))
                or not (on_maps is None or on_maps(x.shape[1:3], kernel.shape[2:], *geometry))
            ):
                return _conv_xla(x, kernel, **kwargs)
            return implementation(x, kernel, **kwargs)

        return backend

    return wrap


@_or_xla()
def _conv_im2col(
    x: Array,
    kernel: Array,
    *,
    window_strides: tuple[int, int],
    padding: Padding2,
    lhs_dilation: tuple[int, int],
    rhs_dilation: tuple[int, int],
    groups: int,
    precision: Any,
) -> Array:
    """Convolution as strided slices (im2col) followed by one batched matmul per group.

    Trades memory (the patch tensor is kH*kW times the input) for a plain matmul, which XLA's CPU
    backend runs much faster than its direct convolution for small kernels. Input dilation
    (transposed convolutions) is delegated to XLA, which handles the zero-insertion efficiently.
    """
    x, (ho, wo) = _pad_for_slicing(x, kernel, window_strides, padding, rhs_dilation)
    n = x.shape[0]
    out_c, c_per_group, kh, kw = kernel.shape
    if (ho, wo) == (1, 1) and rhs_dilation == (1, 1):
        # The kernel covers the input (LeNet's C5, a classifier written as a convolution): the
        # patch is the input's top-left kH x kW corner, a reshape rather than kH*kW slices, and
        # its input gradient a pad rather than kH*kW of them.
        patches = x[:, :kh, :kw].reshape(n, 1, 1, kh * kw, groups, c_per_group)
    else:
        columns = strided_windows(x, (kh, kw), window_strides, rhs_dilation, (ho, wo))
        patches = jnp.stack(columns, axis=3).reshape(n, ho, wo, kh * kw, groups, c_per_group)
    k = kernel.reshape(groups, out_c // groups, c_per_group, kh * kw)
    y = jnp.einsum("nhwkgc,gock->nhwgo", patches, k, precision=precision)
    return y.reshape(n, ho, wo, out_c)


@_or_xla(_ungrouped)
def _conv_banded(
    x: Array,
    kernel: Array,
    *,
    window_strides: tuple[int, int],
    padding: Padding2,
    lhs_dilation: tuple[int, int],
    rhs_dilation: tuple[int, int],
    groups: int,
    precision: Any,
) -> Array:
    """Convolution as one matmul against a banded (Toeplitz) matrix built from the kernel.

    Each output row ``h`` reads ``kH`` whole input rows; stacking them gives an
    ``(N*oH, kH*W*C)`` matrix (only ``kH`` times the input, against im2col's ``kH*kW``). The kernel
    is spread into a ``(kH*W*C, oW*O)`` matrix whose column ``(w, o)`` holds ``kernel[o, :, :, :]``
    at the input columns output column ``w`` reads (a constant 0/1 tensor places it), so one
    matmul yields the output already in NHWC order. The matmul does ``W/kW`` times the
    convolution's multiplications (the band's zeros), and pays that back where XLA:CPU's direct
    convolution leaves most vector lanes idle: results with few channels (LeNet's first layer,
    the input gradient of its second; see :func:`_conv_auto`). Derivatives are a matmul each
    too. Grouped and input-dilated convolutions are delegated to XLA.
    """
    x, (ho, wo) = _pad_for_slicing(x, kernel, window_strides, padding, rhs_dilation)
    w = x.shape[2]
    kh, kw = kernel.shape[2:]
    (sh, sw), (dh, dw) = window_strides, rhs_dilation
    rows = strided_windows(x, (kh, 1), (sh, 1), (dh, 1), (ho, w))  # kH arrays (N, oH, W, C)
    stacked = jnp.stack(rows, axis=2)  # (N, oH, kH, W, C)
    # place[v, b, a] = 1 where output column a reads input column b through kernel column v.
    place = np.zeros((kw, w, wo), dtype=np.float32)
    for v in range(kw):
        place[v, np.arange(wo) * sw + v * dw, np.arange(wo)] = 1.0
    band = jnp.einsum(
        "ocuv,vba->ubcao", kernel, jnp.asarray(place, kernel.dtype), precision=precision
    )
    return jnp.einsum("nhubc,ubcao->nhao", stacked, band, precision=precision)


@_or_xla(_is_depthwise)
def _conv_depthwise(
    x: Array,
    kernel: Array,
    *,
    window_strides: tuple[int, int],
    padding: Padding2,
    lhs_dilation: tuple[int, int],
    rhs_dilation: tuple[int, int],
    groups: int,
    precision: Any,
) -> Array:
    """A depthwise convolution (one input channel per group, MobileNet's and EfficientNet's)
    as a sum over the kernel's taps of strided input slices times per-channel weights.

    That is elementwise work vectorised over the channels; XLA:CPU's grouped convolution runs
    the same arithmetic as one tiny convolution per channel, far slower (jax-ml/jax#23713),
    forward and backward alike. The input gradient is the same kind of sum over the output
    gradient, dilated by the stride and padded once (see :func:`_depthwise`); the weight
    gradient is one reduction per tap. Other grouped, ungrouped and input-dilated (transposed)
    convolutions are delegated to XLA. ``precision`` does not apply: there is no matmul.
    """
    x = _one_input_channel_per_output(x, kernel.shape[0], groups)
    chunk = x.shape[0]
    if jax.default_backend() == "cpu":
        out_shape = jax.eval_shape(
            functools.partial(
                _depthwise_taps,
                window_strides=window_strides,
                padding=padding,
                rhs_dilation=rhs_dilation,
            ),
            x,
            kernel,
        ).shape
        chunk = depthwise_weight_grad_chunk(out_shape, tuple(kernel.shape[2:]), x.dtype.itemsize)
    return _depthwise(x, kernel, window_strides, padding, rhs_dilation, chunk)


def _one_input_channel_per_output(x: Array, out_channels: int, groups: int) -> Array:
    """``x`` (NHWC) with each input channel repeated once per output channel of its group: with
    a channel multiplier m, output channel g * m + j reads input channel g, so repeating each
    input channel m times makes a depthwise convolution one input channel per output channel."""
    if out_channels == groups:
        return x
    return jnp.repeat(x, out_channels // groups, axis=-1)


def _sum_of_products(terms: list[Array], weights: Array) -> Array:
    """``sum over i of terms[i] * weights[i]``, added in order."""
    y = terms[0] * weights[0]
    for i in range(1, len(terms)):
        y = y + terms[i] * weights[i]
    return y


def _tap_major(kernel: Array) -> Array:
    """A depthwise ``kernel`` (C, 1, kH, kW) as a (kH*kW, C) array laid out tap by tap.

    Each tap's weights are then contiguous over the channels, the axis the elementwise sum
    vectorises over. A transpose would not do: XLA gives its result the layout that makes it a
    free bitcast of the (C, kH*kW) kernel, so every tap would still gather its weights with a
    stride of kH*kW. A product with the identity matrix is a matmul, whose result has the
    row-major layout, and it is exact (each entry is one weight times one plus zeros); an
    infinite weight makes its channel's other taps NaN (zero times infinity), where torch's
    result for that channel is not finite either.
    """
    weights = kernel.reshape(kernel.shape[0], -1)
    eye = jnp.eye(weights.shape[1], dtype=weights.dtype)
    return lax.dot_general(eye, weights, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST)


def _weighted_taps(taps: list[Array], kernel: Array, *, fenced: bool = False) -> Array:
    """sum over taps t (row-major over the kernel) of ``taps[t] * kernel[:, 0, t]``.

    ``fenced``: the sum is computed in two halves (along the first axis but the channels' that
    is longer than one) joined by a concatenate. XLA:CPU hands reductions to YNNPACK, whose
    fusion then grows upwards through elementwise producers: a reduction over this sum (a
    LayerNorm's statistics) would pull the products in, and each tap's slice and broadcast
    weights, which it cannot fuse, would be written out as a full-size array (up to one per tap
    of ConvNeXt's 7x7, several times the sum's own cost). YNNPACK's fusion does not take a
    concatenate, so it stops there and XLA computes the sum in one pass over the input. Used
    for the results a layer passes on (the forward pass and the input gradient), not for the
    weight gradient's per-tap products.
    """
    weights = _tap_major(kernel)
    total = functools.partial(_sum_of_products, weights=weights)

    # Any axis but the channels', which the weights run along.
    leading = taps[0].shape[:-1]
    axis = next((a for a, size in enumerate(leading) if size > 1), None) if fenced else None
    if axis is None:
        return total(taps)
    half = taps[0].shape[axis] // 2
    parts = [
        total([lax.slice_in_dim(t, start, stop, axis=axis) for t in taps])
        for start, stop in ((0, half), (half, taps[0].shape[axis]))
    ]
    return lax.concatenate(parts, axis)


def _depthwise_taps(x, kernel, window_strides, padding, rhs_dilation, *, fenced=False):
    """sum over taps t of (the slice of padded ``x`` that tap t reads) * ``kernel[:, 0, t]``
    (``fenced``: see :func:`_weighted_taps`)."""
    x, (ho, wo) = _pad_for_slicing(x, kernel, window_strides, padding, rhs_dilation)
    taps = strided_windows(x, kernel.shape[2:], window_strides, rhs_dilation, (ho, wo))
    return _weighted_taps(taps, kernel, fenced=fenced)


def _depthwise_input_grad(g, kernel, in_hw, window_strides, padding, rhs_dilation):
    """The input gradient of :func:`_depthwise_taps` (an input of spatial size ``in_hw``) for
    the output gradient ``g``: ``g`` dilated by the stride and padded once, then the same sum
    of slices times per-channel weights as the forward pass, each tap reading the slice its
    output positions came from (a correlation with the flipped kernel)."""
    kh, kw = kernel.shape[2:]
    config, offsets = [(0, 0, 0)], []
    for n_in, n_out, k, s, d, (lo, _) in zip(
        in_hw, g.shape[1:3], (kh, kw), window_strides, rhs_dilation, padding, strict=True
    ):
        # Output i reads input i*s + t*d - lo through tap t; in g dilated by s and padded by
        # `before`, output i sits at before + i*s, so input j finds tap t's contribution at
        # j + lo - t*d + before.
        before = max(0, (k - 1) * d - lo)
        after = max(0, n_in - 1 + lo - (n_out - 1) * s)
        config.append((before, after, s - 1))
        offsets.append([before + lo - t * d for t in range(k)])
    config.append((0, 0, 0))
    g = lax.pad(g, jnp.zeros((), g.dtype), config)
    n, c = g.shape[0], g.shape[-1]
    taps = [
        lax.slice(g, (0, top, left, 0), (n, top + in_hw[0], left + in_hw[1], c))
        for top in offsets[0]
        for left in offsets[1]
    ]
    return _weighted_taps(taps, kernel, fenced=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _depthwise(x, kernel, window_strides, padding, rhs_dilation, chunk):
    """:func:`_depthwise_taps` with a derivative whose transpose (the backward pass) computes
    the input gradient as :func:`_depthwise_input_grad` does. jax's own derivative of the
    slices transposes each tap's slice into a pad of the whole input, kH*kW full-size pads
    summed (ConvNeXt's 7x7: 49 per layer), several times slower on CPU than the forward pass.

    The input part of the tangent is written as the transpose of that input gradient
    (``jax.linear_transpose``), so reverse mode, transposing it back, runs the gradient in its
    gather form; forward mode, ``vmap`` and higher orders work on plain jax operations."""
    return _depthwise_taps(x, kernel, window_strides, padding, rhs_dilation, fenced=True)


@functools.partial(_depthwise.defjvp, symbolic_zeros=True)
def _depthwise_jvp(window_strides, padding, rhs_dilation, chunk, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    y = _depthwise_taps(x, kernel, window_strides, padding, rhs_dilation, fenced=True)
    tangent = None
    if not isinstance(dx, SymbolicZero):
        input_grad = functools.partial(
            _depthwise_input_grad,
            kernel=kernel,
            in_hw=x.shape[1:3],
            window_strides=window_strides,
            padding=padding,
            rhs_dilation=rhs_dilation,
        )
        (tangent,) = jax.linear_transpose(input_grad, jax.ShapeDtypeStruct(y.shape, y.dtype))(dx)
    if not isinstance(dkernel, SymbolicZero):
        part = _depthwise_kernel_tangent(x, dkernel, window_strides, padding, rhs_dilation, chunk)
        tangent = part if tangent is None else tangent + part
    return y, jnp.zeros_like(y) if tangent is None else tangent


# Bytes of output gradient per chunk of the depthwise weight gradient on CPU, times the kernel's
# taps: each of the kH*kW tap reductions rereads the chunk, so more taps want a chunk that stays
# in cache, fewer taps want fewer, larger reductions (each one is a separately launched kernel).
_CHUNK_TAP_BYTES = 6_400 * 2**10


def depthwise_weight_grad_chunk(
    out_shape: tuple[int, ...], kernel_hw: tuple[int, int], itemsize: int
) -> int:
    """How many images at a time the depthwise weight gradient reduces on CPU, for an output
    of ``out_shape`` (NHWC) and a kernel of ``kernel_hw``: the largest divisor of the batch
    whose chunk of output gradient, times the kernel's taps, fits in 6400 KiB, at least one
    image. The whole batch means one reduction per tap over the batch at once.

    >>> depthwise_weight_grad_chunk((32, 16, 16, 96), (7, 7), 4)  # ConvNeXt-T, 64x64 input
    1
    >>> depthwise_weight_grad_chunk((32, 4, 4, 384), (7, 7), 4)
    4
    >>> depthwise_weight_grad_chunk((32, 2, 2, 960), (3, 3), 4)  # MobileNetV2's last ones
    32
    """
    n = out_shape[0]
    per_image = max(1, int(np.prod(out_shape[1:])) * itemsize)
    want = max(1, _CHUNK_TAP_BYTES // (kernel_hw[0] * kernel_hw[1]) // per_image)
    return max(d for d in range(1, min(n, want) + 1) if n % d == 0) if n else 1


def _depthwise_kernel_tangent(x, dkernel, window_strides, padding, rhs_dilation, chunk):
    """The kernel's part of the tangent, ``_depthwise_taps(x, dkernel)``, arranged so that its
    transpose (the weight gradient) runs a few images at a time on CPU.

    Transposed as one piece, the gradient is one reduction per tap over the whole batch, each
    rereading the input and the output gradient (49 passes for ConvNeXt's 7x7), and jax stores
    every tap's slice of the input as a residual of the forward pass. As a ``lax.map`` over
    chunks of the batch whose body is a ``jax.checkpoint``, the forward pass stores only the
    input, and the backward pass, the map transposed, recomputes each chunk's slices and
    reduces them while the chunk is in cache, summing the chunks' gradients in the loop's
    carry. ``chunk`` (images per chunk) is chosen by the caller on CPU
    (:func:`depthwise_weight_grad_chunk`) and is the batch elsewhere, where this is the plain
    sum; it is a static argument of :func:`_depthwise`, so each choice is traced on its own."""
    taps = functools.partial(
        _depthwise_taps, window_strides=window_strides, padding=padding, rhs_dilation=rhs_dilation
    )
    n = x.shape[0]
    if chunk == n:
        return taps(x, dkernel)
    chunks = x.reshape(n // chunk, chunk, *x.shape[1:])
    part = lax.map(jax.checkpoint(lambda xc: taps(xc, dkernel)), chunks)
    return part.reshape(n, *part.shape[2:])


@_or_xla(_is_grouped)
def _conv_grouped(
    x: Array,
    kernel: Array,
    *,
    window_strides: tuple[int, int],
    padding: Padding2,
    lhs_dilation: tuple[int, int],
    rhs_dilation: tuple[int, int],
    groups: int,
    precision: Any,
) -> Array:
    """A grouped convolution with several input channels per group (ResNeXt's, RegNet's) as
    one matmul batched over the groups.

    The input is laid out group-major first (``(groups * N, H, W, C/groups)``), so the patches
    of each group (strided slices, as :func:`_conv_im2col` takes them) are the contiguous rows
    of one ``(N*oH*oW, kH*kW*C/groups)`` matrix, multiplied by that group's
    ``(kH*kW*C/groups, O/groups)`` kernel in a single ``dot_general`` with the group as batch
    dimension. XLA:CPU's own grouped convolution runs tens of times slower. The derivatives
    are batched matmuls, pads and transposes. Depthwise (one channel per group, see
    :func:`_conv_depthwise`), ungrouped and input-dilated convolutions are delegated to XLA.
    """
    out_c, c_per_group, kh, kw = kernel.shape
    n, h, w, _ = x.shape
    out_per_group = out_c // groups
    x = x.reshape(n, h, w, groups, c_per_group).transpose(3, 0, 1, 2, 4)
    x = x.reshape(groups * n, h, w, c_per_group)
    x, (ho, wo) = _pad_for_slicing(x, kernel, window_strides, padding, rhs_dilation)
    taps = strided_windows(x, (kh, kw), window_strides, rhs_dilation, (ho, wo))
    patches = jnp.stack(taps, axis=-2).reshape(groups, n * ho * wo, kh * kw * c_per_group)
    k = kernel.reshape(groups, out_per_group, c_per_group, kh * kw).transpose(0, 1, 3, 2)
    k = k.reshape(groups, out_per_group, kh * kw * c_per_group)
    y = lax.dot_general(patches, k, (((2,), (2,)), ((0,), (0,))), precision=precision)
    y = y.reshape(groups, n, ho, wo, out_per_group).transpose(1, 2, 3, 0, 4)
    return y.reshape(n, ho, wo, out_c)


def _every_window_reads_whole_input(
    spatial: tuple[int, ...],
    kernel: tuple[int, int],
    window_strides: tuple[int, int],
    padding: Padding2,
    rhs_dilation: tuple[int, int],
) -> bool:
    """Whether every output position's window reads every input position (each through one
    tap): a 3x3 convolution with padding 1 on a 1x1 or 2x2 map, not on a 3x3 one (the corner
    outputs miss the far corner). Then the unfolded matrix of :func:`_conv_unfolded` has no
    zero entries, and no more rows than im2col's patches have columns."""
    for size, k, stride, (low, high), d in zip(
        spatial, kernel, window_strides, padding, rhs_dilation, strict=True
    ):
        out = conv_output_size(size + low + high, k, 0, stride, d)
        if out <= 0 or sum(len(_tap_reach(size, out, t, stride, low, d)) for t in range(k)) != (
            size * out
        ):
            return False
    return True


def _unfolded_index(
    spatial: tuple[int, ...],
    kernel: tuple[int, int],
    window_strides: tuple[int, int],
    padding: Padding2,
    rhs_dilation: tuple[int, int],
) -> tuple[np.ndarray, tuple[int, int]]:
    """For each (input position, output position) pair of a convolution's maps, both row-major,
    the kernel tap (row-major) through which that output reads that input, or ``kH*kW`` where
    it reads it through none (the pair's entry of the unfolded matrix is zero): an
    ``(H*W, oH*oW)`` integer array, and the output's (height, width). A tap's reach is
    :func:`_tap_reach`'s, as for :func:`_conv_taps`."""
    per_dim = []
    for size, k, stride, (low, high), d in zip(
        spatial, kernel, window_strides, padding, rhs_dilation, strict=True
    ):
        out = max(0, conv_output_size(size + low + high, k, 0, stride, d))
        tap = np.full((size, out), -1)
        for t in range(k):
            for o in _tap_reach(size, out, t, stride, low, d):
                tap[o * stride + t * d - low, o] = t
        per_dim.append(tap)
    rows, cols = per_dim
    index = rows[:, None, :, None] * kernel[1] + cols[None, :, None, :]  # (H, W, oH, oW)
    index[(rows[:, None, :, None] < 0) | (cols[None, :, None, :] < 0)] = kernel[0] * kernel[1]
    (h, ho), (w, wo) = rows.shape, cols.shape
    return index.reshape(h * w, ho * wo), (ho, wo)


def _unfolded_matrix_fits(
    spatial: tuple[int, ...],
    kernel: tuple[int, int],
    window_strides: tuple[int, int],
    padding: Padding2,
    rhs_dilation: tuple[int, int],
) -> bool:
    """Whether the input map is not empty and has at most :data:`UNFOLDED_POSITIONS_PER_TAP`
    positions per kernel tap, so that the unfolded matrix of :func:`_conv_unfolded` has at most
    that many times the entries of the direct convolution's products (which multiply every tap
    at every output position). Every convolution whose every window reads the whole input
    (:func:`_every_window_reads_whole_input`) fits: each output reads each input position
    through a tap of its own, so the map has no more positions than the kernel has taps."""
    del window_strides, padding, rhs_dilation  # the output's size scales both counts alike
    return 0 < math.prod(spatial) <= UNFOLDED_POSITIONS_PER_TAP * kernel[0] * kernel[1]


@_or_xla(on_maps=_unfolded_matrix_fits)
def _conv_unfolded(
    x: Array,
    kernel: Array,
    *,
    window_strides: tuple[int, int],
    padding: Padding2,
    lhs_dilation: tuple[int, int],
    rhs_dilation: tuple[int, int],
    groups: int,
    precision: Any,
) -> Array:
    """A convolution on a map not much larger than its kernel, as one matmul per group by the
    kernel unfolded into the matrix that maps the group's whole input map to its whole output
    map, batched over the groups.

    Entry ``((p, c), (q, o))`` of a group's ``(H*W*C/groups, oH*oW*O/groups)`` matrix is the
    weight through which output position ``q``, channel ``o`` reads input position ``p``,
    channel ``c``, zero where no tap connects them (:func:`_unfolded_index`; gathered from the
    kernel). A 3x3 convolution with padding 1 on a 2x2 map (RegNet's last stage at 64x64) is a
    matrix of four rows of channels where im2col's patches have nine columns, the other five
    products by padding; there are no patches to build, and each group's matmul has four times
    the output columns of :func:`_conv_grouped`'s. A depthwise 7x7 convolution on a 4x4 map
    (ConvNeXt's third stage at 64x64) is a 16x16 matrix per channel where the direct
    convolution multiplies 49 taps at each of 16 outputs, two thirds of them by padding. On the
    smallest maps (at most :data:`UNFOLDED_SUM_POSITIONS` positions) a depthwise convolution
    is instead a sum over input positions of elementwise products
    (:func:`_unfolded_depthwise_sum`), where a batched matmul of matrices that small is mostly
    overhead.

    The derivatives are jax's: batched matmuls (or the sum's products and reductions), and the
    gather's transpose (a scatter-add onto the kernel) for the weight gradient. Maps with more
    than :data:`UNFOLDED_POSITIONS_PER_TAP` positions per kernel tap
    (:func:`_unfolded_matrix_fits`), whose matrix grows with the square of the map's size, and
    input-dilated (transposed) convolutions are delegated to XLA.

    Where the matrix holds zeros (some window misses some input position), a non-finite input
    makes its group's whole output map non-finite (zero times infinity), where torch's output is
    non-finite only within that input's reach; the loss is non-finite either way. A non-finite
    weight of a tap that reads only padding is never multiplied in the matmul form (as in
    :func:`_conv_taps`), where a direct convolution multiplies it by the padding's zeros.
    """
    out_c, c_per_group, kh, kw = kernel.shape
    n, h, w, _ = x.shape
    out_per_group = out_c // groups
    index, (ho, wo) = _unfolded_index((h, w), (kh, kw), window_strides, padding, rhs_dilation)
    if c_per_group == 1 and groups > 1 and 0 < h * w <= UNFOLDED_SUM_POSITIONS:
        return _unfolded_depthwise_sum(x, kernel, index, (ho, wo), groups)
    k = kernel.reshape(groups, out_per_group, c_per_group, kh * kw)
    if (index == kh * kw).any():  # pairs no tap connects read a zero weight
        k = jnp.concatenate([k, jnp.zeros((*k.shape[:-1], 1), k.dtype)], axis=-1)
    unfolded = k[..., index].transpose(0, 3, 2, 4, 1)  # (G, H*W, C/G, oH*oW, O/G)
    unfolded = unfolded.reshape(groups, h * w * c_per_group, ho * wo * out_per_group)
    x = x.reshape(n, h * w, groups, c_per_group).transpose(2, 0, 1, 3)
    x = x.reshape(groups, n, h * w * c_per_group)
    y = lax.dot_general(x, unfolded, (((2,), (1,)), ((0,), (0,))), precision=precision)
    y = y.reshape(groups, n, ho * wo, out_per_group).transpose(1, 2, 0, 3)
    return y.reshape(n, ho, wo, out_c)


def _unfolded_depthwise_sum(
    x: Array, kernel: Array, index: np.ndarray, out_hw: tuple[int, int], groups: int
) -> Array:
    """A depthwise convolution by its unfolded matrix (:func:`_conv_unfolded`), computed as the
    sum over input positions ``p`` of ``x[:, p, None, :]`` times the matrix's row ``p``
    (``(oH*oW, C)``): elementwise products vectorised over the channels, as
    :func:`_conv_depthwise` computes its taps, but over the map's few input positions instead of
    the kernel's many taps."""
    x = _one_input_channel_per_output(x, kernel.shape[0], groups)
    n, h, w, c = x.shape
    weights = _tap_major(kernel)  # (kH*kW, C)
    weights = jnp.concatenate([weights, jnp.zeros((1, c), weights.dtype)])  # index kH*kW: zero
    rows = weights[index]  # (H*W, oH*oW, C)
    x = x.reshape(n, h * w, c)
    y = _sum_of_products([x[:, p, None, :] for p in range(h * w)], rows)
    return y.reshape(n, *out_hw, c)


def _tap_reach(size: int, out: int, tap: int, stride: int, low: int, dilation: int) -> range:
    """The outputs (along one spatial dimension) whose window reads input position
    ``o * stride + tap * dilation - low`` inside ``[0, size)`` through kernel offset ``tap``: a
    contiguous range, empty where the tap only ever reads padding."""
    offset = tap * dilation - low
    first = max(0, -(offset // stride))  # ceil(-offset / stride)
    last = min(out, (size - 1 - offset) // stride + 1)  # floor((size - 1 - offset) / stride) + 1
    return range(first, max(first, last))


def _inside_fraction(
    spatial: tuple[int, ...],
    kernel: tuple[int, int],
    window_strides: tuple[int, int],
    padding: Padding2,
    rhs_dilation: tuple[int, int],
) -> float:
    """Of all (kernel tap, output position) pairs of a convolution, the fraction whose input
    position lies inside the input rather than in its zero padding: the share of a direct
    convolution's (or im2col's) multiplications that are not by padding."""
    fraction = 1.0
    for size, k, stride, (low, high), d in zip(
        spatial, kernel, window_strides, padding, rhs_dilation, strict=True
    ):
        out = conv_output_size(size + low + high, k, 0, stride, d)
        if out <= 0:
            return 1.0
        inside = sum(len(_tap_reach(size, out, t, stride, low, d)) for t in range(k))
        fraction *= inside / (k * out)
    return fraction


@_or_xla(_ungrouped)
def _conv_taps(
    x: Array,
    kernel: Array,
    *,
    window_strides: tuple[int, int],
    padding: Padding2,
    lhs_dilation: tuple[int, int],
    rhs_dilation: tuple[int, int],
    groups: int,
    precision: Any,
) -> Array:
    """Convolution as a sum over the kernel's taps of one matmul each, on the output positions
    where that tap reads inside the input.

    On maps not much larger than the kernel most of a padded convolution's multiplications are by
    padding: a 3x3 convolution (padding 1) on a 1x1 map reads the input through its centre tap
    only, 1/9 of im2col's products, and on a 2x2 map 16 of 36 (:func:`_inside_fraction`). Here
    each tap ``(i, j)`` multiplies only the input rectangle it reads (a strided slice, the whole
    input for a 1x1 map's centre) by its ``(C, O)`` kernel slice, and the products, zero-padded
    to the output, are added. Its derivatives (jax's) are matmuls on the same rectangles: each
    tap's weight gradient is ``slice(x)^T @ slice(grad)``, and the input gradient adds each
    ``slice(grad) @ kernel_tap^T`` back at the rectangle it came from. Grouped and input-dilated
    convolutions are delegated to XLA.
    """
    out_c, in_c, kh, kw = kernel.shape
    n, h, w, _ = x.shape
    (sh, sw), (dh, dw) = window_strides, rhs_dilation
    ho = conv_output_size(h + sum(padding[0]), kh, 0, sh, dh)
    wo = conv_output_size(w + sum(padding[1]), kw, 0, sw, dw)
    taps = kernel.transpose(2, 3, 1, 0)  # (kH, kW, C, O): tap (i, j) is a (C, O) matrix
    zero = jnp.zeros((), x.dtype)
    y = None
    for i in range(kh):
        rows = _tap_reach(h, ho, i, sh, padding[0][0], dh)
        for j in range(kw):
            cols = _tap_reach(w, wo, j, sw, padding[1][0], dw)
            if not rows or not cols:
                continue  # this tap reads only padding
            r0 = rows.start * sh + i * dh - padding[0][0]
            c0 = cols.start * sw + j * dw - padding[1][0]
            start = (0, r0, c0, 0)
            limit = (n, r0 + (len(rows) - 1) * sh + 1, c0 + (len(cols) - 1) * sw + 1, in_c)
            inside = lax.slice(x, start, limit, (1, sh, sw, 1))
            part = lax.dot_general(
                inside, taps[i, j], (((3,), (0,)), ((), ())), precision=precision
            )
            part = lax.pad(
                part,
                zero,
                (
                    (0, 0, 0),
                    (rows.start, ho - rows.stop, 0),
                    (cols.start, wo - cols.stop, 0),
                    (0, 0, 0),
                ),
            )
            y = part if y is None else y + part
    if y is None:  # every tap reads padding only
        return jnp.zeros((n, ho, wo, out_c), x.dtype)
    return y


def _narrower_than_kernel(spatial: tuple[int, ...], kernel: tuple[int, int], dilation) -> bool:
    """Whether a convolution's input is smaller than its (dilated) kernel in height or width."""
    return any(size < d * (k - 1) + 1 for size, k, d in zip(spatial, kernel, dilation, strict=True))


# At most this share of a convolution's (tap, output position) pairs inside the input (the rest
# read padding), ``'auto'`` computes it tap by tap on the inside only (:func:`_conv_taps`): a 3x3
# convolution on 1x1 and 2x2 maps, not on 3x3 or 4x4 ones (more than half inside).
MOSTLY_PADDING = 1 / 2

# ``'unfolded'`` computes a convolution whose input map has at most this many positions per
# kernel tap (:func:`_unfolded_matrix_fits`); on larger maps its matrix, which grows with the
# square of the map, holds mostly zeros.
UNFOLDED_POSITIONS_PER_TAP = 1.5

# A depthwise convolution on at most this many input positions runs unfolded as a sum of
# elementwise products (:func:`_unfolded_depthwise_sum`), on more as a batched matmul.
UNFOLDED_SUM_POSITIONS = 9

# Under ``'auto'`` a depthwise convolution with at least this many kernel taps (5x5 and larger)
# whose map fits the unfolded matrix (:func:`_unfolded_matrix_fits`) is computed unfolded rather
# than tap by tap (``python -m experiments.bench_unfolded_depthwise`` times whole steps both
# ways). The tap-by-tap path makes a pass over the output per tap, and its weight gradient a
# reduction per tap; with a 3x3 kernel's nine those cost less than the unfolded matrix's
# gathers and transpositions.
UNFOLD_SMALL_DEPTHWISE = True
_UNFOLD_DEPTHWISE_MIN_TAPS = 25

# A grouped convolution whose every window reads the whole input is computed unfolded
# (:func:`_conv_unfolded`) rather than as batched im2col (``python -m
# experiments.bench_unfolded_groups`` times RegNet's train steps both ways).
UNFOLD_SMALL_GROUPED = True

# A result with fewer channels than this leaves most of a SIMD register idle in XLA:CPU's direct
# convolution, which vectorises over the result's channels: 8 float32 lanes on AVX2 (16 on
# AVX-512). The constant is fixed, not read from the CPU, so every machine makes the same choice.
_FEW_CHANNELS = 8
# The banded matmul multiplies W/kW times the convolution's work (W the padded input width).
_MAX_BAND_WASTE = 8


def _banded_matmul_pays(
    result_channels: int, padded_width: int, kernel_width: int, groups: int
) -> bool:
    """Whether a convolution part (forward or input gradient) runs as :func:`_conv_banded`."""
    return (
        groups == 1
        and result_channels < _FEW_CHANNELS
        and padded_width <= _MAX_BAND_WASTE * kernel_width
    )


def auto_plan(
    input_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    *,
    window_strides: tuple[int, int] = (1, 1),
    padding: Padding2 = ((0, 0), (0, 0)),
    lhs_dilation: tuple[int, int] = (1, 1),
    rhs_dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> dict[str, str]:
    """Which implementation the ``'auto'`` backend uses for each part of a convolution on CPU.

    Returns ``{'forward': ..., 'input_grad': ..., 'weight_grad': ...}`` with values among
    ``'xla'``, ``'im2col'``, ``'banded'``, ``'depthwise'``, ``'grouped'``, ``'unfolded'`` and
    ``'taps'``, for an NHWC ``input_shape`` and an OIHW ``kernel_shape`` (the arguments of
    :func:`conv_general`).
    The rules, in order:

    0. a depthwise convolution (one input channel per group) runs every part, the weight
       gradient too, as slices times per-channel weights (:func:`_conv_depthwise`): XLA:CPU's
       grouped convolution computes it channel by channel, tens of times slower. With a kernel
       of at least 25 taps (5x5 and larger) on a map with at most 1.5 positions per tap
       (ConvNeXt's 7x7 on 8x8 maps and smaller) it runs by the kernel unfolded into the
       map-to-map matrix instead (:func:`_conv_unfolded`, :data:`UNFOLD_SMALL_DEPTHWISE`):
       one matmul (on maps of at most 9 positions, a sum of products over the input
       positions) where the slices make a pass per tap (on ConvNeXt's 4x4 maps two thirds of
       their products are by padding). Any other
       grouped convolution runs every part as one matmul batched over the groups, for the same
       reason: by the kernel unfolded into a dense map-to-map matrix (:func:`_conv_unfolded`)
       where every output's window reads the whole input (a padded 3x3 convolution on 1x1 and
       2x2 maps), so that the matrix has no zero entries and no more rows than im2col's
       patches have columns (:data:`UNFOLD_SMALL_GROUPED`), and as im2col patches times the kernel
       (:func:`_conv_grouped`) elsewhere;
    1. an ungrouped convolution (not 1x1) of which at most half of the (tap, output position)
       pairs read inside the input (:data:`MOSTLY_PADDING`; a padded 3x3 convolution on a 1x1
       map: 1/9, on a 2x2 map 16/36, the rest read padding) runs every part as one matmul per
       tap on the output positions where that tap reads inside the input (:func:`_conv_taps`),
       skipping the products by padding that the other implementations compute;
    2. a part whose input is narrower than the (dilated) kernel runs as im2col + matmul (XLA:CPU
       is pathological there, e.g. a padded 3x3 convolution on 2x2 maps);
    3. a part whose result has fewer than 8 channels (the forward pass: ``out_channels``; the
       input gradient: ``in_channels``), ungrouped, on an input at most 8 kernel widths wide,
       runs as a banded matmul (:func:`_conv_banded`), as for LeNet-5's C1 forward and C3's
       input gradient; from 8 channels on XLA's own convolution is as fast;
    4. an ungrouped 1x1 convolution's weight gradient runs as one matmul over pixels (im2col
       with a single tap) that reads the output gradient from memory, where XLA's convolution
       first transposes the input channel-major inside the fusion that computes it
       (:data:`POINTWISE_WEIGHT_GRADIENT_AS_MATMUL`; ``python -m
       experiments.bench_weight_gradients`` times whole steps both ways);
    5. everything else, and every other weight gradient, is XLA's convolution.

    ``python -m experiments.bench_conv_backends --parts`` times each part under each backend
    (the measurements are in experiments/README.md, "Speed").

    The plan depends on shapes only, so it is the same on every run and machine (resume stays
    bit-exact). Input-dilated (transposed) convolutions are always XLA's.
    """
    xla = {"forward": "xla", "input_grad": "xla", "weight_grad": "xla"}
    if lhs_dilation != (1, 1):
        return xla
    if _is_depthwise(kernel_shape, groups):
        unfolded = (
            UNFOLD_SMALL_DEPTHWISE
            and kernel_shape[2] * kernel_shape[3] >= _UNFOLD_DEPTHWISE_MIN_TAPS
            and _unfolded_matrix_fits(
                input_shape[1:3], kernel_shape[2:], window_strides, padding, rhs_dilation
            )
        )
        return dict.fromkeys(xla, "unfolded" if unfolded else "depthwise")
    out_c, in_c_per_group, kh, kw = kernel_shape
    if _is_grouped(kernel_shape, groups):
        unfolded = UNFOLD_SMALL_GROUPED and _every_window_reads_whole_input(
            input_shape[1:3], (kh, kw), window_strides, padding, rhs_dilation
        )
        return dict.fromkeys(xla, "unfolded" if unfolded else "grouped")
    k = (kh, kw)
    if (kh, kw) != (1, 1) and (
        _inside_fraction(input_shape[1:3], k, window_strides, padding, rhs_dilation)
        <= MOSTLY_PADDING
    ):
        return dict.fromkeys(xla, "taps")
    out_size = tuple(
        conv_output_size(size, kk, pad, st, d)
        for size, kk, pad, st, d in zip(
            input_shape[1:3], k, padding, window_strides, rhs_dilation, strict=True
        )
    )
    padded_width = input_shape[2] + sum(padding[1])
    plan = dict(xla)
    if _narrower_than_kernel(input_shape[1:3], k, rhs_dilation):
        plan["forward"] = "im2col"
    elif _banded_matmul_pays(out_c, padded_width, kw, groups):
        plan["forward"] = "banded"
    # The input gradient is a convolution of the output gradient (output-sized) with the kernel.
    if _narrower_than_kernel(out_size, k, rhs_dilation):
        plan["input_grad"] = "im2col"
    elif _banded_matmul_pays(in_c_per_group * groups, padded_width, kw, groups):
        plan["input_grad"] = "banded"
    if k == (1, 1) and POINTWISE_WEIGHT_GRADIENT_AS_MATMUL:
        plan["weight_grad"] = "im2col"
    return plan


def _conv_auto(
    x: Array,
    kernel: Array,
    *,
    window_strides: tuple[int, int],
    padding: Padding2,
    lhs_dilation: tuple[int, int],
    rhs_dilation: tuple[int, int],
    groups: int,
    precision: Any,
) -> Array:
    """XLA's convolution, except for the parts where XLA:CPU is known to be slow, which run as
    matmuls or, for depthwise convolutions, elementwise products or the unfolded kernel's
    matmul (:func:`auto_plan` gives the rules and the measurements behind them).

    Each part is chosen separately (a ``custom_jvp`` whose tangent uses the input-gradient and
    weight-gradient implementations; reverse mode is its transpose), the choice depends only on
    shapes (deterministic, the same on every run), and the results equal every backend's to
    float32 rounding. Off the CPU this is XLA's convolution.
    """
    kwargs = dict(
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        groups=groups,
        precision=precision,
    )
    if lhs_dilation != (1, 1) or jax.default_backend() != "cpu":
        return _conv_xla(x, kernel, **kwargs)
    plan = auto_plan(
        x.shape,
        kernel.shape,
        window_strides=window_strides,
        padding=padding,
        rhs_dilation=rhs_dilation,
        groups=groups,
    )
    if plan["forward"] == plan["input_grad"] == plan["weight_grad"]:
        # One implementation throughout (XLA's, the depthwise or the grouped one): its own
        # derivatives.
        return _IMPLEMENTATIONS[plan["forward"]](x, kernel, **kwargs)
    forward, input_grad, weight_grad = (
        _IMPLEMENTATIONS[plan[part]] for part in ("forward", "input_grad", "weight_grad")
    )

    @jax.custom_jvp
    def conv(x, kernel):
        return forward(x, kernel, **kwargs)

    def conv_jvp(primals, tangents):
        (x, kernel), (dx, dkernel) = primals, tangents
        tangent = None
        if not isinstance(dx, SymbolicZero):
            tangent = input_grad(dx, kernel, **kwargs)
        if not isinstance(dkernel, SymbolicZero):
            part = weight_grad(x, dkernel, **kwargs)
            if plan["weight_grad"] == "im2col" and x.size:
                # A matmul over pixels reads the output gradient pixel-major, transposed: left
                # alone, XLA fuses the transposition into the fusion that computes the output
                # gradient (a BatchNorm's backward, say), a slow transposed write. Stored first,
                # the transposition is a copy of its own.
                part = store_tangent(part, x)
            tangent = part if tangent is None else tangent + part
        y = conv(x, kernel)
        return y, jnp.zeros_like(y) if tangent is None else tangent

    conv.defjvp(conv_jvp, symbolic_zeros=True)
    return conv(x, kernel)


# Read while tracing, so immutable: a backend is chosen by argument, never registered at run time.
_IMPLEMENTATIONS: types.MappingProxyType[str, ConvBackend] = types.MappingProxyType(
    {
        "xla": _conv_xla,
        "im2col": _conv_im2col,
        "banded": _conv_banded,
        "depthwise": _conv_depthwise,
        "grouped": _conv_grouped,
        "taps": _conv_taps,
        "unfolded": _conv_unfolded,
    }
)
_BACKENDS: types.MappingProxyType[str, ConvBackend] = types.MappingProxyType(
    {"auto": _conv_auto, **_IMPLEMENTATIONS}
)


def available_conv_backends() -> tuple[str, ...]:
    """Names accepted as a convolution's ``backend``."""
    return tuple(_BACKENDS)


def check_conv_backend(name: str) -> None:
    """Raises a ValueError naming the valid backends unless ``name`` is one."""
    if name not in _BACKENDS:
        raise ValueError(
            f"unknown conv backend {name!r}; available: {', '.join(available_conv_backends())}"
        )


# A 1x1 convolution's weight gradient is computed as one matmul over pixels (the 'im2col'
# backend's, a single tap), reading the output gradient stored, rather than as XLA's convolution,
# which transposes the input to channel-major first (a copy XLA fuses with whatever computes the
# input, recomputing a BatchNorm and ReLU there). Read while tracing; ``python -m
# experiments.bench_weight_gradients`` compiles steps with it off to measure it.
POINTWISE_WEIGHT_GRADIENT_AS_MATMUL = True

# Kernels with at least this many elements have their weight gradient stored once
# (:func:`~cnn_jax.functional.materialize_gradient`, CPU only) rather than transposed into torch's
# OIHW layout inside every optimiser update that reads it; 2**18 float32 elements is 1 MiB.
# Under 'auto', 1x1 kernels are exempt: their gradient is a matmul that yields OIHW directly.
# ``python -m experiments.bench_weight_gradients`` measures steps with this size, with every
# kernel's gradient stored and with none.
STORED_WEIGHT_GRADIENT_SIZE = 1 << 18


def conv_general(
    x: Array,
    kernel: Array,
    *,
    window_strides: tuple[int, int] = (1, 1),
    padding: Padding2 = ((0, 0), (0, 0)),
    lhs_dilation: tuple[int, int] = (1, 1),
    rhs_dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    precision: Any = None,
    backend: str = "auto",
    store_weight_gradient: bool | None = None,
) -> Array:
    """The one convolution primitive: NHWC input, OIHW kernel, explicit (low, high) padding.

    Semantics are those of :func:`jax.lax.conv_general_dilated` (a cross-correlation);
    ``backend`` (one of :func:`available_conv_backends`) decides how it is computed. Input and
    kernel are promoted to a common dtype (float64 parameters on float32 images compute in
    float64, as the rest of JAX's arithmetic would). ``store_weight_gradient``: whether the
    kernel's gradient is stored once in its OIHW layout (:func:`materialize_gradient`; ``None``:
    on the CPU for kernels of at least :data:`STORED_WEIGHT_GRADIENT_SIZE` elements). A train
    state whose kernels are stored HWIO (:mod:`cnn_jax.train.layout`) passes ``False``: the
    update reads the gradient HWIO, so storing it OIHW would add a transposition.
    """
    check_conv_backend(backend)
    dtype = jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    geometry = dict(
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        groups=groups,
    )
    if store_weight_gradient is None:
        store_weight_gradient = _stores_weight_gradient(x.shape, kernel.shape, backend, **geometry)
    if store_weight_gradient:
        kernel = materialize_gradient(kernel)
    return _BACKENDS[backend](x, kernel, **geometry, precision=precision)


def _stores_weight_gradient(
    input_shape: tuple[int, ...], kernel_shape: tuple[int, ...], backend: str, **geometry: Any
) -> bool:
    """Whether :func:`conv_general` stores the kernel's gradient once: kernels of at least
    :data:`STORED_WEIGHT_GRADIENT_SIZE` elements, except where ``'auto'`` computes the gradient
    as a matmul over pixels (:func:`auto_plan`'s rule 4), whose result is already in the
    kernel's OIHW layout, so storing it only adds a copy."""
    if math.prod(kernel_shape) < STORED_WEIGHT_GRADIENT_SIZE:
        return False
    if backend != "auto":
        return True
    return auto_plan(input_shape, kernel_shape, **geometry)["weight_grad"] != "im2col"


# --------------------------------------------------------------------------------------------------
# Argument resolution (torch's rules, torch's error messages where it has one).
# --------------------------------------------------------------------------------------------------


def resolve_conv_padding(
    padding: IntOr2 | str,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> Padding2:
    """Turns torch's ``padding`` argument into explicit ``((top, bottom), (left, right))``.

    ``'same'`` follows torch: total padding ``d*(k-1)`` per axis, the odd pixel on the bottom/right
    (even kernels), and only for stride 1 (torch refuses strided 'same'; XLA's 'SAME' would not).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(
                    "padding='same' is not supported for strided convolutions (as in PyTorch): "
                    "the output size would depend on the input size modulo the stride. Use an "
                    f"explicit padding with stride={stride}."
                )
            pads = []
            for k, d in zip(kernel_size, dilation, strict=True):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)  # type: ignore[return-value]
        raise ValueError(
            f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}} "
            "(or an int / pair of ints)"
        )
    ph, pw = pair(padding, "padding", minimum=0)
    return ((ph, ph), (pw, pw))


def check_padding_mode(padding_mode: str) -> None:
    """Raises a ValueError naming torch's padding modes unless ``padding_mode`` is one."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")


def check_output_padding(output_padding: IntOr2, stride: IntOr2, dilation: IntOr2) -> None:
    """torch's rule for a transposed convolution: each ``output_padding`` (>= 0) is smaller than
    the stride or the dilation of its axis; raises a ValueError otherwise."""
    op = pair(output_padding, "output_padding", minimum=0)
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    if any(o >= max(si, di) for o, si, di in zip(op, s, d, strict=True)):
        raise ValueError(
            "output_padding must be smaller than either stride or dilation (as in PyTorch), "
            f"got output_padding={output_padding}, stride={stride}, dilation={dilation}"
        )


def _pad_input(x: Array, padding: Padding2, padding_mode: str) -> Array:
    """Pads H and W with torch's non-zero padding modes (reflect, replicate, circular)."""
    for axis, (lo, hi) in zip((1, 2), padding, strict=True):
        size = x.shape[axis]
        if padding_mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(
                f"padding_mode='reflect' needs padding < input size; got padding ({lo}, {hi}) "
                f"for an axis of size {size}"
            )
        if padding_mode == "circular" and max(lo, hi) > size:
            raise ValueError(
                f"padding_mode='circular' needs padding <= input size (it would wrap around more "
                f"than once); got padding ({lo}, {hi}) for an axis of size {size}"
            )
    widths = ((0, 0), *padding, (0, 0))
    return jnp.pad(x, widths, mode=_JNP_PAD_MODE[padding_mode])


def _check_output(size: tuple[int, ...], what: str, in_shape: tuple[int, ...]) -> None:
    if min(size) < 1:
        raise ValueError(
            f"{what}: the output would be empty ({size}) for input shape {in_shape}; the kernel "
            "(with dilation) is larger than the padded input"
        )


# --------------------------------------------------------------------------------------------------
# torch.nn.functional equivalents.
# --------------------------------------------------------------------------------------------------


def conv2d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    stride: IntOr2 = 1,
    padding: IntOr2 | str = 0,
    dilation: IntOr2 = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    precision: Any = None,
    backend: str = "auto",
    store_weight_gradient: bool | None = None,
) -> Array:
    """``torch.nn.functional.conv2d`` for NHWC input and a torch-layout (OIHW) weight.

    Like torch this is a cross-correlation (no kernel flip). ``padding_mode`` is the
    ``torch.nn.Conv2d`` argument ('zeros', 'reflect', 'replicate', 'circular'); ``backend`` and
    ``store_weight_gradient`` are :func:`conv_general`'s.

    >>> y = conv2d(jnp.ones((1, 5, 5, 1)), jnp.ones((1, 1, 3, 3)), padding=1)
    >>> y.shape
    (1, 5, 5, 1)
    """
    _, c_per_group, kh, kw = weight.shape
    if x.ndim != 4:
        raise ValueError(f"conv2d expects 4-D NHWC input, got shape {tuple(x.shape)}")
    if x.shape[-1] != c_per_group * groups:
        raise ValueError(
            f"conv2d: weight {tuple(weight.shape)} with groups={groups} expects "
            f"{c_per_group * groups} input channels (last axis, NHWC), got shape {tuple(x.shape)}"
        )
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    pads = resolve_conv_padding(padding, (kh, kw), stride, dilation)
    check_padding_mode(padding_mode)
    if padding_mode != "zeros":
        x = _pad_input(x, pads, padding_mode)
        pads = ((0, 0), (0, 0))
    out_hw = tuple(
        conv_output_size(x.shape[1 + i], (kh, kw)[i], pads[i], stride[i], dilation[i])
        for i in range(2)
    )
    _check_output(out_hw, "conv2d", tuple(x.shape))
    if x.shape[-1] == 0:  # in_channels=0 (torch allows it): an empty sum, the output is the bias
        y = jnp.zeros((x.shape[0], *out_hw, weight.shape[0]), jnp.result_type(x, weight))
    else:
        y = conv_general(
            x,
            weight,
            window_strides=stride,
            padding=pads,
            rhs_dilation=dilation,
            groups=groups,
            precision=precision,
            backend=backend,
            store_weight_gradient=store_weight_gradient,
        )
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


def transpose_kernel(weight: Array, groups: int) -> Array:
    """Turns a ConvTranspose2d weight ``(in, out/g, kH, kW)`` into the equivalent forward-conv
    kernel ``(out, in/g, kH, kW)``: swap in/out within each group and flip the spatial axes."""
    in_c, out_per_group, kh, kw = weight.shape
    k = weight.reshape(groups, in_c // groups, out_per_group, kh, kw)
    k = k.transpose(0, 2, 1, 3, 4).reshape(groups * out_per_group, in_c // groups, kh, kw)
    return k[:, :, ::-1, ::-1]


def conv_transpose2d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    stride: IntOr2 = 1,
    padding: IntOr2 = 0,
    output_padding: IntOr2 = 0,
    groups: int = 1,
    dilation: IntOr2 = 1,
    precision: Any = None,
    backend: str = "auto",
    store_weight_gradient: bool | None = None,
) -> Array:
    """``torch.nn.functional.conv_transpose2d`` for NHWC input and a torch-layout weight
    (``backend`` and ``store_weight_gradient`` as in :func:`conv_general`).

    ``weight`` is ``(in_channels, out_channels // groups, kH, kW)``. The output size per axis is
    ``(in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``: torch's
    ``padding`` *removes* ``padding`` pixels from each side of the full transposed convolution,
    and ``output_padding`` adds back pixels on the bottom/right to pick one of the ``stride``
    input sizes that a strided convolution maps to the same output size.

    Implemented as the gradient of a convolution is: dilate the input by ``stride``, pad by
    ``d*(k-1) - padding`` (+ ``output_padding`` on the high side) and correlate with the flipped,
    in/out-swapped kernel.

    >>> y = conv_transpose2d(jnp.ones((1, 4, 4, 2)), jnp.ones((2, 3, 3, 3)), stride=2, padding=1,
    ...                      output_padding=1)
    >>> y.shape
    (1, 8, 8, 3)
    """
    in_c, _, kh, kw = weight.shape
    if x.ndim != 4:
        raise ValueError(f"conv_transpose2d expects 4-D NHWC input, got shape {tuple(x.shape)}")
    if x.shape[-1] != in_c:
        raise ValueError(
            f"conv_transpose2d: weight {tuple(weight.shape)} expects {in_c} input channels "
            f"(last axis, NHWC), got shape {tuple(x.shape)}"
        )
    check_output_padding(output_padding, stride, dilation)
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    padding = pair(padding, "padding", minimum=0)
    output_padding = pair(output_padding, "output_padding", minimum=0)
    pads = []
    out_hw = []
    for i, k in enumerate((kh, kw)):
        full = dilation[i] * (k - 1)
        pads.append((full - padding[i], full - padding[i] + output_padding[i]))
        out_hw.append(
            conv_transpose_output_size(
                x.shape[1 + i], k, stride[i], padding[i], output_padding[i], dilation[i]
            )
        )
    _check_output(tuple(out_hw), "conv_transpose2d", tuple(x.shape))
    y = conv_general(
        x,
        transpose_kernel(weight, groups),
        padding=tuple(pads),  # type: ignore[arg-type]
        lhs_dilation=stride,
        rhs_dilation=dilation,
        groups=groups,
        precision=precision,
        backend=backend,
        store_weight_gradient=store_weight_gradient,
    )
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y
