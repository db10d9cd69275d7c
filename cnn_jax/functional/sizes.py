"""Output-size arithmetic of convolutions and pooling, one axis at a time (torch's rules).

The layers compute their output shapes with these functions, and ``cnn_jax.maths`` re-exports them
for teaching, so the formula the course states is the one the code runs.
"""

from __future__ import annotations


def conv_output_size(
    size: int,
    kernel_size: int,
    padding: int | tuple[int, int] = 0,
    stride: int = 1,
    dilation: int = 1,
) -> int:
    """Output length of a convolution along one axis: ``⌊(W + 2P − d(K−1) − 1) / S⌋ + 1``.

    ``padding`` may be a ``(low, high)`` pair (torch's 'same' with an even kernel pads unevenly).

    >>> conv_output_size(32, 5)            # LeNet-5's C1: 32x32 -> 28x28
    28
    >>> conv_output_size(227, 11, stride=4)  # AlexNet's first layer
    55
    """
    total = 2 * padding if isinstance(padding, int) else sum(padding)
    return (size + total - dilation * (kernel_size - 1) - 1) // stride + 1


def pool_output_size(
    size: int,
    kernel_size: int,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of a pooling layer along one axis; ``stride`` defaults to ``kernel_size``.

    With ``ceil_mode`` the division rounds up, except that a window may not start in the right
    padding (torch's rule).

    >>> pool_output_size(5, 2), pool_output_size(5, 2, ceil_mode=True)
    (2, 3)
    """
    stride = kernel_size if stride is None else stride
    span = size + 2 * padding - dilation * (kernel_size - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    # torch: the last window must start inside the input or the left padding.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def conv_transpose_output_size(
    size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """Output length of a transposed convolution: ``(W − 1)S − 2P + d(K−1) + output_padding + 1``.

    >>> conv_transpose_output_size(16, 4, stride=2, padding=1)  # the usual 2x upsampling
    32
    """
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1
