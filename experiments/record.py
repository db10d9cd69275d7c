"""Where an experiment's numbers go, and what they were measured with.

Every script under ``experiments/`` writes its numbers through :func:`write`: one folder holding
``results.json`` (the numbers, plus ``provenance``: the command, the commit, the machine, the
library versions and cnn_jax's runtime settings) and ``table.md`` (the tables the READMEs quote,
rendered from those numbers). :func:`out_dir` picks the folder: ``--out`` when given, otherwise
``experiments/results/<name>``; a ``--quick`` run without ``--out`` writes to a fresh temporary
folder, so a smoke test never replaces a committed result.

A script adopts it in three lines::

    from experiments import record

    record.add_out_argument(parser, "bench_x")  # --out
    run = record.provenance("experiments.bench_x", argv)  # at the start
    ...
    out = record.out_dir(args.out, "bench_x", args.quick)
    record.write(out, {"rows": rows}, render_table, provenance=run)

Run the scripts as modules from the repository root (``python -m experiments.bench_x``), so that
``experiments`` is importable without touching ``sys.path``. This module imports JAX (through
cnn_jax) only inside :func:`provenance` and :func:`runtime_settings`, so a worker process that
must not load JAX (a torch-only memory measurement) can import the script that imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "numpy")
# The CPU features that decide how fast float32 matmuls and convolutions run.
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
# cnn_jax's runtime switches (cnn_jax.runtime) and JAX's dispatch variable: a run that set one
# measured something else, so its re-run command names it.
SWITCHES = ("CNN_JAX_XLA_DEFAULTS", "CNN_JAX_MALLOC_DEFAULTS", "CNN_JAX_ALLOCATOR",
            "CNN_JAX_HUGE_PAGES", "CNN_JAX_DISPATCH", "JAX_CPU_ENABLE_ASYNC_DISPATCH")  # fmt: skip
# Environment variables that change what cnn_jax, XLA, glibc or torch do.
ENVIRONMENT = ("XLA_FLAGS", *SWITCHES, "OMP_NUM_THREADS", "GLIBC_TUNABLES", "LD_PRELOAD",
               "JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR",
               "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION")  # fmt: skip


def add_out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """Adds ``--out`` (the results folder) to ``parser``; ``name`` is the default's folder."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results folder (default: experiments/results/{name}; with --quick a new "
        "temporary folder, never the committed results)",
    )


def add_case_arguments(parser: argparse.ArgumentParser, blocks: int) -> None:
    """``--blocks`` (default ``blocks``), ``--repeats``, ``--models`` and ``--quick`` of a
    benchmark that times variants of train steps over (model, input size, batch) cases;
    :func:`selected_cases` reads them."""
    parser.add_argument("--blocks", type=int, default=blocks, help="alternating blocks per variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per block")
    parser.add_argument(
        "--models", nargs="+", default=None, help="only these of the cases (all by default)"
    )
    parser.add_argument("--quick", action="store_true", help="resnet18 at 16x16, batch 4")


def selected_cases(
    parser: argparse.ArgumentParser, args: argparse.Namespace, cases: Sequence[tuple]
) -> list[tuple]:
    """The ``(model, size, batch)`` cases ``--models`` names (all by default; a name not among
    them is a usage error); ``--quick``: resnet18 at 16x16, batch 4, one block of one run
    (``args.blocks`` and ``args.repeats`` set to 1)."""
    if args.quick:
        args.blocks, args.repeats = 1, 1
        return [("resnet18", 16, 4)]
    if not args.models:
        return list(cases)
    unknown = sorted(set(args.models) - {c[0] for c in cases})
    if unknown:
        parser.error(f"not among the cases: {', '.join(unknown)}")
    return [c for c in cases if c[0] in args.models]


@dataclasses.dataclass
class StepVariants:
    """Train steps of one model, one per variant (:func:`step_variants`)."""

    programs: dict[str, Callable[[], None]]  # each runs one step and waits for it
    compile_s: dict[str, float]  # tracing and compiling
    temp_bytes: dict[str, int]  # what the compiled step allocates besides inputs and outputs
    parameter_shapes: list[tuple[int, ...]]
    copied_inputs: dict[str, int] = dataclasses.field(default_factory=dict)  # copy(parameter)s

    @property
    def parameters(self) -> int:
        """The model's parameter count."""
        return sum(math.prod(shape) for shape in self.parameter_shapes)


def step_model(model_name: str, size: int):
    """``model_name`` with 10 classes and 3 input channels as :func:`step_variants` trains it on
    ``size`` x ``size`` RGB images, with the arguments its tests use at small inputs (the
    registry's ``small_input``: inception_v3 without the auxiliary head that needs 299x299), as
    ``bench_vs_torch --zoo`` builds it. Raises where the model takes no ``size`` input
    (``input_size``, ``min_input_size``)."""
    from cnn_jax.models import create, registry

    spec = registry.spec(model_name)
    if (spec.input_size is not None and size != spec.input_size) or size < spec.min_input_size:
        raise ValueError(
            f"{model_name} takes {spec.input_size or f'at least {spec.min_input_size}'}-pixel "
            f"inputs, not {size}"
        )
    return create(model_name, num_classes=10, in_channels=3, **spec.small_input)


def forward_plans(model_name: str | Any, size: int) -> list[str]:
    """How ``'auto'`` computes the forward pass of each convolution (:func:`~cnn_jax.functional.
    auto_plan`'s ``'forward'``) that :func:`step_model`'s ``model_name`` (or a model given as a
    module, with 3 input channels) calls on a ``size`` x ``size`` image, in call order; traced
    for shapes only."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import cnn_jax.nn as cnn
    from cnn_jax._utils import pair
    from cnn_jax.functional import conv

    model = step_model(model_name, size) if isinstance(model_name, str) else model_name
    x = jnp.zeros((1, size, size, 3))
    plans = []

    def plan(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, cnn.Conv2d) and context.method_name == "__call__":
            k = pair(module.kernel_size, "kernel_size")
            stride, dilation = pair(module.stride, "stride"), pair(module.dilation, "dilation")
            shape = args[0].shape
            parts = conv.auto_plan(
                shape,
                (module.out_channels, shape[-1] // module.groups, *k),
                window_strides=stride,
                padding=conv.resolve_conv_padding(module.padding, k, stride, dilation),
                rhs_dilation=dilation,
                groups=module.groups,
            )
            plans.append(parts["forward"])
        return next_fun(*args, **kwargs)

    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    with nn.intercept_methods(plan):
        jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    return plans


def planned_convolutions(model_name: str, size: int, plan: str) -> dict[str, int]:
    """Of the convolutions ``model_name``'s forward pass on a ``size`` x ``size`` image calls,
    how many ``'auto'`` computes as ``plan`` (counted under that key), of all
    (``convolutions``); traced for shapes only (:func:`forward_plans`)."""
    plans = forward_plans(model_name, size)
    return {plan: plans.count(plan), "convolutions": len(plans)}


def rule_table(results: dict, *, off: str, off_means: str, covered: str) -> str:
    """The table of a benchmark that times the library's train steps against the variant
    ``off`` (one of its rules turned off, which ``off_means`` describes): per case, the
    convolutions the rule covers (``covered``, a key of each row, of ``convolutions``), both
    medians and ``off`` / library."""
    s = results["settings"]
    lines = [
        f"Train step (AdamW, kernels HWIO), median ms of {s['blocks']} alternating blocks of "
        f"{s['repeats']}; `library`: cnn_jax as it is; `{off}`: {off_means}; {covered}: the "
        "convolutions the rule covers, of all",
        "",
        f"| model | input | batch | {covered} | library ms | {off} ms | {off} / library |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        lib, without = r["ms"]["library"], r["ms"][off]
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | "
            f"{r[covered]} of {r['convolutions']} | {lib:.1f} | {without:.1f} | "
            f"{without / lib:.2f} |"
        )
    return "\n".join(lines)


def fit_images_per_s(model: str, epochs: int, batch_size: int, workdir: Path | str) -> list:
    """``cnn_jax.train.fit``'s images/s in each epoch after the first (which includes
    compilation), training ``model`` on the default dataset (course models other than lenet5
    at 32x32) into ``workdir``."""
    from cnn_jax import train as T
    from cnn_jax.train.run import loop

    config = T.default_config()
    config.update(
        dict(model=model, epochs=epochs, batch_size=batch_size, workdir=str(workdir), lr=1e-3)
    )
    if model != "lenet5":
        config.image_size = 32
    loop.fit(config, log=lambda *_: None)
    return [r["images_per_s"] for r in T.RunDir(workdir).read_history()[1:]]


def run_loop_layout(variant: str, state):
    """A ``prepare`` for :func:`step_variants` whose every variant's state is held as the run
    loop's placements hold it (kernels HWIO on the CPU, :mod:`cnn_jax.train.layout`)."""
    from cnn_jax.train import layout

    return layout.to_step_layout(state) if layout.default_on() else state


def step_variants(
    model_name: str,
    size: int,
    batch: int,
    variants: Sequence[str],
    traced_with: Callable[[str], Any],
    options: Callable[[str], dict[str, Any]] | None = None,
    prepare: Callable[[str, Any], Any] | None = None,
) -> StepVariants:
    """``model_name``'s train step (AdamW at 1e-3, a random ``batch`` of ``size`` x ``size``
    images, 10 classes) once per variant, each traced under the context ``traced_with(variant)``
    returns and compiled there with cnn_jax's compiler options, updated by ``options(variant)``
    where given (traced inside the context, so no later call can trace it again), its state
    (``prepare(variant, state)`` where given, else as ``create_train_state`` makes it) donated
    from step to step. ``copied_inputs``: how many of its inputs each compiled step copies
    (:func:`copied_inputs`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import cnn_jax
    from cnn_jax.train.state import create_train_state
    from cnn_jax.train.step import make_train_step

    model = step_model(model_name, size)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch, size, size, 3), dtype=np.float32))
    data = {"image": images, "label": jnp.asarray(rng.integers(0, 10, batch))}
    library_options = cnn_jax.runtime.settings().compiler_options
    result = StepVariants({}, {}, {}, [])
    for variant in variants:
        compiler_options = {**library_options, **(options(variant) if options else {})}
        state = create_train_state(model, optax.adamw(1e-3), jax.random.key(0), images[:1])
        result.parameter_shapes = [tuple(p.shape) for p in jax.tree.leaves(state.params)]
        if prepare is not None:
            state = prepare(variant, state)
        start = time.perf_counter()
        with traced_with(variant):
            lowered = jax.jit(make_train_step(), donate_argnums=0).lower(state, data)
            step = lowered.compile(compiler_options=compiler_options)
        result.compile_s[variant] = time.perf_counter() - start
        result.temp_bytes[variant] = int(step.memory_analysis().temp_size_in_bytes)
        result.copied_inputs[variant] = copied_inputs(step.as_text())
        holder = [step(state, data)[0]]

        def run(step=step, holder=holder) -> None:
            holder[0], metrics = step(holder[0], data)
            jax.block_until_ready(metrics)

        result.programs[variant] = run
    return result


def step_bench(
    argv: Sequence[str] | None,
    *,
    name: str,
    description: str,
    cases: Sequence[tuple],
    variants: Sequence[str],
    traced_with: Callable[[str], Any],
    tables: Callable[[dict], str],
    blocks: int,
    options: Callable[[str], dict[str, Any]] | None = None,
    extra: Callable[[str, int, int], dict[str, Any]] | None = None,
    prepare: Callable[[str, Any], Any] | None = None,
) -> dict:
    """The command line of a benchmark that times train-step variants (:func:`step_variants`)
    over ``(model, input size, batch)`` cases in alternating blocks: parses ``argv`` (``None``:
    the process's own arguments; :func:`add_case_arguments`, ``--out``), applies cnn_jax's
    runtime settings, and writes one row per case to ``results['steps']`` (model, size, batch,
    parameters, parameter arrays, median ms per variant, compile seconds, temporary bytes and
    copied inputs per variant, plus ``extra(model, size, batch)``), then ``results.json`` and
    ``table.md`` (``tables``); ``options`` and ``prepare`` go to :func:`step_variants`.
    Returns what was stored."""
    import cnn_jax
    from experiments.bench_batch_norm import interleaved  # that module imports this one

    parser = argparse.ArgumentParser(description=description)
    add_case_arguments(parser, blocks=blocks)
    add_out_argument(parser, name)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    selected = selected_cases(parser, args, cases)
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    run = provenance(f"experiments.{name}", argv)
    results: dict = {"settings": {"blocks": args.blocks, "repeats": args.repeats}, "steps": []}
    for model, size, batch in selected:
        steps = step_variants(model, size, batch, variants, traced_with, options, prepare)
        results["steps"].append(
            {
                "model": model,
                "size": size,
                "batch": batch,
                "parameters": steps.parameters,
                "parameter_arrays": len(steps.parameter_shapes),
                "ms": interleaved(steps.programs, args.blocks, args.repeats),
                "compile_s": steps.compile_s,
                "temp_bytes": steps.temp_bytes,
                "copied_inputs": steps.copied_inputs,
                **(extra(model, size, batch) if extra else {}),
            }
        )
        print(results["steps"][-1], flush=True)
    out = out_dir(args.out, name, args.quick)
    stored = write(out, results, tables, provenance=run)
    print((out / "table.md").read_text())
    return stored


def copied_inputs(hlo_text: str) -> int:
    """How many ``copy`` instructions of a compiled program's entry computation read one of its
    parameters (for a train step: the copies XLA makes of the state it was given)."""
    entry = hlo_text[hlo_text.index("\nENTRY") :]
    inputs = set(re.findall(r"%([\w.-]+) = \S+ parameter\(", entry))
    return sum(name in inputs for name in re.findall(r" copy\(%([\w.-]+)\)", entry))


def out_dir(out: Path | str | None, name: str, quick: bool = False) -> Path:
    """The folder a run writes to: ``out`` if given, else ``experiments/results/<name>``, else
    (a ``--quick`` run) a new temporary folder. Created if missing."""
    if out is not None:
        path = Path(out)
    elif quick:
        path = Path(tempfile.mkdtemp(prefix=f"cnn_jax_quick_{name.replace('/', '_')}_"))
    else:
        path = RESULTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def command(module: str, argv: Sequence[str] | None = None) -> str:
    """The command line that re-runs this: ``python -m <module> <argv>`` (argv: sys.argv's)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *map(str, args)])


def machine() -> dict[str, Any]:
    """CPU model, cores (all, and those this process may use), the vector extensions that decide
    matmul speed, memory, OS and Python."""
    cpu, flags, mem_gb = platform.processor() or platform.machine(), set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:  # not Linux: the model from platform, no flags
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "isa": isa,
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries a result depends on (None: not installed)."""
    out: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


# What each XLA option cnn_jax sets does, in the words the tables use.
_XLA_OPTION_WORDS = {
    "xla_cpu_experimental_ynn_fusion_type": "convolutions by XLA, not YNNPACK",
    "xla_cpu_copy_insertion_use_region_analysis": "copy insertion with region analysis",
}


def xla_setting(xla: dict[str, Any] | None) -> str:
    """A recorded XLA setting (``runtime_settings()['xla']``) in words: why, and which options
    cnn_jax's programs compiled with (an older file, which recorded only the first option, reads
    as such)."""
    if not xla:
        return "not recorded"
    options = [_XLA_OPTION_WORDS.get(name, name) for name in xla.get("compiler_options") or {}]
    return xla["reason"] + (f" ({'; '.join(options)})" if options else "")


def entry_point(main: Callable[[], Any]) -> None:
    """Runs a script's ``main`` as ``python -m experiments.<script>``: first in a process
    relaunched with the allocator settings that only a process's start can give
    (``cnn_jax.runtime.relaunch``, as ``cnn-jax`` does), so every script measures what the
    command line runs with."""
    import cnn_jax

    cnn_jax.runtime.relaunch()
    main()


def runtime_settings() -> dict[str, Any]:
    """cnn_jax's runtime settings as they stand in this process (``cnn_jax.runtime``: the XLA
    setting, which allocator serves malloc, glibc's options, its huge pages and the dispatch),
    JAX's backend, and the environment variables that change them. The convolution backend is
    an argument of each program: a script that varies it records it in its own settings."""
    import jax

    import cnn_jax

    return {
        "xla": dataclasses.asdict(cnn_jax.runtime.settings()),
        "allocator": dataclasses.asdict(cnn_jax.runtime.allocator_settings()),
        "malloc": dataclasses.asdict(cnn_jax.runtime.malloc_settings()),
        "huge_pages": dataclasses.asdict(cnn_jax.runtime.huge_page_settings()),
        "dispatch": dataclasses.asdict(cnn_jax.runtime.dispatch_settings()),
        "jax_backend": jax.default_backend(),
        "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
    }


SOURCE_COMMIT = "CNN_JAX_SOURCE_COMMIT"


def git_commit() -> dict[str, Any]:
    """The checked-out commit and whether tracked files outside experiments/results/ differ
    from it (a run's own results never count as a change). ``CNN_JAX_SOURCE_COMMIT``, where
    set, names the commit the tree is a copy of, and wins over git, with ``dirty`` None
    (unknown): a tree shipped to another machine to run there may have no ``.git`` beside it,
    or another tree's."""
    named = os.environ.get(SOURCE_COMMIT, "").strip()
    if named:
        if not re.fullmatch(r"[0-9a-f]{40}", named):
            raise ValueError(f"{SOURCE_COMMIT}={named!r} is not a full 40-digit commit hash")
        return {"commit": named, "dirty": None}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                         ":(exclude)experiments/results"))  # fmt: skip
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist, a copy)
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": dirty}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def provenance(module: str, argv: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """What ``results.json`` records besides the numbers. Take it when the run starts (the code
    and settings that ran are those of that moment) and hand it to :func:`write`, which adds
    when the run finished; ``extra`` is added as is. It first applies cnn_jax's runtime settings
    (``cnn_jax.runtime.apply()``, as ``cnn-jax`` and ``fit`` do; idempotent), so what it records
    is what the run computes with: take it before anything starts JAX."""
    import cnn_jax

    cnn_jax.runtime.apply()
    return {
        "command": command(module, argv),
        **git_commit(),
        "started": _now(),
        "machine": machine(),
        "versions": versions(),
        "runtime": runtime_settings(),
        **extra,
    }


def write(
    out: Path,
    results: dict[str, Any],
    table: Callable[[dict[str, Any]], str],
    *,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Writes ``out/results.json`` (``provenance``, completed with the finishing time and the
    wall-clock seconds since it was taken, + ``results``) and ``out/table.md``, which ``table``
    renders from the JSON as read back (what is stored is what the table shows); returns that
    JSON."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    finished = _now()
    elapsed = datetime.datetime.fromisoformat(finished) - datetime.datetime.fromisoformat(
        provenance["started"]
    )
    payload = {
        "provenance": {**provenance, "finished": finished, "wall_s": elapsed.total_seconds()},
        **results,
    }
    text = json.dumps(payload, indent=1) + "\n"  # NaN (a diverged run) stays NaN
    (out / "results.json").write_text(text)
    stored = json.loads(text)
    (out / "table.md").write_text(table(stored).rstrip("\n") + "\n")
    return stored


def load(path: Path | str) -> dict[str, Any]:
    """A ``results.json`` (the file, or the folder holding it)."""
    path = Path(path)
    return json.loads((path / "results.json" if path.is_dir() else path).read_text())


def torch_models_alone():
    """``cnn_jax.testing.torch_models`` (the models' PyTorch references) loaded from its file
    alone, for a worker process that measures torch by itself: importing it through the cnn_jax
    package would load JAX as well, and JAX's memory would count as torch's."""
    import importlib.util

    path = ROOT / "cnn_jax" / "testing" / "torch_models.py"
    spec = importlib.util.spec_from_file_location("_torch_models_alone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
