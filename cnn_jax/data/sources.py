"""Datasets as random-access splits: from tfds (no TensorFlow), image folders, or arrays.

``load(name)`` returns ``{'train', 'validation', 'test'}`` splits with int32 labels and the
per-channel mean/std of the *train* split, used to normalise every split the same way. A split
whose decoded images fit :data:`IN_MEMORY_LIMIT_BYTES` is a :class:`Split` holding uint8 images
(N, H, W, C); a larger one is a :class:`~cnn_jax.data.stream.StreamedSplit`, read and decoded by
index as its batches are asked for (:func:`cnn_jax.data.batches`), never whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cnn_jax.errors import DatasetError

if TYPE_CHECKING:
    from cnn_jax.data.images import HostAugment

# A dataset whose decoded train split is larger than this is streamed from its files instead
# of held in memory (the same budget as a split kept on the accelerator by the training loop).
IN_MEMORY_LIMIT_BYTES = 2 * 2**30
# Normalisation statistics of a train split too large to hold come from this many of its
# images (a fixed, seeded sample): the channel means are then known to about 0.002.
STATS_SAMPLE = 2000
STATS_SEED = 0

# How each known tfds dataset's splits map to ours (tfds split-slicing syntax). Any other prepared
# tfds dataset works too: its own validation split if it has one, else the last 10% of train.
TFDS_SPLITS: dict[str, dict[str, str]] = {
    "digits": {"train": "train", "validation": "validation", "test": "test"},
    "mnist": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "fashion_mnist": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "cifar10": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "cifar100": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "kmnist": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "tf_flowers": {"train": "train[:70%]", "validation": "train[70%:85%]", "test": "train[85%:]"},
    # ImageNet's test labels are withheld: test on its validation split, validate on 1% of
    # train (the usual "minival").
    "imagenet2012": {"train": "train[:99%]", "validation": "train[99%:]", "test": "validation"},
}
_TFDS_NAME = {"digits": "sklearn_digits"}
EMBEDDED = ("digits",)
# Datasets built in this process by a function (`register`), e.g. variants of a tfds dataset.
_REGISTERED: dict[str, Callable[..., Mapping[str, Split]]] = {}


class DatasetWarning(UserWarning):
    """Something about the data a run should know but that does not stop it (e.g. unreadable
    image files that were skipped)."""


class UnknownDatasetError(DatasetError):
    """A dataset name that is neither embedded, registered, a folder nor a prepared tfds
    dataset."""


class SplitBase:
    """What every split offers (in memory or streamed): ``len``, ``image_shape``, ``nbytes``,
    ``normalize``; subclasses hold ``mean`` / ``std``."""

    in_memory: ClassVar[bool] = True
    mean: np.ndarray
    std: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes of the whole split decoded as uint8 model inputs (whether or not it is held)."""
        return len(self) * int(np.prod(self.image_shape))  # type: ignore[attr-defined]

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> float32 ``(x / 255 - mean) / std`` with the train statistics."""
        return standardize(np.asarray(images, np.float32) / 255.0, self.mean, self.std)


@dataclass(frozen=True, eq=False)
class Split(SplitBase):
    """One split in memory, random access with a length.

    Attributes:
      name: ``'<dataset>/<split>'``.
      images: uint8 array (N, H, W, C), pixel values 0–255.
      labels: int32 array (N,), each in ``[0, num_classes)``.
      num_classes: number of classes of the dataset.
      mean, std: float32 (C,) statistics of the dataset's *train* split, pixels scaled to [0, 1].
      class_names: label names when the source has them.
      source: where the examples come from, e.g. the tfds split ``'train[90%:]'`` (recorded in a
        run's summary so a reader sees which data each number was measured on).
      details: what a run records about the data (JSON-able): for an image folder its path,
        file count, a hash of the file list, skipped unreadable files, how images were sized.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    class_names: tuple[str, ...] | None = None
    source: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index])}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)


def standardize(images: Any, mean: Any, std: Any) -> Any:
    """``(images - mean) / std`` per channel (the last axis), for pixels scaled to [0, 1]: the
    one normalisation of the library (NumPy or JAX arrays; the dtype of ``images`` is kept)."""
    return ((images - mean) / std).astype(images.dtype)


def _check_arrays(name: str, images: Any, labels: Any, num_classes: int):
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) == 0:
        raise DatasetError(f"{name} is empty")
    if images.ndim == 3:  # (N, H, W) greyscale
        images = images[..., None]
    if images.ndim != 4:
        raise DatasetError(
            f"{name}: images must be (N, H, W, C) or (N, H, W), got shape {images.shape}"
        )
    if images.dtype != np.uint8:
        raise DatasetError(
            f"{name}: images must be uint8 with values 0-255, got {images.dtype} (convert with "
            "np.round(x * 255).astype(np.uint8) for floats in [0, 1])"
        )
    if labels.shape != (len(images),):
        raise DatasetError(
            f"{name}: expected {len(images)} labels of shape (N,), got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{name}: labels must be integers, got {labels.dtype}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DatasetError(
            f"{name}: {int(bad.sum())} label(s) outside [0, {num_classes}), e.g. "
            f"{labels[bad][:5].tolist()}"
        )
    return images, labels.astype(np.int32)


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """int64 (C, 256): how many pixels of each channel hold each uint8 value. Histograms add
    up exactly, in any order, so statistics from them do not depend on how images were
    grouped (in memory or streamed)."""
    images = np.asarray(images)
    flat = images.reshape(-1, images.shape[-1])
    return np.stack([np.bincount(flat[:, c], minlength=256) for c in range(flat.shape[1])])


def stats_from_histogram(histogram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of pixels scaled to [0, 1] (population std, at least 1e-6)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    count = histogram.sum(axis=1)
    mean = histogram @ values / count
    std = np.sqrt(np.maximum(histogram @ values**2 / count - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return stats_from_histogram(pixel_histogram(images))


def from_arrays(
    name: str,
    splits: Mapping[str, tuple[Any, Any]],
    num_classes: int,
    class_names: tuple[str, ...] | None = None,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Split]:
    """Builds validated splits from ``{split: (uint8 images, labels)}``; needs a ``'train'`` split
    (its statistics normalise every split). ``sources`` describes where each split came from."""
    if "train" not in splits:
        raise DatasetError(f"{name}: a 'train' split is required, got {sorted(splits)}")
    checked = {
        split: _check_arrays(f"{name}/{split}", x, y, num_classes)
        for split, (x, y) in splits.items()
    }
    shapes = {split: x.shape[1:] for split, (x, _) in checked.items()}
    if len(set(shapes.values())) != 1:
        raise DatasetError(f"{name}: splits have different image shapes {shapes}")
    mean, std = _channel_stats(checked["train"][0])
    return {
        split: Split(
            f"{name}/{split}",
            x,
            y,
            num_classes,
            mean,
            std,
            class_names,
            (sources or {}).get(split, split),
        )
        for split, (x, y) in checked.items()
    }


def short_name(name: str) -> str:
    """A dataset name as a file name: ``'folder:~/photos/flowers'`` -> ``'flowers'``,
    ``'imagenette/320px-v2'`` -> ``'imagenette-320px-v2'``."""
    if name.startswith("folder:"):
        name = os.path.basename(os.path.normpath(os.path.expanduser(name[len("folder:") :])))
    return name.replace("/", "-").replace(os.sep, "-") or "folder"


def default_data_dir() -> str:
    """Where tfds datasets are looked for: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def register(
    name: str, factory: Callable[..., Mapping[str, Split]], *, replace: bool = False
) -> None:
    """Makes ``load(name)`` (and so ``fit`` / ``cnn-jax train`` with ``dataset=name``) build a
    dataset with ``factory(data_dir=..., image_size=...)``, which returns ``{'train',
    'validation', 'test'}`` splits, typically a :mod:`cnn_jax.data.variants` transform of
    another dataset. Registration lasts for the process: a script registers its datasets before
    it trains or re-evaluates runs that use them.

    Raises:
      DatasetError: ``name`` is an embedded dataset's name, or is registered already and
        ``replace`` is False (a script that registers its datasets on every run passes
        ``replace=True``, so a name never silently means another process-wide dataset).
    """
    if name in EMBEDDED or (name in _REGISTERED and not replace):
        raise DatasetError(f"dataset {name!r} is already registered (replace=True to redefine)")
    _REGISTERED[name] = factory


def registered() -> list[str]:
    """Names added with :func:`register`, sorted."""
    return sorted(_REGISTERED)


def _load_registered(name: str, data_dir, size) -> dict[str, Split]:
    from cnn_jax.data import images as imagelib

    splits = dict(_REGISTERED[name](data_dir=data_dir, image_size=size))
    missing = {"train", "validation", "test"} - set(splits)
    if missing:
        raise DatasetError(f"registered dataset {name!r} returned no {sorted(missing)} split(s)")
    if size is not None and splits["train"].image_shape[:2] != size:
        first = splits["train"]
        spec = imagelib.ImageSpec(size, first.image_shape[-1])
        arrays = {
            k: (np.stack([imagelib.decode(x, spec) for x in s.images]), s.labels)
            for k, s in splits.items()
        }
        sources = {k: s.source for k, s in splits.items()}
        return from_arrays(name, arrays, first.num_classes, first.class_names, sources)
    return splits


def load(
    name: str = "digits",
    *,
    data_dir: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    stream: bool | None = None,
    augment: HostAugment | None = None,
    crop_fraction: float | None = None,
    workers: int | None = None,
    split_seed: int = 0,
) -> dict[str, Any]:
    """Loads a dataset's train / validation / test splits, without TensorFlow.

    A dataset whose decoded train split fits :data:`IN_MEMORY_LIMIT_BYTES` is read into memory
    (:class:`Split`); a larger one is streamed
    (:class:`~cnn_jax.data.stream.StreamedSplit`: decoded by index in reading processes as
    :func:`~cnn_jax.data.batches` asks for batches). Either way the examples, their order and
    the normalisation statistics are the same, so ``stream`` changes memory use, never a
    result.

    Args:
      name: ``'digits'`` (embedded, prepared on first use, no network), ``'folder:PATH'`` (an
        image folder, see :mod:`cnn_jax.data.folder`), a name added with :func:`register`, or
        any tfds dataset prepared in ``data_dir`` (``cnn-jax prepare`` writes ``mnist``,
        ``fashion_mnist``, ``kmnist``, ``cifar10``, ``cifar100``, ``imagenette``,
        ``imagewoof``, ``imagenet2012`` and any image folder from their official files).
        Known datasets use the split mapping in :data:`TFDS_SPLITS`.
      data_dir: the tfds data directory (default :func:`default_data_dir`).
      image_size: the model's input (H, W) (an int for square), e.g. 32 for LeNet-5; needed
        for datasets with images of different sizes. Images are resized to cover it and
        centre-cropped (their aspect ratio is kept).
      stream: ``True`` streams even a dataset that fits in memory, ``False`` holds even one that
        does not; ``None`` (default) decides by size.
      augment: a :class:`~cnn_jax.data.images.HostAugment` for the train split (random resized
        crop, flip, colour jitter from each full-size image): the dataset is then streamed.
      crop_fraction: the evaluation crop (:class:`~cnn_jax.data.images.ImageSpec`); default
        0.875 with a random resized crop (torchvision's ImageNet recipe), else 1.0.
      workers: reading processes of streamed splits (default
        :func:`~cnn_jax.data.stream.default_workers`).
      split_seed: the seed of the split of an image folder without split folders.

    Returns:
      ``{'train', 'validation', 'test'}`` splits.

    Raises:
      DatasetError: unknown name (listing the known ones), a dataset that is not prepared (saying
        how to prepare it), empty splits, labels outside the class range, malformed images.

    >>> ds = load('digits')
    >>> {k: len(v) for k, v in ds.items()}
    {'train': 1257, 'validation': 270, 'test': 270}
    """
    size = None
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 1:
            raise DatasetError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    if workers is not None and workers < 0:
        raise DatasetError(f"workers must be >= 0, got {workers}")
    from cnn_jax.data import folder

    if name.startswith(folder.PREFIX):
        path = name[len(folder.PREFIX) :]
        if not path:
            raise DatasetError("folder: needs a path, e.g. --dataset folder:~/photos/flowers")
        return folder.load_folder(
            path,
            image_size=size,
            stream=stream,
            augment=augment,
            crop_fraction=crop_fraction,
            workers=workers,
            split_seed=split_seed,
        )
    if name in _REGISTERED:
        if stream or (augment is not None and augment.active):
            raise DatasetError(
                f"registered dataset {name!r} is built in memory: it cannot be streamed or "
                "augmented on the host (use the step's augmentation)"
            )
        return _load_registered(name, data_dir, size)
    from cnn_jax.data import tfds_source

    return tfds_source.load_tfds(
        name,
        data_dir=data_dir or default_data_dir(),
        size=size,
        stream=stream,
        augment=augment,
        crop_fraction=crop_fraction,
        workers=workers,
    )


def _default_split_map(splits) -> dict[str, str]:
    """train / validation / test for a dataset without a known mapping. The test split is never
    the validation split that picks the best checkpoint: a dataset with a validation split but no
    test split tests on that validation split and validates on the last 10% of train; one with
    only train uses 80 / 10 / 10% of it."""
    names = set(splits)
    if "train" not in names:
        raise DatasetError(f"dataset has no 'train' split (splits: {sorted(names)})")
    has_val, has_test = "validation" in names, "test" in names
    if has_val and has_test:
        return {"train": "train", "validation": "validation", "test": "test"}
    if has_test:
        return {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}
    if has_val:
        return {"train": "train[:90%]", "validation": "train[90%:]", "test": "validation"}
    return {"train": "train[:80%]", "validation": "train[80%:90%]", "test": "train[90%:]"}
