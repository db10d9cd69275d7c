"""Data parallelism, two ways, for the same pure steps.

* **pmap** (``jax.pmap``, maintained but superseded): the state is replicated per device, each
  device gets ``global_batch / n`` examples, gradients and metrics are averaged with
  ``lax.pmean``/``psum`` over :data:`AXIS`, and BatchNorm normalises with the global batch's
  statistics (synchronised through :func:`cnn_jax.nn.batch_norm_axis_name`).
* **sharded** (``jax.jit`` + ``NamedSharding``, the modern path): the state is replicated and the
  batch is split along a ``('data',)`` mesh axis; the step is the single-device step, and XLA
  inserts the collectives, so results equal one device's on the same global batch.

Multi-host (several processes, one per host): call ``jax.distributed.initialize()`` first (on
TPU pods and SLURM/Open MPI clusters it needs no arguments; otherwise pass
``coordinator_address``, ``num_processes`` and ``process_id``), build the mesh over all global
devices with :func:`data_mesh`, let each process load its own slice of every global batch, and
turn it into one global array with :func:`shard_batch`
(``jax.make_array_from_process_local_data``). Everything else is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnn_jax.train.step import eval_options, make_eval_step, make_train_step

AXIS = "batch"
"""The pmap axis name used for gradient / statistics averaging."""


def replicate(tree: Any, num_devices: int | None = None) -> Any:
    """Stacks ``num_devices`` copies of every leaf (leading axis) for ``jax.pmap``."""
    n = num_devices or jax.local_device_count()
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree)


def put_for_pmap(tree: Any, num_devices: int | None = None) -> Any:
    """Places a tree whose leaves have a leading device axis on the first ``num_devices`` local
    devices, one slice each — what pmap expects (``jax.device_put_replicated`` and
    ``device_put_sharded`` are gone from JAX: pmap now runs on jit + shard_map)."""
    devices = jax.local_devices()[: num_devices or jax.local_device_count()]
    sharding = NamedSharding(Mesh(np.asarray(devices), ("devices",)), PartitionSpec("devices"))
    return jax.device_put(tree, sharding)


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a replicated tree (all copies are equal after pmean)."""
    return jax.tree.map(lambda x: x[0], tree)


def pmap_steps(**step_options: Any) -> tuple[Callable, Callable]:
    """(train_step, eval_step) under ``jax.pmap`` over :data:`AXIS`; the train state is donated.
    ``step_options`` go to :func:`make_train_step` (and those it shares to the eval step)."""
    train = make_train_step(axis_name=AXIS, **step_options)
    evaluate = make_eval_step(axis_name=AXIS, **eval_options(step_options))
    return (
        jax.pmap(train, axis_name=AXIS, donate_argnums=0),
        jax.pmap(evaluate, axis_name=AXIS),
    )


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``('data',)`` over the first ``num_devices`` global devices."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"asked for {n} devices, only {len(devices)} available")
    return Mesh(np.asarray(devices[:n]), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches split along their first axis over the mesh's ``'data'`` axis."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (the train state)."""
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, sharding: NamedSharding) -> Any:
    """A host batch -> global arrays split over the mesh. With several processes each one passes
    its local slice of the global batch (``jax.make_array_from_process_local_data``)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def sharded_steps(mesh: Mesh, **step_options: Any) -> tuple[Callable, Callable]:
    """(train_step, eval_step) jitted with the state replicated and the batch sharded over
    ``mesh``; the train state is donated."""
    rep, data = replicated(mesh), batch_sharding(mesh)
    train = jax.jit(
        make_train_step(**step_options),
        in_shardings=(rep, data),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )
    evaluate = jax.jit(
        make_eval_step(**eval_options(step_options)),
        in_shardings=(rep, data),
        out_shardings=rep,
    )
    return train, evaluate
