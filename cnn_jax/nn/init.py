"""PyTorch's default initialisers as Flax initialisers.

torch initialises ``Conv*d`` and ``Linear`` weights with ``kaiming_uniform_(a=sqrt(5))``, which is
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and their biases with the same bound. Plain Flax uses
lecun_normal weights and zero biases, so a "same" model initialised by Flax trains differently from
its torch twin. ``fan_in`` follows torch's ``_calculate_fan_in_and_fan_out``: the size of the
weight's dimension 1 times the kernel area — for a transposed convolution that is
``out_channels // groups * kH * kW``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def torch_fan_in(shape: tuple[int, ...]) -> int:
    """fan_in as torch computes it for a weight of ``shape`` (torch layout)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in needs a weight of rank >= 2, got shape {shape}")
    return shape[1] * math.prod(shape[2:])


def uniform_bound(bound: float) -> Initializer:
    """``U(-bound, bound)``."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_weight_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """``kaiming_uniform_(w, a=sqrt(5))`` = ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (an empty
    weight, fan_in 0, is returned empty, as torch's no-op)."""
    fan_in = torch_fan_in(shape)
    if fan_in == 0:
        return jnp.zeros(shape, dtype)
    gain = math.sqrt(2.0 / (1.0 + 5.0))
    bound = gain * math.sqrt(3.0 / fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_bias_init(fan_in: int) -> Initializer:
    """torch's bias default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. With fan_in 0 (a convolution
    with ``in_channels=0``) torch leaves the bias uninitialised memory; here it is zeros."""
    return uniform_bound(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


def kaiming_normal_fan_out(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """``kaiming_normal_(w, mode='fan_out', nonlinearity='relu')``: N(0, 2 / fan_out) with torch's
    fan_out = ``shape[0] * kernel area`` (torchvision's ResNet and VGG convolutions)."""
    fan_out = shape[0] * math.prod(shape[2:])
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)


def normal(std: float) -> Initializer:
    """``N(0, std²)`` (torchvision's VGG classifier uses 0.01)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.normal(key, shape, dtype) * std

    return init


def zeros(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """All zeros."""
    del key
    return jnp.zeros(shape, dtype)


def trunc_normal(std: float, a: float = -2.0, b: float = 2.0) -> Initializer:
    """``trunc_normal_(w, mean=0, std=std, a=a, b=b)``: N(0, std²) cut to ``[a, b]``, torch's
    bounds being absolute values (jax's are in units of ``std``). torchvision's ConvNeXt (std
    0.02) keeps torch's default bounds ±2, so the cut is at 100 standard deviations and the law
    is the plain normal's in practice."""
    return jax.nn.initializers.truncated_normal(std, lower=a / std, upper=b / std)
