"""Containers and activation modules, named like torch.nn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

from cnn_jax._utils import accepts_train
from cnn_jax.functional.activation import relu

Array = jax.Array


class Sequential(nn.Module):
    """``torch.nn.Sequential``: applies ``layers`` in order; children are named ``'0'``, ``'1'``...

    So the variables of ``Sequential((Conv2d(...), ReLU(), ...), name='features')`` live at
    ``features/0/weight`` — torch's ``features.0.weight``. Unlike ``flax.linen.Sequential`` it
    passes ``train`` on to the layers that take it (BatchNorm2d, Dropout, nested containers).
    Plain functions (e.g. ``jnp.tanh``) are allowed and take an index like torch's ``Tanh``; a
    piecewise one should be its module (``ReLU()``, not ``jax.nn.relu``), whose decisions
    :mod:`cnn_jax.testing.kinks` can record.

    >>> import cnn_jax.nn as cnn
    >>> block = Sequential((cnn.Conv2d(3, 8, 3, padding=1), cnn.BatchNorm2d(8), cnn.ReLU()))
    >>> variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    >>> sorted(variables['params'])
    ['0', '1']
    """

    layers: Sequence[Callable[..., Any]]

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        for index, layer in enumerate(self.layers):
            if isinstance(layer, nn.Module):
                # Re-parent a copy under torch's index name (the instance given is a template).
                layer = layer.clone(parent=self, name=str(index))
                x = layer(x, train=train) if accepts_train(layer) else layer(x)
            else:
                x = layer(x)
        return x


class ReLU(nn.Module):
    """``torch.nn.ReLU(inplace=False)`` as a module, so it has an index in a Sequential, its
    output can be captured as a feature map and :mod:`cnn_jax.testing.kinks` records its
    decisions. ``inplace`` is accepted as torch's; JAX arrays are immutable, so it changes
    nothing."""

    inplace: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return relu(x)


class Tanh(nn.Module):
    """``torch.nn.Tanh`` as a module."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return jax.numpy.tanh(x)


class Sigmoid(nn.Module):
    """``torch.nn.Sigmoid`` as a module."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return jax.nn.sigmoid(x)


class Identity(nn.Module):
    """``torch.nn.Identity``."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return x
