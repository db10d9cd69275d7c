"""The errors a run can end with, each carrying the exit code the command line returns.

Every *expected* failure of a run is one of these and is reported by ``cnn-jax`` as one line
(``--debug`` or ``CNN_JAX_DEBUG=1`` shows the traceback). They subclass the built-in exception a
Python caller would expect (``ValueError`` for bad settings, ``RuntimeError`` for a failed run),
so ``except ValueError`` keeps working for code written against the older API.

* exit 2, nothing was run: ``ConfigError`` (an invalid setting), ``WorkdirError`` (the work
  directory holds another run, is not writable, is a file, ...), ``DatasetError`` (unknown, not
  prepared or unreadable data);
* exit 1, the run failed: ``DivergenceError`` (the loss or gradients became non-finite),
  ``CheckpointError`` (no checkpoint of the run can be restored), ``InvalidLabelError`` (labels
  outside ``[0, num_classes)``).
"""

from __future__ import annotations


class CnnJaxError(Exception):
    """Base of the errors ``cnn-jax`` reports as one line with :attr:`exit_code`."""

    exit_code = 1


class ConfigError(CnnJaxError, ValueError):
    """An invalid setting, reported before any work starts."""

    exit_code = 2


class WorkdirError(CnnJaxError, ValueError):
    """The work directory cannot hold this run (another run's, unwritable, a file, ...)."""

    exit_code = 2


class DatasetError(CnnJaxError, ValueError):
    """A dataset cannot be loaded as asked: unknown, not prepared, empty, corrupt or malformed."""

    exit_code = 2


class DivergenceError(CnnJaxError, RuntimeError):
    """The loss or the gradients became non-finite (NaN or inf); training stopped."""


class CheckpointError(CnnJaxError, RuntimeError):
    """No checkpoint in a directory that has some could be restored."""


class InvalidLabelError(CnnJaxError, ValueError):
    """A batch held labels outside ``[0, num_classes)``."""

    exit_code = 1


__all__ = [
    "CheckpointError",
    "CnnJaxError",
    "ConfigError",
    "DatasetError",
    "DivergenceError",
    "InvalidLabelError",
    "WorkdirError",
]
