"""Pure functions under the layers, named like ``torch.nn.functional`` (NHWC, torch weight layouts).

Every function is jit-, vmap- and grad-safe; shapes and arguments are checked at trace time.
"""

from cnn_jax.functional.activation import (
    gelu,
    hardsigmoid,
    hardswish,
    hardtanh,
    relu,
    relu6,
    silu,
)
from cnn_jax.functional.basic import dropout, dropout2d, flatten, linear
from cnn_jax.functional.conv import (
    PADDING_MODES,
    auto_plan,
    available_conv_backends,
    conv2d,
    conv_general,
    conv_transpose2d,
    resolve_conv_padding,
    transpose_kernel,
)
from cnn_jax.functional.fusion import materialize, materialize_gradient
from cnn_jax.functional.normalization import (
    BatchNormStats,
    batch_norm,
    layer_norm,
    local_response_norm,
)
from cnn_jax.functional.pooling import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    adaptive_max_pool2d_with_indices,
    adaptive_windows,
    avg_pool2d,
    max_pool2d,
    max_pool2d_with_indices,
    max_unpool2d,
)
from cnn_jax.functional.shuffle import channel_shuffle
from cnn_jax.functional.sizes import (
    conv_output_size,
    conv_transpose_output_size,
    pool_output_size,
)
from cnn_jax.functional.stochastic import stochastic_depth

__all__ = [
    "PADDING_MODES",
    "BatchNormStats",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "adaptive_max_pool2d_with_indices",
    "adaptive_windows",
    "auto_plan",
    "available_conv_backends",
    "avg_pool2d",
    "batch_norm",
    "channel_shuffle",
    "conv2d",
    "conv_general",
    "conv_output_size",
    "conv_transpose2d",
    "conv_transpose_output_size",
    "dropout",
    "dropout2d",
    "flatten",
    "gelu",
    "hardsigmoid",
    "hardswish",
    "hardtanh",
    "layer_norm",
    "linear",
    "local_response_norm",
    "materialize",
    "materialize_gradient",
    "max_pool2d",
    "max_pool2d_with_indices",
    "max_unpool2d",
    "pool_output_size",
    "relu",
    "relu6",
    "resolve_conv_padding",
    "silu",
    "stochastic_depth",
    "transpose_kernel",
]
