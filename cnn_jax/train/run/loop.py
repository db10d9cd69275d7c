"""The training loop: data -> jitted (or pmapped / sharded) steps -> logging, evaluation, early
stopping and checkpoints in a work directory (:mod:`cnn_jax.train.run.workdir`).

A run either finishes with correct numbers or stops with one :mod:`cnn_jax.errors` exception:

* every setting is validated before any work (:func:`cnn_jax.train.run.config.validate`, then the
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
  one agreed step (JAX's preemption service; see :class:`~cnn_jax.train.run.guards.Stopper`).

For fault tests, ``CNN_JAX_FAILPOINT=name:n[:action]`` kills the process with SIGKILL (or sends
it SIGINT / SIGTERM) the n-th time the loop reaches the named point (``step``: after a step is
dispatched; ``record``: after an epoch's record is written, before its checkpoint is saved;
``save``: right after an asynchronous save started; ``summary``: before the test evaluation); it
is read once per run and costs nothing when unset.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax.training.early_stopping import EarlyStopping

from cnn_jax import runtime
from cnn_jax.errors import DivergenceError, InvalidLabelError
from cnn_jax.train.parallel import Placement
from cnn_jax.train.run.config import resolve
from cnn_jax.train.run.feeds import DeviceFeed, HostFeed, evaluate_split
from cnn_jax.train.run.guards import Failpoints, LossWatch, Stopper, TrainingInterrupted
from cnn_jax.train.run.progress import Progress
from cnn_jax.train.run.results import initialised_from, read_init_from
from cnn_jax.train.run.setup import Setup, build
from cnn_jax.train.run.workdir import RunDir
from cnn_jax.train.state import TrainState

# Steps the host may dispatch ahead of the newest step whose flags it has read.
RUN_AHEAD = 2


def fit(
    config: ml_collections.ConfigDict,
    *,
    log=print,
    restart: bool = False,
    hard_exit: bool = False,
) -> dict[str, Any]:
    """Trains per ``config`` (see :func:`cnn_jax.train.run.config.default_config`) and returns the
    run summary (also written to ``<workdir>/summary.json``). Applies cnn_jax's process-wide
    settings first (:func:`cnn_jax.runtime.apply`).

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
    runtime.apply()
    config = resolve(config)
    run = RunDir(config.workdir)
    progress = Progress(log, shown=run.primary)
    try:  # the workdir is locked from here on (one live run per directory)
        done = run.start(config, restart=restart, log=progress.log)
        if done is not None:
            return done
        setup = build(config)
        source = None
        if config.init_from and not run.has_progress():  # refused before anything compiles
            source = read_init_from(config, setup.initial_state(abstract=True))
        placement = setup.placement()
        training = Training(setup, placement, setup.feed(placement), run, progress, Failpoints())
        try:
            initialise = None
            if config.init_from:  # transfer learning: another run's parameters
                initialise = functools.partial(
                    initialised_from, config=config, log=progress.log, source=source
                )
            state, history = training.resume(initialise)
            with Stopper(hard_exit).installed() as stopper:
                state, patience = training.epochs(state, history, stopper)
            summary = training.test(state, history, patience)
        finally:
            run.close()
        run.write_summary(summary)
        progress.finished(summary, run.path)
        return summary
    finally:
        run.release()  # a directory refused before anything was written is removed


class Patience:
    """The early-stopping metric over a run's epochs: its best value so far (any improvement
    counts: it picks the best checkpoint) and whether to stop (``min_delta`` decides that).

    flax's tracker stops once ``patience_count >= patience`` *before* counting the epoch, i.e.
    after patience + 1 epochs without improvement; Keras, the course and this config stop after
    ``patience`` of them, hence ``patience - 1``. Values are negated for ``mode='max'`` (flax
    minimises).
    """

    def __init__(self, early_stopping: ml_collections.ConfigDict, history: list[dict]):
        self.metric, self.mode = early_stopping.metric, early_stopping.mode
        self.patience = early_stopping.patience
        self.best: float | None = None
        self._tracker = EarlyStopping(
            min_delta=early_stopping.min_delta, patience=max(self.patience - 1, 0)
        )
        for record in history:
            self.update(record)

    def _signed(self, value: float) -> float:
        return -value if self.mode == "max" else value

    def update(self, record: dict) -> bool:
        """Counts an epoch's record; whether it is the best so far."""
        value = self._signed(record[self.metric])
        is_best = self.best is None or value < self._signed(self.best)
        if is_best:
            self.best = record[self.metric]
        self._tracker = self._tracker.update(value)
        return is_best

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and bool(self._tracker.should_stop)


class _RunAhead:
    """The steps dispatched but not yet checked. Each step reports on the device whether its
    loss and gradients were finite and how many labels were out of range; the host reads these
    flags :data:`RUN_AHEAD` steps behind the step it dispatches, which also bounds how far it
    runs ahead, so a run gone wrong stops within a step or two."""

    def __init__(self, check: Callable[[int, dict], None]):
        self._check = check
        self._pending: collections.deque = collections.deque()

    def append(self, step_no: int, metrics: dict) -> None:
        self._pending.append((step_no, metrics))

    def drain(self, keep: int = 0) -> None:
        """Checks the oldest steps until ``keep`` are left unchecked."""
        while len(self._pending) > keep:
            self._check(*self._pending.popleft())


@dataclasses.dataclass
class Training:
    """One run's training: the pieces :func:`fit` builds, driven epoch by epoch."""

    setup: Setup
    placement: Placement
    feed: HostFeed | DeviceFeed
    run: RunDir
    progress: Progress
    failpoints: Failpoints
    started: float = dataclasses.field(default_factory=time.perf_counter)
    watch: LossWatch | None = None  # set by :meth:`epochs`

    def resume(self, initialise: Callable[[TrainState], TrainState] | None):
        """``(state, history)``: the newest checkpoint's (or a fresh or ``initialise``d state
        and no history), placed on the devices; logs the headline."""
        fresh = self.placement.unreplicated(self.placement.replicated(self.setup.initial_state()))
        config = self.setup.config
        log = self.progress.log
        state, history = self.run.resume(config, fresh, initialise=initialise, log=log)
        state = self.placement.replicated(state)
        self.progress.headline(
            self.setup,
            self.placement.num_devices,
            self.feed.where,
            self.placement.unreplicated(state),
        )
        return state, history

    def epochs(self, state: TrainState, history: list[dict], stopper: Stopper):
        """Trains until ``config.epochs`` or early stopping: ``(state, patience)``; appends each
        epoch's record to ``history`` after its checkpoint was started."""
        config = self.setup.config
        patience = Patience(config.early_stopping, history)
        self.watch = LossWatch(self.setup.splits["train"].num_classes, history)
        epoch = self._host_step(state) // self.setup.steps_per_epoch
        while epoch < config.epochs and not patience.should_stop:
            state, record = self.epoch(state, epoch, stopper)
            is_best = patience.update(record)
            self.run.end_epoch(record, self.placement.unreplicated(state), hit=self.failpoints.hit)
            history.append(record)
            self.progress.epoch(record, config.epochs, is_best)
            if patience.should_stop:
                self.progress.early_stop(patience.metric, patience.patience)
            epoch += 1
        return state, patience

    def epoch(self, state: TrainState, epoch: int, stopper: Stopper):
        """Runs the rest of ``epoch`` and validates: ``(state, the epoch's record)``. A stop
        signal saves a checkpoint and raises :class:`TrainingInterrupted`."""
        steps_per_epoch = self.setup.steps_per_epoch
        step_no = self._host_step(state)
        start = step_no - epoch * steps_per_epoch
        started = time.perf_counter()
        config = self.setup.config
        bar = self.progress.bar(
            steps_per_epoch,
            start,
            f"epoch {epoch + 1}/{config.epochs}",
            every_s=config.progress_every_s,
            batch_size=config.batch_size,
            run_steps_left=config.epochs * steps_per_epoch - step_no,
        )
        window = _RunAhead(lambda n, m: (self._check(n, m, epoch), bar.update(1, self._loss(m))))
        step_metrics = []
        for inputs in self.feed.epoch(epoch, start):
            state, metrics = self.feed.step(state, inputs)
            step_no += 1
            window.append(step_no, metrics)
            step_metrics.append({k: metrics[k] for k in ("loss", "accuracy", "grad_norm")})
            self.failpoints.hit("step")
            signal = stopper.poll(step_no)  # read once per step
            window.drain(keep=0 if signal else RUN_AHEAD)
            if signal:
                bar.close()
                self._stop(state, step_no, signal)
        window.drain()
        step_metrics = self.placement.to_host(step_metrics)
        jax.block_until_ready(state)
        bar.close()
        return state, self._record(state, epoch, step_no, step_metrics, started)

    def _check(self, step_no: int, metrics: dict, epoch: int) -> None:
        """Raises when step ``step_no``'s flags say it went wrong."""
        flags = self.placement.to_host(
            {"finite": metrics["finite"], "invalid": metrics["invalid_labels"]}
        )
        if int(flags["invalid"]):
            raise InvalidLabelError(
                f"step {step_no}: {int(flags['invalid'])} label(s) outside [0, "
                f"{self.setup.splits['train'].num_classes}); {self.run.last_good()}"
            )
        if not bool(flags["finite"]):
            m = self.placement.to_host(metrics)
            what = "loss" if not math.isfinite(float(m["loss"])) else "gradient norm"
            value = m["loss"] if what == "loss" else m["grad_norm"]
            raise DivergenceError(
                f"training diverged: the {what} became {float(value)} at step {step_no} (epoch "
                f"{epoch + 1}, lr {float(self.setup.schedule(step_no - 1)):.3g}); "
                f"{self.run.last_good()}. Lower the learning rate, or set clip_norm or a warmup."
            )

    def _loss(self, metrics: dict) -> Callable[[], float]:
        """A step's loss, read from the device only when called (a progress line is due)."""
        return lambda: float(self.placement.to_host(metrics["loss"]))

    def _stop(self, state: TrainState, step_no: int, signal: str) -> None:
        self.run.save_and_close(step_no, self.placement.unreplicated(state))
        raise TrainingInterrupted(
            f"stopped by {signal} at step {step_no}; checkpoint saved in "
            f"{self.run.checkpoints_path}. Re-run the same command to resume.",
            signal,
        )

    def _record(self, state, epoch: int, step_no: int, step_metrics: list, started: float):
        """Validates after an epoch: the epoch's record."""
        train_time = time.perf_counter() - started
        config = self.setup.config
        val = evaluate_split(
            self.placement, state, self.setup.splits["validation"], config.eval_batch_size
        )
        if not all(math.isfinite(val[k]) for k in ("loss", "accuracy")):
            raise DivergenceError(
                f"the validation loss became {val['loss']} after epoch {epoch + 1} (step "
                f"{step_no}) although training was finite; {self.run.last_good()}"
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
            "lr": float(self.setup.schedule(step_no - 1)),
            "epoch_time_s": round(time.perf_counter() - started, 3),
            # This session's share of the epoch (all of it unless resumed mid-epoch).
            "train_time_s": round(train_time, 3),
            "train_images": images,
            "images_per_s": round(images / train_time, 1),
        }
        if "top5_accuracy" in val:
            record["val_top5_accuracy"] = val["top5_accuracy"]
        losses = [float(m["loss"]) for m in step_metrics]
        warning = self.watch.check(losses, step_no - len(losses) + 1, epoch + 1)
        if epoch == 0:  # what a resumed run's watch compares with
            record["first_loss"] = self.watch.first
        if warning:
            record["warning"] = warning
            self.progress.log(f"warning: {warning}")
        return record

    def test(self, state: TrainState, history: list[dict], patience: Patience) -> dict:
        """Plots the curves, then tests the best checkpoint: the run's summary."""
        best_epoch = next(
            (r["epoch"] for r in history if r[patience.metric] == patience.best), None
        )
        current = self.placement.unreplicated(state)
        best = self.run.best_checkpoint(current)
        self.run.write_curves(history, best_epoch)
        if best is None:
            self.progress.log("warning: no best checkpoint is readable; testing the final state")
        best_step, best_state = best if best is not None else (int(current.step), current)
        self.failpoints.hit("summary")
        config = self.setup.config
        test = evaluate_split(
            self.placement,
            self.placement.replicated(best_state),
            self.setup.splits["test"],
            config.eval_batch_size,
        )
        if not math.isfinite(test["loss"]):
            raise DivergenceError(
                f"the test loss of the best checkpoint (step {best_step}) is {test['loss']}"
            )
        return _summary(self, history, patience, current, best_step, test)

    def _host_step(self, state: TrainState) -> int:
        # The step counter alone: unreplicated() would also move every kernel back to torch's
        # layout only for this integer.
        return int(self.placement.to_host(state.step))


def _summary(training: Training, history, patience, current, best_step, test) -> dict:
    """The run's summary (``summary.json``) once its best checkpoint was tested."""
    config, placement = training.setup.config, training.placement
    train_s = sum(r.get("train_time_s", 0.0) for r in history)
    train_images = sum(r.get("train_images", 0) for r in history)
    status = "stopped_early" if patience.should_stop else "finished"
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "status": status,
        "params": optax.tree.size(current.params),
        "epochs": len(history),
        "steps": int(current.step),
        "best_step": best_step,
        "best_metric": {patience.metric: patience.best},
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_examples": int(test["count"]),
        "splits": {name: split.source for name, split in training.setup.splits.items()},
        "class_names": list(training.setup.splits["train"].class_names or []) or None,
        "train_s": round(train_s, 2),
        "images_per_s": round(train_images / train_s, 1) if train_s else None,
        "device": f"{placement.num_devices}x {jax.devices()[0].device_kind}",
        "processes": jax.process_count(),
        "parallel": config.parallel,
    }
    if "top5_accuracy" in test:
        summary["test_top5_accuracy"] = test["top5_accuracy"]
    details = {name: dict(split.details) for name, split in training.setup.splits.items()}
    if any(details.values()):  # what the data was: files, their hash, skipped ones, sizing
        summary["data"] = details
    summary["warnings"] = [r["warning"] for r in history if "warning" in r]
    summary["stopped_early"] = status == "stopped_early"
    summary["wall_s"] = round(time.perf_counter() - training.started, 2)
    return summary


__all__ = ["Patience", "Training", "TrainingInterrupted", "fit"]
