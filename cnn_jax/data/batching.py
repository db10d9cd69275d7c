"""Batches: deterministic shuffling, masks for the last batch, reading ahead (``grain``), and
the whole split on the device.

Every batch is ``{'image': f32[N, H, W, C] (or raw u8), 'label': i32[N], 'mask': bool[N]}`` with a
fixed N, so a jitted step traces once: a final partial batch is either dropped (training) or
padded with ``mask=False`` rows (evaluation, so every example counts exactly once).

An in-memory :class:`~cnn_jax.data.Split` is gathered by index in background threads. A
:class:`~cnn_jax.data.stream.StreamedSplit` is decoded example by example (and augmented, when
training, with a generator seeded by (seed, step, row of the global batch)) in grain worker
processes, each preparing whole batches, with a bounded read-ahead; the batches are the same
whatever the number of workers or processes, and a run resumed at any step reads the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.data.sources import Split, standardize

# Batches each reading process prepares ahead: the read-ahead is bounded by workers * this.
PER_WORKER_BUFFER = 2

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
    split: Any,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool | None = None,
    normalize: bool = True,
    start: int = 0,
    rows: slice = slice(None),
    augment: bool | None = None,
) -> grain.MapDataset:
    """One epoch of ``split`` in batches, as a ``grain.MapDataset`` (random access; ``len`` is
    the number of batches): batch ``i`` is read when it is asked for. :func:`batches` iterates
    it with reading threads.

    Args:
      split: a :class:`~cnn_jax.data.Split` or :class:`~cnn_jax.data.stream.StreamedSplit`.
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
      augment: apply a streamed split's host augmentation (default: when shuffling, i.e.
        training); the example in row ``r`` of the epoch's batch ``i`` draws it from
        ``default_rng([seed, epoch * len + i, r])``.
    """
    drop = shuffle if drop_remainder is None else drop_remainder
    idx, mask = batch_indices(
        len(split), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, drop_remainder=drop
    )
    first_step = epoch * len(idx) + start
    idx, mask = idx[start:, rows], mask[start:, rows]
    if not split.in_memory:
        augment = (shuffle if augment is None else augment) and split.augment is not None
        row0 = rows.indices(batch_size)[0]
        read = _ReadExamples(split, idx, mask, seed, first_step, row0, augment)
        dataset = grain.MapDataset.range(idx.size).map(read).batch(idx.shape[1])
        return dataset.map(_Normalize(split)) if normalize else dataset

    def read(i: int) -> Batch:
        images = split.images[idx[i]]
        if normalize:
            images = split.normalize(images)
        return {"image": images, "label": split.labels[idx[i]], "mask": mask[i]}

    return grain.MapDataset.range(len(idx)).map(read)


class _ReadExamples:
    """Example ``j`` of the flattened (batches, rows) index array of a streamed split: decoded
    (and augmented) in whichever process reads it. A class, not a closure: it is pickled to the
    reading processes."""

    def __init__(self, split, idx, mask, seed, first_step, row0, augment):
        self.split, self.idx, self.mask = split, idx, mask
        self.seed, self.first_step, self.row0, self.augment = seed, first_step, row0, augment

    def __call__(self, j: int) -> Batch:
        b, r = divmod(int(j), self.idx.shape[1])
        rng = None
        if self.augment:
            rng = np.random.default_rng([self.seed, self.first_step + b, self.row0 + r])
        image, label = self.split.example(int(self.idx[b, r]), rng)
        return {"image": image, "label": np.int32(label), "mask": self.mask[b, r]}


class _Normalize:
    def __init__(self, split):
        self.split = split

    def __call__(self, batch: Batch) -> Batch:
        return {**batch, "image": self.split.normalize(batch["image"])}


def batches(
    split: Any,
    batch_size: int,
    *,
    threads: int = 2,
    workers: int | None = None,
    **options: Any,
) -> Iterator[Batch]:
    """Yields the batches of :func:`batch_dataset` ``(split, batch_size, **options)`` (NumPy, on
    the host). The order is a function of ``(seed, epoch)`` only.

    An in-memory split is read ahead by ``threads`` background threads (grain; 0: each batch is
    read when it is asked for). A streamed split is decoded in ``workers`` grain processes
    (default: the split's own ``workers``), each preparing whole batches and keeping at most
    :data:`PER_WORKER_BUFFER` ready, or with ``workers=0`` in ``threads`` threads of this
    process (Pillow decodes without holding the GIL).
    """
    dataset = batch_dataset(split, batch_size, **options)
    if not split.in_memory:
        workers = split.workers if workers is None else workers
        workers = min(workers, len(dataset))
        if workers:
            return _in_processes(dataset, workers)
    if not threads:
        return iter(dataset)
    read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
    return iter(dataset.to_iter_dataset(read_options))


def _own(leaf: Any) -> np.ndarray:
    """A plain copy of an array a worker sent in shared memory, whose block is unlinked now:
    grain would unlink it from a background thread when the array is collected, and blocks
    still pending at interpreter exit are reported as leaked."""
    copy = np.array(leaf)
    shm = getattr(leaf, "shm", None)
    if shm is not None:
        shm.unlink()  # the name goes now; the pages when grain closes its mapping
        leaf._unlink_on_del = False  # grain's SharedMemoryArray: do not unlink it again
    return copy


def _in_processes(dataset: grain.MapDataset, workers: int) -> Iterator[Batch]:
    """Iterates ``dataset`` prepared by ``workers`` processes (grain's ``mp_prefetch``: worker
    k prepares batches k, k + workers, ...; they come back in order), then stops them."""
    from absl import flags

    # grain 0.2.18 reads an absl flag in the workers that only an absl app has parsed
    # (google/grain#1355, fixed after that release): treat the defaults as parsed.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    # Inside each worker no threads and no read-ahead: the per-worker buffer bounds memory.
    inner = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    options = grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=PER_WORKER_BUFFER
    )
    iterator = iter(inner.mp_prefetch(options))
    try:
        for batch in iterator:
            yield {k: _own(v) for k, v in batch.items()}
    finally:
        iterator.close()


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
