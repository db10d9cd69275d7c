"""What stops a run from outside: signals (:class:`Stopper`) and the fault-test failpoints
(:class:`Failpoints`, ``CNN_JAX_FAILPOINT=name:n[:action]``)."""

from __future__ import annotations

import contextlib
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


__all__ = ["Failpoints", "Stopper", "TrainingInterrupted"]
