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


def as_prefixes(value: Any, name: str) -> tuple[str, ...]:
    """``value``, a sequence of dotted parameter prefixes (``('features', 'layer1.0')``), as a
    tuple. A single string is refused: it would be read as a sequence of one-letter prefixes.

    Raises:
      ValueError: ``value`` is a string (the message names ``name``).
    """
    if isinstance(value, str):
        raise ValueError(f"{name} must be a sequence of prefixes, got the string {value!r}")
    return tuple(value)


def matching_prefix(path: str | Sequence[str], prefixes: Sequence[str]) -> str | None:
    """The first of ``prefixes`` that the dotted ``path`` (or a tuple of its parts) is or lies
    under, else ``None``: ``'features'`` matches ``'features.0.weight'``, not ``'features2'``."""
    name = path if isinstance(path, str) else ".".join(path)
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


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


def check_floating(x: Any, layer: str) -> None:
    """Raises a TypeError for integer or boolean input, which torch's layers refuse too (``Input
    type (unsigned char) and bias type (float) should be the same``); lax would fail later with a
    less helpful dtype error."""
    import jax.numpy as jnp

    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(
            f"{layer} expects floating-point input, got {x.dtype}; convert pixels with "
            "x.astype(jnp.float32) / 255 (and normalise) first"
        )


def check_model_input(
    x: Any,
    model: str,
    in_channels: int,
    *,
    exact_hw: tuple[int, int] | None = None,
    min_hw: int = 1,
    option: str = "",
) -> None:
    """A model's entry check: floating NHWC input with ``in_channels`` channels and a spatial size
    it can take (``exact_hw``, or at least ``min_hw`` on each side), so a wrong input fails at
    the model's door with the requirement rather than deep inside a layer.

    ``option`` names the argument that sets the size (for the error message)."""
    check_nhwc(x, in_channels, model)
    check_floating(x, model)
    hw = tuple(x.shape[1:3])
    if exact_hw is not None and hw != tuple(exact_hw):
        how = f" (built with {option})" if option else ""
        raise ValueError(
            f"{model} needs {exact_hw[0]}x{exact_hw[1]} input{how}, got {hw[0]}x{hw[1]}; resize "
            f"the images (cnn-jax train --image-size {exact_hw[0]})"
            if exact_hw[0] == exact_hw[1]
            else f"{model} needs {exact_hw[0]}x{exact_hw[1]} input{how}, got {hw[0]}x{hw[1]}"
        )
    if min(hw) < min_hw:
        raise ValueError(
            f"{model} needs input of at least {min_hw}x{min_hw}, got {hw[0]}x{hw[1]}; resize the "
            f"images (cnn-jax train --image-size {min_hw} or larger)"
        )


@functools.cache
def _call_takes_train(cls: type) -> bool:
    return "train" in inspect.signature(cls.__call__).parameters


def accepts_train(module: Any) -> bool:
    """Whether the module is called as ``module(x, train=...)`` (BatchNorm, Dropout, models)."""
    return _call_takes_train(type(module))
