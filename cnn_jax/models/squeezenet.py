"""torchvision's SqueezeNet 1.0 and 1.1 with its exact layout and initialisation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models.registry import register
from cnn_jax.nn.init import kaiming_uniform_fan_in, normal, zeros

Array = jax.Array

# torchvision's published minimum input sizes (weights meta "min_size").
_MIN_SIZE = {"1_0": 21, "1_1": 17}


def _conv(
    cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, name: str | None = None
) -> cnn.Conv2d:
    # torchvision: kaiming_uniform_ with its defaults (a=0, fan_in) and zero bias
    return cnn.Conv2d(
        cin,
        cout,
        k,
        stride=stride,
        padding=padding,
        weight_init=kaiming_uniform_fan_in,
        bias_init=zeros,
        name=name,
    )


class Fire(nn.Module):
    """SqueezeNet's Fire module: a 1×1 ``squeeze`` conv, then 1×1 (``expand1x1``) and 3×3
    (``expand3x3``) convs side by side, their ReLU outputs concatenated on channels."""

    inplanes: int
    squeeze_planes: int
    expand1x1_planes: int
    expand3x3_planes: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = cnn.ReLU()(_conv(self.inplanes, self.squeeze_planes, 1, name="squeeze")(x))
        s = self.squeeze_planes
        e1 = cnn.ReLU()(_conv(s, self.expand1x1_planes, 1, name="expand1x1")(x))
        e3 = cnn.ReLU()(_conv(s, self.expand3x3_planes, 3, padding=1, name="expand3x3")(x))
        return jnp.concatenate([e1, e3], axis=-1)  # torch.cat on channels


class SqueezeNet(nn.Module):
    """torchvision's ``SqueezeNet``: ``features`` (a strided conv, ceil-mode 3×3/2 max pools
    and Fire modules) and a ``classifier`` of Dropout, a 1×1 conv to ``num_classes``, ReLU and
    global average pooling — no Linear layer. ``version`` is ``'1_0'`` (7×7/2 stem, 96
    channels) or ``'1_1'`` (3×3/2 stem, 64 channels, pools earlier: 2.4x fewer operations).

    Initialised as torchvision does: convs kaiming-uniform (fan_in, gain sqrt 2) with zero
    bias, the final conv N(0, 0.01). Default input 224×224; at least 21×21 (1.0) / 17×17 (1.1).

    >>> model = SqueezeNet(version="1_1", num_classes=3)
    >>> x = jnp.zeros((2, 224, 224, 3))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape  # shapes only
    (2, 3)
    """

    version: str = "1_0"
    num_classes: int = 1000
    dropout: float = 0.5
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.version not in _MIN_SIZE:
            raise ValueError(f"Unsupported SqueezeNet version {self.version}: 1_0 or 1_1 expected")
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "SqueezeNet", self.in_channels, min_hw=_MIN_SIZE[self.version])
        pool = lambda: cnn.MaxPool2d(3, 2, ceil_mode=True)
        if self.version == "1_0":
            layers = (
                _conv(self.in_channels, 96, 7, stride=2),
                cnn.ReLU(),
                pool(),
                Fire(96, 16, 64, 64),
                Fire(128, 16, 64, 64),
                Fire(128, 32, 128, 128),
                pool(),
                Fire(256, 32, 128, 128),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                pool(),
                Fire(512, 64, 256, 256),
            )
        else:
            layers = (
                _conv(self.in_channels, 64, 3, stride=2),
                cnn.ReLU(),
                pool(),
                Fire(64, 16, 64, 64),
                Fire(128, 16, 64, 64),
                pool(),
                Fire(128, 32, 128, 128),
                Fire(256, 32, 128, 128),
                pool(),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                Fire(512, 64, 256, 256),
            )
        x = cnn.Sequential(layers, name="features")(x, train=train)
        final_conv = cnn.Conv2d(512, self.num_classes, 1, weight_init=normal(0.01), bias_init=zeros)
        x = cnn.Sequential(
            (cnn.Dropout(self.dropout), final_conv, cnn.ReLU(), cnn.AdaptiveAvgPool2d((1, 1))),
            name="classifier",
        )(x, train=train)
        return cnn.Flatten()(x)


@register("squeezenet1_1", family="squeezenet", torchvision=True, min_input_size=17)
def squeezenet1_1(
    num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5
) -> SqueezeNet:
    """torchvision's SqueezeNet 1.1 (1.24M parameters, 0.35 GMACs at 224×224)."""
    return SqueezeNet("1_1", num_classes, dropout, in_channels)


@register("squeezenet1_0", family="squeezenet", torchvision=True, min_input_size=21)
def squeezenet1_0(
    num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5
) -> SqueezeNet:
    """torchvision's SqueezeNet 1.0 (1.25M parameters, 0.82 GMACs at 224×224)."""
    return SqueezeNet("1_0", num_classes, dropout, in_channels)
