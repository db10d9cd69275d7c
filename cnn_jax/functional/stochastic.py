"""torchvision's stochastic depth (``torchvision.ops.stochastic_depth``) with an explicit key."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

STOCHASTIC_DEPTH_MODES = ("batch", "row")


def check_stochastic_depth(p: float, mode: str) -> None:
    """torchvision's argument checks (its module defers them to the call; ours checks at
    construction too)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in STOCHASTIC_DEPTH_MODES:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")


def stochastic_depth(
    input: Array, p: float, mode: str, training: bool = True, *, rng: jax.Array | None = None
) -> Array:
    """``torchvision.ops.stochastic_depth``: with ``training``, zero the whole input
    (``mode='batch'``, one draw) or each sample (``mode='row'``, one draw per row of the first
    axis) with probability ``p``, and scale what survives by ``1 / (1 - p)``; the input itself
    when not training or ``p == 0``. As torchvision, ``p == 1`` multiplies by zero (so a NaN or
    inf input stays NaN).

    The draw comes from the explicit ``rng`` key (torch uses its global generator, so masks agree
    with torch's only in distribution).

    Raises:
      ValueError: ``p`` outside [0, 1], an unknown ``mode``, or no ``rng`` when one is needed.

    >>> x = jnp.ones((4, 2))
    >>> stochastic_depth(x, 0.5, 'row', training=False) is x
    True
    >>> stochastic_depth(x, 0.5, 'row', rng=jax.random.key(0)).shape
    (4, 2)
    """
    check_stochastic_depth(p, mode)
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = (input.shape[0],) + (1,) * (input.ndim - 1) if mode == "row" else (1,) * input.ndim
    if survival_rate == 0.0:
        return input * jnp.zeros(size, input.dtype)
    if rng is None:
        raise ValueError(
            "stochastic_depth in training mode needs an rng key (the module draws it from the "
            "'dropout' stream: apply(..., rngs={'dropout': key}))"
        )
    noise = jax.random.bernoulli(rng, survival_rate, size).astype(input.dtype) / survival_rate
    return input * noise


__all__ = ["stochastic_depth"]
