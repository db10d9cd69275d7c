"""The course's networks and torchvision's classics, by name.

>>> from cnn_jax.models import create, list_models
>>> model = create('resnet18', num_classes=10)

Every model takes ``train`` at call time, has torch's module layout (so
``cnn_jax.interop.from_torch`` loads a torch ``state_dict`` with no glue) and an
``example_input_shape()`` giving its documented default input.
"""

from cnn_jax.models.alexnet import AlexNet, alexnet
from cnn_jax.models.convnext import (
    CNBlockConfig,
    ConvNeXt,
    convnext_base,
    convnext_large,
    convnext_small,
    convnext_tiny,
)
from cnn_jax.models.registry import create, list_models, register
from cnn_jax.models.regnet import (
    BlockParams,
    RegNet,
    regnet_x_1_6gf,
    regnet_x_3_2gf,
    regnet_x_8gf,
    regnet_x_16gf,
    regnet_x_32gf,
    regnet_x_400mf,
    regnet_x_800mf,
    regnet_y_1_6gf,
    regnet_y_3_2gf,
    regnet_y_8gf,
    regnet_y_16gf,
    regnet_y_32gf,
    regnet_y_128gf,
    regnet_y_400mf,
    regnet_y_800mf,
)
from cnn_jax.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from cnn_jax.models.shufflenet import (
    ShuffleNetV2,
    shufflenet_v2_x0_5,
    shufflenet_v2_x1_0,
    shufflenet_v2_x1_5,
    shufflenet_v2_x2_0,
)
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
    "BlockParams",
    "Bottleneck",
    "CNBlockConfig",
    "CifarCNN",
    "ConvNeXt",
    "ConvNet",
    "LeNet5",
    "RegNet",
    "ResNet",
    "ShuffleNetV2",
    "SimpleCNN",
    "alexnet",
    "cifar_cnn",
    "convnet",
    "convnext_base",
    "convnext_large",
    "convnext_small",
    "convnext_tiny",
    "create",
    "lenet5",
    "list_models",
    "mlp",
    "register",
    "regnet_x_1_6gf",
    "regnet_x_3_2gf",
    "regnet_x_8gf",
    "regnet_x_16gf",
    "regnet_x_32gf",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_y_1_6gf",
    "regnet_y_3_2gf",
    "regnet_y_8gf",
    "regnet_y_16gf",
    "regnet_y_32gf",
    "regnet_y_128gf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "resnet18",
    "resnet34",
    "resnet50",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "simple_cnn",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
]
