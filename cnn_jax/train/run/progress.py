"""What a run shows while it trains: a headline, a bar per epoch (on a terminal only), a line per
epoch, early stopping and the final result. With several processes only process 0 shows
anything."""

from __future__ import annotations

import sys
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
        if splits["test"].source == "validation":
            line += (
                "\nnote: the dataset has no test split: testing on its validation split, "
                "validating on the last 10% of train"
            )
        self.log(line)

    def bar(self, total: int, initial: int, desc: str):
        """A terminal bar over an epoch's steps (off when stderr is not a tty)."""
        from tqdm import tqdm

        return tqdm(
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


__all__ = ["Progress"]
