"""EfficientNet B0-B7 and EfficientNetV2 S/M/L with torchvision's exact layout,
initialisation, normalisation settings and per-block stochastic depth."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import flax.linen as nn
import jax

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.functional.stochastic import check_stochastic_depth
from cnn_jax.models._utils import make_divisible
from cnn_jax.models.mobilenetv2 import CONV_INIT
from cnn_jax.models.registry import register
from cnn_jax.nn.init import uniform_bound, zeros

Array = jax.Array
ModuleFactory = Callable[..., nn.Module]


class _MBConvBlock(nn.Module):
    """What :class:`MBConv` and :class:`FusedMBConv` share: config, drop probability, norm."""

    cnf: MBConvConfig
    stochastic_depth_prob: float
    norm_layer: ModuleFactory

    def __post_init__(self) -> None:
        if not 1 <= self.cnf.stride <= 2:
            raise ValueError(f"illegal stride value {self.cnf.stride}: 1 or 2")
        super().__post_init__()

    @property
    def use_res_connect(self) -> bool:
        """Whether the input is added to the branch (and stochastic depth applies)."""
        return self.cnf.stride == 1 and self.cnf.input_channels == self.cnf.out_channels

    def example_input_shape(self) -> tuple[int, ...]:
        """A small NHWC input shape this block accepts (used to build abstract variables)."""
        return (1, 8, 8, self.cnf.input_channels)

    def _residual(self, layers: list[nn.Module], x: Array, train: bool) -> Array:
        """The ``block`` Sequential on ``x``; with a residual, through stochastic depth and plus
        ``x`` (torchvision: ``result = self.stochastic_depth(result); result += input``)."""
        result = cnn.Sequential(tuple(layers), name="block")(x, train=train)
        if self.use_res_connect:
            depth = cnn.StochasticDepth(self.stochastic_depth_prob, "row", name="stochastic_depth")
            result = depth(result, train=train) + x
        return result


class MBConv(_MBConvBlock):
    """torchvision's ``MBConv``: a ``block`` Sequential of a 1x1 expansion (left out when
    ``expand_ratio`` does not widen), a depthwise ``kernel`` conv carrying the stride,
    squeeze-excitation (SiLU inside, sigmoid gate, squeezing to a quarter of the *input*
    channels) and a linear 1x1 projection; SiLU activations. With a residual (stride 1, same
    channels) the branch passes ``StochasticDepth(stochastic_depth_prob, 'row')`` before the
    input is added.

    >>> cnf = MBConvConfig(6, 3, 1, 16, 16, 1)
    >>> block = MBConv(cnf, 0.1, cnn.BatchNorm2d)
    >>> variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 16)), train=False)
    >>> sorted(variables['params']['block'])
    ['0', '1', '2', '3']
    """

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        cnf = self.cnf
        expanded = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        conv = functools.partial(
            cnn.Conv2dNormActivation,
            norm_layer=self.norm_layer,
            activation_layer=cnn.SiLU,
            **CONV_INIT,
        )
        layers: list[nn.Module] = []
        if expanded != cnf.input_channels:
            layers.append(conv(cnf.input_channels, expanded, kernel_size=1))
        layers.append(
            conv(expanded, expanded, kernel_size=cnf.kernel, stride=cnf.stride, groups=expanded)
        )
        squeeze_channels = max(1, cnf.input_channels // 4)
        layers.append(
            cnn.SqueezeExcitation(expanded, squeeze_channels, activation=cnn.SiLU, **CONV_INIT)
        )
        layers.append(conv(expanded, cnf.out_channels, kernel_size=1, activation_layer=None))
        return self._residual(layers, x, train)


class FusedMBConv(_MBConvBlock):
    """torchvision's ``FusedMBConv`` (EfficientNetV2): a ``block`` Sequential of a full
    ``kernel`` conv carrying the stride and expanding, then a linear 1x1 projection — or, when
    ``expand_ratio`` does not widen, the one ``kernel`` conv with SiLU; stochastic depth on the
    residual branch as :class:`MBConv`.

    >>> cnf = FusedMBConvConfig(4, 3, 1, 16, 16, 1)
    >>> block = FusedMBConv(cnf, 0.1, cnn.BatchNorm2d)
    >>> variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 16)), train=False)
    >>> sorted(variables['params']['block'])
    ['0', '1']
    """

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        cnf = self.cnf
        expanded = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        conv = functools.partial(
            cnn.Conv2dNormActivation,
            norm_layer=self.norm_layer,
            activation_layer=cnn.SiLU,
            **CONV_INIT,
        )
        if expanded != cnf.input_channels:
            layers = [
                conv(cnf.input_channels, expanded, kernel_size=cnf.kernel, stride=cnf.stride),
                conv(expanded, cnf.out_channels, kernel_size=1, activation_layer=None),
            ]
        else:
            layers = [
                conv(
                    cnf.input_channels, cnf.out_channels, kernel_size=cnf.kernel, stride=cnf.stride
                )
            ]
        return self._residual(layers, x, train)


@dataclasses.dataclass(frozen=True)
class MBConvConfig:
    """One EfficientNet stage as torchvision's ``MBConvConfig``: ``num_layers`` blocks of
    ``block`` (the first with ``stride`` and ``input_channels``, the rest stride 1 from
    ``out_channels``). The fields are final; :meth:`make` scales the channels (multiples of
    8) and the depth (rounded up) by ``width_mult`` and ``depth_mult`` as torchvision's
    constructor does.

    >>> MBConvConfig.make(6, 3, 2, 16, 24, 2, width_mult=1.1, depth_mult=1.2)
    MBConvConfig(expand_ratio=6, kernel=3, stride=2, input_channels=16, out_channels=24, \
num_layers=3)
    """

    expand_ratio: float
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int

    block: ClassVar[ModuleFactory] = MBConv

    @classmethod
    def make(
        cls,
        expand_ratio: float,
        kernel: int,
        stride: int,
        input_channels: int,
        out_channels: int,
        num_layers: int,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
    ) -> MBConvConfig:
        """The config torchvision's ``MBConvConfig(...)`` builds from these arguments."""
        return cls(
            expand_ratio,
            kernel,
            stride,
            cls.adjust_channels(input_channels, width_mult),
            cls.adjust_channels(out_channels, width_mult),
            cls.adjust_depth(num_layers, depth_mult),
        )

    @staticmethod
    def adjust_channels(channels: float, width_mult: float, min_value: int | None = None) -> int:
        """``channels * width_mult`` rounded as torchvision does (multiples of 8)."""
        return make_divisible(channels * width_mult, 8, min_value)

    @staticmethod
    def adjust_depth(num_layers: int, depth_mult: float) -> int:
        """``ceil(num_layers * depth_mult)``."""
        return math.ceil(num_layers * depth_mult)


@dataclasses.dataclass(frozen=True)
class FusedMBConvConfig(MBConvConfig):
    """One EfficientNetV2 stage of :class:`FusedMBConv` blocks (torchvision's
    ``FusedMBConvConfig``: the fields as given, no scaling)."""

    block: ClassVar[ModuleFactory] = FusedMBConv


def efficientnet_config(
    arch: str, width_mult: float = 1.0, depth_mult: float = 1.0
) -> tuple[tuple[MBConvConfig, ...], int | None]:
    """torchvision's ``_efficientnet_conf``: the stage configs and ``last_channel`` (``None``:
    4x the last stage's channels) of ``'efficientnet_b*'`` (scaled by ``width_mult`` and
    ``depth_mult``) or ``'efficientnet_v2_s'``, ``'_m'``, ``'_l'``.

    >>> setting, last_channel = efficientnet_config('efficientnet_v2_s')
    >>> sum(cnf.num_layers for cnf in setting), last_channel
    (40, 1280)
    """
    if arch.startswith("efficientnet_b"):
        conf = functools.partial(MBConvConfig.make, width_mult=width_mult, depth_mult=depth_mult)
        setting = (
            conf(1, 3, 1, 32, 16, 1),
            conf(6, 3, 2, 16, 24, 2),
            conf(6, 5, 2, 24, 40, 2),
            conf(6, 3, 2, 40, 80, 3),
            conf(6, 5, 1, 80, 112, 3),
            conf(6, 5, 2, 112, 192, 4),
            conf(6, 3, 1, 192, 320, 1),
        )
        return setting, None
    fused, mb = FusedMBConvConfig, MBConvConfig.make
    if arch.startswith("efficientnet_v2_s"):
        setting = (
            fused(1, 3, 1, 24, 24, 2),
            fused(4, 3, 2, 24, 48, 4),
            fused(4, 3, 2, 48, 64, 4),
            mb(4, 3, 2, 64, 128, 6),
            mb(6, 3, 1, 128, 160, 9),
            mb(6, 3, 2, 160, 256, 15),
        )
    elif arch.startswith("efficientnet_v2_m"):
        setting = (
            fused(1, 3, 1, 24, 24, 3),
            fused(4, 3, 2, 24, 48, 5),
            fused(4, 3, 2, 48, 80, 5),
            mb(4, 3, 2, 80, 160, 7),
            mb(6, 3, 1, 160, 176, 14),
            mb(6, 3, 2, 176, 304, 18),
            mb(6, 3, 1, 304, 512, 5),
        )
    elif arch.startswith("efficientnet_v2_l"):
        setting = (
            fused(1, 3, 1, 32, 32, 4),
            fused(4, 3, 2, 32, 64, 7),
            fused(4, 3, 2, 64, 96, 7),
            mb(4, 3, 2, 96, 192, 10),
            mb(6, 3, 1, 192, 224, 19),
            mb(6, 3, 2, 224, 384, 25),
            mb(6, 3, 1, 384, 640, 7),
        )
    else:
        raise ValueError(
            f"Unsupported model type {arch}: 'efficientnet_b0'..'efficientnet_b7' or "
            "'efficientnet_v2_s'/'_m'/'_l'"
        )
    return setting, 1280


def stochastic_depth_probs(
    setting: Sequence[MBConvConfig], stochastic_depth_prob: float
) -> list[float]:
    """Each block's drop probability, in order: torchvision raises it linearly with the block's
    index over the whole network, ``stochastic_depth_prob * index / total`` (0 for the first).

    >>> stochastic_depth_probs(efficientnet_config('efficientnet_b0')[0], 0.2)[:3]
    [0.0, 0.0125, 0.025]
    """
    total = sum(cnf.num_layers for cnf in setting)
    return [stochastic_depth_prob * float(i) / total for i in range(total)]


class EfficientNet(nn.Module):
    """torchvision's ``EfficientNet`` (V1 and V2): ``features`` (a 3x3/2 stem with SiLU, one
    Sequential of blocks per stage config, a 1x1 conv to ``last_channel`` — by default 4x the
    last stage's channels — with SiLU), ``avgpool`` and ``classifier`` (Dropout, Linear).

    Block ``i`` of ``n`` drops its residual branch with probability ``stochastic_depth_prob *
    i / n`` in training (:func:`stochastic_depth_probs`; per sample, from the ``'dropout'``
    RNG stream). Initialised as torchvision does: convs kaiming-normal (fan_out) with zero
    bias, BatchNorm ones and zeros, the Linear U(±1/sqrt(num_classes)) with a zero bias.
    ``norm_layer`` defaults to ``BatchNorm2d`` (the factories pass each model's own settings).
    Default input 224x224; any size works.

    >>> setting, _ = efficientnet_config('efficientnet_b0', width_mult=0.25, depth_mult=0.25)
    >>> model = EfficientNet(setting, dropout=0.2, num_classes=10)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 10)
    """

    inverted_residual_setting: Sequence[MBConvConfig]
    dropout: float
    stochastic_depth_prob: float = 0.2
    num_classes: int = 1000
    norm_layer: ModuleFactory | None = None
    last_channel: int | None = None
    in_channels: int = 3

    def __post_init__(self) -> None:
        setting = self.inverted_residual_setting
        if not setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        if not all(isinstance(s, MBConvConfig) for s in setting):
            raise TypeError(
                "The inverted_residual_setting should be a sequence of MBConvConfig / "
                "FusedMBConvConfig (see efficientnet_config)"
            )
        # Each block's probability, checked before anything is initialised (torchvision finds
        # a bad one only when that block runs).
        for p in stochastic_depth_probs(setting, self.stochastic_depth_prob):
            check_stochastic_depth(p, "row")
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "EfficientNet", self.in_channels)
        norm = self.norm_layer or cnn.BatchNorm2d
        setting = self.inverted_residual_setting
        layers: list[nn.Module] = [
            cnn.Conv2dNormActivation(
                self.in_channels,
                setting[0].input_channels,
                kernel_size=3,
                stride=2,
                norm_layer=norm,
                activation_layer=cnn.SiLU,
                **CONV_INIT,
            )
        ]
        probs = iter(stochastic_depth_probs(setting, self.stochastic_depth_prob))
        for cnf in setting:
            stage = []
            for i in range(cnf.num_layers):
                # After the first block of a stage: its output channels in, stride 1.
                block_cnf = cnf if i == 0 else _later_block(cnf)
                stage.append(cnf.block(block_cnf, next(probs), norm))
            layers.append(cnn.Sequential(tuple(stage)))
        lastconv_input_channels = setting[-1].out_channels
        lastconv_output_channels = self.last_channel or 4 * lastconv_input_channels
        layers.append(
            cnn.Conv2dNormActivation(
                lastconv_input_channels,
                lastconv_output_channels,
                kernel_size=1,
                norm_layer=norm,
                activation_layer=cnn.SiLU,
                **CONV_INIT,
            )
        )
        x = cnn.Sequential(tuple(layers), name="features")(x, train=train)
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d(1, name="avgpool")(x))
        bound = 1.0 / math.sqrt(self.num_classes)  # torchvision: 1 / sqrt(out_features)
        return cnn.Sequential(
            (
                cnn.Dropout(self.dropout),
                cnn.Linear(
                    lastconv_output_channels,
                    self.num_classes,
                    weight_init=uniform_bound(bound),
                    bias_init=zeros,
                ),
            ),
            name="classifier",
        )(x, train=train)


def _later_block(cnf: MBConvConfig) -> MBConvConfig:
    """The config of a stage's second and later blocks (torchvision copies the stage's config
    and sets these two fields)."""
    return dataclasses.replace(cnf, input_channels=cnf.out_channels, stride=1)


# torchvision's per-model settings: (width_mult, depth_mult, dropout, BatchNorm2d arguments,
# parameter count) for B0-B7; B5-B7 use
# BatchNorm2d(eps=0.001, momentum=0.01), the V2 models BatchNorm2d(eps=0.001), B0-B4 the
# default BatchNorm2d.
_V1 = {
    "efficientnet_b0": (1.0, 1.0, 0.2, None, "5.3M"),
    "efficientnet_b1": (1.0, 1.1, 0.2, None, "7.8M"),
    "efficientnet_b2": (1.1, 1.2, 0.3, None, "9.1M"),
    "efficientnet_b3": (1.2, 1.4, 0.3, None, "12.2M"),
    "efficientnet_b4": (1.4, 1.8, 0.4, None, "19.3M"),
    "efficientnet_b5": (1.6, 2.2, 0.4, dict(eps=0.001, momentum=0.01), "30.4M"),
    "efficientnet_b6": (1.8, 2.6, 0.5, dict(eps=0.001, momentum=0.01), "43.0M"),
    "efficientnet_b7": (2.0, 3.1, 0.5, dict(eps=0.001, momentum=0.01), "66.3M"),
}
_V2 = {
    "efficientnet_v2_s": (0.2, "21.5M"),
    "efficientnet_v2_m": (0.3, "54.1M"),
    "efficientnet_v2_l": (0.4, "118.5M"),
}
_NO_RANDOM_LAYERS = {"dropout": 0.0, "stochastic_depth_prob": 0.0}


def _factory(name, setting, last_channel, default_dropout, norm_kwargs, doc):
    default_norm = functools.partial(cnn.BatchNorm2d, **norm_kwargs) if norm_kwargs else None

    def factory(
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = default_dropout,
        stochastic_depth_prob: float = 0.2,
        norm_layer: ModuleFactory | None = None,
    ) -> EfficientNet:
        return EfficientNet(
            setting,
            dropout,
            stochastic_depth_prob=stochastic_depth_prob,
            num_classes=num_classes,
            norm_layer=norm_layer or default_norm,
            last_channel=last_channel,
            in_channels=in_channels,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return factory


def _register_v1(name: str):
    width, depth, dropout, norm, size = _V1[name]
    setting, last = efficientnet_config(name, width, depth)
    doc = f"torchvision's {name} ({size} parameters for 1000 classes)."
    return register(name, family="efficientnet", torchvision=True, deterministic=_NO_RANDOM_LAYERS)(
        _factory(name, setting, last, dropout, norm, doc)
    )


def _register_v2(name: str):
    dropout, size = _V2[name]
    setting, last = efficientnet_config(name)
    doc = f"torchvision's {name} ({size} parameters for 1000 classes)."
    return register(
        name, family="efficientnet_v2", torchvision=True, deterministic=_NO_RANDOM_LAYERS
    )(_factory(name, setting, last, dropout, {"eps": 0.001}, doc))


# The smallest first: the default test suite checks the first model of each family.
efficientnet_b0 = _register_v1("efficientnet_b0")
efficientnet_b1 = _register_v1("efficientnet_b1")
efficientnet_b2 = _register_v1("efficientnet_b2")
efficientnet_b3 = _register_v1("efficientnet_b3")
efficientnet_b4 = _register_v1("efficientnet_b4")
efficientnet_b5 = _register_v1("efficientnet_b5")
efficientnet_b6 = _register_v1("efficientnet_b6")
efficientnet_b7 = _register_v1("efficientnet_b7")
efficientnet_v2_s = _register_v2("efficientnet_v2_s")
efficientnet_v2_m = _register_v2("efficientnet_v2_m")
efficientnet_v2_l = _register_v2("efficientnet_v2_l")
