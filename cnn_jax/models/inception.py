"""torchvision's Inception v3 with its exact layout, initialisation and auxiliary head."""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models.googlenet import BasicConv2d, check_transform_input, transform_input
from cnn_jax.models.registry import register
from cnn_jax.nn.init import Initializer, trunc_normal

Array = jax.Array

# The auxiliary head's 5x5/3 average pool and 5x5 conv need Mixed_6e's output to be at least
# 17x17, which a 299x299 input gives (and 298x298 does not).
AUX_MIN_INPUT = 299
_AUX_MIN_FEATURES = 17


class InceptionOutputs(NamedTuple):
    """Inception v3's train-mode output with ``aux_logits=True`` (torchvision's named tuple).
    ``loss_weights``: 0.4 for the auxiliary loss, the weight of TF-slim's training script for
    the network whose weights torchvision ported (see
    :func:`cnn_jax.models.outputs.loss_terms`)."""

    logits: Array
    aux_logits: Array | None

    loss_weights = (1.0, 0.4)


def _avg_pool_3x3(x: Array) -> Array:
    # torchvision's F.avg_pool2d(x, kernel_size=3, stride=1, padding=1) (pad counted)
    return cnn.AvgPool2d(3, 1, 1)(x)


class InceptionA(nn.Module):
    """35×35 module: 1×1, 1×1→5×5, 1×1→3×3→3×3 and 3×3 average pool→1×1 branches."""

    in_channels: int
    pool_features: int
    weight_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        conv = functools.partial(BasicConv2d, weight_init=self.weight_init)
        cin = self.in_channels
        b1 = conv(cin, 64, 1, name="branch1x1")(x, train=train)
        b5 = conv(cin, 48, 1, name="branch5x5_1")(x, train=train)
        b5 = conv(48, 64, 5, padding=2, name="branch5x5_2")(b5, train=train)
        b3 = conv(cin, 64, 1, name="branch3x3dbl_1")(x, train=train)
        b3 = conv(64, 96, 3, padding=1, name="branch3x3dbl_2")(b3, train=train)
        b3 = conv(96, 96, 3, padding=1, name="branch3x3dbl_3")(b3, train=train)
        bp = conv(cin, self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x), train=train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35→17: a 3×3/2 conv, 1×1→3×3→3×3/2 and a 3×3/2 max pool."""

    in_channels: int
    weight_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        conv = functools.partial(BasicConv2d, weight_init=self.weight_init)
        cin = self.in_channels
        b3 = conv(cin, 384, 3, stride=2, name="branch3x3")(x, train=train)
        bd = conv(cin, 64, 1, name="branch3x3dbl_1")(x, train=train)
        bd = conv(64, 96, 3, padding=1, name="branch3x3dbl_2")(bd, train=train)
        bd = conv(96, 96, 3, stride=2, name="branch3x3dbl_3")(bd, train=train)
        bp = cnn.MaxPool2d(3, 2)(x)
        return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(nn.Module):
    """17×17 module with factorised 7×7 convs (1×7 and 7×1) of ``channels_7x7`` channels."""

    in_channels: int
    channels_7x7: int
    weight_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        conv = functools.partial(BasicConv2d, weight_init=self.weight_init)
        cin, c7 = self.in_channels, self.channels_7x7
        row, col = (
            dict(kernel_size=(1, 7), padding=(0, 3)),
            dict(kernel_size=(7, 1), padding=(3, 0)),
        )
        b1 = conv(cin, 192, 1, name="branch1x1")(x, train=train)
        b7 = conv(cin, c7, 1, name="branch7x7_1")(x, train=train)
        b7 = conv(c7, c7, **row, name="branch7x7_2")(b7, train=train)
        b7 = conv(c7, 192, **col, name="branch7x7_3")(b7, train=train)
        bd = conv(cin, c7, 1, name="branch7x7dbl_1")(x, train=train)
        bd = conv(c7, c7, **col, name="branch7x7dbl_2")(bd, train=train)
        bd = conv(c7, c7, **row, name="branch7x7dbl_3")(bd, train=train)
        bd = conv(c7, c7, **col, name="branch7x7dbl_4")(bd, train=train)
        bd = conv(c7, 192, **row, name="branch7x7dbl_5")(bd, train=train)
        bp = conv(cin, 192, 1, name="branch_pool")(_avg_pool_3x3(x), train=train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17→8: 1×1→3×3/2, 1×1→1×7→7×1→3×3/2 and a 3×3/2 max pool."""

    in_channels: int
    weight_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        conv = functools.partial(BasicConv2d, weight_init=self.weight_init)
        cin = self.in_channels
        b3 = conv(cin, 192, 1, name="branch3x3_1")(x, train=train)
        b3 = conv(192, 320, 3, stride=2, name="branch3x3_2")(b3, train=train)
        b7 = conv(cin, 192, 1, name="branch7x7x3_1")(x, train=train)
        b7 = conv(192, 192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7, train=train)
        b7 = conv(192, 192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7, train=train)
        b7 = conv(192, 192, 3, stride=2, name="branch7x7x3_4")(b7, train=train)
        bp = cnn.MaxPool2d(3, 2)(x)
        return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nn.Module):
    """8×8 module whose 3×3 branches split into parallel 1×3 and 3×1 convs."""

    in_channels: int
    weight_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        conv = functools.partial(BasicConv2d, weight_init=self.weight_init)
        cin = self.in_channels
        row, col = (
            dict(kernel_size=(1, 3), padding=(0, 1)),
            dict(kernel_size=(3, 1), padding=(1, 0)),
        )
        b1 = conv(cin, 320, 1, name="branch1x1")(x, train=train)
        b3 = conv(cin, 384, 1, name="branch3x3_1")(x, train=train)
        b3 = jnp.concatenate(
            [
                conv(384, 384, **row, name="branch3x3_2a")(b3, train=train),
                conv(384, 384, **col, name="branch3x3_2b")(b3, train=train),
            ],
            axis=-1,
        )
        bd = conv(cin, 448, 1, name="branch3x3dbl_1")(x, train=train)
        bd = conv(448, 384, 3, padding=1, name="branch3x3dbl_2")(bd, train=train)
        bd = jnp.concatenate(
            [
                conv(384, 384, **row, name="branch3x3dbl_3a")(bd, train=train),
                conv(384, 384, **col, name="branch3x3dbl_3b")(bd, train=train),
            ],
            axis=-1,
        )
        bp = conv(cin, 192, 1, name="branch_pool")(_avg_pool_3x3(x), train=train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
    """Inception v3's auxiliary classifier on Mixed_6e: 5×5/3 average pool, 1×1 ``conv0`` to
    128, 5×5 ``conv1`` to 768, global average pool, ``fc``. torchvision initialises ``conv1``
    with std 0.01 and ``fc`` with std 0.001 (with ``init_weights``)."""

    in_channels: int
    num_classes: int
    init_weights: bool = True

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        init = (lambda std: trunc_normal(std)) if self.init_weights else (lambda std: None)
        x = cnn.AvgPool2d(5, 3)(x)
        x = BasicConv2d(self.in_channels, 128, 1, weight_init=init(0.1), name="conv0")(
            x, train=train
        )
        x = BasicConv2d(128, 768, 5, weight_init=init(0.01), name="conv1")(x, train=train)
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d((1, 1))(x))
        return cnn.Linear(768, self.num_classes, weight_init=init(0.001), name="fc")(x)


class Inception3(nn.Module):
    """torchvision's ``Inception3`` (Inception v3): a stem of BasicConv2d and max pools, three
    InceptionA (``Mixed_5b``..``5d``), InceptionB, four InceptionC (``Mixed_6b``..``6e``),
    InceptionD and two InceptionE (``Mixed_7b``, ``7c``), global average pooling, dropout and
    ``fc``; the auxiliary classifier ``AuxLogits`` on Mixed_6e with ``aux_logits=True``.

    As torchvision's: with ``aux_logits=True`` the train-mode output is
    :class:`InceptionOutputs` ``(logits, aux_logits)``, the eval-mode output the logits; with
    ``aux_logits=False`` there is no ``AuxLogits`` and the output is always the logits. The
    auxiliary head needs a 299×299 input (:data:`AUX_MIN_INPUT`) in training; smaller inputs
    (at least 75×75) need ``aux_logits=False`` there. ``init_weights`` (``None`` means
    ``True``, torchvision's behaviour, without its warning about a future default): conv and
    Linear weights N(0, 0.1²) truncated at ±2 (the auxiliary ``conv1`` 0.01, ``fc`` 0.001),
    Linear biases torch's default; ``False``: torch's layer defaults. ``transform_input`` as
    in :class:`~cnn_jax.models.googlenet.GoogLeNet`. torchvision's ``inception_blocks`` (custom
    module classes) is not taken. Default input 299×299.

    >>> model = Inception3(num_classes=3)
    >>> x = jnp.zeros((2, 299, 299, 3))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape  # shapes only
    (2, 3)
    """

    num_classes: int = 1000
    aux_logits: bool = True
    transform_input: bool = False
    init_weights: bool | None = None
    dropout: float = 0.5
    in_channels: int = 3

    def __post_init__(self) -> None:
        check_transform_input(self.transform_input, self.in_channels, "Inception3")
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 299, 299, in_channels)``."""
        return (1, 299, 299, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array | InceptionOutputs:
        check_model_input(x, "Inception3", self.in_channels, min_hw=75)
        if train and self.aux_logits and min(x.shape[1:3]) < AUX_MIN_INPUT:
            raise ValueError(
                f"Inception3's auxiliary head (aux_logits=True) needs input of at least "
                f"{AUX_MIN_INPUT}x{AUX_MIN_INPUT} in training, got {x.shape[1]}x{x.shape[2]}; "
                "resize the images or pass aux_logits=False"
            )
        if self.transform_input:
            x = transform_input(x)
        init_weights = self.init_weights is not False
        w = trunc_normal(0.1) if init_weights else None
        conv = functools.partial(BasicConv2d, weight_init=w)
        x = conv(self.in_channels, 32, 3, stride=2, name="Conv2d_1a_3x3")(x, train=train)
        x = conv(32, 32, 3, name="Conv2d_2a_3x3")(x, train=train)
        x = conv(32, 64, 3, padding=1, name="Conv2d_2b_3x3")(x, train=train)
        x = cnn.MaxPool2d(3, 2, name="maxpool1")(x)
        x = conv(64, 80, 1, name="Conv2d_3b_1x1")(x, train=train)
        x = conv(80, 192, 3, name="Conv2d_4a_3x3")(x, train=train)
        x = cnn.MaxPool2d(3, 2, name="maxpool2")(x)
        x = InceptionA(192, 32, w, name="Mixed_5b")(x, train=train)
        x = InceptionA(256, 64, w, name="Mixed_5c")(x, train=train)
        x = InceptionA(288, 64, w, name="Mixed_5d")(x, train=train)
        x = InceptionB(288, w, name="Mixed_6a")(x, train=train)
        x = InceptionC(768, 128, w, name="Mixed_6b")(x, train=train)
        x = InceptionC(768, 160, w, name="Mixed_6c")(x, train=train)
        x = InceptionC(768, 160, w, name="Mixed_6d")(x, train=train)
        x = InceptionC(768, 192, w, name="Mixed_6e")(x, train=train)
        aux = None
        if self.aux_logits and (train or self.is_initializing()):
            head = InceptionAux(768, self.num_classes, init_weights, name="AuxLogits")
            if train:
                aux = head(x, train=train)
            else:
                # init in eval mode creates the head (a torchvision state_dict has it) on a
                # stand-in of the size it needs: eval-mode inputs may be smaller.
                size = (x.shape[0], _AUX_MIN_FEATURES, _AUX_MIN_FEATURES, x.shape[3])
                head(jnp.zeros(size, x.dtype), train=False)
        x = InceptionD(768, w, name="Mixed_7a")(x, train=train)
        x = InceptionE(1280, w, name="Mixed_7b")(x, train=train)
        x = InceptionE(2048, w, name="Mixed_7c")(x, train=train)
        x = cnn.AdaptiveAvgPool2d((1, 1), name="avgpool")(x)
        x = cnn.Dropout(self.dropout, name="dropout")(x, train=train)
        x = cnn.Linear(2048, self.num_classes, weight_init=w, name="fc")(cnn.Flatten()(x))
        if train and self.aux_logits:
            return InceptionOutputs(x, aux)
        return x


@register(
    "inception_v3",
    family="inception",
    torchvision=True,
    min_input_size=75,
    small_input={"aux_logits": False},
)
def inception_v3(
    num_classes: int = 1000,
    in_channels: int = 3,
    aux_logits: bool = True,
    transform_input: bool = False,
    init_weights: bool | None = None,
    dropout: float = 0.5,
) -> Inception3:
    """torchvision's Inception v3 (27.2M parameters with the auxiliary head, 23.8M without;
    299×299 input)."""
    return Inception3(num_classes, aux_logits, transform_input, init_weights, dropout, in_channels)
