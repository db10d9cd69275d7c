"""Feature maps by layer name, first-layer filters, saliency maps and per-layer gradient norms,
as arrays ready to plot (:mod:`cnn_jax.inspect.plots`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
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


def _apply(model: nn.Module, variables: dict[str, Any], x: Array, train: bool, key) -> Array:
    if not accepts_train(model):
        return model.apply(variables, x)
    if not train:
        return model.apply(variables, x, train=False)
    rngs = {"dropout": key if key is not None else jax.random.key(0)}
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return logits


def saliency(
    model: nn.Module,
    variables: dict[str, Any],
    images: Array,
    labels: Array | None = None,
) -> Array:
    """Vanilla gradient saliency (Simonyan et al., 2013): ``|d logit[label] / d pixel|``, the
    maximum over channels, shape (N, H, W). ``images`` are the model's (normalised) input;
    ``labels`` default to the predicted classes. Eval mode."""
    images = jnp.asarray(images)
    if labels is None:
        labels = jnp.argmax(_apply(model, variables, images, False, None), axis=-1)
    labels = jnp.asarray(labels)

    def picked(x):
        logits = _apply(model, variables, x, False, None)
        return jnp.take_along_axis(logits, labels[:, None], axis=-1).sum()

    return jnp.abs(jax.grad(picked)(images)).max(axis=-1)


def layer_gradient_norms(
    model: nn.Module,
    variables: dict[str, Any],
    images: Array,
    labels: Array,
    *,
    train: bool = False,
    key: Array | None = None,
) -> dict[str, float]:
    """The L2 norm of the cross-entropy loss's gradient for each layer's ``weight``, keyed by
    torch-style layer name in forward order: how strongly each layer learns from this batch
    (vanishing gradients show as norms shrinking towards the input). ``train=True`` uses batch
    statistics and dropout (``key``)."""
    images, labels = jnp.asarray(images), jnp.asarray(labels)

    def loss(params):
        logits = _apply(model, {**variables, "params": params}, images, train, key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = traverse_util.flatten_dict(jax.grad(loss)(variables["params"]), sep=".")
    order = [r.name for r in layers(model, tuple(images.shape))]
    out = {}
    for name in order:
        g = grads.get(f"{name}.weight")
        if g is not None and name not in out:
            out[name] = float(jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)))))
    return out
