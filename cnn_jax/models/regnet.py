"""RegNetX and RegNetY with torchvision's layout, per-block widths and initialisation.

torchvision derives every network from four numbers (``depth``, ``w_0``, ``w_a``, ``w_m``) plus
a group width and, for RegNetY, a squeeze-excitation ratio: :meth:`BlockParams.from_init_params`
repeats that derivation (quantised widths, stages, group-compatible widths), so each named model
has torchvision's stage widths and depths, and its ``state_dict`` keys
(``trunk_output.block1.block1-0.f.b.0.weight``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models.registry import register
from cnn_jax.nn.init import kaiming_normal_fan_out, normal, zeros

Array = jax.Array
ModuleFactory = Callable[..., nn.Module]


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: ``v`` rounded to the nearest multiple of ``divisor``
    (at least ``min_value``, default ``divisor``), one step up if that lost more than 10%."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclasses.dataclass(frozen=True)
class BlockParams:
    """torchvision's ``BlockParams``: per stage, the block count (``depths``), output width,
    group width, bottleneck multiplier and stride; ``se_ratio`` (RegNetY) adds
    squeeze-excitation to every block.

    >>> p = BlockParams.from_init_params(depth=22, w_0=24, w_a=24.48, w_m=2.54, group_width=16)
    >>> p.depths, p.widths
    ((1, 2, 7, 12), (32, 64, 160, 400))
    """

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    group_widths: tuple[int, ...]
    bottleneck_multipliers: tuple[float, ...]
    strides: tuple[int, ...]
    se_ratio: float | None = None

    @classmethod
    def from_init_params(
        cls,
        depth: int,
        w_0: int,
        w_a: float,
        w_m: float,
        group_width: int,
        bottleneck_multiplier: float = 1.0,
        se_ratio: float | None = None,
    ) -> BlockParams:
        """torchvision's derivation: block ``i`` has the continuous width ``w_0 + i * w_a``,
        quantised in log space with step ``w_m`` and rounded to a multiple of 8; runs of equal
        widths form the stages (stride 2 each), whose widths are then made divisible by the
        group width.

        Raises:
          ValueError: torchvision's "Invalid RegNet settings" (``w_a < 0``, ``w_0 <= 0``,
            ``w_m <= 1`` or ``w_0`` not a multiple of 8).
        """
        quant, stride = 8, 2
        if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % 8 != 0:
            raise ValueError(
                f"Invalid RegNet settings: need w_a >= 0, w_0 > 0 and a multiple of 8, w_m > 1; "
                f"got w_a={w_a}, w_0={w_0}, w_m={w_m}"
            )
        # In float32 as torchvision's torch code computes it (its default dtype), so that a
        # capacity near a rounding boundary rounds the same way.
        f32 = np.float32
        widths_cont = np.arange(depth).astype(f32) * f32(w_a) + f32(w_0)
        block_capacity = np.round(np.log(widths_cont / f32(w_0)) / f32(math.log(w_m)))
        block_widths = (
            (np.round(f32(w_0) * np.power(f32(w_m), block_capacity) / f32(quant)) * quant)
            .astype(np.int64)
            .tolist()
        )
        num_stages = len(set(block_widths))
        # A stage starts where the width changes (and a sentinel 0 closes the last one).
        starts = [
            i
            for i, (w, wp) in enumerate(zip([*block_widths, 0], [0, *block_widths], strict=True))
            if w != wp
        ]
        stage_widths = [block_widths[i] for i in starts[:-1]]
        stage_depths = [b - a for a, b in itertools.pairwise(starts)]
        multipliers = [bottleneck_multiplier] * num_stages
        group_widths = [group_width] * num_stages
        # torchvision's _adjust_widths_groups_compatibilty.
        bottleneck = [int(w * b) for w, b in zip(stage_widths, multipliers, strict=True)]
        group_widths = [min(g, w) for g, w in zip(group_widths, bottleneck, strict=True)]
        bottleneck = [_make_divisible(w, g) for w, g in zip(bottleneck, group_widths, strict=True)]
        stage_widths = [int(w / b) for w, b in zip(bottleneck, multipliers, strict=True)]
        return cls(
            depths=tuple(stage_depths),
            widths=tuple(stage_widths),
            group_widths=tuple(group_widths),
            bottleneck_multipliers=tuple(multipliers),
            strides=(stride,) * num_stages,
            se_ratio=se_ratio,
        )


class BottleneckTransform(nn.Module):
    """torchvision's ``BottleneckTransform``: 1x1 conv ``a``, grouped 3x3 conv ``b`` (carrying
    the stride; groups = bottleneck width // group width), optional squeeze-excitation ``se``
    (squeeze width ``round(se_ratio * width_in)``), 1x1 conv ``c`` without activation; each conv
    followed by ``norm_layer``."""

    width_in: int
    width_out: int
    stride: int
    norm_layer: ModuleFactory
    activation_layer: ModuleFactory
    group_width: int
    bottleneck_multiplier: float
    se_ratio: float | None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        w_b = round(self.width_out * self.bottleneck_multiplier)
        g = w_b // self.group_width
        block = functools.partial(
            cnn.Conv2dNormActivation,
            norm_layer=self.norm_layer,
            weight_init=kaiming_normal_fan_out,
        )
        x = block(self.width_in, w_b, 1, activation_layer=self.activation_layer, name="a")(
            x, train=train
        )
        x = block(
            w_b, w_b, 3, self.stride, groups=g, activation_layer=self.activation_layer, name="b"
        )(x, train=train)
        if self.se_ratio:
            # torchvision's init loop redraws every conv weight, the SE's too; their biases keep
            # torch's default.
            x = cnn.SqueezeExcitation(
                w_b,
                round(self.se_ratio * self.width_in),
                activation=self.activation_layer,
                weight_init=kaiming_normal_fan_out,
                name="se",
            )(x)
        return block(w_b, self.width_out, 1, activation_layer=None, name="c")(x, train=train)


class ResBottleneckBlock(nn.Module):
    """torchvision's ``ResBottleneckBlock``: ``activation(proj(x) + f(x))``, with ``proj`` (1x1
    conv + norm) only where the width or the resolution changes, else ``x + f(x)``."""

    width_in: int
    width_out: int
    stride: int
    norm_layer: ModuleFactory
    activation_layer: ModuleFactory
    group_width: int = 1
    bottleneck_multiplier: float = 1.0
    se_ratio: float | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        f = BottleneckTransform(
            self.width_in,
            self.width_out,
            self.stride,
            self.norm_layer,
            self.activation_layer,
            self.group_width,
            self.bottleneck_multiplier,
            self.se_ratio,
            name="f",
        )
        if self.width_in != self.width_out or self.stride != 1:
            proj = cnn.Conv2dNormActivation(
                self.width_in,
                self.width_out,
                1,
                self.stride,
                norm_layer=self.norm_layer,
                activation_layer=None,
                weight_init=kaiming_normal_fan_out,
                name="proj",
            )
            x = proj(x, train=train) + f(x, train=train)
        else:
            x = x + f(x, train=train)
        return self.activation_layer(inplace=True, name="activation")(x)


class AnyStage(nn.Module):
    """torchvision's ``AnyStage``: ``depth`` blocks named ``block{stage_index}-{i}``, the first
    taking the stride and the width change."""

    width_in: int
    width_out: int
    stride: int
    depth: int
    norm_layer: ModuleFactory
    activation_layer: ModuleFactory
    group_width: int
    bottleneck_multiplier: float
    se_ratio: float | None = None
    stage_index: int = 0

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        for i in range(self.depth):
            x = ResBottleneckBlock(
                self.width_in if i == 0 else self.width_out,
                self.width_out,
                self.stride if i == 0 else 1,
                self.norm_layer,
                self.activation_layer,
                self.group_width,
                self.bottleneck_multiplier,
                self.se_ratio,
                name=f"block{self.stage_index}-{i}",
            )(x, train=train)
        return x


class _Trunk(nn.Module):
    """torchvision's ``trunk_output``: the stages, named ``block1``, ``block2``, ..."""

    block_params: BlockParams
    width_in: int
    norm_layer: ModuleFactory
    activation_layer: ModuleFactory

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        p = self.block_params
        width = self.width_in
        stages = zip(
            p.widths, p.strides, p.depths, p.group_widths, p.bottleneck_multipliers, strict=True
        )
        for i, (width_out, stride, depth, group_width, multiplier) in enumerate(stages):
            x = AnyStage(
                width,
                width_out,
                stride,
                depth,
                self.norm_layer,
                self.activation_layer,
                group_width,
                multiplier,
                p.se_ratio,
                stage_index=i + 1,
                name=f"block{i + 1}",
            )(x, train=train)
            width = width_out
        return x


class RegNet(nn.Module):
    """torchvision's ``RegNet``: ``stem`` (3x3/2 conv, BN, ReLU), ``trunk_output`` (the stages
    of ``block_params``, each halving the resolution), global average pooling and ``fc``.

    Initialised as torchvision does: convolution weights N(0, 2 / fan_out) with fan_out =
    out_channels * kernel area (the squeeze-excitation convs' biases keep torch's default),
    BatchNorm ones/zeros, ``fc`` N(0, 0.01) with zero bias. BatchNorm has torchvision's
    ``eps=1e-5, momentum=0.1``. Default input 224x224; any size works (5 stride-2 stages).

    >>> params = BlockParams.from_init_params(depth=2, w_0=8, w_a=8.0, w_m=2.0, group_width=4)
    >>> model = RegNet(params, num_classes=3, stem_width=8)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 3)
    """

    block_params: BlockParams
    num_classes: int = 1000
    stem_width: int = 32
    norm_layer: ModuleFactory = functools.partial(cnn.BatchNorm2d, eps=1e-5, momentum=0.1)
    activation: ModuleFactory = cnn.ReLU
    in_channels: int = 3

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "RegNet", self.in_channels)
        x = cnn.Conv2dNormActivation(
            self.in_channels,
            self.stem_width,
            3,
            2,
            norm_layer=self.norm_layer,
            activation_layer=self.activation,
            weight_init=kaiming_normal_fan_out,
            name="stem",
        )(x, train=train)
        x = _Trunk(
            self.block_params,
            self.stem_width,
            self.norm_layer,
            self.activation,
            name="trunk_output",
        )(x, train=train)
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d((1, 1), name="avgpool")(x))
        return cnn.Linear(
            x.shape[-1], self.num_classes, weight_init=normal(0.01), bias_init=zeros, name="fc"
        )(x)


# torchvision's settings: (depth, w_0, w_a, w_m, group_width); RegNetY adds se_ratio=0.25.
_SETTINGS: dict[str, tuple[int, int, float, float, int]] = {
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16),
    "regnet_x_800mf": (16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24),
    "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120),
    "regnet_x_16gf": (22, 216, 55.59, 2.1, 128),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168),
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8),
    "regnet_y_800mf": (14, 56, 38.84, 2.4, 16),
    "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24),
    "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24),
    "regnet_y_8gf": (17, 192, 76.82, 2.19, 56),
    "regnet_y_16gf": (18, 200, 106.23, 2.48, 112),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232),
    "regnet_y_128gf": (27, 456, 160.83, 2.52, 264),
}

# torchvision's parameter counts for 1000 classes, for the docstrings.
_PARAMS = {
    "regnet_x_400mf": "5.5M",
    "regnet_x_800mf": "7.3M",
    "regnet_x_1_6gf": "9.2M",
    "regnet_x_3_2gf": "15.3M",
    "regnet_x_8gf": "39.6M",
    "regnet_x_16gf": "54.3M",
    "regnet_x_32gf": "107.8M",
    "regnet_y_400mf": "4.3M",
    "regnet_y_800mf": "6.4M",
    "regnet_y_1_6gf": "11.2M",
    "regnet_y_3_2gf": "19.4M",
    "regnet_y_8gf": "39.4M",
    "regnet_y_16gf": "83.6M",
    "regnet_y_32gf": "145.0M",
    "regnet_y_128gf": "644.8M",
}


def block_params(name: str) -> BlockParams:
    """The :class:`BlockParams` torchvision derives for the named model (``'regnet_y_8gf'``).

    >>> block_params('regnet_y_400mf').widths
    (48, 104, 208, 440)
    """
    if name not in _SETTINGS:
        raise ValueError(f"unknown RegNet {name!r}; available: {', '.join(_SETTINGS)}")
    depth, w_0, w_a, w_m, group_width = _SETTINGS[name]
    se_ratio = 0.25 if name.startswith("regnet_y") else None
    return BlockParams.from_init_params(depth, w_0, w_a, w_m, group_width, se_ratio=se_ratio)


def _regnet_factory(name: str):
    def factory(num_classes: int = 1000, in_channels: int = 3) -> RegNet:
        return RegNet(block_params(name), num_classes=num_classes, in_channels=in_channels)

    kind = "RegNetY (with squeeze-excitation)" if name.startswith("regnet_y") else "RegNetX"
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"torchvision's {name}: {kind}, {_PARAMS[name]} parameters."
    return register(name, family=name[:8], torchvision=True)(factory)


# The smallest of each family first: the default test suite checks the first one registered.
regnet_x_400mf = _regnet_factory("regnet_x_400mf")
regnet_y_400mf = _regnet_factory("regnet_y_400mf")
regnet_x_800mf = _regnet_factory("regnet_x_800mf")
regnet_x_1_6gf = _regnet_factory("regnet_x_1_6gf")
regnet_x_3_2gf = _regnet_factory("regnet_x_3_2gf")
regnet_x_8gf = _regnet_factory("regnet_x_8gf")
regnet_x_16gf = _regnet_factory("regnet_x_16gf")
regnet_x_32gf = _regnet_factory("regnet_x_32gf")
regnet_y_800mf = _regnet_factory("regnet_y_800mf")
regnet_y_1_6gf = _regnet_factory("regnet_y_1_6gf")
regnet_y_3_2gf = _regnet_factory("regnet_y_3_2gf")
regnet_y_8gf = _regnet_factory("regnet_y_8gf")
regnet_y_16gf = _regnet_factory("regnet_y_16gf")
regnet_y_32gf = _regnet_factory("regnet_y_32gf")
regnet_y_128gf = _regnet_factory("regnet_y_128gf")
