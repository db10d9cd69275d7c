"""Image files to model inputs on the host: decoding (Pillow), EXIF orientation, colour modes,
resizing with a centre crop, and torchvision's ImageNet training augmentations (random resized
crop, horizontal flip, colour jitter) drawn from an explicit NumPy generator.

This module needs only NumPy and Pillow: it runs inside the data-reading worker processes.

Geometry. An image of ``h x w`` (after its EXIF orientation) becomes ``size = (H, W)``:

* evaluation (and training without host augmentation): the largest centred box with the
  output's aspect ratio, shrunk by ``crop_fraction``, resized to ``(H, W)`` — torchvision's
  ``Resize(round(S / crop_fraction))`` + ``CenterCrop(S)`` for a square output (its ImageNet
  recipe uses ``crop_fraction = 224 / 256 = 0.875``), done as one bilinear resampling of the box;
* training with :class:`HostAugment`: a box drawn as torchvision's ``RandomResizedCrop`` draws
  it (area fraction in ``scale``, log-uniform aspect ratio in ``ratio``, ten tries, then a
  centred fallback), resized to ``(H, W)``; then a horizontal flip and ``ColorJitter``.

JPEG files are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's ``draft``)
when the box still covers the output at that scale, which makes decoding large photos several
times faster; the pixels then differ slightly from a full-size decode followed by the resize.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# What torchvision's ImageFolder and Keras's image_dataset_from_directory both read.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
# Pillow modes holding one grey channel (with or without alpha, at any bit depth).
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# What Pillow raises for a file that is not a readable image (UnidentifiedImageError is an
# OSError; truncated data raises OSError or EOFError; broken headers ValueError / SyntaxError).
DECODE_ERRORS = (OSError, EOFError, ValueError, SyntaxError, Image.DecompressionBombError)
_ORIENTATION_TAG = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def is_image_file(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ImageSpec:
    """How every image of a dataset becomes a model input.

    Attributes:
      size: output ``(H, W)``; ``None`` keeps each image's own size (all must share one).
      channels: 1 (grey) or 3 (RGB): every mode (palette, alpha, CMYK, 16-bit) is converted.
      crop_fraction: the side of the centred evaluation box relative to the largest box of
        the output's aspect ratio (1.0: the whole short side; torchvision's ImageNet recipe:
        0.875).
      reduced: decode a JPEG at 1/2, 1/4 or 1/8 scale when the box still covers the output
        at that scale (``False``: always at full size, as torchvision's loader does).
    """

    size: tuple[int, int] | None
    channels: int
    crop_fraction: float = 1.0
    reduced: bool = True

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")


@dataclass(frozen=True)
class HostAugment:
    """Per-image training augmentation on the host, from the full-resolution image: torchvision's
    ImageNet recipe (``RandomResizedCrop(size, scale, ratio)``, ``RandomHorizontalFlip()``,
    optionally ``ColorJitter(brightness, contrast, saturation)`` in a random order). Each image
    draws from its own generator, so the result is a function of that generator's seed.

    Attributes:
      scale: the crop's area as a fraction of the image, drawn uniformly (``None``: no random
        crop, the evaluation view). torchvision's default is ``(0.08, 1.0)``.
      ratio: the crop's aspect ratio (width / height), drawn log-uniformly.
      flip: mirror left-right with probability 1/2.
      color_jitter: ``(brightness, contrast, saturation)`` strengths: each factor is drawn from
        ``[max(0, 1 - s), 1 + s]``, applied with Pillow's ``ImageEnhance`` as torchvision does
        on PIL images; 0 leaves that property alone. A float sets all three.

    >>> aug = HostAugment(flip=True, color_jitter=0.4)
    >>> aug.color_jitter
    (0.4, 0.4, 0.4)
    """

    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: float | tuple[float, float, float] = 0.0

    def __post_init__(self):
        jitter = self.color_jitter
        if not isinstance(jitter, tuple):
            jitter = (float(jitter),) * 3
        object.__setattr__(self, "color_jitter", tuple(float(v) for v in jitter))
        if len(self.color_jitter) != 3 or min(self.color_jitter) < 0:
            raise ValueError(
                "color_jitter must be >= 0, or three of them (brightness, contrast, saturation)"
            )
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")

    @property
    def active(self) -> bool:
        return self.scale is not None or self.flip or any(self.color_jitter)


# ---------------------------------------------------------------------------------------------
# Opening and converting
# ---------------------------------------------------------------------------------------------


def open_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Opens an image file (a path or its bytes) without decoding its pixels (Pillow reads the
    header only); GIFs and other animations give their first frame."""
    if isinstance(source, bytes | bytearray | memoryview):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) of an opened image."""
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except (ValueError, TypeError, SyntaxError, OSError):  # a malformed EXIF block: ignore it
        return 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """``(height, width)`` of an opened image as it is displayed (EXIF orientation applied)."""
    w, h = img.size
    return (w, h) if orientation(img) in _TRANSPOSED else (h, w)


def is_grey(img: Image.Image) -> bool:
    """Whether an opened image holds one grey channel (a palette counts as colour)."""
    return img.mode in GREY_MODES


def _to_channels(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as 8-bit ``'L'`` or ``'RGB'``: palette, alpha (dropped, as torchvision's and
    Keras's loaders drop it), CMYK, YCbCr and 16/32-bit grey converted."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: 0-65535 -> 0-255
        grey = np.asarray(img, np.float64) * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.round(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


# ---------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------


def center_box(
    h: int, w: int, size: tuple[int, int], crop_fraction: float = 1.0
) -> tuple[float, float, float, float]:
    """``(top, left, height, width)`` of the centred box of ``size``'s aspect ratio covering
    ``crop_fraction`` of the largest such box of an ``h x w`` image."""
    out_h, out_w = size
    k = max(out_h / h, out_w / w) / crop_fraction  # output pixels per image pixel
    box_h, box_w = out_h / k, out_w / k
    return (h - box_h) / 2, (w - box_w) / 2, box_h, box_w


def random_resized_crop_box(
    rng: np.random.Generator,
    h: int,
    w: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` drawn as torchvision's
    ``RandomResizedCrop.get_params``: up to ten tries of an area fraction uniform in ``scale``
    and an aspect ratio log-uniform in ``ratio`` that fits the image, else the centred box with
    the ratio clamped to ``ratio``."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        ch, cw = h, round(h * max(ratio))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _color_jitter(img: Image.Image, rng: np.random.Generator, strengths) -> Image.Image:
    """torchvision's ``ColorJitter`` on a PIL image (hue left out): the enhancements in a
    random order, each with a factor uniform in ``[max(0, 1 - s), 1 + s]``."""
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    order = rng.permutation(3)
    factors = [rng.uniform(max(0.0, 1 - s), 1 + s) if s else None for s in strengths]
    for i in order:
        if factors[i] is not None and not (i == 2 and img.mode == "L"):
            img = enhancers[i](img).enhance(factors[i])
    return img


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def decode(
    source: str | os.PathLike | bytes | np.ndarray,
    spec: ImageSpec,
    augment: HostAugment | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One image as a model input: uint8 ``(H, W, channels)``.

    Args:
      source: a file path, the file's bytes, or an already decoded uint8 array (H, W[, C]).
      spec: the output size, channels and evaluation crop.
      augment: training augmentation, drawn from ``rng`` (``None``: the evaluation view).
      rng: the image's own generator (needed with ``augment``).

    Raises:
      One of :data:`DECODE_ERRORS`: the file is not a readable image.
    """
    if augment is not None and augment.active and rng is None:
        raise ValueError("decode: augment needs the image's rng")
    if isinstance(source, np.ndarray):
        array = source[..., 0] if source.ndim == 3 and source.shape[-1] == 1 else source
        with Image.fromarray(array) as img:
            return _transform(img, 1, spec, augment, rng)
    with open_image(source) as img:
        return _transform(img, orientation(img), spec, augment, rng)


def _transform(img, tag, spec, augment, rng) -> np.ndarray:
    raw_w, raw_h = img.size
    h, w = (raw_w, raw_h) if tag in _TRANSPOSED else (raw_h, raw_w)
    size = spec.size or (h, w)
    if augment is not None and augment.scale is not None:
        box = random_resized_crop_box(rng, h, w, augment.scale, augment.ratio)
    else:
        box = center_box(h, w, size, spec.crop_fraction)
    top, left, box_h, box_w = box
    reduce = min(box_h / size[0], box_w / size[1])  # image pixels per output pixel
    if spec.reduced and img.format == "JPEG" and reduce >= 2:
        img.draft(None, (math.ceil(raw_w / reduce), math.ceil(raw_h / reduce)))
    if tag != 1:
        img = ImageOps.exif_transpose(img)
    img = _to_channels(img, spec.channels)
    sy, sx = img.height / h, img.width / w  # a draft decode is smaller than the image
    pixel_box = (left * sx, top * sy, (left + box_w) * sx, (top + box_h) * sy)
    if img.size != (size[1], size[0]) or pixel_box != (0, 0, img.width, img.height):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=pixel_box)
    if augment is not None:
        if augment.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if any(augment.color_jitter):
            img = _color_jitter(img, rng, augment.color_jitter)
    out = np.asarray(img, np.uint8)
    return out[..., None] if out.ndim == 2 else out


def verify(source: str | os.PathLike | bytes) -> None:
    """Decodes the whole file at the smallest scale libjpeg offers (every byte is read, so
    truncated or corrupt data raises), much faster than a full decode of a large JPEG.

    Raises:
      One of :data:`DECODE_ERRORS`: the file is not a readable image.
    """
    with open_image(source) as img:
        if img.format == "JPEG":
            img.draft(None, (1, 1))
        img.load()


def describe(error: BaseException) -> str:
    """A short reason for an unreadable image (Pillow's message, first line)."""
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image Pillow can read"
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:80]


__all__ = [
    "DECODE_ERRORS",
    "GREY_MODES",
    "IMAGE_EXTENSIONS",
    "HostAugment",
    "ImageSpec",
    "center_box",
    "decode",
    "describe",
    "is_grey",
    "is_image_file",
    "open_image",
    "orientation",
    "oriented_size",
    "random_resized_crop_box",
    "verify",
]
