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


MINIATURES: tuple[Miniature, ...] = tuple(Miniature(*builders) for builders in _BUILDERS)
"""Every miniature, in the order the tests list them."""
