"""Models by name: ``create('resnet18', num_classes=10)``, ``list_models()``, ``spec(name)``.

A model is one file in ``cnn_jax/models/`` and one :func:`register` call per name. What the rest
of the library needs to know about a model lives in its :class:`ModelSpec`: the loop reads the
input size it requires, the tests read its PyTorch reference (torchvision's own constructor of
the same name, or a restatement in :mod:`cnn_jax.testing.torch_models`), the input sizes it
takes, and the arguments that switch its random train-mode layers off.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

Factory = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What is known about a registered model besides its factory.

    Attributes:
      name: the registry name (torchvision's constructor name for torchvision's families).
      factory: builds the flax module from keyword arguments (``num_classes``, ``in_channels``
        and the family's own).
      family: models sharing an architecture (``'resnet'``, ``'efficientnet'``); the default test
        suite checks the first model registered in each family (register the smallest first),
        the others run under ``pytest -m slow``.
      torchvision: ``torchvision.models.<name>`` takes the same arguments (without
        ``in_channels``, which must be 3 there) and is the reference the tests compare against.
      input_size: the only square input size the model takes (LeNet-5: 32), or ``None``.
      min_input_size: the smallest square input it takes (inception_v3: 75).
      deterministic: keyword arguments that switch off the model's random train-mode layers
        (dropout, stochastic depth), so its train mode can be compared with torch's; by default
        ``{'dropout': 0.0}`` when the factory takes ``dropout``.
      small_input: keyword arguments the model needs in training at inputs below its default
        size, which the tests use (inception_v3's auxiliary head needs 299x299:
        ``{'aux_logits': False}``).
    """

    name: str
    factory: Factory
    family: str
    torchvision: bool = False
    input_size: int | None = None
    min_input_size: int = 1
    deterministic: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    small_input: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The keyword arguments the factory takes."""
        return tuple(inspect.signature(self.factory).parameters)

    def test_input_size(self, preferred: int = 64) -> int:
        """The square input size a test uses: ``input_size`` if fixed, else ``preferred`` or the
        minimum, whichever is larger."""
        return self.input_size or max(preferred, self.min_input_size)


_REGISTRY: dict[str, ModelSpec] = {}


def register(
    name: str,
    *,
    family: str | None = None,
    torchvision: bool = False,
    input_size: int | None = None,
    min_input_size: int = 1,
    deterministic: Mapping[str, Any] | None = None,
    small_input: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> Callable[[Factory], Factory]:
    """Decorator adding a model factory to the registry under ``name``; the keyword arguments
    fill its :class:`ModelSpec` (``family`` defaults to ``name``). ``replace=True`` redefines an
    existing name instead of raising.

    >>> @register("tiny_convnet", family="convnet", replace=True)
    ... def tiny_convnet(num_classes: int = 10, in_channels: int = 3):
    ...     return create("convnet", channels=(4,), num_classes=num_classes,
    ...                   in_channels=in_channels)
    >>> spec("tiny_convnet").family
    'convnet'
    """

    def add(factory: Factory) -> Factory:
        if name in _REGISTRY and not replace:
            raise ValueError(f"model {name!r} is already registered (replace=True to redefine)")
        takes_dropout = "dropout" in inspect.signature(factory).parameters
        _REGISTRY[name] = ModelSpec(
            name=name,
            factory=factory,
            family=family or name,
            torchvision=torchvision,
            input_size=input_size,
            min_input_size=min_input_size,
            deterministic=dict(
                deterministic
                if deterministic is not None
                else ({"dropout": 0.0} if takes_dropout else {})
            ),
            small_input=dict(small_input or {}),
        )
        return factory

    return add


def list_models() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_REGISTRY)


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name``.

    Raises:
      ValueError: for an unknown name (listing the valid ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name]


def specs() -> list[ModelSpec]:
    """Every registered model's spec, in registration order."""
    return list(_REGISTRY.values())


def parameters(name: str) -> tuple[str, ...]:
    """The keyword arguments the factory registered as ``name`` takes (the loop passes
    ``input_size`` to the models that have it)."""
    return spec(name).parameters


def create(name: str, **kwargs: Any) -> nn.Module:
    """Builds the model registered as ``name`` with keyword arguments such as ``num_classes`` and
    ``in_channels``.

    Raises:
      ValueError: for an unknown name (listing the valid ones) or an argument the model lacks.
    """
    factory = spec(name).factory
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for model {name!r}: {err}") from err
