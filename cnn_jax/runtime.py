"""The XLA settings cnn_jax compiles with, where they are set and how to override them.

One setting today, for the CPU: **convolutions are compiled by XLA's own emitter instead of being
handed to YNNPACK**, which jax 0.10's CPU backend does by default (``__ynn_fusion`` in the
optimised HLO) and whose weight gradients and few-channel convolutions are slow. Matmuls and
reductions still go to YNNPACK. On a 2-core AMD EPYC (jax 0.10.2, batch 128) the train step of
lenet5 / cifar_cnn / resnet18 took 11.7 / 85.7 / 250 ms with XLA's default and 7.7 / 48.4 / 205 ms
with this setting (``experiments/bench_vs_torch.py --batch-sizes 128 --blocks 3`` with
``CNN_JAX_XLA_DEFAULTS=0``, then without; the AVX2 machine of the issue saw the same direction),
and the float32 gradients of every model family stay within torch's float32 error of a float64
run (``tests/test_float32_gradients.py``). Off the CPU it changes nothing.

Where it is set:

* ``import cnn_jax`` (any submodule) appends ``--xla_cpu_experimental_ynn_fusion_type=
  -individual_convolution`` to ``XLA_FLAGS`` if JAX's backends are not initialised yet, so a
  user's own ``jax.jit`` gets it too. XLA reads ``XLA_FLAGS`` once, when the first backend starts.
* cnn_jax's own compiled programs (train / eval steps of every placement but ``pmap``, the
  initialisation, the checked step) also pass it as ``compiler_options`` through :func:`jit`, so
  they compile the same way whatever was imported first.

How to override it:

* ``CNN_JAX_XLA_DEFAULTS=0`` in the environment: cnn_jax sets nothing (XLA's own defaults).
* An ``XLA_FLAGS`` that already names ``xla_cpu_experimental_ynn_fusion_type``: the user's value
  wins, and cnn_jax's programs follow it too (no ``compiler_options``).
* A jaxlib other than the verified 0.10.x: nothing is set (XLA aborts on a flag it does not
  know, and another release's defaults need measuring again).

:func:`settings` says what was applied and why.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

ENV_SWITCH = "CNN_JAX_XLA_DEFAULTS"
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# The flag form is relative to XLA's default set; compiler_options needs the whole set. jaxlib
# 0.10's default is {INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION, REDUCE} (its ``.debug_options`` dump
# under ``--xla_dump_to`` lists exactly the flag's result below), so both forms mean the same.
_FLAG = f"--{YNN_OPTION}=-individual_convolution"
_OPTION_VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
VERIFIED_JAXLIB = ("0.10.",)


@dataclasses.dataclass(frozen=True)
class XlaSettings:
    """What :mod:`cnn_jax.runtime` decided when cnn_jax was first imported.

    ``compiler_options``: passed to cnn_jax's own ``jax.jit`` calls (empty: none).
    ``in_xla_flags``: whether ``XLA_FLAGS`` was extended (before JAX initialised), so that every
    program of the process, the user's included, compiles with it.
    ``reason``: one line saying why.
    """

    compiler_options: dict[str, str]
    in_xla_flags: bool
    reason: str


def _decide(environ: dict[str, str] | Any, jaxlib_version: str, initialised: bool) -> XlaSettings:
    """The settings for an environment, a jaxlib version and whether JAX's backends are up."""
    if environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return XlaSettings({}, False, f"{ENV_SWITCH}={environ[ENV_SWITCH]}: XLA's defaults")
    if YNN_OPTION in environ.get("XLA_FLAGS", ""):
        return XlaSettings({}, False, f"XLA_FLAGS sets {YNN_OPTION}: the user's value")
    if not jaxlib_version.startswith(VERIFIED_JAXLIB):
        return XlaSettings(
            {}, False, f"jaxlib {jaxlib_version} is not one of {VERIFIED_JAXLIB}: XLA's defaults"
        )
    options = {YNN_OPTION: _OPTION_VALUE}
    if initialised:
        return XlaSettings(
            options,
            False,
            "JAX was initialised before cnn_jax was imported: cnn_jax's own programs only",
        )
    return XlaSettings(options, True, "XLA_FLAGS extended before JAX initialised")


def _backends_initialised() -> bool:
    if "jax" not in sys.modules:  # nothing can have started a backend; keep import cnn_jax light
        return False
    from jax._src import xla_bridge

    probe = getattr(xla_bridge, "backends_are_initialized", None)
    return True if probe is None else bool(probe())  # unknown: assume too late


def _apply() -> XlaSettings:
    import jaxlib.version

    decided = _decide(os.environ, jaxlib.version.__version__, _backends_initialised())
    if decided.in_xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
    return decided


_SETTINGS: XlaSettings = _apply()


def settings() -> XlaSettings:
    """What was applied at import (see the module docstring)."""
    return _SETTINGS


def compiler_options() -> dict[str, str]:
    """The ``compiler_options`` cnn_jax's programs compile with (a copy; may be empty)."""
    return dict(_SETTINGS.compiler_options)


def jit(fun: Callable, **kwargs: Any) -> Callable:
    """``jax.jit(fun, **kwargs)`` with cnn_jax's :func:`compiler_options` (explicit ones win)."""
    import jax

    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)
