"""LayerNorm (and torchvision's channels-last ``LayerNorm2d``) and LocalResponseNorm, named and
parameterised like torch.nn (BatchNorm2d lives in :mod:`cnn_jax.nn.layers`)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from cnn_jax import functional as F
from cnn_jax._utils import check_floating, check_nhwc
from cnn_jax.functional.normalization import normalized_shape_tuple

Array = jax.Array


def _layer_norm(module: LayerNorm, x: Array) -> Array:
    shape = normalized_shape_tuple(module.normalized_shape)
    weight = bias = None
    if module.elementwise_affine:
        weight = module.param("weight", nn.initializers.ones, shape)
        if module.bias:
            bias = module.param("bias", nn.initializers.zeros, shape)
    return F.layer_norm(x, shape, weight, bias, module.eps)


class LayerNorm(nn.Module):
    """``torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)``:
    normalises over the trailing ``normalized_shape`` axes; parameters ``weight`` (ones) and
    ``bias`` (zeros) of that shape.

    The axes are the array's own trailing axes. ConvNeXt's blocks apply ``nn.LayerNorm(C)`` after
    permuting NCHW to NHWC, which on cnn_jax's NHWC arrays is simply ``LayerNorm(C)``; for a
    4-D NHWC input :class:`LayerNorm2d` states that (and checks the channel count).

    >>> ln = LayerNorm(8)
    >>> variables = ln.init(jax.random.key(0), jnp.zeros((2, 4, 4, 8)))
    >>> variables['params']['weight'].shape, ln.apply(variables, jnp.ones((2, 4, 4, 8))).shape
    ((8,), (2, 4, 4, 8))
    """

    normalized_shape: int | Sequence[int]
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True

    def __post_init__(self) -> None:
        normalized_shape_tuple(self.normalized_shape)
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """A small input shape this layer accepts (used to build abstract variables)."""
        return (1, *normalized_shape_tuple(self.normalized_shape))

    @nn.compact
    def __call__(self, x: Array) -> Array:
        check_floating(x, type(self).__name__)
        return _layer_norm(self, x)


class LayerNorm2d(LayerNorm):
    """torchvision's ``LayerNorm2d`` (torchvision/models/convnext.py) on NHWC input: a
    ``LayerNorm(C)`` over the channel axis.

    torchvision permutes its NCHW input to NHWC, applies ``layer_norm`` over C and permutes back;
    cnn_jax's arrays are NHWC already, so both permutations vanish and only the normalisation
    over the last axis remains. Same arguments and parameters (``weight``, ``bias`` of shape
    (C,)) as torchvision's, which ConvNeXt builds with ``eps=1e-6``.

    >>> ln = LayerNorm2d(8, eps=1e-6)
    >>> variables = ln.init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))
    >>> ln.apply(variables, jnp.ones((2, 4, 4, 8))).shape
    (2, 4, 4, 8)
    """

    def __post_init__(self) -> None:
        if not isinstance(self.normalized_shape, int) and len(self.normalized_shape) != 1:
            raise ValueError(
                "LayerNorm2d normalises over the channels: normalized_shape must be the channel "
                f"count (an int or a 1-element sequence), got {self.normalized_shape!r}"
            )
        super().__post_init__()

    def example_input_shape(self) -> tuple[int, ...]:
        """A small NHWC input shape this layer accepts (used to build abstract variables)."""
        return (1, 1, 1, *normalized_shape_tuple(self.normalized_shape))

    @nn.compact
    def __call__(self, x: Array) -> Array:
        (channels,) = normalized_shape_tuple(self.normalized_shape)
        check_nhwc(x, channels, "LayerNorm2d", channel_name="normalized_shape")
        check_floating(x, "LayerNorm2d")
        return _layer_norm(self, x)


class LocalResponseNorm(nn.Module):
    """``torch.nn.LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=1.0)`` with channels on the
    last axis (NHWC): each value divided by ``(k + alpha * mean of the squares over `size`
    neighbouring channels) ** beta``, torch's window and zero padding
    (:func:`cnn_jax.functional.local_response_norm`).

    >>> LocalResponseNorm(2).apply({}, jnp.ones((1, 2, 2, 4))).shape
    (1, 2, 2, 4)
    """

    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"LocalResponseNorm: size must be a positive int, got {self.size!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
