"""Batches from in-memory splits: deterministic shuffling, masks for the last batch, reading
ahead in background threads (``grain``), and the whole split on the device.

Every batch is ``{'image': f32[N, H, W, C] (or raw u8), 'label': i32[N], 'mask': bool[N]}`` with a
fixed N, so a jitted step traces once: a final partial batch is either dropped (training) or
padded with ``mask=False`` rows (evaluation, so every example counts exactly once).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.data.sources import Split, standardize

Batch = dict[str, Any]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a function of (seed, epoch) only, so a resumed run sees
    the same order as an uninterrupted one."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches per epoch for ``n`` examples."""
    return n // batch_size if drop_remainder else -(-n // batch_size)


def batch_indices(
    n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int, drop_remainder: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (num_batches, batch_size) and mask of one epoch; padding rows repeat index 0."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n == 0:
        raise ValueError("cannot batch an empty split")
    steps = num_batches(n, batch_size, drop_remainder)
    if steps == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the split ({n} examples) and the last "
            "partial batch is dropped: no batch at all. Use a smaller batch_size."
        )
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
    total = steps * batch_size
    mask = np.arange(total) < n
    idx = np.zeros(total, np.int64)
    idx[: min(n, total)] = order[:total]
    return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def batch_dataset(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool | None = None,
    normalize: bool = True,
    start: int = 0,
    rows: slice = slice(None),
) -> grain.MapDataset:
    """One epoch of ``split`` in batches, as a ``grain.MapDataset`` (random access; ``len`` is
    the number of batches): batch ``i`` is read when it is asked for. :func:`batches` iterates
    it with reading threads.

    Args:
      split: a :class:`~cnn_jax.data.Split`.
      batch_size: examples per batch (the global batch for data-parallel training).
      shuffle: shuffle with the order of :func:`epoch_permutation` ``(seed, epoch)``.
      drop_remainder: drop the last partial batch (default: when shuffling, i.e. training);
        otherwise it is padded and its padding rows have ``mask=False``.
      normalize: float32 ``(x/255 - mean) / std`` with the train statistics; ``False`` gives
        the raw uint8 pixels, what a step built with ``mean``/``std`` (which normalises on the
        device, after augmentation) takes. The step refuses float images then, so a batch cannot
        be normalised twice.
      start: the first batch (a run resumed mid-epoch starts where it stopped).
      rows: the rows of every batch to read (one process's share of a global batch: see
        :meth:`cnn_jax.train.parallel.Placement.local_rows`); all by default.
    """
    drop = shuffle if drop_remainder is None else drop_remainder
    idx, mask = batch_indices(
        len(split), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, drop_remainder=drop
    )
    idx, mask = idx[start:, rows], mask[start:, rows]

    def read(i: int) -> Batch:
        images = split.images[idx[i]]
        if normalize:
            images = split.normalize(images)
        return {"image": images, "label": split.labels[idx[i]], "mask": mask[i]}

    return grain.MapDataset.range(len(idx)).map(read)


def batches(split: Split, batch_size: int, *, threads: int = 2, **options: Any) -> Iterator[Batch]:
    """Yields the batches of :func:`batch_dataset` ``(split, batch_size, **options)`` (NumPy, on
    the host), read ahead by ``threads`` background threads (grain; 0: each batch is read when
    it is asked for). The order is a function of ``(seed, epoch)`` only.
    """
    dataset = batch_dataset(split, batch_size, **options)
    if not threads:
        return iter(dataset)
    read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
    return iter(dataset.to_iter_dataset(read_options))


# ---------------------------------------------------------------------------------------------
# Fast path: a small dataset lives on the device; batches are gathered inside the jitted step.
# ---------------------------------------------------------------------------------------------


def to_device(split: Split, sharding: Any = None) -> dict[str, jax.Array]:
    """The whole split on device as uint8 images / int32 labels (CIFAR-10 train: 150 MB), plus
    its normalisation statistics, for :func:`gather`."""
    put = (lambda x: jax.device_put(x, sharding)) if sharding is not None else jax.device_put
    return {
        "images": put(split.images),
        "labels": put(split.labels),
        "mean": put(split.mean),
        "std": put(split.std),
    }


def gather(data: dict[str, jax.Array], indices: jax.Array, normalize: bool = True) -> Batch:
    """A batch from device-resident data (see :func:`to_device`); jit-able. ``indices`` come
    from :func:`batch_indices`."""
    images = jnp.take(data["images"], indices, axis=0).astype(jnp.float32) / 255.0
    if normalize:
        images = standardize(images, data["mean"], data["std"])
    return {"image": images, "label": jnp.take(data["labels"], indices, axis=0)}
