"""The training loop: data -> jitted (or pmapped / sharded) steps -> logging, evaluation, early
stopping and checkpoints in a work directory (:mod:`cnn_jax.train.workdir`).

A run either finishes with correct numbers or stops with one :mod:`cnn_jax.errors` exception:

* every setting is validated before any work (:func:`cnn_jax.train.config.validate`, then the
  model's input requirements and the ``freeze`` / ``lr_multipliers`` prefixes, checked on
  abstract shapes);
* each step reports on the device whether its loss and gradients were finite and how many labels
  were out of range; the loop reads these flags two steps behind the step it dispatches (which
  also bounds how far the host runs ahead, so a signal is handled within a step or two) and stops
  with :class:`~cnn_jax.errors.DivergenceError` / :class:`~cnn_jax.errors.InvalidLabelError`.
  Nothing non-finite is ever checkpointed, chosen as best or written as JSON;
* re-running in a work directory resumes the same run only (the data order is a function of
  (seed, epoch) and dropout keys of (seed, step), so a resumed run ends bit-identical to an
  uninterrupted one, even after ``kill -9`` at any moment), reports a finished one, and refuses
  other settings;
* SIGINT / SIGTERM save a checkpoint and raise :class:`TrainingInterrupted`; a second signal
  exits at once (finished checkpoints stay intact: orbax renames a checkpoint into place only
  when it is complete).

For fault tests, ``CNN_JAX_FAILPOINT=name:n[:action]`` kills the process with SIGKILL (or sends
it SIGINT / SIGTERM) the n-th time the loop reaches the named point (``step``: after a step is
dispatched; ``record``: after an epoch's record is written, before its checkpoint is saved;
``save``: right after an asynchronous save started; ``summary``: before the test evaluation); it
is read once per run and costs nothing when unset.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import data as data_lib
from cnn_jax import models
from cnn_jax.data.augment import Augment
from cnn_jax.errors import (
    CheckpointError,
    ConfigError,
    DivergenceError,
    InvalidLabelError,
    WorkdirError,
)
from cnn_jax.train import parallel
from cnn_jax.train.checkpoint import Checkpoints
from cnn_jax.train.config import (
    EARLY_STOPPING_METRICS,
    default_config,
    freeze_prefixes,
    init_exclude_prefixes,
    lr_multipliers,
    validate,
)
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.state import TrainState, create_train_state, variables_of
from cnn_jax.train.step import combine, eval_options, make_eval_step, make_train_step
from cnn_jax.train.workdir import RunDir

# Training splits up to this size live on the device (config.data_on_device).
ON_DEVICE_LIMIT_BYTES = 2 * 2**30
_FIXED_SIZE = {"lenet5": 32}
# Steps the host may dispatch ahead of the newest step whose flags it has read.
RUN_AHEAD = 2


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; ``signal`` names which."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal = signal_name


def _resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in default_config().items():
        if key not in config:  # a config saved before the key existed: its default applied
            config[key] = value
    validate(config)
    if not config.image_size:
        config.image_size = _FIXED_SIZE.get(config.model, 0)
    if not config.workdir:
        config.workdir = str(Path("runs") / f"{config.model}-{config.dataset}")
    return config


class _Failpoints:
    """``CNN_JAX_FAILPOINT=name:n[:action]``: the n-th time ``hit(name)`` runs, the process
    sends itself ``kill`` (SIGKILL, the default), ``int`` (SIGINT), ``int2`` (SIGINT twice: the
    forced exit) or ``term`` (SIGTERM). For fault tests; nothing happens when unset."""

    _ACTIONS: ClassVar[dict[str, tuple[signal.Signals, ...]]] = {
        "kill": (signal.SIGKILL,),
        "int": (signal.SIGINT,),
        "int2": (signal.SIGINT, signal.SIGINT),
        "term": (signal.SIGTERM,),
    }

    def __init__(self):
        spec = os.environ.get("CNN_JAX_FAILPOINT", "")
        name, _, rest = spec.partition(":")
        count, _, action = rest.partition(":")
        self.name, self.left = name, int(count or 1)
        self.signals = self._ACTIONS[action or "kill"]

    def hit(self, name: str) -> None:
        if name != self.name:
            return
        self.left -= 1
        if self.left == 0:
            sys.stdout.flush()
            for sig in self.signals:
                os.kill(os.getpid(), sig)


class _Stopper:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step. A second
    signal exits at once with ``os._exit`` when ``hard_exit`` (the command line), else raises
    KeyboardInterrupt."""

    def __init__(self, hard_exit: bool = False):
        self.requested: str | None = None
        self.hard_exit = hard_exit
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:  # a second signal: stop right away
            if self.hard_exit:
                print(
                    f"\n{name} again: exiting now; finished checkpoints are intact",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(128 + signum)
            raise KeyboardInterrupt
        self.requested = name
        print(
            f"\n{name}: saving a checkpoint, then stopping (again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Stopper]:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is signal.SIG_IGN:  # e.g. nohup, background jobs
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers, no graceful stop
            self._previous.clear()
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


class _Runner:
    """The placement strategy of a run: how state and batches go to devices, which steps."""

    def __init__(self, config, step_options, train_split: data_lib.Split | None = None):
        self.mode = config.parallel
        available = jax.local_device_count()
        self.n = config.devices or available
        if self.n > available:
            raise ConfigError(
                f"--devices {self.n} but only {available} local devices; on a CPU machine fake "
                "devices must be requested before JAX starts (the CLI does this)"
            )
        if self.mode == "none":
            self.n = 1
        for key in ("batch_size", "eval_batch_size"):
            if config[key] % self.n:
                raise ConfigError(f"{key}={config[key]} must be divisible by {self.n} devices")
        if self.mode == "pmap":
            self.train, self.eval = parallel.pmap_steps(**step_options)
        elif self.mode == "sharded":
            self.mesh = parallel.data_mesh(self.n)
            self.train, self.eval = parallel.sharded_steps(self.mesh, **step_options)
            self._batch_sharding = parallel.batch_sharding(self.mesh)
            self._rep = parallel.replicated(self.mesh)
        else:
            self.train = jax.jit(make_train_step(**step_options), donate_argnums=0)
            self.eval = jax.jit(make_eval_step(**eval_options(step_options)))
        self.on_device = bool(
            train_split is not None
            and config.data_on_device
            and self.mode != "pmap"
            and train_split.images.nbytes <= ON_DEVICE_LIMIT_BYTES
        )
        if self.on_device:
            self._use_device_data(train_split, step_options)

    def _use_device_data(self, split: data_lib.Split, step_options: dict) -> None:
        """The training split lives on the device(s); each step receives only index rows and
        gathers its batch inside the compiled step (no per-step host-to-device image copy)."""
        base = make_train_step(**step_options)

        def from_indices(state, device_data, rows):
            batch = {
                "image": jnp.take(device_data["images"], rows, axis=0),
                "label": jnp.take(device_data["labels"], rows, axis=0),
            }
            return base(state, batch)

        if self.mode == "sharded":
            device_data = data_lib.to_device(split, self._rep)
            step = jax.jit(
                from_indices,
                in_shardings=(self._rep, self._rep, self._batch_sharding),
                out_shardings=(self._rep, self._rep),
                donate_argnums=0,
            )
        else:
            device_data = data_lib.to_device(split)
            step = jax.jit(from_indices, donate_argnums=0)
        self.train = lambda state, rows: step(state, device_data, rows)

    def train_inputs(self, split: data_lib.Split, rows: np.ndarray) -> Iterator[Any]:
        """What each train step receives for the index rows of an epoch, prefetched."""
        if self.on_device:
            put = (
                (lambda r: parallel.shard_batch(r, self._batch_sharding))
                if (self.mode == "sharded")
                else jax.device_put
            )
            return data_lib.prefetch(iter(rows), size=2, put=put)
        host = ({"image": split.images[r], "label": split.labels[r]} for r in rows)  # uint8
        return data_lib.prefetch(host, size=2, put=self.put)

    def place_state(self, state: TrainState) -> TrainState:
        if self.mode == "pmap":
            return parallel.put_for_pmap(parallel.replicate(state, self.n), self.n)
        if self.mode == "sharded":
            return jax.device_put(state, self._rep)
        return state

    def host_state(self, state: TrainState) -> TrainState:
        return parallel.unreplicate(state) if self.mode == "pmap" else state

    def put(self, batch: dict) -> dict:
        if self.mode == "pmap":
            return parallel.put_for_pmap(data_lib.split_for_devices(batch, self.n), self.n)
        if self.mode == "sharded":
            return parallel.shard_batch(batch, self._batch_sharding)
        return jax.device_put(batch)

    def metrics(self, m: dict) -> dict:
        return parallel.unreplicate(m) if self.mode == "pmap" else m

    def host_metrics(self, m: dict) -> dict:
        """One step's metrics as NumPy values on the host (waits for that step only)."""
        m = jax.device_get(m)
        return jax.tree.map(lambda x: x[0], m) if self.mode == "pmap" else m


def evaluate(runner: _Runner, state: TrainState, split: data_lib.Split, batch_size: int) -> dict:
    """Loss / accuracy / top-5 over a whole split, every example counted once."""
    results = [
        runner.metrics(runner.eval(state, runner.put(batch)))
        for batch in data_lib.batches(split, batch_size, normalize=False, drop_remainder=False)
    ]
    return combine(jax.device_get(results))


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def _early_stopping_state(history: list[dict], es) -> tuple[float | None, int]:
    """(best value, epochs since it improved by more than min_delta) after ``history``."""
    best, since = None, 0
    for record in history:
        if _improved(record[es.metric], best, es.mode, es.min_delta):
            best, since = record[es.metric], 0
        else:
            since += 1
    return best, since


def _plot(history: list[dict], path: Path, best_epoch: int | None) -> None:
    from cnn_jax.inspect import plots

    plots.curves(history, best_epoch=best_epoch, path=path)


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm  # a terminal bar only (it is off when stderr is not a tty)

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        disable=not sys.stderr.isatty(),
    )


@dataclasses.dataclass
class _Built:
    splits: dict[str, data_lib.Split]
    model: Any
    schedule: Any
    optimizer: Any
    steps_per_epoch: int
    seed: int

    def initial_state(self) -> TrainState:
        h, w, c = self.splits["train"].image_shape
        return create_train_state(
            self.model, self.optimizer, jax.random.PRNGKey(self.seed), jnp.zeros((1, h, w, c))
        )


def _build(config: ml_collections.ConfigDict) -> _Built:
    """Data, model, schedule and optimizer of a run: shared by training and re-evaluation, so a
    checkpoint always restores into the same structure."""
    splits = data_lib.load(
        config.dataset, data_dir=config.data_dir or None, image_size=config.image_size or None
    )
    train_split = splits["train"]
    h, w, c = train_split.image_shape
    model_kwargs = {"num_classes": train_split.num_classes, "in_channels": c}
    if "input_size" in models.registry.parameters(config.model):  # a head sized by the input
        model_kwargs["input_size"] = (h, w)
    model = models.create(config.model, **model_kwargs)
    steps_per_epoch = data_lib.num_batches(len(train_split), config.batch_size, True)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size={config.batch_size} exceeds the {len(train_split)} training examples"
        )
    schedule = make_schedule(
        config.schedule,
        config.lr,
        config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
        step_size=config.step_size_epochs * steps_per_epoch,
        gamma=config.gamma,
    )
    optimizer = make_optimizer(
        config.optimizer,
        schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm or None,
        freeze=freeze_prefixes(config),
        lr_multipliers=lr_multipliers(config),
    )
    built = _Built(splits, model, schedule, optimizer, steps_per_epoch, config.seed)
    _check_fits(built, config)
    return built


def _check_fits(built: _Built, config: ml_collections.ConfigDict) -> None:
    """The model takes the data's images and the optimizer's prefixes name parameters: checked
    on abstract shapes (``jax.eval_shape``, nothing computed), so a mistake is one line before
    any compilation rather than an error deep inside a layer."""
    h, w, c = built.splits["train"].image_shape
    x = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
    try:
        variables = jax.eval_shape(
            lambda x: built.model.init(jax.random.PRNGKey(0), x, train=False), x
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"{config.model} cannot train on {config.dataset} images of {h}x{w}x{c}: "
            f"{str(err).splitlines()[0]}"
        ) from err
    try:
        jax.eval_shape(built.optimizer.init, variables["params"])
    except ValueError as err:
        raise ConfigError(f"freeze / lr_multipliers: {str(err).splitlines()[0]}") from err


def _initialise_from(state: TrainState, config, log) -> TrainState:
    """``state`` with the parameters and BatchNorm statistics of ``config.init_from``'s best
    checkpoint, except those under ``config.init_exclude`` (which keep their initialisation).

    Raises:
      ConfigError: an array whose shape differs between the two models and is not excluded, a
        parameter of this model the source lacks, or an exclude prefix that names nothing.
    """
    from flax import traverse_util

    source = load_run(config.init_from)
    exclude = init_exclude_prefixes(config)
    new = {"params": state.params, "batch_stats": state.batch_stats}
    old = {"params": source.state.params, "batch_stats": source.state.batch_stats}
    used = set()
    out = {}
    loaded = 0
    mismatched, missing = [], []
    for collection in ("params", "batch_stats"):
        flat_new = traverse_util.flatten_dict(new[collection], sep=".")
        flat_old = traverse_util.flatten_dict(old[collection], sep=".")
        merged = {}
        for name, value in flat_new.items():
            hit = next((p for p in exclude if name == p or name.startswith(p + ".")), None)
            if hit is not None:
                used.add(hit)
                merged[name] = value
                continue
            if name not in flat_old:
                missing.append((collection, name))
                continue
            if flat_old[name].shape != value.shape:
                mismatched.append(
                    f"{name} is {tuple(flat_old[name].shape)} there and {tuple(value.shape)} here"
                )
                continue
            merged[name] = jnp.asarray(flat_old[name], value.dtype)
            loaded += 1
        out[collection] = traverse_util.unflatten_dict(merged, sep=".") if merged else {}
    if missing:
        names = [repr(name) for _, name in sorted(missing)]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        collections = " / ".join(sorted({collection for collection, _ in missing}))
        raise ConfigError(
            f"init_from {config.init_from}: its model has no {collections} {shown}; add their "
            "prefixes to init_exclude to keep these arrays' fresh initialisation"
        )
    if mismatched:
        raise ConfigError(
            f"init_from {config.init_from}: {'; '.join(sorted(mismatched))} (e.g. another number "
            "of classes); add their prefixes to init_exclude to train them from scratch"
        )
    unused = [p for p in exclude if p not in used]
    if unused:
        raise ConfigError(f"init_exclude prefix(es) {unused} name no parameter of {config.model}")
    log(
        f"initialised {loaded} arrays from {config.init_from} (step {source.step}); fresh: "
        f"{', '.join(exclude) or 'none'}"
    )
    params = out["params"]
    return state.replace(
        params=params, batch_stats=out["batch_stats"], opt_state=state.tx.init(params)
    )


def _step_options(config: ml_collections.ConfigDict, train_split: data_lib.Split) -> dict:
    a = config.augment
    augment = Augment(
        crop_padding=a.crop_padding,
        translate=a.translate,
        flip=a.flip,
        brightness=a.brightness,
        contrast=(1 - a.contrast, 1 + a.contrast) if a.contrast else None,
        cutout=a.cutout,
    )
    return dict(
        augment=augment if augment.active else None,
        mean=train_split.mean,
        std=train_split.std,
        l1=config.l1,
        l2=config.l2,
        label_smoothing=config.label_smoothing,
        freeze=freeze_prefixes(config),
        frozen_batch_norm_trains=config.frozen_batch_norm_trains,
        compute_dtype=config.compute_dtype,
    )


def _resume_history(run: RunDir, restored_step: int, moved_aside: int) -> list[dict]:
    """The epoch records a resumed run keeps: those up to its checkpoint. The newest record may
    be ahead of every checkpoint (a kill between writing it and finishing its save: the loop
    finishes each save before writing the next record), and so may the records of checkpoints
    found corrupt; more records than that mean checkpoints were deleted: refuse rather than
    retrain over the history."""
    history = run.read_history()
    kept = [r for r in history if r["step"] <= restored_step]
    ahead = len(history) - len(kept)
    if ahead > 1 + moved_aside:
        where = f"step {restored_step}" if restored_step else "no checkpoint at all"
        raise WorkdirError(
            f"{run.metrics_path} records {len(history)} epochs (up to step "
            f"{history[-1]['step']}) but {run.checkpoints_path} leads back to {where}: "
            "checkpoints were deleted, and resuming would overwrite that history. Use "
            "another --workdir, or --restart to move this run aside and start over."
        )
    return kept


def _finished_summary(run: RunDir, config, log) -> dict | None:
    """The summary of a run that already ended (all epochs, or early stopping), else None."""
    summary = run.summary()
    if not summary or summary.get("status") not in ("finished", "stopped_early"):
        return None
    if summary["status"] == "finished" and summary["epochs"] < config.epochs:
        return None  # more epochs asked for (a length-free schedule): train on
    note = (
        " (stopped early)"
        if summary["status"] == "stopped_early"
        else f" ({summary['epochs']} epochs)"
    )
    log(
        f"{run.path} holds a finished run{note}: test accuracy "
        f"{summary['test_accuracy']:.4f} (best checkpoint, step {summary['best_step']}); "
        "nothing to do (--restart to train it again)"
    )
    return summary


def fit(
    config: ml_collections.ConfigDict,
    *,
    log=print,
    restart: bool = False,
    hard_exit: bool = False,
) -> dict[str, Any]:
    """Trains per ``config`` (see :func:`cnn_jax.train.config.default_config`) and returns the
    run summary (also written to ``<workdir>/summary.json``).

    Args:
      config: the run config; validated before anything else.
      log: where progress lines go.
      restart: move an existing run in the workdir aside (``<workdir>.old-<time>``) and start
        over instead of resuming it.
      hard_exit: a second SIGINT/SIGTERM calls ``os._exit`` (the command line's behaviour).

    Raises:
      TrainingInterrupted: on SIGINT/SIGTERM, after saving a checkpoint.
      ConfigError, WorkdirError, DatasetError: invalid settings or workdir; nothing was run.
      DivergenceError, InvalidLabelError, CheckpointError: the run failed (the newest checkpoint
        is the last good state).
    """
    config = _resolve(config)
    run = RunDir(config.workdir)
    run.open(restart=restart, log=log)
    run.check_same_run(config)
    done = _finished_summary(run, config, log)
    if done is not None:
        return done
    failpoints = _Failpoints()

    built = _build(config)
    splits, schedule = built.splits, built.schedule
    train_split, steps_per_epoch = splits["train"], built.steps_per_epoch
    h, w, c = train_split.image_shape
    es = config.early_stopping
    runner = _Runner(config, _step_options(config, train_split), train_split)

    state = built.initial_state()
    params_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    checkpoints = Checkpoints(
        run.checkpoints_path,
        keep=config.keep_checkpoints,
        best_metric=es.metric,
        best_mode=es.mode,
        metadata={"config": config.to_dict()},
    )
    before = set(checkpoints.steps())
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state = restored[1]
        log(f"resuming from step {restored[0]} ({run.checkpoints_path})")
    elif config.init_from:
        state = _initialise_from(state, config, log)
    start_step = int(state.step)
    history = _resume_history(run, start_step, len(before - set(checkpoints.steps())))
    run.write_history(history)
    run.write_config(config)
    best_value, since_best = _early_stopping_state(history, es)
    stopped_early = bool(es.patience and history and since_best >= es.patience)

    log(
        f"{config.model} on {config.dataset}: {len(train_split)} train / "
        f"{len(splits['validation'])} val / {len(splits['test'])} test images "
        f"{h}x{w}x{c}, {params_count:,} params, {steps_per_epoch} steps/epoch, "
        f"parallel={config.parallel} on {runner.n} {jax.devices()[0].platform} device(s), "
        f"data on {'device' if runner.on_device else 'host'}"
    )
    if splits["test"].source == "validation":
        log(
            "note: the dataset has no test split: testing on its validation split, validating "
            "on the last 10% of train"
        )

    def last_good() -> str:
        checkpoints.wait()
        steps = checkpoints.steps()
        return (
            f"the last good checkpoint is step {steps[0]} in {run.checkpoints_path}"
            if steps
            else "no checkpoint was saved"
        )

    def check(step_no: int, m: dict, epoch: int) -> None:
        """Reads one step's two flags (the step is done by now: this is also what bounds the
        host's run-ahead) and stops a run gone wrong. Loss and accuracy stay on the device
        until the end of the epoch."""
        flags = runner.host_metrics({"finite": m["finite"], "invalid": m["invalid_labels"]})
        finite, invalid = flags["finite"], flags["invalid"]
        if int(invalid):
            raise InvalidLabelError(
                f"step {step_no}: {int(invalid)} label(s) outside [0, "
                f"{train_split.num_classes}); {last_good()}"
            )
        if not bool(finite):
            m = runner.host_metrics(m)
            what = "loss" if not math.isfinite(float(m["loss"])) else "gradient norm"
            value = m["loss"] if what == "loss" else m["grad_norm"]
            raise DivergenceError(
                f"training diverged: the {what} became {float(value)} at step {step_no} (epoch "
                f"{epoch + 1}, lr {float(schedule(step_no - 1)):.3g}); {last_good()}. Lower "
                "the learning rate, or set clip_norm or a warmup."
            )

    state = runner.place_state(state)
    session_start = time.perf_counter()
    try:
        with _Stopper(hard_exit).installed() as stopper:
            epoch = start_step // steps_per_epoch
            while epoch < config.epochs and not stopped_early:
                step_no = int(runner.host_state(state).step)
                offset = step_no - epoch * steps_per_epoch
                idx, _ = data_lib.batch_indices(
                    len(train_split),
                    config.batch_size,
                    shuffle=True,
                    seed=config.seed,
                    epoch=epoch,
                    drop_remainder=True,
                )
                epoch_start = time.perf_counter()
                pending: collections.deque = collections.deque()
                step_metrics = []
                bar = _progress(steps_per_epoch, offset, f"epoch {epoch + 1}/{config.epochs}")
                for batch in runner.train_inputs(train_split, idx[offset:]):
                    state, metrics = runner.train(state, batch)
                    step_no += 1
                    pending.append((step_no, metrics))
                    step_metrics.append({"loss": metrics["loss"], "acc": metrics["accuracy"]})
                    failpoints.hit("step")
                    stop = stopper.requested  # read once per step
                    while len(pending) > RUN_AHEAD or (stop and pending):
                        check(*pending.popleft(), epoch)
                        bar.update(1)
                    if stop:
                        bar.close()
                        host = runner.host_state(state)
                        checkpoints.save(int(host.step), host)
                        checkpoints.close()
                        raise TrainingInterrupted(
                            f"stopped by {stop} at step {int(host.step)}; checkpoint saved in "
                            f"{checkpoints.directory}. Re-run the same command to resume.",
                            stop,
                        )
                while pending:
                    check(*pending.popleft(), epoch)
                    bar.update(1)
                step_metrics = [runner.host_metrics(m) for m in jax.device_get(step_metrics)]
                jax.block_until_ready(state)
                bar.close()
                epoch_train_time = time.perf_counter() - epoch_start
                images = len(step_metrics) * config.batch_size

                val = evaluate(runner, state, splits["validation"], config.eval_batch_size)
                host = runner.host_state(state)
                step = int(host.step)
                if not all(math.isfinite(val[k]) for k in ("loss", "accuracy")):
                    raise DivergenceError(
                        f"the validation loss became {val['loss']} after epoch {epoch + 1} "
                        f"(step {step}) although training was finite; {last_good()}"
                    )
                record = {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": float(np.mean([m["loss"] for m in step_metrics])),
                    "train_accuracy": float(np.mean([m["acc"] for m in step_metrics])),
                    "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"],
                    "lr": float(schedule(step - 1)),
                    "epoch_time_s": round(time.perf_counter() - epoch_start, 3),
                    # This session's share of the epoch (all of it unless resumed mid-epoch).
                    "train_time_s": round(epoch_train_time, 3),
                    "train_images": images,
                    "images_per_s": round(images / epoch_train_time, 1),
                }
                if "top5_accuracy" in val:
                    record["val_top5_accuracy"] = val["top5_accuracy"]
                is_best = _improved(record[es.metric], best_value, es.mode, 0.0)
                if _improved(record[es.metric], best_value, es.mode, es.min_delta):
                    since_best = 0
                else:
                    since_best += 1
                if is_best:
                    best_value = record[es.metric]
                checkpoints.wait()  # the previous save is complete before this record is
                run.append_record(record)
                history.append(record)
                failpoints.hit("record")
                checkpoints.save(
                    step,
                    host,
                    metrics={k: record[k] for k in EARLY_STOPPING_METRICS if k in record},
                )
                failpoints.hit("save")
                log(
                    f"epoch {epoch + 1:3d}/{config.epochs}  train loss {record['train_loss']:.4f} "
                    f"acc {record['train_accuracy']:.4f}  val loss {record['val_loss']:.4f} "
                    f"acc {record['val_accuracy']:.4f}  {record['images_per_s']:,.0f} img/s"
                    + ("  *" if is_best else "")
                )
                if es.patience and since_best >= es.patience:
                    log(f"early stopping: {es.metric} has not improved for {es.patience} epochs")
                    stopped_early = True
                epoch += 1
        checkpoints.wait()
        if history:
            best_epoch = next((r["epoch"] for r in history if r[es.metric] == best_value), None)
            _plot(history, run.curves_path, best_epoch)

        current = runner.host_state(state)
        best = checkpoints.restore_best(current)
        if best is None:
            log("warning: no best checkpoint is readable; testing the final state")
        best_step, best_state = best if best is not None else (int(current.step), current)
        failpoints.hit("summary")
        test = evaluate(
            runner, runner.place_state(best_state), splits["test"], config.eval_batch_size
        )
    finally:
        checkpoints.close()
    if not math.isfinite(test["loss"]):
        raise DivergenceError(
            f"the test loss of the best checkpoint (step {best_step}) is {test['loss']}"
        )
    train_s = sum(r.get("train_time_s", 0.0) for r in history)
    train_images = sum(r.get("train_images", 0) for r in history)
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "status": "stopped_early" if stopped_early else "finished",
        "params": params_count,
        "epochs": len(history),
        "steps": int(runner.host_state(state).step),
        "best_step": best_step,
        "best_metric": {es.metric: best_value},
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_examples": int(test["count"]),
        "splits": {name: split.source for name, split in splits.items()},
        "wall_s": round(time.perf_counter() - session_start, 2),
        "train_s": round(train_s, 2),
        "images_per_s": round(train_images / train_s, 1) if train_s else None,
        "stopped_early": stopped_early,
        "device": f"{runner.n}x {jax.devices()[0].device_kind}",
        "parallel": config.parallel,
    }
    if "top5_accuracy" in test:
        summary["test_top5_accuracy"] = test["top5_accuracy"]
    run.write_summary(summary)
    log(
        f"test accuracy {summary['test_accuracy']:.4f} (best checkpoint, step {best_step}); "
        f"{summary['wall_s']:.1f} s; outputs in {run.path}"
    )
    return summary


@dataclasses.dataclass
class Run:
    """A trained run loaded back from its work directory (:func:`load_run`).

    Attributes:
      config: the run's config (as stored in ``config.json``).
      model: the flax module, built as the run built it.
      state: the restored :class:`TrainState` (``variables`` for ``model.apply``).
      splits: the run's data, ``{'train', 'validation', 'test'}``.
      step: the step of the restored checkpoint.
      steps: the steps of every checkpoint kept in the run's directory.
    """

    config: ml_collections.ConfigDict
    model: Any
    state: TrainState
    splits: dict[str, data_lib.Split]
    step: int
    steps: list[int]
    _template: TrainState = dataclasses.field(repr=False)
    _checkpoints_path: Path = dataclasses.field(repr=False)

    @property
    def variables(self) -> dict[str, Any]:
        """``{'params', 'batch_stats'}`` for ``model.apply`` / ``to_torch`` / the inspectors."""
        return variables_of(self.state)

    @property
    def initial_variables(self) -> dict[str, Any]:
        """The variables the run started from: its fresh initialisation (from its seed, before
        any ``init_from``), for before/after comparisons."""
        return variables_of(self._template)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 images as the model saw them in training (the train split's mean/std)."""
        return self.splits["train"].normalize(images)

    def at(self, step: int) -> Run:
        """The same run restored at checkpoint ``step`` (one of :attr:`steps`)."""
        if step not in self.steps:
            raise CheckpointError(f"no checkpoint at step {step}; kept: {self.steps}")
        checkpoints = Checkpoints(self._checkpoints_path, async_save=False)
        try:
            state = checkpoints.restore(step, self._template)
        finally:
            checkpoints.close()
        return dataclasses.replace(self, state=state, step=step)

    def evaluate(
        self, split: data_lib.Split | str = "test", batch_size: int | None = None
    ) -> dict[str, float]:
        """Loss / accuracy (/ top-5) on a split of the run or any :class:`Split` of images the
        same shape (e.g. shifted test images), normalised with the run's train statistics."""
        if isinstance(split, str):
            if split not in self.splits:
                raise ConfigError(f"unknown split {split!r}; available: {', '.join(self.splits)}")
            split = self.splits[split]
        train = self.splits["train"]
        step = _eval_step_for(train.mean, train.std, self.config.compute_dtype)
        batch_size = batch_size or self.config.eval_batch_size
        results = [
            step(self.state, jax.device_put(batch))
            for batch in data_lib.batches(split, batch_size, normalize=False, drop_remainder=False)
        ]
        return combine(jax.device_get(results))


_EVAL_STEPS: dict[tuple, Any] = {}


def _eval_step_for(mean: np.ndarray, std: np.ndarray, compute_dtype: str):
    """One jitted eval step per (normalisation, compute dtype), shared by every Run."""
    key = (mean.tobytes(), std.tobytes(), compute_dtype)
    if key not in _EVAL_STEPS:
        _EVAL_STEPS[key] = jax.jit(make_eval_step(mean=mean, std=std, compute_dtype=compute_dtype))
    return _EVAL_STEPS[key]


def load_run(workdir: str | Path, step: int | None = None) -> Run:
    """Loads a run from its work directory: config, model, data and the best checkpoint's state
    (the newest readable one when none has metrics), or checkpoint ``step``.

    A corrupt best checkpoint is moved aside for the next best, as when a run resumes.

    Raises:
      WorkdirError: not a run directory; CheckpointError: nothing (or not ``step``) to restore.
    """
    run = RunDir(workdir)
    stored = run.stored_config()
    if stored is None:
        raise WorkdirError(f"{run.path} has no config.json: not a cnn-jax run directory")
    config = _resolve(ml_collections.ConfigDict(stored))
    built = _build(config)
    template = built.initial_state()
    es = config.early_stopping
    checkpoints = Checkpoints(
        run.checkpoints_path, best_metric=es.metric, best_mode=es.mode, async_save=False
    )
    try:
        if step is not None:
            if step not in checkpoints.steps():
                raise CheckpointError(
                    f"{run.checkpoints_path} has no checkpoint at step {step}; kept: "
                    f"{checkpoints.steps()}"
                )
            found = (step, checkpoints.restore(step, template))
        else:
            found = checkpoints.restore_best(template) or checkpoints.restore_latest(template)
        steps = checkpoints.steps()
    finally:
        checkpoints.close()
    if found is None:
        raise CheckpointError(f"{run.checkpoints_path} has no checkpoint to restore")
    return Run(
        config=config,
        model=built.model,
        state=found[1],
        splits=built.splits,
        step=found[0],
        steps=sorted(steps),
        _template=template,
        _checkpoints_path=run.checkpoints_path,
    )


def evaluate_workdir(workdir: str | Path, split: str = "test", *, log=print) -> dict[str, Any]:
    """Re-evaluates the best checkpoint of a finished (or interrupted) run on ``split``; a
    corrupt best checkpoint is moved aside for the next best, then the newest readable one.

    Raises:
      WorkdirError: not a run directory; CheckpointError: no checkpoint can be restored;
      ConfigError: an unknown split.
    """
    loaded = load_run(workdir)
    result = {"split": split, "step": loaded.step, **loaded.evaluate(split)}
    log(
        f"{split}: loss {result['loss']:.4f} accuracy {result['accuracy']:.4f} "
        f"({int(result['count'])} examples, checkpoint step {loaded.step})"
    )
    return result


__all__ = ["Run", "TrainingInterrupted", "evaluate", "evaluate_workdir", "fit", "load_run"]
