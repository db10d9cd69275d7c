"""Per-layer table of a model: output shape, parameters, multiply-accumulates, receptive field.

Layers are found by running the eval-mode forward pass under ``jax.eval_shape`` (no computation,
no memory) with a ``flax.linen.intercept_methods`` hook that records every cnn_jax layer call in
order: the network as inference runs it, which is what published operation counts describe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.nn as cnn
from cnn_jax._utils import accepts_train, pair
from cnn_jax.functional.pooling import pool_window
from cnn_jax.interop.torch import _sample

# Elementwise (or per-pixel) layers: the receptive field passes through unchanged.
_SAME_FIELD: tuple[type, ...] = (
    cnn.BatchNorm2d,
    cnn.Dropout,
    cnn.Dropout2d,
    cnn.ReLU,
    cnn.Tanh,
    cnn.Sigmoid,
    cnn.Identity,
    cnn.ReLU6,
    cnn.Hardtanh,
    cnn.Hardswish,
    cnn.Hardsigmoid,
    cnn.SiLU,
    cnn.GELU,
    cnn.LayerNorm,
    cnn.LocalResponseNorm,
    cnn.ChannelShuffle,
    cnn.StochasticDepth,
    cnn.Permute,
)
# Layers a summary lists (containers and models are not rows, like torchinfo's default depth).
LEAF_TYPES: tuple[type, ...] = (
    cnn.Conv2d,
    cnn.ConvTranspose2d,
    cnn.Linear,
    cnn.MaxPool2d,
    cnn.AvgPool2d,
    cnn.AdaptiveAvgPool2d,
    cnn.AdaptiveMaxPool2d,
    cnn.Flatten,
    *_SAME_FIELD,
)


@dataclass(frozen=True)
class LayerInfo:
    """One row of a model summary.

    Attributes:
      name: torch-style dotted name (``'layer2.0.downsample.0'``), the state_dict prefix.
      kind: the layer class (``'Conv2d'``).
      output_shape: NHWC output shape for the summarised input.
      params: learnable parameters (the ``params`` collection), as torch's ``numel`` sum.
      buffers: non-learnable state (``batch_stats``: running mean/var, num_batches_tracked).
      macs: multiply-accumulates of this layer for the summarised input (conv, linear; 0 else).
      receptive_field: (height, width) in input pixels seen by one output pixel, or ``None`` once
        the spatial structure is gone (Flatten, Linear) or for transposed convolutions.
      jump: (height, width) input pixels between neighbouring outputs (the product of strides).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    buffers: int
    macs: int
    receptive_field: tuple[int, int] | None
    jump: tuple[int, int] | None


def _count(tree: Any, path: tuple[str, ...]) -> int:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return 0
        tree = tree[key]
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _window(module: nn.Module, in_hw: tuple[int, int], out_hw: tuple[int, int]):
    """(kernel, stride, dilation) per axis for layers that slide a window, else None."""
    if isinstance(module, cnn.Conv2d):
        return pair(module.kernel_size, "k"), pair(module.stride, "s"), pair(module.dilation, "d")
    if isinstance(module, cnn.MaxPool2d | cnn.AvgPool2d):
        k, s, _, d = pool_window(
            module.kernel_size, module.stride, module.padding, getattr(module, "dilation", 1), ""
        )
        return k, s, d
    if isinstance(module, cnn.AdaptiveAvgPool2d | cnn.AdaptiveMaxPool2d):
        # torch's widest adaptive window, and the average step between windows
        k = tuple(-(-i // o) + (0 if i % o == 0 else 1) for i, o in zip(in_hw, out_hw, strict=True))
        s = tuple(max(i // o, 1) for i, o in zip(in_hw, out_hw, strict=True))
        return k, s, (1, 1)
    return None


def _macs(module: nn.Module, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> int:
    if isinstance(module, cnn.Conv2d):
        kh, kw = pair(module.kernel_size, "k")
        return math.prod(y_shape) * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, cnn.ConvTranspose2d):
        kh, kw = pair(module.kernel_size, "k")
        return math.prod(x_shape) * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, cnn.Linear):
        return math.prod(y_shape) * module.in_features
    return 0


def layers(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[LayerInfo]:
    """Every cnn_jax layer ``model`` calls in its eval-mode forward pass, in call order, for an
    input of ``input_shape`` (default: the model's ``example_input_shape()``; NHWC, batch
    included). Layers that only run in training (GoogLeNet's and Inception v3's auxiliary
    heads) are not rows; their parameters are counted by :func:`summary`.

    The receptive field is propagated along the data flow: a layer fed directly by another layer
    extends that layer's field; a layer fed by an intermediate expression (an activation, a
    residual sum) extends the widest field recorded so far at the same spatial size — the main
    path of sequential nets and of residual nets, whose shortcut fields are never wider.
    """
    return _trace(model, input_shape)[0]


def _trace(model: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[list[LayerInfo], Any]:
    """The rows of :func:`layers` and the model's abstract variables."""
    sample = _sample(model, None if input_shape is None else jnp.zeros(input_shape))
    records: list[tuple[nn.Module, Any, Any]] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, LEAF_TYPES):
            records.append((context.module, args[0], out))
        return out

    kwargs = {"train": False} if accepts_train(model) else {}
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kwargs), sample)
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, sample)

    fields: dict[int, tuple[tuple[int, int], tuple[int, int]] | None] = {}
    rows: list[LayerInfo] = []
    for module, x, y in records:
        field = fields[id(x)] if id(x) in fields else _fallback_field(rows, x)
        out_field = None
        if field is not None and y.ndim == 4:
            (rf, jump) = field
            window = _window(module, x.shape[1:3], y.shape[1:3])
            if window is not None:
                k, s, d = window
                rf = tuple(rf[i] + d[i] * (k[i] - 1) * jump[i] for i in range(2))
                jump = tuple(jump[i] * s[i] for i in range(2))
                out_field = (rf, jump)
            elif isinstance(module, _SAME_FIELD):
                out_field = field
        fields[id(y)] = out_field
        path = module.path
        rows.append(
            LayerInfo(
                name=".".join(path),
                kind=type(module).__name__,
                output_shape=tuple(y.shape),
                params=_count(variables.get("params", {}), path),
                buffers=_count(variables.get("batch_stats", {}), path),
                macs=_macs(module, tuple(x.shape), tuple(y.shape)),
                receptive_field=None if out_field is None else out_field[0],
                jump=None if out_field is None else out_field[1],
            )
        )
    return rows, variables


def _fallback_field(rows: list[LayerInfo], x: Any):
    if not rows:  # the network's input
        return ((1, 1), (1, 1))
    if x.ndim != 4:
        return None
    same = [r for r in rows if r.receptive_field and r.output_shape[1:3] == tuple(x.shape[1:3])]
    if not same:
        return None
    widest = max(same, key=lambda r: r.receptive_field[0] * r.receptive_field[1])
    return (widest.receptive_field, widest.jump)


def _fmt_field(rf: tuple[int, int] | None) -> str:
    if rf is None:
        return "-"
    return str(rf[0]) if rf[0] == rf[1] else f"{rf[0]}x{rf[1]}"


def summary(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> str:
    """A table like torchinfo's / Keras ``model.summary()``: each layer's name, output shape,
    parameter count, multiply-accumulates and receptive field, then totals.

    >>> from cnn_jax.models import create
    >>> print(summary(create('lenet5')))  # doctest: +ELLIPSIS
    Layer (type)          Output shape       Params        MACs     RF
    ...
    features.0 (Conv2d)   (1, 28, 28, 6)        156     117,600      5
    ...
    Total params: 61,706
    ...
    """
    rows, variables = _trace(model, input_shape)
    header = ("Layer (type)", "Output shape", "Params", "MACs", "RF")
    body = [
        (
            f"{r.name} ({r.kind})",
            str(r.output_shape),
            f"{r.params:,}",
            f"{r.macs:,}",
            _fmt_field(r.receptive_field),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(5)]
    widths[0] = max(widths[0], 20)

    def fmt(line):
        left = f"{line[0]:<{widths[0]}}   {line[1]:<{widths[1]}}"
        return left + "".join(f"  {line[i]:>{max(widths[i], 6)}}" for i in range(2, 5))

    rule = "=" * len(fmt(header))
    shape = input_shape or tuple(model.example_input_shape())
    total_params = _count(variables, ("params",))
    lines = [fmt(header), rule, *map(fmt, body), rule]
    lines += [f"Total params: {total_params:,}"]
    train_only = total_params - sum(r.params for r in rows)
    if train_only:
        lines += [f"  of which in layers run only in training (auxiliary heads): {train_only:,}"]
    lines += [
        f"Non-trainable state (batch_stats): {_count(variables, ('batch_stats',)):,}",
        f"Total MACs: {sum(r.macs for r in rows):,}",
        f"Input shape (NHWC): {tuple(shape)}",
        f"Params size (float32): {total_params * 4 / 2**20:.2f} MiB",
    ]
    return "\n".join(lines)
