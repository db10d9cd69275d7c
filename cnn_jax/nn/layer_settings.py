"""Settings for every layer of a model, passed as those layers' own call arguments.

A model's convolution backend, the mapped axis its BatchNorm layers synchronise over (pmap) and
which of its BatchNorm layers are frozen are properties of the function that applies it, not of
the model's code: :func:`with_layer_settings` wraps ``model.apply`` so that each call hands them
to the layers it reaches. They travel through flax's method interception, installed for that
call only (and per thread), so a function jitted from the result keeps its settings whatever
runs around it, and no layer reads anything but its arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn

from cnn_jax._utils import as_prefixes, matching_prefix
from cnn_jax.functional.conv import check_conv_backend
from cnn_jax.nn.layers import BatchNorm2d, Conv2d, ConvTranspose2d


def with_layer_settings(
    apply_fn: Callable[..., Any],
    *,
    conv_backend: str | None = None,
    batch_norm_axis_name: str | None = None,
    frozen_batch_norm: Sequence[str] = (),
    store_weight_gradients: bool | None = None,
) -> Callable[..., Any]:
    """``apply_fn`` (a model's ``apply``) whose calls pass settings to every layer they reach.

    Args:
      apply_fn: ``model.apply`` (or anything that applies linen modules).
      conv_backend: ``backend=`` for every :class:`Conv2d` and :class:`ConvTranspose2d` without
        its own (:func:`cnn_jax.functional.conv_general`).
      batch_norm_axis_name: ``axis_name=`` for every :class:`BatchNorm2d` without its own: batch
        statistics averaged over that mapped axis (synchronised BatchNorm under ``pmap``).
      frozen_batch_norm: dotted module paths (``'layer1.0.bn1'``, or a prefix such as
        ``'features'``): the BatchNorm2d layers at or under them get ``train=False`` — they
        normalise with their running statistics and do not update them, as Keras does for the
        frozen part of a model (torch would need ``module.eval()`` on each).
      store_weight_gradients: ``store_weight_gradient=`` for every :class:`Conv2d` and
        :class:`ConvTranspose2d` (:func:`cnn_jax.functional.conv_general`; ``None``: its size
        rule). The train step passes ``False`` for a state whose kernels are stored HWIO.

    Returns:
      A function with ``apply_fn``'s signature.

    >>> import jax, jax.numpy as jnp
    >>> from cnn_jax.models import create
    >>> model = create('lenet5')
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)
    >>> apply = with_layer_settings(model.apply, conv_backend='xla')
    >>> apply(variables, jnp.zeros((2, 32, 32, 1)), train=False).shape
    (2, 10)
    """
    if conv_backend is not None:
        check_conv_backend(conv_backend)
    frozen = as_prefixes(frozen_batch_norm, "frozen_batch_norm")
    if (
        conv_backend is None
        and batch_norm_axis_name is None
        and not frozen
        and store_weight_gradients is None
    ):
        return apply_fn
    interceptor = functools.partial(
        _pass_settings,
        conv_backend=conv_backend,
        axis_name=batch_norm_axis_name,
        frozen=frozen,
        store_weight_gradients=store_weight_gradients,
    )

    @functools.wraps(apply_fn)
    def apply(*args: Any, **kwargs: Any) -> Any:
        with nn.intercept_methods(interceptor):
            return apply_fn(*args, **kwargs)

    return apply


def _pass_settings(
    next_fun: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    context: nn.module.InterceptorContext,
    *,
    conv_backend: str | None,
    axis_name: str | None,
    frozen: tuple[str, ...],
    store_weight_gradients: bool | None,
) -> Any:
    """The interceptor: adds the settings to the ``__call__`` of the layers that take them."""
    module = context.module
    if context.method_name == "__call__":
        if isinstance(module, Conv2d | ConvTranspose2d):
            if conv_backend is not None:
                kwargs = {**kwargs, "backend": conv_backend}
            if store_weight_gradients is not None:
                kwargs = {**kwargs, "store_weight_gradient": store_weight_gradients}
        elif isinstance(module, BatchNorm2d):
            if axis_name is not None:
                kwargs = {**kwargs, "axis_name": axis_name}
            if kwargs.get("train") and matching_prefix(module.path, frozen) is not None:
                kwargs = {**kwargs, "train": False}
    return next_fun(*args, **kwargs)


__all__ = ["with_layer_settings"]
