"""Channel shuffle (ShuffleNet) on channels-last arrays."""

from __future__ import annotations

import jax

Array = jax.Array


def check_groups(groups: int) -> None:
    """torch's check on ``groups`` (shared with the module, which checks at construction)."""
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(
            f"Number of groups to divide channels in must be positive. Value of groups:{groups!r}"
        )


def channel_shuffle(input: Array, groups: int) -> Array:
    """``torch.nn.functional.channel_shuffle`` (and torchvision's shufflenetv2
    ``channel_shuffle(x, groups)``) with channels on the **last** axis.

    Channel ``j`` of the output is channel ``(j % groups) * (C // groups) + j // groups`` of the
    input, torch's order on its NCHW channel axis: the NHWC result equals torch's result
    transposed to NHWC. Here the (groups, C // groups) split is on the last axis instead of
    axis 1.

    Raises:
      ValueError: an input of rank < 3, ``groups`` not a positive int, or a channel count not
        divisible by ``groups`` (torch's checks).

    >>> channel_shuffle(jnp.arange(6.0).reshape(1, 1, 1, 6), 3)[0, 0, 0]
    Array([0., 2., 4., 1., 3., 5.], dtype=float32)
    """
    check_groups(groups)
    if input.ndim < 3:
        raise ValueError(
            f"channel_shuffle expects input with > 2 dims (channels last, e.g. NHWC), but got "
            f"input with sizes {list(input.shape)}"
        )
    channels = input.shape[-1]
    if channels % groups:
        raise ValueError(
            f"Number of channels must be divisible by groups. Got {channels} channels and "
            f"{groups} groups."
        )
    split = input.reshape(*input.shape[:-1], groups, channels // groups)
    return split.swapaxes(-1, -2).reshape(input.shape)


__all__ = ["channel_shuffle"]
