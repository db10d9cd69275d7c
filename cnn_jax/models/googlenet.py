"""torchvision's GoogLeNet (Inception v1) with its exact layout, initialisation and auxiliary
heads."""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.nn as cnn
from cnn_jax._utils import IntOr2, check_model_input
from cnn_jax.models.registry import register
from cnn_jax.nn.init import Initializer, trunc_normal

Array = jax.Array


class GoogLeNetOutputs(NamedTuple):
    """GoogLeNet's train-mode output with ``aux_logits=True`` (torchvision's named tuple):
    the logits and those of the auxiliary heads on inception4d (``aux_logits2``) and inception4a
    (``aux_logits1``). ``loss_weights``: the GoogLeNet paper's 0.3 for each auxiliary loss
    (see :func:`cnn_jax.models.outputs.loss_terms`)."""

    logits: Array
    aux_logits2: Array | None
    aux_logits1: Array | None

    loss_weights = (1.0, 0.3, 0.3)


def transform_input(x: Array) -> Array:
    """torchvision's ``transform_input``: re-normalises images normalised with ImageNet's
    mean/std to the ``(x - 0.5) / 0.5`` the ported Inception weights expect (NHWC, RGB)."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    scale = jnp.asarray([s / 0.5 for s in std], x.dtype)
    shift = jnp.asarray([(m - 0.5) / 0.5 for m in mean], x.dtype)
    return x * scale + shift


def check_transform_input(transform_input: bool, in_channels: int, model: str) -> None:
    if transform_input and in_channels != 3:
        raise ValueError(
            f"{model}: transform_input re-normalises 3 RGB channels, got in_channels="
            f"{in_channels}; pass transform_input=False"
        )


class BasicConv2d(nn.Module):
    """A bias-free ``conv``, BatchNorm ``bn`` (eps 0.001, as the ported TensorFlow weights) and
    ReLU: the unit of GoogLeNet and Inception v3."""

    in_channels: int
    out_channels: int
    kernel_size: IntOr2
    stride: IntOr2 = 1
    padding: IntOr2 = 0
    weight_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        x = cnn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            bias=False,
            weight_init=self.weight_init,
            name="conv",
        )(x)
        x = cnn.BatchNorm2d(self.out_channels, eps=0.001, name="bn")(x, train=train)
        return cnn.ReLU()(x)


class Inception(nn.Module):
    """GoogLeNet's Inception module: 1×1, 1×1→3×3, 1×1→3×3 (torchvision's "5×5" branch is a
    3×3, kept for its weights) and 3×3 max pool→1×1 branches, concatenated on channels."""

    in_channels: int
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    weight_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        conv = functools.partial(BasicConv2d, weight_init=self.weight_init)
        cin = self.in_channels
        branches = (
            conv(cin, self.ch1x1, 1, name="branch1"),
            cnn.Sequential(
                (conv(cin, self.ch3x3red, 1), conv(self.ch3x3red, self.ch3x3, 3, padding=1)),
                name="branch2",
            ),
            cnn.Sequential(
                (conv(cin, self.ch5x5red, 1), conv(self.ch5x5red, self.ch5x5, 3, padding=1)),
                name="branch3",
            ),
            cnn.Sequential(
                (cnn.MaxPool2d(3, 1, 1, ceil_mode=True), conv(cin, self.pool_proj, 1)),
                name="branch4",
            ),
        )
        # torch.cat on channels, the branches run in torch's order
        return jnp.concatenate([branch(x, train=train) for branch in branches], axis=-1)


class InceptionAux(nn.Module):
    """GoogLeNet's auxiliary classifier: 4×4 adaptive average pool, 1×1 ``conv`` to 128,
    ``fc1`` (2048→1024), ReLU, dropout, ``fc2``."""

    in_channels: int
    num_classes: int
    dropout: float = 0.7
    weight_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        x = cnn.AdaptiveAvgPool2d((4, 4))(x)
        x = BasicConv2d(self.in_channels, 128, 1, weight_init=self.weight_init, name="conv")(
            x, train=train
        )
        x = cnn.Flatten()(x)
        x = cnn.ReLU()(cnn.Linear(2048, 1024, weight_init=self.weight_init, name="fc1")(x))
        x = cnn.Dropout(self.dropout)(x, train=train)
        return cnn.Linear(1024, self.num_classes, weight_init=self.weight_init, name="fc2")(x)


class GoogLeNet(nn.Module):
    """torchvision's ``GoogLeNet``: a 7×7/2 stem, nine Inception modules between ceil-mode max
    pools, global average pooling, dropout and ``fc``; two auxiliary classifiers (``aux1`` on
    inception4a, ``aux2`` on inception4d) with ``aux_logits=True``.

    As torchvision's: with ``aux_logits=True`` the train-mode output is
    :class:`GoogLeNetOutputs` ``(logits, aux_logits2, aux_logits1)`` and the eval-mode output
    the logits; with ``aux_logits=False`` there are no auxiliary heads (no ``aux1.*``/``aux2.*``
    keys) and the output is always the logits. :func:`cnn_jax.models.outputs.loss_terms` gives
    a training loss's terms. ``init_weights`` (``None`` means ``True``, torchvision's behaviour,
    without its warning about a future default): conv and Linear weights N(0, 0.01) truncated
    at ±2, Linear biases torch's default; ``False``: torch's layer defaults throughout.
    ``transform_input`` re-normalises ImageNet-normalised RGB input for the ported TensorFlow
    weights (:func:`transform_input`). torchvision's ``blocks`` (custom module classes) is not
    taken. Default input 224×224; at least 15×15.

    >>> model = GoogLeNet(num_classes=3)
    >>> x = jnp.zeros((2, 224, 224, 3))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> out, _ = jax.eval_shape(  # shapes only
    ...     lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
    ...                           rngs={"dropout": jax.random.key(1)}), variables)
    >>> type(out).__name__, out.logits.shape, out.aux_logits1.shape
    ('GoogLeNetOutputs', (2, 3), (2, 3))
    """

    num_classes: int = 1000
    aux_logits: bool = True
    transform_input: bool = False
    init_weights: bool | None = None
    dropout: float = 0.2
    dropout_aux: float = 0.7
    in_channels: int = 3

    def __post_init__(self) -> None:
        check_transform_input(self.transform_input, self.in_channels, "GoogLeNet")
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array | GoogLeNetOutputs:
        check_model_input(x, "GoogLeNet", self.in_channels, min_hw=15)
        if self.transform_input:
            x = transform_input(x)
        w = None if self.init_weights is False else trunc_normal(0.01)
        conv = functools.partial(BasicConv2d, weight_init=w)
        inception = functools.partial(Inception, weight_init=w)
        pool = lambda k, name: cnn.MaxPool2d(k, 2, ceil_mode=True, name=name)
        # The auxiliary heads run in training; init creates them in either mode, so a
        # torchvision state_dict (which has them) loads into an eval-mode initialised model.
        run_aux = self.aux_logits and (train or self.is_initializing())
        aux = lambda cin, name: InceptionAux(
            cin, self.num_classes, self.dropout_aux, weight_init=w, name=name
        )

        x = conv(self.in_channels, 64, 7, 2, 3, name="conv1")(x, train=train)
        x = pool(3, "maxpool1")(x)
        x = conv(64, 64, 1, name="conv2")(x, train=train)
        x = conv(64, 192, 3, padding=1, name="conv3")(x, train=train)
        x = pool(3, "maxpool2")(x)
        x = inception(192, 64, 96, 128, 16, 32, 32, name="inception3a")(x, train=train)
        x = inception(256, 128, 128, 192, 32, 96, 64, name="inception3b")(x, train=train)
        x = pool(3, "maxpool3")(x)
        x = inception(480, 192, 96, 208, 16, 48, 64, name="inception4a")(x, train=train)
        aux1 = aux(512, "aux1")(x, train=train) if run_aux else None
        x = inception(512, 160, 112, 224, 24, 64, 64, name="inception4b")(x, train=train)
        x = inception(512, 128, 128, 256, 24, 64, 64, name="inception4c")(x, train=train)
        x = inception(512, 112, 144, 288, 32, 64, 64, name="inception4d")(x, train=train)
        aux2 = aux(528, "aux2")(x, train=train) if run_aux else None
        x = inception(528, 256, 160, 320, 32, 128, 128, name="inception4e")(x, train=train)
        x = pool(2, "maxpool4")(x)
        x = inception(832, 256, 160, 320, 32, 128, 128, name="inception5a")(x, train=train)
        x = inception(832, 384, 192, 384, 48, 128, 128, name="inception5b")(x, train=train)
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d((1, 1), name="avgpool")(x))
        x = cnn.Dropout(self.dropout, name="dropout")(x, train=train)
        x = cnn.Linear(1024, self.num_classes, weight_init=w, name="fc")(x)
        if train and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


@register(
    "googlenet",
    torchvision=True,
    min_input_size=15,
    deterministic={"dropout": 0.0, "dropout_aux": 0.0},
)
def googlenet(
    num_classes: int = 1000,
    in_channels: int = 3,
    aux_logits: bool = True,
    transform_input: bool = False,
    init_weights: bool | None = None,
    dropout: float = 0.2,
    dropout_aux: float = 0.7,
) -> GoogLeNet:
    """torchvision's GoogLeNet (6.6M parameters without the auxiliary heads, 13.0M with)."""
    return GoogLeNet(
        num_classes, aux_logits, transform_input, init_weights, dropout, dropout_aux, in_channels
    )
