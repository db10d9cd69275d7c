"""Activation functions with PyTorch's values **and** PyTorch's derivatives at their kinks.

A piecewise function has no derivative at a kink; each framework picks one. A float32 network
puts activations exactly on a kink more often than one would think (a ReLU6 after a clamp, a
hardswish input of exactly 3.0 from quantised data), and a gradient that picks the other side
there is a different gradient. torch 2.13's choices (CPU and the formula of its backward kernels),
which these functions reproduce and the tests check point by point:

* ``relu``: 0 at x = 0 (``jax.nn.relu`` chooses the same);
* ``hardtanh(min_val, max_val)`` and ``relu6`` (= hardtanh(0, 6)): 1 only strictly inside
  ``(min_val, max_val)``, 0 at both ends (``jax.nn.hard_tanh`` gives 1 at -1 and 1);
* ``hardsigmoid``: 1/6 strictly inside (-3, 3), 0 at both ends;
* ``hardswish``: 0 for x <= -3, ``x / 3 + 1/2`` for -3 < x < 3, 1 for x >= 3.

Each rule is written out (a ``jax.custom_jvp``) rather than left to how a jax.nn function happens
to compose its pieces, so it cannot change underneath.

Every function takes torch's ``inplace`` argument for signature compatibility; JAX arrays are
immutable, so the result is always a new array (torch's in-place call returns the same values).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array

GELU_APPROXIMATIONS = ("none", "tanh")


def relu(input: Array, inplace: bool = False) -> Array:
    """``torch.nn.functional.relu``: ``max(x, 0)``, derivative 0 at 0 as in torch.

    >>> relu(jnp.array([-1.0, 0.0, 2.0]))
    Array([0., 0., 2.], dtype=float32)
    """
    return jax.nn.relu(input)


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _hardtanh(x: Array, min_val: float, max_val: float) -> Array:
    return jnp.clip(x, min_val, max_val)


@_hardtanh.defjvp
def _hardtanh_jvp(min_val, max_val, primals, tangents):
    (x,), (t,) = primals, tangents
    inside = (x > min_val) & (x < max_val)  # torch: 0 at both ends
    return _hardtanh(x, min_val, max_val), jnp.where(inside, t, jnp.zeros((), t.dtype))


def hardtanh(
    input: Array, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> Array:
    """``torch.nn.functional.hardtanh``: ``clip(x, min_val, max_val)``; derivative 1 strictly
    between the bounds, 0 at and beyond them (torch's).

    Raises:
      ValueError: ``min_val > max_val`` (torch's check).

    >>> hardtanh(jnp.array([-2.0, 0.5, 2.0]))
    Array([-1. ,  0.5,  1. ], dtype=float32)
    """
    if min_val > max_val:
        raise ValueError(
            f"min_val cannot be greater than max_val (got min_val={min_val}, max_val={max_val})"
        )
    return _hardtanh(input, float(min_val), float(max_val))


def relu6(input: Array, inplace: bool = False) -> Array:
    """``torch.nn.functional.relu6``: ``hardtanh(x, 0, 6)`` (torch computes it so, with
    hardtanh's derivative: 0 at 0 and at 6).

    >>> relu6(jnp.array([-1.0, 3.0, 7.0]))
    Array([0., 3., 6.], dtype=float32)
    """
    return _hardtanh(input, 0.0, 6.0)


@jax.custom_jvp
def _hardsigmoid(x: Array) -> Array:
    return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


@_hardsigmoid.defjvp
def _hardsigmoid_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    inside = (x > -3.0) & (x < 3.0)  # torch: 0 at -3 and 3
    return _hardsigmoid(x), jnp.where(inside, t / 6.0, jnp.zeros((), t.dtype))


def hardsigmoid(input: Array, inplace: bool = False) -> Array:
    """``torch.nn.functional.hardsigmoid``: ``clip(x + 3, 0, 6) / 6``; derivative 1/6 strictly
    inside (-3, 3), 0 at and beyond -3 and 3 (torch's).

    >>> hardsigmoid(jnp.array([-4.0, 0.0, 4.0]))
    Array([0. , 0.5, 1. ], dtype=float32)
    """
    return _hardsigmoid(input)


@jax.custom_jvp
def _hardswish(x: Array) -> Array:
    return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


@_hardswish.defjvp
def _hardswish_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    zero = jnp.zeros((), t.dtype)
    # torch 2.13's backward: 0 up to and at -3, the quadratic's slope inside, 1 from 3 on.
    slope = jnp.where(x < 3.0, t * (x / 3.0 + 0.5), t)
    return _hardswish(x), jnp.where(x <= -3.0, zero, slope)


def hardswish(input: Array, inplace: bool = False) -> Array:
    """``torch.nn.functional.hardswish``: ``x * clip(x + 3, 0, 6) / 6``; derivative 0 for
    x <= -3, ``x / 3 + 1/2`` for -3 < x < 3 and 1 for x >= 3 (torch's choice at the kinks).

    >>> hardswish(jnp.array([-4.0, 1.0, 4.0]))
    Array([-0.       ,  0.6666667,  4.       ], dtype=float32)
    """
    return _hardswish(input)


def silu(input: Array, inplace: bool = False) -> Array:
    """``torch.nn.functional.silu`` (swish): ``x * sigmoid(x)``.

    >>> silu(jnp.array([0.0, 1.0]))
    Array([0.       , 0.7310586], dtype=float32)
    """
    return jax.nn.silu(input)


def gelu(input: Array, approximate: str = "none") -> Array:
    """``torch.nn.functional.gelu``: ``x * Phi(x)`` with the exact normal CDF
    (``approximate='none'``) or torch's tanh approximation (``approximate='tanh'``).

    Raises:
      ValueError: ``approximate`` other than ``'none'`` or ``'tanh'``.

    >>> gelu(jnp.array([1.0])), gelu(jnp.array([1.0]), approximate='tanh')
    (Array([0.8413447], dtype=float32), Array([0.841192], dtype=float32))
    """
    check_gelu_approximation(approximate)
    if approximate == "tanh":
        return jax.nn.gelu(input, approximate=True)
    return _gelu_exact(input)


@jax.custom_jvp
def _gelu_exact(x: Array) -> Array:
    """torch's GELU, ``x * Phi(x)`` with ``Phi(x) = (1 + erf(x / sqrt 2)) / 2`` (torch's CPU and
    CUDA kernels compute this form), with its derivative written out as torch's GELU backward
    computes it: ``Phi(x) + x * phi(x)`` (normal CDF and density), one factor.

    ``jax.nn.gelu(x, approximate=False)`` computes the CDF with ``erfc`` instead, a costlier
    expansion (an exponential, a division and two branches for every value) that XLA:CPU
    evaluates in a fusion of its own besides the derivative's ``erf``; here the forward value
    and the derivative's factor share one ``erf``. jax's own derivative of the product keeps the
    CDF, the input and the exponential of the density as separate pieces, and XLA:CPU recomputes
    them in several fusions of the backward pass; here the forward pass stores the one factor and
    the backward pass multiplies by it. Low-precision inputs are computed in float32 and rounded
    once, as torch does.
    """
    wide = _widened(x)
    return (wide * _normal_cdf(wide)).astype(x.dtype)


def _widened(x: Array) -> Array:
    """``x`` in float32 if it is a narrower float (torch's ``opmath`` for GELU), else itself."""
    low = jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32
    return x.astype(jnp.float32) if low else x


def _normal_cdf(x: Array) -> Array:
    return 0.5 * (1.0 + jax.lax.erf(x * _SQRT1_2))


@_gelu_exact.defjvp
def _gelu_exact_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    wide = _widened(x)
    cdf = _normal_cdf(wide)
    pdf = jnp.exp(-0.5 * wide * wide) * _INV_SQRT_2PI
    tangent = t.astype(wide.dtype) * (cdf + wide * pdf)
    return (wide * cdf).astype(x.dtype), tangent.astype(t.dtype)


_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def check_gelu_approximation(approximate: str) -> None:
    """torch's check on GELU's ``approximate`` argument (used by the module at construction)."""
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(
            f"approximate argument must be either none or tanh, got {approximate!r} (as in "
            "PyTorch; 'tanh' is the tanh approximation)"
        )


__all__ = ["gelu", "hardsigmoid", "hardswish", "hardtanh", "relu", "relu6", "silu"]
