"""ResNet-18/34/50 with torchvision's exact layout, initialisation and stride placement."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models.registry import register
from cnn_jax.nn.init import kaiming_normal_fan_out

Array = jax.Array


def _conv(cin: int, cout: int, k: int, stride: int = 1, name: str | None = None) -> cnn.Conv2d:
    # torchvision: bias-free convs, kaiming-normal (fan_out, ReLU)
    return cnn.Conv2d(
        cin,
        cout,
        k,
        stride=stride,
        padding=k // 2,
        bias=False,
        weight_init=kaiming_normal_fan_out,
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3×3 convs with BatchNorm and an identity (or projected) shortcut; expansion 1."""

    inplanes: int
    planes: int
    stride: int = 1
    expansion = 1

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        relu = cnn.ReLU(name="relu")  # one module called twice, as torchvision's self.relu
        out = _conv(self.inplanes, self.planes, 3, self.stride, name="conv1")(x)
        out = relu(cnn.BatchNorm2d(self.planes, name="bn1")(out, train=train))
        out = _conv(self.planes, self.planes, 3, name="conv2")(out)
        out = cnn.BatchNorm2d(self.planes, name="bn2")(out, train=train)
        return relu(out + _shortcut(self, x, train))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride, as torchvision's "ResNet v1.5"), 1×1 expand ×4."""

    inplanes: int
    planes: int
    stride: int = 1
    expansion = 4

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        width = self.planes
        relu = cnn.ReLU(name="relu")
        out = _conv(self.inplanes, width, 1, name="conv1")(x)
        out = relu(cnn.BatchNorm2d(width, name="bn1")(out, train=train))
        out = _conv(width, width, 3, self.stride, name="conv2")(out)
        out = relu(cnn.BatchNorm2d(width, name="bn2")(out, train=train))
        out = _conv(width, self.planes * 4, 1, name="conv3")(out)
        out = cnn.BatchNorm2d(self.planes * 4, name="bn3")(out, train=train)
        return relu(out + _shortcut(self, x, train))


def _shortcut(block, x: Array, train: bool) -> Array:
    cout = block.planes * block.expansion
    if block.stride == 1 and block.inplanes == cout:
        return x
    # Named 'downsample' with children '0' (conv) and '1' (bn), as torchvision's Sequential.
    down = cnn.Sequential(
        (_conv(block.inplanes, cout, 1, block.stride), cnn.BatchNorm2d(cout)),
        parent=block,
        name="downsample",
    )
    return down(x, train=train)


class ResNet(nn.Module):
    """torchvision's ``ResNet``: stem (7×7/2 conv, BN, ReLU, 3×3/2 max pool), four stages
    ``layer1``..``layer4`` of ``block``s (the first block of stages 2–4 halves the resolution),
    global average pooling and ``fc``. ``width`` (64) scales every stage, for miniatures.
    Default input 224×224; anything from 32×32 works.

    >>> model = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), width=8, num_classes=3)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 3)
    """

    block: type[BasicBlock] | type[Bottleneck] = BasicBlock
    layers: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 1000
    in_channels: int = 3
    width: int = 64

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "ResNet", self.in_channels)
        w = self.width
        x = _conv(self.in_channels, w, 7, 2, name="conv1")(x)
        x = cnn.ReLU(name="relu")(cnn.BatchNorm2d(w, name="bn1")(x, train=train))
        x = cnn.MaxPool2d(3, 2, 1, name="maxpool")(x)
        inplanes = w
        for stage, blocks in enumerate(self.layers):
            planes = w * 2**stage
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for i in range(blocks):
                stage_blocks.append(self.block(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * self.block.expansion
            x = cnn.Sequential(tuple(stage_blocks), name=f"layer{stage + 1}")(x, train=train)
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d((1, 1), name="avgpool")(x))
        return cnn.Linear(inplanes, self.num_classes, name="fc")(x)


@register("resnet18", family="resnet", torchvision=True)
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """torchvision's ResNet-18 (11.7M parameters for 1000 classes)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register("resnet34", family="resnet", torchvision=True)
def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """torchvision's ResNet-34 (21.8M parameters)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


@register("resnet50", family="resnet", torchvision=True)
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """torchvision's ResNet-50 (25.6M parameters), stride on the 3×3 conv of each Bottleneck."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
