"""Splits too large to hold: images stay in their files (an image folder, or a prepared tfds
dataset read with ``tfds.data_source``) and are decoded by index when a batch asks for them —
in grain worker processes, see :func:`cnn_jax.data.batches`.

A :class:`StreamedSplit` offers what a :class:`~cnn_jax.data.Split` offers except the
``images`` array: ``len``, ``image_shape``, ``nbytes``, ``num_classes``, ``mean`` / ``std``,
``normalize``, ``class_names``, indexing (the evaluation view of one example), and ``labels``
(for a tfds source this reads every record: avoid it on a large dataset).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cnn_jax.data import images as imagelib
from cnn_jax.data.sources import (
    IN_MEMORY_LIMIT_BYTES,
    STATS_SAMPLE,
    STATS_SEED,
    Split,
    SplitBase,
    pixel_histogram,
)
from cnn_jax.errors import DatasetError


def default_workers() -> int:
    """Reading processes for a streamed split: one per core this process may use, at most 16
    (``CNN_JAX_DATA_WORKERS`` overrides it; 0 reads in threads of the training process)."""
    forced = os.environ.get("CNN_JAX_DATA_WORKERS", "").strip()
    if forced:
        if not forced.isdigit():
            raise DatasetError(f"CNN_JAX_DATA_WORKERS={forced!r} must be a whole number >= 0")
        return int(forced)
    if hasattr(os, "sched_getaffinity"):  # the cores this process may run on (Linux)
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


@dataclass(frozen=True, eq=False)
class FileReader:
    """Image files under ``root`` (relative paths) with their labels."""

    root: str
    files: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def raw(self, index: int) -> tuple[str, int]:
        return os.path.join(self.root, self.files[index]), int(self.labels[index])

    def all_labels(self) -> np.ndarray:
        return self.labels

    def where(self, index: int) -> str:
        return os.path.join(self.root, self.files[index])


class TfdsReader:
    """One split of a prepared tfds dataset read record by record with ``tfds.data_source``:
    encoded images (``tfds.features.Image``) come back as their file bytes (decoded by
    :func:`cnn_jax.data.images.decode`), tensor images as arrays. The source is opened lazily
    in each process that reads (it is not pickled to the workers)."""

    def __init__(
        self, name: str, split: str, data_dir: str, image_key: str, label_key: str, encoded: bool
    ):
        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key, self.encoded = image_key, label_key, encoded
        self._source = None
        self._len = len(self.source)
        if encoded and self._len:
            try:
                self.source[0]
            except ModuleNotFoundError:
                # tfds.testing.mock_data makes its random images with TensorFlow's encoder when
                # asked for undecoded bytes: read them decoded instead.
                self.encoded, self._source = False, None

    @property
    def source(self):
        if self._source is None:
            import tensorflow_datasets as tfds

            decoders = {self.image_key: tfds.decode.SkipDecoding()} if self.encoded else None
            self._source = tfds.data_source(
                self.name, split=self.split, data_dir=self.data_dir, download=False,
                decoders=decoders,
            )  # fmt: skip
        return self._source

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return self._len

    def raw(self, index: int) -> tuple[bytes | np.ndarray, int]:
        record = self.source[index]
        return record[self.image_key], int(record[self.label_key])

    def all_labels(self) -> np.ndarray:
        return np.asarray([self.raw(i)[1] for i in range(len(self))], np.int32)

    def where(self, index: int) -> str:
        return f"{self.name} {self.split} record {index} (in {self.data_dir})"


@dataclass(frozen=True, eq=False)
class StreamedSplit(SplitBase):
    """One split read by index from its files (see the module docstring).

    Attributes:
      name: ``'<dataset>/<split>'``.
      reader: where examples come from (:class:`FileReader` or :class:`TfdsReader`).
      spec: how each image becomes a model input (size, channels, evaluation crop).
      num_classes, mean, std, class_names, source, details: as :class:`~cnn_jax.data.Split`'s.
      augment: per-image training augmentation on the host (the train split of a run that asks
        for it); batches read with ``augment=True`` (by default: shuffled ones) apply it.
      workers: reading processes for its batches (0: threads of the calling process).
    """

    name: str
    reader: Any
    spec: imagelib.ImageSpec
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    class_names: tuple[str, ...] | None = None
    source: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    augment: imagelib.HostAugment | None = None
    workers: int = 0

    in_memory: ClassVar[bool] = False

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return (*self.spec.size, self.spec.channels)  # type: ignore[return-value]

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """int32 labels of every example (for a tfds source: one pass over every record)."""
        return self.reader.all_labels()

    @property
    def images(self) -> np.ndarray:
        raise DatasetError(
            f"{self.name} is streamed ({len(self)} images, {self.nbytes / 2**30:.1f} GiB "
            "decoded), not held in memory: read it with data.batches(split, ...), or index it "
            "(split[i]); data.load(..., stream=False) holds it whole"
        )

    def example(self, index: int, rng: np.random.Generator | None = None):
        """``(uint8 image (H, W, C), label)``: the training view drawn from ``rng`` when the
        split has host augmentation and ``rng`` is given, else the evaluation view.

        Raises:
          DatasetError: the file no longer decodes (it changed since the dataset was loaded).
        """
        raw, label = self.reader.raw(index)
        augment = self.augment if rng is not None else None
        try:
            return imagelib.decode(raw, self.spec, augment, rng), label
        except imagelib.DECODE_ERRORS as err:
            raise DatasetError(
                f"{self.reader.where(index)}: cannot decode ({imagelib.describe(err)}); it "
                "was readable when the dataset was loaded, so it changed since: load the "
                "dataset again"
            ) from err

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.example(index)
        return {"image": image, "label": label}


def _threads() -> int:
    return min(32, os.cpu_count() or 1)


# Items per task of a thread pool pass (one future per task: a future per file would cost
# about a kilobyte each, gigabytes for a million files).
_PASS_CHUNK = 64


def parallel_map(fn: Callable[[int], Any], n: int, threads: int | None = None) -> list[Any]:
    """``[fn(0), ..., fn(n - 1)]`` in a thread pool, in tasks of :data:`_PASS_CHUNK` items:
    Pillow decodes and resizes without holding the GIL, so threads use every core."""
    threads = threads or _threads()
    if threads == 1 or n < 2:
        return [fn(i) for i in range(n)]

    def task(start: int) -> list[Any]:
        return [fn(i) for i in range(start, min(start + _PASS_CHUNK, n))]

    with ThreadPoolExecutor(threads) as pool:
        return [x for part in pool.map(task, range(0, n, _PASS_CHUNK)) for x in part]


def decode_pass(
    read: Callable[[int], Any],
    n: int,
    spec: imagelib.ImageSpec,
    *,
    keep: bool,
    counted: Sequence[bool] | None = None,
) -> tuple[np.ndarray | None, np.ndarray, dict[int, str]]:
    """Decodes images ``read(0) .. read(n - 1)`` (paths, bytes or arrays) at ``spec`` in
    threads: ``(the images (n, H, W, C) if keep (zeros where unreadable), the pixel histogram
    of the readable ones that are ``counted`` (all by default), {index: why} for the unreadable
    ones)``. Unless ``keep`` it holds a few images per thread, whatever ``n``; an error of
    ``read`` itself propagates."""
    h, w = spec.size  # type: ignore[misc]
    out = np.zeros((n, h, w, spec.channels), np.uint8) if keep else None

    def task(start: int) -> tuple[np.ndarray, dict[int, str]]:
        histogram, errors = np.zeros((spec.channels, 256), np.int64), {}
        for i in range(start, min(start + _PASS_CHUNK, n)):
            source = read(i)
            try:
                image = imagelib.decode(source, spec)
            except imagelib.DECODE_ERRORS as err:
                errors[i] = imagelib.describe(err)
                continue
            if out is not None:
                out[i] = image
            if counted is None or counted[i]:
                histogram += pixel_histogram(image)
        return histogram, errors

    histogram, errors = np.zeros((spec.channels, 256), np.int64), {}
    starts = range(0, n, _PASS_CHUNK)
    with ThreadPoolExecutor(_threads()) as pool:
        for part, part_errors in pool.map(task, starts):  # summed as they finish, in order
            histogram += part
            errors.update(part_errors)
    return out, histogram, errors


@dataclass(frozen=True)
class Plan:
    """How a dataset of image files is read (shared by image folders and tfds datasets).

    Attributes:
      spec: how each image becomes a model input.
      augment: the train split's host augmentation (None when off).
      exact: whether the normalisation comes from every train image (the decoded train split
        fits :data:`~cnn_jax.data.sources.IN_MEMORY_LIMIT_BYTES`) or from a seeded sample.
      streamed: whether the splits are streamed (else held in memory).
      workers: reading processes of streamed splits.
    """

    spec: imagelib.ImageSpec
    augment: imagelib.HostAugment | None
    exact: bool
    streamed: bool
    workers: int

    @classmethod
    def make(
        cls,
        size: tuple[int, int],
        channels: int,
        train_examples: int,
        *,
        stream: bool | None,
        augment: imagelib.HostAugment | None,
        crop_fraction: float | None,
        workers: int | None,
    ) -> Plan:
        """The plan for ``train_examples`` images brought to ``size`` x ``channels``: streamed
        when asked, when augmented on the host, or (``stream=None``) when too large to hold."""
        augment = augment if augment is not None and augment.active else None
        if crop_fraction is None:  # torchvision's evaluation crop goes with its random crop
            crop_fraction = 0.875 if augment is not None and augment.scale is not None else 1.0
        exact = train_examples * size[0] * size[1] * channels <= IN_MEMORY_LIMIT_BYTES
        streamed = augment is not None or (stream if stream is not None else not exact)
        return cls(
            spec=imagelib.ImageSpec(tuple(size), channels, crop_fraction),
            augment=augment,
            exact=exact,
            streamed=streamed,
            workers=default_workers() if workers is None else workers,
        )

    def stats_rows(self, train_examples: int) -> tuple[np.ndarray, str]:
        """The rows of the train split the normalisation comes from, and their description."""
        if self.exact:
            return np.arange(train_examples), f"all {train_examples:,} train images"
        rng = np.random.default_rng(STATS_SEED)
        n = min(STATS_SAMPLE, train_examples)
        rows = np.sort(rng.choice(train_examples, n, replace=False))
        return rows, f"a sample of {n:,} train images (seed {STATS_SEED})"

    def details(self, normalisation: str) -> dict[str, Any]:
        """What every split records about how its images were read."""
        return {
            "image_size": list(self.spec.size),  # type: ignore[arg-type]
            "channels": self.spec.channels,
            "crop_fraction": self.spec.crop_fraction,
            "normalisation": normalisation,
            "streamed": self.streamed,
        }

    def split(self, split: str, *, reader, images, labels, **common) -> Split | StreamedSplit:
        """One split: streamed from ``reader``, or held as ``images`` / ``labels``."""
        if self.streamed:
            augment = self.augment if split == "train" else None
            return StreamedSplit(
                reader=reader, spec=self.spec, augment=augment, workers=self.workers, **common
            )
        return Split(images=images, labels=labels, **common)


__all__ = [
    "FileReader",
    "Plan",
    "StreamedSplit",
    "TfdsReader",
    "decode_pass",
    "default_workers",
    "parallel_map",
]
