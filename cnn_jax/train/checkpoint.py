"""Checkpoints with orbax: the latest N and the best, saved asynchronously, restored whole.

Layout under ``directory``: ``latest/<step>/`` (the last ``keep`` saves) and ``best/<step>/`` (the
best by the tracked metric). A checkpoint that cannot be read is skipped for the next older one
*with a warning naming it*; when none can be read the error names the directory — a run is never
silently restarted over the user's checkpoints.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in a directory that has some could be restored."""


def abstract_like(state: Any) -> Any:
    """Shapes/dtypes (and shardings) of ``state``: the template checkpoints are restored into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpoints:
    """The latest ``keep`` checkpoints and the best one of a run.

    Args:
      directory: where checkpoints live (created if needed).
      keep: how many of the latest checkpoints to keep.
      async_save: write in a background thread (call :meth:`wait` before reading them).
    """

    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        options = lambda n: ocp.CheckpointManagerOptions(
            max_to_keep=n, enable_async_checkpointing=async_save, create=True
        )
        self._latest = ocp.CheckpointManager(self.directory / "latest", options=options(keep))
        self._best = ocp.CheckpointManager(self.directory / "best", options=options(1))

    # -- saving -----------------------------------------------------------------------------
    def save(self, step: int, state: Any, *, best: bool = False) -> None:
        """Saves ``state`` as the latest checkpoint at ``step`` (and as the best one)."""
        self._latest.save(step, args=ocp.args.StandardSave(state), force=True)
        if best:
            self._best.save(step, args=ocp.args.StandardSave(state), force=True)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._latest.close()
        self._best.close()

    # -- restoring --------------------------------------------------------------------------
    def latest_steps(self) -> list[int]:
        """Steps of the kept latest checkpoints, newest first."""
        return sorted(self._latest.all_steps(), reverse=True)

    def best_step(self) -> int | None:
        steps = self._best.all_steps()
        return max(steps) if steps else None

    def _restore(self, manager: ocp.CheckpointManager, kind: str, template: Any):
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            return None
        failures = []
        for step in steps:
            try:
                state = manager.restore(
                    step, args=ocp.args.StandardRestore(abstract_like(template))
                )
            except Exception as err:  # any unreadable checkpoint: try an older one
                failures.append(f"  {manager.directory / str(step)}: {type(err).__name__}: {err}")
                warnings.warn(
                    f"cannot restore the {kind} checkpoint at step {step} in {manager.directory} "
                    f"({type(err).__name__}: {err}); trying an older one",
                    stacklevel=3,
                )
                continue
            if failures:
                log.warning(
                    "restored the %s checkpoint at step %d after skipping %d unreadable",
                    kind,
                    step,
                    len(failures),
                )
            return step, state
        raise CheckpointError(
            f"{manager.directory} holds {kind} checkpoints but none can be restored into this "
            "run's state (corrupt, or written by a different model / optimizer / config):\n"
            + "\n".join(failures)
            + "\nMove or delete that directory, or use another workdir, to start a new run."
        )

    def restore_latest(self, template: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest readable latest checkpoint, ``None`` when there are
        none. ``template`` is a state of the same structure (e.g. freshly initialised)."""
        return self._restore(self._latest, "latest", template)

    def restore_best(self, template: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the best checkpoint, ``None`` when there is none."""
        return self._restore(self._best, "best", template)
