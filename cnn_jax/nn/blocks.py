"""torchvision's building blocks (``torchvision.ops.misc``, ``torchvision.ops.StochasticDepth``)
and the shape modules its families use, on NHWC input with torchvision's ``state_dict`` keys.

* :class:`Conv2dNormActivation`: conv, norm, activation at Sequential indices 0, 1, 2;
* :class:`SqueezeExcitation`: ``avgpool``, ``fc1``, ``activation``, ``fc2``, ``scale_activation``;
* :class:`StochasticDepth`: drops a residual branch per sample (``'row'``) or per batch;
* :class:`ChannelShuffle`: ShuffleNet's channel shuffle (``torch.nn.ChannelShuffle``);
* :class:`Permute`: torchvision's ``Permute`` between NCHW and NHWC, a layout no-op here.

Where a torchvision model re-initialises every ``Conv2d`` after building (kaiming-normal and zero
bias, say), ``weight_init`` / ``bias_init`` (not torchvision arguments) give the blocks' convs
the same initialisers; by default they have torch's defaults, as torchvision's classes do alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

from cnn_jax import functional as F
from cnn_jax._utils import IntOr2, accepts_train, check_nhwc
from cnn_jax.functional.shuffle import check_groups
from cnn_jax.functional.stochastic import check_stochastic_depth
from cnn_jax.nn.containers import ReLU, Sigmoid
from cnn_jax.nn.init import Initializer
from cnn_jax.nn.layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d

Array = jax.Array
ModuleFactory = Callable[..., nn.Module]


class ChannelShuffle(nn.Module):
    """``torch.nn.ChannelShuffle(groups)`` on channels-last input: the output channel order is
    torch's on its NCHW channel axis (:func:`cnn_jax.functional.channel_shuffle`).

    >>> ChannelShuffle(2).apply({}, jnp.arange(4.0).reshape(1, 1, 1, 4))[0, 0, 0]
    Array([0., 2., 1., 3.], dtype=float32)
    """

    groups: int

    def __post_init__(self) -> None:
        check_groups(self.groups)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return F.channel_shuffle(x, self.groups)


NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)


class Permute(nn.Module):
    """torchvision's ``Permute(dims)`` (torchvision.ops.misc), as ConvNeXt's block uses it: a
    **layout no-op** on cnn_jax's NHWC arrays.

    An NCHW torch tensor is held here as its NHWC transpose. ConvNeXt's ``CNBlock`` permutes to
    NHWC (``[0, 2, 3, 1]``) so that ``LayerNorm`` and ``Linear`` act on the channels, then back
    (``[0, 3, 1, 2]``). After the first permute torch's tensor *is* NHWC, the layout of the array
    here, so nothing moves; after the second it is NCHW again, which the array here stands for
    in NHWC. Either way the array is unchanged, and ``LayerNorm``/``Linear`` on its last axis
    act on the channels as torch's do. The module keeps torchvision's Sequential index, so the
    block's ``state_dict`` keys (``block.2.weight`` for the LayerNorm) match. Other ``dims``
    would need a real transpose of a layout this library does not track, and are refused.

    >>> x = jnp.zeros((1, 4, 4, 8))
    >>> Permute([0, 2, 3, 1]).apply({}, x) is x
    True
    """

    dims: Sequence[int]

    def __post_init__(self) -> None:
        if tuple(self.dims) not in (NCHW_TO_NHWC, NHWC_TO_NCHW):
            raise ValueError(
                f"Permute: only torch's NCHW <-> NHWC permutations {list(NCHW_TO_NHWC)} and "
                f"{list(NHWC_TO_NCHW)} are supported (layout no-ops on NHWC arrays), got "
                f"{list(self.dims)}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        check_nhwc(x, None, "Permute")
        return x


class StochasticDepth(nn.Module):
    """``torchvision.ops.StochasticDepth(p, mode)``: with ``train=True`` zeroes the input with
    probability ``p`` — per sample (``mode='row'``) or all at once (``mode='batch'``) — and
    scales what survives by ``1 / (1 - p)``; identity with ``train=False`` or ``p == 0``.

    The draw comes from the ``'dropout'`` RNG stream (``apply(..., rngs={'dropout': key})``),
    the one the train step already folds the step number into, so a resumed run draws the same
    masks as dropout does.

    >>> StochasticDepth(0.2, 'row').apply({}, jnp.ones((2, 3)), train=False)
    Array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)
    """

    p: float
    mode: str

    def __post_init__(self) -> None:
        check_stochastic_depth(self.p, self.mode)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        rng = self.make_rng("dropout") if train and 0.0 < self.p < 1.0 else None
        return F.stochastic_depth(x, self.p, self.mode, train, rng=rng)


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation(input_channels, squeeze_channels, activation=ReLU,
    scale_activation=Sigmoid)`` on NHWC input: ``x * scale_activation(fc2(activation(fc1(
    avgpool(x)))))`` with 1x1 convolutions ``fc1`` and ``fc2`` (``state_dict`` keys
    ``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``).

    ``activation`` and ``scale_activation`` are module classes (or ``functools.partial`` of
    them), as in torchvision: MobileNetV3 passes ``scale_activation=Hardsigmoid``, EfficientNet
    ``activation=SiLU``.

    >>> se = SqueezeExcitation(8, 2)
    >>> variables = se.init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))
    >>> sorted(variables['params']), se.apply(variables, jnp.ones((2, 4, 4, 8))).shape
    (['fc1', 'fc2'], (2, 4, 4, 8))
    """

    input_channels: int
    squeeze_channels: int
    activation: ModuleFactory = ReLU
    scale_activation: ModuleFactory = Sigmoid
    weight_init: Initializer | None = None
    bias_init: Initializer | None = None

    def example_input_shape(self) -> tuple[int, ...]:
        """A small NHWC input shape this block accepts (used to build abstract variables)."""
        return (1, 1, 1, self.input_channels)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        check_nhwc(x, self.input_channels, "SqueezeExcitation", channel_name="input_channels")
        inits = {"weight_init": self.weight_init, "bias_init": self.bias_init}
        scale = AdaptiveAvgPool2d(1, name="avgpool")(x)
        scale = Conv2d(self.input_channels, self.squeeze_channels, 1, name="fc1", **inits)(scale)
        scale = self.activation(name="activation")(scale)
        scale = Conv2d(self.squeeze_channels, self.input_channels, 1, name="fc2", **inits)(scale)
        scale = self.scale_activation(name="scale_activation")(scale)
        return scale * x


def _default_padding(kernel_size: IntOr2, dilation: IntOr2) -> IntOr2:
    """torchvision's ``(kernel_size - 1) // 2 * dilation``, per side when either is a pair."""
    if isinstance(kernel_size, int) and isinstance(dilation, int):
        return (kernel_size - 1) // 2 * dilation
    k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    d = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    return tuple((ki - 1) // 2 * di for ki, di in zip(k, d, strict=True))


class Conv2dNormActivation(nn.Module):
    """torchvision's ``Conv2dNormActivation`` (torchvision.ops.misc) on NHWC input: a Sequential
    of ``Conv2d``, ``norm_layer(out_channels)`` and ``activation_layer()``, at indices 0, 1, 2 as
    torchvision builds them — a ``None`` norm or activation is left out and what follows moves
    up (conv + activation are 0, 1).

    Torchvision's defaults: ``padding=None`` is ``(kernel_size - 1) // 2 * dilation`` (same-size
    output at stride 1 for odd kernels); ``bias=None`` means a conv bias only without a norm
    layer; ``norm_layer=BatchNorm2d``, ``activation_layer=ReLU``; the activation is built with
    ``inplace=inplace`` unless ``inplace`` is None (as torchvision does; a no-op in JAX).
    ``norm_layer`` is any module class or partial taking the channel count
    (``functools.partial(BatchNorm2d, eps=1e-3, momentum=0.01)``, ``LayerNorm2d``).

    >>> block = Conv2dNormActivation(3, 8, kernel_size=3, stride=2)
    >>> variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    >>> sorted(variables['params']), sorted(variables['batch_stats'])
    (['0', '1'], ['1'])
    >>> block.apply(variables, jnp.zeros((2, 8, 8, 3)), train=False).shape
    (2, 4, 4, 8)
    """

    in_channels: int
    out_channels: int
    kernel_size: IntOr2 = 3
    stride: IntOr2 = 1
    padding: IntOr2 | str | None = None
    groups: int = 1
    norm_layer: ModuleFactory | None = BatchNorm2d
    activation_layer: ModuleFactory | None = ReLU
    dilation: IntOr2 = 1
    inplace: bool | None = True
    bias: bool | None = None
    weight_init: Initializer | None = None
    bias_init: Initializer | None = None

    def _conv(self, **kwargs: Any) -> Conv2d:
        padding = self.padding
        if padding is None:
            padding = _default_padding(self.kernel_size, self.dilation)
        return Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.norm_layer is None if self.bias is None else self.bias,
            weight_init=self.weight_init,
            bias_init=self.bias_init,
            **kwargs,
        )

    def __post_init__(self) -> None:
        self._conv(parent=None)  # the conv's argument checks, at construction
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """A small NHWC input shape this block accepts (used to build abstract variables)."""
        return self._conv(parent=None).example_input_shape()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        layers: list[nn.Module] = [self._conv(name="0")]
        if self.norm_layer is not None:
            layers.append(self.norm_layer(self.out_channels, name=str(len(layers))))
        if self.activation_layer is not None:
            params = {} if self.inplace is None else {"inplace": self.inplace}
            layers.append(self.activation_layer(**params, name=str(len(layers))))
        for layer in layers:
            x = layer(x, train=train) if accepts_train(layer) else layer(x)
        return x
