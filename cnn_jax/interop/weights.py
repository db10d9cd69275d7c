"""Pretrained weights as NumPy ``state_dict``s: ``.pth`` / ``.pt`` files (torch), ``.safetensors``
files (no torch), and torchvision's published ImageNet weights by name, read from torch hub's
cache (``torchvision:resnet50:IMAGENET1K_V2``) with the preprocessing they were trained with.

A state_dict here is ``{torch key: NumPy array}``, the form :func:`~cnn_jax.interop.from_torch`
and :func:`~cnn_jax.interop.to_state_dict` use.

>>> parse_source("torchvision:resnet50").weights
'IMAGENET1K_V2'
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnn_jax.errors import ConfigError

FILE_SUFFIXES = (".pth", ".pt", ".safetensors")
TORCHVISION_PREFIX = "torchvision:"
# torchvision.transforms._presets.ImageClassification's defaults: every ImageNet weights entry of
# the classification models uses them unless it names its own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_URL_BASE = "https://download.pytorch.org/models/"
# Facts from torchvision's weights enums (``torchvision.models.get_model_weights(name)``) for the
# models cnn_jax has: model -> (default weights, {weights: (file name, crop size, resize size)}).
# tests/test_weights.py checks every row against torchvision's own enums; models not listed here
# are read from those enums when torchvision can be imported.
_PUBLISHED: dict[str, tuple[str, dict[str, tuple[str, int, int]]]] = {
    "alexnet": ("IMAGENET1K_V1", {"IMAGENET1K_V1": ("alexnet-owt-7be5be79.pth", 224, 256)}),
    "vgg11": ("IMAGENET1K_V1", {"IMAGENET1K_V1": ("vgg11-8a719046.pth", 224, 256)}),
    "vgg11_bn": ("IMAGENET1K_V1", {"IMAGENET1K_V1": ("vgg11_bn-6002323d.pth", 224, 256)}),
    "vgg16": ("IMAGENET1K_V1", {"IMAGENET1K_V1": ("vgg16-397923af.pth", 224, 256)}),
    "vgg16_bn": ("IMAGENET1K_V1", {"IMAGENET1K_V1": ("vgg16_bn-6c64b313.pth", 224, 256)}),
    "resnet18": ("IMAGENET1K_V1", {"IMAGENET1K_V1": ("resnet18-f37072fd.pth", 224, 256)}),
    "resnet34": ("IMAGENET1K_V1", {"IMAGENET1K_V1": ("resnet34-b627a593.pth", 224, 256)}),
    "resnet50": (
        "IMAGENET1K_V2",
        {
            "IMAGENET1K_V1": ("resnet50-0676ba61.pth", 224, 256),
            "IMAGENET1K_V2": ("resnet50-11ad3fa6.pth", 224, 232),
        },
    ),
    "mobilenet_v2": (
        "IMAGENET1K_V2",
        {
            "IMAGENET1K_V1": ("mobilenet_v2-b0353104.pth", 224, 256),
            "IMAGENET1K_V2": ("mobilenet_v2-7ebf99e0.pth", 224, 232),
        },
    ),
}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images must look to pretrained weights (torchvision's ``ImageClassification``):
    pixels in [0, 1] normalised with ``mean`` / ``std``, ``channels`` of them, shown at
    ``crop_size`` (after resizing to ``resize_size``)."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_size: int = 224
    resize_size: int = 256
    channels: int = 3


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """One of torchvision's published weights for a model (an entry of its weights enum)."""

    model: str
    weights: str
    url: str
    preprocessing: Preprocessing
    num_classes: int = 1000

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def cache_path(self) -> Path:
        """Where torch hub keeps the file: ``<torch.hub.get_dir()>/checkpoints/<filename>``
        (``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``)."""
        return Path(_torch("torchvision weights").hub.get_dir()) / "checkpoints" / self.filename


@dataclasses.dataclass(frozen=True)
class Source:
    """What ``init_from`` names: a cnn_jax work directory, a weights file, or torchvision's
    published weights (``published``)."""

    text: str
    kind: str  # 'workdir', 'file' or 'torchvision'
    path: Path | None = None
    model: str | None = None
    weights: str | None = None

    def published(self) -> PublishedWeights | None:
        if self.kind != "torchvision":
            return None
        return published(self.model, self.weights)


def parse_source(text: str) -> Source:
    """Reads an ``init_from`` value: ``torchvision:NAME[:WEIGHTS]`` (default weights: the
    model's ``DEFAULT``), a path ending in ``.pth`` / ``.pt`` / ``.safetensors``, or a work
    directory.

    Raises:
      ConfigError: an unknown torchvision model or weights name, or a weights file that does
        not exist.
    """
    if text.startswith(TORCHVISION_PREFIX):
        name, _, weights = text[len(TORCHVISION_PREFIX) :].partition(":")
        entry = published(name, weights or None)
        return Source(text, "torchvision", model=entry.model, weights=entry.weights)
    path = Path(text).expanduser()
    if path.suffix in FILE_SUFFIXES:
        if not path.is_file():
            raise ConfigError(f"init_from {text}: no such weights file")
        return Source(text, "file", path=path)
    return Source(text, "workdir", path=path)


def published(model: str, weights: str | None = None) -> PublishedWeights:
    """torchvision's published weights ``weights`` (default: the model's ``DEFAULT``) of
    ``model``: URL, file name, preprocessing.

    Raises:
      ConfigError: no published weights of that name.
    """
    if model in _PUBLISHED:
        default, entries = _PUBLISHED[model]
        name = weights or default
        if name not in entries:
            raise ConfigError(
                f"torchvision:{model}:{name}: unknown weights; {model} has {', '.join(entries)}"
            )
        filename, crop, resize = entries[name]
        pre = Preprocessing(crop_size=crop, resize_size=resize)
        return PublishedWeights(model, name, _URL_BASE + filename, pre)
    return _from_torchvision_enum(model, weights)


def _from_torchvision_enum(model: str, weights: str | None) -> PublishedWeights:
    """The entry of torchvision's weights enum, read as data (URL, the transform's arguments,
    the number of categories) when torchvision can be imported."""
    known = ", ".join(sorted(_PUBLISHED))
    try:
        from cnn_jax.testing.torch_models import torchvision_models

        tv = torchvision_models()
    except ImportError:
        tv = None
    if tv is None:
        raise ConfigError(
            f"torchvision:{model}: unknown here without torchvision installed; known: {known}"
        )
    try:
        enum = tv.get_model_weights(model)
    except ValueError as err:
        raise ConfigError(f"torchvision:{model}: torchvision has no such model") from err
    name = weights or enum.DEFAULT.name
    if name not in enum.__members__:
        raise ConfigError(
            f"torchvision:{model}:{name}: unknown weights; {model} has "
            f"{', '.join(m for m in enum.__members__ if m != 'DEFAULT')}"
        )
    entry = enum[name]
    import inspect

    transform = entry.transforms
    signature = inspect.signature(transform.func)
    args = {k: p.default for k, p in signature.parameters.items() if p.default is not p.empty}
    args.update(transform.keywords)
    pre = Preprocessing(
        mean=tuple(args["mean"]),
        std=tuple(args["std"]),
        crop_size=int(args["crop_size"]),
        resize_size=int(args["resize_size"]),
    )
    categories = entry.meta.get("categories") or ()
    return PublishedWeights(model, entry.name, entry.url, pre, len(categories) or 1000)


def _torch(purpose: str):
    """``torch``, or a one-line :class:`ConfigError` saying it is needed for ``purpose``."""
    try:
        import torch
    except ImportError as err:
        raise ConfigError(
            f"{purpose} need PyTorch: pip install torch (or use a .safetensors file, which does "
            "not)"
        ) from err
    return torch


def _download(url: str, path: Path) -> None:
    """torch hub's downloader (a partial file is never left at ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _torch("torchvision weights").hub.download_url_to_file(url, str(path), progress=False)


def locate(entry: PublishedWeights) -> Path:
    """The cached file of ``entry``, downloaded from torchvision's URL first when it is not in
    torch hub's cache.

    Raises:
      ConfigError: not cached and the download failed (naming the URL and the cache path).
    """
    path = entry.cache_path()
    if path.is_file():
        return path
    try:
        _download(entry.url, path)
    except OSError as err:  # URLError and every socket / file error are OSErrors
        raise ConfigError(
            f"torchvision:{entry.model}:{entry.weights} is not cached and could not be "
            f"downloaded ({err}): download {entry.url} to {path}"
        ) from err
    return path


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A ``.pth`` / ``.pt`` file (``torch.load(weights_only=True)``) or a ``.safetensors`` file
    (NumPy, no torch) as ``{key: NumPy array}``.

    Raises:
      ConfigError: another suffix, PyTorch missing for a torch file, or a file that is not a
        state_dict (a mapping of names to tensors).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except SafetensorError as err:
            raise ConfigError(f"{path}: not a readable .safetensors file ({err})") from err
    if path.suffix not in (".pth", ".pt"):
        raise ConfigError(f"{path}: weights files end in {', '.join(FILE_SUFFIXES)}")
    torch = _torch(f"{path.suffix} files")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise ConfigError(
            f"{path}: not readable with torch.load(weights_only=True) "
            f"({str(err).splitlines()[0]}); save a model's state_dict() with torch.save"
        ) from err
    if not (
        isinstance(loaded, Mapping) and all(isinstance(v, torch.Tensor) for v in loaded.values())
    ):
        raise ConfigError(
            f"{path} holds a {type(loaded).__name__}, not a state_dict (parameter names -> "
            "tensors): save model.state_dict()"
        )
    from cnn_jax.interop.torch import _to_numpy

    return {key: _to_numpy(value) for key, value in loaded.items()}


def check_writable_suffix(path: str | Path) -> None:
    """Raises a one-line :class:`ConfigError` unless ``path`` ends in ``.safetensors``,
    ``.pth`` or ``.pt``."""
    if Path(path).suffix not in FILE_SUFFIXES:
        raise ConfigError(f"{path}: export to a .safetensors or .pth file")


def write_state_dict(state_dict: Mapping[str, Any], path: str | Path) -> Path:
    """Writes ``{key: array}`` as ``.safetensors`` (NumPy, no torch) or ``.pth`` (``torch.save``
    of tensors, what ``torch.load(weights_only=True)`` reads).

    Raises:
      ConfigError: another suffix, or PyTorch missing for ``.pth``.
    """
    path = Path(path)
    check_writable_suffix(path)
    # np.array, not np.ascontiguousarray, which makes 0-d arrays (num_batches_tracked) 1-d.
    arrays = {key: np.array(value, order="C") for key, value in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path))
    else:
        torch = _torch(f"{path.suffix} files")
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, str(path))
    return path


@functools.cache
def classifier_prefix(model: str) -> str:
    """The module path of ``model``'s classifier (``'fc'``, ``'classifier.6'``): the longest
    common prefix of the parameters whose shape depends on ``num_classes``, found on abstract
    shapes (nothing computed)."""
    from flax import traverse_util

    from cnn_jax.interop.torch import abstract_variables
    from cnn_jax.models import create

    def shapes(n: int) -> dict[tuple[str, ...], tuple[int, ...]]:
        flat = traverse_util.flatten_dict(abstract_variables(create(model, num_classes=n)))
        return {path[1:]: tuple(v.shape) for path, v in flat.items()}

    a, b = shapes(7), shapes(11)
    paths = [path for path in a if a[path] != b.get(path)]
    common = list(paths[0][:-1])
    for path in paths[1:]:
        while list(path[: len(common)]) != common:
            common.pop()
    return ".".join(common)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocessing",
    "PublishedWeights",
    "Source",
    "classifier_prefix",
    "locate",
    "parse_source",
    "published",
    "read_state_dict",
    "write_state_dict",
]
