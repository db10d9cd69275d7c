"""What a run shows while it trains: a headline, a bar per epoch on a terminal (else a progress
line about every 10 s), a line per epoch, early stopping and the final result. With several
processes only process 0 shows anything."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import optax

from cnn_jax.train.run.setup import Setup
from cnn_jax.train.state import TrainState


def _quiet(*args: Any, **kwargs: Any) -> None:
    """The log of every process but the first."""


class Progress:
    """The lines of a run, sent to ``log`` when ``shown`` (process 0), and its progress bars."""

    def __init__(self, log: Callable[[str], None] = print, *, shown: bool = True):
        self.log = log if shown else _quiet
        self._shown = shown

    def headline(self, setup: Setup, num_devices: int, data_on: str, state: TrainState) -> None:
        config, splits = setup.config, setup.splits
        h, w, c = splits["train"].image_shape
        processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
        line = (
            f"{config.model} on {config.dataset}: {len(splits['train'])} train / "
            f"{len(splits['validation'])} val / {len(splits['test'])} test images "
            f"{h}x{w}x{c}, {optax.tree.size(state.params):,} params, {setup.steps_per_epoch} "
            f"steps/epoch, parallel={config.parallel} on {num_devices} "
            f"{jax.devices()[0].platform} device(s){processes}, data on {data_on}"
        )
        line += "".join(f", {note}" for note in setup.notes)
        if splits["test"].source == "validation":
            line += (
                "\nnote: the dataset has no test split: testing on its validation split, "
                "validating on the last 10% of train"
            )
        self.log(line)

    def bar(self, total: int, initial: int, desc: str, *, every_s: float = 10.0, **run):
        """What shows an epoch's steps: a terminal bar when stderr is a tty, else a
        :class:`StepLines` line about every ``every_s`` seconds (``run``: its arguments
        ``batch_size`` and ``run_steps_left``); nothing in processes other than the first. In a
        Jupyter kernel (no tty either) nothing: a notebook's stored outputs stay free of lines
        that depend on the machine's speed."""
        in_jupyter = "ipykernel" in sys.modules
        if self._shown and not sys.stderr.isatty() and not in_jupyter and every_s > 0:
            return StepLines(self.log, desc, total, initial, every_s=every_s, **run)
        return _TerminalBar(
            total=total,
            initial=initial,
            desc=desc,
            leave=False,
            dynamic_ncols=True,
            disable=not (self._shown and sys.stderr.isatty()),
        )

    def epoch(self, record: dict[str, Any], epochs: int, is_best: bool) -> None:
        self.log(
            f"epoch {record['epoch']:3d}/{epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f} |g| {record['train_grad_norm']:.3g}  val loss "
            f"{record['val_loss']:.4f} acc {record['val_accuracy']:.4f}  "
            f"{record['images_per_s']:,.0f} img/s" + ("  *" if is_best else "")
        )

    def early_stop(self, metric: str, patience: int) -> None:
        self.log(f"early stopping: {metric} has not improved for {patience} epochs")

    def finished(self, summary: dict[str, Any], workdir: Path) -> None:
        self.log(
            f"test accuracy {summary['test_accuracy']:.4f} (best checkpoint, step "
            f"{summary['best_step']}); {summary['wall_s']:.1f} s; outputs in {workdir}"
        )


class _TerminalBar:
    """tqdm's bar with :class:`StepLines`' interface (the loss is not shown)."""

    def __init__(self, **kwargs: Any):
        from tqdm import tqdm

        self._bar = tqdm(**kwargs)

    def update(self, n: int = 1, loss: Callable[[], float] | None = None) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class StepLines:
    """Progress for output that is not a terminal (a pipe, a log file, a batch scheduler):
    a line about every ``every_s`` seconds while an epoch trains, with the step, the loss of
    the newest checked step, images per second and the time the run's training still needs.

    Args:
      log: where lines go.
      desc: the epoch (``'epoch 3/30'``).
      total: steps in the epoch; initial: steps done before (a resumed epoch).
      batch_size: images per step.
      run_steps_left: steps of the whole run still to train, counted from ``initial``.
      every_s: seconds between lines.
      clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        log: Callable[[str], None],
        desc: str,
        total: int,
        initial: int,
        *,
        batch_size: int,
        run_steps_left: int,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._log, self._desc, self._total, self._every = log, desc, total, every_s
        self._batch, self._left, self._clock = batch_size, run_steps_left, clock
        self._done = initial
        self._steps = -1  # timed from the first step's end: its compilation is not a rate
        self._started = self._last = clock()

    def update(self, n: int = 1, loss: Callable[[], float] | None = None) -> None:
        """Counts ``n`` finished steps; a line when ``every_s`` passed and ``loss`` (read only
        then: it waits for the device) is given."""
        self._done += n
        now = self._clock()
        if self._steps < 0:
            self._steps, self._started, self._last = n - 1, now, now
            return
        self._steps += n
        if loss is None or now - self._last < self._every:
            return
        self._last = now
        per_s = self._steps / max(now - self._started, 1e-9)
        eta = (self._left - self._steps - 1) / per_s
        self._log(
            f"{self._desc} step {self._done}/{self._total}  loss {float(loss()):.4f}  "
            f"{per_s * self._batch:,.0f} img/s  ETA {_duration(eta)} (training)"
        )

    def close(self) -> None:
        """Nothing to clear (lines stay in the log)."""


def _duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


__all__ = ["Progress", "StepLines"]
