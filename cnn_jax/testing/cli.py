"""``cnn-jax`` run as a user runs it, for tests: a real process through the console entry point."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args, env=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    """Runs ``cnn-jax ARGS`` in a new Python process (this interpreter, this ``cnn_jax``) and
    returns the completed process, its output as text."""
    code = (
        "import sys; from cnn_jax.cli import console_main; sys.argv[0] = 'cnn-jax'; console_main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        **kw,
    )
