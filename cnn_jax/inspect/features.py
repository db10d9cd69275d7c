"""Feature maps by layer name and first-layer filters, as arrays ready to plot."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from cnn_jax._utils import accepts_train
from cnn_jax.inspect.summary import LEAF_TYPES, layers

Array = jax.Array


def intermediates(
    model: nn.Module,
    variables: dict[str, Any],
    x: Array,
    names: Iterable[str] | None = None,
) -> dict[str, Array]:
    """Outputs of the named layers (all cnn_jax layers when ``names`` is None) for input ``x``,
    in eval mode, keyed by torch-style dotted name (``'features.3'``, ``'layer1.0.conv1'``).

    Raises:
      ValueError: for a name that is not a layer of ``model``, listing the valid names.
    """
    wanted = None if names is None else list(names)
    if wanted is not None:
        valid = [r.name for r in layers(model, tuple(x.shape))]
        unknown = [n for n in wanted if n not in valid]
        if unknown:
            raise ValueError(f"unknown layer name(s) {unknown}; layers of this model: {valid}")

    def capture(module: nn.Module, method_name: str) -> bool:
        if method_name != "__call__" or not isinstance(module, LEAF_TYPES):
            return False
        return wanted is None or ".".join(module.path) in wanted

    kwargs = {"train": False} if accepts_train(model) else {}
    _, state = model.apply(
        variables, x, capture_intermediates=capture, mutable=["intermediates"], **kwargs
    )
    flat = traverse_util.flatten_dict(state["intermediates"])
    return {".".join(path[:-1]): value[0] for path, value in flat.items()}


def first_conv_filters(
    model: nn.Module, variables: dict[str, Any], input_shape: tuple[int, ...] | None = None
) -> Array:
    """The weight of the first Conv2d the model applies, torch layout ``(out, in, kH, kW)``."""
    for row in layers(model, input_shape):
        if row.kind == "Conv2d":
            tree = variables["params"]
            for key in row.name.split("."):
                tree = tree[key]
            return tree["weight"]
    raise ValueError(f"{type(model).__name__} has no Conv2d layer")


def filters_as_images(weight: Array) -> Array:
    """Conv filters ``(out, in, kH, kW)`` as images ``(out, kH, kW, in)``, each scaled to [0, 1]
    on its own (min-max), as the course's filter plots show them."""
    images = jnp.transpose(weight, (0, 2, 3, 1))
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    return (images - lo) / jnp.where(hi > lo, hi - lo, 1.0)
