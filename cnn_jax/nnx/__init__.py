"""Flax NNX (stateful JAX) versions of the layers and of ``lenet5``, ``cifar_cnn`` and
``resnet18``, on the same :mod:`cnn_jax.functional` core as :mod:`cnn_jax.nn`: one implementation
of the maths, three styles (linen, NNX, and torch as the reference).

>>> from flax import nnx
>>> from cnn_jax import nnx as cnnx
>>> model = cnnx.create("cifar_cnn", num_classes=10, in_channels=1, rngs=nnx.Rngs(0))
>>> model.eval()  # torch's model.eval(): BatchNorm uses running statistics, Dropout is off
>>> model(jnp.zeros((2, 28, 28, 1))).shape
(2, 10)
"""

from cnn_jax.nnx.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Sequential,
    Tanh,
)
from cnn_jax.nnx.models import BasicBlock, CifarCNN, LeNet5, ResNet, create, list_models

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BasicBlock",
    "BatchNorm2d",
    "CifarCNN",
    "Conv2d",
    "Dropout",
    "Flatten",
    "LeNet5",
    "Linear",
    "MaxPool2d",
    "ResNet",
    "Sequential",
    "Tanh",
    "create",
    "list_models",
]
