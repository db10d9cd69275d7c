"""Prepares tfds ``array_record`` datasets from their official files, without TensorFlow and
without network: ``cnn-jax prepare NAME --from PATH [--data-dir D]``, then ``--dataset NAME
--data-dir D`` (or ``data.load(NAME, data_dir=D)``) reads them.

Each builder is tfds's own (same name, version, features, split names, description and
citation: its ``dataset_info.json`` is the one ``tfds build`` writes), with only the reading of
the downloaded files replaced (tfds's readers use ``tf.io.gfile`` or TensorFlow's image codecs):

* ``cifar10``, ``cifar100`` (fine ``label`` and ``coarse_label``): the python tarballs
  ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (tfds reads the binary ones; both
  hold the same images in the same order). The pickled batches are read with an unpickler that
  only builds NumPy arrays.
* ``mnist``, ``fashion_mnist``, ``kmnist``: a folder with the four idx files
  (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-...``; gzipped or not).
* ``imagenette`` (configs ``full-size-v2``, ``320px-v2``, ``160px-v2``, and the v1 ones) and
  ``imagewoof`` (the same layout; tfds has no builder for it, so this one mirrors imagenette's):
  fast.ai's extracted folder (``imagenette2-320/train/<wnid>/*.JPEG``, ``val/``); the config
  follows from the folder name unless ``config`` is given.
* ``imagenet2012``: a folder with ``train/<wnid>/*.JPEG`` and ``val/`` holding either
  ``<wnid>/`` subfolders or the 50,000 flat ``ILSVRC2012_val_*.JPEG`` files, labelled by tfds's
  ``validation_labels.txt`` (or ``labels``: one wnid per line in sorted file-name order, or
  ``file_name wnid`` lines). Images that are not RGB or grey JPEGs (tfds lists 22 CMYK and one
  PNG) are re-encoded as RGB JPEG at quality 100, as tfds does.
* ``folder``: any image folder (:mod:`cnn_jax.data.folder`'s layout and splits) under a name of
  your choice, so a large one is checked once and then streamed: every file is decoded once
  here and unreadable ones are skipped (one warning). JPEGs are stored as they are; other
  formats, EXIF-rotated JPEGs and unusual modes are stored as PNG, upright, in the dataset's
  channels.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import re
import struct
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cnn_jax.data import images as imagelib
from cnn_jax.errors import DatasetError

_IDX = "<folder with train-images-idx3-ubyte.gz and the three other idx files>"
# What --from takes, per dataset (also shown by the not-prepared error).
FROM = {
    "cifar10": "cifar-10-python.tar.gz",
    "cifar100": "cifar-100-python.tar.gz",
    "mnist": _IDX,
    "fashion_mnist": _IDX,
    "kmnist": _IDX,
    "imagenette": "<fast.ai's extracted imagenette2-320 folder>",
    "imagewoof": "<fast.ai's extracted imagewoof2-320 folder>",
    "imagenet2012": "<folder with train/<wnid>/*.JPEG and val/>",
    "folder": "<image folder> --name NAME",
}
IMAGEWOOF_LABELS = (
    "n02086240",
    "n02087394",
    "n02088364",
    "n02089973",
    "n02093754",
    "n02096294",
    "n02099601",
    "n02105641",
    "n02111889",
    "n02115641",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ---------------------------------------------------------------------------------------------
# Reading the official files
# ---------------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of bytes, lists and NumPy arrays) and nothing else:
    any other global a pickle asks for is refused, so a crafted file cannot run code."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _cifar_members(source: Path, prefix: str, names: list[str]) -> dict[str, dict]:
    """The unpickled batches ``names`` from the python tarball or its extracted folder."""
    where = str(source)
    out = {}
    try:
        if source.is_dir():
            base = source / prefix if (source / prefix).is_dir() else source
            for n in names:
                with open(base / n, "rb") as f:
                    out[n] = _ArrayUnpickler(f, encoding="bytes").load()
        else:
            with tarfile.open(source) as tar:
                for n in names:
                    member = tar.extractfile(f"{prefix}/{n}")
                    if member is None:
                        raise KeyError(n)
                    out[n] = _ArrayUnpickler(member, encoding="bytes").load()
    except (KeyError, FileNotFoundError) as err:
        raise DatasetError(
            f"{where}: no {prefix}/{str(err).strip(chr(39))} in it; expected the python version "
            f"of the archive ({prefix}/ with {', '.join(names)})"
        ) from err
    except (tarfile.TarError, pickle.UnpicklingError, EOFError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(f"{where}: not a readable CIFAR python archive ({reason})") from err
    return {n: {_text(k): v for k, v in d.items()} for n, d in out.items()}


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _cifar_images(batch: dict, where: str) -> np.ndarray:
    data = np.asarray(batch["data"], np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{where}: 'data' must be (N, 3072) uint8, got shape {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as a uint8 array, its header checked."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path}: unreadable ({err})") from err
    if len(data) < 4:
        raise DatasetError(f"{path}: too short for an idx file")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DatasetError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape}, holds {len(body)} bytes")
    return np.frombuffer(body, np.uint8).reshape(shape)


def _idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for stem in _IDX_FILES[split]:
        found = [p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()]
        if not found:
            raise DatasetError(f"{folder}: no {stem}.gz (expected the four idx files of MNIST)")
        arrays.append(_read_idx(found[0]))
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
        raise DatasetError(
            f"{folder}: {split} images must be (N, 28, 28) and labels (N,), got "
            f"{images.shape} and {labels.shape}"
        )
    if len(images) != len(labels):
        raise DatasetError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


def _image_files(folder: Path, suffixes=(".jpeg", ".jpg")) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _checked(path: Path, bad: list[tuple[str, str]], root: Path) -> bool:
    """Whether ``path`` decodes; if not it is added to ``bad`` (reported once, then skipped)."""
    try:
        imagelib.verify(path)
    except imagelib.DECODE_ERRORS as err:
        bad.append((os.path.relpath(path, root), imagelib.describe(err)))
        return False
    return True


def _rgb_jpeg(path: Path) -> bytes | Path:
    """The file itself when it is an RGB or grey JPEG, else the image re-encoded as RGB JPEG at
    quality 100 (what tfds's ImageNet builder does for its CMYK and PNG files)."""
    with imagelib.open_image(path) as img:
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            return path
        buffer = io.BytesIO()
        img.convert("RGB").save(buffer, format="JPEG", quality=100)
        return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Builders: tfds's own, reading local files
# ---------------------------------------------------------------------------------------------


def _builders() -> dict[str, Callable[..., Any]]:
    """``{name: builder class}``; tfds is imported here (not at import time)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar, mnist

    class _Local:
        """Mixin: the files come from ``self.source`` (set before preparing)."""

        source: Path
        bad: list[tuple[str, str]]

    class Cifar10(_Local, cifar.Cifar10, skip_registration=True):
        name = "cifar10"
        _PREFIX, _TRAIN, _TEST, _META = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            "batches.meta",
        )
        _LABELS = (("labels", "label", "label_names"),)

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing is downloaded
            names = [*self._TRAIN, *self._TEST, self._META]
            batches = _cifar_members(self.source, self._PREFIX, names)
            meta = batches[self._META]
            for _, feature, names_key in self._LABELS:
                label_names = [_text(n) for n in meta.get(names_key, [])]
                if label_names:
                    self.info.features[feature].names = label_names
            return {
                "train": self._generate_examples("train_", [batches[n] for n in self._TRAIN]),
                "test": self._generate_examples("test_", [batches[n] for n in self._TEST]),
            }

        def _generate_examples(self, split_prefix, batches):
            index = 0  # tfds's keys: the position, so records shuffle as tfds's own do
            for batch in batches:
                images = _cifar_images(batch, f"{self.source}")
                columns = []
                for key, _, _ in self._LABELS:
                    if key not in batch:
                        raise DatasetError(f"{self.source}: a batch has no {key!r}")
                    columns.append(np.asarray(batch[key]))
                for i, image in enumerate(images):
                    record = {
                        f: int(c[i]) for (_, f, _), c in zip(self._LABELS, columns, strict=True)
                    }
                    record["id"] = f"{split_prefix}{index:05d}"
                    record["image"] = _png(image)
                    yield index, record
                    index += 1

    class Cifar100(_Local, cifar.Cifar100, skip_registration=True):
        name = "cifar100"
        _PREFIX, _TRAIN, _TEST, _META = "cifar-100-python", ["train"], ["test"], "meta"
        _LABELS = (
            ("coarse_labels", "coarse_label", "coarse_label_names"),
            ("fine_labels", "label", "fine_label_names"),
        )
        _split_generators = Cifar10._split_generators
        _generate_examples = Cifar10._generate_examples

    def mnist_like(parent, dataset):
        class Mnist(_Local, parent, skip_registration=True):
            name = dataset

            def _split_generators(self, dl_manager):
                del dl_manager
                return {s: self._generate_examples(*_idx_split(self.source, s)) for s in _IDX_FILES}

            def _generate_examples(self, images, labels):
                for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                    yield index, {"image": _png(image), "label": int(label)}

        return Mnist

    imagenette_cls = tfds.builder_cls("imagenette")

    class Imagenette(_Local, imagenette_cls, skip_registration=True):
        name = "imagenette"
        # tfds's description and citation files live beside its own builder's module.
        pkg_dir_path = imagenette_cls._get_pkg_dir_path()

        def _split_generators(self, dl_manager):
            del dl_manager
            return {
                "train": self._generate_examples(self.source / "train"),
                "validation": self._generate_examples(self.source / "val"),
            }

        def _generate_examples(self, datapath):
            if not datapath.is_dir():
                raise DatasetError(f"{self.source}: no {datapath.name}/ (fast.ai's layout)")
            names = set(self.info.features["label"].names)
            for label_dir in sorted(p for p in datapath.iterdir() if p.is_dir()):
                if label_dir.name not in names:
                    raise DatasetError(
                        f"{label_dir}: {label_dir.name!r} is not one of {self.name}'s classes"
                    )
                for path in _image_files(label_dir):
                    if _checked(path, self.bad, self.source):
                        yield path.name, {"image": path, "label": label_dir.name}

    class Imagewoof(Imagenette, skip_registration=True):
        """Imagewoof: 10 dog breeds from ImageNet, fast.ai's layout (mirrors imagenette)."""

        name = "imagewoof"

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=(
                    "Imagewoof is a subset of 10 classes from Imagenet that aren't so easy to "
                    "classify, since they're all dog breeds."
                ),
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(encoding_format="jpeg"),
                        "label": tfds.features.ClassLabel(names=IMAGEWOOF_LABELS),
                    }
                ),
                supervised_keys=("image", "label"),
                homepage="https://github.com/fastai/imagenette",
            )

    imagenet_cls = tfds.builder_cls("imagenet2012")

    class Imagenet2012(_Local, imagenet_cls, skip_registration=True):
        name = "imagenet2012"
        pkg_dir_path = imagenet_cls._get_pkg_dir_path()
        labels_file: Path | None = None

        def _split_generators(self, dl_manager):
            del dl_manager
            train, val = self.source / "train", self.source / "val"
            if not train.is_dir():
                raise DatasetError(f"{self.source}: no train/ (expected train/<wnid>/*.JPEG)")
            out = {"train": self._generate_examples(self._class_folders(train))}
            if val.is_dir():
                out["validation"] = self._generate_examples(self._validation(val))
            return out

        def _class_folders(self, folder: Path) -> Iterator[tuple[Path, str]]:
            names = set(self.info.features["label"].names)
            for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                if label_dir.name not in names:
                    raise DatasetError(f"{label_dir}: {label_dir.name!r} is not an ImageNet wnid")
                for path in _image_files(label_dir):
                    yield path, label_dir.name

        def _validation(self, val: Path) -> Iterator[tuple[Path, str]]:
            if any(p.is_dir() for p in val.iterdir()):
                yield from self._class_folders(val)
                return
            files = _image_files(val)
            labels = _validation_labels(self.labels_file, [p.name for p in files], val)
            for path in files:
                yield path, labels[path.name]

        def _generate_examples(self, pairs):
            for path, label in pairs:
                if _checked(path, self.bad, self.source):
                    image = _rgb_jpeg(path)
                    yield path.name, {"file_name": path.name, "image": image, "label": label}

    return {
        "cifar10": Cifar10,
        "cifar100": Cifar100,
        "mnist": mnist_like(mnist.MNIST, "mnist"),
        "fashion_mnist": mnist_like(mnist.FashionMNIST, "fashion_mnist"),
        "kmnist": mnist_like(mnist.KMNIST, "kmnist"),
        "imagenette": Imagenette,
        "imagewoof": Imagewoof,
        "imagenet2012": Imagenet2012,
    }


def _validation_labels(labels_file: Path | None, names: list[str], where: Path) -> dict[str, str]:
    """``{file name: wnid}`` for a flat ImageNet validation folder: tfds's
    ``validation_labels.txt`` (one wnid per line, for the sorted file names), or ``labels_file``
    in that format or as ``file_name wnid`` lines."""
    import tensorflow_datasets as tfds

    if labels_file is None:
        path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
        text = path.read_text()
    else:
        try:
            text = Path(labels_file).read_text()
        except OSError as err:
            raise DatasetError(f"--labels {labels_file}: unreadable ({err})") from err
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if lines and all(len(parts) == 2 for parts in lines):
        table = {parts[0]: parts[1] for parts in lines}
        missing = [n for n in names if n not in table]
        if missing:
            raise DatasetError(
                f"{where}: {len(missing)} file(s) have no label in {labels_file}, e.g. {missing[0]}"
            )
        return {n: table[n] for n in names}
    if any(len(parts) != 1 for parts in lines):
        raise DatasetError(
            f"{labels_file or 'validation_labels.txt'}: expected one wnid per line or "
            "'file_name wnid' lines"
        )
    if len(lines) != len(names):
        raise DatasetError(
            f"{where} has {len(names)} images but {labels_file or 'validation_labels.txt'} has "
            f"{len(lines)} labels (one per file, in sorted file-name order); pass --labels with "
            "'file_name wnid' lines for a partial validation folder"
        )
    return {n: parts[0] for n, parts in zip(sorted(names), lines, strict=True)}


def _folder_builder(dataset: str, listing, shape: tuple[int | None, int | None, int]):
    """A tfds builder named ``dataset`` for an image folder (:func:`cnn_jax.data.folder.scan`)
    whose images have ``shape`` (None: sizes differ)."""
    import tensorflow_datasets as tfds

    channels = shape[-1]

    class Folder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        source: Path
        bad: list[tuple[str, str]]

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"The image folder {listing.root}, prepared by cnn-jax.",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=shape),
                        "label": tfds.features.ClassLabel(names=listing.class_names),
                        "file_name": tfds.features.Text(),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {s: self._generate_examples(s) for s in ("train", "validation", "test")}

        def _generate_examples(self, split):
            root = Path(listing.root)
            for rel, label in zip(listing.files[split], listing.labels[split], strict=True):
                try:
                    image = _stored(root / rel, channels)
                except imagelib.DECODE_ERRORS as err:
                    self.bad.append((rel, imagelib.describe(err)))
                    continue
                yield rel, {"image": image, "label": int(label), "file_name": rel}

    Folder.name = dataset
    return Folder


def _stored(path: Path, channels: int) -> bytes | Path:
    """What a prepared folder stores for one image (decoded once here, so unreadable files
    raise): the file itself for an upright JPEG in the dataset's channels, else a PNG of the
    upright image in those channels."""
    imagelib.verify(path)
    with imagelib.open_image(path) as img:
        mode = "L" if channels == 1 else "RGB"
        if img.format == "JPEG" and img.mode == mode and imagelib.orientation(img) == 1:
            return path
        h, w = imagelib.oriented_size(img)
    array = imagelib.decode(path, imagelib.ImageSpec((h, w), channels))
    return _png(array[..., 0] if channels == 1 else array)


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _imagenette_config(source: Path, base: str) -> str:
    """The tfds config of fast.ai's folder name (``imagenette2-320`` -> ``320px-v2``)."""
    match = re.fullmatch(rf"{base}(2?)(?:-(160|320))?", source.name)
    if not match:
        raise DatasetError(
            f"{source}: cannot tell the {base} size from the folder name (fast.ai's are "
            f"{base}2, {base}2-320, {base}2-160); pass --config (full-size-v2, 320px-v2, "
            "160px-v2, full-size, 320px, 160px)"
        )
    size = f"{match.group(2)}px" if match.group(2) else "full-size"
    return size + ("-v2" if match.group(1) else "")


def prepare(
    name: str,
    source: str | os.PathLike,
    data_dir: str | None = None,
    *,
    dataset_name: str | None = None,
    config: str | None = None,
    labels: str | None = None,
    split_seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Writes the tfds ``array_record`` dataset ``name`` from its official files at ``source``
    (see the module docstring for what each name takes) into ``data_dir``.

    Args:
      name: one of :data:`FROM`.
      source: the archive or folder.
      data_dir: the tfds data directory (default :func:`cnn_jax.data.default_data_dir`).
      dataset_name: for ``folder``: the name to load it by (lower case, digits, ``_``).
      config: for ``imagenette`` / ``imagewoof``: the size config (default: from the folder
        name).
      labels: for ``imagenet2012``: the labels of a flat ``val/`` folder.
      split_seed: for ``folder``: the seed of the split when it has no split folders.
      log: where progress lines go.

    Returns:
      ``{'dataset': the name to load (with its config), 'data_dir', 'path', 'splits':
      {split: examples}}``.

    Raises:
      DatasetError: an unknown name, missing or malformed files, an invalid dataset name.
    """
    import tensorflow_datasets as tfds

    from cnn_jax.data.sources import default_data_dir

    if name not in FROM:
        raise DatasetError(f"cannot prepare {name!r}; known: {', '.join(FROM)}")
    source = Path(source).expanduser()
    if not source.exists():
        raise DatasetError(f"--from {source}: no such file or folder")
    data_dir = str(Path(data_dir or default_data_dir()).expanduser())
    kwargs: dict[str, Any] = {}
    if name == "folder":
        from cnn_jax.data import folder

        if not dataset_name or not _NAME.match(dataset_name):
            raise DatasetError(
                f"prepare folder needs --name: lower case letters, digits and _, starting with a "
                f"letter (got {dataset_name!r})"
            )
        listing = folder.scan(source, split_seed)
        paths = [Path(listing.root) / f for s in listing.files.values() for f in s]
        headers = [h for h in folder.parallel_map(lambda i: _header(paths[i]), len(paths)) if h]
        channels = 1 if headers and all(grey for _, _, grey in headers) else 3
        sizes = {(h, w) for h, w, _ in headers}
        size = sizes.pop() if len(sizes) == 1 else (None, None)
        cls = _folder_builder(dataset_name, listing, (*size, channels))
        loaded_as = dataset_name
    else:
        if dataset_name:
            raise DatasetError("--name is for `prepare folder` only")
        cls = _builders()[name]
        if name in ("imagenette", "imagewoof"):
            if not source.is_dir():
                raise DatasetError(f"--from {source}: extract the archive first (a folder)")
            kwargs["config"] = config or _imagenette_config(source, name)
            loaded_as = f"{name}/{kwargs['config']}"
        else:
            if config:
                raise DatasetError(f"--config is for imagenette and imagewoof, not {name}")
            loaded_as = name
    if labels and name != "imagenet2012":
        raise DatasetError("--labels is for imagenet2012 only")
    try:
        builder = cls(data_dir=data_dir, file_format="array_record", **kwargs)
    except ValueError as err:  # an unknown config
        raise DatasetError(f"{name}: {err}") from err
    builder.source, builder.bad = source, []
    if labels:
        builder.labels_file = Path(labels)
    if builder.is_prepared():
        log(f"{loaded_as} is already prepared in {builder.data_dir}; delete it to prepare again")
    else:
        log(f"preparing {loaded_as} from {source} into {builder.data_dir} ...")
        show_bars = sys.stderr.isatty()
        if not show_bars:
            tfds.disable_progress_bar()
        try:
            # tfds prints "Downloading and preparing dataset ..." though nothing is downloaded.
            with contextlib.redirect_stdout(io.StringIO()):
                builder.download_and_prepare()
        finally:
            if not show_bars:
                tfds.enable_progress_bar()
        from cnn_jax.data.folder import warn_skipped

        warn_skipped(f"prepare {name} --from {source}", builder.bad)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    return {
        "dataset": loaded_as,
        "data_dir": data_dir,
        "path": str(builder.data_dir),
        "splits": splits,
        "skipped_unreadable": len(builder.bad),
    }


def _header(path: Path) -> tuple[int, int, bool] | None:
    """``(height, width, grey)`` of an image file as displayed (None: unreadable; it is
    reported when the dataset is written)."""
    try:
        with imagelib.open_image(path) as img:
            return (*imagelib.oriented_size(img), imagelib.is_grey(img))
    except imagelib.DECODE_ERRORS:
        return None


__all__ = ["FROM", "IMAGEWOOF_LABELS", "prepare"]
