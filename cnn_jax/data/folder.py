"""Image folders as datasets, as torchvision's ``ImageFolder`` and Keras's
``image_dataset_from_directory`` read them: ``data.load('folder:PATH')``.

Layout: ``PATH/<class>/**/<image>``; the classes are the sorted subfolder names and the files
of a class are found recursively (JPEG, PNG, BMP, WebP, GIF: first frame). When ``PATH`` holds
``train/`` (and ``val/`` or ``validation/``, ``test/``), those are the splits, each laid out as
above with the same classes; a missing validation split is 10% of each class of ``train/``
(seeded), and without ``test/`` the validation folder is the test split (so that the split
that picks the best checkpoint is never the one reported). Without split folders each class
is split 80 / 10 / 10% (seeded). Every split records a SHA-256 of its file list.

Every file is decoded once when the folder is loaded: unreadable ones are skipped with one
warning naming up to five of them and the count (also in each split's ``details``). A folder
with no images, a single class, or different classes in different splits is refused.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnn_jax.data import images as imagelib
from cnn_jax.data.sources import DatasetWarning, Split, pixel_histogram, stats_from_histogram
from cnn_jax.data.stream import FileReader, Plan, StreamedSplit, decode_pass, parallel_map
from cnn_jax.errors import DatasetError

SPLIT_FOLDERS = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}
# Without split folders: train / validation / test fractions of every class.
FRACTIONS = (0.8, 0.1, 0.1)
# A validation split carved out of train/ takes this fraction of every class.
VALIDATION_FRACTION = 0.1
PREFIX = "folder:"


@dataclass(frozen=True)
class Listing:
    """The files of an image folder, assigned to splits (before any file is opened).

    Attributes:
      root: the folder (absolute).
      class_names: sorted class subfolder names; a label indexes them.
      files: ``{split: [path relative to root, ...]}`` sorted by (label, path).
      labels: ``{split: int32 labels}``.
      how: ``{split: where its files come from}`` (e.g. ``'train/'``,
        ``'80% of each class (split seed 0)'``).
    """

    root: str
    class_names: tuple[str, ...]
    files: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    how: dict[str, str]


def _class_files(folder: Path, root: Path) -> dict[str, list[str]]:
    """``{class: sorted image paths relative to root}`` for each subfolder of ``folder``."""
    out = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        found = []
        for parent, dirs, names in os.walk(entry.path, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [
                os.path.relpath(os.path.join(parent, n), root)
                for n in names
                if imagelib.is_image_file(n) and not n.startswith(".")
            ]
        out[entry.name] = sorted(found)
    return out


def _loose_images(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.is_file() and imagelib.is_image_file(e.name))


def _stratified(
    per_class: Sequence[list[str]], fractions: Sequence[float], seed: int
) -> list[list[tuple[int, str]]]:
    """Each class's files split by ``fractions`` (the first part takes the rest), drawn with
    one ``default_rng(seed)`` permutation per class in class order."""
    rng = np.random.default_rng(seed)
    parts: list[list[tuple[int, str]]] = [[] for _ in fractions]
    for label, files in enumerate(per_class):
        order = rng.permutation(len(files))
        counts = [int(np.floor(len(files) * f + 0.5)) for f in fractions[1:]]
        start = 0
        for part, count in zip(parts[1:], counts, strict=True):
            part += [(label, files[i]) for i in order[start : start + count]]
            start += count
        parts[0] += [(label, files[i]) for i in order[start:]]
    return [sorted(p) for p in parts]


def scan(path: str | os.PathLike, split_seed: int = 0) -> Listing:
    """Finds the classes and files of an image folder and assigns them to splits.

    Raises:
      DatasetError: no such folder, no images, a single class, different classes in different
        split folders, an unknown folder beside the split folders.
    """
    root = Path(path).expanduser()
    where = f"{PREFIX}{path}"
    if not root.is_dir():
        raise DatasetError(f"{where}: no such folder")
    root = root.resolve()
    subfolders = {e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}
    split_names = {n for names in SPLIT_FOLDERS.values() for n in names}
    present = {
        split: [n for n in names if n in subfolders] for split, names in SPLIT_FOLDERS.items()
    }
    if len(present["validation"]) > 1:
        raise DatasetError(f"{where} has both val/ and validation/: keep one of them")
    if not present["train"] and (present["validation"] or present["test"]):
        others = present["validation"] + present["test"]
        raise DatasetError(
            f"{where} has {'/ '.join(others)}/ but no train/: split folders need a train/ "
            "beside them (or put the class folders directly in the folder)"
        )
    if present["train"]:
        extra = sorted(subfolders - split_names)
        if extra:
            raise DatasetError(
                f"{where} has split folders and also {', '.join(e + '/' for e in extra)}: a "
                "folder with train/ may hold only train/, val/ or validation/, and test/"
            )
        found = {
            split: (names[0], _class_files(root / names[0], root))
            for split, names in present.items()
            if names
        }
        classes = {split: set(files) for split, (_, files) in found.items()}
        if len({frozenset(c) for c in classes.values()}) > 1:
            train_classes = classes["train"]
            diffs = []
            for split, names in classes.items():
                if split == "train":
                    continue
                folder = found[split][0]
                only, lacking = sorted(names - train_classes), sorted(train_classes - names)
                if only:
                    diffs.append(f"only in {folder}/: {', '.join(only)}")
                if lacking:
                    diffs.append(f"missing in {folder}/: {', '.join(lacking)}")
            raise DatasetError(
                f"{where}: the split folders have different classes ({'; '.join(diffs)}); "
                "every split folder needs the same class subfolders"
            )
        per_split = {split: files for split, (_, files) in found.items()}
        class_names = tuple(sorted(classes["train"]))
        _check_classes(where, class_names, per_split["train"], "train/")
        train_per_class = [per_split["train"][c] for c in class_names]
        as_listed = {
            split: sorted(
                (label, f) for label, c in enumerate(class_names) for f in per_split[split][c]
            )
            for split in per_split
        }
        how = {split: f"{found[split][0]}/" for split in per_split}
        if "validation" not in per_split:
            if "test" not in per_split:
                parts = _stratified(train_per_class, FRACTIONS, split_seed)
                as_listed = dict(zip(("train", "validation", "test"), parts, strict=True))
                how = {
                    split: f"{int(f * 100)}% of each class of train/ (split seed {split_seed})"
                    for split, f in zip(("train", "validation", "test"), FRACTIONS, strict=True)
                }
            else:
                train, val = _stratified(
                    train_per_class, (1 - VALIDATION_FRACTION, VALIDATION_FRACTION), split_seed
                )
                as_listed.update(train=train, validation=val)
                how["train"] = (
                    f"train/ less {int(VALIDATION_FRACTION * 100)}% of each class (split seed "
                    f"{split_seed})"
                )
                how["validation"] = (
                    f"{int(VALIDATION_FRACTION * 100)}% of each class of train/ (split seed "
                    f"{split_seed})"
                )
        elif "test" not in per_split:
            # The validation folder becomes the test split; validation comes out of train/.
            train, val = _stratified(
                train_per_class, (1 - VALIDATION_FRACTION, VALIDATION_FRACTION), split_seed
            )
            folder = found["validation"][0]
            as_listed.update(train=train, validation=val, test=as_listed["validation"])
            how.update(
                train=f"train/ less {int(VALIDATION_FRACTION * 100)}% of each class (split "
                f"seed {split_seed})",
                validation=f"{int(VALIDATION_FRACTION * 100)}% of each class of train/ (split "
                f"seed {split_seed})",
                test=f"{folder}/ (there is no test/)",
            )
    else:
        per_class = _class_files(root, root)
        class_names = tuple(sorted(per_class))
        if not class_names and _loose_images(root):
            raise DatasetError(
                f"{where} has {_loose_images(root)} images but no class subfolders: put each "
                "class's images in a subfolder named after it (PATH/<class>/<image>)"
            )
        _check_classes(where, class_names, per_class, "")
        parts = _stratified([per_class[c] for c in class_names], FRACTIONS, split_seed)
        as_listed = dict(zip(("train", "validation", "test"), parts, strict=True))
        how = {
            split: f"{int(f * 100)}% of each class (split seed {split_seed})"
            for split, f in zip(("train", "validation", "test"), FRACTIONS, strict=True)
        }
    return Listing(
        root=str(root),
        class_names=class_names,
        files={s: [f for _, f in as_listed[s]] for s in ("train", "validation", "test")},
        labels={
            s: np.asarray([label for label, _ in as_listed[s]], np.int32)
            for s in ("train", "validation", "test")
        },
        how=how,
    )


def _check_classes(where: str, class_names, per_class: dict[str, list[str]], folder: str):
    exts = " ".join(imagelib.IMAGE_EXTENSIONS)
    if not any(per_class.values()):
        raise DatasetError(
            f"{where} has no images ({exts}) in class subfolders {folder or ''}(expected "
            f"{folder}<class>/<image>)"
        )
    if len(class_names) < 2:
        raise DatasetError(
            f"{where} has a single class ({class_names[0]!r}): a classifier needs at least two "
            "class subfolders"
        )
    empty = [c for c in class_names if not per_class[c]]
    if empty:
        raise DatasetError(
            f"{where}: class folder(s) {', '.join(empty)} in {folder or 'the folder'} hold no "
            f"images ({exts}); remove them or add images"
        )


def _hash(files: Sequence[str], labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    for label, f in zip(labels, files, strict=True):
        digest.update(f"{int(label)}\t{f}\n".encode())
    return digest.hexdigest()


def _headers(paths: Sequence[str]) -> list[tuple[int, int, bool] | str]:
    """``(height, width, grey)`` as displayed, or why the file is not an image."""

    def one(i: int):
        try:
            with imagelib.open_image(paths[i]) as img:
                h, w = imagelib.oriented_size(img)
                return h, w, imagelib.is_grey(img)
        except imagelib.DECODE_ERRORS as err:
            return imagelib.describe(err)

    return parallel_map(one, len(paths))


def _verify(paths: Sequence[str]) -> dict[int, str]:
    def one(i: int):
        try:
            imagelib.verify(paths[i])
        except imagelib.DECODE_ERRORS as err:
            return imagelib.describe(err)
        return None

    return {i: why for i, why in enumerate(parallel_map(one, len(paths))) if why is not None}


def warn_skipped(where: str, skipped: Sequence[tuple[str, str]]) -> None:
    """One warning line naming up to five unreadable files and the count."""
    if not skipped:
        return
    named = ", ".join(f"{f} ({why})" for f, why in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    warnings.warn(
        f"{where}: skipped {len(skipped)} unreadable image file(s): {named}{more}",
        DatasetWarning,
        stacklevel=4,
    )


def _rows(arrays: np.ndarray, rows: list[int]) -> np.ndarray:
    """``arrays[rows]``, as a view (no copy) when the rows are consecutive."""
    if rows and rows == list(range(rows[0], rows[-1] + 1)):
        return arrays[rows[0] : rows[-1] + 1]
    return arrays[rows]


def load_folder(
    path: str,
    *,
    image_size: tuple[int, int] | None,
    stream: bool | None,
    augment: imagelib.HostAugment | None,
    crop_fraction: float | None,
    workers: int | None,
    split_seed: int,
) -> dict[str, Split | StreamedSplit]:
    """The splits of an image folder (see the module docstring and :func:`cnn_jax.data.load`).

    Every image is opened once for its size and mode, then decoded once: at the model's size
    when the train split fits in memory (exact statistics; the images are kept unless
    streaming), else at the smallest JPEG scale to check it reads (statistics from a seeded
    sample of train images): see :class:`~cnn_jax.data.stream.Plan`.
    """
    where = f"{PREFIX}{path}"
    listing = scan(path, split_seed)
    splits = ("train", "validation", "test")
    paths = [os.path.join(listing.root, f) for s in splits for f in listing.files[s]]
    offsets = np.cumsum([0] + [len(listing.files[s]) for s in splits])
    headers = _headers(paths)
    bad = {i: h for i, h in enumerate(headers) if isinstance(h, str)}
    good = [h for h in headers if not isinstance(h, str)]
    if not good:
        raise DatasetError(f"{where}: none of its {len(paths)} image files can be read")
    channels = 1 if all(grey for _, _, grey in good) else 3
    if image_size is None:
        sizes = sorted({(h, w) for h, w, _ in good})
        if len(sizes) > 1:
            shown = ", ".join(f"{h}x{w}" for h, w in sizes[:3])
            raise DatasetError(
                f"{where}: images have different sizes (e.g. {shown}); pass image_size (e.g. "
                "--image-size 224) to bring them to one size"
            )
        image_size = sizes[0]
    n_train = len(listing.files["train"])
    plan = Plan.make(
        image_size, channels, n_train, stream=stream, augment=augment,
        crop_fraction=crop_fraction, workers=workers,
    )  # fmt: skip
    spec, keep = plan.spec, not plan.streamed
    readable = [i for i in range(len(paths)) if i not in bad]
    counted = [i < offsets[1] for i in readable]  # the train split's files come first
    if plan.exact or keep:
        arrays, histogram, errors = decode_pass(
            lambda j: paths[readable[j]], len(readable), spec, keep=keep, counted=counted
        )
    else:
        arrays, histogram = None, None
        errors = _verify([paths[i] for i in readable])
    bad.update({readable[j]: why for j, why in errors.items()})
    row_of = {i: row for row, i in enumerate(readable)}  # file index -> row of `arrays`
    skipped = {i: (os.path.relpath(paths[i], listing.root), bad[i]) for i in sorted(bad)}
    warn_skipped(where, list(skipped.values()))

    per_split = {}
    for k, split in enumerate(splits):
        idx = [i for i in range(offsets[k], offsets[k + 1]) if i not in bad]
        labels = listing.labels[split][[i - offsets[k] for i in idx]]
        per_split[split] = (idx, [listing.files[split][i - offsets[k]] for i in idx], labels)
    empty = [split for split in splits if not per_split[split][0]]
    if empty:
        raise DatasetError(
            f"{where}: the {' and '.join(empty)} split(s) would be empty (too few images for "
            f"{listing.how[empty[0]]}); add images, or give train/ val/ test/ folders"
        )
    train_idx, _, train_labels = per_split["train"]
    missing = [c for i, c in enumerate(listing.class_names) if not (train_labels == i).any()]
    if missing:
        raise DatasetError(
            f"{where}: class(es) {', '.join(missing)} have no readable training images"
        )
    sample, stats_how = plan.stats_rows(len(train_idx))
    if not plan.exact:
        if arrays is not None:
            histogram = pixel_histogram(arrays[[row_of[train_idx[j]] for j in sample]])
        else:
            _, histogram, _ = decode_pass(
                lambda j: paths[train_idx[sample[j]]], len(sample), spec, keep=False
            )
    mean, std = stats_from_histogram(histogram)
    name = Path(listing.root).name
    out: dict[str, Split | StreamedSplit] = {}
    for k, split in enumerate(splits):
        idx, files, labels = per_split[split]
        split_skipped = [skipped[i] for i in range(offsets[k], offsets[k + 1]) if i in skipped]
        out[split] = plan.split(
            split,
            reader=FileReader(listing.root, tuple(files), labels),
            images=None if plan.streamed else _rows(arrays, [row_of[i] for i in idx]),
            labels=labels,
            name=f"{name}/{split}",
            num_classes=len(listing.class_names),
            mean=mean,
            std=std,
            class_names=listing.class_names,
            source=f"{where} {listing.how[split]}",
            details={
                "folder": listing.root,
                "files": len(files),
                "files_sha256": _hash(files, labels),
                "split": listing.how[split],
                "skipped_unreadable": len(split_skipped),
                "skipped_files": [f"{f} ({why})" for f, why in split_skipped[:20]],
                **plan.details(stats_how),
            },
        )
    return out
