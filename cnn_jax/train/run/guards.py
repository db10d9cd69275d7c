"""What stops a run from outside: signals (:class:`Stopper`) and the fault-test failpoints
(:class:`Failpoints`, ``CNN_JAX_FAILPOINT=name:n[:action]``); and what warns about a run that
goes wrong without stopping (:class:`LossWatch`)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import jax
from jax.experimental import multihost_utils


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; ``signal`` names which."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal = signal_name


class Failpoints:
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


class Stopper:
    """Turns the first SIGINT/SIGTERM into a stop the loop polls after each step (it then saves
    a checkpoint). A second signal exits at once with ``os._exit`` when ``hard_exit`` (the
    command line), else raises KeyboardInterrupt.

    With several processes a signal reaches one of them, but every process must save the same
    step together. There JAX's preemption service handles SIGTERM (what SLURM, Kubernetes and
    TPU maintenance send): the notice is propagated to all processes, which agree on a step to
    stop at (:func:`jax.experimental.multihost_utils.reached_preemption_sync_point`); no handler
    is installed, and SIGINT keeps its default (the command line exits at once; finished
    checkpoints are intact).
    """

    def __init__(self, hard_exit: bool = False):
        self.requested: str | None = None
        self.hard_exit = hard_exit
        self._previous: dict[int, Any] = {}
        self._processes = jax.process_count()

    def poll(self, step: int) -> str | None:
        """The signal that stops the run after ``step`` (the same step in every process), or
        ``None`` to go on."""
        if self._processes > 1:
            return "SIGTERM" if multihost_utils.reached_preemption_sync_point(step) else None
        return self.requested

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
    def installed(self) -> Iterator[Stopper]:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM) if self._processes == 1 else ():
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


class LossWatch:
    """Warns once per run when the training loss climbs far above where it started: a run can
    diverge without ever producing NaN (saturated tanh units, Adam's bounded steps) and train on
    at a loss of 1e6. The limit is :attr:`FACTOR` times the larger of the run's first loss and
    the chance-level loss ``ln(num_classes)``, far above anything a healthy run reaches.

    Args:
      num_classes: classes of the dataset (the chance-level loss).
      history: the run's epoch records so far; a resumed run keeps its first loss
        (``first_loss`` of epoch 1) and does not warn again (``warning`` in a record).
    """

    FACTOR = 100.0

    def __init__(self, num_classes: int, history: list[dict]):
        self.chance = math.log(num_classes)
        self.first: float | None = next(
            (r["first_loss"] for r in history if "first_loss" in r), None
        )
        self.warned = any("warning" in r for r in history)

    def check(self, losses: list[float], first_step: int, epoch: int) -> str | None:
        """The warning for steps ``first_step, first_step + 1, ...`` with ``losses`` (of epoch
        ``epoch``, counted from 1), the first time a loss is over the limit; else ``None``."""
        if self.first is None and losses:
            self.first = float(losses[0])
        if self.warned or self.first is None:
            return None
        limit = self.FACTOR * max(self.first, self.chance)
        for offset, loss in enumerate(losses):
            if loss > limit:
                self.warned = True
                return (
                    f"the training loss reached {loss:.3g} at step {first_step + offset} (epoch "
                    f"{epoch}), over {self.FACTOR:.0f}x its first value ({self.first:.3g}) and "
                    f"the chance-level loss ({self.chance:.3g}): the run is probably diverging "
                    "without reaching NaN. Training goes on; lower the learning rate."
                )
        return None


__all__ = ["Failpoints", "LossWatch", "Stopper", "TrainingInterrupted"]
