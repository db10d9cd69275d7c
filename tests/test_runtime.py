"""cnn_jax.runtime: the XLA settings cnn_jax compiles with, where they apply, how they are
overridden.

Each scenario runs in a fresh interpreter (XLA reads ``XLA_FLAGS`` once per process) and reports
whether XLA handed any convolution to YNNPACK in three programs: a plain ``jax.jit`` (the user's
own code), one through ``cnn_jax.runtime.jit`` and the train step of ``cnn_jax.train``'s
single-device placement, and how many of the train step's inputs it copies (the copy-insertion
option). Importing cnn_jax sets nothing; ``cnn_jax.runtime.apply()`` (which
``cnn-jax`` and ``fit`` call) sets what is process-wide.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from cnn_jax import runtime
from experiments.record import copied_inputs


def ynn_convolutions(text: str) -> int:
    """How many YNNPACK fusions of a compiled program's text hold a convolution."""
    called = set(re.findall(r"ynn_fusion[.\d]* = .*?calls=%([\w.-]+)", text))
    blocks = re.findall(r"^%([\w.-]+) .*?\{\n(.*?)^\}", text, re.S | re.M)
    return sum(name in called and "convolution(" in body for name, body in blocks)


_PROBE = textwrap.dedent(
    """
    import json, re, sys
    if sys.argv[1] == "jax-first":
        import jax
        jax.jit(lambda a: a + 1)(1.0)  # JAX's backend starts before cnn_jax is imported
    import jax, jax.numpy as jnp, optax
    from jax import lax
    import cnn_jax
    from cnn_jax import models, runtime, train
    from cnn_jax.train import parallel

    if sys.argv[1] != "no-apply":
        applied = runtime.apply()
        assert runtime.apply() == applied  # idempotent

    {helper}
    x, w = jnp.ones((32, 16, 16, 8)), jnp.ones((16, 8, 3, 3))
    def loss(x, w):
        dn = ("NHWC", "OIHW", "NHWC")
        return jnp.sum(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn) ** 2)
    grad = jax.grad(loss, argnums=(0, 1))
    model = models.create("cifar_cnn", num_classes=10, in_channels=3)
    state = train.create_train_state(
        model, optax.sgd(0.1), jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))
    )
    batch = {"image": jnp.zeros((8, 32, 32, 3)), "label": jnp.zeros((8,), jnp.int32)}
    step = parallel.SingleDevice({}).train_step
    step_text = step.lower(state, batch).compile().as_text()
    s = runtime.settings()
    print(json.dumps({
        "plain": ynn_convolutions(jax.jit(grad).lower(x, w).compile().as_text()),
        "runtime": ynn_convolutions(runtime.jit(grad).lower(x, w).compile().as_text()),
        "train_step": ynn_convolutions(step_text),
        "state_copies": copied_inputs(step_text),
        "in_xla_flags": s.in_xla_flags,
        "options": s.compiler_options,
        "reason": s.reason,
    }))
    """
).replace("{helper}", inspect.getsource(ynn_convolutions) + inspect.getsource(copied_inputs))


def _run_probe(code: str, args: list[str], drop: tuple[str, ...], env: dict[str, str]) -> dict:
    """Run ``code`` in a fresh interpreter without the ``drop`` variables, plus ``env``; return
    the JSON of its last line."""
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe(order: str = "apply-first", **env: str) -> dict:
    return _run_probe(_PROBE, [order], ("XLA_FLAGS", runtime.XLA_SWITCH), env)


@pytest.fixture(scope="module")
def xla_default() -> dict:
    return _probe(CNN_JAX_XLA_DEFAULTS="0")


def test_xla_default_hands_convolutions_to_ynnpack(xla_default):
    """The baseline the setting changes: without it every program has YNNPACK convolutions (else
    the probe below could not tell the setting applied from it doing nothing)."""
    assert xla_default["plain"] > 0 and xla_default["runtime"] > 0 and xla_default["train_step"] > 0
    assert xla_default["options"] == {} and not xla_default["in_xla_flags"]
    assert runtime.XLA_SWITCH in xla_default["reason"]
    assert xla_default["state_copies"] > 0  # the copies the copy-insertion option leaves out


def test_apply_first_applies_to_every_program():
    got = _probe()
    assert got["in_xla_flags"], got["reason"]
    assert got["plain"] == got["runtime"] == got["train_step"] == 0
    assert got["state_copies"] == 0
    assert got["options"] == {runtime.YNN_OPTION: runtime._OPTION_VALUE, runtime.COPY_OPTION: True}


def test_import_alone_sets_nothing_process_wide(xla_default):
    """Without ``apply()`` a user's own programs keep XLA's default; cnn_jax's own programs still
    compile with the setting (it is theirs, not the process's)."""
    got = _probe("no-apply")
    assert not got["in_xla_flags"] and "cnn_jax's own programs only" in got["reason"]
    assert got["runtime"] == got["train_step"] == got["state_copies"] == 0
    assert got["plain"] == xla_default["plain"] > 0


def test_jax_first_still_applies_to_cnn_jax_programs(xla_default):
    got = _probe("jax-first")
    assert not got["in_xla_flags"] and "initialised before" in got["reason"]
    assert got["runtime"] == got["train_step"] == 0
    assert got["plain"] == xla_default["plain"] > 0  # the user's own jit keeps XLA's default


def test_users_xla_flags_win():
    """An option the user's ``XLA_FLAGS`` names keeps the user's value everywhere; the other one is
    still applied, to every program."""
    flag = f"--{runtime.YNN_OPTION}=+individual_convolution"
    got = _probe(XLA_FLAGS=flag)
    assert got["options"] == {runtime.COPY_OPTION: True} and got["in_xla_flags"]
    assert f"{runtime.YNN_OPTION}: the user's value" in got["reason"]
    assert got["plain"] > 0 and got["runtime"] > 0 and got["train_step"] > 0
    assert got["state_copies"] == 0


def test_users_copy_insertion_flag_wins(xla_default):
    got = _probe(XLA_FLAGS=f"--{runtime.COPY_OPTION}=false")
    assert got["options"] == {runtime.YNN_OPTION: runtime._OPTION_VALUE} and got["in_xla_flags"]
    assert got["train_step"] == 0 and got["state_copies"] == xla_default["state_copies"] > 0


_OUR_YNN_FLAG = runtime._FLAGS[runtime.YNN_OPTION]
_OUR_COPY_FLAG = runtime._FLAGS[runtime.COPY_OPTION]


@pytest.mark.parametrize(
    ("environ", "version", "initialised", "options", "in_flags", "reason"),
    [
        ({}, "0.10.2", False, True, False, "not called"),
        ({}, "0.10.2", True, True, False, "initialised before"),
        ({runtime.XLA_SWITCH: "off"}, "0.10.2", False, False, False, "defaults"),
        ({runtime.XLA_SWITCH: "1"}, "0.10.2", False, True, False, "not called"),
        ({"XLA_FLAGS": runtime._FLAG}, "0.10.2", True, True, True, "extended"),
        (
            {"XLA_FLAGS": f"--{runtime.YNN_OPTION}=individual_dot"},
            "0.10.2",
            False,
            True,
            False,
            "user's value",
        ),
        (
            {"XLA_FLAGS": f"--{runtime.YNN_OPTION}=individual_dot {_OUR_COPY_FLAG}"},
            "0.10.2",
            False,
            True,
            True,
            "user's value",
        ),
        (
            {"XLA_FLAGS": f"--{runtime.YNN_OPTION}=individual_dot --{runtime.COPY_OPTION}=false"},
            "0.10.2",
            False,
            False,
            False,
            "user's value",
        ),
        ({"XLA_FLAGS": _OUR_YNN_FLAG}, "0.10.2", False, True, False, "not called"),
        (
            {"XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {runtime._FLAG}"},
            "0.10.2",
            False,
            True,
            True,
            "extended",
        ),
        ({}, "0.11.0", False, False, False, "not one of"),
    ],
)
def test_decide(environ, version, initialised, options, in_flags, reason):
    got = runtime._decide(environ, version, initialised)
    assert bool(got.compiler_options) is options
    assert got.in_xla_flags is in_flags
    assert reason in got.reason


def test_jit_explicit_options_win():
    """An explicit ``compiler_options`` entry overrides cnn_jax's on a clash, the rest are kept."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    x, w = jnp.ones((32, 16, 16, 8)), jnp.ones((16, 8, 3, 3))

    def loss(x, w):
        dn = ("NHWC", "OIHW", "NHWC")
        return jnp.sum(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn) ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    ynn_all = "LIBRARY_FUSION_TYPE_" + ",LIBRARY_FUSION_TYPE_".join(
        ("INDIVIDUAL_DOT", "INDIVIDUAL_CONVOLUTION", "REDUCE")
    )
    mine = runtime.jit(grad, compiler_options={runtime.YNN_OPTION: ynn_all})
    assert ynn_convolutions(mine.lower(x, w).compile().as_text()) > 0
    if runtime.compiler_options():  # this test process runs with the setting (conftest)
        assert ynn_convolutions(runtime.jit(grad).lower(x, w).compile().as_text()) == 0


@pytest.mark.slow  # compiles and runs a train step under both analyses
def test_copy_insertion_option_changes_no_value():
    """The copy-insertion option leaves out the train step's copies of its donated state and
    nothing else: two steps of a BatchNorm model with and without it give the same state, bit for
    bit."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from cnn_jax import models, train

    model = models.create("resnet18", num_classes=10, in_channels=3)
    batch = {
        "image": jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3)),
        "label": jnp.arange(4, dtype=jnp.int32),
    }
    states, copies = {}, {}
    for value in (False, True):
        state = train.create_train_state(
            model, optax.adamw(1e-3, weight_decay=0.05), jax.random.PRNGKey(0), batch["image"][:1]
        )
        options = {**runtime.compiler_options(), runtime.COPY_OPTION: value}
        step = jax.jit(train.make_train_step(), donate_argnums=0).lower(state, batch)
        step = step.compile(compiler_options=options)
        copies[value] = copied_inputs(step.as_text())
        for _ in range(2):
            state, _ = step(state, batch)
        states[value] = jax.tree.map(np.asarray, (state.params, state.opt_state, state.batch_stats))
    assert copies[False] > 0 and copies[True] == 0
    for off, on in zip(jax.tree.leaves(states[False]), jax.tree.leaves(states[True]), strict=True):
        np.testing.assert_array_equal(on, off)


# --------------------------------------------------------------------------------------------------
# glibc's allocator.
# --------------------------------------------------------------------------------------------------

_FAULTS_PROBE = textwrap.dedent(
    """
    import ctypes, json, resource
    from cnn_jax import runtime

    unapplied = runtime.malloc_settings()
    runtime.apply()
    # What XLA:CPU does to a step's large temporaries on every call: allocate, write, free.
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 48 << 20  # above glibc's largest mmap threshold (32 MB)

    def call():
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)

    call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        call()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
    s = runtime.malloc_settings()
    print(json.dumps({"faults": faults, "options": s.options, "reason": s.reason,
                      "before": [unapplied.options, unapplied.reason]}))
    """
)


def _faults_probe(**env: str) -> dict:
    drop = (runtime.MALLOC_SWITCH, "GLIBC_TUNABLES", *runtime._GLIBC_MALLOC_ENV)
    return _run_probe(_FAULTS_PROBE, [], drop, env)


@pytest.mark.skipif(runtime._glibc() is None, reason="the allocator setting is glibc's")
def test_malloc_setting_reuses_freed_large_blocks():
    """By default glibc serves a 48 MB block with fresh mmapped pages on every allocation (12,288
    page faults each); with cnn_jax's setting the freed block is reused (none). The switch turns
    it off. (Whole steps: cifar_cnn at batch 128 faulted ~13,400 pages a step without the
    setting, 3-10,000 with it, depending on which thread's heap XLA allocates from.)"""
    off = _faults_probe(**{runtime.MALLOC_SWITCH: "0"})
    on = _faults_probe()
    assert off["options"] == {} and runtime.MALLOC_SWITCH in off["reason"]
    assert on["options"] == runtime.MALLOC_OPTIONS, on["reason"]
    assert on["before"][0] == {} and "not called" in on["before"][1]  # import sets nothing
    assert off["faults"] > 10_000, off  # the problem exists here (else this proves nothing)
    assert on["faults"] < 100, on


@pytest.mark.skipif(runtime._glibc() is None, reason="the allocator setting is glibc's")
def test_users_malloc_configuration_wins():
    got = _faults_probe(MALLOC_ARENA_MAX="4")
    assert got["options"] == {} and "MALLOC_ARENA_MAX" in got["reason"]


_OURS = runtime.HUGE_PAGES_TUNABLE


@pytest.mark.parametrize(
    ("environ", "glibc", "applied", "reason"),
    [
        ({}, "2.36", True, "kept for reuse"),
        ({runtime.MALLOC_SWITCH: "0"}, "2.36", False, "allocator's defaults"),
        ({runtime.MALLOC_SWITCH: "1"}, "2.36", True, "kept for reuse"),
        ({}, None, False, "not glibc"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "2.36", False, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "2.36", False, "GLIBC_TUNABLES"),
        ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, "2.36", True, "kept for reuse"),
    ],
)
def test_decide_malloc(environ, glibc, applied, reason):
    got = runtime._decide_malloc(environ, glibc)
    assert got.options == (runtime.MALLOC_OPTIONS if applied else {})
    assert reason in got.reason


def test_glibcs_options_are_not_set_where_tcmalloc_serves_malloc():
    got = runtime._decide_malloc({}, "2.36", "/usr/lib/libtcmalloc_minimal.so.4")
    assert got.options == {} and "TCMalloc" in got.reason and "unused" in got.reason


def test_this_process_got_the_malloc_setting():
    """What this process reports (conftest applied the settings) is what the rules give for its
    environment and C library."""
    libc = runtime._glibc()
    version = None if libc is None else libc.gnu_get_libc_version().decode()
    assert runtime.malloc_settings() == runtime._decide_malloc(
        os.environ, version, runtime._loaded_tcmalloc()
    )


_RELEASE_PROBE = textwrap.dedent(
    """
    import ctypes, json
    from cnn_jax import runtime

    runtime.apply()

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 256 << 20
    base = rss_mb()
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    kept = rss_mb() - base
    released = runtime.release_memory()
    print(json.dumps({"kept": kept, "after": rss_mb() - base, "released": released}))
    """
)


@pytest.mark.skipif(runtime._glibc() is None, reason="the allocator setting is glibc's")
def test_release_memory_gives_the_kept_heap_back():
    """With the setting a freed 256 MB block stays in the process (that is its point);
    release_memory() hands it back to the system."""
    drop = (runtime.MALLOC_SWITCH, "GLIBC_TUNABLES", *runtime._GLIBC_MALLOC_ENV)
    got = _run_probe(_RELEASE_PROBE, [], drop, {})
    assert got["released"] is True
    assert got["kept"] > 200, got
    assert got["after"] < 50, got


@pytest.mark.parametrize(
    ("environ", "requested", "initialised", "synchronous", "reason"),
    [
        ({}, None, False, False, "JAX's default"),
        ({runtime.DISPATCH_SWITCH: "sync"}, None, False, True, "calling thread"),
        ({runtime.DISPATCH_SWITCH: " SYNC "}, None, False, True, "calling thread"),
        ({runtime.DISPATCH_SWITCH: "async"}, None, False, False, "JAX's default"),
        ({runtime.DISPATCH_SWITCH: ""}, None, False, False, "JAX's default"),  # empty: unset
        ({}, "sync", False, True, "apply(dispatch='sync')"),
        ({runtime.DISPATCH_SWITCH: "async"}, "sync", False, True, "apply(dispatch='sync')"),
        ({runtime.DISPATCH_SWITCH: "sync"}, "async", False, False, "JAX's default"),
        (
            {runtime.DISPATCH_SWITCH: "sync", "JAX_CPU_ENABLE_ASYNC_DISPATCH": "1"},
            None, False, False, "the user's value",
        ),
        # JAX's own variable is what is in force, whatever cnn_jax's says.
        ({"JAX_CPU_ENABLE_ASYNC_DISPATCH": "false"}, None, False, True, "the user's value"),
        ({"JAX_CPU_ENABLE_ASYNC_DISPATCH": "off"}, "async", False, True, "the user's value"),
        ({runtime.DISPATCH_SWITCH: "sync"}, None, True, False, "initialised before"),
    ],
)  # fmt: skip
def test_decide_dispatch(environ, requested, initialised, synchronous, reason):
    got = runtime._decide_dispatch(environ, requested, initialised)
    assert got.synchronous is synchronous
    assert reason in got.reason


def test_dispatch_refuses_unknown_modes():
    with pytest.raises(ValueError, match=r"CNN_JAX_DISPATCH.*'Fast'"):  # as the user wrote it
        runtime._decide_dispatch({runtime.DISPATCH_SWITCH: "Fast"}, None, False)
    with pytest.raises(ValueError, match=r"apply\(dispatch=...\)"):
        runtime.apply(dispatch="fast")  # checked before anything is decided, even when applied
    with pytest.raises(ValueError, match="True"):
        runtime.apply(dispatch=True)  # not a string: the same error, not an AttributeError


def test_this_process_dispatches_as_jax_does_by_default():
    """The test session applies no dispatch setting (conftest's ``apply()``, no variable)."""
    from jax._src import xla_bridge

    if runtime.DISPATCH_SWITCH in os.environ:
        pytest.skip(f"{runtime.DISPATCH_SWITCH} is set for this session")
    assert not runtime.dispatch_settings().synchronous
    assert xla_bridge._CPU_ENABLE_ASYNC_DISPATCH.value


_DISPATCH_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from cnn_jax import runtime

    runtime.apply(dispatch=sys.argv[1] if sys.argv[1] != "-" else None)
    import jax, jax.numpy as jnp
    from jax._src import xla_bridge

    # Four 32 MB activations kept until the end, as a step keeps them for its backward pass (a
    # program this size is not one JAX's CPU client counts as cheap and runs inline anyway).
    x, w = jnp.ones((8192, 1024)), jnp.full((1024, 1024), 1e-3)

    def activations(x, w):
        h = [x]
        for _ in range(4):
            h.append(jnp.tanh(h[-1] @ w))
        return sum(a.sum() for a in h)

    f = jax.jit(activations)
    for _ in range(2):
        f(x, w).block_until_ready()
    per_call = []  # the fewest of several calls: what every call pays, not a stray one's
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x, w).block_until_ready()
        per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    faults = min(per_call)
    s = runtime.dispatch_settings()
    print(json.dumps({"faults": faults, "synchronous": s.synchronous, "reason": s.reason,
                      "jax_async": xla_bridge._CPU_ENABLE_ASYNC_DISPATCH.value}))
    """
)


def _dispatch_probe(mode: str, **env: str) -> dict:
    drop = (runtime.DISPATCH_SWITCH, "JAX_CPU_ENABLE_ASYNC_DISPATCH", runtime.MALLOC_SWITCH,
            "GLIBC_TUNABLES", *runtime._GLIBC_MALLOC_ENV)  # fmt: skip
    return _run_probe(_DISPATCH_PROBE, [mode], drop, env)


@pytest.mark.skipif(runtime._glibc() is None, reason="the faults are glibc's per-thread heaps'")
def test_sync_dispatch_stops_large_temporaries_faulting():
    """Dispatched asynchronously, a program with 128 MB of temporaries faults their pages on
    every call (the allocator setting cannot help a worker thread's heap); dispatched on the
    calling thread, by the variable or by ``apply``'s argument, a call faults next to none."""
    default = _dispatch_probe("-")
    by_variable = _dispatch_probe("-", **{runtime.DISPATCH_SWITCH: "sync"})
    by_argument = _dispatch_probe("sync")
    assert not default["synchronous"] and default["jax_async"]
    assert default["faults"] > 10_000, default  # the problem exists here
    for got in (by_variable, by_argument):
        assert got["synchronous"] and not got["jax_async"], got
        assert got["faults"] < 1_000, got
    assert runtime.DISPATCH_SWITCH in by_variable["reason"]
    assert "apply(dispatch='sync')" in by_argument["reason"]
    users = _dispatch_probe("sync", JAX_CPU_ENABLE_ASYNC_DISPATCH="true")
    assert not users["synchronous"] and users["jax_async"] and "user's value" in users["reason"]


_LATER_APPLY_PROBE = textwrap.dedent(
    """
    import json, warnings
    from cnn_jax import runtime
    from jax._src import xla_bridge

    runtime.apply()  # as fit and cnn-jax do, before the user's own call
    runtime.apply(dispatch="sync")  # JAX not started yet: this one counts
    before_start = runtime.dispatch_settings()
    import jax.numpy as jnp

    jnp.ones(3).block_until_ready()  # JAX starts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime.apply(dispatch="async")  # too late: warns, changes nothing
        runtime.apply()  # no request: silent
    print(json.dumps({"synchronous": before_start.synchronous, "reason": before_start.reason,
                      "after": runtime.dispatch_settings().synchronous,
                      "jax_async": xla_bridge._CPU_ENABLE_ASYNC_DISPATCH.value,
                      "warnings": [str(w.message) for w in caught]}))
    """
)


def test_a_later_apply_changes_the_dispatch_until_jax_starts():
    """``fit`` and ``cnn-jax`` call ``apply()`` first; a user's ``apply(dispatch='sync')`` after
    it still counts while JAX has not started, and once it has, another request warns."""
    drop = (runtime.DISPATCH_SWITCH, "JAX_CPU_ENABLE_ASYNC_DISPATCH")
    got = _run_probe(_LATER_APPLY_PROBE, [], drop, {})
    assert got["synchronous"] and not got["jax_async"] and "apply(dispatch='sync')" in got["reason"]
    assert got["after"] is True
    (warning,) = got["warnings"]
    assert "after JAX started changes nothing" in warning and "apply(dispatch='sync')" in warning


# --------------------------------------------------------------------------------------------------
# Huge pages: relaunch() and its decision.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "glibc", "thp", "enabled", "reason"),
    [
        ({}, "2.36", "madvise", True, "'madvise': glibc.malloc.hugetlb=1 wanted"),
        ({}, "2.35", "madvise", True, "wanted"),
        ({}, "2.34", "madvise", False, "no glibc.malloc.hugetlb"),
        ({}, None, "madvise", False, "not glibc"),
        ({}, "2.36", "always", False, "huge pages already ('always')"),
        ({}, "2.36", "never", False, "off ('never')"),
        ({}, "2.36", None, False, "no transparent huge pages"),
        ({runtime.HUGE_PAGES_SWITCH: "0"}, "2.36", "madvise", False, "CNN_JAX_HUGE_PAGES=0"),
        ({runtime.MALLOC_SWITCH: "off"}, "2.36", "madvise", False, "CNN_JAX_MALLOC_DEFAULTS"),
        ({"MALLOC_ARENA_MAX": "2"}, "2.36", "madvise", False, "user's allocator"),
        ({"GLIBC_TUNABLES": _OURS}, "2.36", "madvise", True, "GLIBC_TUNABLES set: the user's"),
        ({"GLIBC_TUNABLES": _OURS}, "2.36", "never", False, "the user's"),  # glibc does nothing
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"}, "2.36", "never", True, "the user's"),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "2.36", "madvise", False, "user's"),
        ({"GLIBC_TUNABLES": "glibc.mem.tagging=0"}, "2.36", "madvise", True, "wanted"),
        # the user's own tunables are what glibc does, whatever cnn_jax's switches say
        (
            {"GLIBC_TUNABLES": _OURS, runtime.HUGE_PAGES_SWITCH: "0"},
            "2.36",
            "madvise",
            True,
            "the user's",
        ),
        (
            {"GLIBC_TUNABLES": _OURS, runtime.MALLOC_SWITCH: "0"},
            "2.36",
            "madvise",
            True,
            "the user's",
        ),
    ],
)
def test_decide_huge_pages(environ, glibc, thp, enabled, reason):
    got = runtime._decide_huge_pages(environ, glibc, thp)
    assert got.enabled is enabled and reason in got.reason, got


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert runtime._thp_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert runtime._thp_mode(str(path)) == "always"
    path.write_text("garbage\n")
    assert runtime._thp_mode(str(path)) is None
    assert runtime._thp_mode(str(tmp_path / "missing")) is None


_LIB = "/usr/lib/libtcmalloc_minimal.so.4"


_TC = {runtime.ALLOCATOR_SWITCH: "tcmalloc"}


@pytest.mark.parametrize(
    ("environ", "found", "glibc", "name", "reason"),
    [
        ({}, _LIB, "2.36", "glibc", "the default"),  # opt-in
        ({runtime.ALLOCATOR_SWITCH: "glibc"}, _LIB, "2.36", "glibc", "the default"),
        (_TC, _LIB, "2.36", "tcmalloc", "relaunch() preloads it"),
        ({runtime.ALLOCATOR_SWITCH: " TCMalloc "}, _LIB, "2.36", "tcmalloc", "preloads it"),
        ({**_TC, runtime.MALLOC_SWITCH: "0"}, _LIB, "2.36", "glibc", "MALLOC_DEFAULTS=0"),
        ({**_TC, "LD_PRELOAD": "libasan.so"}, _LIB, "2.36", "glibc", "the user's libraries"),
        ({**_TC, "LD_PRELOAD": " "}, _LIB, "2.36", "tcmalloc", "preloads it"),  # blank: unset
        ({**_TC, "MALLOC_ARENA_MAX": "2"}, _LIB, "2.36", "glibc", "the user's allocator"),
        ({**_TC, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, _LIB, "2.36", "glibc", "user's"),
        ({**_TC, "GLIBC_TUNABLES": "glibc.mem.tagging=0"}, _LIB, "2.36", "tcmalloc", "preloads"),
        (_TC, _LIB, None, "glibc", "not glibc"),
        (_TC, None, "2.36", "glibc", "asked for, but no TCMalloc library found"),
    ],
)  # fmt: skip
def test_decide_allocator(environ, found, glibc, name, reason):
    got = runtime._decide_allocator(environ, found, glibc)
    assert got.name == name and reason in got.reason, got
    assert got.library == (found if name == "tcmalloc" else None)


def test_an_unknown_allocator_is_reported_and_refused_at_relaunch(monkeypatch):
    """The settings' reports say so (a process that was not relaunched still records them);
    relaunch() refuses it before anything else."""
    unknown = {runtime.ALLOCATOR_SWITCH: "jemalloc"}
    got = runtime._decide_allocator(unknown, _LIB, "2.36")
    assert got.name == "glibc" and "CNN_JAX_ALLOCATOR='jemalloc': expected one of" in got.reason
    monkeypatch.setenv(runtime.ALLOCATOR_SWITCH, "jemalloc")
    assert runtime.allocator_settings().name in ("glibc", "tcmalloc")  # no exception
    runtime.huge_page_settings()
    monkeypatch.setattr(runtime, "_relaunched", [])
    monkeypatch.delenv(runtime.RELAUNCHED, raising=False)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("exec'd"))
    with pytest.raises(ValueError, match=r"CNN_JAX_ALLOCATOR='jemalloc'"):
        runtime.relaunch()


def test_huge_pages_give_way_to_tcmalloc(monkeypatch):
    """Where TCMalloc is to serve malloc, glibc's heaps are unused: no huge pages tunable."""
    monkeypatch.setattr(
        runtime, "_decide_huge_pages", lambda *a: runtime.HugePageSettings(True, "x")
    )
    monkeypatch.setattr(runtime, "find_tcmalloc", lambda: _LIB)
    monkeypatch.setattr(runtime, "_glibc_version", lambda: "2.36")
    got = runtime.huge_pages_wanted(_TC)
    assert not got.enabled and "TCMalloc" in got.reason
    assert set(runtime._start_environment(_TC)) == {"LD_PRELOAD", *runtime._TCMALLOC_QUIET}
    assert runtime._start_environment(_TC)["LD_PRELOAD"] == _LIB
    for glibc in ({}, _GLIBC):  # the default, or named
        assert runtime.huge_pages_wanted(glibc).enabled
        assert runtime._start_environment(glibc) == {"GLIBC_TUNABLES": _OURS}
    monkeypatch.setattr(runtime, "find_tcmalloc", lambda: None)
    assert runtime.huge_pages_wanted(_TC).enabled  # asked for, but there is none


@pytest.mark.parametrize(
    ("env", "found", "why"),
    [
        ({}, None, "asked for, but no TCMalloc library found"),
        ({"LD_PRELOAD": "/opt/libjemalloc.so.2"}, _LIB, "the user's libraries alone"),
        ({"MALLOC_ARENA_MAX": "2"}, _LIB, "the user's allocator configuration"),
    ],
)
def test_relaunch_warns_where_tcmalloc_is_asked_for_and_not_applied(monkeypatch, env, found, why):
    """With the reason; huge pages go on as without the request (where nothing else declines
    them), so the process still re-executes for them."""
    monkeypatch.setattr(runtime, "find_tcmalloc", lambda: found)
    monkeypatch.setattr(runtime, "_glibc_version", lambda: "2.36")
    monkeypatch.setattr(runtime, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(runtime, "_relaunched", [])
    monkeypatch.delenv(runtime.RELAUNCHED, raising=False)
    for name in (*_HUGE_PAGE_DROP, *runtime._GLIBC_MALLOC_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(runtime.ALLOCATOR_SWITCH, "tcmalloc")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "orig_argv", ["python", "script.py"])
    monkeypatch.setattr(sys, "argv", ["script.py"])
    calls = []
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a) or _raise(OSError("x")))
    with pytest.warns(UserWarning, match=f"CNN_JAX_ALLOCATOR=tcmalloc not applied: .*{why}"):
        runtime.relaunch()
    if not env:  # nothing of the user's: huge pages instead
        ((_, _, started),) = calls
        assert started["GLIBC_TUNABLES"] == _OURS and "LD_PRELOAD" not in started
    else:  # the user's allocator or configuration: no huge pages either
        assert calls == []


def _raise(error: Exception):
    raise error


def test_find_tcmalloc_looks_in_the_library_path_first(monkeypatch, tmp_path):
    (tmp_path / "libtcmalloc.so.4").write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/no/such/folder:{tmp_path}")
    assert runtime._library_dirs()[:2] == ["/no/such/folder", str(tmp_path)]
    assert runtime.find_tcmalloc.__wrapped__() == str(tmp_path / "libtcmalloc.so.4")
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")  # the minimal build first
    assert runtime.find_tcmalloc.__wrapped__() == str(tmp_path / "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert runtime.find_tcmalloc.__wrapped__() is None


def test_loaded_tcmalloc_reads_the_mapped_path(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r--p 00000000 00:00 0 \n"  # anonymous: five fields
        "7f01-7f02 r-xp 00001000 08:01 42   /usr/lib/x86_64-linux-gnu/libm.so.6\n"
        "7f02-7f03 r-xp 00001000 08:01 43   /usr/lib/libtcmalloc_minimal.so.4.5.10 (deleted)\n"
    )
    assert runtime._loaded_tcmalloc(str(maps)) == "/usr/lib/libtcmalloc_minimal.so.4.5.10"
    maps.write_text("7f01-7f02 r-xp 00001000 08:01 42   /usr/lib/libc.so.6\n")
    assert runtime._loaded_tcmalloc(str(maps)) is None
    assert runtime._loaded_tcmalloc(str(tmp_path / "missing")) is None


def test_allocator_and_huge_page_reports_say_what_serves_this_process(monkeypatch):
    """Read from what is mapped, not from intentions: TCMalloc mapped wins over a huge pages
    tunable that relaunch() set; a preload relaunch() asked for that is not mapped says so; a
    user's preloaded allocator is theirs; TCMalloc wanted but not relaunched says so."""
    monkeypatch.setattr(runtime, "_relaunched_with", {"GLIBC_TUNABLES": _OURS})
    monkeypatch.setattr(runtime, "_loaded_tcmalloc", lambda: "/x/libtcmalloc.so.4")
    assert runtime.allocator_settings().name == "tcmalloc"
    assert "preloaded by the user" in runtime.allocator_settings().reason
    assert not runtime.huge_page_settings().enabled
    monkeypatch.setattr(runtime, "_loaded_tcmalloc", lambda: None)
    assert runtime.huge_page_settings().enabled
    monkeypatch.setattr(runtime, "_relaunched_with", {"LD_PRELOAD": "/x/libtcmalloc.so.4"})
    got = runtime.allocator_settings()
    assert got.name == "glibc" and "did not map it" in got.reason
    monkeypatch.setattr(runtime, "_relaunched_with", {})
    monkeypatch.setenv("LD_PRELOAD", "/opt/libjemalloc.so.2")
    got = runtime.allocator_settings()
    assert got.name == "other" and "libjemalloc.so.2" in got.reason
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv(runtime.ALLOCATOR_SWITCH, "tcmalloc")
    monkeypatch.setattr(runtime, "find_tcmalloc", lambda: _LIB)
    monkeypatch.setattr(runtime, "_glibc_version", lambda: "2.36")
    got = runtime.allocator_settings()
    assert got.name == "glibc" and "not started through relaunch()" in got.reason


def test_a_users_preloaded_allocator_means_no_huge_pages(monkeypatch):
    monkeypatch.setattr(
        runtime, "_decide_huge_pages", lambda *a: runtime.HugePageSettings(True, "")
    )
    monkeypatch.setattr(runtime, "_glibc_version", lambda: "2.36")
    jemalloc = {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}
    got = runtime.huge_pages_wanted(jemalloc)
    assert not got.enabled and "libjemalloc.so.2" in got.reason
    assert runtime._start_environment(jemalloc) == {}
    profiler = {"LD_PRELOAD": "/opt/libprofiler.so"}  # not an allocator: huge pages as usual
    assert runtime._start_environment(profiler) == {"GLIBC_TUNABLES": _OURS}


_RELAUNCH_PROBE = textwrap.dedent(
    """
    import json, os, sys
    from cnn_jax import runtime

    started_with = os.environ.get("GLIBC_TUNABLES")  # as the process started
    preloaded = os.environ.get("LD_PRELOAD")
    runtime.relaunch()
    runtime.apply()
    s, a = runtime.huge_page_settings(), runtime.allocator_settings()
    print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "enabled": s.enabled,
                      "started_with": started_with, "preloaded": preloaded,
                      "reason": s.reason, "tunables": os.environ.get("GLIBC_TUNABLES"),
                      "allocator": a.name, "library": a.library, "why": a.reason,
                      "malloc": runtime.malloc_settings().reason,
                      "released": runtime.release_memory(),
                      "tc_release": hasattr(__import__("ctypes").CDLL(None),
                                            "MallocExtension_ReleaseFreeMemory"),
                      "env_preload": os.environ.get("LD_PRELOAD"),
                      "quiet": os.environ.get("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"),
                      "mark": os.environ.get(runtime.RELAUNCHED)}))
    """
)
_HUGE_PAGE_DROP = (runtime.HUGE_PAGES_SWITCH, runtime.MALLOC_SWITCH, runtime.RELAUNCHED,
                   runtime.ALLOCATOR_SWITCH, "LD_PRELOAD", "GLIBC_TUNABLES",
                   *runtime._TCMALLOC_QUIET, *runtime._GLIBC_MALLOC_ENV)  # fmt: skip
_GLIBC = {runtime.ALLOCATOR_SWITCH: "glibc"}  # the huge pages' tests: glibc serves malloc


def _relaunch_probe(**env: str) -> tuple[int, list[dict]]:
    """Runs the probe in a fresh interpreter: ``(its PID, the JSON of every line it printed)``."""
    environ = {k: v for k, v in os.environ.items() if k not in _HUGE_PAGE_DROP}
    environ.update(env)
    child = subprocess.Popen(
        [sys.executable, "-c", _RELAUNCH_PROBE, "an", "argument"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-3000:]
    return child.pid, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _wanted_here(**env: str) -> runtime.HugePageSettings:
    environ = {k: v for k, v in os.environ.items() if k not in _HUGE_PAGE_DROP}
    return runtime.huge_pages_wanted({**environ, **env})


def test_relaunch_reexecutes_the_same_command_once_where_it_helps():
    """Where this machine wants huge pages, the process re-executes itself once (same PID, same
    arguments, the code after relaunch() runs once) with the tunable added to the user's other
    tunables and reports them on; where it does not, nothing happens and the reason is the
    decision's."""
    pid, lines = _relaunch_probe(GLIBC_TUNABLES="glibc.mem.tagging=0", **_GLIBC)
    assert len(lines) == 1, lines
    (got,) = lines
    assert got["pid"] == pid and got["argv"] == ["an", "argument"]
    # Either way the environment the program (and its children) sees is the user's.
    assert got["tunables"] == "glibc.mem.tagging=0" and got["mark"] is None, got
    assert got["allocator"] == "glibc" and got["env_preload"] is None, got
    wanted = _wanted_here(GLIBC_TUNABLES="glibc.mem.tagging=0", **_GLIBC)
    if wanted.enabled:
        assert got["enabled"] and "set by relaunch()" in got["reason"], got
        assert got["started_with"] == f"glibc.mem.tagging=0:{_OURS}", got
    else:
        assert not got["enabled"] and got["reason"] == wanted.reason, got
        assert got["started_with"] == "glibc.mem.tagging=0", got


@pytest.mark.parametrize(
    "env",
    [
        {runtime.HUGE_PAGES_SWITCH: "0", **_GLIBC},
        {runtime.MALLOC_SWITCH: "0"},
        {"MALLOC_ARENA_MAX": "2"},
    ],
)
def test_relaunch_leaves_a_process_alone_when_switched_off_or_configured(env):
    _, (got,) = _relaunch_probe(**env)
    assert got["mark"] is None and not got["enabled"], got
    assert got["tunables"] is None and got["preloaded"] is None and got["allocator"] == "glibc"


_TCMALLOC_HERE = runtime.allocator_wanted(
    {**{k: v for k, v in os.environ.items() if k not in _HUGE_PAGE_DROP}, **_TC}
)
needs_tcmalloc = pytest.mark.skipif(
    _TCMALLOC_HERE.library is None, reason=f"no TCMalloc here: {_TCMALLOC_HERE.reason}"
)


@needs_tcmalloc
def test_relaunch_preloads_tcmalloc_and_gives_the_user_their_environment_back():
    """Asked for TCMalloc where the machine has it, the process re-executes itself once with
    it preloaded (and its large-allocation reports off): it serves malloc, glibc's options
    and huge pages are not set (its heaps are unused), release_memory() still works, and the
    environment the program and its children see is the user's."""
    pid, lines = _relaunch_probe(GLIBC_TUNABLES="glibc.mem.tagging=0", **_TC)
    assert len(lines) == 1, lines
    (got,) = lines
    assert got["pid"] == pid and got["argv"] == ["an", "argument"]
    assert got["preloaded"] == _TCMALLOC_HERE.library, got  # as the process started
    assert got["allocator"] == "tcmalloc" and "preloaded by relaunch()" in got["why"], got
    assert os.path.basename(got["library"]).startswith("libtcmalloc"), got
    assert not got["enabled"] and "TCMalloc" in got["reason"], got
    assert got["started_with"] == "glibc.mem.tagging=0", got  # no huge pages tunable added
    assert "TCMalloc" in got["malloc"] and got["released"] and got["tc_release"], got
    assert got["env_preload"] is None and got["quiet"] is None and got["mark"] is None, got
    assert got["tunables"] == "glibc.mem.tagging=0", got


@needs_tcmalloc
def test_a_users_large_allocation_report_setting_is_kept():
    _, (got,) = _relaunch_probe(TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD="1000", **_TC)
    assert got["allocator"] == "tcmalloc" and got["quiet"] == "1000", got


_HUGE_FAULTS_PROBE = _DISPATCH_PROBE.replace(
    "from cnn_jax import runtime\n", "from cnn_jax import runtime\nruntime.relaunch()\n"
)


@pytest.mark.skipif(
    not _wanted_here(**_GLIBC).enabled,
    reason=f"no huge pages for this machine: {_wanted_here(**_GLIBC).reason}",
)
def test_huge_pages_cut_the_faults_of_a_worker_threads_large_blocks():
    """With JAX's asynchronous dispatch a program's 128 MB of temporaries are mapped afresh on
    every call (a worker thread's heap); relaunched with huge pages they fault in 2 MiB at a
    time, a hundredth as often (the same probe as the dispatch test's)."""
    assert "runtime.relaunch()" in _HUGE_FAULTS_PROBE
    drop = (*_HUGE_PAGE_DROP, runtime.DISPATCH_SWITCH, "JAX_CPU_ENABLE_ASYNC_DISPATCH")
    without = _run_probe(
        _HUGE_FAULTS_PROBE, ["-"], drop, {runtime.HUGE_PAGES_SWITCH: "0", **_GLIBC}
    )
    with_them = _run_probe(_HUGE_FAULTS_PROBE, ["-"], drop, _GLIBC)
    assert not without["synchronous"] and not with_them["synchronous"]
    assert without["faults"] > 10_000, without  # the problem exists here
    assert with_them["faults"] < 2_000, with_them


@needs_tcmalloc
def test_tcmalloc_stops_the_faults_of_a_worker_threads_large_blocks():
    """With JAX's asynchronous dispatch and glibc a program's 128 MB of temporaries fault in
    again on every call (the test above); relaunched with TCMalloc, the freed blocks are reused
    and a call faults almost nothing (the same probe)."""
    drop = (*_HUGE_PAGE_DROP, runtime.DISPATCH_SWITCH, "JAX_CPU_ENABLE_ASYNC_DISPATCH")
    glibc = _run_probe(_HUGE_FAULTS_PROBE, ["-"], drop, {runtime.HUGE_PAGES_SWITCH: "0", **_GLIBC})
    tcmalloc = _run_probe(_HUGE_FAULTS_PROBE, ["-"], drop, _TC)
    assert not glibc["synchronous"] and not tcmalloc["synchronous"]
    assert glibc["faults"] > 10_000, glibc
    assert tcmalloc["faults"] < 500, tcmalloc


def test_the_relaunched_process_never_relaunches_again(monkeypatch):
    """The mark alone stops a second exec (even if glibc dropped the tunable on the way), and
    the user's GLIBC_TUNABLES come back from it."""
    monkeypatch.setattr(runtime, "_relaunched", [])
    monkeypatch.setattr(runtime, "_relaunched_with", {})
    monkeypatch.setattr(
        runtime, "_decide_huge_pages", lambda *a: runtime.HugePageSettings(True, "")
    )
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("exec'd again"))
    mark = {"GLIBC_TUNABLES": "glibc.mem.tagging=0", "LD_PRELOAD": None}
    monkeypatch.setenv(runtime.RELAUNCHED, json.dumps(mark))
    monkeypatch.setenv("GLIBC_TUNABLES", "something glibc kept")
    monkeypatch.setenv("LD_PRELOAD", "/a/libtcmalloc_minimal.so.4")
    runtime.relaunch()
    assert os.environ["GLIBC_TUNABLES"] == "glibc.mem.tagging=0"
    assert "LD_PRELOAD" not in os.environ and runtime.RELAUNCHED not in os.environ
    assert runtime._relaunched_with == {
        "GLIBC_TUNABLES": "something glibc kept",
        "LD_PRELOAD": "/a/libtcmalloc_minimal.so.4",
    }
    assert runtime.huge_page_settings().enabled
    runtime.relaunch()  # and a later call in the same process does nothing either
    monkeypatch.setattr(runtime, "_relaunched", [])
    monkeypatch.setenv(runtime.RELAUNCHED, "not json")  # a damaged mark still stops it
    runtime.relaunch()
    assert runtime.RELAUNCHED not in os.environ and runtime._relaunched


@pytest.mark.parametrize(
    ("orig_argv", "argv0"),
    [([], "x"), (["python", "-"], "-"), (["python"], "")],  # embedded; stdin; interactive
)
def test_relaunch_does_nothing_without_a_command_to_run_again(monkeypatch, orig_argv, argv0):
    monkeypatch.setattr(
        runtime, "_decide_huge_pages", lambda *a: runtime.HugePageSettings(True, "")
    )
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("exec'd"))
    monkeypatch.delenv(runtime.RELAUNCHED, raising=False)
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", [argv0])
    runtime.relaunch()


def test_relaunch_goes_on_when_the_exec_fails(monkeypatch):
    def fail(*args):
        raise OSError("no such interpreter")

    monkeypatch.setattr(
        runtime, "_decide_huge_pages", lambda *a: runtime.HugePageSettings(True, "")
    )
    monkeypatch.setattr(runtime, "find_tcmalloc", lambda: None)  # the huge pages' branch
    monkeypatch.delenv(runtime.RELAUNCHED, raising=False)
    for name in (*runtime._GLIBC_MALLOC_ENV, "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "orig_argv", ["python", "script.py"])
    monkeypatch.setattr(sys, "argv", ["script.py"])
    calls = []
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a) or fail())
    runtime.relaunch()
    ((executable, argv, env),) = calls
    assert executable == sys.executable
    assert argv == ["python", "script.py"] and env["GLIBC_TUNABLES"] == _OURS
    assert json.loads(env[runtime.RELAUNCHED]) == {"GLIBC_TUNABLES": None}
    assert "GLIBC_TUNABLES" not in os.environ
