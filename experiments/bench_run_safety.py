"""Question: what do the loop's per-step safety checks cost?

The loop reads each step's ``finite`` / ``invalid_labels`` flags two steps behind the step it
dispatches (``loop.RUN_AHEAD = 2``), which also bounds how far the host runs ahead. Without that
bound the host would dispatch a whole epoch and read the flags at its end. This script trains the
same runs both ways, interleaved, and reports the training throughput (images/s over the training
steps of epochs 2 and later, so compilation is excluded; the median over epochs, then over
repeats) and its ratio.

    python -m experiments.bench_run_safety --epochs 6 --repeats 5
    python -m experiments.bench_run_safety --quick      # lenet5, 2 epochs, once: the tests

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_run_safety``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from cnn_jax.train.run import loop
from experiments import record

NAME = "bench_run_safety"
MODULE = f"experiments.{NAME}"
MODES = {"checked": 2, "unbounded": 10**9}  # RUN_AHEAD of each


def _throughput(model: str, epochs: int, batch_size: int, run_ahead: int, workdir: Path) -> list:
    """Images/s of each epoch after the first (which includes compilation)."""
    loop.RUN_AHEAD = run_ahead
    return record.fit_images_per_s(model, epochs, batch_size, workdir)


def summary(rates: dict[str, list[list[float]]]) -> dict[str, float]:
    """Per mode the median over repeats of each run's median epoch, and checked / unbounded."""
    out = {mode: statistics.median(statistics.median(r) for r in runs) for mode, runs in
           rates.items()}  # fmt: skip
    return {**out, "ratio": out["checked"] / out["unbounded"]}


def tables(results: dict) -> str:
    """Throughput with the checks and without the bound, and their ratio, per model; with the
    spread of repeated runs of one setting (max / min of the runs' medians)."""
    lines = [
        "| model | checked (RUN_AHEAD=2) img/s | unbounded img/s | ratio checked / unbounded | "
        "spread of repeats (max / min), checked; unbounded |",
        "|---|---|---|---|---|",
    ]
    for model, rates in results["models"].items():
        s = summary(rates)
        spread = [
            max(medians) / min(medians)
            for medians in ([statistics.median(r) for r in rates[m]] for m in MODES)
        ]
        lines.append(
            f"| {model} | {s['checked']:,.0f} | {s['unbounded']:,.0f} | {s['ratio']:.3f} | "
            f"{spread[0]:.3f}; {spread[1]:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "cifar_cnn"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="lenet5, 2 epochs, one repeat")
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.epochs, args.repeats = ["lenet5"], 2, 1
    if args.epochs < 2 or args.repeats < 1:
        parser.error("--epochs must be >= 2 (the first is compilation) and --repeats >= 1")
    run = record.provenance(MODULE, argv)
    results: dict = {
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "repeats": args.repeats, "run_ahead": MODES},
        "models": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            rates: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
            for r in range(args.repeats):  # interleaved: both modes see the same machine state
                for mode, ahead in MODES.items():
                    workdir = Path(tmp) / f"{model}-{mode}-{r}"
                    rates[mode].append(
                        _throughput(model, args.epochs, args.batch_size, ahead, workdir)
                    )
            results["models"][model] = rates
            print(f"{model}: {summary(rates)}", flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(out, results, tables, provenance=run)
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    record.entry_point(main)
