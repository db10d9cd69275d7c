"""flax.linen layers named, parameterised and computing like ``torch.nn`` (NHWC input).

>>> import cnn_jax.nn as cnn
>>> conv = cnn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1)
"""

from cnn_jax.nn.activation import GELU, Hardsigmoid, Hardswish, Hardtanh, ReLU6, SiLU
from cnn_jax.nn.blocks import (
    ChannelShuffle,
    Conv2dNormActivation,
    Permute,
    SqueezeExcitation,
    StochasticDepth,
)
from cnn_jax.nn.containers import Identity, ReLU, Sequential, Sigmoid, Tanh
from cnn_jax.nn.init import torch_bias_init, torch_fan_in, torch_weight_init
from cnn_jax.nn.layer_settings import with_layer_settings
from cnn_jax.nn.layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Dropout2d,
    Flatten,
    Linear,
    MaxPool2d,
    MaxUnpool2d,
)
from cnn_jax.nn.normalization import LayerNorm, LayerNorm2d, LocalResponseNorm

__all__ = [
    "GELU",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "ChannelShuffle",
    "Conv2d",
    "Conv2dNormActivation",
    "ConvTranspose2d",
    "Dropout",
    "Dropout2d",
    "Flatten",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "Identity",
    "LayerNorm",
    "LayerNorm2d",
    "Linear",
    "LocalResponseNorm",
    "MaxPool2d",
    "MaxUnpool2d",
    "Permute",
    "ReLU",
    "ReLU6",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "SqueezeExcitation",
    "StochasticDepth",
    "Tanh",
    "torch_bias_init",
    "torch_fan_in",
    "torch_weight_init",
    "with_layer_settings",
]
