"""MobileNetV3 (small and large) with torchvision's exact layout, initialisation and
configuration tables."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models._utils import make_divisible
from cnn_jax.models.mobilenetv2 import CONV_INIT
from cnn_jax.models.registry import register
from cnn_jax.nn.init import normal, zeros

Array = jax.Array
ModuleFactory = Callable[..., nn.Module]

# torchvision's default norm for MobileNetV3: BatchNorm2d(eps=0.001, momentum=0.01).
DEFAULT_NORM = functools.partial(cnn.BatchNorm2d, eps=0.001, momentum=0.01)


@dataclasses.dataclass(frozen=True)
class InvertedResidualConfig:
    """torchvision's ``InvertedResidualConfig`` with the channel counts already scaled: use
    :meth:`make` to scale them by ``width_mult`` as torchvision's constructor does.

    ``activation`` is ``'RE'`` (ReLU) or ``'HS'`` (Hardswish).
    """

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: str
    stride: int
    dilation: int

    @property
    def use_hs(self) -> bool:
        """Whether the block's activation is Hardswish (else ReLU)."""
        return self.activation == "HS"

    @staticmethod
    def adjust_channels(channels: float, width_mult: float) -> int:
        """``channels * width_mult`` rounded as torchvision does (multiples of 8)."""
        return make_divisible(channels * width_mult, 8)

    @classmethod
    def make(
        cls,
        input_channels: int,
        kernel: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
        dilation: int,
        width_mult: float,
    ) -> InvertedResidualConfig:
        """The config torchvision builds from these arguments (channels scaled)."""
        adjust = functools.partial(cls.adjust_channels, width_mult=width_mult)
        return cls(
            adjust(input_channels),
            kernel,
            adjust(expanded_channels),
            adjust(out_channels),
            use_se,
            activation,
            stride,
            dilation,
        )


def mobilenet_v3_config(
    arch: str, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False
) -> tuple[tuple[InvertedResidualConfig, ...], int]:
    """torchvision's ``_mobilenet_v3_conf``: the block configs and ``last_channel`` of
    ``'mobilenet_v3_large'`` or ``'mobilenet_v3_small'``. ``reduced_tail`` halves the channels
    of the last stage, ``dilated`` dilates it instead of striding (both as torchvision's, for
    detection and segmentation backbones).

    >>> setting, last_channel = mobilenet_v3_config('mobilenet_v3_small')
    >>> len(setting), last_channel
    (11, 1024)
    """
    r = 2 if reduced_tail else 1
    d = 2 if dilated else 1
    conf = functools.partial(InvertedResidualConfig.make, width_mult=width_mult)
    if arch == "mobilenet_v3_large":
        setting = (
            conf(16, 3, 16, 16, False, "RE", 1, 1),
            conf(16, 3, 64, 24, False, "RE", 2, 1),  # C1
            conf(24, 3, 72, 24, False, "RE", 1, 1),
            conf(24, 5, 72, 40, True, "RE", 2, 1),  # C2
            conf(40, 5, 120, 40, True, "RE", 1, 1),
            conf(40, 5, 120, 40, True, "RE", 1, 1),
            conf(40, 3, 240, 80, False, "HS", 2, 1),  # C3
            conf(80, 3, 200, 80, False, "HS", 1, 1),
            conf(80, 3, 184, 80, False, "HS", 1, 1),
            conf(80, 3, 184, 80, False, "HS", 1, 1),
            conf(80, 3, 480, 112, True, "HS", 1, 1),
            conf(112, 3, 672, 112, True, "HS", 1, 1),
            conf(112, 5, 672, 160 // r, True, "HS", 2, d),  # C4
            conf(160 // r, 5, 960 // r, 160 // r, True, "HS", 1, d),
            conf(160 // r, 5, 960 // r, 160 // r, True, "HS", 1, d),
        )
        last_channel = InvertedResidualConfig.adjust_channels(1280 // r, width_mult)  # C5
    elif arch == "mobilenet_v3_small":
        setting = (
            conf(16, 3, 16, 16, True, "RE", 2, 1),  # C1
            conf(16, 3, 72, 24, False, "RE", 2, 1),  # C2
            conf(24, 3, 88, 24, False, "RE", 1, 1),
            conf(24, 5, 96, 40, True, "HS", 2, 1),  # C3
            conf(40, 5, 240, 40, True, "HS", 1, 1),
            conf(40, 5, 240, 40, True, "HS", 1, 1),
            conf(40, 5, 120, 48, True, "HS", 1, 1),
            conf(48, 5, 144, 48, True, "HS", 1, 1),
            conf(48, 5, 288, 96 // r, True, "HS", 2, d),  # C4
            conf(96 // r, 5, 576 // r, 96 // r, True, "HS", 1, d),
            conf(96 // r, 5, 576 // r, 96 // r, True, "HS", 1, d),
        )
        last_channel = InvertedResidualConfig.adjust_channels(1024 // r, width_mult)  # C5
    else:
        raise ValueError(
            f"Unsupported model type {arch}: 'mobilenet_v3_large' or 'mobilenet_v3_small'"
        )
    return setting, last_channel


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV3 ``InvertedResidual``: a ``block`` Sequential of a 1x1
    expansion (left out when it would not widen), a depthwise ``kernel`` x ``kernel`` conv
    (stride, or dilation), squeeze-excitation with a Hardsigmoid gate when ``use_se``, and a
    linear 1x1 projection; ReLU or Hardswish activations; the input is added when the stride
    is 1 and the channel count unchanged.

    >>> cnf = InvertedResidualConfig(16, 3, 64, 16, True, 'HS', 1, 1)
    >>> block = InvertedResidual(cnf, DEFAULT_NORM)
    >>> variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 16)), train=False)
    >>> sorted(variables['params']['block'])
    ['0', '1', '2', '3']
    """

    cnf: InvertedResidualConfig
    norm_layer: ModuleFactory
    se_layer: ModuleFactory = functools.partial(
        cnn.SqueezeExcitation, scale_activation=cnn.Hardsigmoid, **CONV_INIT
    )

    def __post_init__(self) -> None:
        if not 1 <= self.cnf.stride <= 2:
            raise ValueError(f"illegal stride value {self.cnf.stride}: 1 or 2")
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """A small NHWC input shape this block accepts (used to build abstract variables)."""
        return (1, 8, 8, self.cnf.input_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        cnf = self.cnf
        activation = cnn.Hardswish if cnf.use_hs else cnn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(
                cnn.Conv2dNormActivation(
                    cnf.input_channels,
                    cnf.expanded_channels,
                    kernel_size=1,
                    norm_layer=self.norm_layer,
                    activation_layer=activation,
                    **CONV_INIT,
                )
            )
        layers.append(
            cnn.Conv2dNormActivation(
                cnf.expanded_channels,
                cnf.expanded_channels,
                kernel_size=cnf.kernel,
                stride=1 if cnf.dilation > 1 else cnf.stride,
                dilation=cnf.dilation,
                groups=cnf.expanded_channels,
                norm_layer=self.norm_layer,
                activation_layer=activation,
                **CONV_INIT,
            )
        )
        if cnf.use_se:
            squeeze_channels = make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(self.se_layer(cnf.expanded_channels, squeeze_channels))
        layers.append(
            cnn.Conv2dNormActivation(
                cnf.expanded_channels,
                cnf.out_channels,
                kernel_size=1,
                norm_layer=self.norm_layer,
                activation_layer=None,
                **CONV_INIT,
            )
        )
        result = cnn.Sequential(tuple(layers), name="block")(x, train=train)
        if cnf.stride == 1 and cnf.input_channels == cnf.out_channels:
            result = result + x
        return result


class MobileNetV3(nn.Module):
    """torchvision's ``MobileNetV3``: ``features`` (a 3x3/2 stem with Hardswish, one
    :class:`InvertedResidual` per config, a 1x1 conv to 6x the last block's channels with
    Hardswish), ``avgpool`` and ``classifier`` (Linear to ``last_channel``, Hardswish, Dropout,
    Linear).

    Initialised as torchvision does: convs kaiming-normal (fan_out) with zero bias, BatchNorm
    ones and zeros, Linear N(0, 0.01) with zero bias. The norm is torchvision's
    ``BatchNorm2d(eps=0.001, momentum=0.01)`` unless ``norm_layer`` is given. Build the configs
    with :func:`mobilenet_v3_config`. Default input 224x224; any size works.

    >>> setting, last = mobilenet_v3_config('mobilenet_v3_small', width_mult=0.5)
    >>> model = MobileNetV3(setting, last, num_classes=10)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 10)
    """

    inverted_residual_setting: Sequence[InvertedResidualConfig]
    last_channel: int
    num_classes: int = 1000
    block: ModuleFactory | None = None
    norm_layer: ModuleFactory | None = None
    dropout: float = 0.2
    in_channels: int = 3

    def __post_init__(self) -> None:
        setting = self.inverted_residual_setting
        if not setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        if not all(isinstance(s, InvertedResidualConfig) for s in setting):
            raise TypeError(
                "The inverted_residual_setting should be a sequence of InvertedResidualConfig "
                "(see mobilenet_v3_config)"
            )
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "MobileNetV3", self.in_channels)
        block = self.block or InvertedResidual
        norm = self.norm_layer or DEFAULT_NORM
        setting = self.inverted_residual_setting
        layers: list[nn.Module] = [
            cnn.Conv2dNormActivation(
                self.in_channels,
                setting[0].input_channels,
                kernel_size=3,
                stride=2,
                norm_layer=norm,
                activation_layer=cnn.Hardswish,
                **CONV_INIT,
            )
        ]
        layers += [block(cnf, norm) for cnf in setting]
        lastconv_input_channels = setting[-1].out_channels
        lastconv_output_channels = 6 * lastconv_input_channels
        layers.append(
            cnn.Conv2dNormActivation(
                lastconv_input_channels,
                lastconv_output_channels,
                kernel_size=1,
                norm_layer=norm,
                activation_layer=cnn.Hardswish,
                **CONV_INIT,
            )
        )
        x = cnn.Sequential(tuple(layers), name="features")(x, train=train)
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d(1, name="avgpool")(x))
        linear = lambda i, o: cnn.Linear(i, o, weight_init=normal(0.01), bias_init=zeros)
        return cnn.Sequential(
            (
                linear(lastconv_output_channels, self.last_channel),
                cnn.Hardswish(),
                cnn.Dropout(self.dropout),
                linear(self.last_channel, self.num_classes),
            ),
            name="classifier",
        )(x, train=train)


def _mobilenet_v3_factory(arch: str, doc: str):
    def factory(
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        reduced_tail: bool = False,
        dilated: bool = False,
        norm_layer: ModuleFactory | None = None,
        dropout: float = 0.2,
    ) -> MobileNetV3:
        setting, last_channel = mobilenet_v3_config(arch, width_mult, reduced_tail, dilated)
        return MobileNetV3(
            setting,
            last_channel,
            num_classes=num_classes,
            norm_layer=norm_layer,
            dropout=dropout,
            in_channels=in_channels,
        )

    factory.__name__ = factory.__qualname__ = arch
    factory.__doc__ = doc
    return factory


# The smallest first: the default test suite checks the first model of each family.
mobilenet_v3_small = register("mobilenet_v3_small", family="mobilenet_v3", torchvision=True)(
    _mobilenet_v3_factory(
        "mobilenet_v3_small", "torchvision's MobileNetV3-Small (2.5M parameters)."
    )
)
mobilenet_v3_large = register("mobilenet_v3_large", family="mobilenet_v3", torchvision=True)(
    _mobilenet_v3_factory(
        "mobilenet_v3_large", "torchvision's MobileNetV3-Large (5.5M parameters)."
    )
)
