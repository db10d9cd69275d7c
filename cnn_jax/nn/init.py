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


# torch's kaiming initialisers: gain sqrt(2) (ReLU, and leaky_relu's default a=0) on torch's
# fan_in / fan_out (dimension 1 / 0 times the kernel area), which jax's variance_scaling computes
# with in_axis=1, out_axis=0 on a torch-layout weight ("normal": the plain normal law, torch's).
kaiming_normal_fan_in: Initializer = jax.nn.initializers.variance_scaling(
    2.0, "fan_in", "normal", in_axis=1, out_axis=0
)
"""``kaiming_normal_(w)`` with torch's defaults (fan_in, gain sqrt 2): N(0, 2 / fan_in)
(torchvision's DenseNet convolutions)."""

kaiming_uniform_fan_in: Initializer = jax.nn.initializers.variance_scaling(
    2.0, "fan_in", "uniform", in_axis=1, out_axis=0
)
"""``kaiming_uniform_(w)`` with torch's defaults (a=0, fan_in): U(±sqrt(6 / fan_in))
(torchvision's SqueezeNet convolutions; torch's layer default uses a=sqrt 5 instead)."""


def trunc_normal(std: float, a: float = -2.0, b: float = 2.0) -> Initializer:
    """``trunc_normal_(w, mean=0, std=std, a=a, b=b)``: N(0, std²) cut to ``[a, b]``, torch's
    bounds being absolute values (jax's are in units of ``std``). torchvision's GoogLeNet (std
    0.01), Inception v3 (0.1, 0.01, 0.001) and ConvNeXt (0.02) keep torch's default bounds ±2,
    so the cut is at 20 to 2000 standard deviations: the law is the plain normal's in practice.
    """
    return jax.nn.initializers.truncated_normal(std, lower=a / std, upper=b / std)
