"""The course's networks and torchvision's classification families, by name.

>>> from cnn_jax.models import create, list_models
>>> model = create('resnet18', num_classes=10)

Every model takes ``train`` at call time, has torch's module layout (so
``cnn_jax.interop.from_torch`` loads a torch ``state_dict`` with no glue) and an
``example_input_shape()`` giving its documented default input. GoogLeNet and Inception v3
return torchvision's named tuples of logits in training (:mod:`cnn_jax.models.outputs`).
"""

from cnn_jax.models.alexnet import AlexNet, alexnet
from cnn_jax.models.densenet import DenseNet, densenet121, densenet161, densenet169, densenet201
from cnn_jax.models.googlenet import GoogLeNet, GoogLeNetOutputs, googlenet
from cnn_jax.models.inception import Inception3, InceptionOutputs, inception_v3
from cnn_jax.models.outputs import logits_terms, loss_terms, main_logits
from cnn_jax.models.registry import create, list_models, register
from cnn_jax.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
    wide_resnet50_2,
    wide_resnet101_2,
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
from cnn_jax.models.squeezenet import SqueezeNet, squeezenet1_0, squeezenet1_1
from cnn_jax.models.vgg import (
    CONFIGS,
    VGG,
    vgg11,
    vgg11_bn,
    vgg13,
    vgg13_bn,
    vgg16,
    vgg16_bn,
    vgg19,
    vgg19_bn,
)

__all__ = [
    "CONFIGS",
    "MLP",
    "VGG",
    "AlexNet",
    "BasicBlock",
    "Bottleneck",
    "CifarCNN",
    "ConvNet",
    "DenseNet",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "Inception3",
    "InceptionOutputs",
    "LeNet5",
    "ResNet",
    "SimpleCNN",
    "SqueezeNet",
    "alexnet",
    "cifar_cnn",
    "convnet",
    "create",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "googlenet",
    "inception_v3",
    "lenet5",
    "list_models",
    "logits_terms",
    "loss_terms",
    "main_logits",
    "mlp",
    "register",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "simple_cnn",
    "squeezenet1_0",
    "squeezenet1_1",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "wide_resnet50_2",
    "wide_resnet101_2",
]
