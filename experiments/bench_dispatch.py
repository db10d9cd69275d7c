"""Question: what do JAX's asynchronous CPU dispatch, TCMalloc and glibc's huge pages cost a
train step, and what do they give?

With asynchronous dispatch (JAX's default) a program runs on a worker thread of the CPU client,
and glibc serves that thread's blocks of more than 64 MB with a fresh ``mmap`` on every call, so
every page of a step's temporaries faults again, step after step (``cnn_jax.runtime``'s module
docstring has the mechanism). Three settings act on it:

* TCMalloc (opt-in: with ``CNN_JAX_ALLOCATOR=tcmalloc``, ``cnn_jax.runtime.relaunch``
  preloads it where the machine has it) keeps freed blocks of every size for reuse, by any
  thread;
* ``CNN_JAX_DISPATCH=sync`` runs single-device programs on the calling thread, whose glibc heap
  keeps its pages, but then the host's work for the next step no longer overlaps the running
  one;
* glibc's huge pages (the default: ``relaunch`` again, where TCMalloc is not asked for;
  ``CNN_JAX_HUGE_PAGES=0`` turns them off) leave the faults' cause alone but make each fault
  bring in 2 MiB instead of 4 KiB.

All are read when a process starts, so each setting (:data:`SETTINGS`) runs in its own process;
the processes alternate (``--rounds`` times each, the order reversed every other round) so all
see the same machine. On a machine without TCMalloc, or where glibc or the kernel gives no huge
pages, two settings are the same, and the results say so (each process records its own).

Two measurements per process:

* **steps**: each model's train step (AdamW, the zoo's 64x64 batch 32 for torchvision families,
  the course models at their own input size and ``--batch-size``), blocking on every step as
  ``bench_vs_torch`` does: the median step time and the page faults per step
  (``getrusage``'s minor faults, the whole process);
* **loop**: ``cnn_jax.train.fit``'s throughput (images/s over the epochs after the first) on the
  course models, where the overlap is what dispatch gives.

    python -m experiments.bench_dispatch
    python -m experiments.bench_dispatch --quick     # lenet5 only, one round: the tests

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_dispatch``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from experiments import record

NAME = "bench_dispatch"
MODULE = f"experiments.{NAME}"
# Each setting: the environment its process starts with. "async" and "sync": TCMalloc
# (CNN_JAX_ALLOCATOR=tcmalloc, where the machine has it); "glibc": the library's default allocator,
# glibc's, with huge pages where the machine takes them; JAX's asynchronous dispatch unless "sync".
SETTINGS = {
    "async": {"CNN_JAX_ALLOCATOR": "tcmalloc"},
    "sync": {"CNN_JAX_ALLOCATOR": "tcmalloc", "CNN_JAX_DISPATCH": "sync"},
    "async, glibc": {},
    "sync, glibc": {"CNN_JAX_DISPATCH": "sync"},
    "async, glibc, 4 KiB pages": {"CNN_JAX_HUGE_PAGES": "0"},
}


def named(setting: str) -> tuple[str, bool]:
    """The allocator and whether huge pages, that ``setting``'s name says its process runs with
    (on a machine that has TCMalloc and huge pages; :func:`_expected` asks this machine)."""
    env = SETTINGS[setting]
    tcmalloc = env.get("CNN_JAX_ALLOCATOR") == "tcmalloc"
    huge = not tcmalloc and env.get("CNN_JAX_HUGE_PAGES") != "0"
    return ("tcmalloc" if tcmalloc else "glibc"), huge


# The ratios the summary gives: name -> (slower-if-above-1 setting, the one it is compared to)
# for steps; the loop's throughputs are compared the other way round.
RATIOS = {
    "dispatch": ("async", "sync"),
    "dispatch_glibc": ("async, glibc", "sync, glibc"),
    "allocator": ("async, glibc", "async"),
    "huge_pages": ("async, glibc, 4 KiB pages", "async, glibc"),
}
MODES = tuple(SETTINGS)
STEP_MODELS = ("resnet18", "mobilenet_v2", "regnet_y_400mf", "convnext_tiny", "cifar_cnn", "lenet5")
LOOP_MODELS = ("lenet5", "cifar_cnn")
COURSE_MODELS = ("lenet5", "cifar_cnn", "convnet")  # stepped at their own input size
_RESULT = "bench_dispatch result: "


def _steps(models: list[str], batch_size: int, steps: int) -> dict:
    """Median ms per blocking train step and minor page faults per step, per model."""
    import resource
    import time

    from experiments import bench_vs_torch as B

    out = {}
    for name in models:
        if name in COURSE_MODELS:
            run = B.jax_trainer(name, batch_size)
        else:
            run = B.jax_trainer(name, B.ZOO_BATCH, zoo=True)
        for _ in range(3):
            run()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        out[name] = {"ms": statistics.median(times), "faults_per_step": faults / steps}
    return out


def _loop(models: list[str], batch_size: int, epochs: int) -> dict:
    """``fit``'s images/s, the median over the epochs after the first, per model."""
    out = {}
    for name in models:
        with tempfile.TemporaryDirectory() as workdir:
            out[name] = statistics.median(
                record.fit_images_per_s(name, epochs, batch_size, workdir)
            )
    return out


def _worker(args: argparse.Namespace) -> None:
    """One process's measurements, printed as one JSON line (the settings come from the
    environment, read by ``cnn_jax.runtime`` as the process starts)."""
    import dataclasses

    import cnn_jax

    cnn_jax.runtime.apply()
    result = {
        "dispatch": dataclasses.asdict(cnn_jax.runtime.dispatch_settings()),
        "allocator": dataclasses.asdict(cnn_jax.runtime.allocator_settings()),
        "huge_pages": dataclasses.asdict(cnn_jax.runtime.huge_page_settings()),
        "steps": _steps(args.models, args.batch_size, args.steps),
        "loop": _loop(args.loop_models, args.batch_size, args.epochs),
    }
    print(_RESULT + json.dumps(result), flush=True)


def _clean_environment() -> dict[str, str]:
    """This process's environment without the settings each worker sets for itself."""

    env = dict(os.environ)
    for name in _OWN:
        env.pop(name, None)
    return env


_OWN = (
    "CNN_JAX_DISPATCH",
    "JAX_CPU_ENABLE_ASYNC_DISPATCH",
    "CNN_JAX_HUGE_PAGES",
    "CNN_JAX_ALLOCATOR",
)  # fmt: skip (cnn_jax.runtime's DISPATCH_SWITCH, HUGE_PAGES_SWITCH, ALLOCATOR_SWITCH and JAX's)


def _expected(setting: str) -> tuple[str, bool]:
    """The allocator and whether huge pages, that a worker of ``setting`` should run with on
    this machine."""
    from cnn_jax import runtime

    env = {**_clean_environment(), **SETTINGS[setting]}
    return runtime.allocator_wanted(env).name, runtime.huge_pages_wanted(env).enabled


def _spawn(mode: str, args: argparse.Namespace) -> dict:
    """Runs :func:`_worker` in a fresh process with ``mode``'s environment."""
    argv = [
        sys.executable, "-m", MODULE, "--worker",
        "--models", *args.models, "--loop-models", *args.loop_models,
        "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--epochs", str(args.epochs),
    ]  # fmt: skip
    env = {**_clean_environment(), **SETTINGS[mode]}
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, cwd=record.ROOT, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode or not lines:
        raise RuntimeError(f"{mode} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    got = json.loads(lines[-1].removeprefix(_RESULT))
    synchronous = SETTINGS[mode].get("CNN_JAX_DISPATCH") == "sync"
    if got["dispatch"]["synchronous"] != synchronous:
        raise RuntimeError(f"the {mode!r} worker ran with {got['dispatch']}")
    allocator, huge = _expected(mode)
    if got["allocator"]["name"] != allocator or got["huge_pages"]["enabled"] != huge:
        raise RuntimeError(
            f"the {mode!r} worker ran with {got['allocator']} and {got['huge_pages']}, "
            f"not {allocator} with huge pages {huge}"
        )
    return got


def summary(results: dict) -> dict:
    """Per model, per setting, the median over rounds of each process's figure, and the
    :data:`RATIOS`, each above 1.0 where the second-named setting gains: ``dispatch``
    (asynchronous against synchronous, with TCMalloc), ``dispatch_glibc`` (the same with glibc
    and its huge pages, the library's default), ``allocator`` (glibc against TCMalloc,
    asynchronous) and ``huge_pages`` (4 KiB pages against huge ones, glibc, asynchronous). For
    steps the ratio is of times, for the loop of throughputs. ``allocator`` and ``huge_pages``:
    per setting, what each round's process ran with."""
    rounds = results["rounds"]
    modes = list(rounds[0])
    steps, loops = {}, {}
    for model in results["settings"]["models"]:
        ms = {m: statistics.median(r[m]["steps"][model]["ms"] for r in rounds) for m in modes}
        faults = {
            m: statistics.median(r[m]["steps"][model]["faults_per_step"] for r in rounds)
            for m in modes
        }
        steps[model] = {"ms": ms, "faults": faults}
        steps[model].update({k: ms[a] / ms[b] for k, (a, b) in RATIOS.items()})
    for model in results["settings"]["loop_models"]:
        rate = {m: statistics.median(r[m]["loop"][model] for r in rounds) for m in modes}
        loops[model] = {"images_per_s": rate}
        loops[model].update({k: rate[b] / rate[a] for k, (a, b) in RATIOS.items()})
    return {
        "steps": steps,
        "loop": loops,
        "allocator": {m: [r[m]["allocator"]["name"] for r in rounds] for m in modes},
        "huge_pages": {m: [r[m]["huge_pages"]["enabled"] for r in rounds] for m in modes},
    }


def _ratio_heads(throughput: bool = False) -> str:
    """The ratio columns' heads, slower-if-above-1 setting first for times, second for
    throughputs."""
    return " | ".join(f"{b} / {a}" if throughput else f"{a} / {b}" for a, b in RATIOS.values())


def tables(results: dict) -> str:
    """The two tables: blocking steps, and the run loop's throughput, every setting."""
    s = summary(results)
    n = len(results["rounds"])
    batch = results["settings"]["batch_size"]
    heads = " / ".join(MODES)
    lines = [
        f"Blocking train steps, median ms of each process's steps, then the median over {n} "
        f"alternating rounds (torchvision families at 64x64 batch 32, course models at batch "
        f"{batch}); page faults per step of the whole process; ratios of step times, above 1.0 "
        "where the second-named setting is faster",
        "",
        f"| model | {heads} (ms) | {_ratio_heads()} | faults per step ({heads}) |",
        "|---|---|" + "---|" * len(RATIOS) + "---|",
    ]
    for model, r in s["steps"].items():
        ms = " / ".join(f"{r['ms'][m]:.1f}" for m in MODES)
        ratios = " | ".join(f"{r[k]:.2f}" for k in RATIOS)
        faults = " / ".join(f"{r['faults'][m]:,.0f}" for m in MODES)
        lines.append(f"| {model} | {ms} | {ratios} | {faults} |")
    lines += [
        "",
        f"`cnn_jax.train.fit` (batch {batch}), images/s over the epochs after the first, the "
        f"median over {n} rounds; ratios of throughputs, above 1.0 where the second-named "
        "setting is faster",
        "",
        f"| model | {heads} (images/s) | {_ratio_heads(throughput=True)} |",
        "|---|---|" + "---|" * len(RATIOS),
    ]
    for model, r in s["loop"].items():
        rates = " / ".join(f"{r['images_per_s'][m]:,.0f}" for m in MODES)
        ratios = " | ".join(f"{r[k]:.2f}" for k in RATIOS)
        lines.append(f"| {model} | {rates} | {ratios} |")
    lines += [
        "",
        "Allocator per setting, round by round: "
        + "; ".join(f"{m}: {s['allocator'][m]}" for m in MODES),
        "",
        "Huge pages in force per setting, round by round: "
        + "; ".join(f"{m}: {s['huge_pages'][m]}" for m in MODES),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(STEP_MODELS))
    parser.add_argument("--loop-models", nargs="*", default=list(LOOP_MODELS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per model")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each fit (first untimed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="lenet5 only, one round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return None
    if args.quick:
        args.models, args.loop_models = ["lenet5"], ["lenet5"]
        args.steps, args.epochs, args.rounds = 5, 2, 1
    if args.rounds < 1 or args.steps < 1 or args.batch_size < 1 or args.epochs < 2:
        parser.error(
            "--rounds, --steps and --batch-size must be >= 1 and --epochs >= 2 (the first compiles)"
        )
    from cnn_jax import runtime

    users = runtime._users_malloc(os.environ)
    if os.environ.get("LD_PRELOAD", "").strip():
        users.append("LD_PRELOAD")
    if users:  # the settings named "glibc" or "4 KiB pages" could not be what they say
        parser.error(f"compares cnn_jax's own allocator settings: unset {', '.join(users)}")
    not_course = [m for m in args.loop_models if m not in COURSE_MODELS]
    if not_course:
        parser.error(f"--loop-models takes course models {COURSE_MODELS}, not {not_course}")
    from cnn_jax.models import list_models

    unknown = [m for m in [*args.models, *args.loop_models] if m not in list_models()]
    if unknown:  # refused here, not after a worker process has started
        parser.error(f"unknown models: {', '.join(unknown)}")
    for name in _OWN:
        os.environ.pop(name, None)  # each worker sets its own; the parent records none
    run = record.provenance(MODULE, argv)
    results: dict = {
        "settings": {
            "models": args.models, "loop_models": args.loop_models,
            "batch_size": args.batch_size, "steps": args.steps, "epochs": args.epochs,
        },
        "rounds": [],
    }  # fmt: skip
    for r in range(args.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]  # none always runs first or last
        measured = {mode: _spawn(mode, args) for mode in order}
        results["rounds"].append({mode: measured[mode] for mode in MODES})
        print(f"round {r + 1}: {json.dumps(results['rounds'][-1])}", flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(out, results, tables, provenance=run)
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    record.entry_point(main)
