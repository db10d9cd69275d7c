"""Miniatures: small models built from the classes of a registered family (few blocks of each
kind), each beside its reference built from the same settings: torchvision's own classes for
torchvision's families, :mod:`cnn_jax.testing.torch_models`' restatements for the course's.

The full models of :data:`cnn_jax.testing.zoo.SLOW_FAMILIES` compile too slowly for the default
test suite; their miniatures carry the default suite's checks of those families (parity with
the reference in ``tests/test_models.py``, float32 gradients in
``tests/test_float32_gradients.py``), and ``pytest -m slow`` checks the full models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.nn as cnn
import cnn_jax.testing.torch_models as torch_models
from cnn_jax.models import (
    VGG,
    BlockParams,
    Bottleneck,
    CNBlockConfig,
    ConvNeXt,
    DenseNet,
    EfficientNet,
    FusedMBConvConfig,
    InvertedResidualConfig,
    MBConvConfig,
    MobileNetV2,
    MobileNetV3,
    RegNet,
    ResNet,
    ShuffleNetV2,
    create,
    efficientnet_config,
)
from cnn_jax.models.googlenet import BasicConv2d as GoogLeNetConv
from cnn_jax.models.googlenet import GoogLeNetOutputs, Inception
from cnn_jax.models.googlenet import InceptionAux as GoogLeNetAux
from cnn_jax.models.inception import (
    BasicConv2d as InceptionConv,
)
from cnn_jax.models.inception import (
    InceptionA,
    InceptionAux,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
    InceptionOutputs,
)
from cnn_jax.models.mnasnet import BN_MOMENTUM as MNASNET_BN_MOMENTUM
from cnn_jax.models.mnasnet import _bn as mnasnet_bn
from cnn_jax.models.mnasnet import _conv as mnasnet_conv
from cnn_jax.models.mnasnet import _stack as mnasnet_stack


@dataclasses.dataclass(frozen=True)
class Miniature:
    """A miniature: ``ours(**kw)`` builds the cnn_jax model and ``reference(**kw)`` its torch
    reference from the same keyword arguments (:func:`cnn_jax.testing.zoo.kwargs` of ``base``,
    the registered model whose family it stands for and whose test input size it takes)."""

    label: str
    base: str
    ours: Callable
    reference: Callable


def _tv(module: str, name: str):
    """A class of torchvision's own model code, the reference of a torchvision family's
    miniature; the test asking for it is skipped when torchvision is not installed."""
    cls = torch_models.torchvision_class(module, name)
    if cls is None:
        import pytest

        pytest.skip("torchvision is not installed: it is this miniature's reference")
    return cls


_CONVNET_TANH = dict(
    activation="tanh",
    batch_norm=True,
    head="flatten",
    convs_per_block=2,
    channels=(8, 16),
    hidden=24,
)

# (label, base, ours, reference): see Miniature.
_BUILDERS = [
    (
        "convnet_tanh_bn_flatten",
        "convnet",
        lambda **kw: create("convnet", **_CONVNET_TANH, **kw),
        lambda **kw: torch_models.restatement("convnet", **_CONVNET_TANH, **kw),
    ),
    (
        "convnet_sigmoid_gap",
        "convnet",
        lambda **kw: create("convnet", activation="sigmoid", channels=(8, 16), **kw),
        lambda **kw: torch_models.restatement(
            "convnet", activation="sigmoid", channels=(8, 16), **kw
        ),
    ),
    (
        "mini_vgg_bn",
        "vgg11_bn",
        lambda **kw: VGG(
            cfg=(8, "M", 16, 16, "M", 16), batch_norm=True, hidden=24, pool_size=3, **kw
        ),
        lambda **kw: torch_models.VGG(
            (8, "M", 16, 16, "M", 16), batch_norm=True, hidden=24, pool_size=3, **kw
        ),
    ),
    (
        "mini_resnet_bottleneck",
        "resnet50",
        lambda **kw: ResNet(Bottleneck, (1, 2, 1, 1), width=8, **kw),
        lambda **kw: torch_models.ResNet(torch_models.Bottleneck, (1, 2, 1, 1), width=8, **kw),
    ),
]


# Miniatures of torchvision's configurable classes, against those classes themselves: ResNeXt
# widths with dilated stages, and a two-block DenseNet (densenet121 itself runs under -m slow).
_BUILDERS += [
    (
        "mini_resnext_dilated",
        "resnet50",
        lambda **kw: ResNet(
            Bottleneck,
            (1, 1, 2, 1),
            groups=4,
            width_per_group=8,
            replace_stride_with_dilation=(False, True, True),
            **kw,
        ),
        lambda **kw: _tv("resnet", "ResNet")(
            _tv("resnet", "Bottleneck"),
            [1, 1, 2, 1],
            groups=4,
            width_per_group=8,
            replace_stride_with_dilation=[False, True, True],
            **kw,
        ),
    ),
    (
        "mini_densenet",
        "densenet121",
        lambda **kw: DenseNet(8, (2, 2), 16, bn_size=2, **kw),
        lambda **kw: _tv("densenet", "DenseNet")(8, (2, 2), 16, bn_size=2, **kw),
    ),
]


MOBILENET_V2_MINI = [[1, 16, 1, 1], [6, 24, 2, 2], [4, 40, 1, 2]]


def _tv_mobilenet_v3_settings(config):
    return [
        config(16, 3, 16, 16, True, "RE", 2, 1, 1.0),
        config(16, 3, 48, 24, False, "HS", 2, 1, 1.0),
        config(24, 5, 64, 24, True, "HS", 1, 1, 1.0),
    ]


def _regnet_params(block_params, se_ratio):
    return block_params.from_init_params(
        depth=3, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=se_ratio
    )


# Miniatures of the families whose smallest model is too slow to compile for the default suite
# (zoo.SLOW_FAMILIES), few layers of each block type against torchvision's classes; the full
# models run under -m slow.
_BUILDERS += [
    (
        "mini_mobilenet_v2",
        "mobilenet_v2",
        lambda **kw: MobileNetV2(
            width_mult=0.5, round_nearest=4, inverted_residual_setting=MOBILENET_V2_MINI, **kw
        ),
        lambda **kw: _tv("mobilenetv2", "MobileNetV2")(
            width_mult=0.5, round_nearest=4, inverted_residual_setting=MOBILENET_V2_MINI, **kw
        ),
    ),
    (
        "mini_mobilenet_v3",
        "mobilenet_v3_small",
        lambda **kw: MobileNetV3(_tv_mobilenet_v3_settings(InvertedResidualConfig.make), 64, **kw),
        lambda **kw: _tv("mobilenetv3", "MobileNetV3")(
            _tv_mobilenet_v3_settings(_tv("mobilenetv3", "InvertedResidualConfig")),
            64,
            **kw,
        ),
    ),
    (
        "mini_efficientnet",
        "efficientnet_b0",
        lambda **kw: EfficientNet(
            efficientnet_config("efficientnet_b0", 0.5, 0.25)[0], last_channel=64, **kw
        ),
        lambda **kw: _tv("efficientnet", "EfficientNet")(
            _tv("efficientnet", "_efficientnet_conf")(
                "efficientnet_b0", width_mult=0.5, depth_mult=0.25
            )[0],
            last_channel=64,
            **kw,
        ),
    ),
    (
        "mini_efficientnet_v2",
        "efficientnet_v2_s",
        lambda **kw: EfficientNet(
            (
                FusedMBConvConfig(1, 3, 1, 16, 16, 1),
                FusedMBConvConfig(4, 3, 2, 16, 24, 1),
                MBConvConfig.make(4, 3, 2, 24, 32, 2),
            ),
            last_channel=64,
            **kw,
        ),
        lambda **kw: _tv("efficientnet", "EfficientNet")(
            [
                _tv("efficientnet", "FusedMBConvConfig")(1, 3, 1, 16, 16, 1),
                _tv("efficientnet", "FusedMBConvConfig")(4, 3, 2, 16, 24, 1),
                _tv("efficientnet", "MBConvConfig")(4, 3, 2, 24, 32, 2),
            ],
            last_channel=64,
            **kw,
        ),
    ),
    (
        "mini_regnet_x",
        "regnet_x_400mf",
        lambda **kw: RegNet(_regnet_params(BlockParams, None), stem_width=8, **kw),
        lambda **kw: _tv("regnet", "RegNet")(
            _regnet_params(_tv("regnet", "BlockParams"), None), stem_width=8, **kw
        ),
    ),
    (
        "mini_regnet_y",
        "regnet_y_400mf",
        lambda **kw: RegNet(_regnet_params(BlockParams, 0.25), stem_width=8, **kw),
        lambda **kw: _tv("regnet", "RegNet")(
            _regnet_params(_tv("regnet", "BlockParams"), 0.25), stem_width=8, **kw
        ),
    ),
    (
        "mini_convnext",
        "convnext_tiny",
        lambda **kw: ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 2)], **kw),
        lambda **kw: _tv("convnext", "ConvNeXt")(
            [
                _tv("convnext", "CNBlockConfig")(8, 16, 1),
                _tv("convnext", "CNBlockConfig")(16, None, 2),
            ],
            **kw,
        ),
    ),
    (
        "mini_shufflenet_v2",
        "shufflenet_v2_x0_5",
        lambda **kw: ShuffleNetV2((2, 1, 1), (8, 16, 32, 64, 128), **kw),
        lambda **kw: _tv("shufflenetv2", "ShuffleNetV2")([2, 1, 1], [8, 16, 32, 64, 128], **kw),
    ),
]


# GoogLeNet, Inception v3 and MNASNet have no width or depth arguments: their miniatures are a
# few of the families' own blocks (cnn_jax's against torchvision's classes) in a small network
# of the same layout, written out twice below: once in flax, once in torch.


class MiniGoogLeNet(nn.Module):
    """GoogLeNet's classes at small widths: a ``BasicConv2d`` stem, two ``Inception`` modules
    each followed by an ``InceptionAux`` head (``aux1``, ``aux2``), global average pooling,
    dropout and ``fc``; train-mode output :class:`GoogLeNetOutputs`, as torchvision's."""

    num_classes: int = 5
    aux_logits: bool = True
    dropout: float = 0.2
    dropout_aux: float = 0.7

    def example_input_shape(self) -> tuple[int, ...]:
        return (1, 64, 64, 3)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array | GoogLeNetOutputs:
        run_aux = self.aux_logits and (train or self.is_initializing())
        aux = lambda cin, name: GoogLeNetAux(cin, self.num_classes, self.dropout_aux, name=name)
        x = GoogLeNetConv(3, 8, 3, stride=2, padding=1, name="conv1")(x, train=train)
        x = cnn.MaxPool2d(3, 2, ceil_mode=True, name="maxpool1")(x)
        x = Inception(8, *MINI_INCEPTION_3A, name="inception3a")(x, train=train)
        aux1 = aux(_MINI_3A_OUT, "aux1")(x, train=train) if run_aux else None
        x = Inception(_MINI_3A_OUT, *MINI_INCEPTION_3B, name="inception3b")(x, train=train)
        aux2 = aux(_MINI_3B_OUT, "aux2")(x, train=train) if run_aux else None
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d((1, 1), name="avgpool")(x))
        x = cnn.Dropout(self.dropout, name="dropout")(x, train=train)
        x = cnn.Linear(_MINI_3B_OUT, self.num_classes, name="fc")(x)
        if train and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


MINI_INCEPTION_3A = (4, 4, 8, 2, 4, 4)  # Inception's (ch1x1, ch3x3red, ch3x3, ch5x5red, ...)
MINI_INCEPTION_3B = (8, 4, 8, 2, 4, 4)


def _inception_out(cfg: tuple[int, ...]) -> int:
    """Output channels of an ``Inception`` module: its four branches' concatenated."""
    ch1x1, _, ch3x3, _, ch5x5, pool_proj = cfg
    return ch1x1 + ch3x3 + ch5x5 + pool_proj


_MINI_3A_OUT, _MINI_3B_OUT = _inception_out(MINI_INCEPTION_3A), _inception_out(MINI_INCEPTION_3B)


def _torch_mini_googlenet(
    num_classes: int = 5, aux_logits: bool = True, dropout: float = 0.2, dropout_aux: float = 0.7
):
    """:class:`MiniGoogLeNet` in torch, from torchvision's GoogLeNet classes."""
    import torch

    conv, inception, aux = (
        _tv("googlenet", name) for name in ("BasicConv2d", "Inception", "InceptionAux")
    )
    outputs = _tv("googlenet", "GoogLeNetOutputs")

    class Mini(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = conv(3, 8, kernel_size=3, stride=2, padding=1)
            self.maxpool1 = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
            self.inception3a = inception(8, *MINI_INCEPTION_3A)
            self.inception3b = inception(_MINI_3A_OUT, *MINI_INCEPTION_3B)
            self.aux1 = aux(_MINI_3A_OUT, num_classes, dropout=dropout_aux) if aux_logits else None
            self.aux2 = aux(_MINI_3B_OUT, num_classes, dropout=dropout_aux) if aux_logits else None
            self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = torch.nn.Dropout(dropout)
            self.fc = torch.nn.Linear(_MINI_3B_OUT, num_classes)

        def forward(self, x):
            x = self.inception3a(self.maxpool1(self.conv1(x)))
            run_aux = self.training and self.aux1 is not None
            aux1 = self.aux1(x) if run_aux else None
            x = self.inception3b(x)
            aux2 = self.aux2(x) if run_aux else None
            x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
            return outputs(x, aux2, aux1) if run_aux else x

    return Mini()


class MiniInception3(nn.Module):
    """Inception v3's classes at its own widths, one of each: a ``BasicConv2d`` stem,
    ``InceptionA`` to ``InceptionE``, the ``InceptionAux`` head on ``InceptionC``'s output (18x18
    at the tests' 75x75 input, enough for the head's 5x5 pool and 5x5 convolution), global average
    pooling, dropout and ``fc``; train-mode output :class:`InceptionOutputs`."""

    num_classes: int = 5
    aux_logits: bool = True
    dropout: float = 0.5

    def example_input_shape(self) -> tuple[int, ...]:
        return (1, 75, 75, 3)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array | InceptionOutputs:
        x = InceptionConv(3, 8, 3, stride=2, name="Conv2d_1a_3x3")(x, train=train)
        x = InceptionA(8, 8, name="Mixed_5b")(x, train=train)  # 232 channels
        x = InceptionB(232, name="Mixed_6a")(x, train=train)  # 712
        x = InceptionC(712, 16, name="Mixed_6b")(x, train=train)  # 768
        aux = None
        if self.aux_logits and (train or self.is_initializing()):
            aux = InceptionAux(768, self.num_classes, name="AuxLogits")(x, train=train)
        x = InceptionD(768, name="Mixed_7a")(x, train=train)  # 1280
        x = InceptionE(1280, name="Mixed_7b")(x, train=train)  # 2048
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d((1, 1), name="avgpool")(x))
        x = cnn.Dropout(self.dropout, name="dropout")(x, train=train)
        x = cnn.Linear(2048, self.num_classes, name="fc")(x)
        if train and self.aux_logits:
            return InceptionOutputs(x, aux)
        return x


def _torch_mini_inception3(num_classes: int = 5, aux_logits: bool = True, dropout: float = 0.5):
    """:class:`MiniInception3` in torch, from torchvision's Inception v3 classes."""
    import torch

    tv = {name: _tv("inception", name) for name in (
        "BasicConv2d", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE",
        "InceptionAux", "InceptionOutputs",
    )}  # fmt: skip

    class Mini(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.Conv2d_1a_3x3 = tv["BasicConv2d"](3, 8, kernel_size=3, stride=2)
            self.Mixed_5b = tv["InceptionA"](8, pool_features=8)
            self.Mixed_6a = tv["InceptionB"](232)
            self.Mixed_6b = tv["InceptionC"](712, channels_7x7=16)
            self.AuxLogits = tv["InceptionAux"](768, num_classes) if aux_logits else None
            self.Mixed_7a = tv["InceptionD"](768)
            self.Mixed_7b = tv["InceptionE"](1280)
            self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = torch.nn.Dropout(dropout)
            self.fc = torch.nn.Linear(2048, num_classes)

        def forward(self, x):
            x = self.Mixed_6b(self.Mixed_6a(self.Mixed_5b(self.Conv2d_1a_3x3(x))))
            run_aux = self.training and self.AuxLogits is not None
            aux = self.AuxLogits(x) if run_aux else None
            x = self.Mixed_7b(self.Mixed_7a(x))
            x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
            return tv["InceptionOutputs"](x, aux) if run_aux else x

    return Mini()


class MiniMNASNet(nn.Module):
    """MNASNet's classes at small widths: its stem (3x3 conv, depthwise 3x3, 1x1 projection,
    each with BatchNorm), two ``_stack``s of ``_InvertedResidual`` blocks (3x3 and 5x5, with and
    without the residual), a 1x1 conv with BatchNorm and ReLU, the spatial mean and
    ``classifier``; every BatchNorm with MNASNet's momentum, as torchvision's."""

    num_classes: int = 5
    dropout: float = 0.2

    def example_input_shape(self) -> tuple[int, ...]:
        return (1, 64, 64, 3)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        m, conv, bn = MNASNET_BN_MOMENTUM, mnasnet_conv, mnasnet_bn
        x = cnn.Sequential(
            (
                conv(3, 8, 3, 2), bn(8), cnn.ReLU(),
                conv(8, 8, 3, groups=8), bn(8), cnn.ReLU(),
                conv(8, 8, 1), bn(8),
                mnasnet_stack(8, 16, 3, 2, 3, 2, m),
                mnasnet_stack(16, 24, 5, 2, 6, 1, m),
                conv(24, 32, 1), bn(32), cnn.ReLU(),
            ),
            name="layers",
        )(x, train=train)  # fmt: skip
        x = jnp.mean(x, axis=(1, 2))
        return cnn.Sequential(
            (cnn.Dropout(self.dropout), cnn.Linear(32, self.num_classes)), name="classifier"
        )(x, train=train)


def _torch_mini_mnasnet(num_classes: int = 5, dropout: float = 0.2):
    """:class:`MiniMNASNet` in torch, from torchvision's MNASNet ``_stack``."""
    import torch

    stack = _tv("mnasnet", "_stack")
    m = MNASNET_BN_MOMENTUM
    nn_ = torch.nn

    class Mini(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn_.Sequential(
                nn_.Conv2d(3, 8, 3, padding=1, stride=2, bias=False),
                nn_.BatchNorm2d(8, momentum=m), nn_.ReLU(inplace=True),
                nn_.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                nn_.BatchNorm2d(8, momentum=m), nn_.ReLU(inplace=True),
                nn_.Conv2d(8, 8, 1, bias=False), nn_.BatchNorm2d(8, momentum=m),
                stack(8, 16, 3, 2, 3, 2, m),
                stack(16, 24, 5, 2, 6, 1, m),
                nn_.Conv2d(24, 32, 1, bias=False), nn_.BatchNorm2d(32, momentum=m),
                nn_.ReLU(inplace=True),
            )  # fmt: skip
            self.classifier = nn_.Sequential(nn_.Dropout(dropout), nn_.Linear(32, num_classes))

        def forward(self, x):
            return self.classifier(self.layers(x).mean([2, 3]))

    return Mini()


_BUILDERS += [
    ("mini_googlenet", "googlenet", MiniGoogLeNet, _torch_mini_googlenet),
    # The miniature keeps its auxiliary head at the tests' input (the full model's needs 299).
    (
        "mini_inception_v3",
        "inception_v3",
        lambda **kw: MiniInception3(**{**kw, "aux_logits": True}),
        lambda **kw: _torch_mini_inception3(**{**kw, "aux_logits": True}),
    ),
    ("mini_mnasnet", "mnasnet0_5", MiniMNASNet, _torch_mini_mnasnet),
]


MINIATURES: tuple[Miniature, ...] = tuple(Miniature(*builders) for builders in _BUILDERS)
"""Every miniature, in the order the tests list them."""
