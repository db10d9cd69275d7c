"""Question: how long after ``cnn-jax train`` does the user see the first epoch?

Runs the CLI in fresh processes (the default job: LeNet-5 on the embedded digits, or ``--model``)
and times, from the moment the process starts, its first line of output (data loaded, model
built and initialised) and its first epoch line (first step compiled, one epoch trained,
validated and checkpointed). Reports the median and range over ``--repeats`` runs.

    python experiments/bench_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(args: list[str]) -> dict[str, float]:
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
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return times


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    runs = [
        one_run(["--model", args.model, "--epochs", str(args.epochs)]) for _ in range(args.repeats)
    ]
    out = {key: [r[key] for r in runs] for key in ("first_line_s", "first_epoch_s", "total_s")}
    for key, values in out.items():
        print(
            f"{key:14s} median {statistics.median(values):5.2f} s  "
            f"(range {min(values):.2f}-{max(values):.2f}, {len(values)} runs)"
        )
    return out


if __name__ == "__main__":
    main()
