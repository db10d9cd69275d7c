"""Which registered models a test run checks, and at which input size.

The default test suite checks one model per family (the first registered, its smallest) at a
small input; ``pytest -m slow`` checks every model. Families whose smallest model is too big for
the default suite are checked there through miniatures.
"""

from __future__ import annotations

import os

from cnn_jax.models import registry

SLOW_FAMILIES = frozenset(
    {
        "alexnet",
        "vgg",
        "densenet",
        "googlenet",
        "inception",
        "mobilenet_v2",
        "mobilenet_v3",
        "mnasnet",
        "efficientnet",
        "efficientnet_v2",
        "regnet_x",
        "regnet_y",
        "convnext",
        "shufflenet_v2",
    }
)
"""Families whose smallest model is too costly for the default suite: alexnet and vgg have
>= 57M parameters (a 4096-wide classifier); the others have 50 to 170 convolutions (and
squeeze-excitation, LayerNorm, channel-shuffle layers), whose XLA:CPU compilation forward and
backward costs several times resnet18's. The default suite checks them through miniatures of
their classes (few blocks of each kind) against torchvision's classes, and abstract traces of
the full models (layout, dropout and normalisation settings); ``pytest -m slow`` checks the
full models."""

GIANTS = frozenset({"regnet_x_32gf", "regnet_y_32gf", "regnet_y_128gf", "convnext_large"})
"""Models of 108M to 645M parameters. The checks against a float64 torch twin (train-mode
parity, float32 gradients) hold the twin and a copy of its state, both frameworks' float32
weights and gradients and float64 copies of five gradients: about 80 bytes per parameter, 9 to
52 GB. They run on a machine with :data:`GIANT_MEMORY_GB` of memory; elsewhere their classes get
every check at the family's smaller widths, and the giants themselves their parameter count and
state_dict layout and (``pytest -m slow``) their eval-mode logits against the reference."""

COURSE_MODELS = frozenset(
    {
        "lenet5",
        "simple_cnn",
        "cifar_cnn",
        "mlp",
        "convnet",
        "alexnet",
        "vgg11",
        "vgg11_bn",
        "vgg16",
        "vgg16_bn",
        "resnet18",
        "resnet34",
        "resnet50",
    }
)
"""The models the course texts train. Their ``slow`` checks are CI's second step; every other
model's ``slow`` checks are also marked ``zoo`` (every width of every torchvision family: hours on
2 cores), which ``pytest -m zoo`` runs."""

GIANT_MEMORY_GB = 64
"""Physical memory the float64-twin checks of :data:`GIANTS` need (regnet_y_128gf: ~52 GB)."""

TWIN_BYTES_PER_PARAMETER = 80
"""What a float64-twin check holds per parameter (see :data:`GIANTS`)."""

BIGMEM_GB = 4.0
"""A check that needs more memory than this at its peak is marked ``bigmem``: two of them side by
side (a VGG's float64-twin check needs ~11 GB by :func:`float64_twin_gb`) would not fit a 24 GB
machine, so CI runs them one at a time (``pytest -m bigmem`` without ``-n``)."""


def float64_twin_gb(name: str) -> float:
    """About the memory (GB) a float64-twin check of model ``name`` needs: its parameter count as
    torchvision publishes it with its weights, times :data:`TWIN_BYTES_PER_PARAMETER`; 0 for a
    model torchvision does not publish (the course's small networks) or without torchvision."""
    from cnn_jax.testing.torch_models import torchvision_models

    if not registry.spec(name).torchvision or (tv := torchvision_models()) is None:
        return 0.0
    params = tv.get_model_weights(name).DEFAULT.meta["num_params"]
    return params * TWIN_BYTES_PER_PARAMETER / 1e9


def memory_gb() -> float:
    """This machine's physical memory in GB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def cases(names=None, *, every_family: bool = False, float64_twin: bool = False) -> list:
    """pytest parameters, one per model of ``names`` (every registered model by default), in
    registration order: those outside :func:`default_models` marked ``slow`` (with
    ``every_family``, a check that costs no computation, those outside
    :func:`default_models` ``(every_family=True)``); with ``float64_twin`` (a check that holds a
    float64 torch twin), the :data:`GIANTS` skipped on a machine with less than
    :data:`GIANT_MEMORY_GB` of memory and those needing more than :data:`BIGMEM_GB`
    (:func:`float64_twin_gb`) marked ``bigmem``."""
    import pytest

    default = default_models(every_family=every_family)
    too_big = pytest.mark.skipif(
        memory_gb() < GIANT_MEMORY_GB,
        reason=f"needs ~{GIANT_MEMORY_GB} GB with its float64 torch twin, this machine has "
        f"{memory_gb():.0f} GB (zoo.GIANTS); its classes are checked at the family's smaller "
        "widths",
    )
    wanted = None if names is None else set(names)
    out = []
    for spec in registry.specs():
        if wanted is not None and spec.name not in wanted:
            continue
        marks = slow_marks(spec.name, default)
        if float64_twin and spec.name in GIANTS:
            marks.append(too_big)
        if float64_twin and float64_twin_gb(spec.name) > BIGMEM_GB:
            marks.append(pytest.mark.bigmem)
        out.append(pytest.param(spec.name, marks=marks, id=spec.name))
    return out


def slow_marks(name: str, default) -> list:
    """The marks of a check of model ``name`` that runs by default for the models in
    ``default``: none for those, ``slow`` for the other :data:`COURSE_MODELS`, ``slow`` and
    ``zoo`` for the rest."""
    import pytest

    if name in default:
        return []
    if name in COURSE_MODELS:
        return [pytest.mark.slow]
    return [pytest.mark.slow, pytest.mark.zoo]


def default_models(every_family: bool = False) -> set[str]:
    """The first model registered in each family, outside :data:`SLOW_FAMILIES` unless
    ``every_family``."""
    first: dict[str, str] = {}
    for spec in registry.specs():
        first.setdefault(spec.family, spec.name)
    return {name for family, name in first.items() if every_family or family not in SLOW_FAMILIES}


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
