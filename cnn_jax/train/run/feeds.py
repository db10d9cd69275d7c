"""What the steps receive: the two feeds of training, and the pass of evaluation.

* :class:`HostFeed`: this process's rows of each batch, read on the host by background threads
  (grain) and put on the devices; the step is the placement's ``train_step``.
* :class:`DeviceFeed`: the whole training split lives on the devices; each step receives index
  rows and gathers its batch inside the compiled step (no image copy per step).

Both draw the same batches: the order is a function of (seed, epoch) only, and an epoch can start
at any batch (a resumed run), so the two train exactly alike (``tests/test_train.py``).
:func:`evaluate_split` is the one evaluation of a split, in training (validation, test) and on a
loaded run alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from cnn_jax import data as data_lib
from cnn_jax.train.parallel import Placement
from cnn_jax.train.step import combine

# Training splits up to this size live on the device (config.data_on_device).
ON_DEVICE_LIMIT_BYTES = 2 * 2**30


class HostFeed:
    """Batches read on the host, put on the devices one step at a time."""

    where = "host"

    def __init__(self, placement: Placement, split: data_lib.Split, batch_size: int, seed: int):
        self._placement, self._split = placement, split
        self._batch_size, self._seed = batch_size, seed
        self.step: Callable = placement.train_step

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The placed inputs of ``epoch``'s steps from batch ``start`` on."""
        batches = data_lib.batches(
            self._split,
            self._batch_size,
            shuffle=True,
            seed=self._seed,
            epoch=epoch,
            normalize=False,
            start=start,
            rows=self._placement.local_rows(self._batch_size),
        )
        return map(self._placement.batch_to_devices, batches)


class DeviceFeed:
    """The training split on the devices; each step gathers its batch from it by index."""

    where = "device"

    def __init__(self, placement: Placement, split: data_lib.Split, batch_size: int, seed: int):
        self._placement, self._size = placement, len(split)
        self._batch_size, self._seed = batch_size, seed
        self.step: Callable = placement.gathering_step(split)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The placed index rows of ``epoch``'s steps from batch ``start`` on."""
        rows, _ = data_lib.batch_indices(
            self._size,
            self._batch_size,
            shuffle=True,
            seed=self._seed,
            epoch=epoch,
            drop_remainder=True,
        )
        local = self._placement.local_rows(self._batch_size)
        return map(self._placement.rows_to_devices, rows[start:, local])


def train_feed(
    placement: Placement,
    split: data_lib.Split,
    batch_size: int,
    seed: int,
    *,
    on_device: bool = True,
) -> HostFeed | DeviceFeed:
    """The :class:`DeviceFeed` when ``on_device`` is asked, the placement can hold data and the
    split's images fit in :data:`ON_DEVICE_LIMIT_BYTES`; else the :class:`HostFeed`."""
    fits = split.images.nbytes <= ON_DEVICE_LIMIT_BYTES
    kind = DeviceFeed if on_device and placement.can_hold_data and fits else HostFeed
    return kind(placement, split, batch_size, seed)


def evaluate_split(
    placement: Placement, state: Any, split: data_lib.Split, batch_size: int
) -> dict[str, float]:
    """Loss / accuracy (/ top-5) and count over a whole split, every example counted once
    (the last batch padded and masked; each process feeds its rows of every batch), on a
    :meth:`~cnn_jax.train.parallel.Placement.replicated` state."""
    batches = data_lib.batches(
        split,
        batch_size,
        normalize=False,
        drop_remainder=False,
        rows=placement.local_rows(batch_size),
    )
    results = [placement.eval_step(state, placement.batch_to_devices(b)) for b in batches]
    return combine(placement.to_host(results))


__all__ = ["ON_DEVICE_LIMIT_BYTES", "DeviceFeed", "HostFeed", "evaluate_split", "train_feed"]
