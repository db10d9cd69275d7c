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
  when it is complete). With several processes a SIGTERM to any of them stops all of them after
  one agreed step (JAX's preemption service; see :class:`~cnn_jax.train.guards.Stopper`).

For fault tests, ``CNN_JAX_FAILPOINT=name:n[:action]`` kills the process with SIGKILL (or sends
it SIGINT / SIGTERM) the n-th time the loop reaches the named point (``step``: after a step is
dispatched; ``record``: after an epoch's record is written, before its checkpoint is saved;
``save``: right after an asynchronous save started; ``summary``: before the test evaluation); it
is read once per run and costs nothing when unset.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.training.early_stopping import EarlyStopping

from cnn_jax import data as data_lib
from cnn_jax import models, runtime
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
    default_config,
    freeze_prefixes,
    init_exclude_prefixes,
    lr_multipliers,
    validate,
)
from cnn_jax.train.guards import Failpoints, Stopper, TrainingInterrupted
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.parallel import Placement
from cnn_jax.train.state import TrainState, create_train_state
from cnn_jax.train.step import combine, make_eval_step
from cnn_jax.train.workdir import RunDir

# Training splits up to this size live on the device (config.data_on_device).
ON_DEVICE_LIMIT_BYTES = 2 * 2**30
# Steps the host may dispatch ahead of the newest step whose flags it has read.
RUN_AHEAD = 2


def _resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in default_config().items():
        if key not in config:  # a config saved before the key existed: its default applied
            config[key] = value
        elif isinstance(value, ml_collections.ConfigDict):  # and a nested key (augment.*)
            for sub, default in value.items():
                if sub not in config[key]:
                    config[key][sub] = default
    validate(config)
    if not config.image_size:
        config.image_size = models.registry.spec(config.model).input_size or 0
    if not config.workdir:
        config.workdir = str(Path("runs") / f"{config.model}-{data_lib.short_name(config.dataset)}")
    return config


def evaluate(placement: Placement, state: TrainState, split: data_lib.Split, batch_size: int):
    """Loss / accuracy / top-5 over a whole split, every example counted once (each process
    feeds its rows of every batch)."""
    batches = data_lib.batches(
        split,
        batch_size,
        normalize=False,
        drop_remainder=False,
        rows=placement.local_rows(batch_size),
    )
    results = [placement.evaluate(state, b) for b in map(placement.put, batches)]
    return combine(placement.read(results))


def _early_stopping(history: list[dict], es) -> EarlyStopping:
    """flax's tracker after ``history``. It stops once ``patience_count >= patience`` *before*
    counting the epoch, i.e. after patience + 1 epochs without improvement; Keras, the course
    and this config stop after ``patience`` of them, hence ``patience - 1``. Metrics are negated
    for ``mode='max'`` (flax minimises)."""
    tracker = EarlyStopping(min_delta=es.min_delta, patience=max(es.patience - 1, 0))
    for record in history:
        tracker = tracker.update(_signed(record[es.metric], es.mode))
    return tracker


def _signed(value: float, mode: str) -> float:
    return -value if mode == "max" else value


def _plot(history: list[dict], path: Path, best_epoch: int | None) -> None:
    from cnn_jax.inspect import plots

    plots.curves(history, best_epoch=best_epoch, path=path)


def _progress(total: int, initial: int, desc: str, show: bool = True):
    from tqdm import tqdm  # a terminal bar only (it is off when stderr is not a tty)

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        disable=not (show and sys.stderr.isatty()),
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


def _data_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``data.load`` options from the config: streaming, reading processes, host augmentation."""
    a = config.augment
    augment = None
    if a.resized_crop or a.color_jitter:
        augment = data_lib.HostAugment(
            scale=(a.resized_crop, 1.0) if a.resized_crop else None,
            flip=False,  # augment.flip flips on the device, as for every dataset
            color_jitter=a.color_jitter,
        )
    return {
        "stream": {"auto": None, "always": True, "never": False}[config.data_stream],
        "workers": None if config.data_workers < 0 else config.data_workers,
        "augment": augment,
    }


def _build(config: ml_collections.ConfigDict) -> _Built:
    """Data, model, schedule and optimizer of a run: shared by training and re-evaluation, so a
    checkpoint always restores into the same structure."""
    splits = data_lib.load(
        config.dataset,
        data_dir=config.data_dir or None,
        image_size=config.image_size or None,
        **_data_options(config),
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


def _placement(config: ml_collections.ConfigDict, train_split: data_lib.Split) -> Placement:
    """The run's :class:`~cnn_jax.train.parallel.Placement`, with the training split on the
    device(s) when it is small enough (``config.data_on_device``; not with pmap)."""
    placement = parallel.placement(
        config.parallel,
        _step_options(config, train_split),
        config.devices,
        {"batch_size": config.batch_size, "eval_batch_size": config.eval_batch_size},
    )
    if (
        config.data_on_device
        and placement.name != "pmap"
        and train_split.in_memory  # a streamed split is read on the host
        and train_split.nbytes <= ON_DEVICE_LIMIT_BYTES
    ):
        placement.data_on_device(train_split)
    return placement


def _quiet(*args, **kwargs) -> None:
    """The log of every process but the first."""


def fit(
    config: ml_collections.ConfigDict,
    *,
    log=print,
    restart: bool = False,
    hard_exit: bool = False,
) -> dict[str, Any]:
    """Trains per ``config`` (see :func:`cnn_jax.train.config.default_config`) and returns the
    run summary (also written to ``<workdir>/summary.json``).

    With several processes (``jax.distributed.initialize`` first, ``parallel='sharded'``) every
    process calls ``fit`` with the same config; each loads only its rows of every global batch,
    and only process 0 logs and writes files other than checkpoints.

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
    log = log if run.primary else _quiet
    run.open(restart=restart, log=log)
    run.check_same_run(config)
    done = run.finished(config, log)
    if done is not None:
        return done
    built = _build(config)
    placement = _placement(config, built.splits["train"])
    es, failpoints, session_start = config.early_stopping, Failpoints(), time.perf_counter()
    try:
        template = placement.host_state(placement.place_state(built.initial_state()))
        initialise = (lambda s: _initialise_from(s, config, log)) if config.init_from else None
        state, history = run.resume(config, template, initialise=initialise, log=log)
        state = placement.place_state(state)
        log(_headline(config, built, placement, state))
        tracker = _early_stopping(history, es)
        epoch = _host_step(placement, state) // built.steps_per_epoch
        with Stopper(hard_exit).installed() as stopper:
            while epoch < config.epochs and not (es.patience and tracker.should_stop):
                state, record = _train_epoch(
                    state, epoch, config, built, placement, run, stopper, failpoints
                )
                best = _best(history, es)
                value = _signed(record[es.metric], es.mode)
                is_best = best is None or value < _signed(best, es.mode)
                tracker = tracker.update(value)
                run.end_epoch(record, placement.host_state(state), hit=failpoints.hit)
                history.append(record)
                log(_epoch_line(record, config.epochs, is_best))
                if es.patience and tracker.should_stop:
                    log(f"early stopping: {es.metric} has not improved for {es.patience} epochs")
                epoch += 1
        summary = _test(state, config, built, placement, run, history, failpoints, log)
    finally:
        run.close()
    status = "stopped_early" if es.patience and tracker.should_stop else "finished"
    summary = {"model": config.model, "dataset": config.dataset, "status": status, **summary}
    summary["stopped_early"] = status == "stopped_early"
    summary["wall_s"] = round(time.perf_counter() - session_start, 2)
    run.write_summary(summary)
    log(
        f"test accuracy {summary['test_accuracy']:.4f} (best checkpoint, step "
        f"{summary['best_step']}); {summary['wall_s']:.1f} s; outputs in {run.path}"
    )
    return summary


def _host_step(placement: Placement, state: TrainState) -> int:
    return int(jax.device_get(placement.host_state(state).step))


def _param_count(params: Any) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _best(history: list[dict], es) -> float | None:
    """The best value of the early-stopping metric so far (any improvement counts: this picks
    the best checkpoint, while ``min_delta`` only decides when to stop)."""
    values = [r[es.metric] for r in history]
    return (max if es.mode == "max" else min)(values) if values else None


def _headline(config, built: _Built, placement: Placement, state: TrainState) -> str:
    splits = built.splits
    h, w, c = splits["train"].image_shape
    params = _param_count(state.params)
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    line = (
        f"{config.model} on {config.dataset}: {len(splits['train'])} train / "
        f"{len(splits['validation'])} val / {len(splits['test'])} test images "
        f"{h}x{w}x{c}, {params:,} params, {built.steps_per_epoch} steps/epoch, "
        f"parallel={config.parallel} on {placement.num_devices} {jax.devices()[0].platform} "
        f"device(s){processes}, data on {'device' if placement.on_device else 'host'}"
    )
    if splits["test"].source == "validation":
        line += (
            "\nnote: the dataset has no test split: testing on its validation split, "
            "validating on the last 10% of train"
        )
    return line


def _train_inputs(placement: Placement, split, config, epoch: int, offset: int):
    """What each train step of an epoch receives, from batch ``offset`` on: index rows when the
    split is on the device, else this process's rows of each batch read by background threads;
    the order is a function of (seed, epoch) only."""
    rows = placement.local_rows(config.batch_size)
    if placement.on_device:
        idx, _ = data_lib.batch_indices(
            len(split),
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            epoch=epoch,
            drop_remainder=True,
        )
        return map(placement.put_rows, idx[offset:, rows])
    batches = data_lib.batches(
        split,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        epoch=epoch,
        normalize=False,
        start=offset,
        rows=rows,
    )
    return map(placement.put, batches)


def _train_epoch(state, epoch, config, built, placement, run, stopper, failpoints):
    """Runs the rest of ``epoch`` and validates: ``(state, the epoch's record)``.

    Each step reports on the device whether its loss and gradients were finite and how many
    labels were out of range; these flags are read :data:`RUN_AHEAD` steps behind the step being
    dispatched (which also bounds how far the host runs ahead), so a run gone wrong stops within
    a step or two, and a stop signal saves a checkpoint."""
    split, steps_per_epoch = built.splits["train"], built.steps_per_epoch
    step_no = _host_step(placement, state)
    offset = step_no - epoch * steps_per_epoch
    epoch_start = time.perf_counter()
    pending, step_metrics = [], []
    bar = _progress(steps_per_epoch, offset, f"epoch {epoch + 1}/{config.epochs}", run.primary)

    def check(step_no: int, m: dict) -> None:
        flags = placement.read({"finite": m["finite"], "invalid": m["invalid_labels"]})
        if int(flags["invalid"]):
            raise InvalidLabelError(
                f"step {step_no}: {int(flags['invalid'])} label(s) outside [0, "
                f"{split.num_classes}); {run.last_good()}"
            )
        if not bool(flags["finite"]):
            m = placement.read(m)
            what = "loss" if not math.isfinite(float(m["loss"])) else "gradient norm"
            value = m["loss"] if what == "loss" else m["grad_norm"]
            raise DivergenceError(
                f"training diverged: the {what} became {float(value)} at step {step_no} (epoch "
                f"{epoch + 1}, lr {float(built.schedule(step_no - 1)):.3g}); "
                f"{run.last_good()}. Lower the learning rate, or set clip_norm or a warmup."
            )
        bar.update(1)

    for batch in _train_inputs(placement, split, config, epoch, offset):
        state, metrics = placement.train(state, batch)
        step_no += 1
        pending.append((step_no, metrics))
        step_metrics.append({k: metrics[k] for k in ("loss", "accuracy", "grad_norm")})
        failpoints.hit("step")
        stop = stopper.poll(step_no)  # read once per step
        while len(pending) > (0 if stop else RUN_AHEAD):
            check(*pending.pop(0))
        if stop:
            bar.close()
            host = placement.host_state(state)
            run.checkpoints.save(step_no, host)
            run.checkpoints.close()
            raise TrainingInterrupted(
                f"stopped by {stop} at step {step_no}; checkpoint saved in "
                f"{run.checkpoints_path}. Re-run the same command to resume.",
                stop,
            )
    while pending:
        check(*pending.pop(0))
    step_metrics = placement.read(step_metrics)
    jax.block_until_ready(state)
    bar.close()
    train_time = time.perf_counter() - epoch_start
    val = evaluate(placement, state, built.splits["validation"], config.eval_batch_size)
    if not all(math.isfinite(val[k]) for k in ("loss", "accuracy")):
        raise DivergenceError(
            f"the validation loss became {val['loss']} after epoch {epoch + 1} (step "
            f"{step_no}) although training was finite; {run.last_good()}"
        )
    images = len(step_metrics) * config.batch_size
    mean = {k: float(np.mean([m[k] for m in step_metrics])) for k in step_metrics[0]}
    record = {
        "epoch": epoch + 1,
        "step": step_no,
        "train_loss": mean["loss"],
        "train_accuracy": mean["accuracy"],
        "train_grad_norm": mean["grad_norm"],  # before clipping: the mean over the epoch
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "lr": float(built.schedule(step_no - 1)),
        "epoch_time_s": round(time.perf_counter() - epoch_start, 3),
        # This session's share of the epoch (all of it unless resumed mid-epoch).
        "train_time_s": round(train_time, 3),
        "train_images": images,
        "images_per_s": round(images / train_time, 1),
    }
    if "top5_accuracy" in val:
        record["val_top5_accuracy"] = val["top5_accuracy"]
    return state, record


def _epoch_line(record: dict, epochs: int, is_best: bool) -> str:
    return (
        f"epoch {record['epoch']:3d}/{epochs}  train loss {record['train_loss']:.4f} "
        f"acc {record['train_accuracy']:.4f} |g| {record['train_grad_norm']:.3g}  val loss "
        f"{record['val_loss']:.4f} acc {record['val_accuracy']:.4f}  "
        f"{record['images_per_s']:,.0f} img/s" + ("  *" if is_best else "")
    )


def _test(state, config, built, placement, run, history, failpoints, log) -> dict[str, Any]:
    """Plots the curves, then tests the best checkpoint: the summary (without its status and
    wall time, which :func:`fit` adds)."""
    es = config.early_stopping
    best_value = _best(history, es)
    run.checkpoints.wait()
    if history and run.primary:
        best_epoch = next((r["epoch"] for r in history if r[es.metric] == best_value), None)
        _plot(history, run.curves_path, best_epoch)
    current = placement.host_state(state)
    best = run.checkpoints.restore_best(current)
    if best is None:
        log("warning: no best checkpoint is readable; testing the final state")
    best_step, best_state = best if best is not None else (int(current.step), current)
    failpoints.hit("summary")
    test = evaluate(
        placement, placement.place_state(best_state), built.splits["test"], config.eval_batch_size
    )
    if not math.isfinite(test["loss"]):
        raise DivergenceError(
            f"the test loss of the best checkpoint (step {best_step}) is {test['loss']}"
        )
    train_s = sum(r.get("train_time_s", 0.0) for r in history)
    train_images = sum(r.get("train_images", 0) for r in history)
    summary = {
        "params": _param_count(current.params),
        "epochs": len(history),
        "steps": int(current.step),
        "best_step": best_step,
        "best_metric": {es.metric: best_value},
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_examples": int(test["count"]),
        "splits": {name: split.source for name, split in built.splits.items()},
        "class_names": list(built.splits["train"].class_names or []) or None,
        "train_s": round(train_s, 2),
        "images_per_s": round(train_images / train_s, 1) if train_s else None,
        "device": f"{placement.num_devices}x {jax.devices()[0].device_kind}",
        "processes": jax.process_count(),
        "parallel": config.parallel,
    }
    if "top5_accuracy" in test:
        summary["test_top5_accuracy"] = test["top5_accuracy"]
    details = {name: dict(split.details) for name, split in built.splits.items()}
    if any(details.values()):  # what the data was: files, their hash, skipped ones, sizing
        summary["data"] = details
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
        return _variables(self.state)

    @property
    def initial_variables(self) -> dict[str, Any]:
        """The variables the run started from: its fresh initialisation (from its seed, before
        any ``init_from``), for before/after comparisons."""
        return _variables(self._template)

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


def _variables(state: TrainState) -> dict[str, Any]:
    return {
        "params": state.params,
        **({"batch_stats": state.batch_stats} if state.batch_stats else {}),
    }


_EVAL_STEPS: dict[tuple, Any] = {}


def _eval_step_for(mean: np.ndarray, std: np.ndarray, compute_dtype: str):
    """One jitted eval step per (normalisation, compute dtype), shared by every Run."""
    key = (mean.tobytes(), std.tobytes(), compute_dtype)
    if key not in _EVAL_STEPS:
        _EVAL_STEPS[key] = runtime.jit(
            make_eval_step(mean=mean, std=std, compute_dtype=compute_dtype)
        )
    return _EVAL_STEPS[key]


def load_run(workdir: str | Path, step: int | None = None, *, data_dir: str | None = None) -> Run:
    """Loads a run from its work directory: config, model, data and the best checkpoint's state
    (the newest readable one when none has metrics), or checkpoint ``step``. ``data_dir``
    replaces the run's tfds data directory (the data moved; it changes no result).

    A corrupt best checkpoint is moved aside for the next best, as when a run resumes.

    Raises:
      WorkdirError: not a run directory; CheckpointError: nothing (or not ``step``) to restore;
      DatasetError: the run's data cannot be loaded here (a dataset registered in Python must
      be registered again in the process that loads the run).
    """
    run = RunDir(workdir)
    stored = run.stored_config()
    if stored is None:
        raise WorkdirError(f"{run.path} has no config.json: not a cnn-jax run directory")
    config = _resolve(ml_collections.ConfigDict(stored))
    if data_dir is not None:
        config.data_dir = data_dir
    try:
        built = _build(config)
    except data_lib.UnknownDatasetError as err:
        raise data_lib.UnknownDatasetError(
            f"{err} If {run.path} trained on a dataset registered in Python "
            "(cnn_jax.data.register), it exists only in a process that registers it: there, "
            f"register it again and call cnn_jax.train.load_run({str(run.path)!r}).evaluate()"
        ) from err
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


def evaluate_workdir(
    workdir: str | Path, split: str = "test", *, data_dir: str | None = None, log=print
) -> dict[str, Any]:
    """Re-evaluates the best checkpoint of a finished (or interrupted) run on ``split``; a
    corrupt best checkpoint is moved aside for the next best, then the newest readable one.
    ``data_dir``: as :func:`load_run`'s.

    Raises:
      WorkdirError: not a run directory; CheckpointError: no checkpoint can be restored;
      ConfigError: an unknown split; DatasetError: the run's data cannot be loaded here.
    """
    loaded = load_run(workdir, data_dir=data_dir)
    result = {"split": split, "step": loaded.step, **loaded.evaluate(split)}
    log(
        f"{split}: loss {result['loss']:.4f} accuracy {result['accuracy']:.4f} "
        f"({int(result['count'])} examples, checkpoint step {loaded.step})"
    )
    return result


__all__ = ["Run", "TrainingInterrupted", "evaluate", "evaluate_workdir", "fit", "load_run"]
