"""ConvNeXt with torchvision's layout, stochastic depth schedule and initialisation.

torchvision's block permutes NCHW to NHWC around its LayerNorm and Linear layers; cnn_jax's
arrays are NHWC throughout, so those :class:`~cnn_jax.nn.Permute` modules are layout no-ops that
keep torchvision's Sequential indices (``features.1.0.block.2.weight`` is the block's LayerNorm),
and :class:`~cnn_jax.nn.LayerNorm2d` normalises the channel axis directly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models.registry import register
from cnn_jax.nn.init import trunc_normal, zeros

Array = jax.Array
ModuleFactory = Callable[..., nn.Module]

# torchvision's ConvNeXt init: every Conv2d and Linear weight trunc_normal(std=0.02), bias 0.
_INIT = {"weight_init": trunc_normal(0.02), "bias_init": zeros}


@dataclasses.dataclass(frozen=True)
class CNBlockConfig:
    """torchvision's ``CNBlockConfig``: a stage of ``num_layers`` blocks of width
    ``input_channels``, followed (unless ``out_channels`` is None) by a downsampling layer to
    ``out_channels``."""

    input_channels: int
    out_channels: int | None
    num_layers: int


class CNBlock(nn.Module):
    """torchvision's ``CNBlock``: ``x + stochastic_depth(layer_scale * block(x))`` with
    ``block`` = depthwise 7x7 conv, Permute, LayerNorm(eps=1e-6), Linear(dim, 4 dim), GELU,
    Linear(4 dim, dim), Permute; ``layer_scale`` is a parameter of shape ``(dim, 1, 1)``
    (torchvision's, broadcast over the channel axis) initialised to the ``layer_scale`` value."""

    dim: int
    layer_scale: float
    stochastic_depth_prob: float
    norm_layer: ModuleFactory | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        dim = self.dim
        norm_layer = self.norm_layer or functools.partial(cnn.LayerNorm, eps=1e-6)
        result = cnn.Sequential(
            (
                cnn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=True, **_INIT),
                cnn.Permute([0, 2, 3, 1]),
                norm_layer(dim),
                cnn.Linear(dim, 4 * dim, bias=True, **_INIT),
                cnn.GELU(),
                cnn.Linear(4 * dim, dim, bias=True, **_INIT),
                cnn.Permute([0, 3, 1, 2]),
            ),
            name="block",
        )(x, train=train)
        scale = self.param(
            "layer_scale", lambda key, shape: jax.numpy.full(shape, self.layer_scale), (dim, 1, 1)
        )
        result = scale.reshape(dim) * result  # (C, 1, 1) on torch's NCHW: the channel axis
        result = cnn.StochasticDepth(self.stochastic_depth_prob, "row", name="stochastic_depth")(
            result, train=train
        )
        return result + x


class ConvNeXt(nn.Module):
    """torchvision's ``ConvNeXt``: ``features`` (a 4x4/4 conv + LayerNorm2d stem, then per
    stage a Sequential of :class:`CNBlock` and, between stages, LayerNorm2d + 2x2/2 conv),
    global average pooling and ``classifier`` (LayerNorm2d, Flatten, Linear).

    Stochastic depth rises linearly over the blocks, from 0 for the first to
    ``stochastic_depth_prob`` for the last (torchvision's schedule; draws come from the
    ``'dropout'`` RNG stream). Initialised as torchvision does: conv and Linear weights
    trunc_normal(std=0.02) with zero bias, LayerNorm ones/zeros (eps 1e-6), layer scales
    ``layer_scale``. Default input 224x224; at least 32x32 (the stem and three downsamplings
    divide the size by 32).

    >>> cfg = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)]
    >>> model = ConvNeXt(cfg, num_classes=3)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
    (2, 3)
    """

    block_setting: Sequence[CNBlockConfig]
    stochastic_depth_prob: float = 0.0
    layer_scale: float = 1e-6
    num_classes: int = 1000
    in_channels: int = 3

    def __post_init__(self) -> None:
        if not self.block_setting:
            raise ValueError("The block_setting should not be empty")
        if not all(isinstance(s, CNBlockConfig) for s in self.block_setting):
            raise TypeError("The block_setting should be a sequence of CNBlockConfig")
        super().__post_init__()

    @property
    def min_input_size(self) -> int:
        """The smallest square input: the stem's 4 times 2 per downsampling layer."""
        return 4 * 2 ** sum(cnf.out_channels is not None for cnf in self.block_setting)

    def block_probabilities(self) -> list[float]:
        """Each block's stochastic depth probability, in order: torchvision's
        ``stochastic_depth_prob * block_id / (total_blocks - 1)``."""
        total = sum(cnf.num_layers for cnf in self.block_setting)
        return [self.stochastic_depth_prob * i / (total - 1.0) for i in range(total)]

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_model_input(x, "ConvNeXt", self.in_channels, min_hw=self.min_input_size)
        norm_layer = functools.partial(cnn.LayerNorm2d, eps=1e-6)
        first = self.block_setting[0].input_channels
        layers: list[nn.Module] = [
            cnn.Conv2dNormActivation(
                self.in_channels,
                first,
                kernel_size=4,
                stride=4,
                padding=0,
                norm_layer=norm_layer,
                activation_layer=None,
                bias=True,
                **_INIT,
            )
        ]
        probabilities = iter(self.block_probabilities())
        for cnf in self.block_setting:
            stage = [
                CNBlock(cnf.input_channels, self.layer_scale, next(probabilities))
                for _ in range(cnf.num_layers)
            ]
            layers.append(cnn.Sequential(tuple(stage)))
            if cnf.out_channels is not None:
                down = cnn.Conv2d(cnf.input_channels, cnf.out_channels, 2, stride=2, **_INIT)
                layers.append(cnn.Sequential((norm_layer(cnf.input_channels), down)))
        x = cnn.Sequential(tuple(layers), name="features")(x, train=train)
        x = cnn.AdaptiveAvgPool2d(1, name="avgpool")(x)
        last = self.block_setting[-1]
        channels = last.out_channels if last.out_channels is not None else last.input_channels
        return cnn.Sequential(
            (norm_layer(channels), cnn.Flatten(), cnn.Linear(channels, self.num_classes, **_INIT)),
            name="classifier",
        )(x, train=train)


# torchvision's settings: (width, out width, blocks) per stage; default stochastic depth.
_SETTINGS: dict[str, tuple[tuple[tuple[int, int | None, int], ...], float, str]] = {
    "convnext_tiny": (((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)), 0.1, "28.6M"),
    "convnext_small": (
        ((96, 192, 3), (192, 384, 3), (384, 768, 27), (768, None, 3)),
        0.4,
        "50.2M",
    ),
    "convnext_base": (
        ((128, 256, 3), (256, 512, 3), (512, 1024, 27), (1024, None, 3)),
        0.5,
        "88.6M",
    ),
    "convnext_large": (
        ((192, 384, 3), (384, 768, 3), (768, 1536, 27), (1536, None, 3)),
        0.5,
        "197.8M",
    ),
}


def _convnext_factory(name: str):
    stages, default_sd, params = _SETTINGS[name]

    def factory(
        num_classes: int = 1000,
        in_channels: int = 3,
        stochastic_depth_prob: float = default_sd,
        layer_scale: float = 1e-6,
    ) -> ConvNeXt:
        return ConvNeXt(
            tuple(CNBlockConfig(*s) for s in stages),
            stochastic_depth_prob=stochastic_depth_prob,
            layer_scale=layer_scale,
            num_classes=num_classes,
            in_channels=in_channels,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"torchvision's {name}: {params} parameters, stochastic depth up to {default_sd}."
    )
    return register(
        name,
        family="convnext",
        torchvision=True,
        min_input_size=32,
        deterministic={"stochastic_depth_prob": 0.0},
    )(factory)


# The smallest first: the default test suite checks the first one registered.
convnext_tiny = _convnext_factory("convnext_tiny")
convnext_small = _convnext_factory("convnext_small")
convnext_base = _convnext_factory("convnext_base")
convnext_large = _convnext_factory("convnext_large")
