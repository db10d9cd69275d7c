"""The training engine, in two layers:

* the step maths and its distribution: :mod:`~cnn_jax.train.state` (the train-state pytree),
  :mod:`~cnn_jax.train.step` (pure train and eval steps), :mod:`~cnn_jax.train.optim` (optax
  recipes), :mod:`~cnn_jax.train.parallel` (one placement per parallel mode),
  :mod:`~cnn_jax.train.layout` (kernels in the step's layout between steps, torch's outside);
* the run machinery on top of them, :mod:`cnn_jax.train.run`: config, the loop (``fit``), work
  directory, checkpoints, signals, loading a finished run.

>>> from cnn_jax import train as T
"""

from cnn_jax.errors import (
    CheckpointError,
    ConfigError,
    DivergenceError,
    InvalidLabelError,
    WorkdirError,
)
from cnn_jax.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    decay_mask,
    l1_penalty,
    l2_penalty,
    make_optimizer,
    make_schedule,
)
from cnn_jax.train.parallel import (
    Placement,
    data_mesh,
    placement,
    pmap_steps,
    shard_batch,
    sharded_steps,
    split_for_devices,
)
from cnn_jax.train.run.checkpoint import Checkpoints
from cnn_jax.train.run.config import default_config, load_config_file, override, validate
from cnn_jax.train.run.loop import TrainingInterrupted, fit
from cnn_jax.train.run.results import Run, evaluate_workdir, export_workdir, load_run
from cnn_jax.train.run.workdir import RunDir, write_json_atomic
from cnn_jax.train.state import TrainState, create_train_state
from cnn_jax.train.step import combine, eval_step, make_eval_step, make_train_step, train_step

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "CheckpointError",
    "Checkpoints",
    "ConfigError",
    "DivergenceError",
    "InvalidLabelError",
    "Placement",
    "Run",
    "RunDir",
    "TrainState",
    "TrainingInterrupted",
    "WorkdirError",
    "combine",
    "create_train_state",
    "data_mesh",
    "decay_mask",
    "default_config",
    "eval_step",
    "evaluate_workdir",
    "export_workdir",
    "fit",
    "l1_penalty",
    "l2_penalty",
    "load_config_file",
    "load_run",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "override",
    "placement",
    "pmap_steps",
    "shard_batch",
    "sharded_steps",
    "split_for_devices",
    "train_step",
    "validate",
    "write_json_atomic",
]
