"""Where a run's state and batches live: one :class:`Placement` per mode, the same pure steps.

* ``'none'`` (:class:`SingleDevice`): ``jax.jit`` on the default device.
* ``'pmap'`` (:class:`Pmapped`, ``jax.pmap``: maintained but superseded): the state is
  replicated per local device, each device gets ``global_batch / n`` examples, gradients and
  metrics are averaged with ``lax.pmean``/``psum`` over :data:`AXIS`, and BatchNorm normalises
  with the global batch's statistics (every BatchNorm2d gets the axis as its ``axis_name``:
  :func:`cnn_jax.nn.with_layer_settings`). One process only.
* ``'sharded'`` (:class:`Sharded`, ``jax.jit`` + ``NamedSharding``, the modern path): the state
  is replicated and the batch split along a ``('data',)`` mesh over **every global device**; the
  step is the single-device step and XLA inserts the collectives, so results equal one device's
  on the same global batch. With several processes (``jax.distributed.initialize``) each one
  feeds only its own rows of every global batch (:meth:`Placement.local_rows`), which
  ``jax.make_array_from_process_local_data`` assembles into one global array.

A placement answers everything a run needs to know about devices: how the state goes on them
(:meth:`Placement.replicated`, its convolution kernels in the step's layout on the CPU:
:mod:`cnn_jax.train.layout`) and comes back as one copy in torch's layout for a checkpoint
(:meth:`Placement.unreplicated`), which rows of a global batch this process loads, how a batch is
put on the devices, and how a result is read on the host; and, where a training split fits on the
devices, the train step that gathers its batches there (:meth:`Placement.gathering_step`). Code
that drives a placement asks it these questions and never branches on the mode.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnn_jax import runtime
from cnn_jax.errors import ConfigError
from cnn_jax.train import layout
from cnn_jax.train.step import eval_options, make_eval_step, make_train_step

AXIS = "batch"
"""The pmap axis name used for gradient / statistics averaging."""

MODES = ("none", "pmap", "sharded")


def pmap_steps(**step_options: Any) -> tuple[Callable, Callable]:
    """(train_step, eval_step) under ``jax.pmap`` over :data:`AXIS`; the train state is donated.
    ``step_options`` go to :func:`make_train_step` (and those it shares to the eval step)."""
    train_step = make_train_step(axis_name=AXIS, **step_options)
    eval_step = make_eval_step(axis_name=AXIS, **eval_options(step_options))
    return (
        jax.pmap(train_step, axis_name=AXIS, donate_argnums=0),
        jax.pmap(eval_step, axis_name=AXIS),
    )


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``('data',)`` over the first ``num_devices`` global devices (all of
    them by default; with several processes a mesh must span all of them)."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"asked for {n} devices, only {len(devices)} available")
    return Mesh(np.asarray(devices[:n]), ("data",))


def shard_batch(batch: Any, sharding: NamedSharding) -> Any:
    """A host batch -> global arrays split over the mesh. With several processes each one passes
    its local rows of the global batch (``jax.make_array_from_process_local_data``)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def sharded_steps(mesh: Mesh, **step_options: Any) -> tuple[Callable, Callable]:
    """(train_step, eval_step) jitted with the state replicated and the batch sharded over
    ``mesh``; the train state is donated."""
    placement = Sharded(step_options, mesh=mesh)
    return placement.train_step, placement.eval_step


def split_for_devices(batch: Any, num_devices: int) -> Any:
    """Reshapes each leaf (N, ...) -> (num_devices, N // num_devices, ...) for ``jax.pmap``."""

    def reshape(x):
        if x.shape[0] % num_devices:
            raise ValueError(
                f"global batch of {x.shape[0]} does not split over {num_devices} devices; use a "
                f"batch size divisible by {num_devices}"
            )
        return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])

    return jax.tree.map(reshape, batch)


def _gathering(train_step: Callable) -> Callable:
    """``train_step`` taking ``(state, device_data, rows)``: the batch is gathered from the
    device-resident split inside the compiled step (no per-step host-to-device image copy)."""

    def step(state, device_data, rows):
        batch = {k: jnp.take(device_data[k], rows, axis=0) for k in ("image", "label")}
        return train_step(state, batch)

    return step


class Placement(abc.ABC):
    """Devices of a run (see the module docstring).

    Attributes:
      name: the ``parallel`` mode.
      num_devices: the global devices a batch is split over.
      train_step: the compiled train step, ``(state, batch_to_devices(batch)) -> (state,
        metrics)``, on a :meth:`replicated` state (donated).
      eval_step: the compiled eval step, ``(state, batch_to_devices(batch)) -> metrics``.
      can_hold_data: whether a training split can live on the devices
        (:meth:`gathering_step`).
      step_layout: whether :meth:`replicated` stores the state's convolution kernels in the
        step's layout (:func:`cnn_jax.train.layout.to_step_layout`); by default on the CPU,
        where XLA's convolutions would otherwise transpose every kernel and weight gradient on
        every step.
    """

    name: ClassVar[str]
    num_devices: int
    train_step: Callable
    eval_step: Callable
    can_hold_data: ClassVar[bool] = True
    step_layout: bool = False

    def local_rows(self, global_batch_size: int) -> slice:
        """The rows of every global batch that this process loads (all of them with one
        process)."""
        return slice(0, global_batch_size)

    def replicated(self, state: Any) -> Any:
        """The state as the steps take it: its kernels in the step's layout where
        :attr:`step_layout`, a copy per device where the mode needs one."""
        return self._replicated(layout.to_step_layout(state) if self.step_layout else state)

    def unreplicated(self, state: Any) -> Any:
        """One copy of a :meth:`replicated` state in torch's layout: what is checkpointed and
        restored into."""
        return layout.to_torch_layout(self._unreplicated(state))

    @abc.abstractmethod
    def _replicated(self, state: Any) -> Any:
        """The state on the devices, a copy per device where the mode needs one."""

    @abc.abstractmethod
    def _unreplicated(self, state: Any) -> Any:
        """One copy of a :meth:`_replicated` state."""

    @abc.abstractmethod
    def batch_to_devices(self, batch: Any) -> Any:
        """This process's rows of a global batch, as the steps take them (asynchronous: the
        host may run ahead of the devices)."""

    @abc.abstractmethod
    def to_host(self, tree: Any) -> Any:
        """A step's output as NumPy on the host (one copy; waits for that step only)."""

    @abc.abstractmethod
    def gathering_step(self, split: Any) -> Callable:
        """Puts the whole training ``split`` on the devices and returns the compiled train step
        that gathers each batch there: ``(state, rows_to_devices(rows)) -> (state, metrics)``.

        Raises:
          ConfigError: the mode cannot hold a split on its devices (``can_hold_data``).
        """

    @abc.abstractmethod
    def rows_to_devices(self, rows: np.ndarray) -> Any:
        """This process's share of a global batch's index rows, for :meth:`gathering_step`."""


def _step_layout(chosen: bool | None) -> bool:
    """A placement's :attr:`Placement.step_layout`: ``chosen``, or (``None``)
    :func:`cnn_jax.train.layout.default_on`."""
    return layout.default_on() if chosen is None else bool(chosen)


def default_device() -> jax.Device:
    """The device uncommitted arrays go to: ``jax_default_device`` where set (a device or a
    platform name), else the first local device."""
    chosen = jax.config.jax_default_device
    if isinstance(chosen, str):
        return jax.local_devices(backend=chosen)[0]
    return chosen or jax.local_devices()[0]


class SingleDevice(Placement):
    """``parallel='none'``: one device, ``jax.jit``."""

    name = "none"
    num_devices = 1

    def __init__(self, step_options: dict, *, step_layout: bool | None = None):
        self.step_layout = _step_layout(step_layout)
        self._train_fn = make_train_step(**step_options)
        self.train_step = runtime.jit(self._train_fn, donate_argnums=0)
        self.eval_step = runtime.jit(make_eval_step(**eval_options(step_options)))

    def _replicated(self, state: Any) -> Any:
        # Every array committed to the one device. jit keys its cache on whether each argument
        # is committed: arrays restored or loaded from a file are, a fresh optimiser state is
        # not, and a step's outputs are as soon as one input is. A state mixing the two would
        # compile the step a second time after the first step (and the evaluation again on
        # the restored best checkpoint).
        return jax.device_put(state, default_device())

    def _unreplicated(self, state: Any) -> Any:
        return state

    def batch_to_devices(self, batch: Any) -> Any:
        return jax.device_put(batch)

    def to_host(self, tree: Any) -> Any:
        return jax.device_get(tree)

    def gathering_step(self, split: Any) -> Callable:
        data = {"image": jax.device_put(split.images), "label": jax.device_put(split.labels)}
        step = runtime.jit(_gathering(self._train_fn), donate_argnums=0)
        return lambda state, rows: step(state, data, rows)

    def rows_to_devices(self, rows: np.ndarray) -> Any:
        return jax.device_put(rows)


class Pmapped(Placement):
    """``parallel='pmap'``: the first ``n`` local devices of one process; the training split
    stays on the host."""

    name = "pmap"
    can_hold_data = False

    def __init__(self, step_options: dict, num_devices: int, *, step_layout: bool | None = None):
        self.step_layout = _step_layout(step_layout)
        self.num_devices = num_devices
        self.devices = jax.local_devices()[:num_devices]
        mesh = Mesh(np.asarray(self.devices), ("devices",))
        self._split = NamedSharding(mesh, PartitionSpec("devices"))  # one slice per device
        self.train_step, self.eval_step = pmap_steps(**step_options)

    def _replicated(self, state: Any) -> Any:
        return jax_utils.replicate(state, self.devices)

    def _unreplicated(self, state: Any) -> Any:
        return jax_utils.unreplicate(state)

    def batch_to_devices(self, batch: Any) -> Any:
        return jax.device_put(split_for_devices(batch, self.num_devices), self._split)

    def to_host(self, tree: Any) -> Any:
        return jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(tree))

    def gathering_step(self, split: Any) -> Callable:
        raise ConfigError(f"data_on_device is not available with parallel={self.name}")

    def rows_to_devices(self, rows: np.ndarray) -> Any:
        raise ConfigError(f"data_on_device is not available with parallel={self.name}")


class Sharded(Placement):
    """``parallel='sharded'``: ``jax.jit`` over a ``('data',)`` mesh of ``num_devices`` global
    devices (every device of every process when there are several processes), or over
    ``mesh``."""

    name = "sharded"

    def __init__(
        self,
        step_options: dict,
        num_devices: int = 0,
        *,
        mesh: Mesh | None = None,
        step_layout: bool | None = None,
    ):
        self.step_layout = _step_layout(step_layout)
        self.mesh = mesh if mesh is not None else data_mesh(num_devices)
        self.num_devices = self.mesh.size
        self._rep = NamedSharding(self.mesh, PartitionSpec())
        self._data = NamedSharding(self.mesh, PartitionSpec("data"))
        self._train_fn = make_train_step(**step_options)
        self.train_step = runtime.jit(
            self._train_fn,
            in_shardings=(self._rep, self._data),
            out_shardings=(self._rep, self._rep),
            donate_argnums=0,
        )
        self.eval_step = runtime.jit(
            make_eval_step(**eval_options(step_options)),
            in_shardings=(self._rep, self._data),
            out_shardings=self._rep,
        )

    def local_rows(self, global_batch_size: int) -> slice:
        index = self._data.addressable_devices_indices_map((global_batch_size,))
        starts = sorted(s[0].start or 0 for s in index.values())
        stops = sorted(s[0].stop or global_batch_size for s in index.values())
        rows = slice(starts[0], stops[-1])
        if stops[-1] - starts[0] != sum(b - a for a, b in zip(starts, stops, strict=True)):
            raise ConfigError(  # a process's devices must hold one block of the batch
                f"process {jax.process_index()}'s devices hold non-contiguous rows of the batch"
            )
        return rows

    def _replicated(self, state: Any) -> Any:
        return jax.device_put(state, self._rep)

    def _unreplicated(self, state: Any) -> Any:
        return state

    def batch_to_devices(self, batch: Any) -> Any:
        return shard_batch(batch, self._data)

    def to_host(self, tree: Any) -> Any:
        return jax.device_get(tree)

    def gathering_step(self, split: Any) -> Callable:
        data = {
            "image": jax.device_put(split.images, self._rep),
            "label": jax.device_put(split.labels, self._rep),
        }
        step = runtime.jit(
            _gathering(self._train_fn),
            in_shardings=(self._rep, self._rep, self._data),
            out_shardings=(self._rep, self._rep),
            donate_argnums=0,
        )
        return lambda state, rows: step(state, data, rows)

    def rows_to_devices(self, rows: np.ndarray) -> Any:
        return shard_batch(rows, self._data)


def placement(
    mode: str,
    step_options: dict,
    devices: int = 0,
    batch_sizes: dict[str, int] | None = None,
    *,
    step_layout: bool | None = None,
) -> Placement:
    """The :class:`Placement` for ``parallel=mode`` over ``devices`` devices (0: all local
    devices for pmap, all global devices for sharded); ``step_options`` go to
    :func:`make_train_step`. ``batch_sizes`` (name -> global size) must split evenly.
    ``step_layout``: :attr:`Placement.step_layout` (``None``: on the CPU).

    Raises:
      ConfigError: more devices than there are, a mode that cannot span several processes, or
        a batch size that does not divide over the devices.
    """
    if mode not in MODES:
        raise ConfigError(f"parallel must be one of {', '.join(MODES)}, got {mode!r}")
    processes = jax.process_count()
    if processes > 1 and mode != "sharded":
        raise ConfigError(
            f"{processes} processes (jax.distributed) need --parallel sharded, got {mode}"
        )
    if mode == "none":
        return SingleDevice(step_options, step_layout=step_layout)
    available = jax.device_count() if mode == "sharded" else jax.local_device_count()
    n = devices or available
    if n > available:
        raise ConfigError(
            f"--devices {n} but only {available} {'global' if mode == 'sharded' else 'local'} "
            "devices; on a CPU machine fake devices must be requested before JAX starts (the "
            "CLI does this)"
        )
    if processes > 1 and n != available:
        raise ConfigError(
            f"with {processes} processes the mesh spans all {available} devices; got --devices {n}"
        )
    for key, size in (batch_sizes or {}).items():
        if size % n:
            raise ConfigError(f"{key}={size} must be divisible by {n} devices")
    if mode == "pmap":
        return Pmapped(step_options, n, step_layout=step_layout)
    return Sharded(step_options, n, step_layout=step_layout)


__all__ = [
    "AXIS",
    "MODES",
    "Placement",
    "Pmapped",
    "Sharded",
    "SingleDevice",
    "data_mesh",
    "placement",
    "pmap_steps",
    "shard_batch",
    "sharded_steps",
    "split_for_devices",
]
