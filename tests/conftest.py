"""Fixtures shared by the tests (helpers live in :mod:`cnn_jax.testing`)."""

from __future__ import annotations

import os
import shutil
import tempfile

import jax

import cnn_jax.runtime

# cnn_jax's process-wide settings, as `cnn-jax` and `fit` apply them; before JAX's first use.
cnn_jax.runtime.apply()
# Two CPU devices for the data-parallel tests (pmap / sharding); must precede JAX's first use.
jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_XLA_CACHE = "JAX_COMPILATION_CACHE_DIR"
_MIN_SECONDS = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def pytest_configure(config):
    """One XLA compilation cache for the whole test session: the two xdist workers and every
    process a test starts (``cnn-jax`` runs, notebook kernels, the multi-process peers) compile
    the same small steps again and again, and load them from it instead. It starts empty and is
    deleted at the end, so a session's result never depends on an earlier one; the cache key
    holds the program, the XLA flags and the devices, so a hit runs the same executable. jax
    writes an entry in place: a process that reads one while another is writing it, or after a
    process was killed writing it, warns and compiles afresh (the fault tests kill their runs at
    moments when no compilation is under way). jax's file lock around reads and writes comes
    only with a size limit, whose eviction scans the whole directory on every write: thousands of
    entries make a session quadratic, so no limit is set. Setting ``JAX_COMPILATION_CACHE_DIR``
    yourself (empty: no cache) overrides all of it: your directory is used as you configured
    jax, not emptied, not deleted.

    The process that starts the session sets it up in the environment, which the xdist workers
    and every later process inherit (their JAX reads it when imported)."""
    if _XLA_CACHE in os.environ:  # the user's choice, or a worker of this session
        return
    path = config._cnn_jax_xla_cache = tempfile.mkdtemp(prefix="cnn_jax_xla_cache_")
    # Every program, however fast it compiles: the steps of a test's runs are small.
    settings = {_XLA_CACHE: path, _MIN_SECONDS: 0.0}
    config._cnn_jax_environ_before = {name: os.environ.get(name) for name in settings}
    os.environ.update({name: str(value) for name, value in settings.items()})
    for name, value in settings.items():  # this process's JAX has read its environment already
        jax.config.update(name.lower(), value)


def pytest_unconfigure(config):
    """Deletes the session's cache and gives the environment back as it was, so a later session
    in the same process (``pytest.main``) starts its own."""
    for name, value in getattr(config, "_cnn_jax_environ_before", {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    path = getattr(config, "_cnn_jax_xla_cache", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    """chex counts traces per code location; parametrized tests must not share counts."""
    import chex

    chex.clear_trace_counter()
    yield


# Above this resident size a test worker gives its freed heap back after a test.
_RELEASE_ABOVE_BYTES = 2 << 30


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture(autouse=True)
def _release_memory():
    """With cnn_jax's allocator options a process keeps its peak heap: a worker that checked a
    VGG would hold that check's peak (its float64 twin, ``zoo.float64_twin_gb``) through every
    later test. After a test that left the worker large, give the freed memory back (not after
    every test: the next one would page-fault its memory in afresh)."""
    yield
    resident = _resident_bytes()
    if resident is None or resident > _RELEASE_ABOVE_BYTES:
        cnn_jax.runtime.release_memory()


@pytest.fixture(scope="session", autouse=True)
def _isolated_tfds_data_dir(tmp_path_factory):
    """Datasets prepared by tests (the embedded digits) go to a temporary tfds data_dir."""
    import os

    previous = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))
    yield
    if previous is None:
        os.environ.pop("TFDS_DATA_DIR", None)
    else:
        os.environ["TFDS_DATA_DIR"] = previous


@pytest.fixture(scope="session")
def digits():
    from cnn_jax import data

    return data.load("digits")
