"""Which registered models a test run checks, and at which input size.

The default test suite checks one model per family (the first registered, its smallest) at a
small input; ``pytest -m slow`` checks every model. Families whose smallest model is too big for
the default suite are checked there through miniatures.
"""

from __future__ import annotations

from cnn_jax.models import registry

SLOW_FAMILIES = frozenset({"alexnet", "vgg", "densenet", "googlenet", "inception"})
"""Families whose smallest model is too costly for the default suite: alexnet and vgg have
>= 57M parameters (a 4096-wide classifier); densenet121, googlenet and inception_v3 have 57 to
120 convolutions, whose XLA:CPU compilation (forward and backward) costs 5-8x resnet18's. The
default suite checks them through miniatures and their modules against torchvision's classes."""


def default_models() -> set[str]:
    """The first model registered in each family, outside :data:`SLOW_FAMILIES`."""
    first: dict[str, str] = {}
    for spec in registry.specs():
        first.setdefault(spec.family, spec.name)
    return {name for family, name in first.items() if family not in SLOW_FAMILIES}


def kwargs(name: str, *, deterministic: bool = False, **extra) -> dict:
    """The keyword arguments a test builds model ``name`` with: 5 classes, the model's
    ``small_input`` arguments (the tests' inputs are small) and, with ``deterministic``, those
    switching its random train-mode layers off; ``extra`` last."""
    spec = registry.spec(name)
    out = {"num_classes": 5, **spec.small_input}
    if deterministic:
        out.update(spec.deterministic)
    return {**out, **extra}


def input_size(name: str) -> int:
    """The square input a test feeds model ``name``: 64x64 for torchvision's families, 32x32
    for the course's networks, or what the model requires."""
    spec = registry.spec(name)
    return spec.test_input_size(64 if spec.torchvision else 32)
