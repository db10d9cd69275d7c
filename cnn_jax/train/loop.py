"""The training loop: data -> jitted (or pmapped / sharded) steps -> logging, evaluation, early
stopping and checkpoints in a work directory.

Work directory contents: ``config.json`` (the resolved config), ``metrics.jsonl`` (one record per
epoch), ``curves.png`` (loss and accuracy), ``checkpoints/`` (latest N and best) and
``summary.json`` (test metrics of the best checkpoint and run statistics).

Re-running in a work directory that has checkpoints resumes from the newest one: the data order
is a function of (seed, epoch) and dropout keys of (seed, step), so the resumed run computes
exactly what the uninterrupted one would have. SIGINT / SIGTERM save a checkpoint first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import data as data_lib
from cnn_jax import models
from cnn_jax.data.augment import Augment
from cnn_jax.train import parallel
from cnn_jax.train.checkpoint import Checkpoints
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.state import TrainState, create_train_state
from cnn_jax.train.step import combine, make_eval_step, make_train_step

# Settings that must match to resume a run in the same workdir (others, e.g. epochs, may change).
RESUME_KEYS = (
    "model",
    "dataset",
    "image_size",
    "batch_size",
    "optimizer",
    "seed",
    "parallel",
    "devices",
    "freeze",
    "lr_multipliers",
)
# Training splits up to this size live on the device (config.data_on_device).
ON_DEVICE_LIMIT_BYTES = 2 * 2**30
# Models whose first Linear depends on the input size: the loop passes it.
_SIZED_MODELS = {"simple_cnn", "mlp"}
_FIXED_SIZE = {"lenet5": 32}


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""


def _resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    if config.model not in models.list_models():
        raise ValueError(
            f"unknown model {config.model!r}; available: {', '.join(models.list_models())}"
        )
    if config.parallel not in ("none", "pmap", "sharded"):
        raise ValueError(f"parallel must be none, pmap or sharded, got {config.parallel!r}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if config[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {config[key]}")
    if config.early_stopping.mode not in ("max", "min"):
        raise ValueError(
            f"early_stopping.mode must be max or min, got {config.early_stopping.mode}"
        )
    if not config.image_size:
        config.image_size = _FIXED_SIZE.get(config.model, 0)
    if not config.workdir:
        config.workdir = str(Path("runs") / f"{config.model}-{config.dataset}")
    return config


def _parse_multipliers(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        prefix, _, factor = item.partition("=")
        try:
            out[prefix.strip()] = float(factor)
        except ValueError as err:
            raise ValueError(f"lr_multipliers expects 'prefix=factor,...', got {text!r}") from err
    return out


def _check_resume(workdir: Path, config: ml_collections.ConfigDict) -> None:
    path = workdir / "config.json"
    if not path.exists() or not (workdir / "checkpoints").exists():
        return
    old = json.loads(path.read_text())
    differ = [k for k in RESUME_KEYS if old.get(k) != config[k]]
    if differ:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {config[k]!r}" for k in differ)
        raise ValueError(
            f"{workdir} holds a run with different settings ({details}); resuming would mix two "
            "runs. Use another --workdir, or delete this one to start over."
        )


class _Stopper:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop right away
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(
            f"\n{self.requested}: saving a checkpoint, then stopping (again to force)",
            file=sys.stderr,
            flush=True,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Stopper]:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
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
            raise ValueError(
                f"--devices {self.n} but only {available} local devices; on a CPU machine fake "
                "devices must be requested before JAX starts (the CLI does this)"
            )
        if self.mode == "none":
            self.n = 1
        for key in ("batch_size", "eval_batch_size"):
            if config[key] % self.n:
                raise ValueError(f"{key}={config[key]} must be divisible by {self.n} devices")
        if self.mode == "pmap":
            self.train, self.eval = parallel.pmap_steps(**step_options)
        elif self.mode == "sharded":
            self.mesh = parallel.data_mesh(self.n)
            self.train, self.eval = parallel.sharded_steps(self.mesh, **step_options)
            self._batch_sharding = parallel.batch_sharding(self.mesh)
            self._rep = parallel.replicated(self.mesh)
        else:
            self.train = jax.jit(make_train_step(**step_options), donate_argnums=0)
            self.eval = jax.jit(
                make_eval_step(mean=step_options.get("mean"), std=step_options.get("std"))
            )
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


def evaluate(runner: _Runner, state: TrainState, split: data_lib.Split, batch_size: int) -> dict:
    """Loss / accuracy / top-5 over a whole split, every example counted once."""
    results = [
        runner.metrics(runner.eval(state, runner.put(batch)))
        for batch in data_lib.batches(split, batch_size, normalize=False, drop_remainder=False)
    ]
    return combine(jax.device_get(results))


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], marker=".", label=split)
        ax_acc.plot(epochs, [r[f"{split}_accuracy"] for r in history], marker=".", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_history(path: Path, up_to_step: int) -> list[dict]:
    """metrics.jsonl records up to a restored step (later ones belong to unsaved progress)."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] <= up_to_step]


def _progress(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

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
    if config.model in _SIZED_MODELS:
        model_kwargs["input_size"] = (h, w)
    model = models.create(config.model, **model_kwargs)
    steps_per_epoch = data_lib.num_batches(len(train_split), config.batch_size, True)
    if steps_per_epoch == 0:
        raise ValueError(
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
        freeze=tuple(p.strip() for p in config.freeze.split(",") if p.strip()),
        lr_multipliers=_parse_multipliers(config.lr_multipliers),
    )
    return _Built(splits, model, schedule, optimizer, steps_per_epoch, config.seed)


def fit(config: ml_collections.ConfigDict, *, log=print) -> dict[str, Any]:
    """Trains per ``config`` (see :func:`cnn_jax.train.config.default_config`) and returns the
    run summary (also written to ``<workdir>/summary.json``).

    Raises:
      TrainingInterrupted: on SIGINT/SIGTERM, after saving a checkpoint.
      ValueError: invalid settings, or a workdir holding a different run.
    """
    config = _resolve(config)
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_resume(workdir, config)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    built = _build(config)
    splits, schedule = built.splits, built.schedule
    train_split, steps_per_epoch = splits["train"], built.steps_per_epoch
    h, w, c = train_split.image_shape
    a = config.augment
    augment = Augment(
        crop_padding=a.crop_padding,
        translate=a.translate,
        flip=a.flip,
        brightness=a.brightness,
        contrast=(1 - a.contrast, 1 + a.contrast) if a.contrast else None,
        cutout=a.cutout,
    )
    step_options = dict(
        augment=augment if augment.active else None,
        mean=train_split.mean,
        std=train_split.std,
        l1=config.l1,
        l2=config.l2,
        label_smoothing=config.label_smoothing,
    )
    runner = _Runner(config, step_options, train_split)

    state = built.initial_state()
    params_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    checkpoints = Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state = restored[1]
        log(f"resuming from step {restored[0]} ({workdir / 'checkpoints'})")
    start_step = int(state.step)
    history = _read_history(workdir / "metrics.jsonl", start_step)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))

    es = config.early_stopping
    best_value, since_best = None, 0
    for record in history:
        if _improved(record[es.metric], best_value, es.mode, es.min_delta):
            best_value, since_best = record[es.metric], 0
        else:
            since_best += 1

    log(
        f"{config.model} on {config.dataset}: {len(train_split)} train / "
        f"{len(splits['validation'])} val / {len(splits['test'])} test images "
        f"{h}x{w}x{c}, {params_count:,} params, {steps_per_epoch} steps/epoch, "
        f"parallel={config.parallel} on {runner.n} {jax.devices()[0].platform} device(s), "
        f"data on {'device' if runner.on_device else 'host'}"
    )

    state = runner.place_state(state)
    train_time, train_images = 0.0, 0
    start_time = time.perf_counter()
    stopped_early = False
    with _Stopper().installed() as stopper:
        for epoch in range(start_step // steps_per_epoch, config.epochs):
            offset = int(runner.host_state(state).step) - epoch * steps_per_epoch
            idx, _ = data_lib.batch_indices(
                len(train_split),
                config.batch_size,
                shuffle=True,
                seed=config.seed,
                epoch=epoch,
                drop_remainder=True,
            )
            epoch_start = time.perf_counter()
            step_metrics = []
            bar = _progress(steps_per_epoch, offset, f"epoch {epoch + 1}/{config.epochs}")
            for batch in runner.train_inputs(train_split, idx[offset:]):
                state, metrics = runner.train(state, batch)
                step_metrics.append(metrics)
                bar.update(1)
                if stopper.requested:
                    bar.close()
                    host = runner.host_state(state)
                    checkpoints.save(int(host.step), host)
                    checkpoints.close()
                    raise TrainingInterrupted(
                        f"stopped by {stopper.requested} at step {int(host.step)}; checkpoint "
                        f"saved in {checkpoints.directory}. Re-run the same command to resume."
                    )
            train_metrics = jax.device_get([runner.metrics(m) for m in step_metrics])
            jax.block_until_ready(state)
            bar.close()
            epoch_train_time = time.perf_counter() - epoch_start
            images = len(step_metrics) * config.batch_size
            train_time += epoch_train_time
            train_images += images

            val = evaluate(runner, state, splits["validation"], config.eval_batch_size)
            host = runner.host_state(state)
            step = int(host.step)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": float(np.mean([m["loss"] for m in train_metrics])),
                "train_accuracy": float(np.mean([m["accuracy"] for m in train_metrics])),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "lr": float(schedule(step - 1)),
                "epoch_time_s": round(time.perf_counter() - epoch_start, 3),
                "images_per_s": round(images / epoch_train_time, 1),
            }
            if "top5_accuracy" in val:
                record["val_top5_accuracy"] = val["top5_accuracy"]
            history.append(record)
            with open(workdir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if es.metric not in record:
                raise ValueError(
                    f"early_stopping.metric {es.metric!r} is not one of {sorted(record)}"
                )
            is_best = _improved(record[es.metric], best_value, es.mode, es.min_delta)
            if is_best:
                best_value, since_best = record[es.metric], 0
            else:
                since_best += 1
            checkpoints.save(step, host, best=is_best)
            log(
                f"epoch {epoch + 1:3d}/{config.epochs}  train loss {record['train_loss']:.4f} "
                f"acc {record['train_accuracy']:.4f}  val loss {record['val_loss']:.4f} "
                f"acc {record['val_accuracy']:.4f}  {record['images_per_s']:,.0f} img/s"
                + ("  *" if is_best else "")
            )
            if es.patience and since_best >= es.patience:
                log(f"early stopping: {es.metric} has not improved for {es.patience} epochs")
                stopped_early = True
                break
    checkpoints.wait()
    if history:
        _plot(history, workdir / "curves.png")

    current = runner.host_state(state)
    best = checkpoints.restore_best(current)
    best_step, best_state = best if best is not None else (int(current.step), current)
    test = evaluate(runner, runner.place_state(best_state), splits["test"], config.eval_batch_size)
    checkpoints.close()
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "params": params_count,
        "epochs": len(history),
        "steps": int(runner.host_state(state).step),
        "best_step": best_step,
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_examples": int(test["count"]),
        "wall_s": round(time.perf_counter() - start_time, 2),
        "train_s": round(train_time, 2),
        "images_per_s": round(train_images / train_time, 1) if train_time else None,
        "stopped_early": stopped_early,
        "device": f"{runner.n}x {jax.devices()[0].device_kind}",
        "parallel": config.parallel,
    }
    if "top5_accuracy" in test:
        summary["test_top5_accuracy"] = test["top5_accuracy"]
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(
        f"test accuracy {summary['test_accuracy']:.4f} (best checkpoint, step {best_step}); "
        f"{summary['wall_s']:.1f} s; outputs in {workdir}"
    )
    return summary


def evaluate_workdir(workdir: str | Path, split: str = "test", *, log=print) -> dict[str, Any]:
    """Re-evaluates the best checkpoint of a finished (or interrupted) run on ``split``."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise ValueError(f"{workdir} has no config.json: not a cnn-jax run directory")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    built = _build(config)
    if split not in built.splits:
        raise ValueError(f"unknown split {split!r}; available: {', '.join(built.splits)}")
    train_split = built.splits["train"]
    template = built.initial_state()
    checkpoints = Checkpoints(workdir / "checkpoints", async_save=False)
    found = checkpoints.restore_best(template) or checkpoints.restore_latest(template)
    checkpoints.close()
    if found is None:
        raise ValueError(f"{workdir / 'checkpoints'} has no checkpoint to evaluate")
    step, state = found
    runner = _Runner(
        ml_collections.ConfigDict({**config.to_dict(), "parallel": "none"}),
        {"mean": train_split.mean, "std": train_split.std},
    )
    result = evaluate(runner, state, built.splits[split], config.eval_batch_size)
    result = {"split": split, "step": step, **result}
    log(
        f"{split}: loss {result['loss']:.4f} accuracy {result['accuracy']:.4f} "
        f"({int(result['count'])} examples, checkpoint step {step})"
    )
    return result


__all__ = ["TrainingInterrupted", "evaluate", "evaluate_workdir", "fit"]
