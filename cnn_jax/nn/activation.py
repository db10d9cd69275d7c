"""Activation modules named and parameterised like torch.nn, on :mod:`cnn_jax.functional`.

As modules (rather than bare functions) they take an index in a :class:`~cnn_jax.nn.Sequential`
(so ``state_dict`` indices match torch's), their outputs can be captured as feature maps, and
:mod:`cnn_jax.testing.kinks` sees each piecewise one through flax's method interception. The
piecewise ones (``Hardtanh``, ``ReLU6``, ``Hardswish``, ``Hardsigmoid``, and ``ReLU`` in
:mod:`cnn_jax.nn.containers`) have torch's derivatives at their kinks (see
:mod:`cnn_jax.functional.activation`). ``inplace`` is accepted as torch's constructors take it
(torchvision passes ``inplace=True``); JAX arrays are immutable, so it changes nothing.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnn_jax.functional import activation as A

Array = jax.Array


class Hardtanh(nn.Module):
    """``torch.nn.Hardtanh(min_val=-1.0, max_val=1.0, inplace=False)``: ``clip(x, min_val,
    max_val)``.

    >>> Hardtanh(-2.0, 2.0).apply({}, jnp.array([-3.0, 1.0, 3.0]))
    Array([-2.,  1.,  2.], dtype=float32)
    """

    min_val: float = -1.0
    max_val: float = 1.0
    inplace: bool = False

    def __post_init__(self) -> None:
        if not self.max_val > self.min_val:  # torch's module requires a non-empty range
            raise ValueError(
                f"max_val ({self.max_val}) must be greater than min_val ({self.min_val})"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return A.hardtanh(x, self.min_val, self.max_val)


class ReLU6(nn.Module):
    """``torch.nn.ReLU6(inplace=False)``: ``min(max(x, 0), 6)``, torch's ``Hardtanh(0, 6)``.

    >>> ReLU6().apply({}, jnp.array([-1.0, 3.0, 7.0]))
    Array([0., 3., 6.], dtype=float32)
    """

    inplace: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return A.relu6(x)


class Hardswish(nn.Module):
    """``torch.nn.Hardswish(inplace=False)``: ``x * relu6(x + 3) / 6`` (MobileNetV3).

    >>> Hardswish().apply({}, jnp.array([-4.0, 0.0, 4.0]))
    Array([-0.,  0.,  4.], dtype=float32)
    """

    inplace: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return A.hardswish(x)


class Hardsigmoid(nn.Module):
    """``torch.nn.Hardsigmoid(inplace=False)``: ``relu6(x + 3) / 6`` (MobileNetV3's
    squeeze-excitation gate).

    >>> Hardsigmoid().apply({}, jnp.array([-4.0, 0.0, 4.0]))
    Array([0. , 0.5, 1. ], dtype=float32)
    """

    inplace: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return A.hardsigmoid(x)


class SiLU(nn.Module):
    """``torch.nn.SiLU(inplace=False)``: ``x * sigmoid(x)`` (EfficientNet's swish).

    >>> SiLU().apply({}, jnp.array([0.0, 1.0]))
    Array([0.       , 0.7310586], dtype=float32)
    """

    inplace: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return A.silu(x)


class GELU(nn.Module):
    """``torch.nn.GELU(approximate='none')``: ``x * Phi(x)``, or its tanh approximation with
    ``approximate='tanh'`` (ConvNeXt uses the exact one).

    >>> GELU().apply({}, jnp.array([1.0]))
    Array([0.8413447], dtype=float32)
    """

    approximate: str = "none"

    def __post_init__(self) -> None:
        A.check_gelu_approximation(self.approximate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return A.gelu(x, self.approximate)
