"""The XLA and allocator settings cnn_jax runs with, where they are set and how to override them.

For the CPU, two XLA options:

* **Convolutions are compiled by XLA's own emitter instead of being handed to YNNPACK**, which
  jax 0.10's CPU backend does by default (``__ynn_fusion`` in the optimised HLO) and whose weight
  gradients and few-channel convolutions are slow. Matmuls and reductions still go to YNNPACK
  (``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``).
* **Copy insertion uses XLA's region analysis** (``--xla_cpu_copy_insertion_use_region_analysis``).
  A train step donates its state, so each new parameter is written into the buffer of the old
  one. With its default analysis XLA:CPU keeps the old value in a copy made at the start of the
  step, for most parameters (every one of resnet18's 11M); the region analysis finds those copies
  unneeded and leaves them out. The values computed are the same, bit for bit (only where
  buffers live changes).

Both make the train steps of the built-in models faster on CPU (experiments/README.md, "Speed",
has the measurements and their results files), and the float32 gradients of every model family
stay within torch's float32 error of a float64 run (``tests/test_float32_gradients.py``). Off the
CPU they change nothing.

Where they are set:

* :func:`apply`, which ``cnn-jax`` and :func:`cnn_jax.train.fit` call first, appends both flags
  to ``XLA_FLAGS`` if JAX's backends are not initialised yet, so every program of the process (a
  user's own ``jax.jit`` too) gets them. XLA reads ``XLA_FLAGS`` once, when the first backend
  starts: call ``cnn_jax.runtime.apply()`` before anything else runs JAX. Importing cnn_jax sets
  nothing.
* cnn_jax's own compiled programs (train / eval steps of every placement but ``pmap``, the
  initialisation, the checked step) pass them as ``compiler_options`` through :func:`jit`, so
  they compile the same way whether or not :func:`apply` came first.

How to override them:

* ``CNN_JAX_XLA_DEFAULTS=0`` in the environment: cnn_jax sets nothing (XLA's own defaults).
* An ``XLA_FLAGS`` that already names one of the two options with another value: the user's
  value wins for that option, and cnn_jax's programs follow it too (it is left out of
  ``compiler_options``); the other option is still set.
* A jaxlib other than the verified 0.10.x: nothing is set (XLA aborts on a flag it does not
  know, and another release's defaults need measuring again).

:func:`settings` says what was applied and why.

**Allocator (glibc only).** XLA:CPU allocates each program's outputs and temporaries afresh on
every call. glibc's ``malloc`` serves a block of 32 MB or more with a new ``mmap`` and unmaps it
when freed, so every call page-faults all of it again. :func:`apply` therefore asks glibc
(``mallopt``) to keep freed memory for reuse: no ``mmap`` for large blocks (``M_MMAP_MAX=0``) and
no returning of the heap's top to the system (``M_TRIM_THRESHOLD`` at its maximum), so a step
reuses the pages of the last (``tests/test_runtime.py`` checks the faults; experiments/README.md,
"Speed", has what it changes). Blocks above 64 MB allocated by a thread other than the main one
still get their own ``mmap`` (glibc's per-thread heaps are at most 64 MB). Limiting glibc to one
arena (``M_ARENA_MAX=1``) would avoid those too, but then every thread's allocations share one
lock, which slows small steps, so it is not set. The cost of the setting: the process keeps its
peak heap instead of shrinking after it (:func:`release_memory` gives what is free back to the
system, e.g. between models in a long-lived process). It is process-wide: PyTorch in the same
process runs with it too
(``experiments/bench_vs_torch.py`` steps both in one process, so its ratios are not flattered).

* ``CNN_JAX_MALLOC_DEFAULTS=0`` in the environment: cnn_jax calls no ``mallopt``.
* Any of glibc's own ``MALLOC_*`` variables (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_MAX_``,
  ``MALLOC_TRIM_THRESHOLD_`` ...) or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``: the user's
  allocator configuration wins and cnn_jax changes nothing.
* Not glibc (macOS, musl): nothing is set.

:func:`malloc_settings` says what was applied and why.

**TCMalloc (opt-in; Linux, at process start).** ``CNN_JAX_ALLOCATOR=tcmalloc`` has
:func:`relaunch` start the process again with gperftools' TCMalloc preloaded (``LD_PRELOAD``)
where the machine has it (``libtcmalloc_minimal.so.4`` or ``libtcmalloc.so.4``: Debian and
Ubuntu's ``libtcmalloc-minimal4``, Fedora's ``gperftools-libs``, conda's ``gperftools``), so it
serves every ``malloc`` of the process, XLA's and PyTorch's included. It keeps the blocks a
thread frees for later allocations, whichever thread asks, so most of a step's temporaries reuse
the pages of the last step's instead of being mapped afresh (below, and the dispatch item), and
JAX keeps its asynchronous dispatch; it still returns free pages to the system over time. glibc's
options and huge pages are then not set (its heaps are unused). Whether it is faster depends on
the model and the loop, so it is opt-in (experiments/README.md, "Speed", has the measurements of
``python -m experiments.bench_dispatch``). :func:`allocator_settings` says which allocator
serves the process and why, :func:`allocator_wanted` which one a process would get,
:func:`find_tcmalloc` where the library is:

* ``CNN_JAX_ALLOCATOR=tcmalloc``: TCMalloc where found (a warning where it is not applied);
  ``CNN_JAX_ALLOCATOR=glibc`` or unset: the C library's.
* A user's own ``LD_PRELOAD``, ``MALLOC_*`` variables or ``glibc.malloc`` tunables, or
  ``CNN_JAX_MALLOC_DEFAULTS=0``: left as they are, no TCMalloc. A user's preloaded allocator
  (a library whose name has ``malloc`` in it: jemalloc, mimalloc, TCMalloc) also means no huge
  pages: glibc's heaps are not used then.

**Huge pages (glibc 2.35+, Linux, at process start).** Every block a step allocates afresh
faults its pages in, one 4 KiB page at a time: the blocks above 64 MB that a worker thread gets
(below) on every call, and any heap the first time it grows. With glibc's
``glibc.malloc.hugetlb=1`` tunable the allocator asks the kernel (``madvise``) for transparent
huge pages, 2 MiB each, for its heaps and large blocks, so the same memory faults in a few hundred
times instead of tens of thousands, and the step's memory needs fewer TLB entries. glibc reads
its tunables only when a process starts, so :func:`relaunch` re-executes the process's own
command (``sys.orig_argv``, same PID) once with ``GLIBC_TUNABLES`` extended by it (the new
process then puts the user's environment back, so that its children decide for themselves):
``cnn-jax`` and the experiments' benchmark scripts call it first thing. It does so only where
it changes something:

* glibc 2.35 or later, and the kernel's transparent huge pages in ``madvise`` mode (with
  ``always`` every large mapping gets them already; with ``never`` there are none);
* ``CNN_JAX_HUGE_PAGES=0`` or ``CNN_JAX_MALLOC_DEFAULTS=0`` in the environment: no relaunch;
* the user's own allocator configuration (the ``MALLOC_*`` variables, a ``glibc.malloc``
  tunable) wins: no relaunch (a user's ``glibc.malloc.hugetlb=1`` still gives them).

They cost memory: a heap grows in 2 MiB steps, and the kernel may compact memory to find free
huge pages (its ``defrag`` setting), which can stall an allocation on a fragmented machine.

A process that did not start through :func:`relaunch` (a notebook, a script calling
:func:`cnn_jax.train.fit`) runs without TCMalloc or huge pages unless started with
``LD_PRELOAD=<the library>`` or ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``;
:func:`allocator_settings` and :func:`huge_page_settings` say which.

**Dispatch (opt-in).** With JAX's asynchronous dispatch (its default) the CPU client runs each
program on a worker thread, and glibc serves a worker thread's allocations from a heap of at
most 64 MB: a larger block, a step's temporaries of any model beyond course scale, gets its own
``mmap`` on every call whatever the options above say, and every page of it faults again, step
after step (2 MiB at a time with huge pages, 4 KiB without). Synchronous dispatch
(``jax_cpu_enable_async_dispatch=False``) runs a single-device program on the calling thread,
whose allocations come from glibc's main heap, which the options above keep, so a step faults
none. The cost is the overlap of the host's work for the next step
with the running one, which a small model's step feels (experiments/README.md, "Speed", has both
measured: ``python -m experiments.bench_dispatch``), so it is not the default:

* ``CNN_JAX_DISPATCH=sync`` in the environment, or ``apply(dispatch='sync')``, before JAX
  initialises: JAX's CPU client runs single-device programs synchronously (``cnn-jax`` and
  :func:`cnn_jax.train.fit` call :func:`apply`, so the variable reaches them).
  ``CNN_JAX_DISPATCH=async`` (or unset): JAX's default.
* A ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` in the environment: the user's value wins, and
  :func:`dispatch_settings` reports it.
* Programs over several devices (``pmap``, sharded steps) stay asynchronous: JAX applies the
  option to single-device programs only.

:func:`dispatch_settings` says what was applied and why.

:func:`apply` is idempotent: the first call decides, later calls return what it did.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

XLA_SWITCH = "CNN_JAX_XLA_DEFAULTS"
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
COPY_OPTION = "xla_cpu_copy_insertion_use_region_analysis"
# Each option: its value in ``XLA_FLAGS`` and in ``compiler_options``. The YNN flag form is
# relative to XLA's default set; compiler_options needs the whole set. jaxlib 0.10's default is
# {INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION, REDUCE} (its ``.debug_options`` dump under
# ``--xla_dump_to`` lists exactly the flag's result below), so both forms mean the same.
_OPTION_VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
_OPTIONS: dict[str, tuple[str, str | bool]] = {
    YNN_OPTION: ("-individual_convolution", _OPTION_VALUE),
    COPY_OPTION: ("true", True),
}
_FLAGS = {name: f"--{name}={flag}" for name, (flag, _) in _OPTIONS.items()}
_FLAG = " ".join(_FLAGS.values())
VERIFIED_JAXLIB = ("0.10.",)


def _switched_off(environ: dict[str, str] | Any, name: str) -> bool:
    """Whether the environment turns cnn_jax's setting ``name`` off (``0``/``false``/``no``/
    ``off``)."""
    return environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class XlaSettings:
    """The XLA settings of this process (:func:`settings`).

    ``compiler_options``: passed to cnn_jax's own ``jax.jit`` calls (empty: none).
    ``in_xla_flags``: whether ``XLA_FLAGS`` carries them (:func:`apply` before JAX initialised),
    so that every program of the process, the user's included, compiles with them.
    ``reason``: one line saying why.
    """

    compiler_options: dict[str, str | bool]
    in_xla_flags: bool
    reason: str


def _decide(environ: dict[str, str] | Any, jaxlib_version: str, initialised: bool) -> XlaSettings:
    """The settings for an environment, a jaxlib version and whether JAX's backends are up."""
    flags = environ.get("XLA_FLAGS", "")
    if _switched_off(environ, XLA_SWITCH):
        return XlaSettings({}, False, f"{XLA_SWITCH}={environ[XLA_SWITCH]}: XLA's defaults")
    users = flags
    for flag in _FLAGS.values():
        users = users.replace(flag, "")
    theirs = [name for name in _OPTIONS if name in users]
    note = "".join(f"; XLA_FLAGS sets {name}: the user's value" for name in theirs)
    if len(theirs) == len(_OPTIONS):
        return XlaSettings({}, False, note.removeprefix("; "))
    if not jaxlib_version.startswith(VERIFIED_JAXLIB):
        return XlaSettings(
            {}, False, f"jaxlib {jaxlib_version} is not one of {VERIFIED_JAXLIB}: XLA's defaults"
        )
    options = {name: value for name, (_, value) in _OPTIONS.items() if name not in theirs}
    if all(_FLAGS[name] in flags for name in options):
        return XlaSettings(options, True, "XLA_FLAGS extended before JAX initialised" + note)
    if initialised:
        return XlaSettings(
            options,
            False,
            "JAX was initialised before cnn_jax.runtime.apply(): cnn_jax's own programs only"
            + note,
        )
    return XlaSettings(
        options,
        False,
        "cnn_jax.runtime.apply() not called yet: cnn_jax's own programs only" + note,
    )


def _backends_initialised() -> bool:
    if "jax" not in sys.modules:  # nothing can have started a backend
        return False
    from jax._src import xla_bridge

    probe = getattr(xla_bridge, "backends_are_initialized", None)
    return True if probe is None else bool(probe())  # unknown: assume too late


def _jaxlib_version() -> str:
    import jaxlib.version

    return jaxlib.version.__version__


def settings() -> XlaSettings:
    """The XLA setting as it stands (see the module docstring)."""
    return _decide(os.environ, _jaxlib_version(), _backends_initialised())


def _apply_xla() -> XlaSettings:
    """Extends ``XLA_FLAGS`` when the setting applies and JAX has not started (once: the flags,
    once there, read as already applied)."""
    initialised = _backends_initialised()
    decided = _decide(os.environ, _jaxlib_version(), initialised)
    if decided.compiler_options and not decided.in_xla_flags and not initialised:
        flags = os.environ.get("XLA_FLAGS", "")
        missing = [_FLAGS[name] for name in decided.compiler_options if _FLAGS[name] not in flags]
        os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
        return settings()
    return decided


def compiler_options() -> dict[str, str | bool]:
    """The ``compiler_options`` cnn_jax's programs compile with (a copy; may be empty)."""
    return dict(settings().compiler_options)


def jit(fun: Callable, **kwargs: Any) -> Callable:
    """``jax.jit(fun, **kwargs)`` with cnn_jax's :func:`compiler_options` (explicit ones win)."""
    import jax

    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)


# --------------------------------------------------------------------------------------------------
# glibc's allocator (see the module docstring).
# --------------------------------------------------------------------------------------------------

MALLOC_SWITCH = "CNN_JAX_MALLOC_DEFAULTS"
# mallopt parameter numbers from glibc's <malloc.h>, and the values cnn_jax sets.
_MALLOPT_PARAMS = {"M_TRIM_THRESHOLD": -1, "M_MMAP_MAX": -4}
MALLOC_OPTIONS = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**31 - 1}
_GLIBC_MALLOC_ENV = (
    "MALLOC_ARENA_MAX",
    "MALLOC_ARENA_TEST",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
)


def _tunables(environ: dict[str, str] | Any) -> list[str]:
    """The ``name=value`` entries of ``GLIBC_TUNABLES``."""
    return [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t.strip()]


def _users_malloc(environ: dict[str, str] | Any) -> list[str]:
    """The variables through which the user configured glibc's allocator."""
    users = [name for name in _GLIBC_MALLOC_ENV if name in environ]
    if any(t.startswith("glibc.malloc") for t in _tunables(environ)):
        users.append("GLIBC_TUNABLES")
    return users


@dataclasses.dataclass(frozen=True)
class MallocSettings:
    """What :func:`apply` did to glibc's allocator.

    ``options``: the ``mallopt`` parameters set, by name (empty: none). ``reason``: why.
    """

    options: dict[str, int]
    reason: str


def _decide_malloc(
    environ: dict[str, str] | Any, glibc_version: str | None, tcmalloc: str | None = None
) -> MallocSettings:
    """The allocator options for an environment, a glibc version (``None``: not glibc) and the
    TCMalloc library serving ``malloc`` (``None``: none)."""
    if tcmalloc is not None:
        return MallocSettings({}, f"TCMalloc ({tcmalloc}) serves malloc: glibc's options unused")
    if _switched_off(environ, MALLOC_SWITCH):
        return MallocSettings(
            {}, f"{MALLOC_SWITCH}={environ[MALLOC_SWITCH]}: the allocator's defaults"
        )
    if glibc_version is None:
        return MallocSettings({}, "not glibc: the allocator's defaults")
    users = _users_malloc(environ)
    if users:
        return MallocSettings({}, f"{', '.join(users)} set: the user's allocator configuration")
    return MallocSettings(
        dict(MALLOC_OPTIONS), f"glibc {glibc_version}: freed memory kept for reuse"
    )


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (``mallopt`` and ``gnu_get_libc_version``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
        libc.mallopt  # noqa: B018 (an AttributeError here means no mallopt)
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    return libc


@functools.cache  # once per process: glibc's options cannot be read back
def _apply_malloc() -> MallocSettings:
    libc = _glibc()
    decided = _decide_malloc(os.environ, _glibc_version(), _loaded_tcmalloc())
    refused = [
        name
        for name, value in decided.options.items()
        if libc.mallopt(_MALLOPT_PARAMS[name], value) != 1
    ]
    if refused:  # glibc refuses out-of-range values; say so rather than claim them
        kept = {k: v for k, v in decided.options.items() if k not in refused}
        return MallocSettings(kept, f"{decided.reason}; glibc refused {', '.join(refused)}")
    return decided


def malloc_settings() -> MallocSettings:
    """What :func:`apply` did to glibc's allocator (nothing before it is called)."""
    if not _apply_malloc.cache_info().currsize:
        return MallocSettings({}, "cnn_jax.runtime.apply() not called: the allocator's defaults")
    return _apply_malloc()


def release_memory() -> bool:
    """Gives the memory glibc holds free back to the system (``malloc_trim(0)``: every arena,
    its top and the free pages inside it), and TCMalloc's where it serves ``malloc``
    (``MallocExtension_ReleaseFreeMemory``); ``False`` where the C library is not glibc.

    With :func:`apply`'s allocator options a process keeps its peak heap, which costs nothing
    in a training run (the next step reuses it) but adds up in a process that builds one large
    model after another (a notebook, a test session): call this between them. Memory still in
    use (live arrays, JAX's compiled programs) is not touched.
    """
    libc = _glibc()
    if libc is None:
        return False
    if _loaded_tcmalloc():  # TCMalloc's own call (its C API), where it serves malloc
        release = getattr(libc, "MallocExtension_ReleaseFreeMemory", None)
        if release is not None:
            release()
    libc.malloc_trim(0)
    return True


# --------------------------------------------------------------------------------------------------
# Transparent huge pages for glibc's heaps (see the module docstring).
# --------------------------------------------------------------------------------------------------

HUGE_PAGES_SWITCH = "CNN_JAX_HUGE_PAGES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
# Set in the environment of the process relaunch() starts, to the user's own values of the
# variables it sets (JSON: null where there were none); that process takes it out again and
# restores theirs, so that its children decide for themselves.
RELAUNCHED = "CNN_JAX_RELAUNCHED"
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
_HUGETLB_SINCE = (2, 35)  # the first glibc with the glibc.malloc.hugetlb tunable


@dataclasses.dataclass(frozen=True)
class HugePageSettings:
    """Whether glibc's heaps ask the kernel for transparent huge pages (``madvise``), and why
    (:func:`huge_page_settings`).

    ``enabled``: in :func:`_decide_huge_pages`, whether the process should run with them; in
    :func:`huge_page_settings`, whether this process does. ``reason``: one line.
    """

    enabled: bool
    reason: str


def _thp_mode(path: str = _THP_ENABLED) -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``; ``None``
    where the kernel has none)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def _glibc_at_least(version: str, wanted: tuple[int, int]) -> bool:
    try:
        return tuple(int(part) for part in version.split(".")[:2]) >= wanted
    except ValueError:
        return False


def _decide_huge_pages(
    environ: dict[str, str] | Any, glibc_version: str | None, thp_mode: str | None
) -> HugePageSettings:
    """Whether a process with this environment, glibc (``None``: not glibc) and kernel mode
    should run with glibc's huge pages tunable."""
    users = _users_malloc(environ)
    if users:  # what the user's tunables do, whatever cnn_jax's switches say
        tunables = _tunables(environ)
        on = "glibc.malloc.hugetlb=2" in tunables or (  # hugetlbfs pages
            HUGE_PAGES_TUNABLE in tunables and thp_mode == "madvise"  # glibc's madvise
        )
        return HugePageSettings(on, f"{', '.join(users)} set: the user's allocator configuration")
    for switch in (MALLOC_SWITCH, HUGE_PAGES_SWITCH):
        if _switched_off(environ, switch):
            return HugePageSettings(False, f"{switch}={environ[switch]}: not asked for")
    if glibc_version is None:
        return HugePageSettings(False, "not glibc: not asked for")
    if not _glibc_at_least(glibc_version, _HUGETLB_SINCE):
        return HugePageSettings(False, f"glibc {glibc_version} has no glibc.malloc.hugetlb")
    if thp_mode != "madvise":
        why = {
            None: "the kernel has no transparent huge pages",
            "always": "the kernel gives every large mapping huge pages already ('always')",
            "never": "the kernel's transparent huge pages are off ('never')",
        }.get(thp_mode, f"the kernel's transparent huge page mode is {thp_mode!r}")
        return HugePageSettings(False, f"{why}: not asked for")
    return HugePageSettings(
        True, f"glibc {glibc_version}, kernel mode 'madvise': {HUGE_PAGES_TUNABLE} wanted"
    )


def _glibc_version() -> str | None:
    libc = _glibc()
    return None if libc is None else libc.gnu_get_libc_version().decode()


def huge_pages_wanted(environ: dict[str, str] | Any) -> HugePageSettings:
    """Whether a process started with ``environ`` on this machine (its glibc, its kernel's
    transparent huge page mode, the TCMalloc it has or not) should run with glibc's huge pages
    tunable, and why."""
    decided = _decide_huge_pages(environ, _glibc_version(), _thp_mode())
    if not decided.enabled or _users_malloc(environ):
        return decided
    users = _users_allocator(environ)
    if users:
        return HugePageSettings(False, f"LD_PRELOAD={' '.join(users)}: the user's allocator")
    allocator = allocator_wanted(environ)
    if allocator.library:
        return HugePageSettings(False, f"TCMalloc ({allocator.library}) to serve malloc instead")
    return decided


# --------------------------------------------------------------------------------------------------
# TCMalloc preloaded at process start (see the module docstring).
# --------------------------------------------------------------------------------------------------

ALLOCATOR_SWITCH = "CNN_JAX_ALLOCATOR"
ALLOCATORS = ("tcmalloc", "glibc")
# gperftools' TCMalloc as Linux distributions ship it (Debian/Ubuntu: libtcmalloc-minimal4 or
# google-perftools; Fedora: gperftools-libs; conda: gperftools), the minimal build first.
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
# Without it TCMalloc prints a line with a stack for each allocation of 1 GiB or more (a large
# model's temporaries); set only where the user has not.
_TCMALLOC_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**62)}


@dataclasses.dataclass(frozen=True)
class AllocatorSettings:
    """Which allocator serves ``malloc``, and why (:func:`allocator_settings`).

    ``name``: ``'tcmalloc'``, ``'glibc'`` (the C library's, whatever it is) or ``'other'`` (an
    allocator the user preloaded). ``library``: the
    TCMalloc library preloaded (in :func:`allocator_wanted`: the one to preload), else ``None``.
    ``reason``: one line.
    """

    name: str
    library: str | None
    reason: str


def _library_dirs() -> list[str]:
    """Where :func:`find_tcmalloc` looks: ``LD_LIBRARY_PATH``, the environment's own ``lib``
    (conda), then the system's library folders (multiarch, then ``lib64``, then ``lib``)."""
    import sysconfig

    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs.append(os.path.join(sys.prefix, "lib"))
    for root in ("/usr/local/lib", "/usr/lib", "/lib"):
        if multiarch:
            dirs.append(os.path.join(root, multiarch))
        dirs += [f"{root}64", root]  # lib64 first: on lib64 systems lib holds 32-bit builds
    return list(dict.fromkeys(dirs))


@functools.cache
def find_tcmalloc() -> str | None:
    """The path of a TCMalloc library on this machine (:data:`TCMALLOC_NAMES`), or ``None``;
    only on Linux."""
    if not sys.platform.startswith("linux"):
        return None
    for folder in _library_dirs():
        for name in TCMALLOC_NAMES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return os.path.realpath(path)
    return None


def _unknown_allocator(environ: dict[str, str] | Any) -> str | None:
    """The error for an unknown ``CNN_JAX_ALLOCATOR`` (``None``: known or unset)."""
    asked = environ.get(ALLOCATOR_SWITCH, "").strip().lower()
    if asked and asked not in ALLOCATORS:
        return f"{ALLOCATOR_SWITCH}={environ[ALLOCATOR_SWITCH]!r}: expected one of {ALLOCATORS}"
    return None


def _asked_for_tcmalloc(environ: dict[str, str] | Any) -> bool:
    return environ.get(ALLOCATOR_SWITCH, "").strip().lower() == "tcmalloc"


def _users_allocator(environ: dict[str, str] | Any) -> list[str]:
    """The libraries of the user's ``LD_PRELOAD`` that look like an allocator (``malloc`` in
    the name: jemalloc, mimalloc, TCMalloc)."""
    preload = environ.get("LD_PRELOAD", "").replace(":", " ").split()
    return [lib for lib in preload if "malloc" in os.path.basename(lib)]


def _decide_allocator(
    environ: dict[str, str] | Any, found: str | None, glibc_version: str | None
) -> AllocatorSettings:
    """Which allocator a process started with ``environ`` should have, given the TCMalloc
    library found on the machine (``None``: none) and its glibc (``None``: not glibc). An
    unknown ``CNN_JAX_ALLOCATOR`` decides glibc, saying so (:func:`relaunch` refuses it)."""
    unknown = _unknown_allocator(environ)
    if unknown:
        return AllocatorSettings("glibc", None, unknown)
    if not _asked_for_tcmalloc(environ):
        return AllocatorSettings(
            "glibc", None, f"the default (glibc's); {ALLOCATOR_SWITCH}=tcmalloc preloads TCMalloc"
        )
    if _switched_off(environ, MALLOC_SWITCH):
        return AllocatorSettings("glibc", None, f"{MALLOC_SWITCH}={environ[MALLOC_SWITCH]}")
    if environ.get("LD_PRELOAD", "").strip():
        return AllocatorSettings("glibc", None, "LD_PRELOAD set: the user's libraries alone")
    users = _users_malloc(environ)
    if users:
        return AllocatorSettings(
            "glibc", None, f"{', '.join(users)} set: the user's allocator configuration"
        )
    if glibc_version is None:
        return AllocatorSettings("glibc", None, "not glibc on Linux: the C library's allocator")
    if found is None:
        return AllocatorSettings(
            "glibc",
            None,
            f"asked for, but no TCMalloc library found ({' or '.join(TCMALLOC_NAMES)})",
        )
    return AllocatorSettings("tcmalloc", found, f"TCMalloc ({found}) found: relaunch() preloads it")


def allocator_wanted(environ: dict[str, str] | Any) -> AllocatorSettings:
    """Which allocator a process started with ``environ`` on this machine should have, and
    why (``library``: the TCMalloc library :func:`relaunch` would preload)."""
    return _decide_allocator(environ, find_tcmalloc(), _glibc_version())


def _loaded_tcmalloc(maps: str = "/proc/self/maps") -> str | None:
    """The path of the TCMalloc library mapped into this process, or ``None``."""
    try:
        with open(maps) as f:
            for line in f:
                fields = line.split(maxsplit=5)  # the sixth, where present, is the path
                path = fields[5].strip().removesuffix(" (deleted)") if len(fields) == 6 else ""
                if os.path.basename(path).startswith("libtcmalloc"):
                    return path
    except OSError:
        return None
    return None


def allocator_settings() -> AllocatorSettings:
    """Which allocator serves this process's ``malloc``, and why."""
    loaded = _loaded_tcmalloc()
    if loaded:
        by = (
            "preloaded by relaunch() at this process's start"
            if "LD_PRELOAD" in _relaunched_with
            else "preloaded by the user (LD_PRELOAD)"
        )
        return AllocatorSettings("tcmalloc", loaded, f"TCMalloc ({loaded}) {by}")
    if "LD_PRELOAD" in _relaunched_with:
        preloaded = _relaunched_with["LD_PRELOAD"]
        return AllocatorSettings(
            "glibc",
            None,
            f"relaunch() preloaded {preloaded}, but the dynamic linker did not map it",
        )
    users = _users_allocator(os.environ)
    if users:
        return AllocatorSettings("other", None, f"LD_PRELOAD={' '.join(users)}: the user's")
    wanted = allocator_wanted(os.environ)
    if wanted.library:
        return AllocatorSettings(
            "glibc", None, "not started through relaunch() (cnn-jax, the benchmark scripts)"
        )
    return wanted


# --------------------------------------------------------------------------------------------------
# The re-execution that gives a process what only its start can.
# --------------------------------------------------------------------------------------------------

# The variables relaunch() set for the process it started (in that process; empty elsewhere).
_relaunched_with: dict[str, str] = {}
_relaunched: list[bool] = []  # [True] once this process was started by relaunch()


def _start_environment(environ: dict[str, str] | Any) -> dict[str, str]:
    """The variables :func:`relaunch` sets for a process started with ``environ`` (empty:
    nothing to do): TCMalloc where asked for and :func:`allocator_wanted` finds it, else glibc's
    huge pages where :func:`huge_pages_wanted` says so (with TCMalloc glibc's heaps are unused)."""
    allocator = allocator_wanted(environ)
    if allocator.library:
        quiet = {k: v for k, v in _TCMALLOC_QUIET.items() if k not in environ}
        return {"LD_PRELOAD": allocator.library, **quiet}
    if huge_pages_wanted(environ).enabled and not _users_malloc(environ):
        return {"GLIBC_TUNABLES": ":".join([*_tunables(environ), HUGE_PAGES_TUNABLE])}
    return {}


def relaunch() -> None:
    """Re-executes this process's command (``sys.orig_argv``, same interpreter, same PID) with
    what only a process's start can give: TCMalloc preloaded (``LD_PRELOAD``) where
    ``CNN_JAX_ALLOCATOR=tcmalloc`` asks for it and :func:`allocator_wanted` finds it, else
    ``GLIBC_TUNABLES`` extended by ``glibc.malloc.hugetlb=1`` where :func:`huge_pages_wanted`
    says so. Returns where there is nothing to do (or the re-execution failed: the process goes
    on without). In the process it started, it returns at once, having put the environment back
    as the user had it, so that child processes decide for themselves (a
    ``CNN_JAX_HUGE_PAGES=0`` given to a child is honoured).

    The dynamic linker and glibc read these only when a process starts, so this is for a
    program's entry point, before it has done anything it would do twice: ``cnn-jax`` and the
    experiments' benchmark scripts call it first thing. Never call it from code that a running
    program imports (a notebook, a test): it replaces the process. Nothing happens for a
    program read from standard input or an embedded interpreter (no command to run again).
    ``CNN_JAX_HUGE_PAGES=0`` or ``CNN_JAX_MALLOC_DEFAULTS=0`` in the environment turn the huge
    pages off. Raises ``ValueError`` for an unknown ``CNN_JAX_ALLOCATOR``, and warns where it
    asks for TCMalloc and does not get it (and why).
    """
    if RELAUNCHED in os.environ:  # the started process: never again, whatever else it sees
        try:
            theirs = json.loads(os.environ.pop(RELAUNCHED))
        except ValueError:
            theirs = {}
        theirs = theirs if isinstance(theirs, dict) else {}
        for name, value in theirs.items():
            _relaunched_with[name] = os.environ.get(name, "")
            if isinstance(value, str):
                os.environ[name] = value
            else:
                os.environ.pop(name, None)
        _relaunched[:] = [True]
        return
    if _relaunched:  # relaunched already: a later call changes nothing
        return
    if not sys.orig_argv or sys.argv[0] in ("", "-"):  # no command to run again
        return
    unknown = _unknown_allocator(os.environ)
    if unknown:
        raise ValueError(unknown)
    allocator = allocator_wanted(os.environ)
    if allocator.library is None and _asked_for_tcmalloc(os.environ):
        warnings.warn(f"{ALLOCATOR_SWITCH}=tcmalloc not applied: {allocator.reason}", stacklevel=2)
    changes = _start_environment(os.environ)
    if not changes:
        return
    env = {**os.environ, **changes}
    env[RELAUNCHED] = json.dumps({name: os.environ.get(name) for name in changes})
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except (OSError, ValueError):
        return


def huge_page_settings() -> HugePageSettings:
    """Whether glibc's heaps ask this process's kernel for transparent huge pages, and why."""
    tcmalloc = _loaded_tcmalloc()
    if tcmalloc:
        return HugePageSettings(False, f"TCMalloc ({tcmalloc}) serves malloc: glibc's heaps unused")
    if "GLIBC_TUNABLES" in _relaunched_with:
        reason = f"GLIBC_TUNABLES={HUGE_PAGES_TUNABLE} set by relaunch() at this process's start"
        return HugePageSettings(True, reason)
    if _start_environment(os.environ):
        return HugePageSettings(False, "not started through relaunch() (cnn-jax, the experiments)")
    return huge_pages_wanted(os.environ)


# --------------------------------------------------------------------------------------------------
# JAX's dispatch on the CPU (see the module docstring).
# --------------------------------------------------------------------------------------------------

DISPATCH_SWITCH = "CNN_JAX_DISPATCH"
DISPATCH_MODES = ("async", "sync")
_JAX_DISPATCH_ENV = "JAX_CPU_ENABLE_ASYNC_DISPATCH"


@dataclasses.dataclass(frozen=True)
class DispatchSettings:
    """How JAX's CPU client dispatches single-device programs (:func:`dispatch_settings`).

    ``synchronous``: whether they run on the calling thread (the dispatch in force, whoever
    set it). ``reason``: one line saying why.
    """

    synchronous: bool
    reason: str


# JAX's reading of a boolean variable (jax._src.config's ``bool_env``).
_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")


def _check_dispatch(mode: Any, where: str) -> str:
    if not isinstance(mode, str) or mode.strip().lower() not in DISPATCH_MODES:
        raise ValueError(f"{where} must be one of {DISPATCH_MODES}, got {mode!r}")
    return mode.strip().lower()


def _decide_dispatch(
    environ: dict[str, str] | Any, requested: str | None, initialised: bool
) -> DispatchSettings:
    """The dispatch for an environment, an ``apply(dispatch=...)`` argument (``None``: none) and
    whether JAX's backends are up. JAX's own variable wins; then the argument; then
    ``CNN_JAX_DISPATCH`` (empty: unset)."""
    if requested is not None:
        mode = _check_dispatch(requested, "apply(dispatch=...)")
        source = f"apply(dispatch={requested!r})"
    elif environ.get(DISPATCH_SWITCH, "").strip():
        mode = _check_dispatch(environ[DISPATCH_SWITCH], DISPATCH_SWITCH)
        source = f"{DISPATCH_SWITCH}={environ[DISPATCH_SWITCH]}"
    else:
        mode, source = "async", ""
    theirs = environ.get(_JAX_DISPATCH_ENV)
    if theirs is not None and theirs.strip().lower() in _TRUE + _FALSE:
        synchronous = theirs.strip().lower() in _FALSE
        return DispatchSettings(synchronous, f"{_JAX_DISPATCH_ENV}={theirs} set: the user's value")
    if mode == "async":
        default = "JAX's default (asynchronous)"
        return DispatchSettings(False, f"{source}: {default}" if source else default)
    if initialised:
        return DispatchSettings(
            False, f"{source}, but JAX was initialised before cnn_jax.runtime.apply(): unchanged"
        )
    return DispatchSettings(True, f"{source}: single-device CPU programs run on the calling thread")


_dispatch_applied: list[DispatchSettings] = []  # the decision in force, once made


def _apply_dispatch(requested: str | None) -> DispatchSettings:
    """Decides once; a later call asking for another dispatch changes it while JAX has not
    started, and warns (changing nothing) once it has."""
    if _dispatch_applied and (
        requested is None
        or (_check_dispatch(requested, "apply(dispatch=...)") == "sync")
        is _dispatch_applied[0].synchronous
    ):
        return _dispatch_applied[0]
    initialised = _backends_initialised()
    if _dispatch_applied and initialised:
        import warnings

        warnings.warn(
            f"apply(dispatch={requested!r}) after JAX started changes nothing; the dispatch "
            f"stays as decided first ({_dispatch_applied[0].reason})",
            RuntimeWarning,
            stacklevel=3,
        )
        return _dispatch_applied[0]
    decided = _decide_dispatch(os.environ, requested, initialised)
    was_synchronous = bool(_dispatch_applied) and _dispatch_applied[0].synchronous
    if (
        not initialised
        and _JAX_DISPATCH_ENV not in os.environ
        and (decided.synchronous or was_synchronous)  # JAX's own setting otherwise untouched
    ):
        import jax

        jax.config.update("jax_cpu_enable_async_dispatch", not decided.synchronous)
    _dispatch_applied[:] = [decided]
    return decided


def dispatch_settings() -> DispatchSettings:
    """What :func:`apply` decided for JAX's CPU dispatch (nothing before it is called)."""
    if not _dispatch_applied:
        return DispatchSettings(False, "cnn_jax.runtime.apply() not called: JAX's default")
    return _dispatch_applied[0]


def apply(dispatch: str | None = None) -> tuple[XlaSettings, MallocSettings]:
    """Applies cnn_jax's process-wide settings: the XLA flag (in ``XLA_FLAGS``, if JAX has not
    started yet), glibc's allocator options and, where asked (``dispatch='sync'`` or
    ``CNN_JAX_DISPATCH=sync``), JAX's synchronous CPU dispatch (see the module docstring).
    ``cnn-jax`` and :func:`cnn_jax.train.fit` call it; call it yourself first thing for your own
    programs. Idempotent: the first call decides, later calls change nothing and return what is
    in force, except that a later ``dispatch`` other than the one in force changes it while JAX
    has not started and warns once it has (:func:`dispatch_settings` says what the dispatch is).
    Raises ``ValueError`` for an unknown dispatch, from the argument or ``CNN_JAX_DISPATCH``.
    """
    _apply_dispatch(dispatch)
    return _apply_xla(), _apply_malloc()
