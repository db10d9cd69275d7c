"""The course's networks and torchvision's classics, by name.

>>> from cnn_jax.models import create, list_models
>>> model = create('resnet18', num_classes=10)

Every model takes ``train`` at call time, has torch's module layout (so
``cnn_jax.interop.from_torch`` loads a torch ``state_dict`` with no glue) and an
``example_input_shape()`` giving its documented default input.
"""

from cnn_jax.models.alexnet import AlexNet, alexnet
from cnn_jax.models.efficientnet import (
    EfficientNet,
    FusedMBConv,
    FusedMBConvConfig,
    MBConv,
    MBConvConfig,
    efficientnet_b0,
    efficientnet_b1,
    efficientnet_b2,
    efficientnet_b3,
    efficientnet_b4,
    efficientnet_b5,
    efficientnet_b6,
    efficientnet_b7,
    efficientnet_config,
    efficientnet_v2_l,
    efficientnet_v2_m,
    efficientnet_v2_s,
)
from cnn_jax.models.mnasnet import MNASNet, mnasnet0_5, mnasnet0_75, mnasnet1_0, mnasnet1_3
from cnn_jax.models.mobilenetv2 import MobileNetV2, mobilenet_v2
from cnn_jax.models.mobilenetv3 import (
    InvertedResidualConfig,
    MobileNetV3,
    mobilenet_v3_config,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
from cnn_jax.models.registry import create, list_models, register
from cnn_jax.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from cnn_jax.models.small import (
    MLP,
    CifarCNN,
    ConvNet,
    LeNet5,
    SimpleCNN,
    cifar_cnn,
    convnet,
    lenet5,
    mlp,
    simple_cnn,
)
from cnn_jax.models.vgg import CONFIGS, VGG, vgg11, vgg11_bn, vgg16, vgg16_bn

__all__ = [
    "CONFIGS",
    "MLP",
    "VGG",
    "AlexNet",
    "BasicBlock",
    "Bottleneck",
    "CifarCNN",
    "ConvNet",
    "EfficientNet",
    "FusedMBConv",
    "FusedMBConvConfig",
    "InvertedResidualConfig",
    "LeNet5",
    "MBConv",
    "MBConvConfig",
    "MNASNet",
    "MobileNetV2",
    "MobileNetV3",
    "ResNet",
    "SimpleCNN",
    "alexnet",
    "cifar_cnn",
    "convnet",
    "create",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_config",
    "efficientnet_v2_l",
    "efficientnet_v2_m",
    "efficientnet_v2_s",
    "lenet5",
    "list_models",
    "mlp",
    "mnasnet0_5",
    "mnasnet0_75",
    "mnasnet1_0",
    "mnasnet1_3",
    "mobilenet_v2",
    "mobilenet_v3_config",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "register",
    "resnet18",
    "resnet34",
    "resnet50",
    "simple_cnn",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
]
