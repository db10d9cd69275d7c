"""Which registered models a test run checks, and at which input size.

The default test suite checks one model per family (the first registered, its smallest) at a
small input; ``pytest -m slow`` checks every model. Families whose smallest model is too big for
the default suite are checked there through miniatures.
"""

from __future__ import annotations

from cnn_jax.models import registry

SLOW_FAMILIES = frozenset({"alexnet", "vgg"})
"""Families whose smallest model has >= 57M parameters (a 4096-wide classifier)."""

GIANTS = frozenset({"regnet_x_32gf", "regnet_y_32gf", "regnet_y_128gf", "convnext_large"})
"""Models (108M to 645M parameters) too large for the full slow checks on a 24 GB, 2-core
machine: the float32-gradient check holds a float64 torch twin and a copy of its state, both
frameworks' float32 weights and gradients, and float64 copies of five gradients, about 80 bytes
per parameter (52 GB for regnet_y_128gf, 9 to 16 GB for the others). Their classes and code
paths run every check at the family's smaller widths; the giants themselves are checked for
parameter count and state_dict layout (every run) and for eval-mode logits against the
reference (``pytest -m slow``)."""


def default_models() -> set[str]:
    """The first model registered in each family, outside :data:`SLOW_FAMILIES`."""
    first: dict[str, str] = {}
    for spec in registry.specs():
        first.setdefault(spec.family, spec.name)
    return {name for family, name in first.items() if family not in SLOW_FAMILIES}


def input_size(name: str) -> int:
    """The square input a test feeds model ``name``: 64x64 for torchvision's families, 32x32
    for the course's networks, or what the model requires."""
    spec = registry.spec(name)
    return spec.test_input_size(64 if spec.torchvision else 32)
