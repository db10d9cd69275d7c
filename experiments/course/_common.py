"""What every course experiment shares: its command line, runs through ``cnn_jax.train.fit`` (the
same loop, checks and checkpoints as ``cnn-jax train``), datasets and model variants registered by
name, mean ± std over seeds (the sample standard deviation, n - 1), and the results folder
(``results.json`` through :mod:`experiments.record`, ``table.md`` rendered from it, figures).

Not a library: the experiments import it; users import ``cnn_jax``.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnn_jax import data, models
from cnn_jax import train as T
from cnn_jax.errors import DivergenceError
from experiments import record


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The options every experiment takes; ``name`` is its results folder under ``course/``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (what the tests run)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; quick: 2)")
    record.add_out_argument(p, f"course/{name}")
    p.add_argument("--dataset", default="digits", help="any prepared tfds dataset")
    p.add_argument("--data-dir", default="", help="tfds data_dir of --dataset")
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="keep each run's work directory here (default: a temporary folder, deleted); "
        "a re-run then reuses finished runs",
    )
    return p


def parse(name: str, doc: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed options, with ``out`` resolved (:func:`experiments.record.out_dir`) and the
    run's ``provenance`` taken now, when it starts."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(name, doc).parse_args(argv)
    args.out = record.out_dir(args.out, f"course/{name}", args.quick)
    args.provenance = record.provenance(f"experiments.course.{name}", argv)
    return args


def seeds(args: argparse.Namespace) -> list[int]:
    n = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    if n < 1:
        raise SystemExit("--seeds must be >= 1")
    return list(range(n))


def register_dataset(name: str, factory: Callable[..., Any]) -> str:
    """Registers ``factory`` as dataset ``name`` (replacing any earlier definition in this
    process, so the name always means this experiment's data); returns ``name``."""
    data.register(name, factory, replace=True)
    return name


def register_subset(args: argparse.Namespace, per_class: int) -> str:
    """``--dataset`` at 32×32 with ``per_class`` training images per class (seed 0), registered
    as ``<dataset>-<per_class>-per-class``; returns the name."""
    return register_dataset(
        f"{args.dataset}-{per_class}-per-class",
        lambda **_: data.variants.subset(base(args, 32), per_class, seed=0),
    )


def register_model(name: str, **kwargs: Any) -> str:
    """Registers ``convnet`` with ``kwargs`` fixed as model ``name`` (replacing any earlier
    definition); returns ``name``."""
    models.register(name, replace=True)(functools.partial(models.convnet, **kwargs))
    return name


def base(args: argparse.Namespace, image_size: int | None = 32) -> dict[str, data.Split]:
    """The dataset the experiment starts from (``--dataset``, resized to ``image_size``)."""
    return data.load(args.dataset, data_dir=args.data_dir or None, image_size=image_size)


@dataclass
class Result:
    """One training run: its summary and epoch records, or why it diverged."""

    tag: str
    workdir: Path
    summary: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    diverged: str = ""

    @property
    def test_accuracy(self) -> float:
        """The best checkpoint's test accuracy; NaN for a diverged run."""
        return float(self.summary["test_accuracy"]) if self.summary else float("nan")

    def curve(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.history]


class Runs:
    """Trains configs through :func:`cnn_jax.train.fit`, one work directory per tag."""

    def __init__(self, args: argparse.Namespace):
        self._tmp = None
        if args.runs_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cnn_jax_course_")
            self.root = Path(self._tmp.name)
        else:
            self.root = args.runs_dir
        self.count = 0
        self.seconds = 0.0

    def fit(self, tag: str, **overrides: Any) -> Result:
        """Runs ``fit`` with the defaults plus ``overrides`` (dotted keys as ``a__b``:
        ``early_stopping__patience=5``). A diverged run is a result, not a crash."""
        config = T.default_config()
        config.keep_checkpoints = 1
        for key, value in overrides.items():
            target, parts = config, key.split("__")
            for part in parts[:-1]:
                target = target[part]
            target[parts[-1]] = value
        config.workdir = str(self.root / tag)
        lines: list[str] = []
        start = time.perf_counter()
        try:
            summary = T.fit(config, log=lines.append)
        except DivergenceError as err:
            summary, diverged = None, str(err)
        else:
            diverged = ""
        elapsed = time.perf_counter() - start
        self.count += 1
        self.seconds += elapsed
        history = T.RunDir(config.workdir).read_history()
        result = Result(tag, Path(config.workdir), summary, history, diverged)
        outcome = f"test acc {result.test_accuracy:.4f}" if summary else "DIVERGED"
        print(f"  {tag:<44} {outcome}  ({len(history)} epochs, {elapsed:.1f} s)", flush=True)
        return result

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def final_val(r: Result) -> float:
    """The last epoch's validation accuracy; NaN for a diverged run."""
    return r.history[-1]["val_accuracy"] if r.summary else float("nan")


def sweep_runs(found: dict[str, dict[float, list[Result]]]) -> dict[str, Any]:
    """Every run of a ``{label: {lr: [runs]}}`` sweep as JSON-able curves and outcomes."""
    return {
        label: {
            str(lr): [
                {
                    "val_accuracy": r.curve("val_accuracy"),
                    "train_loss": r.curve("train_loss"),
                    "test_accuracy": r.test_accuracy,
                    "diverged": r.diverged,
                }
                for r in rs
            ]
            for lr, rs in by_lr.items()
        }
        for label, by_lr in found.items()
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value); NaN when there are no
    values or any is NaN (a diverged run has no number, and a mean that silently skipped it
    would flatter)."""
    v = [float(x) for x in values]
    if not v or any(math.isnan(x) for x in v):
        return float("nan"), float("nan")
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def fmt(values: Sequence[float], digits: int = 3, percent: bool = False) -> str:
    """``'0.953 ± 0.012'`` (``'95.3 ± 1.2 %'`` with percent)."""
    m, s = mean_std(values)
    if np.isnan(m):
        return "diverged"
    if percent:
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write(
    args: argparse.Namespace,
    results: dict[str, Any],
    tables: Callable[[dict[str, Any]], str],
    runs: Runs,
) -> dict[str, Any]:
    """``results.json`` (every number, ``meta`` about the runs, the provenance) and ``table.md``
    (``tables`` of what was stored) in ``args.out``; returns the stored results."""
    meta = {
        "seeds": seeds(args),
        "runs": runs.count,
        "train_seconds": round(runs.seconds, 1),
        "dataset": args.dataset,
        "quick": args.quick,
    }
    stored = record.write(
        args.out,
        {"meta": meta, **results},
        lambda data: with_note(tables(data), data),
        provenance=args.provenance,
    )
    print((args.out / "table.md").read_text())
    print(f"{runs.count} runs, {runs.seconds:.0f} s of training; results in {args.out}")
    return stored


def with_note(table: str, results: dict[str, Any]) -> str:
    """``table`` and the line saying what its ± means."""
    seeds_ = ", ".join(map(str, results["meta"]["seeds"]))
    return (
        f"{table}\n\nmean ± std: the mean and the sample standard deviation (n − 1) over "
        f"seeds {seeds_}."
    )


def run_final_val(run: dict[str, Any]) -> float:
    """A stored run's last validation accuracy (``sweep_runs``' format); NaN if it diverged."""
    return float("nan") if run["diverged"] else float(run["val_accuracy"][-1])


def sweep_cell(runs: Sequence[dict[str, Any]]) -> str:
    """A sweep table's cell from stored runs (``sweep_runs``' format): final validation accuracy
    over the runs that trained, and how many diverged (counted, never averaged in)."""
    bad = sum(1 for r in runs if r["diverged"])
    if bad == len(runs):
        return "diverged"
    cell = fmt([run_final_val(r) for r in runs if not r["diverged"]])
    return cell + (f" ({bad} diverged)" if bad else "")
