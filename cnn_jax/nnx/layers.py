"""Flax NNX layers with torch.nn's names, arguments, defaults, initialisation and numerics.

The stateful twin of :mod:`cnn_jax.nn`: the same :mod:`cnn_jax.functional` maths, the same
argument checks (each layer validates its arguments through the linen layer of the same name),
but the module *owns* its state, as a torch module does — parameters are ``nnx.Param``, BatchNorm's
running statistics ``nnx.BatchStat`` that a training call updates in place, and dropout draws
from an ``nnx.Rngs`` stream kept in the module. ``model.train()`` / ``model.eval()`` switch
BatchNorm and Dropout like torch's (``use_running_average`` / ``deterministic``, NNX's names);
modules start in training mode, as torch's do.

Variables are named like torch's state_dict keys (``features.0.weight``, ``bn1.running_var``),
so :func:`cnn_jax.interop.from_torch` / ``to_torch`` load and save NNX models too.

>>> from cnn_jax import nnx as cnnx
>>> conv = cnnx.Conv2d(3, 8, 3, padding=1, rngs=nnx.Rngs(0))
>>> conv.weight.shape  # torch's OIHW layout
(8, 3, 3, 3)
>>> conv(jnp.zeros((2, 16, 16, 3))).shape
(2, 16, 16, 8)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import cnn_jax.nn as linen_layers
from cnn_jax import functional as F
from cnn_jax._utils import IntOr2, check_floating, check_nhwc
from cnn_jax.nn.init import Initializer, torch_bias_init, torch_fan_in, torch_weight_init

Array = jax.Array


class Conv2d(nnx.Module):
    """``torch.nn.Conv2d`` on NHWC input (arguments and checks as :class:`cnn_jax.nn.Conv2d`).

    >>> Conv2d(1, 2, 3, rngs=nnx.Rngs(0))(jnp.zeros((1, 5, 5, 1))).shape
    (1, 3, 3, 2)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOr2,
        stride: IntOr2 = 1,
        padding: IntOr2 | str = 0,
        dilation: IntOr2 = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
    ):
        spec = linen_layers.Conv2d(  # validates every argument like torch
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode,
        )  # fmt: skip
        shape = spec.weight_shape
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.padding_mode = groups, padding_mode
        self.weight = nnx.Param((weight_init or torch_weight_init)(rngs.params(), shape))
        self.bias = (
            nnx.Param(
                (bias_init or torch_bias_init(torch_fan_in(shape)))(rngs.params(), (out_channels,))
            )
            if bias
            else None
        )

    def __call__(self, x: Array) -> Array:
        check_nhwc(x, self.in_channels, "Conv2d")
        check_floating(x, "Conv2d")
        return F.conv2d(
            x,
            self.weight[...],
            None if self.bias is None else self.bias[...],
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
        )


class Linear(nnx.Module):
    """``torch.nn.Linear``: ``weight`` (out, in), torch's initialisation.

    >>> Linear(4, 2, rngs=nnx.Rngs(0))(jnp.zeros((3, 4))).shape
    (3, 2)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
    ):
        linen_layers.Linear(in_features, out_features, bias)  # validates
        self.in_features, self.out_features = in_features, out_features
        init = weight_init or torch_weight_init
        self.weight = nnx.Param(init(rngs.params(), (out_features, in_features)))
        self.bias = (
            nnx.Param((bias_init or torch_bias_init(in_features))(rngs.params(), (out_features,)))
            if bias
            else None
        )

    def __call__(self, x: Array) -> Array:
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear expects in_features={self.in_features} on the last axis, got shape "
                f"{tuple(x.shape)}"
            )
        check_floating(x, "Linear")
        return F.linear(x, self.weight[...], None if self.bias is None else self.bias[...])


class BatchNorm2d(nnx.Module):
    """``torch.nn.BatchNorm2d`` owning its running statistics (``nnx.BatchStat``), updated in
    place by a training call with torch's rule (momentum 0.1 = weight of the new statistic,
    unbiased running variance). ``use_running_average`` is NNX's switch for ``model.eval()``.

    >>> bn = BatchNorm2d(3, rngs=nnx.Rngs(0))
    >>> _ = bn(jnp.ones((2, 4, 4, 3)))
    >>> int(bn.num_batches_tracked[...])
    1
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        use_running_average: bool = False,
        axis_name: str | None = None,
        bias: bool = True,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs  # no random initialisation; accepted for a uniform constructor
        linen_layers.BatchNorm2d(
            num_features, eps, momentum, affine, track_running_stats, bias=bias
        )
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.use_running_average, self.axis_name = use_running_average, axis_name
        c = num_features
        self.weight = nnx.Param(jnp.ones((c,))) if affine else None
        self.bias = nnx.Param(jnp.zeros((c,))) if affine and bias else None
        if track_running_stats:
            self.running_mean = nnx.BatchStat(jnp.zeros((c,)))
            self.running_var = nnx.BatchStat(jnp.ones((c,)))
            self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def __call__(self, x: Array) -> Array:
        check_nhwc(x, self.num_features, "BatchNorm2d", channel_name="num_features")
        check_floating(x, "BatchNorm2d")
        stats = None
        if self.running_mean is not None:
            stats = F.BatchNormStats(
                self.running_mean[...], self.running_var[...], self.num_batches_tracked[...]
            )
        training = not self.use_running_average
        y, new = F.batch_norm(
            x,
            stats,
            None if self.weight is None else self.weight[...],
            None if self.bias is None else self.bias[...],
            training=training,
            momentum=self.momentum,
            eps=self.eps,
            axis_name=self.axis_name,
        )
        if training and stats is not None:
            self.running_mean[...], self.running_var[...] = new.running_mean, new.running_var
            self.num_batches_tracked[...] = new.num_batches_tracked
        return y


class Dropout(nnx.Module):
    """``torch.nn.Dropout(p)`` drawing its masks from an ``nnx.Rngs`` stream kept in the module
    (``rngs.dropout``, or ``rngs.default``); ``deterministic`` is NNX's switch for ``eval()``."""

    def __init__(self, p: float = 0.5, *, deterministic: bool = False, rngs: nnx.Rngs):
        linen_layers.Dropout(p)  # validates
        self.p, self.deterministic = p, deterministic
        self.rngs = rngs.fork()  # its own stream, like nnx.Dropout

    def __call__(self, x: Array) -> Array:
        train = not self.deterministic and 0.0 < self.p < 1.0
        key = self.rngs.dropout() if train else None
        return F.dropout(x, self.p, key, training=not self.deterministic)


class MaxPool2d(nnx.Module):
    """``torch.nn.MaxPool2d`` (stride defaults to ``kernel_size``)."""

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        return_indices=False,
        ceil_mode=False,
    ):
        linen_layers.MaxPool2d(
            kernel_size,
            stride,
            padding,
            dilation,
            return_indices=return_indices,
            ceil_mode=ceil_mode,
        )  # validates, torch's argument order
        self.return_indices = return_indices
        self.args = (kernel_size, stride, padding, dilation, ceil_mode)

    def __call__(self, x: Array) -> Array:
        check_nhwc(x, None, "MaxPool2d")
        if self.return_indices:
            return F.max_pool2d_with_indices(x, *self.args)
        return F.max_pool2d(x, *self.args)


class AvgPool2d(nnx.Module):
    """``torch.nn.AvgPool2d`` (``count_include_pad``, ``divisor_override`` as torch)."""

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
    ):
        args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        linen_layers.AvgPool2d(*args)
        self.args = args

    def __call__(self, x: Array) -> Array:
        check_nhwc(x, None, "AvgPool2d")
        return F.avg_pool2d(x, *self.args)


class AdaptiveAvgPool2d(nnx.Module):
    """``torch.nn.AdaptiveAvgPool2d`` with torch's (overlapping) windows."""

    def __init__(self, output_size):
        linen_layers.AdaptiveAvgPool2d(output_size)
        self.output_size = output_size

    def __call__(self, x: Array) -> Array:
        check_nhwc(x, None, "AdaptiveAvgPool2d")
        return F.adaptive_avg_pool2d(x, self.output_size)


class Flatten(nnx.Module):
    """``torch.nn.Flatten()`` in torch's (C, H, W) order."""

    def __call__(self, x: Array) -> Array:
        return F.flatten(x)


class Tanh(nnx.Module):
    """``torch.nn.Tanh``."""

    def __call__(self, x: Array) -> Array:
        return jnp.tanh(x)


class Sequential(nnx.Module):
    """``torch.nn.Sequential``: children are attributes ``'0'``, ``'1'``, ... so their variables
    have torch's keys (``features.0.weight``).

    >>> seq = Sequential(Conv2d(1, 2, 3, rngs=nnx.Rngs(0)), Tanh())
    >>> sorted(path for path, _ in nnx.to_flat_state(nnx.state(seq, nnx.Param)))
    [('0', 'bias'), ('0', 'weight')]
    """

    def __init__(self, *layers: nnx.Module):
        for index, layer in enumerate(layers):
            setattr(self, str(index), layer)
        self.length = len(layers)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> nnx.Module:
        return getattr(self, str(index))

    def __call__(self, x: Array) -> Array:
        for index in range(self.length):
            x = self[index](x)
        return x


__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Sequential",
    "Tanh",
]
