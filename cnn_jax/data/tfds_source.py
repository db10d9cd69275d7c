"""Prepared tfds datasets (``array_record``) as splits, read with ``tfds.data_source`` — no
TensorFlow. See :func:`cnn_jax.data.load`."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from cnn_jax.data import images as imagelib
from cnn_jax.data.sources import (
    _TFDS_NAME,
    EMBEDDED,
    TFDS_SPLITS,
    Split,
    UnknownDatasetError,
    _check_arrays,
    _default_split_map,
    pixel_histogram,
    registered,
    stats_from_histogram,
)
from cnn_jax.data.stream import Plan, StreamedSplit, TfdsReader, decode_pass
from cnn_jax.errors import DatasetError

# Records read before each threaded decoding round (bounds the encoded bytes held at once).
_CHUNK = 1024
_EMBEDDED_HINT = (
    " (for the embedded 'digits', delete its folder under the tfds data_dir and it is rebuilt on "
    "the next load)."
)


def load_tfds(
    name: str,
    *,
    data_dir: str,
    size: tuple[int, int] | None,
    stream: bool | None,
    augment: imagelib.HostAugment | None,
    crop_fraction: float | None,
    workers: int | None,
) -> dict[str, Split | StreamedSplit]:
    """The splits of a prepared tfds dataset (``name`` may include a config, e.g.
    ``imagenette/160px-v2``)."""
    import tensorflow_datasets as tfds

    from cnn_jax.data import digits as _digits  # registers the builder

    del _digits
    tfds_name = _TFDS_NAME.get(name, name)
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as err:  # ValueError: bad name
        raise UnknownDatasetError(
            f"unknown dataset {name!r}. Embedded (no download): {', '.join(EMBEDDED)}. "
            f"Registered in this process: {', '.join(registered()) or 'none'}. An image folder: "
            f"folder:PATH. Known tfds datasets: "
            f"{', '.join(k for k in TFDS_SPLITS if k not in EMBEDDED)}; any other tfds dataset "
            f"name works once prepared in {data_dir}."
        ) from err
    if name in EMBEDDED and not builder.is_prepared():
        _prepare_quietly(tfds, builder)
    try:
        info = builder.info
    except Exception as err:  # any unreadable dataset_info.json: reported, never swallowed
        raise DatasetError(
            f"dataset {name!r} in {builder.data_dir}: unreadable metadata ({type(err).__name__}: "
            f"{err}). Prepare it again{_EMBEDDED_HINT}"
        ) from err
    split_map = TFDS_SPLITS.get(name.split("/")[0]) or _default_split_map(info.splits)
    keys = info.supervised_keys or ("image", "label")
    label_feature = info.features[keys[1]]
    num_classes = label_feature.num_classes
    class_names = tuple(label_feature.names) if getattr(label_feature, "names", None) else None
    image_feature = info.features[keys[0]]
    encoded = isinstance(image_feature, tfds.features.Image)
    readers = {}
    for split, spec in split_map.items():
        if builder.is_prepared() and not _examples(info, spec):
            raise DatasetError(f"{_where(name, split, spec, builder)} is empty")
        try:
            readers[split] = TfdsReader(tfds_name, spec, data_dir, keys[0], keys[1], encoded)
        except (NotImplementedError, AssertionError, FileNotFoundError) as err:
            raise DatasetError(_not_prepared_message(name, data_dir, builder)) from err
        if not len(readers[split]):
            raise DatasetError(f"{_where(name, split, spec, builder)} is empty")
    shape = tuple(image_feature.shape)
    channels = shape[-1] if len(shape) == 3 else 1
    if channels not in (1, 3, None):
        if encoded:
            channels = 3  # e.g. RGBA PNGs: the alpha channel is dropped
        else:
            return _load_raw(name, readers, builder, split_map, num_classes, class_names, size)
    channels = channels or 3
    if size is None:
        if None in shape[:2]:
            raise DatasetError(
                f"{name}: images have different sizes (feature shape {shape}); pass "
                "image_size (e.g. --image-size 224) to bring them to one size"
            )
        size = shape[:2]
    train = readers["train"]
    plan = Plan.make(
        size, channels, len(train), stream=stream, augment=augment,
        crop_fraction=crop_fraction, workers=workers,
    )  # fmt: skip
    held = {}
    if not plan.streamed:
        for split, reader in readers.items():
            where = _where(name, split, split_map[split], builder)
            held[split] = _read_all(reader, plan.spec, where)
    rows, stats_how = plan.stats_rows(len(train))
    if held:
        histogram = pixel_histogram(held["train"][0] if plan.exact else held["train"][0][rows])
    else:
        where = _where(name, "train", split_map["train"], builder)
        histogram = _read_all(train, plan.spec, where, rows=rows)
    mean, std = stats_from_histogram(histogram)
    out: dict[str, Split | StreamedSplit] = {}
    for split, reader in readers.items():
        images, labels = held.get(split, (None, None))
        if held:
            images, labels = _check_arrays(f"{name}/{split}", images, labels, num_classes)
        out[split] = plan.split(
            split,
            reader=reader,
            images=images,
            labels=labels,
            name=f"{name}/{split}",
            num_classes=num_classes,
            mean=mean,
            std=std,
            class_names=class_names,
            source=split_map[split],
            details={
                "tfds": tfds_name,
                "data_dir": str(builder.data_dir),
                "split": split_map[split],
                "examples": len(reader),
                **plan.details(stats_how),
            },
        )
    return out


def _examples(info, spec: str) -> int:
    """Examples in the split ``spec`` (tfds's slicing syntax); -1 when tfds cannot tell."""
    try:
        return info.splits[spec].num_examples
    except (KeyError, ValueError, TypeError):
        return -1


def _where(name: str, split: str, spec: str, builder) -> str:
    return f"{name}/{split} ({spec}, in {builder.data_dir})"


def _read_all(reader: TfdsReader, spec: imagelib.ImageSpec, where: str, rows=None):
    """Every record of ``reader`` decoded at ``spec``: ``(images, labels)``; with ``rows``
    only those records, and only their pixel histogram is returned. Records are read in this
    thread (tfds's mock sources are not thread-safe) in chunks, each decoded in threads.

    Raises:
      DatasetError: a record cannot be read or does not hold a readable image (corrupt or
        incomplete files: prepare the dataset again).
    """
    indices = np.arange(len(reader)) if rows is None else np.asarray(rows)
    h, w = spec.size  # type: ignore[misc]
    images = np.zeros((len(indices), h, w, spec.channels), np.uint8) if rows is None else None
    labels = np.zeros(len(indices), np.int64)
    histogram = np.zeros((spec.channels, 256), np.int64)
    for start in range(0, len(indices), _CHUNK):
        chunk = indices[start : start + _CHUNK]
        raws = []
        for j, i in enumerate(chunk):
            try:
                raw, labels[start + j] = reader.raw(int(i))
            except Exception as err:  # a truncated or corrupt array_record file, a bad spec
                raise DatasetError(
                    f"{where}: cannot read example {int(i)} of {len(reader)} "
                    f"({type(err).__name__}: {err}); the prepared files are corrupt or "
                    f"incomplete. Prepare the dataset again{_EMBEDDED_HINT}"
                ) from err
            raws.append(raw)
        decoded, part, errors = decode_pass(
            raws.__getitem__, len(raws), spec, keep=images is not None
        )
        if errors:
            j, why = next(iter(errors.items()))
            raise DatasetError(
                f"{where}: record {int(chunk[j])} is not a readable image ({why}). Prepare the "
                f"dataset again{_EMBEDDED_HINT}"
            )
        if images is not None:
            images[start : start + len(chunk)] = decoded
        histogram += part
    return (images, labels) if rows is None else histogram


def _load_raw(name, readers, builder, split_map, num_classes, class_names, size):
    """A dataset of tensor images with neither 1 nor 3 channels (e.g. multispectral): held in
    memory as stored, never resized or streamed."""
    from cnn_jax.data.sources import from_arrays

    if size is not None:
        raise DatasetError(f"{name}: images with other than 1 or 3 channels cannot be resized")
    arrays = {}
    for split, reader in readers.items():
        pairs = [reader.raw(i) for i in range(len(reader))]
        shapes = {np.shape(x) for x, _ in pairs}
        if len(shapes) > 1:
            raise DatasetError(
                f"{_where(name, split, split_map[split], builder)}: images have different "
                f"sizes (e.g. {sorted(shapes)[:3]})"
            )
        arrays[split] = (np.stack([x for x, _ in pairs]), np.asarray([y for _, y in pairs]))
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


def _not_prepared_message(name: str, data_dir: str, builder: Any) -> str:
    from cnn_jax.data.archives import FROM

    if builder.is_prepared():
        return (
            f"dataset {name!r} in {builder.data_dir} is prepared as "
            f"{builder.info.file_format}, which only TensorFlow can read. cnn_jax reads "
            "array_record without TensorFlow: prepare it again as array_record (see `cnn-jax "
            "prepare --help`), or convert it with `tfds convert_format` where TensorFlow is "
            "installed."
        )
    base = name.split("/")[0]
    if base in FROM:
        first = (
            "Prepare it once from its official files, without TensorFlow or network:\n"
            f"  cnn-jax prepare {base} --from {FROM[base]} --data-dir {data_dir}\n"
        )
    else:
        first = (
            f"`cnn-jax prepare` does not know {base!r} (it prepares {', '.join(FROM)}; "
            "an image folder trains directly with --dataset folder:PATH).\n"
        )
    return (
        f"dataset {name!r} is not prepared in {data_dir}. cnn_jax reads prepared tfds datasets "
        f"(array_record) and never downloads at run time. {first}"
        "Or, on a machine with TensorFlow (`tfds build` needs it) and network access:\n"
        f"  tfds build {base} --data_dir={data_dir} --file_format=array_record\n"
        "then copy the data_dir here or pass data_dir= (--data-dir). The embedded 'digits' "
        "dataset needs none of this."
    )
