"""``cnn-jax`` run as a user runs it, for tests: a real process through the console entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

# SIGINT back at Python's handler first, as a command started from a terminal has it: a test
# session started in the background (nohup, `&` in a script) hands its children SIGINT ignored,
# Python keeps ignoring it, and Ctrl-C's handling could not be tested. (Done in the child after
# exec, not as a preexec_fn: forking a multithreaded JAX process to run Python code can deadlock.)
INTERRUPTIBLE = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"
_ENTRY = (
    f"{INTERRUPTIBLE}; import sys; from cnn_jax.cli import console_main; "
    "sys.argv[0] = 'cnn-jax'; console_main()"
)


def command(*args: object) -> list[str]:
    """The argv that runs ``cnn-jax ARGS`` with this interpreter (for ``subprocess.Popen``)."""
    return [sys.executable, "-c", _ENTRY, *map(str, args)]


def run_cli(
    *args: object, env: Mapping[str, str] | None = None, timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess:
    """Runs ``cnn-jax ARGS`` to its end; stdout and stderr captured as text, unbuffered, SIGINT
    handled as from a terminal (:data:`INTERRUPTIBLE`)."""
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        **kwargs,
    )


__all__ = ["INTERRUPTIBLE", "command", "run_cli"]
