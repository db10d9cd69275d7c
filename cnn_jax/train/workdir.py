"""The work directory of a run: the one place that knows its files and the rules for re-running.

A work directory holds exactly one run::

    config.json      the resolved config the run was started with (its identity)
    metrics.jsonl    one record per finished epoch
    checkpoints/     orbax: the latest N and the best (the config is stored there too)
    summary.json     test metrics of the best checkpoint, written when the run ends
    curves.png       loss and accuracy per epoch

Rules, checked before any work starts:

* a setting that changes what the run computes (everything but
  :data:`~cnn_jax.train.config.NON_COMPUTING_KEYS`, and ``epochs`` for length-free schedules)
  must equal the stored one, else :class:`~cnn_jax.errors.WorkdirError` lists the differences;
* a finished or early-stopped run is reported, not re-run;
* epochs recorded in ``metrics.jsonl`` must be backed by checkpoints: when checkpoints have been
  deleted the run is refused instead of silently restarting over its history;
* ``restart=True`` moves the whole directory aside (``<dir>.old-<time>``), never deletes it.
All files are written atomically (a temporary file renamed over the old one) and JSON never holds
NaN or inf.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ml_collections

from cnn_jax.errors import WorkdirError
from cnn_jax.train.config import differences


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


class RunDir:
    """A run's work directory (see the module docstring for its files and rules)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.curves_path = self.path / "curves.png"
        self.checkpoints_path = self.path / "checkpoints"

    # -- opening ----------------------------------------------------------------------------
    def open(self, *, restart: bool = False, log=print) -> None:
        """Creates the directory (or moves an existing run aside with ``restart``) and checks
        that it is a writable directory.

        Raises:
          WorkdirError: a file is in the way, or the directory cannot be written.
        """
        if restart and self.path.exists() and any(self.path.iterdir()):
            aside = self.path.with_name(f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                self.path.rename(aside)
            except OSError as err:
                raise WorkdirError(f"--restart: cannot move {self.path} aside: {err}") from err
            log(f"restart: moved the previous run to {aside}")
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
        write_json_atomic(self.metrics_path, records, lines=True)

    def append_record(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def summary(self) -> dict[str, Any] | None:
        if not self.summary_path.exists():
            return None
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, summary)


__all__ = ["RunDir", "write_json_atomic"]
