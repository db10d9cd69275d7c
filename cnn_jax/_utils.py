"""Argument normalisation shared by the layers and the functional core.

torch accepts an int or a pair for every spatial argument; these helpers turn them into validated
tuples once, so the maths below never has to guess.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

IntOr2 = int | tuple[int, int]


def pair(value: Any, name: str, *, minimum: int = 1) -> tuple[int, int]:
    """Returns ``value`` as a pair of ints, each at least ``minimum``.

    Raises:
      ValueError: if ``value`` is not an int or a length-2 sequence of ints, or is below
        ``minimum``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        out = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        out = tuple(value)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out  # type: ignore[return-value]


def check_nhwc(
    x: Any, channels: int | None, layer: str, *, channel_name: str = "in_channels"
) -> None:
    """Raises a ValueError naming the NHWC layout unless ``x`` is 4-D with ``channels`` last."""
    shape = tuple(x.shape)
    if len(shape) != 4:
        hint = " For a single image use x[None]." if len(shape) == 3 else ""
        raise ValueError(
            f"{layer} expects a 4-D NHWC input (batch, height, width, channels), got shape "
            f"{shape}.{hint}"
        )
    if channels is not None and shape[-1] != channels:
        hint = ""
        if shape[1] == channels:
            hint = (
                " It looks like NCHW (PyTorch layout); cnn_jax is NHWC: use "
                "x.transpose(0, 2, 3, 1)."
            )
        raise ValueError(
            f"{layer} expects NHWC input with {channel_name}={channels} channels on the last axis, "
            f"got shape {shape}.{hint}"
        )


@functools.cache
def _call_takes_train(cls: type) -> bool:
    return "train" in inspect.signature(cls.__call__).parameters


def accepts_train(module: Any) -> bool:
    """Whether the module is called as ``module(x, train=...)`` (BatchNorm, Dropout, models)."""
    return _call_takes_train(type(module))
