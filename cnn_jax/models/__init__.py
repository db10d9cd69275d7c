"""The course's networks and torchvision's classics, by name.

>>> from cnn_jax.models import create, list_models
>>> model = create('resnet18', num_classes=10)

Every model takes ``train`` at call time, has torch's module layout (so
``cnn_jax.interop.from_torch`` loads a torch ``state_dict`` with no glue) and an
``example_input_shape()`` giving its documented default input.
"""

from cnn_jax.models.alexnet import AlexNet, alexnet
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
    "LeNet5",
    "ResNet",
    "SimpleCNN",
    "alexnet",
    "cifar_cnn",
    "convnet",
    "create",
    "lenet5",
    "list_models",
    "mlp",
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
