"""Pretrained weights in a run: the preprocessing they bring (``normalize``, ``channels``,
``image_size``, decided by :func:`resolve_preprocessing` and stored in the run's config), the
data prepared that way (:func:`prepare_splits`), and the state_dict ``init_from`` names read into
the run's collections (:func:`read_source`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from cnn_jax import data as data_lib
from cnn_jax._utils import matching_prefix
from cnn_jax.errors import ConfigError
from cnn_jax.interop import weights as weights_lib

NORMALIZE_HELP = "'auto', 'dataset' or 'MEAN/STD' (e.g. '0.485,0.456,0.406/0.229,0.224,0.225')"


def _format(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def pretrained_preprocessing(
    config: ml_collections.ConfigDict,
) -> weights_lib.Preprocessing | None:
    """The preprocessing of ``config.init_from``'s weights when they are torchvision's ImageNet
    weights: named ``torchvision:...``, or a file for a model torchvision publishes ImageNet
    weights of whose classifier has ImageNet's number of classes (then the model's default
    weights' preprocessing). ``None`` for anything else (a work directory, other weights)."""
    if not config.get("init_from"):
        return None
    source = weights_lib.parse_source(config.init_from)
    if source.kind == "torchvision":
        return source.published().preprocessing
    if source.kind != "file":
        return None
    try:
        entry = weights_lib.published(config.model)
    except ConfigError:  # torchvision publishes no weights of this model
        return None
    head = weights_lib.read_state_dict(source.path).get(
        weights_lib.classifier_prefix(config.model) + ".weight"
    )
    if head is None or head.shape[0] != entry.num_classes:
        return None
    return entry.preprocessing


def resolve_preprocessing(config: ml_collections.ConfigDict) -> None:
    """Decides ``config.normalize == 'auto'`` in place: ImageNet weights (see
    :func:`pretrained_preprocessing`) set it to their mean/std, ``channels`` to 3 (unless set)
    and ``image_size`` to their crop size (unless set); anything else normalises with the
    train split's statistics (``'dataset'``). The stored config thus records what the run used.

    Raises:
      ConfigError: a ``normalize`` value that is not one of :data:`NORMALIZE_HELP`.
    """
    parse_normalize(config.normalize)
    if config.normalize != "auto":
        return
    pre = pretrained_preprocessing(config)
    if pre is None:
        config.normalize = "dataset"
        return
    config.normalize = f"{_format(pre.mean)}/{_format(pre.std)}"
    config.channels = config.channels or pre.channels
    config.image_size = config.image_size or pre.crop_size


def parse_normalize(text: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``'MEAN/STD'`` as float32 arrays; ``None`` for ``'auto'`` / ``'dataset'``.

    Raises:
      ConfigError: anything else, or a std that is not positive.
    """
    if text in ("auto", "dataset"):
        return None
    mean, sep, std = text.partition("/")
    try:
        out = tuple(
            np.array([float(v) for v in part.split(",")], np.float32) for part in (mean, std)
        )
    except ValueError:
        out = None
    if not sep or out is None or len(out[0]) != len(out[1]) or (out[1] <= 0).any():
        raise ConfigError(f"normalize={text!r} is invalid: {NORMALIZE_HELP}, std > 0")
    return out


def prepare_splits(
    splits: dict[str, data_lib.Split], config: ml_collections.ConfigDict
) -> tuple[dict[str, data_lib.Split], tuple[str, ...]]:
    """The splits as ``config.channels`` and ``config.normalize`` ask: grayscale repeated to 3
    channels (torchvision's ``Grayscale(num_output_channels=3)``) and the given mean/std instead
    of the train split's statistics; with notes for the run's header line.

    Raises:
      ConfigError: a channel count that cannot be made, or a mean/std of another length.
    """
    notes = []
    c = splits["train"].image_shape[-1]
    if config.channels and config.channels != c:
        if not (c == 1 and config.channels == 3):
            raise ConfigError(
                f"channels={config.channels}: {config.dataset} images have {c} channel(s); only "
                "grayscale can be repeated to 3 channels (channels=0 keeps the data's own)"
            )
        splits = {
            name: dataclasses.replace(
                split,
                images=np.repeat(split.images, 3, axis=-1),
                mean=np.repeat(split.mean, 3),
                std=np.repeat(split.std, 3),
            )
            for name, split in splits.items()
        }
        notes.append("grayscale repeated to 3 channels")
    given = parse_normalize(config.normalize)
    if given is not None:
        mean, std = given
        channels = splits["train"].image_shape[-1]
        if len(mean) != channels:
            raise ConfigError(
                f"normalize={config.normalize!r} has {len(mean)} values for {channels}-channel "
                "images"
            )
        splits = {
            name: dataclasses.replace(split, mean=mean, std=std) for name, split in splits.items()
        }
        notes.append(f"normalised with mean {_format(tuple(mean))} std {_format(tuple(std))}")
    return splits, tuple(notes)


def read_source(
    source: weights_lib.Source, state: Any, exclude: tuple[str, ...], model: str
) -> tuple[dict[str, Any], str]:
    """``({'params': ..., 'batch_stats': ...}, where)``: a weights file's (or torchvision's
    cached) state_dict placed in the collections of ``state``'s model by key.

    Raises:
      ConfigError: a key of the file that names no parameter or statistic of the model and is
        not under an ``exclude`` prefix; a file that cannot be read or fetched.
    """
    if source.kind == "torchvision":
        path = weights_lib.locate(source.published())
        where = f"{source.text} ({path})"
    else:
        path, where = source.path, source.text
    state_dict = weights_lib.read_state_dict(path)
    names = {
        collection: set(traverse_util.flatten_dict(getattr(state, collection), sep="."))
        for collection in ("params", "batch_stats")
    }
    flat: dict[str, dict[str, Any]] = {"params": {}, "batch_stats": {}}
    unexpected = []
    for key, value in state_dict.items():
        collection = next((c for c, keys in names.items() if key in keys), None)
        if collection is not None:
            flat[collection][key] = value
        elif matching_prefix(key, exclude) is None:
            unexpected.append(key)
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:6])
        more = f" and {len(unexpected) - 6} more" if len(unexpected) > 6 else ""
        raise ConfigError(
            f"init_from {source.text}: {shown}{more} match no parameter or statistic of {model} "
            "(weights of another model?)"
        )
    arrays = {c: traverse_util.unflatten_dict(v, sep=".") for c, v in flat.items()}
    return arrays, where


__all__ = [
    "NORMALIZE_HELP",
    "parse_normalize",
    "prepare_splits",
    "pretrained_preprocessing",
    "read_source",
    "resolve_preprocessing",
]
