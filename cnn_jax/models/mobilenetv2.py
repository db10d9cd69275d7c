"""MobileNetV2 with torchvision's exact layout, initialisation and channel rounding."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models._utils import make_divisible
from cnn_jax.models.registry import register
from cnn_jax.nn.init import kaiming_normal_fan_out, normal, zeros

Array = jax.Array
ModuleFactory = Callable[..., nn.Module]

# torchvision re-initialises every Conv2d after building: kaiming-normal (fan_out) weights, zero
# biases. The blocks' own convs take these instead of torch's defaults.
CONV_INIT = {"weight_init": kaiming_normal_fan_out, "bias_init": zeros}

# t (expansion), c (channels), n (blocks), s (stride of the first block): the paper's table.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 ``InvertedResidual``: a ``conv`` Sequential of a 1x1 expansion
    (``Conv2dNormActivation`` with ReLU6; left out when ``expand_ratio == 1``), a 3x3 depthwise
    ``Conv2dNormActivation`` with ReLU6 carrying the stride, a linear 1x1 projection and its
    norm; the input is added when the stride is 1 and the channel count unchanged.

    >>> block = InvertedResidual(8, 8, stride=1, expand_ratio=6)
    >>> variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 8)), train=False)
    >>> sorted(variables['params']['conv'])
    ['0', '1', '2', '3']
    """

    inp: int
    oup: int
    stride: int
    expand_ratio: float
    norm_layer: ModuleFactory | None = None

    def __post_init__(self) -> None:
        if self.stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {self.stride}")
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """A small NHWC input shape this block accepts (used to build abstract variables)."""
        return (1, 8, 8, self.inp)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        norm = self.norm_layer or cnn.BatchNorm2d
        hidden = round(self.inp * self.expand_ratio)
        layers: list[nn.Module] = []
        if self.expand_ratio != 1:
            layers.append(
                cnn.Conv2dNormActivation(
                    self.inp,
                    hidden,
                    kernel_size=1,
                    norm_layer=norm,
                    activation_layer=cnn.ReLU6,
                    **CONV_INIT,
                )
            )
        layers += [
            cnn.Conv2dNormActivation(
                hidden,
                hidden,
                stride=self.stride,
                groups=hidden,
                norm_layer=norm,
                activation_layer=cnn.ReLU6,
                **CONV_INIT,
            ),
            cnn.Conv2d(hidden, self.oup, 1, 1, 0, bias=False, weight_init=kaiming_normal_fan_out),
            norm(self.oup),
        ]
        out = cnn.Sequential(tuple(layers), name="conv")(x, train=train)
        if self.stride == 1 and self.inp == self.oup:
            return x + out
        return out


class MobileNetV2(nn.Module):
    """torchvision's ``MobileNetV2``: ``features`` (a 3x3/2 stem, the inverted residual blocks
    of ``inverted_residual_setting``, a 1x1 conv to ``last_channel``; BatchNorm and ReLU6
    throughout), global average pooling and ``classifier`` (Dropout, Linear).

    Channel counts are scaled by ``width_mult`` and rounded to multiples of ``round_nearest``
    (torchvision's ``_make_divisible``); the last conv never narrows below 1280. Initialised as
    torchvision does: convs kaiming-normal (fan_out) with zero bias, BatchNorm ones and zeros,
    Linear N(0, 0.01) with zero bias. ``block`` and ``norm_layer`` replace the block and the
    normalisation as torchvision's arguments of the same name do. Default input 224x224; any
    size works.

    >>> model = MobileNetV2(num_classes=10, width_mult=0.25)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 10)
    """

    num_classes: int = 1000
    width_mult: float = 1.0
    inverted_residual_setting: Sequence[Sequence[int]] | None = None
    round_nearest: int = 8
    block: ModuleFactory | None = None
    norm_layer: ModuleFactory | None = None
    dropout: float = 0.2
    in_channels: int = 3

    def __post_init__(self) -> None:
        setting = self.inverted_residual_setting
        if setting is not None and (len(setting) == 0 or any(len(row) != 4 for row in setting)):
            raise ValueError(
                "inverted_residual_setting should be non-empty and every row a 4-element list "
                f"(t, c, n, s), got {setting}"
            )
        super().__post_init__()

    @property
    def last_channel(self) -> int:
        """The width of the last conv and the classifier's input."""
        return make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "MobileNetV2", self.in_channels)
        block = self.block or InvertedResidual
        norm = self.norm_layer or cnn.BatchNorm2d
        setting = self.inverted_residual_setting or INVERTED_RESIDUAL_SETTING
        input_channel = make_divisible(32 * self.width_mult, self.round_nearest)
        features: list[nn.Module] = [
            cnn.Conv2dNormActivation(
                self.in_channels,
                input_channel,
                stride=2,
                norm_layer=norm,
                activation_layer=cnn.ReLU6,
                **CONV_INIT,
            )
        ]
        for t, c, n, s in setting:
            output_channel = make_divisible(c * self.width_mult, self.round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(
                    block(input_channel, output_channel, stride, expand_ratio=t, norm_layer=norm)
                )
                input_channel = output_channel
        features.append(
            cnn.Conv2dNormActivation(
                input_channel,
                self.last_channel,
                kernel_size=1,
                norm_layer=norm,
                activation_layer=cnn.ReLU6,
                **CONV_INIT,
            )
        )
        x = cnn.Sequential(tuple(features), name="features")(x, train=train)
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d((1, 1))(x))
        return cnn.Sequential(
            (
                cnn.Dropout(self.dropout),
                cnn.Linear(
                    self.last_channel, self.num_classes, weight_init=normal(0.01), bias_init=zeros
                ),
            ),
            name="classifier",
        )(x, train=train)


@register("mobilenet_v2", torchvision=True)
def mobilenet_v2(
    num_classes: int = 1000,
    in_channels: int = 3,
    width_mult: float = 1.0,
    inverted_residual_setting: Sequence[Sequence[int]] | None = None,
    round_nearest: int = 8,
    block: ModuleFactory | None = None,
    norm_layer: ModuleFactory | None = None,
    dropout: float = 0.2,
) -> MobileNetV2:
    """torchvision's MobileNetV2 (3.5M parameters for 1000 classes)."""
    return MobileNetV2(
        num_classes=num_classes,
        width_mult=width_mult,
        inverted_residual_setting=inverted_residual_setting,
        round_nearest=round_nearest,
        block=block,
        norm_layer=norm_layer,
        dropout=dropout,
        in_channels=in_channels,
    )
