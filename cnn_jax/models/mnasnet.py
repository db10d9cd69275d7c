"""MNASNet (B1) with torchvision's exact layout, initialisation and BatchNorm momentum."""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models.registry import register
from cnn_jax.nn.init import kaiming_normal_fan_out, uniform_bound, zeros

Array = jax.Array

# torchvision's momentum for every MNASNet BatchNorm, the TensorFlow reference's decay 0.9997
# in torch's convention (weight of the new statistic).
BN_MOMENTUM = 1 - 0.9997

# Stage widths at alpha = 1 (stem conv, stem projection, then the six stacks).
DEPTHS = (32, 16, 24, 40, 80, 96, 192, 320)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> cnn.Conv2d:
    # torchvision: bias-free convs, kaiming-normal (fan_out, ReLU)
    return cnn.Conv2d(
        cin,
        cout,
        k,
        stride=stride,
        padding=k // 2,
        groups=groups,
        bias=False,
        weight_init=kaiming_normal_fan_out,
    )


def _bn(channels: int) -> cnn.BatchNorm2d:
    return cnn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def round_to_multiple_of(val: float, divisor: int, round_up_bias: float = 0.9) -> int:
    """torchvision's ``_round_to_multiple_of``: ``val`` rounded to a multiple of ``divisor``,
    up unless that is no more than 10% above the smaller multiple ((83, 8) -> 80, (84, 8) ->
    88).

    >>> round_to_multiple_of(83, 8), round_to_multiple_of(84, 8)
    (80, 88)
    """
    if not 0.0 < round_up_bias < 1.0:
        raise ValueError(
            f"round_up_bias should be greater than 0.0 and smaller than 1.0 instead of "
            f"{round_up_bias}"
        )
    new_val = max(divisor, int(val + divisor / 2) // divisor * divisor)
    return new_val if new_val >= round_up_bias * val else new_val + divisor


def get_depths(alpha: float) -> list[int]:
    """torchvision's ``_get_depths``: :data:`DEPTHS` scaled by ``alpha``, multiples of 8.

    >>> get_depths(0.5)
    [16, 8, 16, 24, 40, 48, 96, 160]
    """
    return [round_to_multiple_of(depth * alpha, 8) for depth in DEPTHS]


class _InvertedResidual(nn.Module):
    """torchvision's MNASNet ``_InvertedResidual``: ``layers`` = 1x1 expansion, BN, ReLU,
    depthwise ``kernel_size`` conv (stride), BN, ReLU, 1x1 projection, BN; the input is added
    when the stride is 1 and the channel count unchanged."""

    in_ch: int
    out_ch: int
    kernel_size: int
    stride: int
    expansion_factor: int
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        if self.stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {self.stride}")
        if self.kernel_size not in (3, 5):
            raise ValueError(f"kernel_size should be 3 or 5 instead of {self.kernel_size}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        mid = self.in_ch * self.expansion_factor
        bn = lambda c: cnn.BatchNorm2d(c, momentum=self.bn_momentum)
        out = cnn.Sequential(
            (
                _conv(self.in_ch, mid, 1),
                bn(mid),
                cnn.ReLU(),
                _conv(mid, mid, self.kernel_size, self.stride, groups=mid),
                bn(mid),
                cnn.ReLU(),
                _conv(mid, self.out_ch, 1),
                bn(self.out_ch),
            ),
            name="layers",
        )(x, train=train)
        if self.in_ch == self.out_ch and self.stride == 1:
            return out + x
        return out


def _stack(
    in_ch: int,
    out_ch: int,
    kernel_size: int,
    stride: int,
    exp_factor: int,
    repeats: int,
    bn_momentum: float,
) -> cnn.Sequential:
    """torchvision's ``_stack``: ``repeats`` inverted residuals, the first carrying the stride."""
    if repeats < 1:
        raise ValueError(f"repeats should be >= 1, instead got {repeats}")
    blocks = [_InvertedResidual(in_ch, out_ch, kernel_size, stride, exp_factor, bn_momentum)]
    blocks += [
        _InvertedResidual(out_ch, out_ch, kernel_size, 1, exp_factor, bn_momentum)
        for _ in range(1, repeats)
    ]
    return cnn.Sequential(tuple(blocks))


class MNASNet(nn.Module):
    """torchvision's ``MNASNet`` (the B1 variant): ``layers`` (a 3x3/2 stem, a depthwise 3x3
    and a 1x1 projection, six stacks of inverted residuals, a 1x1 conv to 1280 with ReLU), the
    spatial mean and ``classifier`` (Dropout, Linear).

    ``alpha`` scales the widths (torchvision's ``_get_depths``). As torchvision: every
    BatchNorm has momentum ``1 - 0.9997``; convs are kaiming-normal (fan_out), BatchNorm ones
    and zeros, the Linear kaiming-uniform over its fan_out with the sigmoid gain (U(±sqrt(3 /
    num_classes))) and a zero bias. Default input 224x224; any size works.

    >>> model = MNASNet(0.5, num_classes=10)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 10)
    """

    alpha: float
    num_classes: int = 1000
    dropout: float = 0.2
    in_channels: int = 3

    # torchvision's MNASNet._version: its load_state_dict refuses a state_dict that does not
    # say version 2 (the current stem) in its _metadata; to_torch records it.
    torch_version: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if not self.alpha > 0.0:
            raise ValueError(f"alpha should be greater than 0.0 instead of {self.alpha}")
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "MNASNet", self.in_channels)
        d = get_depths(self.alpha)
        m = BN_MOMENTUM
        x = cnn.Sequential(
            (
                _conv(self.in_channels, d[0], 3, 2),
                _bn(d[0]),
                cnn.ReLU(),
                _conv(d[0], d[0], 3, groups=d[0]),
                _bn(d[0]),
                cnn.ReLU(),
                _conv(d[0], d[1], 1),
                _bn(d[1]),
                _stack(d[1], d[2], 3, 2, 3, 3, m),
                _stack(d[2], d[3], 5, 2, 3, 3, m),
                _stack(d[3], d[4], 5, 2, 6, 3, m),
                _stack(d[4], d[5], 3, 1, 6, 2, m),
                _stack(d[5], d[6], 5, 2, 6, 4, m),
                _stack(d[6], d[7], 3, 1, 6, 1, m),
                _conv(d[7], 1280, 1),
                _bn(1280),
                cnn.ReLU(),
            ),
            name="layers",
        )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))  # torchvision: x.mean([2, 3])
        # kaiming_uniform_(mode='fan_out', nonlinearity='sigmoid'): gain 1, fan_out = rows.
        bound = math.sqrt(3.0 / self.num_classes)
        return cnn.Sequential(
            (
                cnn.Dropout(self.dropout),
                cnn.Linear(
                    1280, self.num_classes, weight_init=uniform_bound(bound), bias_init=zeros
                ),
            ),
            name="classifier",
        )(x, train=train)


def _mnasnet_factory(alpha: float, doc: str):
    def factory(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> MNASNet:
        return MNASNet(alpha, num_classes=num_classes, dropout=dropout, in_channels=in_channels)

    factory.__doc__ = doc
    return factory


# The smallest first: the default test suite checks the first model of each family.
mnasnet0_5 = register("mnasnet0_5", family="mnasnet", torchvision=True)(
    _mnasnet_factory(0.5, "torchvision's MNASNet with depth multiplier 0.5 (2.2M parameters).")
)
mnasnet0_75 = register("mnasnet0_75", family="mnasnet", torchvision=True)(
    _mnasnet_factory(0.75, "torchvision's MNASNet with depth multiplier 0.75 (3.2M parameters).")
)
mnasnet1_0 = register("mnasnet1_0", family="mnasnet", torchvision=True)(
    _mnasnet_factory(1.0, "torchvision's MNASNet with depth multiplier 1.0 (4.4M parameters).")
)
mnasnet1_3 = register("mnasnet1_3", family="mnasnet", torchvision=True)(
    _mnasnet_factory(1.3, "torchvision's MNASNet with depth multiplier 1.3 (6.3M parameters).")
)
