"""The course's small networks: LeNet-5, the lab's SimpleCNN, the Keras CIFAR CNN, an MLP and
``ConvNet``, a plain CNN whose depth, activation, BatchNorm and head are arguments (experiments).

Each is laid out like the PyTorch module a course would write, so its ``state_dict`` keys are the
ones :func:`cnn_jax.interop.from_torch` expects (their torch versions are in
:mod:`cnn_jax.testing.torch_models`).
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import flax.linen as nn
import jax

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input, pair
from cnn_jax.models.registry import register

Array = jax.Array


class LeNet5(nn.Module):
    """LeNet-5 as the lecture gives it (tanh, average-pooling subsampling).

    Input 32×32×``in_channels``: C1 6@28×28 (5×5) → S2 6@14×14 → C3 16@10×10 → S4 16@5×5 →
    C5 120@1×1 (5×5 conv) → F6 84 → ``num_classes``. Torch layout: ``features`` (Sequential, convs
    at 0, 3, 6) and ``classifier`` (Linear at 0 and 2).

    >>> model = LeNet5()
    >>> x = jnp.zeros(model.example_input_shape())
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 1)), train=False).shape
    (2, 10)
    """

    num_classes: int = 10
    in_channels: int = 1

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 32, 32, in_channels)``."""
        return (1, 32, 32, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        # C5 must come out 1x1 for the 120-feature F6: only 32x32 input works.
        check_model_input(x, "LeNet-5", self.in_channels, exact_hw=(32, 32))
        x = cnn.Sequential(
            (
                cnn.Conv2d(self.in_channels, 6, 5),  # C1
                cnn.Tanh(),
                cnn.AvgPool2d(2),  # S2
                cnn.Conv2d(6, 16, 5),  # C3
                cnn.Tanh(),
                cnn.AvgPool2d(2),  # S4
                cnn.Conv2d(16, 120, 5),  # C5
                cnn.Tanh(),
            ),
            name="features",
        )(x, train=train)
        x = cnn.Flatten()(x)
        return cnn.Sequential(
            (cnn.Linear(120, 84), cnn.Tanh(), cnn.Linear(84, self.num_classes)),  # F6, output
            name="classifier",
        )(x, train=train)


class SimpleCNN(nn.Module):
    """The course lab's network: conv-pool-conv-pool-flatten-fc-fc.

    Conv ``in_channels``→32 3×3 pad 1, ReLU, MaxPool 2; Conv 32→64 3×3 pad 1, ReLU, MaxPool 2;
    Flatten; Linear→``hidden``, ReLU, Dropout(``dropout``); Linear→``num_classes``. Torch
    attribute names ``conv1``, ``conv2``, ``fc1``, ``fc2``. ``input_size`` (H, W) fixes fc1's
    input features, ``64 * (H // 4) * (W // 4)``.

    >>> SimpleCNN(in_channels=1, input_size=(28, 28)).example_input_shape()
    (1, 28, 28, 1)
    """

    num_classes: int = 10
    in_channels: int = 3
    input_size: int | tuple[int, int] = 32
    hidden: int = 128
    dropout: float = 0.5

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, *input_size, in_channels)``."""
        return (1, *pair(self.input_size, "input_size"), self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        # fc1's input features depend on the input size it was built for.
        h, w = pair(self.input_size, "input_size")
        check_model_input(
            x, "SimpleCNN", self.in_channels, exact_hw=(h, w), option=f"input_size={(h, w)}"
        )
        x = cnn.ReLU()(cnn.Conv2d(self.in_channels, 32, 3, padding=1, name="conv1")(x))
        x = cnn.MaxPool2d(2)(x)
        x = cnn.ReLU()(cnn.Conv2d(32, 64, 3, padding=1, name="conv2")(x))
        x = cnn.MaxPool2d(2)(x)
        x = cnn.Flatten()(x)
        x = cnn.ReLU()(cnn.Linear(64 * (h // 4) * (w // 4), self.hidden, name="fc1")(x))
        x = cnn.Dropout(self.dropout)(x, train=train)
        return cnn.Linear(self.hidden, self.num_classes, name="fc2")(x)


class CifarCNN(nn.Module):
    """The Keras example's CIFAR network, with global average pooling instead of a big dense head.

    Conv 32 / 64 / 128, 3×3 'same', ReLU; MaxPool 2 after the first two; global average pooling;
    Dropout 0.5; Linear→``num_classes`` (logits: softmax belongs to the loss). Any input size works
    thanks to the global pooling. The Keras example's L2 penalty on the first conv is an optimiser
    recipe, not part of the model.

    >>> model = CifarCNN()
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 24, 24, 3)), train=False).shape
    (2, 10)
    """

    num_classes: int = 10
    in_channels: int = 3
    dropout: float = 0.5

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 32, 32, in_channels)``."""
        return (1, 32, 32, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "CifarCNN", self.in_channels, min_hw=4)  # two 2x2 max pools
        x = cnn.ReLU()(cnn.Conv2d(self.in_channels, 32, 3, padding="same", name="conv1")(x))
        x = cnn.MaxPool2d(2)(x)
        x = cnn.ReLU()(cnn.Conv2d(32, 64, 3, padding="same", name="conv2")(x))
        x = cnn.MaxPool2d(2)(x)
        x = cnn.ReLU()(cnn.Conv2d(64, 128, 3, padding="same", name="conv3")(x))
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d(1)(x))
        x = cnn.Dropout(self.dropout)(x, train=train)
        return cnn.Linear(128, self.num_classes, name="fc")(x)


class MLP(nn.Module):
    """The flatten-everything baseline: Flatten, then ``Linear``+ReLU(+Dropout) per hidden width,
    then a Linear to ``num_classes``. Layers are ``fc1``, ``fc2``, ...

    >>> MLP(input_shape=(8, 8, 1), hidden=(32,)).example_input_shape()
    (1, 8, 8, 1)
    """

    num_classes: int = 10
    input_shape: tuple[int, int, int] = (32, 32, 3)
    hidden: Sequence[int] = (512, 256)
    dropout: float = 0.0

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, *input_shape)``."""
        return (1, *self.input_shape)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        h, w, c = self.input_shape
        check_model_input(
            x, "MLP", c, exact_hw=(h, w), option=f"input_shape={tuple(self.input_shape)}"
        )
        features = h * w * c
        x = cnn.Flatten()(x)
        for i, width in enumerate(self.hidden):
            x = cnn.ReLU()(cnn.Linear(features, width, name=f"fc{i + 1}")(x))
            x = cnn.Dropout(self.dropout)(x, train=train)
            features = width
        return cnn.Linear(features, self.num_classes, name=f"fc{len(self.hidden) + 1}")(x)


# Read while tracing, so immutable (tests/test_no_global_state.py).
_ACTIVATIONS = types.MappingProxyType({"relu": cnn.ReLU, "tanh": cnn.Tanh, "sigmoid": cnn.Sigmoid})


class ConvNet(nn.Module):
    """A plain CNN with its design choices as arguments, for experiments that vary one of them.

    ``features``: for each entry of ``channels``, ``convs_per_block`` × [Conv2d 3×3 (padding 1)
    → BatchNorm2d (if ``batch_norm``) → activation], then MaxPool2d(2). ``classifier``: with
    ``head='gap'``, AdaptiveAvgPool2d(1) → Flatten → Dropout → Linear; with ``head='flatten'``,
    Flatten → Linear(``hidden``) → activation → Dropout → Linear (the dense head global average
    pooling replaces). Names follow torch's Sequential indices (``features.0.weight``).

    >>> model = ConvNet(activation='tanh', batch_norm=True)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)
    >>> sorted(variables)
    ['batch_stats', 'params']
    """

    num_classes: int = 10
    in_channels: int = 1
    channels: Sequence[int] = (16, 32, 64)
    convs_per_block: int = 1
    activation: str = "relu"
    batch_norm: bool = False
    head: str = "gap"
    hidden: int = 128
    dropout: float = 0.0
    input_size: int | tuple[int, int] = 32

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, *input_size, in_channels)``."""
        return (1, *pair(self.input_size, "input_size"), self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(_ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.head not in ("gap", "flatten"):
            raise ValueError(f"head must be 'gap' or 'flatten', got {self.head!r}")
        if not self.channels or self.convs_per_block < 1:
            raise ValueError("ConvNet needs at least one block of at least one conv")
        reduction = 2 ** len(self.channels)
        hw = pair(self.input_size, "input_size")
        if self.head == "flatten":
            check_model_input(
                x,
                "ConvNet",
                self.in_channels,
                exact_hw=hw,
                option=f"input_size={hw}",
            )
        else:
            check_model_input(x, "ConvNet", self.in_channels, min_hw=reduction)
        act = _ACTIVATIONS[self.activation]
        layers: list = []
        c_in = self.in_channels
        for c_out in self.channels:
            for _ in range(self.convs_per_block):
                layers.append(cnn.Conv2d(c_in, c_out, 3, padding=1, bias=not self.batch_norm))
                if self.batch_norm:
                    layers.append(cnn.BatchNorm2d(c_out))
                layers.append(act())
                c_in = c_out
            layers.append(cnn.MaxPool2d(2))
        x = cnn.Sequential(tuple(layers), name="features")(x, train=train)
        if self.head == "gap":
            head = (
                cnn.AdaptiveAvgPool2d(1),
                cnn.Flatten(),
                cnn.Dropout(self.dropout),
                cnn.Linear(c_in, self.num_classes),
            )
        else:
            h, w = (d // reduction for d in hw)
            head = (
                cnn.Flatten(),
                cnn.Linear(c_in * h * w, self.hidden),
                act(),
                cnn.Dropout(self.dropout),
                cnn.Linear(self.hidden, self.num_classes),
            )
        return cnn.Sequential(head, name="classifier")(x, train=train)


@register("lenet5", input_size=32)
def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """LeNet-5 (tanh, average pooling), 32×32 input."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels)


@register("simple_cnn")
def simple_cnn(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = 32,
    dropout: float = 0.5,
) -> SimpleCNN:
    """The course lab's conv-pool-conv-pool-fc-fc network."""
    return SimpleCNN(
        num_classes=num_classes, in_channels=in_channels, input_size=input_size, dropout=dropout
    )


@register("cifar_cnn")
def cifar_cnn(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> CifarCNN:
    """The Keras example's 3-conv network with global average pooling."""
    return CifarCNN(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register("mlp")
def mlp(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = 32,
    hidden: Sequence[int] = (512, 256),
    dropout: float = 0.0,
) -> MLP:
    """The flatten-everything baseline."""
    h, w = pair(input_size, "input_size")
    return MLP(
        num_classes=num_classes,
        input_shape=(h, w, in_channels),
        hidden=tuple(hidden),
        dropout=dropout,
    )


@register("convnet")
def convnet(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | tuple[int, int] = 32,
    channels: Sequence[int] = (16, 32, 64),
    convs_per_block: int = 1,
    activation: str = "relu",
    batch_norm: bool = False,
    head: str = "gap",
    hidden: int = 128,
    dropout: float = 0.0,
) -> ConvNet:
    """:class:`ConvNet`, the configurable plain CNN of the experiments."""
    return ConvNet(
        num_classes=num_classes,
        in_channels=in_channels,
        channels=tuple(channels),
        convs_per_block=convs_per_block,
        activation=activation,
        batch_norm=batch_norm,
        head=head,
        hidden=hidden,
        dropout=dropout,
        input_size=input_size,
    )
