"""Data augmentation as pure JAX functions: explicit keys, jit-able, vmapped over the batch.

The standard transformations are dm-pix's (``random_crop``, ``random_flip_left_right``,
``random_brightness``, ``random_contrast``) with torchvision's padding and a clip to the pixel
range; ``cutout`` has no dm-pix counterpart and is written here.

Single-image functions take ``(key, image)`` with image (H, W, C) float32 in [0, 1] and keep its
shape, dtype and range; :class:`Augment` composes them for a batch with one key per image. Apply
augmentation before normalisation (brightness and contrast are defined on the pixel range).
"""

from __future__ import annotations

from dataclasses import dataclass

import dm_pix as pix
import jax
import jax.numpy as jnp

Array = jax.Array


def _shift(key: Array, image: Array, pad: int, **pad_kwargs) -> Array:
    """Pads by ``pad`` on every side and crops back to the original size at a uniformly random
    offset in ``[0, 2 * pad]`` (dm-pix's ``random_crop``)."""
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), **pad_kwargs)
    return pix.random_crop(key, padded, image.shape)


def random_crop(key: Array, image: Array, padding: int, mode: str = "constant") -> Array:
    """Pads by ``padding`` on every side (zeros, or ``'reflect'`` / ``'edge'``) and crops back to
    the original size at a random offset — torchvision's ``RandomCrop(size, padding)``."""
    return _shift(key, image, padding, mode=mode)


def random_flip_lr(key: Array, image: Array, p: float = 0.5) -> Array:
    """Mirrors left-right with probability ``p``."""
    return pix.random_flip_left_right(key, image, probability=p)


def random_translate(key: Array, image: Array, max_shift: int, fill: float = 0.0) -> Array:
    """Shifts by up to ``max_shift`` pixels in each direction, filling uncovered pixels."""
    return _shift(key, image, max_shift, constant_values=fill)


def brightness(key: Array, image: Array, max_delta: float) -> Array:
    """Adds a uniform offset in ``[-max_delta, max_delta]``, clipped to [0, 1] (dm-pix's
    ``random_brightness``, which leaves the range open, then the clip)."""
    return jnp.clip(pix.random_brightness(key, image, max_delta), 0.0, 1.0)


def contrast(key: Array, image: Array, lower: float, upper: float) -> Array:
    """Scales the deviation from each channel's mean by a factor in ``[lower, upper]``, clipped
    (dm-pix's ``random_contrast``, then the clip)."""
    return jnp.clip(pix.random_contrast(key, image, lower, upper), 0.0, 1.0)


def cutout(key: Array, image: Array, size: int) -> Array:
    """Zeroes a ``size``×``size`` square at a random centre (it may be cut by the border)."""
    h, w, _ = image.shape
    cy_key, cx_key = jax.random.split(key)
    cy = jax.random.randint(cy_key, (), 0, h)
    cx = jax.random.randint(cx_key, (), 0, w)
    ys = jnp.arange(h)[:, None, None]
    xs = jnp.arange(w)[None, :, None]
    inside = (jnp.abs(ys - cy) <= (size - 1) // 2 + (ys >= cy) * ((size - 1) % 2)) & (
        jnp.abs(xs - cx) <= (size - 1) // 2 + (xs >= cx) * ((size - 1) % 2)
    )
    return jnp.where(inside, jnp.zeros((), image.dtype), image)


@dataclass(frozen=True)
class Augment:
    """A batch augmentation pipeline; fields left at their defaults are off.

    Order: crop, translate, flip, brightness, contrast, cutout. Hashable, so it can be a static
    argument of a jitted function.

    >>> aug = Augment(crop_padding=4, flip=True)
    >>> out = jax.jit(aug)(jax.random.key(0), jnp.zeros((8, 32, 32, 3)))
    >>> out.shape, out.dtype
    ((8, 32, 32, 3), dtype('float32'))
    """

    crop_padding: int = 0
    crop_mode: str = "constant"
    translate: int = 0
    flip: bool = False
    brightness: float = 0.0
    contrast: tuple[float, float] | None = None
    cutout: int = 0

    @property
    def active(self) -> bool:
        return bool(
            self.crop_padding
            or self.translate
            or self.flip
            or self.brightness
            or self.contrast
            or self.cutout
        )

    def _one(self, key: Array, image: Array) -> Array:
        keys = jax.random.split(key, 6)
        if self.crop_padding:
            image = random_crop(keys[0], image, self.crop_padding, self.crop_mode)
        if self.translate:
            image = random_translate(keys[1], image, self.translate)
        if self.flip:
            image = random_flip_lr(keys[2], image)
        if self.brightness:
            image = brightness(keys[3], image, self.brightness)
        if self.contrast is not None:
            image = contrast(keys[4], image, *self.contrast)
        if self.cutout:
            image = cutout(keys[5], image, self.cutout)
        return image

    def __call__(self, key: Array, images: Array) -> Array:
        """Augments a batch (N, H, W, C) of float pixels in [0, 1] or raw uint8 pixels (scaled
        to [0, 1] first), one independent key per image. Normalised images are outside [0, 1]:
        brightness and contrast would clip them, so normalise after augmenting."""
        if images.ndim != 4:
            raise ValueError(f"Augment expects a batch (N, H, W, C), got shape {images.shape}")
        if images.dtype == jnp.uint8:
            images = images.astype(jnp.float32) / 255.0
        elif not jnp.issubdtype(images.dtype, jnp.floating):
            raise TypeError(f"Augment expects uint8 or float pixels, got {images.dtype}")
        if not self.active:
            return images
        return jax.vmap(self._one)(jax.random.split(key, images.shape[0]), images)
