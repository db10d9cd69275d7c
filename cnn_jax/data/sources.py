"""Datasets as in-memory random-access splits, from tfds (no TensorFlow) or from arrays.

``load(name)`` returns ``{'train', 'validation', 'test'}`` :class:`Split` objects holding uint8
images (N, H, W, C), int32 labels, and the per-channel mean/std of the *train* split, used to
normalise every split the same way.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnn_jax.errors import DatasetError

# How each known tfds dataset's splits map to ours (tfds split-slicing syntax). Any other prepared
# tfds dataset works too: its own validation split if it has one, else the last 10% of train.
TFDS_SPLITS: dict[str, dict[str, str]] = {
    "digits": {"train": "train", "validation": "validation", "test": "test"},
    "mnist": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "fashion_mnist": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "cifar10": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "cifar100": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "tf_flowers": {"train": "train[:70%]", "validation": "train[70%:85%]", "test": "train[85%:]"},
}
_TFDS_NAME = {"digits": "sklearn_digits"}
EMBEDDED = ("digits",)
# Datasets built in this process by a function (`register`), e.g. variants of a tfds dataset.
_REGISTERED: dict[str, Callable[..., Mapping[str, Split]]] = {}


@dataclass(frozen=True, eq=False)
class Split:
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
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    class_names: tuple[str, ...] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index])}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> float32 ``(x / 255 - mean) / std`` with the train statistics."""
        return standardize(np.asarray(images, np.float32) / 255.0, self.mean, self.std)


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


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = np.zeros(images.shape[-1])
    total_sq = np.zeros(images.shape[-1])
    for chunk in np.array_split(images, max(1, len(images) // 4096)):
        x = chunk.astype(np.float64) / 255.0
        total += x.sum(axis=(0, 1, 2))
        total_sq += np.square(x).sum(axis=(0, 1, 2))
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


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


def _resize(images: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    out = []
    for img in images:
        channels = img.shape[-1]
        pil = Image.fromarray(img[..., 0] if channels == 1 else img)
        pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(pil, np.uint8)
        out.append(arr[..., None] if channels == 1 else arr)
    return np.stack(out)


def _read_source(source, image_key: str, label_key: str, image_size, where: str):
    n = len(source)
    if n == 0:
        raise DatasetError(f"{where} is empty")
    # One record at a time: 37 us/example here vs 27 us batched (__getitems__), and it also
    # works with tfds.testing.mock_data, whose __getitems__ is broken in tfds 4.9.10.
    images, labels = [], []
    try:
        for i in range(n):
            example = source[i]
            images.append(np.asarray(example[image_key]))
            labels.append(int(example[label_key]))
    except Exception as err:  # a truncated or corrupt array_record file, a bad feature spec
        raise DatasetError(
            f"{where}: cannot read example {len(labels)} of {n} ({type(err).__name__}: {err}); "
            "the prepared files are corrupt or incomplete. Prepare the dataset again"
            f"{_EMBEDDED_HINT}"
        ) from err
    if image_size is not None:
        return _resize(images, image_size), np.asarray(labels)
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise DatasetError(
            f"{where}: images have different sizes (e.g. {sorted(shapes)[:3]}); pass "
            "image_size=(H, W) to resize them"
        )
    return np.stack(images), np.asarray(labels)


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
    splits = dict(_REGISTERED[name](data_dir=data_dir, image_size=size))
    missing = {"train", "validation", "test"} - set(splits)
    if missing:
        raise DatasetError(f"registered dataset {name!r} returned no {sorted(missing)} split(s)")
    if size is not None and splits["train"].image_shape[:2] != size:
        first = splits["train"]
        arrays = {k: (_resize(list(s.images), size), s.labels) for k, s in splits.items()}
        sources = {k: s.source for k, s in splits.items()}
        return from_arrays(name, arrays, first.num_classes, first.class_names, sources)
    return splits


def load(
    name: str = "digits",
    *,
    data_dir: str | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> dict[str, Split]:
    """Loads a dataset's train / validation / test splits into memory, without TensorFlow.

    Args:
      name: ``'digits'`` (embedded, prepared on first use, no network), a name added with
        :func:`register`, or any tfds dataset prepared in ``data_dir`` (``mnist``,
        ``fashion_mnist``, ``cifar10``, ``cifar100``, ``tf_flowers``,
        ...). Known datasets use the split mapping in :data:`TFDS_SPLITS`.
      data_dir: the tfds data directory (default :func:`default_data_dir`).
      image_size: resize every image to (H, W) (an int for square), e.g. 32 for LeNet-5; needed
        for datasets with images of different sizes (tf_flowers).

    Returns:
      ``{'train': Split, 'validation': Split, 'test': Split}``.

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
    if name in _REGISTERED:
        return _load_registered(name, data_dir, size)

    import tensorflow_datasets as tfds

    from cnn_jax.data import digits as _digits  # registers the builder

    del _digits
    data_dir = data_dir or default_data_dir()
    tfds_name = _TFDS_NAME.get(name, name)
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as err:  # ValueError: bad name
        raise DatasetError(
            f"unknown dataset {name!r}. Embedded (no download): {', '.join(EMBEDDED)}. "
            f"Registered in this process: {', '.join(registered()) or 'none'}. Known tfds "
            f"datasets: {', '.join(k for k in TFDS_SPLITS if k not in EMBEDDED)}; any other tfds "
            "dataset name works once prepared."
        ) from err
    if name in EMBEDDED and not builder.is_prepared():
        _prepare_quietly(tfds, builder)
    try:
        info = builder.info
    except Exception as err:
        raise DatasetError(
            f"dataset {name!r} in {builder.data_dir}: unreadable metadata ({type(err).__name__}: "
            f"{err}). Prepare it again{_EMBEDDED_HINT}"
        ) from err
    split_map = TFDS_SPLITS.get(name) or _default_split_map(info.splits)
    keys = info.supervised_keys or ("image", "label")
    label_feature = info.features[keys[1]]
    num_classes = label_feature.num_classes
    class_names = tuple(label_feature.names) if getattr(label_feature, "names", None) else None
    arrays = {}
    for split, spec in split_map.items():
        try:
            # download=False: tfds would otherwise try to download (and hang without network).
            source = tfds.data_source(tfds_name, split=spec, data_dir=data_dir, download=False)
        except (NotImplementedError, AssertionError, FileNotFoundError) as err:
            raise DatasetError(_not_prepared_message(name, data_dir, builder)) from err
        where = f"{name}/{split} ({spec}, in {builder.data_dir})"
        arrays[split] = _read_source(source, keys[0], keys[1], size, where)
    return from_arrays(name, arrays, num_classes, class_names, split_map)


def _prepare_quietly(tfds, builder) -> None:
    """Prepares an embedded dataset (about a second) without tfds's progress bars."""
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = tqdm_utils._active
    tfds.disable_progress_bar()
    try:
        # tfds prints "Downloading and preparing dataset ..." even though nothing is downloaded.
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare()
    finally:
        if was_active:
            tfds.enable_progress_bar()


_EMBEDDED_HINT = (
    " (for the embedded 'digits', delete its folder under the tfds data_dir and it is rebuilt on "
    "the next load)."
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


def _not_prepared_message(name: str, data_dir: str, builder) -> str:
    if builder.is_prepared():
        return (
            f"dataset {name!r} in {builder.data_dir} is prepared as "
            f"{builder.info.file_format}, which only TensorFlow can read. cnn_jax reads "
            "array_record without TensorFlow: re-prepare it with file_format='array_record' "
            f"(tfds build {name} --data_dir=<another dir> --file_format=array_record), or "
            "convert it with `tfds convert_format`."
        )
    return (
        f"dataset {name!r} is not prepared in {data_dir}. cnn_jax reads prepared tfds datasets "
        "(array_record) and never downloads at run time. Prepare it once on a machine with "
        f"network access:\n  tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
        "or in Python:\n"
        f"  tfds.builder({name!r}, data_dir={data_dir!r}, file_format='array_record')"
        ".download_and_prepare()\n"
        "(some builders need TensorFlow to prepare, and manual downloads go in "
        "<data_dir>/downloads/manual), then copy the data_dir here or pass data_dir=. "
        "The embedded 'digits' dataset needs none of this."
    )
