"""The work directory of a run: the one place that knows its files and the rules for re-running.

A work directory holds exactly one run::

    config.json      the resolved config the run was started with (its identity)
    metrics.jsonl    one record per finished epoch
    checkpoints/     orbax: the latest N and the best (the config is stored there too)
    .lock            while a run is live: its pid and host (a second run there is refused)
    summary.json     test metrics of the best checkpoint, written when the run ends
    curves.png       loss and accuracy per epoch

Rules, checked before any work starts:

* a setting that changes what the run computes (everything but
  :data:`~cnn_jax.train.run.config.NON_COMPUTING_KEYS`, and ``epochs`` for length-free schedules)
  must equal the stored one, else :class:`~cnn_jax.errors.WorkdirError` lists the differences;
* a finished or early-stopped run is reported, not re-run;
* epochs recorded in ``metrics.jsonl`` must be backed by checkpoints: when checkpoints have been
  deleted the run is refused instead of silently restarting over its history;
* one live run at a time (:class:`WorkdirLock`); a run refused before it wrote anything leaves
  no directory behind;
* ``restart=True`` moves the whole directory aside (``<dir>.old-<time>``), never deletes it;
* a resumed run continues from its newest readable checkpoint and keeps the epoch records up to
  it (:meth:`RunDir.resume`).
All files are written atomically (a temporary file renamed over the old one) and JSON never holds
NaN or inf. With several processes (``jax.distributed``) every process reads the directory and
takes part in checkpointing (orbax coordinates them), but only process 0 writes the other files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from cnn_jax.errors import CheckpointError, WorkdirError
from cnn_jax.train.run.checkpoint import Checkpoints, why
from cnn_jax.train.run.config import EARLY_STOPPING_METRICS, differences


def write_json_atomic(path: Path, obj: Any, *, lines: bool = False) -> None:
    """Writes JSON (or JSON lines for a list) to ``path`` through a temporary file and a rename,
    so a crash leaves either the old or the new file; refuses NaN/inf (not JSON)."""
    text = (
        "".join(json.dumps(r, allow_nan=False) + "\n" for r in obj)
        if lines
        else json.dumps(obj, indent=2, allow_nan=False) + "\n"
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class WorkdirLock:
    """One live run per work directory: an exclusive ``flock`` on ``<workdir>/.lock``, which
    holds the holder's pid, host and start time for the message a second run gets, and is
    deleted when the run ends. The kernel releases the lock when its process ends, however it
    ends, so a lock file left by a killed process never blocks."""

    NAME = ".lock"

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, workdir: Path) -> WorkdirLock:
        """Takes ``workdir``'s lock.

        Raises:
          WorkdirError: another live process holds it (naming it), or it cannot be created.
        """
        path = workdir / cls.NAME
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise WorkdirError(f"cannot create {path}: {err.strerror or err}") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise WorkdirError(f"cannot lock {path}: {err.strerror or err}") from err
                raise WorkdirError(
                    f"{workdir} is in use by another run ({_holder(path)}); wait for it to "
                    "end, or choose another --workdir"
                ) from err
            # The holder deletes the file before it lets go: a lock taken on a deleted file
            # is no lock; take the new file's.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Deletes the lock file, then gives the lock back: a finished run leaves no trace."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing the descriptor releases the flock


def _holder(path: Path) -> str:
    """``pid N on host H since T`` from a lock file, as far as it can be read."""
    try:
        holder = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
        return f"pid {holder['pid']} on host {holder['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


class RunDir:
    """A run's work directory (see the module docstring for its files and rules)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.curves_path = self.path / "curves.png"
        self.checkpoints_path = self.path / "checkpoints"
        self.primary = jax.process_index() == 0  # the process that writes the files
        self.checkpoints: Checkpoints | None = None
        self._lock: WorkdirLock | None = None
        self._created: list[Path] = []  # directories open() made, deepest first

    # -- opening ----------------------------------------------------------------------------
    def start(
        self, config: ml_collections.ConfigDict, *, restart: bool = False, log=print
    ) -> dict[str, Any] | None:
        """Opens the directory for ``config``'s run (:meth:`open`, :meth:`check_same_run`) and
        returns the summary of a run that already ended there (:meth:`finished`), else ``None``.
        """
        self.open(restart=restart, log=log)
        self.check_same_run(config)
        return self.finished(config, log)

    def open(self, *, restart: bool = False, log=print) -> None:
        """Creates the directory, takes its lock (:class:`WorkdirLock`; process 0 of a
        multi-process run holds it for all), moves an existing run aside with ``restart``, and
        checks that the directory is writable.

        Raises:
          WorkdirError: another live process runs in it, a file is in the way, or the directory
            cannot be written.
        """
        problem = None
        if self.primary:
            try:
                self._open_primary(restart, log)
            except WorkdirError as err:
                problem = err
        if not _agreed(problem is None):  # every process stops when process 0 could not start
            raise problem or WorkdirError(
                f"process 0 could not open the workdir {self.path} (its message says why)"
            )
        if not self.primary:
            self._make()

    def _open_primary(self, restart: bool, log) -> None:
        self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self._make()
        self._lock = WorkdirLock.take(self.path)
        if restart and self._contents():
            aside = self.path.with_name(f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                self.path.rename(aside)
            except OSError as err:
                raise WorkdirError(f"--restart: cannot move {self.path} aside: {err}") from err
            self._make()
            moved, self._lock = self._lock, WorkdirLock.take(self.path)
            moved.release()
            log(f"restart: moved the previous run to {aside}")

    def _make(self) -> None:
        """Creates the directory (and its parents) and checks it can be written."""
        if self.path.exists() and not self.path.is_dir():
            raise WorkdirError(f"workdir {self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise WorkdirError(
                f"cannot write to workdir {self.path}: {err.strerror or err}; choose another "
                "--workdir"
            ) from err

    def _contents(self) -> list[Path]:
        """What the directory holds besides its lock."""
        return [p for p in self.path.iterdir() if p.name != WorkdirLock.NAME]

    def release(self) -> None:
        """Closes the checkpoints and gives the lock back. A directory this run created and left
        empty (refused before writing anything) is removed with the parents it created."""
        self.close()
        lock, self._lock = self._lock, None
        if lock is None:
            return
        unused = not self._contents()
        lock.release()
        if unused:
            for path in self._created:  # deepest first
                with contextlib.suppress(OSError):  # not empty (someone else's files): kept
                    path.rmdir()

    # -- identity ---------------------------------------------------------------------------
    def stored_config(self) -> dict[str, Any] | None:
        if not self.config_path.exists():
            return None
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise WorkdirError(
                f"{self.config_path} is unreadable ({err}); this workdir's run cannot be "
                "verified. Use another --workdir, or --restart to move it aside."
            ) from err

    def has_progress(self) -> bool:
        """Checkpoints or epoch records exist."""
        ckpt = self.checkpoints_path.exists() and any(self.checkpoints_path.iterdir())
        return ckpt or bool(self.read_history())

    def check_same_run(self, config: ml_collections.ConfigDict) -> None:
        """Refuses a config that would compute something else than the stored run.

        Raises:
          WorkdirError: listing every difference, and what to do.
        """
        old = self.stored_config()
        if old is None:
            if self.has_progress():
                raise WorkdirError(
                    f"{self.path} holds checkpoints or metrics but no config.json: cannot tell "
                    "which run they belong to. Use another --workdir, or --restart to move them "
                    "aside."
                )
            return
        diff = differences(old, config)
        if diff:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff)
            extra = ""
            if any(k == "epochs" for k, _, _ in diff):
                extra = (
                    f" (epochs can change only with a {'/'.join(('constant', 'step'))} schedule:"
                    f" the {config.schedule} schedule's every step depends on the run's length)"
                )
            raise WorkdirError(
                f"{self.path} holds a run with other settings ({listed}){extra}; resuming "
                "would mix two runs. Use another --workdir, or --restart to move that run aside "
                "and start over."
            )

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        if self.primary:
            write_json_atomic(self.config_path, config.to_dict())

    # -- history and summary ----------------------------------------------------------------
    def read_history(self) -> list[dict[str, Any]]:
        """Every complete record of ``metrics.jsonl`` (a line torn by a kill is dropped)."""
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def write_history(self, records: list[dict[str, Any]]) -> None:
        if self.primary:
            write_json_atomic(self.metrics_path, records, lines=True)

    def append_record(self, record: dict[str, Any]) -> None:
        if not self.primary:
            return
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record, allow_nan=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            # A torn last line is dropped when the run resumes (read_history).
            raise CheckpointError(
                f"no space left on device while writing {self.metrics_path}; free space and run "
                "the same command to resume"
            ) from err

    def summary(self) -> dict[str, Any] | None:
        if not self.summary_path.exists():
            return None
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.primary:
            write_json_atomic(self.summary_path, summary)

    def finished(self, config: ml_collections.ConfigDict, log=print) -> dict[str, Any] | None:
        """The summary of a run that already ended (all of ``config.epochs``, or early
        stopping), else ``None``."""
        summary = self.summary()
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
            f"{self.path} holds a finished run{note}: test accuracy "
            f"{summary['test_accuracy']:.4f} (best checkpoint, step {summary['best_step']}); "
            "nothing to do (--restart to train it again)"
        )
        return summary

    # -- checkpoints and resuming -----------------------------------------------------------
    def resume(
        self, config: ml_collections.ConfigDict, template: Any, *, initialise=None, log=print
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Opens the run's checkpoints and returns ``(state, history)``: the newest readable
        checkpoint restored into ``template`` (a state placed as the run places it) and the
        epoch records up to it, or ``initialise(template)`` (``template`` itself when ``None``)
        and no records for a new run. Rewrites ``metrics.jsonl`` and ``config.json`` to match.

        Raises:
          WorkdirError: more epoch records than checkpoints back (checkpoints were deleted).
          CheckpointError: no checkpoint can be restored into ``template``.
        """
        self.checkpoints = self._checkpoints(
            config, keep=config.keep_checkpoints, metadata={"config": config.to_dict()}
        )
        before = set(self.checkpoints.steps())
        restored = self.checkpoints.restore_latest(template)
        if restored is not None:
            state = restored[1]
            log(f"resuming from step {restored[0]} ({self.checkpoints_path})")
        else:
            state = initialise(template) if initialise is not None else template
        moved_aside = len(before - set(self.checkpoints.steps()))
        history = self._resumed_history(int(jax.device_get(state.step)), moved_aside)
        self.write_history(history)
        self.write_config(config)
        return state, history

    def _resumed_history(self, restored_step: int, moved_aside: int) -> list[dict[str, Any]]:
        """The epoch records a resumed run keeps: those up to its checkpoint. The newest record
        may be ahead of every checkpoint (a kill between writing it and finishing its save:
        :meth:`end_epoch` finishes each save before writing the next record), and so may the
        records of checkpoints found corrupt; more records than that mean checkpoints were
        deleted: refuse rather than retrain over the history."""
        history = self.read_history()
        kept = [r for r in history if r["step"] <= restored_step]
        if len(history) - len(kept) > 1 + moved_aside:
            where = f"step {restored_step}" if restored_step else "no checkpoint at all"
            raise WorkdirError(
                f"{self.metrics_path} records {len(history)} epochs (up to step "
                f"{history[-1]['step']}) but {self.checkpoints_path} leads back to {where}: "
                "checkpoints were deleted, and resuming would overwrite that history. Use "
                "another --workdir, or --restart to move this run aside and start over."
            )
        return kept

    def restore(
        self, config: ml_collections.ConfigDict, template: Any, checkpoint: int | str = "best"
    ) -> tuple[tuple[int, Any], list[int]]:
        """``(step, state)`` of the ``'best'`` checkpoint (the newest when none has metrics),
        the ``'latest'`` one, or the one at step ``checkpoint``, restored into ``template``; and
        the steps kept. Reads only: changes nothing in the directory (a running run's too).

        Raises:
          CheckpointError: that checkpoint is missing or unreadable (naming the others kept).
        """
        checkpoints = self._checkpoints(config, async_save=False, read_only=True)
        try:
            steps = checkpoints.steps()
            if checkpoint == "best":
                found = checkpoints.restore_best(template) or checkpoints.restore_latest(template)
            elif checkpoint == "latest":
                found = checkpoints.restore_latest(template)
            elif int(checkpoint) in steps:
                step = int(checkpoint)
                try:
                    found = (step, checkpoints.restore(step, template))
                except Exception as err:  # an unreadable checkpoint: say which, in one line
                    raise CheckpointError(
                        f"the checkpoint at step {step} in {self.checkpoints_path} cannot be "
                        f"restored ({why(err)}); nothing was changed"
                    ) from err
            else:
                raise CheckpointError(
                    f"{self.checkpoints_path} has no checkpoint at step {checkpoint}; kept: "
                    f"{', '.join(map(str, steps)) or 'none'}"
                )
        finally:
            checkpoints.close()
        if found is None:
            raise CheckpointError(f"{self.checkpoints_path} has no checkpoint to restore")
        return found, sorted(steps)

    def _checkpoints(self, config: ml_collections.ConfigDict, **options: Any) -> Checkpoints:
        """The run's checkpoints, the best one ranked by its early-stopping metric."""
        early_stopping = config.early_stopping
        return Checkpoints(
            self.checkpoints_path,
            best_metric=early_stopping.metric,
            best_mode=early_stopping.mode,
            **options,
        )

    def last_good(self) -> str:
        """Where the last good state is, for an error message."""
        self.checkpoints.wait()
        steps = self.checkpoints.steps()
        return (
            f"the last good checkpoint is step {steps[0]} in {self.checkpoints_path}"
            if steps
            else "no checkpoint was saved"
        )

    def save_and_close(self, step: int, state: Any) -> None:
        """Checkpoints ``state`` at ``step`` without metrics (a run stopped mid-epoch) and waits
        until every save is on disk."""
        self.checkpoints.save(step, state)
        self.checkpoints.close()

    def best_checkpoint(self, current: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the best readable checkpoint (restored into ``current``'s
        structure) once pending saves are finished, or ``None`` when none is readable."""
        self.checkpoints.wait()
        return self.checkpoints.restore_best(current)

    def write_curves(self, history: list[dict[str, Any]], best_epoch: int | None) -> None:
        """``curves.png``: loss and accuracy per epoch, the best epoch marked."""
        if self.primary and history:
            from cnn_jax.inspect import plots

            plots.curves(history, best_epoch=best_epoch, path=self.curves_path)

    def end_epoch(self, record: dict[str, Any], state: Any, *, hit=lambda name: None) -> None:
        """Appends an epoch's record, then checkpoints ``state`` with the record's metrics
        (asynchronously). The previous save is finished first, so a record is never more than
        one checkpoint ahead. ``hit`` is called with ``'record'`` / ``'save'`` after each
        (fault-test failpoints)."""
        self.checkpoints.wait()
        self.append_record(record)
        hit("record")
        metrics = {k: record[k] for k in EARLY_STOPPING_METRICS if k in record}
        self.checkpoints.save(record["step"], state, metrics=metrics)
        hit("save")

    def close(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.close()


def _agreed(ok: bool) -> bool:
    """Process 0's ``ok``, in every process (itself with one process)."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(ok)))


__all__ = ["RunDir", "WorkdirLock", "write_json_atomic"]
