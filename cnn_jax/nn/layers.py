"""flax.linen layers with torch.nn's names, arguments, defaults and numerics (NHWC input).

Parameters keep torch's names and layouts (``weight``/``bias``; conv ``weight`` is OIHW, Linear
``weight`` is (out, in); batch-norm buffers live in the ``batch_stats`` collection as
``running_mean``/``running_var``/``num_batches_tracked``), so every ``state_dict`` key is exactly
one Flax leaf: ``cnn_jax.interop.from_torch`` / ``to_torch`` need no per-layer conversion.

Layers whose behaviour differs in training (``BatchNorm2d``, ``Dropout``, ``Dropout2d``) take a
required keyword ``train`` at call time: forgetting it raises instead of silently evaluating.

Layout: the layers without a channel count (the pools, ``Dropout2d``) cannot tell NHWC from
NCHW; an NCHW input is processed over the wrong axes without an error. The models check their
input at entry; the layers with a channel count check it (``check_nhwc``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import functional as F
from cnn_jax._utils import IntOr2, check_floating, check_nhwc, pair
from cnn_jax.functional.conv import (
    check_conv_backend,
    check_output_padding,
    check_padding_mode,
    resolve_conv_padding,
)
from cnn_jax.functional.pooling import adaptive_output_size, pool_window
from cnn_jax.nn.init import Initializer, torch_bias_init, torch_fan_in, torch_weight_init

Array = jax.Array


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_conv_channels(module: nn.Module, allow_no_input: bool = False) -> None:
    """torch's checks on a (transposed) convolution's channel counts and groups. A Conv2d may
    have in_channels=0 (an empty weight; the output is the bias), as torch allows; a transposed
    one may not (torch accepts it at construction and fails in its forward)."""
    value = module.in_channels
    if allow_no_input and isinstance(value, int) and not isinstance(value, bool) and value == 0:
        names = ("out_channels", "groups")
    else:
        names = ("in_channels", "out_channels", "groups")
    for name in names:
        _check_positive(name, getattr(module, name))
    if module.in_channels % module.groups or module.out_channels % module.groups:
        raise ValueError(
            f"in_channels ({module.in_channels}) and out_channels ({module.out_channels}) must "
            f"both be divisible by groups ({module.groups})"
        )


def _conv_backend(module: nn.Module, called_with: str | None) -> str:
    """A (transposed) convolution's backend: its own if it has one, else the call's, else
    ``'auto'``."""
    return module.backend or called_with or "auto"


def _conv_params(module: nn.Module, shape: tuple[int, ...]) -> tuple[Array, Array | None]:
    """A (transposed) convolution's ``weight`` of torch-layout ``shape`` and optional ``bias``,
    with torch's default initialisers unless the module overrides them."""
    weight = module.param("weight", module.weight_init or torch_weight_init, shape)
    bias = None
    if module.bias:
        bias_init = module.bias_init or torch_bias_init(torch_fan_in(shape))
        bias = module.param("bias", bias_init, (module.out_channels,))
    return weight, bias


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` on NHWC input.

    Attributes:
      in_channels, out_channels: channel counts (both divisible by ``groups``). ``in_channels``
        may be 0, as torch allows: the weight is empty and the output is the bias broadcast over
        ``out_channels`` (the empty sum); torch 2.13's forward instead returns 0 channels.
      kernel_size, stride, dilation: an int or an (h, w) pair.
      padding: an int, an (h, w) pair, ``'valid'`` or ``'same'`` (torch's 'same': the extra pixel
        of an even kernel goes bottom/right; stride 1 only). Default 0, not Flax's 'SAME'.
      groups: ``in_channels`` for a depthwise convolution.
      bias: whether to add a learnable bias.
      padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
      weight_init, bias_init: override torch's defaults; they receive the torch-layout shape.
      precision: passed to the convolution (``jax.lax.Precision``).
      backend: how the convolution is computed (:func:`cnn_jax.functional.conv_general`);
        ``None``: the call's ``backend`` argument, else ``'auto'``. A whole model takes one
        through :func:`cnn_jax.nn.with_layer_settings`.

    >>> conv = Conv2d(3, 8, kernel_size=3, padding=1)
    >>> variables = conv.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> variables['params']['weight'].shape  # torch's OIHW layout
    (8, 3, 3, 3)
    >>> conv.apply(variables, jnp.zeros((2, 32, 32, 3))).shape
    (2, 32, 32, 8)
    """

    in_channels: int
    out_channels: int
    kernel_size: IntOr2
    stride: IntOr2 = 1
    padding: IntOr2 | str = 0
    dilation: IntOr2 = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    weight_init: Initializer | None = None
    bias_init: Initializer | None = None
    precision: Any = None
    backend: str | None = None

    def __post_init__(self) -> None:
        _check_conv_channels(self, allow_no_input=True)
        if self.backend is not None:
            check_conv_backend(self.backend)
        check_padding_mode(self.padding_mode)
        resolve_conv_padding(
            self.padding,
            pair(self.kernel_size, "kernel_size"),
            pair(self.stride, "stride"),
            pair(self.dilation, "dilation"),
        )
        super().__post_init__()

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """torch's weight shape ``(out_channels, in_channels // groups, kH, kW)``."""
        return (self.out_channels, self.in_channels // self.groups, *pair(self.kernel_size, "k"))

    def example_input_shape(self) -> tuple[int, ...]:
        """A small NHWC input shape this layer accepts (used to build abstract variables)."""
        k, d = pair(self.kernel_size, "k"), pair(self.dilation, "d")
        pads = resolve_conv_padding(self.padding, k, pair(self.stride, "s"), d)
        size = max(d[i] * (k[i] - 1) + 2 + 2 * max(pads[i]) for i in range(2))
        return (1, size, size, self.in_channels)

    @nn.compact
    def __call__(
        self, x: Array, *, backend: str | None = None, store_weight_gradient: bool | None = None
    ) -> Array:
        """``backend``: the convolution backend when the layer has none of its own;
        ``store_weight_gradient``: :func:`cnn_jax.functional.conv_general`'s."""
        check_nhwc(x, self.in_channels, "Conv2d")
        check_floating(x, "Conv2d")
        shape = self.weight_shape
        weight, bias = _conv_params(self, shape)
        return F.conv2d(
            x,
            weight,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            precision=self.precision,
            backend=_conv_backend(self, backend),
            store_weight_gradient=store_weight_gradient,
        )


class ConvTranspose2d(nn.Module):
    """``torch.nn.ConvTranspose2d`` on NHWC input.

    torch's ``padding`` crops ``padding`` pixels from each side of the full transposed
    convolution, and ``output_padding`` adds pixels on the bottom/right; the output size is
    ``(H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``. The weight
    keeps torch's layout ``(in_channels, out_channels // groups, kH, kW)``. Plain Flax's
    ``ConvTranspose`` pads the dilated input instead, has no ``output_padding`` or ``groups``,
    and needs ``transpose_kernel=True`` to match. ``backend`` as in :class:`Conv2d`.

    >>> up = ConvTranspose2d(16, 8, kernel_size=4, stride=2, padding=1)
    >>> variables = up.init(jax.random.key(0), jnp.zeros((1, 8, 8, 16)))
    >>> up.apply(variables, jnp.zeros((1, 8, 8, 16))).shape
    (1, 16, 16, 8)
    """

    in_channels: int
    out_channels: int
    kernel_size: IntOr2
    stride: IntOr2 = 1
    padding: IntOr2 = 0
    output_padding: IntOr2 = 0
    groups: int = 1
    bias: bool = True
    dilation: IntOr2 = 1
    weight_init: Initializer | None = None
    bias_init: Initializer | None = None
    precision: Any = None
    backend: str | None = None

    def __post_init__(self) -> None:
        _check_conv_channels(self)
        if self.backend is not None:
            check_conv_backend(self.backend)
        if isinstance(self.padding, str):
            raise ValueError(
                "ConvTranspose2d takes an int or a pair as padding (torch has no string padding "
                f"for transposed convolutions), got {self.padding!r}"
            )
        pair(self.kernel_size, "kernel_size")
        pair(self.padding, "padding", minimum=0)
        check_output_padding(self.output_padding, self.stride, self.dilation)
        super().__post_init__()

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """torch's weight shape ``(in_channels, out_channels // groups, kH, kW)``."""
        return (self.in_channels, self.out_channels // self.groups, *pair(self.kernel_size, "k"))

    def example_input_shape(self) -> tuple[int, ...]:
        """A small NHWC input shape this layer accepts (used to build abstract variables)."""
        size = 2 * max(pair(self.padding, "padding", minimum=0)) + 2
        return (1, size, size, self.in_channels)

    def _output_padding(self, x: Array, output_size) -> tuple[int, int]:
        """torch's ``output_size=`` at call time: the output_padding that gives that (H, W),
        which must lie within the ``stride`` sizes the input maps to (torch's range, which
        ignores the dilation that a constructor ``output_padding`` may use)."""
        size = tuple(int(v) for v in output_size)
        if len(size) != 2:
            raise ValueError(
                f"ConvTranspose2d: output_size must be (H, W), got {tuple(output_size)} (an NCHW "
                "torch size has no meaning for NHWC input: pass its last two entries)"
            )
        k, s = pair(self.kernel_size, "k"), pair(self.stride, "s")
        p, d = pair(self.padding, "p", minimum=0), pair(self.dilation, "d")
        smallest = tuple(
            (x.shape[1 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1 for i in range(2)
        )
        largest = tuple(smallest[i] + s[i] - 1 for i in range(2))
        if not all(lo <= v <= hi for lo, v, hi in zip(smallest, size, largest, strict=True)):
            raise ValueError(
                f"ConvTranspose2d: requested an output size of {list(size)}, but valid sizes "
                f"range from {list(smallest)} to {list(largest)} (for an input of "
                f"{list(x.shape[1:3])})"
            )
        return tuple(v - lo for v, lo in zip(size, smallest, strict=True))

    @nn.compact
    def __call__(
        self,
        x: Array,
        output_size=None,
        *,
        backend: str | None = None,
        store_weight_gradient: bool | None = None,
    ) -> Array:
        """``output_size=(H, W)`` picks the output size among those the stride allows, as
        torch's ``forward(input, output_size)``; it overrides ``output_padding``. ``backend``
        and ``store_weight_gradient`` as in :class:`Conv2d`."""
        check_nhwc(x, self.in_channels, "ConvTranspose2d")
        check_floating(x, "ConvTranspose2d")
        shape = self.weight_shape
        weight, bias = _conv_params(self, shape)
        output_padding = (
            self.output_padding if output_size is None else self._output_padding(x, output_size)
        )
        return F.conv_transpose2d(
            x,
            weight,
            bias,
            stride=self.stride,
            padding=self.padding,
            output_padding=output_padding,
            groups=self.groups,
            dilation=self.dilation,
            precision=self.precision,
            backend=_conv_backend(self, backend),
            store_weight_gradient=store_weight_gradient,
        )


class Linear(nn.Module):
    """``torch.nn.Linear``: ``y = x @ weight.T + bias`` with ``weight`` of shape (out, in).

    >>> fc = Linear(4, 2)
    >>> variables = fc.init(jax.random.key(0), jnp.zeros((1, 4)))
    >>> variables['params']['weight'].shape
    (2, 4)
    """

    in_features: int
    out_features: int
    bias: bool = True
    weight_init: Initializer | None = None
    bias_init: Initializer | None = None
    precision: Any = None

    def __post_init__(self) -> None:
        _check_positive("in_features", self.in_features)
        _check_positive("out_features", self.out_features)
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """A small input shape this layer accepts (used to build abstract variables)."""
        return (1, self.in_features)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear expects in_features={self.in_features} on the last axis, got shape "
                f"{tuple(x.shape)}"
            )
        check_floating(x, "Linear")
        shape = (self.out_features, self.in_features)
        weight = self.param("weight", self.weight_init or torch_weight_init, shape)
        bias = None
        if self.bias:
            bias = self.param(
                "bias", self.bias_init or torch_bias_init(self.in_features), (self.out_features,)
            )
        return F.linear(x, weight, bias, precision=self.precision)


class Flatten(nn.Module):
    """``torch.nn.Flatten()``: flattens all but the batch axis in torch's (C, H, W) order.

    So the ``Linear`` after a conv stack has torch's weight layout (plain Flax reshapes NHWC in
    (H, W, C) order, which would need a hidden permutation of that weight).

    >>> Flatten().apply({}, jnp.zeros((2, 5, 5, 16))).shape
    (2, 400)
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return F.flatten(x)


class MaxPool2d(nn.Module):
    """``torch.nn.MaxPool2d`` on NHWC input: stride defaults to ``kernel_size``, symmetric padding
    of at most half the kernel filled with ``-inf``, ``dilation`` and ``ceil_mode``.

    >>> MaxPool2d(2).apply({}, jnp.zeros((1, 5, 5, 3))).shape
    (1, 2, 2, 3)
    >>> MaxPool2d(2, ceil_mode=True).apply({}, jnp.zeros((1, 5, 5, 3))).shape
    (1, 3, 3, 3)

    The arguments are torch's, in torch's order: ``(kernel_size, stride, padding, dilation,
    return_indices, ceil_mode)``. With ``return_indices=True`` the layer returns ``(values,
    indices)``, the flat per-plane indices :class:`MaxUnpool2d` takes (int32).
    """

    kernel_size: IntOr2
    stride: IntOr2 | None = None
    padding: IntOr2 = 0
    dilation: IntOr2 = 1
    return_indices: bool = False
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        pool_window(self.kernel_size, self.stride, self.padding, self.dilation, "MaxPool2d")
        for name in ("return_indices", "ceil_mode"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise TypeError(f"MaxPool2d: {name} must be a bool, got {getattr(self, name)!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array | tuple[Array, Array]:
        check_nhwc(x, None, "MaxPool2d")
        args = (x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        if self.return_indices:
            return F.max_pool2d_with_indices(*args)
        return F.max_pool2d(*args)


class MaxUnpool2d(nn.Module):
    """``torch.nn.MaxUnpool2d(kernel_size, stride, padding)`` on NHWC input: the partial inverse
    of :class:`MaxPool2d` with ``return_indices=True``; ``output_size=(H, W)`` at call time picks
    among the sizes a strided pool maps to the same output.

    >>> pool, unpool = MaxPool2d(2, return_indices=True), MaxUnpool2d(2)
    >>> y, i = pool.apply({}, jnp.arange(16.0).reshape(1, 4, 4, 1))
    >>> unpool.apply({}, y, i)[0, :, :, 0]
    Array([[ 0.,  0.,  0.,  0.],
           [ 0.,  5.,  0.,  7.],
           [ 0.,  0.,  0.,  0.],
           [ 0., 13.,  0., 15.]], dtype=float32)
    """

    kernel_size: IntOr2
    stride: IntOr2 | None = None
    padding: IntOr2 = 0

    @nn.compact
    def __call__(self, x: Array, indices: Array, output_size=None) -> Array:
        return F.max_unpool2d(x, indices, self.kernel_size, self.stride, self.padding, output_size)


class AvgPool2d(nn.Module):
    """``torch.nn.AvgPool2d`` on NHWC input, with ``ceil_mode``, ``count_include_pad`` and
    ``divisor_override`` as torch defines them.

    >>> AvgPool2d(2).apply({}, jnp.ones((1, 4, 4, 1)))[0, :, :, 0]
    Array([[1., 1.],
           [1., 1.]], dtype=float32)
    """

    kernel_size: IntOr2
    stride: IntOr2 | None = None
    padding: IntOr2 = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None

    def __post_init__(self) -> None:
        pool_window(self.kernel_size, self.stride, self.padding, 1, "AvgPool2d")
        if self.divisor_override is not None:
            _check_positive("divisor_override", self.divisor_override)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        check_nhwc(x, None, "AvgPool2d")
        return F.avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class AdaptiveAvgPool2d(nn.Module):
    """``torch.nn.AdaptiveAvgPool2d(output_size)`` on NHWC input; ``None`` keeps that size.

    Windows are torch's ``[floor(i*H/O), ceil((i+1)*H/O))`` — overlapping when H is not a multiple
    of O, and repeating pixels when O > H.

    >>> AdaptiveAvgPool2d((1, 1)).apply({}, jnp.ones((2, 7, 7, 512))).shape
    (2, 1, 1, 512)
    """

    output_size: int | tuple[int | None, int | None] | None

    def __post_init__(self) -> None:
        adaptive_output_size(self.output_size, "AdaptiveAvgPool2d")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        check_nhwc(x, None, "AdaptiveAvgPool2d")
        return F.adaptive_avg_pool2d(x, self.output_size)


class AdaptiveMaxPool2d(nn.Module):
    """``torch.nn.AdaptiveMaxPool2d(output_size)`` on NHWC input; ``None`` keeps that size.

    >>> AdaptiveMaxPool2d(3).apply({}, jnp.ones((1, 10, 10, 4))).shape
    (1, 3, 3, 4)

    ``return_indices=True`` (torch's second argument) returns ``(values, indices)``, the flat
    per-plane indices of the chosen pixels (int32).
    """

    output_size: int | tuple[int | None, int | None] | None
    return_indices: bool = False

    def __post_init__(self) -> None:
        adaptive_output_size(self.output_size, "AdaptiveMaxPool2d")
        if not isinstance(self.return_indices, bool | np.bool_):
            raise TypeError(
                f"AdaptiveMaxPool2d: return_indices must be a bool, got {self.return_indices!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array | tuple[Array, Array]:
        check_nhwc(x, None, "AdaptiveMaxPool2d")
        if self.return_indices:
            return F.adaptive_max_pool2d_with_indices(x, self.output_size)
        return F.adaptive_max_pool2d(x, self.output_size)


class BatchNorm2d(nn.Module):
    """``torch.nn.BatchNorm2d`` on NHWC input with torch's running-statistics rule.

    ``train=True`` normalises with the batch statistics and updates ``batch_stats`` (pass
    ``mutable=['batch_stats']``); ``train=False`` uses the running ones. ``momentum`` is torch's
    (0.1 = weight of the new statistic; Flax's 0.99 is the weight of the old one) and ``None`` is a
    cumulative average; the running variance stores the *unbiased* batch variance. With
    ``axis_name`` (the attribute, else the call's argument, as flax's BatchNorm) the batch
    statistics are averaged over that mapped axis (pmap / shard_map), i.e. synchronised batch
    norm; :func:`cnn_jax.nn.with_layer_settings` gives one to every BatchNorm2d of a model.
    ``init`` never updates the statistics. ``bias=False`` (torch's keyword) keeps the learnable
    scale but no shift. An
    empty batch in training gives an empty output and counts as a batch (``num_batches_tracked``
    + 1, running statistics unchanged), as in torch. ``momentum`` must lie in [0, 1] (or be
    ``None``): torch accepts any float, but outside [0, 1] the running statistics extrapolate
    instead of averaging, which is never a moving average, so it is refused. ``weight_init``
    overrides torch's all-ones scale (torchvision's ``zero_init_residual`` starts residual
    branches at zero).

    >>> bn = BatchNorm2d(3)
    >>> variables = bn.init(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), train=False)
    >>> sorted(variables['batch_stats'])
    ['num_batches_tracked', 'running_mean', 'running_var']
    >>> y, updates = bn.apply(variables, jnp.ones((2, 4, 4, 3)), train=True,
    ...                       mutable=['batch_stats'])
    >>> int(updates['batch_stats']['num_batches_tracked'])
    1
    """

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    axis_name: str | None = None
    bias: bool = True
    weight_init: Initializer | None = None

    def __post_init__(self) -> None:
        _check_positive("num_features", self.num_features)
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.momentum is not None and not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {self.momentum}")
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """A small NHWC input shape this layer accepts (used to build abstract variables)."""
        return (2, 2, 2, self.num_features)

    @nn.compact
    def __call__(self, x: Array, *, train: bool, axis_name: str | None = None) -> Array:
        """``axis_name``: the mapped axis to average batch statistics over when the layer has
        none of its own."""
        check_nhwc(x, self.num_features, "BatchNorm2d", channel_name="num_features")
        check_floating(x, "BatchNorm2d")
        c = self.num_features
        weight = bias = stats = None
        if self.affine:
            weight = self.param("weight", self.weight_init or nn.initializers.ones, (c,))
            if self.bias:
                bias = self.param("bias", nn.initializers.zeros, (c,))
        if self.track_running_stats:
            mean = self.variable("batch_stats", "running_mean", jnp.zeros, (c,), jnp.float32)
            var = self.variable("batch_stats", "running_var", jnp.ones, (c,), jnp.float32)
            tracked = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)
            stats = F.BatchNormStats(mean.value, var.value, tracked.value)
        # During init the statistics stay at torch's fresh values (zeros / ones / 0).
        training = train and not self.is_initializing()
        y, new = F.batch_norm(
            x,
            stats,
            weight,
            bias,
            training=training,  # without running stats the batch's are used either way
            momentum=self.momentum,
            eps=self.eps,
            axis_name=self.axis_name if self.axis_name is not None else axis_name,
        )
        if training and stats is not None:
            mean.value, var.value, tracked.value = new
        return y


class Dropout(nn.Module):
    """``torch.nn.Dropout(p)``: with ``train=True`` zeroes elements with probability ``p`` and
    scales the rest by ``1/(1-p)``, drawing from the ``'dropout'`` RNG stream
    (``apply(..., rngs={'dropout': key})``); identity with ``train=False``.

    >>> Dropout(0.5).apply({}, jnp.ones((2, 3)), train=False)
    Array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)
    """

    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {self.p}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        rng = self.make_rng("dropout") if train and 0.0 < self.p < 1.0 else None
        return F.dropout(x, self.p, rng, training=train)


class Dropout2d(nn.Module):
    """``torch.nn.Dropout2d(p)`` on NHWC input: zeroes whole channels of each sample.

    >>> Dropout2d(0.5).apply({}, jnp.ones((1, 2, 2, 3)), train=False).shape
    (1, 2, 2, 3)
    """

    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {self.p}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        check_nhwc(x, None, "Dropout2d")
        rng = self.make_rng("dropout") if train and 0.0 < self.p < 1.0 else None
        return F.dropout2d(x, self.p, rng, training=train)
