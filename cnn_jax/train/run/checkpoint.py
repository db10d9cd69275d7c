"""Checkpoints with orbax: one ``CheckpointManager`` keeping the latest N and the best by a metric.

Each end-of-epoch checkpoint is saved with its metrics (``save(step, state, metrics=...)``);
orbax's preservation policy keeps the newest ``keep`` checkpoints plus the best one by
``best_metric``, so "best" is decided from what is on disk, atomically with the save (a run
killed between two saves cannot leave a stale best behind). Saves are asynchronous; orbax writes
into a temporary directory and renames it when complete, so a kill at any moment leaves every
finished checkpoint intact, and the leftover temporary directory is removed when the directory is
next opened. The run's config can be stored as the directory's metadata.

A checkpoint that cannot be read is *moved aside* (to ``<directory>-corrupt/``, never deleted)
with a one-line warning when an older (or next-best) one can be restored instead, so the run
continues and a later save of the same step number cannot collide with it. When none can be
restored nothing is moved and :class:`~cnn_jax.errors.CheckpointError` says why in one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from cnn_jax.errors import CheckpointError

# What a save writes besides the arrays' bytes (orbax's _METADATA, _CHECKPOINT_METADATA,
# tensorstore's manifest and the metrics file): a few kB for these models.
_METADATA_MARGIN_BYTES = 64 * 1024


class _QuietMidEpochSaves(logging.Filter):
    """orbax warns on every save without metrics once a best metric is tracked; a mid-epoch save
    (on SIGINT) has none by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


class _QuietDiskFull(logging.Filter):
    """orbax logs a full disk from each of its writer threads with a traceback (hundreds of
    lines); :class:`Checkpoints` reports it in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        return not _says_disk_full(text)


class _QuietReadOnly(logging.Filter):
    """orbax warns twice whenever a checkpoint directory is opened read-only, which is how a
    finished run is loaded (:func:`cnn_jax.train.load_run`, ``init_from``): it is not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("Given directory is read only" in text or "read_only=True, setting" in text)


logging.getLogger("absl").addFilter(_QuietReadOnly())
logging.getLogger("absl").addFilter(_QuietMidEpochSaves())
logging.getLogger("absl").addFilter(_QuietDiskFull())


def _says_disk_full(text: str) -> bool:
    return "No space left on device" in text or "os_error_code='28'" in text


def disk_full(err: BaseException) -> bool:
    """``err`` (or an exception it was raised from) is a full disk: ``ENOSPC``, or orbax /
    tensorstore's ``RESOURCE_EXHAUSTED`` saying so."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if _says_disk_full(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def abstract_like(state: Any) -> Any:
    """Shapes/dtypes (and shardings) of ``state``: the template checkpoints are restored into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpoints:
    """The latest ``keep`` checkpoints of a run and the best one by ``best_metric``.

    Args:
      directory: where checkpoints live (created if needed).
      keep: how many of the latest checkpoints to keep (the best is kept besides them).
      best_metric: the key of ``save(..., metrics=)`` that ranks checkpoints.
      best_mode: ``'max'`` or ``'min'``.
      async_save: write in a background thread (call :meth:`wait` before reading them).
      metadata: a JSON-able dict stored once with the directory (e.g. the run's config, for
        whoever inspects the directory with orbax).
      read_only: never change the directory (a finished or running run read back): nothing is
        saved, cleaned up or moved aside, and an unreadable checkpoint raises
        :class:`~cnn_jax.errors.CheckpointError` instead of giving way to another.
    """

    def __init__(
        self,
        directory: str | Path,
        keep: int = 3,
        *,
        best_metric: str = "val_accuracy",
        best_mode: str = "max",
        async_save: bool = True,
        metadata: Mapping[str, Any] | None = None,
        read_only: bool = False,
    ):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be max or min, got {best_mode!r}")
        self.directory = Path(directory).absolute()
        self.quarantine = self.directory.with_name(self.directory.name + "-corrupt")
        self.best_metric, self.best_mode = best_metric, best_mode
        self._keep, self._async, self.read_only = keep, async_save, read_only
        self._metadata = dict(metadata) if metadata is not None and not read_only else None
        self._saving: int | None = None  # the step of the newest save started
        self._manager: ocp.CheckpointManager | None = self._open_checked()

    def _open_checked(self) -> ocp.CheckpointManager:
        """Opens the manager. orbax reads every checkpoint's metrics when it opens a directory
        and fails on one corrupt metrics file: such checkpoints are moved aside first (when a
        readable one remains), like any unreadable checkpoint."""
        try:
            return self._open()
        except Exception as err:
            bad = self._steps_with_unreadable_metrics()
            steps = [int(p.name) for p in self.directory.iterdir() if p.name.isdigit()]
            if self.read_only and bad:
                raise CheckpointError(
                    f"the checkpoint(s) at step {', '.join(map(str, bad))} in {self.directory} "
                    "have unreadable metrics, so orbax cannot open the directory; nothing was "
                    "changed (training in this workdir moves them aside)"
                ) from err
            if not bad or len(bad) == len(steps):
                raise CheckpointError(
                    f"the checkpoints in {self.directory} cannot be opened ({why(err)}); use "
                    "another --workdir, or --restart to "
                    "move this run aside and start over"
                ) from err
            for step in bad:
                moved = self._move_aside(step)
                warnings.warn(
                    f"the checkpoint at step {step} has unreadable metrics; moved it to {moved}",
                    stacklevel=3,
                )
            return self._open()

    def _steps_with_unreadable_metrics(self) -> list[int]:
        bad = []
        for step_dir in self.directory.iterdir():
            if not step_dir.name.isdigit():
                continue
            for f in (step_dir / "metrics").glob("metrics*"):
                try:
                    json.loads(f.read_text())
                except (OSError, ValueError):
                    bad.append(int(step_dir.name))
                    break
        return sorted(bad)

    def _open(self) -> ocp.CheckpointManager:
        metric: Callable[[Any], float] = lambda m: m[self.best_metric]
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(self._keep),
                checkpoint_managers.BestN(
                    get_metric_fn=metric,
                    reverse=self.best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=metric,
            best_mode=self.best_mode,
            enable_async_checkpointing=self._async and not self.read_only,
            # What a kill during a save left behind; never while reading (a live run's saves).
            cleanup_tmp_directories=not self.read_only,
            create=not self.read_only,
            read_only=self.read_only,
        )
        return ocp.CheckpointManager(self.directory, options=options, metadata=self._metadata)

    # -- saving -----------------------------------------------------------------------------
    def save(self, step: int, state: Any, *, metrics: Mapping[str, float] | None = None) -> None:
        """Saves ``state`` at ``step``; ``metrics`` (finite numbers, with ``best_metric``) make it
        a candidate for the best checkpoint. A mid-epoch save passes none."""
        if metrics is not None:
            bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
            if bad:
                raise ValueError(f"checkpoint metrics must be finite, got {bad}")
            if self.best_metric not in metrics:
                raise ValueError(
                    f"metrics must include {self.best_metric!r}, got {sorted(metrics)}"
                )
            metrics = {k: float(v) for k, v in metrics.items()}
        self._saving = step
        self._check_free_space(state)
        with self._disk_full_is_one_line():
            self._manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)

    def _check_free_space(self, state: Any) -> None:
        """Refuses a save that cannot fit before writing any of it.

        A save that runs out of space part-way fails too (:meth:`_disk_full_is_one_line`), but
        then orbax has already closed that save's event loop while tensorstore still finishes
        other arrays' writes, and each of those prints a ``RuntimeError: Event loop is closed``
        traceback under the one-line error. The arrays' bytes plus a margin for orbax's
        metadata files, against the free space of the directory's filesystem, catch the
        common case first; a disk filled by another process meanwhile still reaches the
        fallback."""
        needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))
        needed += _METADATA_MARGIN_BYTES
        if shutil.disk_usage(self.directory).free < needed:
            raise CheckpointError(self._disk_full_message())

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk.

        Raises:
          CheckpointError: the disk filled up during a save (one line: what to do).
        """
        with self._disk_full_is_one_line():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager (idempotent)."""
        if self._manager is None:
            return
        manager, self._manager = self._manager, None
        with self._disk_full_is_one_line():
            manager.wait_until_finished()
            manager.close()

    @contextlib.contextmanager
    def _disk_full_is_one_line(self):
        """A full disk during a save as one :class:`CheckpointError`; the finished checkpoints
        stay intact (orbax renames a checkpoint into place only when it is complete) and the
        unfinished one is removed when the directory is next opened, so the same command
        resumes once there is space."""
        try:
            yield
        except Exception as err:
            if not disk_full(err):
                raise
            raise CheckpointError(self._disk_full_message()) from err

    def _disk_full_message(self) -> str:
        return (
            f"no space left on device while saving checkpoint {self._saving} in "
            f"{self.directory}; free space and run the same command to resume"
        )

    # -- what is there ----------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps of every kept checkpoint, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def _ranked_by_metric(self) -> list[int]:
        scored = []
        for step in self._manager.all_steps():
            m = self._manager.metrics(step)
            if m and self.best_metric in m:
                scored.append((m[self.best_metric], step))
        # Best first; among equal values the earliest step, like an early-stopping tracker.
        sign = -1.0 if self.best_mode == "max" else 1.0
        return [step for value, step in sorted(scored, key=lambda vs: (sign * vs[0], vs[1]))]

    # -- restoring --------------------------------------------------------------------------
    def restore(self, step: int, template: Any) -> Any:
        """The state saved at ``step``, restored into ``template``'s structure (raises on a
        missing or unreadable checkpoint)."""
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_like(template)))

    def restore_latest(self, template: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest readable checkpoint, ``None`` when there are none.
        ``template`` is a state of the same structure (e.g. freshly initialised)."""
        return self._first_readable(self.steps(), "newest", template)

    def restore_best(self, template: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the best readable checkpoint, ``None`` when none has metrics."""
        return self._first_readable(self._ranked_by_metric(), "best", template)

    def _first_readable(self, order: list[int], kind: str, template: Any):
        failures: list[tuple[int, str]] = []
        for step in order:
            try:
                state = self.restore(step, template)
            except Exception as err:  # any unreadable checkpoint: try the next one
                failures.append((step, why(err)))
                if self.read_only:
                    raise CheckpointError(
                        f"the {kind} checkpoint (step {step}) in {self.directory} cannot be "
                        f"restored ({failures[0][1]}); nothing was changed. Kept: "
                        f"{', '.join(map(str, self.steps()))}: evaluate another with "
                        f"{'--checkpoint latest or ' if kind == 'best' else ''}--checkpoint STEP"
                    ) from err
                continue
            for bad, reason in failures:
                moved = self._move_aside(bad)
                warnings.warn(
                    f"the {kind} checkpoint (step {bad}) cannot be restored ({reason}); moved it "
                    f"to {moved} and continued from step {step}",
                    stacklevel=3,
                )
            if failures:
                self._manager.close()
                self._manager = self._open_checked()
            return step, state
        if not failures:
            return None
        step, reason = failures[0]
        raise CheckpointError(
            f"none of the {len(failures)} checkpoint(s) in {self.directory} can be restored "
            f"into this run's state (step {step}: {reason}); they are corrupt or were written by "
            "another model, optimizer or version. Use another --workdir, or --restart to move "
            "this run aside and start over."
        )

    def _move_aside(self, step: int) -> Path:
        """Moves checkpoint ``step`` into the quarantine directory. With several processes
        (which all find the same unreadable files) process 0 moves it and the others wait."""
        target = self.quarantine / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            self.quarantine.mkdir(parents=True, exist_ok=True)
            n = 1
            while target.exists():
                target = self.quarantine / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
                n += 1
            shutil.move(str(self.directory / str(step)), str(target))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"cnn_jax_move_aside_{step}")
        return target


def why(err: BaseException) -> str:
    """An exception as ``Type: its first line``, short. Some errors raised from C++ (orbax's
    tensorstore) carry no readable message of their own: their chained cause or the type
    stands in."""
    text = str(err).splitlines()[0] if str(err).strip() else ""
    if not text or text.startswith("<"):  # e.g. '<bound method pybind11_detail_...>'
        cause = err.__cause__ or err.__context__
        return why(cause) if cause is not None else type(err).__name__
    return f"{type(err).__name__}: {text[:200]}"
