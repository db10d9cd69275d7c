"""torchvision's ResNet family: ResNet-18/34/50/101/152, ResNeXt and Wide ResNet, with its exact
layout, initialisation, stride placement and constructor arguments (``zero_init_residual``,
``groups``, ``width_per_group``, ``replace_stride_with_dilation``)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

import cnn_jax.nn as cnn
from cnn_jax import functional as F
from cnn_jax._utils import check_model_input
from cnn_jax.models.registry import register
from cnn_jax.nn.init import kaiming_normal_fan_out, zeros

Array = jax.Array


def _conv(
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    name: str | None = None,
) -> cnn.Conv2d:
    # torchvision: bias-free convs, kaiming-normal (fan_out, ReLU); a 3x3 pads by its dilation.
    return cnn.Conv2d(
        cin,
        cout,
        k,
        stride=stride,
        padding=dilation * (k // 2),
        dilation=dilation,
        groups=groups,
        bias=False,
        weight_init=kaiming_normal_fan_out,
        name=name,
    )


def _last_bn(features: int, zero_init: bool, name: str) -> cnn.BatchNorm2d:
    """The block's last BatchNorm: scale 0 with ``zero_init_residual`` (the block then starts as
    the identity, as torchvision's option does), else torch's 1."""
    return cnn.BatchNorm2d(features, weight_init=zeros if zero_init else None, name=name)


def _check_basic_block(groups: int, base_width: int, dilation: int) -> None:
    if groups != 1 or base_width != 64:
        raise ValueError(
            "BasicBlock only supports groups=1 and base_width=64 (width_per_group); use "
            "Bottleneck blocks (resnet50 and deeper) for ResNeXt or wide widths"
        )
    if dilation > 1:
        raise ValueError(
            "BasicBlock does not support dilation > 1 (replace_stride_with_dilation); use "
            "Bottleneck blocks (resnet50 and deeper)"
        )


class BasicBlock(nn.Module):
    """Two 3×3 convs with BatchNorm and an identity (or projected) shortcut; expansion 1.

    torchvision's BasicBlock takes only ``groups=1``, ``base_width=64`` and ``dilation=1``."""

    inplanes: int
    planes: int
    stride: int = 1
    groups: int = 1
    base_width: int = 64
    dilation: int = 1
    zero_init_residual: bool = False
    expansion = 1

    def __post_init__(self) -> None:
        _check_basic_block(self.groups, self.base_width, self.dilation)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        relu = cnn.ReLU(name="relu")  # one module called twice, as torchvision's self.relu
        out = _conv(self.inplanes, self.planes, 3, self.stride, name="conv1")(x)
        out = relu(cnn.BatchNorm2d(self.planes, name="bn1")(out, train=train))
        out = _conv(self.planes, self.planes, 3, name="conv2")(out)
        out = _last_bn(self.planes, self.zero_init_residual, "bn2")(out, train=train)
        return F.materialize(relu(out + _shortcut(self, x, train)))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride, as torchvision's "ResNet v1.5"; grouped for
    ResNeXt), 1×1 expand ×4. The inner width is ``int(planes * base_width / 64) * groups``."""

    inplanes: int
    planes: int
    stride: int = 1
    groups: int = 1
    base_width: int = 64
    dilation: int = 1
    zero_init_residual: bool = False
    expansion = 4

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        width = int(self.planes * (self.base_width / 64.0)) * self.groups
        relu = cnn.ReLU(name="relu")  # one module called three times, as torchvision's self.relu
        out = _conv(self.inplanes, width, 1, name="conv1")(x)
        out = relu(cnn.BatchNorm2d(width, name="bn1")(out, train=train))
        out = _conv(width, width, 3, self.stride, self.groups, self.dilation, name="conv2")(out)
        out = relu(cnn.BatchNorm2d(width, name="bn2")(out, train=train))
        out = _conv(width, self.planes * 4, 1, name="conv3")(out)
        out = _last_bn(self.planes * 4, self.zero_init_residual, "bn3")(out, train=train)
        return F.materialize(relu(out + _shortcut(self, x, train)))


def _shortcut(block, x: Array, train: bool) -> Array:
    cout = block.planes * block.expansion
    if block.stride == 1 and block.inplanes == cout:
        return x
    # Named 'downsample' with children '0' (conv) and '1' (bn), as torchvision's Sequential.
    down = cnn.Sequential(
        (_conv(block.inplanes, cout, 1, block.stride), cnn.BatchNorm2d(cout)),
        parent=block,
        name="downsample",
    )
    return down(x, train=train)


class ResNet(nn.Module):
    """torchvision's ``ResNet``: stem (7×7/2 conv, BN, ReLU, 3×3/2 max pool), four stages
    ``layer1``..``layer4`` of ``block``s (the first block of stages 2–4 halves the resolution),
    global average pooling and ``fc``. Default input 224×224; anything from 32×32 works.

    Attributes:
      block, layers: the block type and the number of blocks per stage.
      zero_init_residual: start each block's last BatchNorm scale at 0 (torchvision's option).
      groups, width_per_group: ResNeXt's cardinality and width (Bottleneck only): the 3×3 conv
        of a stage with ``planes`` has ``int(planes * width_per_group / 64) * groups`` channels.
      replace_stride_with_dilation: three bools for stages 2–4: keep the resolution and dilate
        the following 3×3 convs instead (Bottleneck only; torchvision's segmentation backbones).
      width: the stem width (torchvision: 64); every stage scales with it, for miniatures.

    >>> model = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), width=8, num_classes=3)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 3)
    """

    block: type[BasicBlock] | type[Bottleneck] = BasicBlock
    layers: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 1000
    in_channels: int = 3
    width: int = 64
    zero_init_residual: bool = False
    groups: int = 1
    width_per_group: int = 64
    replace_stride_with_dilation: Sequence[bool] | None = None

    def __post_init__(self) -> None:
        dilate = self.replace_stride_with_dilation
        if dilate is not None and len(dilate) != 3:
            raise ValueError(
                f"replace_stride_with_dilation should be None or a 3-element tuple, got {dilate}"
            )
        # torchvision builds its blocks in the constructor, so a block's refusal (BasicBlock
        # with groups or dilation) comes here too rather than at the first call.
        if self.block is BasicBlock:
            for _, blocks in self._stages():
                for args in blocks:
                    _check_basic_block(self.groups, self.width_per_group, args["dilation"])
        super().__post_init__()

    def _stages(self) -> list[tuple[int, list[dict]]]:
        """Per stage: its ``planes`` and each block's arguments, as torchvision's ``_make_layer``
        computes them (a dilated stage's first block keeps the previous dilation)."""
        dilate = [False, *(self.replace_stride_with_dilation or (False,) * 3)]
        w, inplanes, dilation, stages = self.width, self.width, 1, []
        for stage, blocks in enumerate(self.layers):
            planes = w * 2**stage
            stride = 1 if stage == 0 else 2
            previous_dilation = dilation
            if dilate[stage]:  # the stride becomes a dilation
                dilation, stride = dilation * stride, 1
            args = []
            for i in range(blocks):
                args.append(
                    dict(
                        inplanes=inplanes,
                        planes=planes,
                        stride=stride if i == 0 else 1,
                        dilation=previous_dilation if i == 0 else dilation,
                    )
                )
                inplanes = planes * self.block.expansion
            stages.append((planes, args))
        return stages

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "ResNet", self.in_channels)
        w = self.width
        x = _conv(self.in_channels, w, 7, 2, name="conv1")(x)
        x = cnn.ReLU(name="relu")(cnn.BatchNorm2d(w, name="bn1")(x, train=train))
        x = cnn.MaxPool2d(3, 2, 1, name="maxpool")(x)
        inplanes = w
        for stage, (planes, blocks) in enumerate(self._stages()):
            stage_blocks = tuple(
                self.block(
                    **args,
                    groups=self.groups,
                    base_width=self.width_per_group,
                    zero_init_residual=self.zero_init_residual,
                )
                for args in blocks
            )
            inplanes = planes * self.block.expansion
            x = cnn.Sequential(stage_blocks, name=f"layer{stage + 1}")(x, train=train)
        x = cnn.Flatten()(cnn.AdaptiveAvgPool2d((1, 1), name="avgpool")(x))
        return cnn.Linear(inplanes, self.num_classes, name="fc")(x)


def _fixed(name: str, value: int, expected: int) -> None:
    """torchvision's ``_ovewrite_named_param``: a model that fixes an argument accepts it only
    with the fixed value."""
    if value != expected:
        raise ValueError(
            f"The parameter '{name}' expected value {expected} but got {value} instead."
        )


def _resnet_factory(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: tuple[int, int, int, int],
    doc: str,
    groups: int | None = None,
    width_per_group: int | None = None,
):
    """Registers torchvision's constructor ``name``. Models that fix ``groups`` or
    ``width_per_group`` (ResNeXt, Wide ResNet) take them only with those values, as
    torchvision's; the others take any (Bottleneck) or the defaults (BasicBlock)."""
    fixed_groups, fixed_width = groups, width_per_group

    def factory(
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        groups: int = fixed_groups or 1,
        width_per_group: int = fixed_width or 64,
        replace_stride_with_dilation: Sequence[bool] | None = None,
    ) -> ResNet:
        if fixed_groups is not None:
            _fixed("groups", groups, fixed_groups)
        if fixed_width is not None:
            _fixed("width_per_group", width_per_group, fixed_width)
        return ResNet(
            block,
            layers,
            num_classes,
            in_channels,
            zero_init_residual=zero_init_residual,
            groups=groups,
            width_per_group=width_per_group,
            replace_stride_with_dilation=replace_stride_with_dilation,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return register(name, family="resnet", torchvision=True)(factory)


# The smallest first: the default test suite checks the first registered model of a family.
resnet18 = _resnet_factory(
    "resnet18", BasicBlock, (2, 2, 2, 2), "torchvision's ResNet-18 (11.7M parameters)."
)
resnet34 = _resnet_factory(
    "resnet34", BasicBlock, (3, 4, 6, 3), "torchvision's ResNet-34 (21.8M parameters)."
)
resnet50 = _resnet_factory(
    "resnet50",
    Bottleneck,
    (3, 4, 6, 3),
    "torchvision's ResNet-50 (25.6M parameters), stride on the 3×3 conv of each Bottleneck.",
)
resnet101 = _resnet_factory(
    "resnet101", Bottleneck, (3, 4, 23, 3), "torchvision's ResNet-101 (44.5M parameters)."
)
resnet152 = _resnet_factory(
    "resnet152", Bottleneck, (3, 8, 36, 3), "torchvision's ResNet-152 (60.2M parameters)."
)
resnext50_32x4d = _resnet_factory(
    "resnext50_32x4d",
    Bottleneck,
    (3, 4, 6, 3),
    "torchvision's ResNeXt-50 32x4d (25.0M parameters): 32 groups of width 4.",
    groups=32,
    width_per_group=4,
)
resnext101_32x8d = _resnet_factory(
    "resnext101_32x8d",
    Bottleneck,
    (3, 4, 23, 3),
    "torchvision's ResNeXt-101 32x8d (88.8M parameters).",
    groups=32,
    width_per_group=8,
)
resnext101_64x4d = _resnet_factory(
    "resnext101_64x4d",
    Bottleneck,
    (3, 4, 23, 3),
    "torchvision's ResNeXt-101 64x4d (83.5M parameters).",
    groups=64,
    width_per_group=4,
)
wide_resnet50_2 = _resnet_factory(
    "wide_resnet50_2",
    Bottleneck,
    (3, 4, 6, 3),
    "torchvision's Wide ResNet-50-2 (68.9M parameters): Bottleneck inner widths doubled.",
    width_per_group=128,
)
wide_resnet101_2 = _resnet_factory(
    "wide_resnet101_2",
    Bottleneck,
    (3, 4, 23, 3),
    "torchvision's Wide ResNet-101-2 (126.9M parameters).",
    width_per_group=128,
)
