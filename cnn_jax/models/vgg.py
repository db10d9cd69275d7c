"""VGG with torchvision's exact layout and initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models.registry import register
from cnn_jax.nn.init import kaiming_normal_fan_out, normal, zeros

Array = jax.Array

# torchvision's configurations: numbers are conv widths, "M" a 2×2 max pool.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),  # VGG-11
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),  # VGG-13
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),  # VGG-19
}  # fmt: skip


class VGG(nn.Module):
    """torchvision's ``VGG``: ``features`` (3×3 convs, optional BatchNorm, ReLU, 2×2 max pools),
    ``AdaptiveAvgPool2d((pool_size, pool_size))`` and a classifier Linear-ReLU-Dropout ×2 + Linear.

    Initialised as torchvision does: convs kaiming-normal (fan_out, ReLU) with zero bias, Linear
    N(0, 0.01) with zero bias; ``init_weights=False`` keeps torch's layer defaults instead.
    ``cfg``, ``hidden`` and ``pool_size`` default to the real network (vgg16: 138.4M
    parameters); smaller values give a same-code miniature for experiments. Default input
    224×224; anything from 32×32 works.

    >>> model = VGG(cfg=(8, "M", 16, "M"), hidden=32, pool_size=2, num_classes=5)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 5)
    """

    cfg: Sequence[int | str] = CONFIGS["D"]
    batch_norm: bool = False
    num_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.5
    hidden: int = 4096
    pool_size: int = 7
    init_weights: bool = True

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        # Each 2x2 max pool halves the size: 2**pools pixels leave at least 1x1.
        check_model_input(x, "VGG", self.in_channels, min_hw=2 ** list(self.cfg).count("M"))
        layers: list[nn.Module] = []
        channels = self.in_channels
        # torchvision's init_weights; otherwise the layers' own (torch's default) initialisers
        conv_init = dict(weight_init=kaiming_normal_fan_out, bias_init=zeros)
        linear_init = dict(weight_init=normal(0.01), bias_init=zeros)
        if not self.init_weights:
            conv_init = linear_init = {}
        for v in self.cfg:
            if v == "M":
                layers.append(cnn.MaxPool2d(2, 2))
                continue
            layers.append(cnn.Conv2d(channels, v, 3, padding=1, **conv_init))
            if self.batch_norm:
                layers.append(cnn.BatchNorm2d(v))
            layers.append(cnn.ReLU())
            channels = v
        x = cnn.Sequential(tuple(layers), name="features")(x, train=train)
        x = cnn.AdaptiveAvgPool2d((self.pool_size, self.pool_size), name="avgpool")(x)
        x = cnn.Flatten()(x)
        linear = lambda i, o: cnn.Linear(i, o, **linear_init)
        return cnn.Sequential(
            (
                linear(channels * self.pool_size**2, self.hidden),
                cnn.ReLU(),
                cnn.Dropout(self.dropout),
                linear(self.hidden, self.hidden),
                cnn.ReLU(),
                cnn.Dropout(self.dropout),
                linear(self.hidden, self.num_classes),
            ),
            name="classifier",
        )(x, train=train)


def _vgg_factory(name: str, cfg: str, batch_norm: bool, doc: str):
    def factory(
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
        init_weights: bool = True,
    ) -> VGG:
        return VGG(
            cfg=CONFIGS[cfg],
            batch_norm=batch_norm,
            num_classes=num_classes,
            in_channels=in_channels,
            dropout=dropout,
            init_weights=init_weights,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    # Five 2x2 max pools: below 32x32 the last one has nothing to pool.
    min_size = 2 ** list(CONFIGS[cfg]).count("M")
    return register(name, family="vgg", torchvision=True, min_input_size=min_size)(factory)


# The smallest first: the default test suite checks the first registered model of a family.
vgg11 = _vgg_factory("vgg11", "A", False, "torchvision's VGG-11 (132.9M parameters).")
vgg11_bn = _vgg_factory("vgg11_bn", "A", True, "torchvision's VGG-11 with BatchNorm.")
vgg13 = _vgg_factory("vgg13", "B", False, "torchvision's VGG-13 (133.0M parameters).")
vgg13_bn = _vgg_factory("vgg13_bn", "B", True, "torchvision's VGG-13 with BatchNorm.")
vgg16 = _vgg_factory("vgg16", "D", False, "torchvision's VGG-16 (138.4M parameters).")
vgg16_bn = _vgg_factory("vgg16_bn", "D", True, "torchvision's VGG-16 with BatchNorm.")
vgg19 = _vgg_factory("vgg19", "E", False, "torchvision's VGG-19 (143.7M parameters).")
vgg19_bn = _vgg_factory("vgg19_bn", "E", True, "torchvision's VGG-19 with BatchNorm.")
