"""Batch normalisation with PyTorch's running-statistics rule, layer normalisation and local
response normalisation, as pure functions.

Batch norm, torch vs plain Flax (``flax.linen.BatchNorm``):

* ``momentum`` is the weight of the *new* batch statistic (torch 0.1), not of the old average
  (Flax 0.99); ``momentum=None`` gives the cumulative average ``1 / num_batches_tracked``;
* the running variance is updated with the **unbiased** batch variance ``n / (n - 1) * var``,
  while the normalisation itself uses the biased one;
* ``num_batches_tracked`` counts updates (torch saves it in every ``state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax.functional import summation

Array = jax.Array


class BatchNormStats(NamedTuple):
    """Running statistics, named as in a torch ``state_dict``."""

    running_mean: Array
    running_var: Array
    num_batches_tracked: Array


def _moments(x: Array, axes: tuple[int, ...], axis_name, keepdims: bool = False):
    """Mean and biased variance over ``axes`` (and over devices when ``axis_name`` is given).

    Two passes (mean, then mean of squared deviations) keep float32 error at torch's level; the
    one-pass E[x^2] - E[x]^2 loses digits when |mean| >> std. Over leading axes (batch norm's)
    both sums and the mean's broadcast are the cascaded ones of :mod:`.summation`, in the
    forward pass and in the backward pass that differentiates them.
    """
    count = len(axes)
    if not keepdims and axes and axes == tuple(range(count)):
        n = math.prod(x.shape[:count])
        mean_of = lambda v: summation.leading_sum(v, count) / n
        spread = partial(summation.spread, shape=x.shape)
    else:
        mean_of = partial(jnp.mean, axis=axes, keepdims=keepdims)
        spread = lambda v: v
    mean = mean_of(x)
    if axis_name is not None:
        mean = lax.pmean(mean, axis_name)
    var = mean_of(jnp.square(x - spread(mean)))
    if axis_name is not None:
        var = lax.pmean(var, axis_name)
    return mean, var


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _normalise_by_batch(x: Array, weight: Array, bias: Array, eps: float):
    """``(y, mean, var)``: ``x`` normalised with its own statistics over every axis but the
    last, then scaled and shifted; the biased variance.

    The derivative is written out so that its transpose (the backward pass) is the textbook
    one: two per-channel sums of the output gradient, ``sum(g)`` and ``sum(g * xhat)``, shared
    by the input, weight and bias gradients, and one elementwise pass. Differentiating the
    two-pass moments instead gives a backward of six full reductions and five full-size
    temporaries, which is memory-bound on CPU once a feature map outgrows the cache. A
    ``custom_jvp`` rather than a ``custom_vjp``: forward mode, ``vmap`` and higher orders
    differentiate the rule itself.
    """
    mean, var = _moments(x, tuple(range(x.ndim - 1)), None)
    return (x - mean) * lax.rsqrt(var + eps) * weight + bias, mean, var


@_normalise_by_batch.defjvp
def _normalise_by_batch_jvp(eps, primals, tangents):
    x, weight, bias = primals
    dx, dweight, dbias = tangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    count = len(axes)
    mean, var = _moments(x, axes, None)
    invstd = lax.rsqrt(var + eps)
    centred = x - mean
    xhat = centred * invstd
    y = xhat * weight + bias
    # Per-channel factors (signs included) stay outside the sums and the per-channel terms are
    # gathered into two spreads, so that the backward pass (their transpose) sums exactly two
    # things, g and g * xhat, each once and cascaded (:mod:`.summation`).
    scale = weight * invstd
    dmean = summation.leading_sum(dx, count) / n
    projection = summation.leading_sum(xhat * dx, count) / n
    dvar = 2 * summation.leading_sum(centred * dx, count) / n
    dy = (
        scale * dx
        + summation.spread((-scale) * dmean + dbias, x.shape)
        + xhat * summation.spread((-scale) * projection + dweight, x.shape)
    )
    return (y, mean, var), (dy, dmean, dvar)


def batch_norm(
    x: Array,
    stats: BatchNormStats | None,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    training: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    axis_name: str | None = None,
) -> tuple[Array, BatchNormStats | None]:
    """Normalises over every axis but the last (channels) and returns ``(y, new_stats)``.

    Args:
      x: ``(..., C)`` input; for images NHWC.
      stats: running statistics, or ``None`` (``track_running_stats=False``: always use the batch).
      weight, bias: per-channel affine parameters, or ``None``.
      training: use (and update) batch statistics; otherwise use ``stats``.
      momentum: torch's momentum (weight of the new statistic), or ``None`` for a cumulative
        average.
      eps: added to the variance.
      axis_name: a mapped axis (pmap / shard_map) over which batch statistics are averaged, so
        data-parallel training sees the global batch's statistics.

    Returns:
      The normalised ``x`` and the updated statistics (``stats`` unchanged when not training).
      A bfloat16/float16 ``x`` is normalised in float32 and returned in its own dtype; the
      statistics keep theirs (float32 under mixed precision).

    >>> y, s = batch_norm(jnp.arange(8.0).reshape(4, 2), BatchNormStats(jnp.zeros(2), jnp.ones(2),
    ...                   jnp.array(0)), training=True)
    >>> s.running_var  # 0.9 * 1 + 0.1 * unbiased var (20/3)
    Array([1.5666666, 1.5666666], dtype=float32)
    """
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        # Mixed precision: statistics and normalisation in float32 (a bfloat16 mean over a
        # batch keeps ~3 significant digits), the output back in the input's dtype.
        y, stats = batch_norm(
            x.astype(jnp.float32),
            stats,
            None if weight is None else weight.astype(jnp.float32),
            None if bias is None else bias.astype(jnp.float32),
            training=training,
            momentum=momentum,
            eps=eps,
            axis_name=axis_name,
        )
        return y.astype(x.dtype), stats
    axes = tuple(range(x.ndim - 1))
    use_batch = training or stats is None
    if x.size == 0 and use_batch:
        # torch: an empty batch gives an empty output and counts as a batch; the running
        # statistics keep their values.
        if training and stats is not None:
            stats = stats._replace(num_batches_tracked=stats.num_batches_tracked + 1)
        return x, stats
    if use_batch:
        count = 1
        for a in axes:
            count *= x.shape[a]
        if count <= 1 and axis_name is None:
            raise ValueError(
                f"batch_norm: expected more than 1 value per channel when training (as in "
                f"PyTorch), got input shape {tuple(x.shape)}"
            )
    if use_batch and axis_name is None:
        c = x.shape[-1]
        y, mean, var = _normalise_by_batch(
            x,
            jnp.ones((c,), x.dtype) if weight is None else weight,
            jnp.zeros((c,), x.dtype) if bias is None else bias,
            eps,
        )
    else:
        if use_batch:
            mean, var = _moments(x, axes, axis_name)
        else:
            mean, var = stats.running_mean, stats.running_var
        # Per-channel values spread over the pixels, so the backward pass's sums over them
        # (of g and of g * xhat) are the cascaded ones (:mod:`.summation`).
        per_channel = partial(summation.spread, shape=x.shape) if x.ndim > 1 else (lambda v: v)
        y = (x - per_channel(mean)) * per_channel(lax.rsqrt(var + eps))
        if weight is not None:
            y = y * per_channel(weight)
        if bias is not None:
            y = y + per_channel(bias)
    if not (training and stats is not None):
        return y, stats
    n = count * (lax.psum(1, axis_name) if axis_name is not None else 1)
    unbiased = var * (n / (n - 1))
    tracked = stats.num_batches_tracked + 1
    factor = 1.0 / tracked if momentum is None else momentum
    new = BatchNormStats(
        running_mean=(1 - factor) * stats.running_mean + factor * lax.stop_gradient(mean),
        running_var=(1 - factor) * stats.running_var + factor * lax.stop_gradient(unbiased),
        num_batches_tracked=tracked,
    )
    return y, new


def normalized_shape_tuple(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    """torch's ``normalized_shape`` (an int or a sequence of sizes) as a validated tuple."""
    if isinstance(normalized_shape, Sequence) and not isinstance(normalized_shape, str):
        shape = tuple(normalized_shape)
    else:
        shape = (normalized_shape,)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                            for d in shape):  # fmt: skip
        raise ValueError(
            f"normalized_shape must be a positive int or a non-empty sequence of them, got "
            f"{normalized_shape!r}"
        )
    return shape


def layer_norm(
    input: Array,
    normalized_shape: int | Sequence[int],
    weight: Array | None = None,
    bias: Array | None = None,
    eps: float = 1e-5,
) -> Array:
    """``torch.nn.functional.layer_norm``: normalises over the trailing ``normalized_shape`` axes
    with the biased variance, then scales by ``weight`` and shifts by ``bias`` (both of shape
    ``normalized_shape``).

    The axes are the array's own trailing axes, as torch's are of the tensor it is given: on an
    NHWC array ``layer_norm(x, C)`` normalises over channels, which is torchvision's
    ``LayerNorm2d`` (it permutes NCHW to NHWC, normalises over C and permutes back). A
    bfloat16/float16 input is normalised in float32 and returned in its own dtype.

    Raises:
      ValueError: the input's trailing axes are not ``normalized_shape`` (torch's check).

    >>> layer_norm(jnp.array([[1.0, 2.0, 3.0]]), 3)
    Array([[-1.2247356,  0.       ,  1.2247356]], dtype=float32)
    """
    shape = normalized_shape_tuple(normalized_shape)
    if tuple(input.shape[input.ndim - len(shape) :]) != shape or input.ndim < len(shape):
        raise ValueError(
            f"Given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size {list(input.shape)}"
        )
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(
                f"layer_norm: {name} must have shape normalized_shape={shape}, got "
                f"{tuple(value.shape)}"
            )
    if jnp.issubdtype(input.dtype, jnp.floating) and jnp.finfo(input.dtype).bits < 32:
        up = lambda a: None if a is None else a.astype(jnp.float32)
        return layer_norm(up(input), shape, up(weight), up(bias), eps).astype(input.dtype)
    axes = tuple(range(input.ndim - len(shape), input.ndim))
    mean, var = _moments(input, axes, None, keepdims=True)
    y = (input - mean) * lax.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def local_response_norm(
    input: Array, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Array:
    """``torch.nn.functional.local_response_norm`` with channels on the **last** axis (NHWC; an
    (N, L, C) array for torch's (N, C, L)): each value is divided by
    ``(k + alpha * mean of the squares over a window of `size` channels) ** beta``.

    torch's window: ``size // 2`` channels before and ``(size - 1) // 2`` after, zero-padded at
    the ends, and always divided by ``size`` (the padding counts), exactly as torch pads the
    squares and average-pools them.

    Raises:
      ValueError: an input of rank < 3 or a ``size`` that is not a positive int.

    >>> local_response_norm(jnp.ones((1, 1, 1, 3)), size=2, alpha=1.0, beta=1.0, k=1.0)
    Array([[[[0.6666667, 0.5      , 0.5      ]]]], dtype=float32)
    """
    if input.ndim < 3:
        raise ValueError(
            f"local_response_norm: expected 3D or higher dimensionality input (got {input.ndim} "
            "dimensions); channels are the last axis (NHWC)"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    if input.size == 0:
        return input
    squares = input * input
    ones = (1,) * (input.ndim - 1)
    pads = ((0, 0),) * (input.ndim - 1) + ((size // 2, (size - 1) // 2),)
    total = lax.reduce_window(
        squares, np.array(0, input.dtype), lax.add, (*ones, size), (*ones, 1), pads
    )
    div = (total / size) * alpha + k
    return input / div**beta
