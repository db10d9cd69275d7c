"""Models by name: ``create('resnet18', num_classes=10)``, ``list_models()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(
    name: str, *, replace: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory to the registry under ``name`` (``replace=True``
    redefines an existing name instead of raising)."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and not replace:
            raise ValueError(f"model {name!r} is already registered (replace=True to redefine)")
        _REGISTRY[name] = factory
        return factory

    return add


def list_models() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_REGISTRY)


def parameters(name: str) -> tuple[str, ...]:
    """The keyword arguments the factory registered as ``name`` takes (the loop passes
    ``input_size`` to the models that have it)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return tuple(inspect.signature(_REGISTRY[name]).parameters)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Builds the model registered as ``name`` with keyword arguments such as ``num_classes`` and
    ``in_channels``.

    Raises:
      ValueError: for an unknown name (listing the valid ones) or an argument the model lacks.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for model {name!r}: {err}") from err
