"""NNX twins of the linen models: same layouts, variable names, initialisation and maths.

``create(name, rngs=nnx.Rngs(0), **kw)`` builds ``lenet5``, ``cifar_cnn`` or ``resnet18``: the
networks the functional-vs-stateful comparison (``experiments/functional_vs_stateful.py``, the
notebook of that name) trains in each style. A torch ``state_dict`` loads with
:func:`cnn_jax.interop.from_torch`, and so do the linen model's variables:
``from_torch(nnx_model, to_state_dict(linen_model, variables))``.

>>> from cnn_jax import nnx as cnnx
>>> model = cnnx.create("lenet5", rngs=nnx.Rngs(0))
>>> model(jnp.zeros((2, 32, 32, 1))).shape
(2, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

from cnn_jax._utils import check_model_input
from cnn_jax.nn.init import kaiming_normal_fan_out
from cnn_jax.nnx.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Sequential,
    Tanh,
)

Array = jax.Array


class LeNet5(nnx.Module):
    """LeNet-5 (tanh, average pooling), 32×32 input; layout of :class:`cnn_jax.models.LeNet5`."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, rngs: nnx.Rngs):
        self.in_channels = in_channels
        self.features = Sequential(
            Conv2d(in_channels, 6, 5, rngs=rngs),
            Tanh(),
            AvgPool2d(2),
            Conv2d(6, 16, 5, rngs=rngs),
            Tanh(),
            AvgPool2d(2),
            Conv2d(16, 120, 5, rngs=rngs),
            Tanh(),
        )
        self.flatten = Flatten()
        self.classifier = Sequential(
            Linear(120, 84, rngs=rngs), Tanh(), Linear(84, num_classes, rngs=rngs)
        )

    def __call__(self, x: Array) -> Array:
        check_model_input(x, "LeNet-5", self.in_channels, exact_hw=(32, 32))
        return self.classifier(self.flatten(self.features(x)))


class CifarCNN(nnx.Module):
    """The Keras CIFAR network with global average pooling; layout of
    :class:`cnn_jax.models.CifarCNN`."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5, *, rngs: nnx.Rngs
    ):
        self.in_channels = in_channels
        self.conv1 = Conv2d(in_channels, 32, 3, padding="same", rngs=rngs)
        self.conv2 = Conv2d(32, 64, 3, padding="same", rngs=rngs)
        self.conv3 = Conv2d(64, 128, 3, padding="same", rngs=rngs)
        self.pool = MaxPool2d(2)
        self.gap = AdaptiveAvgPool2d(1)
        self.dropout = Dropout(dropout, rngs=rngs)
        self.fc = Linear(128, num_classes, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        check_model_input(x, "CifarCNN", self.in_channels, min_hw=4)
        x = self.pool(jax.nn.relu(self.conv1(x)))
        x = self.pool(jax.nn.relu(self.conv2(x)))
        x = jax.nn.relu(self.conv3(x))
        x = Flatten()(self.gap(x))
        return self.fc(self.dropout(x))


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> Conv2d:
    # torchvision: bias-free convs, kaiming-normal (fan_out, ReLU)
    return Conv2d(
        cin, cout, k, stride, k // 2, bias=False, weight_init=kaiming_normal_fan_out, rngs=rngs
    )


class BasicBlock(nnx.Module):
    """Two 3×3 convs with BatchNorm and an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = _conv(inplanes, planes, 3, stride, rngs)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, 1, rngs)
        self.bn2 = BatchNorm2d(planes)
        project = stride != 1 or inplanes != planes
        self.downsample = (
            Sequential(_conv(inplanes, planes, 1, stride, rngs), BatchNorm2d(planes))
            if project
            else None
        )

    def __call__(self, x: Array) -> Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(out + shortcut)


class ResNet(nnx.Module):
    """torchvision's ResNet with basic blocks; layout of :class:`cnn_jax.models.ResNet`."""

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        *,
        rngs: nnx.Rngs,
    ):
        self.in_channels = in_channels
        self.conv1 = _conv(in_channels, width, 7, 2, rngs)
        self.bn1 = BatchNorm2d(width)
        self.maxpool = MaxPool2d(3, 2, 1)
        inplanes = width
        for stage, blocks in enumerate(layers):
            planes = width * 2**stage
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for i in range(blocks):
                stage_blocks.append(
                    BasicBlock(inplanes, planes, stride if i == 0 else 1, rngs=rngs)
                )
                inplanes = planes
            setattr(self, f"layer{stage + 1}", Sequential(*stage_blocks))
        self.num_stages = len(layers)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(inplanes, num_classes, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        check_model_input(x, "ResNet", self.in_channels)
        x = self.maxpool(jax.nn.relu(self.bn1(self.conv1(x))))
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return self.fc(Flatten()(self.avgpool(x)))


_MODELS: dict[str, Callable[..., nnx.Module]] = {
    "lenet5": LeNet5,
    "cifar_cnn": CifarCNN,
    "resnet18": lambda num_classes=1000, in_channels=3, *, rngs: ResNet(
        (2, 2, 2, 2), num_classes, in_channels, rngs=rngs
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(_MODELS)


def create(name: str, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """The NNX model ``name`` (``num_classes``, ``in_channels``, ... as the linen model).

    Raises:
      ValueError: an unknown name, listing the available ones.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown NNX model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name](rngs=rngs, **kwargs)


__all__ = ["BasicBlock", "CifarCNN", "LeNet5", "ResNet", "create", "list_models"]
