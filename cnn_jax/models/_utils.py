"""Channel arithmetic torchvision's mobile families share (``torchvision/models/_utils.py``)."""

from __future__ import annotations


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: ``v`` rounded to the nearest multiple of ``divisor``
    (at least ``min_value``, by default ``divisor``), rounded up once more when rounding lost
    over 10%. MobileNetV2/V3 and EfficientNet scale every channel count with it.

    >>> make_divisible(32 * 0.35, 8), make_divisible(1280 * 1.1, 8)
    (16, 1408)
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # rounding down must not lose more than 10%
        new_v += divisor
    return new_v
