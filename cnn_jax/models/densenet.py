"""torchvision's DenseNet-121/161/169/201 (DenseNet-BC) with its exact layout and
initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.functional import materialize_gradient
from cnn_jax.models.registry import register
from cnn_jax.nn.init import kaiming_normal_fan_in, zeros

Array = jax.Array


def _conv(
    cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, name: str | None = None
) -> cnn.Conv2d:
    # torchvision: bias-free convs, kaiming_normal_ with its defaults (fan_in, gain sqrt 2)
    return cnn.Conv2d(
        cin,
        cout,
        k,
        stride=stride,
        padding=padding,
        bias=False,
        weight_init=kaiming_normal_fan_in,
        name=name,
    )


class _DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (to ``bn_size * growth_rate``), BN-ReLU-3×3 conv (to ``growth_rate``),
    on the concatenation of every earlier feature map of the block."""

    num_input_features: int
    growth_rate: int
    bn_size: int
    drop_rate: float
    memory_efficient: bool = False

    def setup(self) -> None:
        width = self.bn_size * self.growth_rate
        self.norm1 = cnn.BatchNorm2d(self.num_input_features)
        self.relu1 = cnn.ReLU()
        self.conv1 = _conv(self.num_input_features, width, 1)
        self.norm2 = cnn.BatchNorm2d(width)
        self.relu2 = cnn.ReLU()
        self.conv2 = _conv(width, self.growth_rate, 3, padding=1)
        self.dropout = cnn.Dropout(self.drop_rate)

    def __call__(self, features: Sequence[Array], *, train: bool) -> Array:
        def bottleneck(layer: _DenseLayer, *inputs: Array) -> Array:
            x = jnp.concatenate(inputs, axis=-1)  # torch.cat on channels
            return layer.conv1(layer.relu1(layer.norm1(x, train=train)))

        if self.memory_efficient:
            # Recompute the concatenation and the bottleneck in the backward pass instead of
            # storing them (torchvision's torch.utils.checkpoint), only where a gradient is taken.
            bottleneck = nn.remat(bottleneck)
        out = bottleneck(self, *features)
        out = self.conv2(self.relu2(self.norm2(out, train=train)))
        # torchvision drops out only when drop_rate > 0 (an inactive layer draws no rng)
        return self.dropout(out, train=train) if self.drop_rate > 0 else out


class _DenseBlock(nn.Module):
    """``num_layers`` dense layers ``denselayer1``..; each adds ``growth_rate`` channels."""

    num_layers: int
    num_input_features: int
    bn_size: int
    growth_rate: int
    drop_rate: float
    memory_efficient: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        features = [x]
        for i in range(self.num_layers):
            layer = _DenseLayer(
                self.num_input_features + i * self.growth_rate,
                self.growth_rate,
                self.bn_size,
                self.drop_rate,
                self.memory_efficient,
                name=f"denselayer{i + 1}",
            )
            features.append(layer(features, train=train))
        return jnp.concatenate(features, axis=-1)


class _Transition(nn.Module):
    """BN-ReLU-1×1 conv (halving the channels) and a 2×2 average pool."""

    num_input_features: int
    num_output_features: int

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        x = cnn.BatchNorm2d(self.num_input_features, name="norm")(x, train=train)
        x = cnn.ReLU(name="relu")(x)
        x = _conv(self.num_input_features, self.num_output_features, 1, name="conv")(x)
        return cnn.AvgPool2d(2, 2, name="pool")(x)


class _Features(nn.Module):
    """torchvision's ``features`` Sequential with named children: ``conv0``, ``norm0``,
    ``relu0``, ``pool0``, then ``denseblock{i}`` and ``transition{i}``, and ``norm5``."""

    in_channels: int
    growth_rate: int
    block_config: Sequence[int]
    num_init_features: int
    bn_size: int
    drop_rate: float
    memory_efficient: bool

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        m = self
        x = _conv(m.in_channels, m.num_init_features, 7, 2, 3, name="conv0")(x)
        x = cnn.BatchNorm2d(m.num_init_features, name="norm0")(x, train=train)
        x = cnn.ReLU(name="relu0")(x)
        x = cnn.MaxPool2d(3, 2, 1, name="pool0")(x)
        # Every layer of the first block reads pool0's output through its concatenation, so
        # that output's gradient is a sum of one BatchNorm backward pass per layer. Max
        # pooling's backward reads it at every input position of every window, and XLA:CPU
        # fuses the whole sum into that loop, recomputing it at each: store it once instead
        # (the forward pass and every value unchanged; `python -m
        # experiments.bench_pool_gradient` measures it, and storing every family's max pooling
        # outputs, which gained nothing elsewhere).
        x = materialize_gradient(x)
        channels = m.num_init_features
        for i, num_layers in enumerate(m.block_config):
            block = _DenseBlock(
                num_layers,
                channels,
                m.bn_size,
                m.growth_rate,
                m.drop_rate,
                m.memory_efficient,
                name=f"denseblock{i + 1}",
            )
            x = block(x, train=train)
            channels += num_layers * m.growth_rate
            if i != len(m.block_config) - 1:
                x = _Transition(channels, channels // 2, name=f"transition{i + 1}")(x, train=train)
                channels //= 2
        return cnn.BatchNorm2d(channels, name="norm5")(x, train=train)


class DenseNet(nn.Module):
    """torchvision's ``DenseNet`` (DenseNet-BC): a 7×7/2 stem and 3×3/2 max pool, dense blocks
    joined by transitions (BN-ReLU-1×1 conv halving the channels, 2×2 average pool), a final
    BatchNorm, ReLU, global average pooling and the ``classifier`` Linear.

    Attributes:
      growth_rate: channels each dense layer adds (``k`` in the paper).
      block_config: dense layers per block.
      num_init_features: the stem's channels.
      bn_size: the 1×1 bottleneck has ``bn_size * growth_rate`` channels.
      drop_rate: dropout after each dense layer (training only).
      memory_efficient: recompute each layer's concatenation and bottleneck in the backward
        pass instead of storing them (``flax.linen.remat``; torchvision: torch's checkpoint).
        Outputs, gradients and statistics equal ``memory_efficient=False``'s. torchvision's
        recomputation differs there: it updates each ``norm1``'s running statistics a second
        time per training step (``num_batches_tracked`` counts 2); cnn_jax's updates them once.

    Initialised as torchvision does: convs kaiming-normal (fan_in, gain sqrt 2), BatchNorm
    ones/zeros, the Linear's weight torch's default and its bias zero. Default input 224×224;
    at least 29×29.

    >>> model = DenseNet(num_classes=3)  # DenseNet-121's layout
    >>> x = jnp.zeros((2, 224, 224, 3))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape  # shapes only
    (2, 3)
    """

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0
    num_classes: int = 1000
    memory_efficient: bool = False
    in_channels: int = 3

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "DenseNet", self.in_channels, min_hw=29)
        x = _Features(
            self.in_channels,
            self.growth_rate,
            self.block_config,
            self.num_init_features,
            self.bn_size,
            self.drop_rate,
            self.memory_efficient,
            name="features",
        )(x, train=train)
        x = cnn.AdaptiveAvgPool2d((1, 1))(cnn.ReLU()(x))
        channels = x.shape[-1]
        return cnn.Linear(channels, self.num_classes, bias_init=zeros, name="classifier")(
            cnn.Flatten()(x)
        )


def _densenet_factory(
    name: str, growth_rate: int, block_config: tuple[int, ...], num_init_features: int, doc: str
):
    def factory(
        num_classes: int = 1000,
        in_channels: int = 3,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> DenseNet:
        return DenseNet(
            growth_rate,
            block_config,
            num_init_features,
            bn_size,
            drop_rate,
            num_classes,
            memory_efficient,
            in_channels,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return register(
        name,
        family="densenet",
        torchvision=True,
        min_input_size=29,
        deterministic={"drop_rate": 0.0},
    )(factory)


# The smallest first: the default test suite checks the first registered model of a family.
densenet121 = _densenet_factory(
    "densenet121", 32, (6, 12, 24, 16), 64, "torchvision's DenseNet-121 (8.0M parameters)."
)
densenet169 = _densenet_factory(
    "densenet169", 32, (6, 12, 32, 32), 64, "torchvision's DenseNet-169 (14.1M parameters)."
)
densenet201 = _densenet_factory(
    "densenet201", 32, (6, 12, 48, 32), 64, "torchvision's DenseNet-201 (20.0M parameters)."
)
densenet161 = _densenet_factory(
    "densenet161", 48, (6, 12, 36, 24), 96, "torchvision's DenseNet-161 (28.7M parameters)."
)
