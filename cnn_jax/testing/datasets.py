"""Small datasets written in their official formats from random pixels, for the data tests and
the input-pipeline benchmark: nothing is downloaded.

* :func:`image_folder`: ``root/<class>/<i>.<ext>`` image files (any formats and modes);
* :func:`cifar_tarball`: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (pickled
  batches with ``data`` and labels, plus the meta file of label names);
* :func:`idx_files`: MNIST's four gzipped idx files with real headers;
* :func:`fast_ai_folder`: imagenette / imagewoof's ``train/<wnid>/*.JPEG`` + ``val/`` layout.

Images are smooth random gradients plus noise (JPEG-compressible like photos, not like white
noise), a different one per file.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "webp": "WEBP", "gif": "GIF"}


def random_image(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    """uint8 (h, w, channels): a random smooth gradient with noise."""
    ys, xs = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, channels) + np.stack(
        [rng.uniform(-1, 1) * ys * 255 / h + rng.uniform(-1, 1) * xs * 255 / w] * channels, -1
    )
    noisy = base + rng.normal(0, 20, (h, w, channels))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def save_image(path: Path, image: np.ndarray, *, mode: str | None = None, quality: int = 90):
    """Writes ``image`` (h, w, 1 or 3) in the format of ``path``'s extension, converted to the
    Pillow ``mode`` if given ('L', 'RGBA', 'P', 'I;16', ...)."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if mode == "I;16":
        pil = Image.fromarray(np.asarray(pil.convert("L"), np.uint16) * 257)
    elif mode is not None:
        pil = pil.convert(mode)
    fmt = _FORMATS[path.suffix.lower().lstrip(".")]
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, format=fmt, **options)


def image_folder(
    root: str | Path,
    classes: Sequence[str] = ("cat", "dog"),
    per_class: int = 10,
    size: tuple[int, int] = (24, 32),
    ext: str = "jpg",
    seed: int = 0,
    channels: int = 3,
) -> Path:
    """Writes ``root/<class>/<i>.<ext>``: ``per_class`` random images of ``size`` per class;
    class ``k``'s images are brighter with ``k`` (so a model can learn them). Returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        for i in range(per_class):
            image = random_image(rng, *size, channels)
            image = np.clip(image.astype(int) // 2 + 100 * k, 0, 255).astype(np.uint8)
            save_image(root / name / f"{i:05d}.{ext}", image)
    return root


def cifar_tarball(
    path: str | Path, *, n_train: int = 50, n_test: int = 20, hundred: bool = False, seed=0
) -> tuple[Path, dict[str, tuple[np.ndarray, ...]]]:
    """Writes a CIFAR-10 (or CIFAR-100 with ``hundred``) python tarball of random images:
    ``(path, {'train': (images (N, 32, 32, 3), labels[, coarse labels]), 'test': ...})``."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    prefix = "cifar-100-python" if hundred else "cifar-10-batches-py"
    made: dict[str, tuple[np.ndarray, ...]] = {}
    members: dict[str, dict] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        if hundred:
            fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
            members[split] = {
                b"data": data,
                b"fine_labels": fine.tolist(),
                b"coarse_labels": coarse.tolist(),
            }
            made[split] = (images, fine, coarse)
        else:
            labels = rng.integers(0, 10, n)
            made[split] = (images, labels)
            if split == "train":  # five batches, as the real archive splits its 50,000 images
                for i, part in enumerate(np.array_split(np.arange(n), 5), start=1):
                    members[f"data_batch_{i}"] = {
                        b"data": data[part],
                        b"labels": labels[part].tolist(),
                    }
            else:
                members["test_batch"] = {b"data": data, b"labels": labels.tolist()}
    if hundred:
        members["meta"] = {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        }
    else:
        members["batches.meta"] = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            blob = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path, made


def idx_files(
    folder: str | Path, *, n_train: int = 50, n_test: int = 20, seed: int = 0
) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Writes MNIST's four gzipped idx files of random 28x28 images: ``(folder, {'train':
    (images, labels), 'test': ...})``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    made = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, array, magic in (("images-idx3", images, 3), ("labels-idx1", labels, 1)):
            header = struct.pack(">HBB", 0, 0x08, magic) + struct.pack(
                f">{array.ndim}I", *array.shape
            )
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.tobytes())
        made[split] = (images, labels)
    return folder, made


def fast_ai_folder(
    root: str | Path, wnids: Sequence[str], per_class: int = 2, size=(40, 48), seed: int = 0
) -> Path:
    """Writes fast.ai's imagenette layout: ``root/{train,val}/<wnid>/<wnid>_<i>.JPEG``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for wnid in wnids:
            for i in range(per_class):
                save_image(
                    root / split / wnid / f"{wnid}_{split}{i}.JPEG", random_image(rng, *size)
                )
    return root
