"""Float32 sums over the leading axes of a small feature map, as accurate as torch's.

A batch-norm statistic or gradient is a per-channel sum over every pixel of the batch:
``M = N * H * W`` rows of ``C`` channels. XLA:CPU hands a reduce of 32768 or more elements to
YNNPACK, whose sums are as accurate as torch's; a smaller one gets XLA's own loop emitter, which
adds the ``M`` rows one after another, so with few channels (long columns) its float32
rounding error grows with ``M``, well past torch's (``python -m experiments.float32_sums``
measures both, the cost of a cascade, and what it does to a small GoogLeNet's gradients). In a
network that error becomes the gradients', as ``tests/test_float32_gradients.py`` found.

:func:`leading_sum` therefore sums a small array in a cascade (:func:`levels`): groups of about
``sqrt(M)`` consecutive rows of one image, then those group sums per image, then groups of
images, then those. Each level's partial sums pass through ``lax.optimization_barrier``:
XLA's algebraic simplifier would merge a reduce of a reduce back into one. A large array is
summed plainly: YNNPACK's reduce is already accurate there, and runs a cascade's levels slower.
:func:`spread` is the broadcast whose transpose is :func:`leading_sum`: writing a per-channel
term of a forward pass (or of a ``custom_jvp`` rule) with it makes the first-order backward
pass's sum of that term a cascade too. Groups follow the leading axis (the rows of one image,
then runs of whole images), so a batch-sharded array is reduced device by device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Below this many rows a sequential sum is no less accurate than the cascade.
MIN_CASCADE_ROWS = 64
# From this many elements on, XLA:CPU offloads a reduce to YNNPACK (xla/backends/cpu/
# ynn_support.cc: IsReduceOpOffloadedToYnn), whose sums need no cascade.
CASCADE_BELOW_ELEMENTS = 32 * 1024


def levels(shape: Sequence[int], count: int) -> tuple[int, ...]:
    """The group sizes of a cascaded sum over the first ``count`` axes of ``shape``, innermost
    (consecutive rows) first. With ``count`` > 1, the ``R = prod(shape[1:count])`` rows of one
    image come first, split ``(b, R / b)`` with ``b`` the largest divisor of ``R`` not above
    ``sqrt(M)`` (one level when ``R`` has no such divisor but 1 or itself, none when ``R`` is 1);
    then the images, in groups of the largest divisor of ``N = shape[0]`` not above
    ``sqrt(N)``, whose sums are the last level (not listed). With ``count`` 1 only the images.
    Empty (a plain sum) below :data:`MIN_CASCADE_ROWS` rows and from
    :data:`CASCADE_BELOW_ELEMENTS` elements on.

    >>> levels((6, 32, 32, 4), 3)  # M = 6144: a 32x32 image's 1024 rows = 64 * 16, then 2 * 3
    (64, 16, 2)
    """
    if count < 1 or count > len(shape):
        raise ValueError(f"count must be in 1..{len(shape)} for shape {tuple(shape)}, got {count}")
    m = math.prod(shape[:count])
    if m < MIN_CASCADE_ROWS or math.prod(shape) >= CASCADE_BELOW_ELEMENTS:
        return ()
    rows = math.prod(shape[1:count])
    b = _divisor(rows, math.isqrt(m))
    images = _divisor(shape[0], math.isqrt(shape[0]))
    return tuple(f for f in (b, rows // b, images) if f > 1)


def _divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` not above ``limit``."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _grouped_shape(shape: Sequence[int], count: int, factors: tuple[int, ...]) -> tuple:
    """``shape`` with its first ``count`` axes as ``(outer, *reversed(factors))``."""
    return (math.prod(shape[:count]) // math.prod(factors), *factors[::-1], *shape[count:])


def leading_sum(x: Array, count: int) -> Array:
    """``x.sum(axis=range(count))`` as a cascade (see the module docstring): partial sums of
    groups of consecutive rows, level by level (:func:`levels`), the images' last.
    Differentiable (its transpose is a broadcast), batchable, and exact wherever a plain sum is.

    >>> leading_sum(jnp.ones((8, 16, 3)), 2)
    Array([128., 128., 128.], dtype=float32)
    """
    factors = levels(x.shape, count)
    if not factors:
        return x.sum(axis=tuple(range(count)))
    # A 16-bit float keeps its partial sums in float32, rounded once at the end, as a plain
    # sum's are.
    low = jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32
    accumulate = jnp.float32 if low else None
    trailing = x.ndim - count
    y = x.reshape(_grouped_shape(x.shape, count, factors))
    for _ in factors:
        y = lax.optimization_barrier(y.sum(axis=-trailing - 1, dtype=accumulate))
    return y.sum(axis=0, dtype=accumulate).astype(x.dtype)


def spread(v: Array, shape: Sequence[int]) -> Array:
    """``jnp.broadcast_to(v, shape)`` for a ``v`` of the trailing shape ``shape[-v.ndim:]``
    (e.g. one value per channel), written so that its transpose, the sum of a cotangent over
    the leading axes, is :func:`leading_sum`'s cascade.

    >>> spread(jnp.arange(2.0), (3, 2))
    Array([[0., 1.],
           [0., 1.],
           [0., 1.]], dtype=float32)
    """
    shape = tuple(shape)
    count = len(shape) - v.ndim
    if count < 1 or shape[count:] != v.shape:
        raise ValueError(f"cannot spread an array of shape {v.shape} to {shape}: it must be the "
                         f"trailing shape of at least one more axis")  # fmt: skip
    factors = levels(shape, count)
    if not factors:
        return jnp.broadcast_to(v, shape)
    grouped = _grouped_shape(shape, count, factors)
    y = jnp.broadcast_to(v, (grouped[0], *v.shape))
    for i, f in enumerate(factors[::-1]):
        y = lax.optimization_barrier(y)
        y = jnp.broadcast_to(jnp.expand_dims(y, -v.ndim - 1), (*grouped[: i + 1], f, *v.shape))
    return y.reshape(shape)
