"""Deterministic variants of a dataset, for experiments that need one claim isolated: fewer
training examples, a subset of the classes, images on a larger canvas, shifted images, a
background cue that is spurious (correlated with the label in training only).

Each function takes the ``{'train', 'validation', 'test'}`` splits of :func:`cnn_jax.data.load`
(or of :func:`from_arrays`) and returns new splits (the inputs are not modified); the train split's
mean/std are recomputed, so the usual normalisation applies. Combine them with
:func:`cnn_jax.data.register` to train on a variant by name with ``cnn-jax train`` / ``fit``:

>>> from cnn_jax import data
>>> from cnn_jax.data import variants
>>> def digits_0to4(**kw):
...     return variants.select_classes(data.load('digits', **kw), range(5))
>>> data.register('digits-0to4-example', digits_0to4, replace=True)
>>> data.load('digits-0to4-example')['train'].num_classes
5
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from cnn_jax.data.sources import Split, from_arrays
from cnn_jax.errors import DatasetError

Splits = Mapping[str, Split]


def _rebuild(
    splits: Splits,
    arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
    note: str,
) -> dict[str, Split]:
    train = splits["train"]
    name = train.name.split("/")[0]
    sources = {k: f"{splits[k].source}, {note}" for k in arrays}
    return from_arrays(
        name,
        arrays,
        num_classes if num_classes is not None else train.num_classes,
        class_names if num_classes is not None else train.class_names,
        sources,
    )


def subset(splits: Splits, per_class: int, *, seed: int = 0, split: str = "train") -> dict:
    """Keeps ``per_class`` examples of every class in ``split`` (the others unchanged), chosen
    with ``numpy.random.default_rng(seed)``, in their original order.

    Raises:
      DatasetError: when a class has fewer than ``per_class`` examples.
    """
    if per_class < 1:
        raise DatasetError(f"per_class must be >= 1, got {per_class}")
    s = splits[split]
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(s.num_classes):
        rows = np.flatnonzero(s.labels == c)
        if len(rows) < per_class:
            raise DatasetError(
                f"{s.name}: class {c} has {len(rows)} examples, fewer than per_class={per_class}"
            )
        keep.append(rng.choice(rows, per_class, replace=False))
    rows = np.sort(np.concatenate(keep))
    arrays = {k: (v.images, v.labels) for k, v in splits.items()}
    arrays[split] = (s.images[rows], s.labels[rows])
    return _rebuild(splits, arrays, note=f"{per_class} per class (seed {seed})")


def select_classes(splits: Splits, classes: Iterable[int]) -> dict[str, Split]:
    """Keeps the examples of ``classes`` in every split, relabelled ``0..len(classes)-1`` in the
    order given (``select_classes(ds, [5, 6, 7, 8, 9])`` maps digit 5 to label 0)."""
    classes = [int(c) for c in classes]
    num = splits["train"].num_classes
    if not classes or len(set(classes)) != len(classes) or not all(0 <= c < num for c in classes):
        raise DatasetError(f"classes must be distinct labels in [0, {num}), got {classes}")
    mapping = np.full(num, -1, np.int64)
    mapping[classes] = np.arange(len(classes))
    arrays = {}
    for k, s in splits.items():
        rows = np.flatnonzero(mapping[s.labels] >= 0)
        arrays[k] = (s.images[rows], mapping[s.labels[rows]].astype(np.int32))
    names = splits["train"].class_names
    return _rebuild(
        splits,
        arrays,
        num_classes=len(classes),
        class_names=tuple(names[c] for c in classes) if names else None,
        note=f"classes {classes}",
    )


def shift(images: np.ndarray, dy: int, dx: int, fill: int = 0) -> np.ndarray:
    """Images (N, H, W, C) moved ``dy`` pixels down and ``dx`` right (negative: up / left); what
    leaves the frame is lost and what enters is ``fill``."""
    images = np.asarray(images)
    h, w = images.shape[1:3]
    out = np.full_like(images, fill)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    if abs(dy) < h and abs(dx) < w:
        out[:, yd, xd] = images[:, ys, xs]
    return out


def on_canvas(splits: Splits, size: int, fill: int = 0) -> dict[str, Split]:
    """Every image centred on a ``size`` × ``size`` canvas of ``fill``, so that shifting it
    keeps the whole object in view (translation experiments)."""
    h, w, c = splits["train"].image_shape
    if size < max(h, w):
        raise DatasetError(f"canvas size {size} is smaller than the images ({h}x{w})")
    top, left = (size - h) // 2, (size - w) // 2
    arrays = {}
    for k, s in splits.items():
        canvas = np.full((len(s), size, size, c), fill, np.uint8)
        canvas[:, top : top + h, left : left + w] = s.images
        arrays[k] = (canvas, s.labels)
    return _rebuild(splits, arrays, note=f"centred on {size}x{size}")


def spurious_cue(
    splits: Splits,
    *,
    cue_class: int,
    train_correlation: float = 1.0,
    test_correlation: float = 0.5,
    strength: int = 96,
    seed: int = 0,
) -> dict[str, Split]:
    """Adds a background cue whose presence predicts ``cue_class`` in training but not at test.

    The cue is a faint diagonal stripe texture (value ``strength`` on the background, where the
    image is darker than it): the "snow" behind the husky. In ``train`` and ``validation`` a
    fraction ``train_correlation`` of the images of ``cue_class`` carry it, and the same fraction
    of the other images do not; in ``test`` that fraction is ``test_correlation`` (0.5: the cue
    says nothing about the label). Which images get it is drawn with ``default_rng(seed)``.
    Relabels nothing; the source of every split records the cue.
    """
    for name, p in (
        ("train_correlation", train_correlation),
        ("test_correlation", test_correlation),
    ):
        if not 0.0 <= p <= 1.0:
            raise DatasetError(f"{name} must be in [0, 1], got {p}")
    if not 0 <= cue_class < splits["train"].num_classes:
        raise DatasetError(f"cue_class {cue_class} is not a label of the dataset")
    if not 0 < strength <= 255:
        raise DatasetError(f"strength must be in (0, 255], got {strength}")
    rng = np.random.default_rng(seed)
    h, w, _ = splits["train"].image_shape
    yy, xx = np.mgrid[:h, :w]
    stripes = (((yy + xx) // 2) % 2 == 0).astype(np.uint8)[..., None] * np.uint8(strength)
    arrays = {}
    for k, s in splits.items():
        p = test_correlation if k == "test" else train_correlation
        has_cue = np.where(s.labels == cue_class, rng.random(len(s)) < p, rng.random(len(s)) >= p)
        images = s.images.copy()
        images[has_cue] = np.maximum(images[has_cue], stripes)
        arrays[k] = (images, s.labels)
    return _rebuild(
        splits,
        arrays,
        note=(
            f"stripe cue on class {cue_class}: train/val correlation {train_correlation}, "
            f"test {test_correlation}"
        ),
    )


def cue_mask(splits_or_images, strength: int = 96) -> np.ndarray:
    """Which images carry :func:`spurious_cue`'s stripes (a test of the cue's presence: every
    stripe pixel at least ``strength``)."""
    images = np.asarray(getattr(splits_or_images, "images", splits_or_images))
    h, w = images.shape[1:3]
    yy, xx = np.mgrid[:h, :w]
    on = ((yy + xx) // 2) % 2 == 0
    return (images[:, on].min(axis=(1, 2)) >= strength) if on.any() else np.zeros(len(images), bool)
