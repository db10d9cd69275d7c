"""``cnn-jax`` run as a user runs it, for tests: a real process through the console entry point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping

_ENTRY = "import sys; from cnn_jax.cli import console_main; sys.argv[0] = 'cnn-jax'; console_main()"


def command(*args: object) -> list[str]:
    """The argv that runs ``cnn-jax ARGS`` with this interpreter (for ``subprocess.Popen``)."""
    return [sys.executable, "-c", _ENTRY, *map(str, args)]


def interruptible() -> None:
    """``preexec_fn`` giving a child process SIGINT's default disposition, as a terminal's
    command has: a test session started in the background (``nohup``, ``&`` in a script)
    hands its children SIGINT ignored, Python then keeps ignoring it, and Ctrl-C's handling
    could not be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(
    *args: object, env: Mapping[str, str] | None = None, timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess:
    """Runs ``cnn-jax ARGS`` to its end; stdout and stderr captured as text, unbuffered, SIGINT
    at its default (:func:`interruptible`)."""
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        **{"preexec_fn": interruptible, **kwargs},
    )


__all__ = ["command", "interruptible", "run_cli"]
