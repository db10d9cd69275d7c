"""ShuffleNet V2 with torchvision's layout, channel order and (torch default) initialisation.

torchvision splits, concatenates and shuffles channels on the NCHW channel axis; here the same
operations act on the last (NHWC channel) axis, so every channel ends where torch puts it and the
weights port unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.functional as F
import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models.registry import register

Array = jax.Array


def _depthwise_conv(i: int, o: int, stride: int) -> cnn.Conv2d:
    # torchvision's InvertedResidual.depthwise_conv(i, o, kernel_size=3, stride, padding=1).
    return cnn.Conv2d(i, o, 3, stride, 1, bias=False, groups=i)


def _pointwise_conv(i: int, o: int) -> cnn.Conv2d:
    return cnn.Conv2d(i, o, 1, 1, 0, bias=False)


class InvertedResidual(nn.Module):
    """torchvision's ShuffleNet V2 unit. Stride 1: the channels split in halves, the second goes
    through ``branch2`` (1x1, depthwise 3x3, 1x1 with BatchNorm and ReLU), the first passes
    unchanged. Stride 2 (or 3): ``branch1`` (depthwise 3x3, 1x1) and ``branch2`` both see the
    whole input and halve the resolution. Then the halves are concatenated and shuffled in 2
    groups."""

    inp: int
    oup: int
    stride: int

    def __post_init__(self) -> None:
        if not 1 <= self.stride <= 3:
            raise ValueError(f"illegal stride value {self.stride}: ShuffleNet V2 takes 1, 2 or 3")
        if self.stride == 1 and self.inp != (self.oup // 2) << 1:
            raise ValueError(
                f"Invalid combination of stride {self.stride}, inp {self.inp} and oup {self.oup} "
                "values. If stride == 1 then inp should be equal to oup // 2 << 1."
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        branch_features = self.oup // 2
        branch2 = cnn.Sequential(
            (
                _pointwise_conv(self.inp if self.stride > 1 else branch_features, branch_features),
                cnn.BatchNorm2d(branch_features),
                cnn.ReLU(inplace=True),
                _depthwise_conv(branch_features, branch_features, self.stride),
                cnn.BatchNorm2d(branch_features),
                _pointwise_conv(branch_features, branch_features),
                cnn.BatchNorm2d(branch_features),
                cnn.ReLU(inplace=True),
            ),
            name="branch2",
        )
        if self.stride == 1:
            # torch's x.chunk(2, dim=1) on the channel axis.
            x1, x2 = jnp.split(x, 2, axis=-1)
            out = jnp.concatenate((x1, branch2(x2, train=train)), axis=-1)
        else:
            branch1 = cnn.Sequential(
                (
                    _depthwise_conv(self.inp, self.inp, self.stride),
                    cnn.BatchNorm2d(self.inp),
                    _pointwise_conv(self.inp, branch_features),
                    cnn.BatchNorm2d(branch_features),
                    cnn.ReLU(inplace=True),
                ),
                name="branch1",
            )
            # branch1 first, as torch evaluates it (the ReLUs' order matters to kink pinning).
            left = branch1(x, train=train)
            out = jnp.concatenate((left, branch2(x, train=train)), axis=-1)
        return F.channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """torchvision's ``ShuffleNetV2``: ``conv1`` (3x3/2 conv, BN, ReLU), a 3x3/2 ``maxpool``,
    ``stage2``..``stage4`` of :class:`InvertedResidual` units (the first of each with stride 2),
    ``conv5`` (1x1 conv, BN, ReLU), the spatial mean and ``fc``. Parameters have torch's default
    initialisation (torchvision re-initialises nothing). Default input 224x224; any size works.

    >>> model = ShuffleNetV2((1, 1, 1), (8, 16, 32, 64, 128), num_classes=3)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 3)
    """

    stages_repeats: Sequence[int]
    stages_out_channels: Sequence[int]
    num_classes: int = 1000
    in_channels: int = 3

    def __post_init__(self) -> None:
        if len(self.stages_repeats) != 3:
            raise ValueError(
                f"expected stages_repeats as list of 3 positive ints, got {self.stages_repeats!r}"
            )
        if len(self.stages_out_channels) != 5:
            raise ValueError(
                "expected stages_out_channels as list of 5 positive ints, got "
                f"{self.stages_out_channels!r}"
            )
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "ShuffleNetV2", self.in_channels)
        channels = self.stages_out_channels
        x = cnn.Sequential(
            (
                cnn.Conv2d(self.in_channels, channels[0], 3, 2, 1, bias=False),
                cnn.BatchNorm2d(channels[0]),
                cnn.ReLU(inplace=True),
            ),
            name="conv1",
        )(x, train=train)
        x = cnn.MaxPool2d(kernel_size=3, stride=2, padding=1, name="maxpool")(x)
        width = channels[0]
        for stage, (repeats, out) in enumerate(
            zip(self.stages_repeats, channels[1:4], strict=True), start=2
        ):
            units = [InvertedResidual(width, out, 2)]
            units += [InvertedResidual(out, out, 1) for _ in range(repeats - 1)]
            x = cnn.Sequential(tuple(units), name=f"stage{stage}")(x, train=train)
            width = out
        x = cnn.Sequential(
            (
                _pointwise_conv(width, channels[-1]),
                cnn.BatchNorm2d(channels[-1]),
                cnn.ReLU(inplace=True),
            ),
            name="conv5",
        )(x, train=train)
        x = x.mean(axis=(1, 2))  # torchvision's global pool: x.mean([2, 3])
        return cnn.Linear(channels[-1], self.num_classes, name="fc")(x)


_CHANNELS = {
    "shufflenet_v2_x0_5": ((24, 48, 96, 192, 1024), "1.4M"),
    "shufflenet_v2_x1_0": ((24, 116, 232, 464, 1024), "2.3M"),
    "shufflenet_v2_x1_5": ((24, 176, 352, 704, 1024), "3.5M"),
    "shufflenet_v2_x2_0": ((24, 244, 488, 976, 2048), "7.4M"),
}


def _shufflenet_factory(name: str):
    channels, params = _CHANNELS[name]

    def factory(num_classes: int = 1000, in_channels: int = 3) -> ShuffleNetV2:
        return ShuffleNetV2((4, 8, 4), channels, num_classes=num_classes, in_channels=in_channels)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"torchvision's {name}: stage widths {channels[1:4]}, {params} parameters."
    return register(name, family="shufflenet_v2", torchvision=True)(factory)


# The smallest first: the default test suite checks the first one registered.
shufflenet_v2_x0_5 = _shufflenet_factory("shufflenet_v2_x0_5")
shufflenet_v2_x1_0 = _shufflenet_factory("shufflenet_v2_x1_0")
shufflenet_v2_x1_5 = _shufflenet_factory("shufflenet_v2_x1_5")
shufflenet_v2_x2_0 = _shufflenet_factory("shufflenet_v2_x2_0")
