"""The test session's shared XLA compilation cache (``tests/conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import jax
import pytest

_PROGRAM = """
import jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
)
x = jax.ShapeDtypeStruct((3,), jnp.float32)  # no array: the one program compiled is this one
jax.jit(lambda x: jnp.tanh(x) * {constant}).lower(x).compile()
print(len(hits))
"""


def test_processes_started_by_a_test_share_the_sessions_cache():
    """The second of two processes compiling the same program loads it from the session's cache,
    which this process's JAX uses too."""
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not path:
        pytest.skip("JAX_COMPILATION_CACHE_DIR set empty: the session runs without the cache")
    assert jax.config.jax_compilation_cache_dir == path
    assert os.path.isdir(path)
    program = _PROGRAM.format(constant=f"{uuid.uuid4().int % 10**6}.0")  # new to the cache

    def hits() -> int:
        env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # a user's too
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, check=True, env=env
        )
        return int(done.stdout.split()[-1])

    assert [hits(), hits()] == [0, 1]
