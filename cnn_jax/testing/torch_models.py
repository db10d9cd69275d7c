"""PyTorch references of cnn_jax.models: the tests and the style comparison
(experiments/functional_vs_stateful.py) run against them. Importing this module needs torch.

* :func:`restatement` builds the course's own restatement of a model in torch, written with
  torchvision's module layout and key names (the classes below);
* :func:`reference` builds torchvision's own model code where the family is torchvision's and
  torchvision can be imported (its compiled operators are not needed, see
  :func:`torchvision_models`), else the restatement. The model tests use it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from cnn_jax._utils import pair  # imports no JAX: this module stays torch-only


class LeNet5(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5),
            nn.Tanh(),
        )
        self.classifier = nn.Sequential(nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class SimpleCNN(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, input_size=32, hidden=128, dropout=0.5):
        super().__init__()
        h, w = pair(input_size, "input_size")
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = self.drop(torch.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class CifarCNN(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, dropout=0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding="same")
        self.conv2 = nn.Conv2d(32, 64, 3, padding="same")
        self.conv3 = nn.Conv2d(64, 128, 3, padding="same")
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x)).mean(dim=(2, 3))
        return self.fc(self.drop(x))


class MLP(nn.Module):
    def __init__(
        self, num_classes=10, in_channels=3, input_size=32, hidden=(512, 256), dropout=0.0
    ):
        super().__init__()
        h, w = pair(input_size, "input_size")
        features = h * w * in_channels
        self.hidden = len(hidden)
        for i, width in enumerate(hidden):
            setattr(self, f"fc{i + 1}", nn.Linear(features, width))
            features = width
        setattr(self, f"fc{len(hidden) + 1}", nn.Linear(features, num_classes))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = torch.flatten(x, 1)
        for i in range(self.hidden):
            x = self.drop(torch.relu(getattr(self, f"fc{i + 1}")(x)))
        return getattr(self, f"fc{self.hidden + 1}")(x)


class ConvNet(nn.Module):
    _ACT: ClassVar = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}

    def __init__(
        self,
        num_classes=10,
        in_channels=1,
        input_size=32,
        channels=(16, 32, 64),
        convs_per_block=1,
        activation="relu",
        batch_norm=False,
        head="gap",
        hidden=128,
        dropout=0.0,
    ):
        super().__init__()
        act = self._ACT[activation]
        layers, c_in = [], in_channels
        for c_out in channels:
            for _ in range(convs_per_block):
                layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
                layers += [nn.BatchNorm2d(c_out)] if batch_norm else []
                layers.append(act())
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        if head == "gap":
            self.classifier = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Dropout(dropout),
                nn.Linear(c_in, num_classes),
            )
        else:
            h, w = pair(input_size, "input_size")
            r = 2 ** len(channels)
            self.classifier = nn.Sequential(
                nn.Flatten(),
                nn.Linear(c_in * (h // r) * (w // r), hidden),
                act(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )

    def forward(self, x):
        return self.classifier(self.features(x))


class AlexNet(nn.Module):
    def __init__(self, num_classes=1000, in_channels=3, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 36, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class VGG(nn.Module):
    def __init__(
        self,
        cfg,
        batch_norm=False,
        num_classes=1000,
        in_channels=3,
        dropout=0.5,
        hidden=4096,
        pool_size=7,
    ):
        super().__init__()
        layers, c = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(c * pool_size**2, hidden),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1, self.bn1 = _conv(inplanes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                _conv(inplanes, planes, 1, stride), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1, self.bn1 = _conv(inplanes, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, planes * 4, 1), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                _conv(inplanes, planes * 4, 1, stride), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, in_channels=3, width=64):
        super().__init__()
        self.conv1, self.bn1 = _conv(in_channels, width, 7, 2), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for stage, blocks in enumerate(layers):
            planes, stride = width * 2**stage, 1 if stage == 0 else 2
            seq = []
            for i in range(blocks):
                seq.append(block(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*seq))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


VGG_CFGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


def restatement(name: str, **kw) -> nn.Module:
    """The course's torch restatement of ``cnn_jax.models.create(name, **kw)`` (torchvision's
    layout and keys, this module's code)."""
    if name == "lenet5":
        return LeNet5(**kw)
    if name == "simple_cnn":
        return SimpleCNN(**kw)
    if name == "cifar_cnn":
        return CifarCNN(**kw)
    if name == "mlp":
        return MLP(**kw)
    if name == "convnet":
        return ConvNet(**kw)
    if name == "alexnet":
        return AlexNet(**kw)
    if name in ("vgg11", "vgg11_bn", "vgg16", "vgg16_bn"):
        cfg = VGG_CFGS["A" if name.startswith("vgg11") else "D"]
        return VGG(cfg, batch_norm=name.endswith("_bn"), **kw)
    blocks = {
        "resnet18": (BasicBlock, (2, 2, 2, 2)),
        "resnet34": (BasicBlock, (3, 4, 6, 3)),
        "resnet50": (Bottleneck, (3, 4, 6, 3)),
    }
    if name not in blocks:
        raise ValueError(
            f"no torch restatement of {name!r}: its reference is torchvision's own code, which "
            "needs torchvision installed and in_channels=3"
        )
    block, layers = blocks[name]
    return ResNet(block, layers, **kw)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and non-trivial BatchNorm statistics (so eval mode is a real test)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=g) - 0.5)
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=g) - 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
                module.num_batches_tracked.fill_(7)
    return model


def meta_parameters():
    """A context in which torch allocates new tensors (``torch.empty``, ``zeros``, ``ones``,
    ``full``: the parameters and buffers of ``torch.nn`` layers) on the meta device, shapes only,
    while ``torch.arange`` and ``torch.tensor`` still compute on the CPU. Builds a model's layout
    without its memory where ``with torch.device('meta')`` cannot: torchvision's RegNet derives
    its widths with tensor arithmetic that ends in ``.tolist()``, which meta tensors refuse."""
    from torch.overrides import TorchFunctionMode

    allocators = {torch.empty, torch.zeros, torch.ones, torch.full}

    class _MetaParameters(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func in allocators and kwargs.get("device") is None:
                kwargs["device"] = "meta"
            return func(*args, **kwargs)

    return _MetaParameters()


def torchvision_models():
    """``torchvision.models``, or ``None`` when torchvision is not installed.

    The PyPI torchvision wheel is built against CUDA torch; beside a CPU-only torch its compiled
    operators do not load and ``import torchvision`` fails while registering their meta kernels
    (``torchvision._meta_registrations``). The model definitions need none of them (only
    torch.nn), so when that import fails the registrations are skipped with an empty module and
    the import is retried. Detection models and ``torchvision.ops`` then do not work; the
    classification models do.
    """
    import importlib
    import sys
    import types

    try:
        return importlib.import_module("torchvision.models")
    except ModuleNotFoundError:
        return None
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations"
        )
        return importlib.import_module("torchvision.models")


def torchvision_class(module: str, name: str):
    """A class of torchvision's own model code, e.g. ``torchvision_class('densenet',
    'DenseNet')`` (its building blocks and configurable classes, the references of miniatures
    and module tests), or ``None`` when torchvision is not installed."""
    found = torchvision_module(f"models.{module}")
    return None if found is None else getattr(found, name)


def reference(name: str, **kw) -> nn.Module:
    """The PyTorch reference of ``cnn_jax.models.create(name, **kw)``: torchvision's own code
    for a model registered with ``torchvision=True`` (when torchvision can be imported and
    ``in_channels``, which torchvision's models lack, is 3), else :func:`restatement`."""
    import warnings

    from cnn_jax.models import registry

    tv = torchvision_models() if registry.spec(name).torchvision else None
    if tv is None or kw.get("in_channels", 3) != 3:
        return restatement(name, **kw)
    kw.pop("in_channels", None)
    with warnings.catch_warnings():
        # googlenet / inception_v3 without init_weights: torchvision warns that its default may
        # change; the default now (True) is what cnn_jax's models use.
        warnings.filterwarnings("ignore", "The default weight initialization", FutureWarning)
        return getattr(tv, name)(**kw)


def torchvision_module(name: str):
    """``torchvision.<name>`` (e.g. ``'ops.misc'``, ``'ops.stochastic_depth'``,
    ``'models.convnext'``) imported the way :func:`torchvision_models` makes possible, or
    ``None`` when torchvision is not installed. The building blocks in ``torchvision.ops.misc``
    and ``torchvision.ops.stochastic_depth`` need only torch.nn, like the model files."""
    import importlib

    if torchvision_models() is None:
        return None
    return importlib.import_module(f"torchvision.{name}")
