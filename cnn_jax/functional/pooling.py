"""Pooling with PyTorch's semantics on NHWC arrays.

Differences from plain Flax/``lax.reduce_window`` that this module handles:

* the stride defaults to the kernel size (torch), not 1;
* ``padding`` is symmetric and at most half the kernel; max pooling pads with ``-inf``;
* ``ceil_mode`` adds a last, partial window, but never one that starts in the right padding;
* average pooling divides by the window clipped to the padded input (``count_include_pad=True``),
  by the valid pixels only (``False``), or by ``divisor_override``;
* adaptive pooling uses torch's windows ``[floor(i*I/O), ceil((i+1)*I/O))``, which overlap when
  ``I`` is not a multiple of ``O`` and repeat pixels when ``O > I``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax._utils import IntOr2, pair
from cnn_jax.functional._windows import strided_windows
from cnn_jax.functional.sizes import pool_output_size

Array = jax.Array


def _unwrap_single(value):
    """A one-element sequence as its element (torch's pools take ``[k]`` as ``k`` for both
    sides); anything else unchanged."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 1:
        return value[0]
    return value


def pool_window(kernel_size, stride, padding, dilation, name: str):
    """Validated (kernel, stride, padding, dilation) pairs of a pooling layer, torch's rules:
    an int or one- or two-element sequence each; stride defaults to the kernel (also when
    given as an empty sequence); padding is at most half the kernel. Used by the layers at
    construction and by the functions at call time."""
    k = pair(_unwrap_single(kernel_size), "kernel_size")
    empty = isinstance(stride, Sequence) and not isinstance(stride, str) and len(stride) == 0
    s = k if stride is None or empty else pair(_unwrap_single(stride), "stride")
    p = pair(_unwrap_single(padding), "padding", minimum=0)
    d = pair(_unwrap_single(dilation), "dilation")
    if any(pi > ki // 2 for ki, pi in zip(k, p, strict=True)):
        raise ValueError(
            f"{name}: pad should be at most half of kernel size (as in PyTorch), got "
            f"padding={padding}, kernel_size={kernel_size}"
        )
    return k, s, p, d


def _check_not_empty(x, name: str, axes: tuple[int, ...]) -> None:
    """torch's pools refuse an empty height, width (and, but for adaptive average pooling,
    channel) axis; only the batch may be empty."""
    empty = [("height", "width", "channels")[a - 1] for a in axes if x.shape[a] == 0]
    if empty:
        raise ValueError(
            f"{name}: expected a non-empty {' and '.join(empty)} (only the batch may be empty), "
            f"got NHWC shape {tuple(x.shape)}"
        )


def _pool_args(x, kernel_size, stride, padding, dilation, ceil_mode, name):
    if x.ndim != 4:
        raise ValueError(
            f"{name} expects a 4-D NHWC input (batch, height, width, channels), got shape "
            f"{tuple(x.shape)}"
        )
    _check_not_empty(x, name, (1, 2, 3))
    k, s, p, d = pool_window(kernel_size, stride, padding, dilation, name)
    out = tuple(
        pool_output_size(x.shape[1 + i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(2)
    )
    if min(out) < 1:
        raise ValueError(
            f"{name}: output size is too small ({out}) for input shape {tuple(x.shape)}, "
            f"kernel_size={kernel_size}, padding={padding}"
        )
    # High-side padding so that exactly `out` windows fit (ceil_mode may need more than `p`).
    hi = tuple(
        max((out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - x.shape[1 + i] - p[i], 0)
        for i in range(2)
    )
    pads = ((0, 0), (p[0], hi[0]), (p[1], hi[1]), (0, 0))
    return k, s, p, d, out, pads


def _max_identity(dtype) -> np.ndarray:
    """The padding value of max pooling: -inf (the integer minimum for integer input), as a
    concrete NumPy scalar, which lets JAX pick its differentiable reduce_window_max."""
    if jnp.issubdtype(dtype, jnp.floating):
        return np.array(-np.inf, dtype)
    return np.array(np.iinfo(dtype).min, dtype)


def _padded(x: Array, value, pads) -> Array:
    """``x`` padded with ``value`` by ``pads``, NHWC's (low, high) pairs of :func:`_pool_args`."""
    return lax.pad(x, value, tuple((lo, hi, 0) for lo, hi in pads))


def max_pool2d(
    x: Array,
    kernel_size: IntOr2,
    stride: IntOr2 | None = None,
    padding: IntOr2 = 0,
    dilation: IntOr2 = 1,
    ceil_mode: bool = False,
) -> Array:
    """``torch.nn.functional.max_pool2d`` on NHWC input.

    >>> max_pool2d(jnp.arange(16.0).reshape(1, 4, 4, 1), 2)[0, :, :, 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    k, s, _, d, out, pads = _pool_args(
        x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d"
    )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return _max_pool_values(x, k, s, d, out, pads)
    return _max_pool(x, k, s, d, out, pads)


def _max_pool_values(x, k, s, d, out, pads):
    init = _max_identity(x.dtype)
    if d != (1, 1):  # reduce_window takes no window dilation: the max over the strided slices
        xp = _padded(x, init, pads)
        return jnp.max(jnp.stack(strided_windows(xp, k, s, d, out)), axis=0)
    y = lax.reduce_window(x, init, lax.max, (1, *k, 1), (1, *s, 1), pads)
    return y[:, : out[0], : out[1], :]


@partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5))
def _max_pool(x, k, s, d, out, pads):
    """Max pooling whose derivative is torch's: each window's gradient goes to its *first*
    maximum in row-major window order (after a ReLU, all-zero windows are common; JAX's own max
    derivative would split such ties evenly), summed where windows overlap.

    The derivative is written as a select over the kH*kW strided window slices rather than left
    to XLA's ``select_and_scatter``, which XLA:CPU runs far slower
    (``experiments/bench_conv_backends.py`` times both)."""
    return _max_pool_values(x, k, s, d, out, pads)


@_max_pool.defjvp
def _max_pool_jvp(k, s, d, out, pads, primals, tangents):
    (x,), (dx,) = primals, tangents
    windows = strided_windows(_padded(x, _max_identity(x.dtype), pads), k, s, d, out)
    first_max = jnp.argmax(jnp.stack(windows), axis=0)  # numpy's rule: the first maximum
    zero = jnp.zeros((), dx.dtype)
    tangent_windows = strided_windows(_padded(dx, zero, pads), k, s, d, out)
    tangent = jnp.zeros(first_max.shape, dx.dtype)
    for i, window in enumerate(tangent_windows):
        tangent = tangent + jnp.where(first_max == i, window, zero)
    return _max_pool(x, k, s, d, out, pads), tangent


def max_pool2d_with_indices(
    x: Array,
    kernel_size: IntOr2,
    stride: IntOr2 | None = None,
    padding: IntOr2 = 0,
    dilation: IntOr2 = 1,
    ceil_mode: bool = False,
) -> tuple[Array, Array]:
    """``torch.nn.functional.max_pool2d(..., return_indices=True)`` on NHWC input: the pooled
    values and, for each, the flat index ``row * W + col`` of the chosen pixel in its input
    plane (int32; torch's are int64), which :func:`max_unpool2d` takes.

    Ties go to the first maximum in row-major window order, as torch's CPU kernel does; with
    several NaNs in a window the first NaN is chosen (torch: the last).

    >>> y, i = max_pool2d_with_indices(jnp.arange(16.0).reshape(1, 4, 4, 1), 2)
    >>> i[0, :, :, 0]
    Array([[ 5,  7],
           [13, 15]], dtype=int32)
    """
    k, s, p, d, out, pads = _pool_args(
        x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d"
    )
    init = _max_identity(x.dtype)
    xp = _padded(x, init, pads)
    windows = jnp.stack(strided_windows(xp, k, s, d, out))  # (kH*kW, N, oH, oW, C)
    offset = jnp.argmax(windows, axis=0)
    values = jnp.take_along_axis(windows, offset[None], axis=0)[0]
    u, v = offset // k[1], offset % k[1]
    rows = jnp.arange(out[0])[None, :, None, None] * s[0] - p[0] + u * d[0]
    cols = jnp.arange(out[1])[None, None, :, None] * s[1] - p[1] + v * d[1]
    return values, (rows * x.shape[2] + cols).astype(jnp.int32)


def max_unpool2d(
    x: Array,
    indices: Array,
    kernel_size: IntOr2,
    stride: IntOr2 | None = None,
    padding: IntOr2 = 0,
    output_size: Sequence[int] | None = None,
) -> Array:
    """``torch.nn.functional.max_unpool2d`` on NHWC input: each value of ``x`` is written at its
    flat index (``row * W_out + col``, from :func:`max_pool2d_with_indices`) of a zero plane of
    size ``(H_in − 1)·stride − 2·padding + kernel`` (or ``output_size``, (H, W)).

    Raises:
      ValueError: shapes that do not match, an ``output_size`` torch would refuse, or (for
        concrete indices) an index outside the output plane (JAX would drop it silently).
    """
    if x.ndim != 4 or indices.shape != x.shape:
        raise ValueError(
            f"max_unpool2d expects NHWC input and indices of the same shape, got {x.shape} and "
            f"{getattr(indices, 'shape', None)}"
        )
    k, s, p, _ = pool_window(kernel_size, stride, padding, 1, "max_unpool2d")
    n, h, w, c = x.shape
    default = ((h - 1) * s[0] - 2 * p[0] + k[0], (w - 1) * s[1] - 2 * p[1] + k[1])
    if output_size is None:
        size = default
    else:
        size = tuple(int(v) for v in output_size)
        if len(size) != 2:
            raise ValueError(f"output_size must be (H, W), got {tuple(output_size)}")
        for axis in range(2):
            lo, hi = default[axis] - s[axis], default[axis] + s[axis]
            if not lo < size[axis] < hi:
                raise ValueError(
                    f"max_unpool2d: output_size {size} is out of range: each side must lie "
                    f"strictly between {tuple(d - st for d, st in zip(default, s, strict=True))} "
                    f"and {tuple(d + st for d, st in zip(default, s, strict=True))}"
                )
    if min(size) < 1:
        raise ValueError(f"max_unpool2d: output size {size} is empty")
    plane = size[0] * size[1]
    if not isinstance(indices, jax.core.Tracer):
        concrete = np.asarray(indices)
        if concrete.size and (concrete.min() < 0 or concrete.max() >= plane):
            raise ValueError(
                f"max_unpool2d: indices must lie in [0, {plane}) for an output of {size}, got "
                f"[{concrete.min()}, {concrete.max()}]"
            )
    flat = jnp.zeros((n, plane, c), x.dtype)
    batch = jnp.arange(n)[:, None, None]
    channel = jnp.arange(c)[None, None, :]
    flat = flat.at[batch, indices.reshape(n, h * w, c), channel].set(x.reshape(n, h * w, c))
    return flat.reshape(n, size[0], size[1], c)


def _avg_divisor(size, k, s, p, out, count_include_pad) -> np.ndarray:
    """Per-output divisors along one axis, as torch's avg_pool2d kernel computes them."""
    start = np.arange(out) * s - p
    end_padded = np.minimum(start + k, size + p)
    if count_include_pad:
        return (end_padded - start).astype(np.float64)
    return (np.minimum(start + k, size) - np.maximum(start, 0)).astype(np.float64)


def avg_pool2d(
    x: Array,
    kernel_size: IntOr2,
    stride: IntOr2 | None = None,
    padding: IntOr2 = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Array:
    """``torch.nn.functional.avg_pool2d`` on NHWC input.

    >>> avg_pool2d(jnp.ones((1, 3, 3, 1)), 2, stride=1, padding=1, count_include_pad=False).shape
    (1, 4, 4, 1)
    """
    if divisor_override is not None and (
        not isinstance(divisor_override, int) or divisor_override < 1
    ):
        raise ValueError(f"divisor_override must be a positive int, got {divisor_override!r}")
    k, s, p, _, out, pads = _pool_args(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, (1, *k, 1), (1, *s, 1), pads)
    total = total[:, : out[0], : out[1], :]
    if divisor_override is not None:
        return total / divisor_override
    dh, dw = (
        _avg_divisor(x.shape[1 + i], k[i], s[i], p[i], out[i], count_include_pad) for i in range(2)
    )
    divisor = np.outer(dh, dw)[None, :, :, None]
    return total / jnp.asarray(divisor, x.dtype)


def adaptive_output_size(output_size, name: str) -> tuple[int | None, int | None]:
    """Validated adaptive-pool ``output_size`` as an (h, w) pair (``None`` keeps that size)."""
    pair_ = (
        (output_size, output_size)
        if isinstance(output_size, int) or output_size is None
        else (output_size)
    )
    if not (isinstance(pair_, Sequence) and len(pair_) == 2):
        raise ValueError(f"{name}: output_size must be an int, None or a pair, got {output_size!r}")
    if not all(o is None or (isinstance(o, int) and o >= 1) for o in pair_):
        raise ValueError(f"{name}: output_size must be positive, got {output_size!r}")
    return tuple(pair_)  # type: ignore[return-value]


def _adaptive_sizes(x: Array, output_size, name: str) -> tuple[int, int]:
    if x.ndim != 4:
        raise ValueError(
            f"{name} expects a 4-D NHWC input (batch, height, width, channels), got shape "
            f"{tuple(x.shape)}"
        )
    _check_not_empty(x, name, (1, 2) if name == "adaptive_avg_pool2d" else (1, 2, 3))
    oh, ow = adaptive_output_size(output_size, name)
    return (x.shape[1] if oh is None else oh, x.shape[2] if ow is None else ow)


def adaptive_windows(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """torch's adaptive pooling windows: ``[floor(i*I/O), ceil((i+1)*I/O))`` for each output i."""
    return [
        ((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)) for i in range(out_size)
    ]


def _adaptive_axis(x: Array, axis: int, out_size: int, reduce: str) -> Array:
    in_size = x.shape[axis]
    if in_size % out_size == 0:  # uniform, non-overlapping windows: a reshape suffices
        k = in_size // out_size
        shape = (*x.shape[:axis], out_size, k, *x.shape[axis + 1 :])
        r = x.reshape(shape)
        return r.mean(axis=axis + 1) if reduce == "avg" else r.max(axis=axis + 1)
    parts = []
    for start, end in adaptive_windows(in_size, out_size):
        window = lax.slice_in_dim(x, start, end, axis=axis)
        red = window.mean(axis=axis) if reduce == "avg" else window.max(axis=axis)
        parts.append(red)
    return jnp.stack(parts, axis=axis)


def adaptive_avg_pool2d(x: Array, output_size: int | tuple[int | None, int | None] | None) -> Array:
    """``torch.nn.functional.adaptive_avg_pool2d`` on NHWC input (``None`` keeps that size).

    Both averaging and max are separable over H and W for torch's rectangular windows, so each
    axis is reduced on its own.

    >>> adaptive_avg_pool2d(jnp.ones((2, 7, 5, 3)), 1).shape
    (2, 1, 1, 3)
    """
    oh, ow = _adaptive_sizes(x, output_size, "adaptive_avg_pool2d")
    return _adaptive_axis(_adaptive_axis(x, 1, oh, "avg"), 2, ow, "avg")


def adaptive_max_pool2d(x: Array, output_size: int | tuple[int | None, int | None] | None) -> Array:
    """``torch.nn.functional.adaptive_max_pool2d`` on NHWC input (``None`` keeps that size).

    >>> adaptive_max_pool2d(jnp.ones((2, 7, 5, 3)), (3, None)).shape
    (2, 3, 5, 3)
    """
    oh, ow = _adaptive_sizes(x, output_size, "adaptive_max_pool2d")
    return _adaptive_axis(_adaptive_axis(x, 1, oh, "max"), 2, ow, "max")


def adaptive_max_pool2d_with_indices(
    x: Array, output_size: int | tuple[int | None, int | None] | None
) -> tuple[Array, Array]:
    """``torch.nn.functional.adaptive_max_pool2d(..., return_indices=True)`` on NHWC input: the
    values and the flat per-plane index ``row * W + col`` of each (int32), first maximum on ties.

    >>> y, i = adaptive_max_pool2d_with_indices(jnp.arange(16.0).reshape(1, 4, 4, 1), 2)
    >>> i[0, :, :, 0]
    Array([[ 5,  7],
           [13, 15]], dtype=int32)
    """
    oh, ow = _adaptive_sizes(x, output_size, "adaptive_max_pool2d")
    width = x.shape[2]
    values, indices = [], []
    for r0, r1 in adaptive_windows(x.shape[1], oh):
        row_v, row_i = [], []
        for c0, c1 in adaptive_windows(width, ow):
            window = x[:, r0:r1, c0:c1, :].reshape(x.shape[0], -1, x.shape[3])
            local = jnp.argmax(window, axis=1)  # (N, C), row-major in the window
            row_v.append(jnp.take_along_axis(window, local[:, None], axis=1)[:, 0])
            row_i.append((r0 + local // (c1 - c0)) * width + c0 + local % (c1 - c0))
        values.append(jnp.stack(row_v, axis=1))
        indices.append(jnp.stack(row_i, axis=1))
    return jnp.stack(values, axis=1), jnp.stack(indices, axis=1).astype(jnp.int32)


__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "adaptive_max_pool2d_with_indices",
    "adaptive_windows",
    "avg_pool2d",
    "max_pool2d",
    "max_pool2d_with_indices",
    "max_unpool2d",
    "pool_output_size",
]
