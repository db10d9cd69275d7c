"""Question: how long after ``cnn-jax train`` does the user see the first epoch, and what does the
default main job reach?

Runs the CLI in fresh processes (the default job: LeNet-5 on the embedded digits, all its epochs,
or ``--model`` / ``--epochs``) and times, from the moment the process starts, its first line of
output (data loaded, model built and initialised), its first epoch line (first step compiled, one
epoch trained, validated and checkpointed) and its exit. Reports the median and range over
``--repeats`` runs, and each run's ``summary.json`` (test accuracy of the best checkpoint, its
step, the run's own wall-clock time).

    python -m experiments.bench_startup --repeats 5   # the default main job, 5 times
    python -m experiments.bench_startup --quick       # one run of one epoch: the tests

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_startup``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments import record

NAME = "bench_startup"
MODULE = f"experiments.{NAME}"
TIMES = ("first_line_s", "first_epoch_s", "total_s")


def one_run(args: list[str]) -> dict:
    """One ``cnn-jax train`` in a fresh process: its three times and its summary.json."""
    workdir = Path(tempfile.mkdtemp(prefix="cnn_jax_startup_"))
    cmd = [sys.executable, "-m", "cnn_jax.cli", "train", "--workdir", str(workdir), *args]
    times: dict[str, float] = {}
    start = time.perf_counter()
    try:
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as p:
            assert p.stdout is not None
            for line in p.stdout:
                now = time.perf_counter() - start
                times.setdefault("first_line_s", now)
                if line.lstrip().startswith("epoch"):
                    times.setdefault("first_epoch_s", now)
            times["total_s"] = time.perf_counter() - start
            if p.wait() != 0:
                raise SystemExit(f"{' '.join(cmd)} failed with exit code {p.returncode}")
        summary = json.loads((workdir / "summary.json").read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {**times, "summary": summary}


def tables(results: dict) -> str:
    """Median and range of each time over the runs, and the runs' outcome."""
    runs = results["runs"]
    lines = ["| from process start to | median s | range s |", "|---|---|---|"]
    for key, label in zip(TIMES, ("first output line", "first epoch line", "exit"), strict=True):
        values = [r[key] for r in runs]
        lines.append(
            f"| {label} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |"
        )
    s = runs[0]["summary"]
    accuracies = sorted({r["summary"]["test_accuracy"] for r in runs})
    best_epoch = s["best_step"] // (s["steps"] // s["epochs"])
    lines += [
        "",
        f"{len(runs)} runs of `cnn-jax train {' '.join(results['settings']['args'])}`".rstrip()
        + f": {s['model']} on {s['dataset']}, {s['epochs']} epochs, test accuracy of the best "
        f"checkpoint (epoch {best_epoch}) "
        + " / ".join(f"{a:.4f}" for a in accuracies)
        + f"; the run's own wall clock (summary.json) median "
        f"{statistics.median(r['summary']['wall_s'] for r in runs):.2f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None, help="default: the CLI's (lenet5)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the CLI's")
    parser.add_argument("--quick", action="store_true", help="one run of one epoch")
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs = 1, 1
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    cli_args = [*(["--model", args.model] if args.model else []),
                *(["--epochs", str(args.epochs)] if args.epochs else [])]  # fmt: skip
    import cnn_jax  # noqa: F401  (the runtime settings the provenance records)

    run = record.provenance(MODULE, argv)
    runs = []
    for i in range(args.repeats):
        runs.append(one_run(cli_args))
        print(f"run {i + 1}: " + ", ".join(f"{k} {runs[-1][k]:.2f}" for k in TIMES), flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(
        out, {"settings": {"args": cli_args}, "runs": runs}, tables, provenance=run
    )
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    record.entry_point(main)
