"""Linear, flatten and dropout with PyTorch's semantics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def linear(x: Array, weight: Array, bias: Array | None = None, precision=None) -> Array:
    """``torch.nn.functional.linear``: ``x @ weight.T + bias`` with ``weight`` of shape (out, in).

    The contraction is on ``weight``'s second axis, so no transposed copy is made.

    >>> linear(jnp.ones((2, 3)), jnp.ones((4, 3))).shape
    (2, 4)
    """
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: weight {tuple(weight.shape)} expects in_features={weight.shape[1]} on the "
            f"last axis, got input shape {tuple(x.shape)}"
        )
    y = lax.dot_general(x, weight, (((x.ndim - 1,), (1,)), ((), ())), precision=precision)
    if bias is not None:
        y = y + bias
    return y


def flatten(x: Array) -> Array:
    """Flattens all but the batch axis in PyTorch's (C, H, W) order.

    An NHWC array flattened this way equals ``torch.flatten(x_nchw, 1)``, so the ``Linear`` that
    follows has torch's weight layout and a torch ``state_dict`` loads without permuting it (plain
    Flax flattens in (H, W, C) order). For inputs of rank <= 2 this is an ordinary reshape.

    >>> flatten(jnp.arange(8).reshape(1, 2, 2, 2))[0]
    Array([0, 2, 4, 6, 1, 3, 5, 7], dtype=int32)
    """
    if x.ndim < 2:
        raise ValueError(f"flatten expects a batched input (rank >= 2), got shape {tuple(x.shape)}")
    if x.ndim == 2:
        return x
    channels_first = jnp.moveaxis(x, -1, 1)
    return channels_first.reshape(x.shape[0], -1)


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _drop(x: Array, p: float, rng: jax.Array | None, training: bool, mask_shape, name: str):
    _check_p(p)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return jnp.zeros_like(x)
    if rng is None:
        raise ValueError(f"{name} in training mode needs an rng key")
    keep = jax.random.bernoulli(rng, 1.0 - p, mask_shape)
    return jnp.where(keep, x / (1.0 - p), jnp.zeros((), x.dtype))


def dropout(x: Array, p: float, rng: jax.Array | None, *, training: bool) -> Array:
    """``torch.nn.functional.dropout``: zero each element with probability ``p`` and scale the
    rest by ``1 / (1 - p)`` when training; identity otherwise.

    Masks come from the explicit ``rng``; they cannot match torch's bit for bit (different RNGs),
    only in distribution.
    """
    return _drop(x, p, rng, training, x.shape, "dropout")


def dropout2d(x: Array, p: float, rng: jax.Array | None, *, training: bool) -> Array:
    """``torch.nn.functional.dropout2d`` on NHWC input: zero whole channels (one draw per
    (sample, channel)) with probability ``p`` and scale the rest by ``1 / (1 - p)``."""
    if x.ndim != 4:
        raise ValueError(
            f"dropout2d expects a 4-D NHWC input (batch, height, width, channels), got shape "
            f"{tuple(x.shape)}"
        )
    return _drop(x, p, rng, training, (x.shape[0], 1, 1, x.shape[3]), "dropout2d")
