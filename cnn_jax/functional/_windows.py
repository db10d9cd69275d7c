"""Strided window slices, shared by the im2col, grouped and depthwise convolutions and pooling."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def strided_windows(
    x: jax.Array,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
) -> list[jax.Array]:
    """For each kernel offset (u, v), row-major, the NHWC slice of ``x`` (already padded) that the
    offset reads for every output position: a list of kH*kW arrays of shape (N, oH, oW, C).

    With a stride above one (and a floating-point ``x``) the slices are taken so that their
    transpose, the backward pass, is :func:`_phase_scatter`: jax's transpose of a strided slice
    is a pad with interior padding of the whole input, and kH*kW of them summed run as one loop
    that tests every tap at every input position, slower on CPU than the phase-by-phase sums
    (``python -m experiments.bench_backward_rules`` times both). The slices themselves are the
    same values either way.
    """
    kernel_size, stride, dilation, out_size = (
        tuple(kernel_size),
        tuple(stride),
        tuple(dilation),
        tuple(out_size),
    )
    if stride == (1, 1) or not jnp.issubdtype(x.dtype, jnp.inexact):
        return _slices(x, kernel_size, stride, dilation, out_size)
    scatter = functools.partial(
        _phase_scatter,
        in_shape=x.shape,
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        out_size=out_size,
    )
    taps = [jax.ShapeDtypeStruct((x.shape[0], *out_size, x.shape[3]), x.dtype)] * (
        kernel_size[0] * kernel_size[1]
    )
    (windows,) = jax.linear_transpose(scatter, taps)(x)
    return list(windows)


def _offsets(kernel_size, dilation) -> list[tuple[int, int]]:
    """The (row, column) each kernel tap reads for output position (0, 0), row-major."""
    (kh, kw), (dh, dw) = kernel_size, dilation
    return [(u * dh, v * dw) for u in range(kh) for v in range(kw)]


def _slices(x, kernel_size, stride, dilation, out_size):
    """:func:`strided_windows` as one strided ``lax.slice`` per kernel offset."""
    n, _, _, c = x.shape
    (sh, sw), (oh, ow) = stride, out_size
    return [
        lax.slice(
            x,
            (0, row, col, 0),
            (n, row + (oh - 1) * sh + 1, col + (ow - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for row, col in _offsets(kernel_size, dilation)
    ]


def _phase_scatter(taps, in_shape, kernel_size, stride, dilation, out_size):
    """The transpose of :func:`strided_windows`: each tap's array added back at the input
    positions it was read from, an array of ``in_shape``.

    Input row ``i`` belongs to phase ``i % s`` (``s`` the stride), and tap ``u`` reads, for
    output row ``o``, input row ``u*d + o*s``: phase ``(u*d) % s``, row ``(u*d) // s + o`` of
    that phase. So each phase (a ``ceil(H/s) x ceil(W/s)`` array) is a sum of its own taps
    shifted by plain pads, and the input interleaves the phases (a stack and a reshape)."""
    n, h, w, c = in_shape
    (sh, sw), (oh, ow) = stride, out_size
    qh, qw = -(-h // sh), -(-w // sw)
    zero = jnp.zeros((), taps[0].dtype)
    phases: dict[tuple[int, int], jax.Array] = {}
    for tap, (row, col) in zip(taps, _offsets(kernel_size, dilation), strict=True):
        top, left = row // sh, col // sw
        shifted = lax.pad(
            tap,
            zero,
            ((0, 0, 0), (top, qh - top - oh, 0), (left, qw - left - ow, 0), (0, 0, 0)),
        )
        key = (row % sh, col % sw)
        phases[key] = shifted if key not in phases else phases[key] + shifted
    empty = jnp.zeros((n, qh, qw, c), taps[0].dtype)
    rows = [
        jnp.stack([phases.get((pr, pc), empty) for pc in range(sw)], axis=3) for pr in range(sh)
    ]
    return jnp.stack(rows, axis=2).reshape(n, qh * sh, qw * sw, c)[:, :h, :w]
