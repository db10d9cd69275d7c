"""Figures the course draws: filters, feature maps, training curves with the best epoch marked,
saliency maps, and mean ± std over seeds for experiment sweeps.

Every function builds a :class:`matplotlib.figure.Figure` without ``pyplot`` (headless, no global
state, safe in scripts and threads) and returns it; ``path=`` also saves it as PNG. A returned
figure displays itself as a PNG in a notebook (``_repr_png_``), whatever the matplotlib backend.

>>> from cnn_jax.inspect import plots
>>> fig = plots.curves(history, path='curves.png')  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure as _MplFigure

from cnn_jax.inspect.features import filters_as_images


class Figure(_MplFigure):
    """A matplotlib Figure that renders itself as PNG in notebooks (no pyplot needed)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


def _save(fig: Figure, path: str | Path | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def _grid(n: int, cols: int | None) -> tuple[int, int]:
    cols = cols or min(n, 8)
    return math.ceil(n / cols), cols


def _image_for_display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(H, W, C) -> what imshow takes: grey (H, W) or RGB, with the colour map to use."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        return image[..., 0], "gray"
    if image.ndim == 3 and image.shape[-1] == 3:
        lo, hi = image.min(), image.max()
        return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image), None
    if image.ndim == 3:
        return image.mean(-1), "gray"
    return image, "gray"


def filters(
    weight: Any, *, cols: int | None = None, title: str = "", path: str | Path | None = None
) -> Figure:
    """Conv filters in torch layout ``(out, in, kH, kW)``, one tile per output channel, each
    min-max scaled on its own (grey for one input channel, RGB for three, the mean over input
    channels otherwise)."""
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise ValueError(f"filters expects (out, in, kH, kW), got shape {weight.shape}")
    images = np.asarray(filters_as_images(weight))
    rows, cols = _grid(len(images), cols)
    fig = Figure(figsize=(1.1 * cols, 1.1 * rows + (0.4 if title else 0)))
    for i, image in enumerate(images):
        ax = fig.add_subplot(rows, cols, i + 1)
        shown, cmap = _image_for_display(image)
        ax.imshow(
            shown, cmap=cmap, vmin=None if cmap is None else 0, vmax=None if cmap is None else 1
        )
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(str(i), fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def feature_maps(
    maps: Any,
    *,
    max_maps: int = 16,
    cols: int | None = None,
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """One image's feature maps ``(H, W, C)`` (or ``(1, H, W, C)``), the first ``max_maps``
    channels, each with its own colour scale (``viridis``)."""
    maps = np.asarray(maps)
    if maps.ndim == 4 and maps.shape[0] == 1:
        maps = maps[0]
    if maps.ndim != 3:
        raise ValueError(f"feature_maps expects (H, W, C) for one image, got {maps.shape}")
    n = min(max_maps, maps.shape[-1])
    rows, cols = _grid(n, cols)
    fig = Figure(figsize=(1.3 * cols, 1.3 * rows + (0.4 if title else 0)))
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(maps[..., i], cmap="viridis")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"ch {i}", fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def images(
    images: Any,
    *,
    labels: Sequence[str] | None = None,
    cols: int | None = None,
    title: str = "",
    cmap: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """A grid of images (N, H, W, C) or (N, H, W), with optional captions."""
    batch = np.asarray(images)
    rows, cols = _grid(len(batch), cols)
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows + (0.4 if title else 0)))
    for i, image in enumerate(batch):
        ax = fig.add_subplot(rows, cols, i + 1)
        shown, default = _image_for_display(image)
        ax.imshow(shown, cmap=cmap or default)
        ax.set_xticks([]), ax.set_yticks([])
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def curves(
    history: Sequence[Mapping[str, float]],
    *,
    best_epoch: int | None = None,
    extra: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Loss and accuracy per epoch from a run's history (``metrics.jsonl`` records: ``epoch``,
    ``train_loss``, ``val_loss``, ``train_accuracy``, ``val_accuracy``), with the best epoch
    marked by a dashed line (``best_epoch``; default: the highest validation accuracy).
    ``extra`` adds curves, e.g. ``{'test_accuracy': [...]}`` (one value per epoch, placed on the
    loss or accuracy panel by its name)."""
    if not history:
        raise ValueError("curves needs at least one epoch record")
    epochs = [r["epoch"] for r in history]
    if best_epoch is None:
        best_epoch = max(history, key=lambda r: (r["val_accuracy"], -r["epoch"]))["epoch"]
    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for split in ("train", "val"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], marker=".", label=split)
        ax_acc.plot(epochs, [r[f"{split}_accuracy"] for r in history], marker=".", label=split)
    for name, values in (extra or {}).items():
        ax = ax_loss if "loss" in name else ax_acc
        ax.plot(epochs[: len(values)], values, marker=".", label=name.replace("_", " "))
    for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best (epoch {best_epoch})")
        ax.set(xlabel="epoch", ylabel=what, title=what.capitalize())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def saliency(
    images: Any,
    maps: Any,
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Images (N, H, W, C) above their saliency maps (N, H, W) (see
    :func:`cnn_jax.inspect.saliency`), each map on its own scale (``hot``)."""
    batch, maps = np.asarray(images), np.asarray(maps)
    if maps.shape[:3] != batch.shape[:3]:
        raise ValueError(f"saliency maps {maps.shape} do not match the images {batch.shape}")
    n = len(batch)
    fig = Figure(figsize=(1.7 * n, 3.6 + (0.4 if title else 0)))
    for i in range(n):
        ax = fig.add_subplot(2, n, i + 1)
        shown, cmap = _image_for_display(batch[i])
        ax.imshow(shown, cmap=cmap)
        ax.set_xticks([]), ax.set_yticks([])
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=8)
        ax = fig.add_subplot(2, n, n + i + 1)
        ax.imshow(maps[i], cmap="hot")
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def mean_std(
    x: Sequence[float],
    series: Mapping[str, Any],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    ax: Any = None,
    path: str | Path | None = None,
) -> Figure:
    """One line per entry of ``series`` (``{label: values}``, values ``(seeds, len(x))``): the
    mean over seeds with a ±1 std band, so a reader sees the spread behind every comparison.
    Pass ``ax`` to draw into an existing axes (``path`` then saves its figure)."""
    fig = ax.figure if ax is not None else Figure(figsize=(6, 4))
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    xs = np.asarray(x, np.float64)
    for label, values in series.items():
        values = np.asarray(values, np.float64)
        if values.ndim == 1:
            values = values[None]
        if values.shape[-1] != len(xs):
            raise ValueError(f"series {label!r} has {values.shape[-1]} points, x has {len(xs)}")
        mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
        (line,) = ax.plot(xs, mean, marker=".", label=f"{label}")
        if len(values) > 1:
            ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def bars(
    groups: Mapping[str, Any],
    *,
    ylabel: str = "",
    title: str = "",
    ax: Any = None,
    path: str | Path | None = None,
) -> Figure:
    """One bar per entry of ``groups`` (``{label: per-seed values}``): the mean, a ±1 std error
    bar, and every seed's value as a dot."""
    fig = ax.figure if ax is not None else Figure(figsize=(1.2 * len(groups) + 2, 4))
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    for i, values in enumerate(groups.values()):
        values = np.asarray(values, np.float64).ravel()
        ax.bar(
            i, values.mean(), yerr=values.std() if len(values) > 1 else None, capsize=4, alpha=0.7
        )
        ax.plot(np.full(len(values), i), values, "k.", ms=4)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


__all__ = ["bars", "curves", "feature_maps", "filters", "images", "mean_std", "saliency"]
