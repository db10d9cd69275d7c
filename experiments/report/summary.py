"""The main job and run safety in README.md, and experiments/README.md's table of questions: one
row per results file, its command, headline result and machine."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from experiments.report import (
    MISSING,
    Missing,
    block,
    machine,
    rerun_command,
    results,
    span,
    when,
)


def job() -> dict:
    """The default main job as bench_startup ran it: accuracy, best epoch, times (medians)."""
    data = results("bench_startup")
    runs = data["runs"]
    s = runs[0]["summary"]
    return {
        "data": data,
        "accuracy": sorted({r["summary"]["test_accuracy"] for r in runs}),
        "best_epoch": s["best_step"] // (s["steps"] // s["epochs"]),
        "epochs": s["epochs"],
        "total": statistics.median(r["total_s"] for r in runs),
        "inside": statistics.median(r["summary"]["wall_s"] for r in runs),
        "first_epoch": statistics.median(r["first_epoch_s"] for r in runs),
        "runs": len(runs),
    }


def _accuracy(values: list[float]) -> str:
    return " / ".join(f"{100 * a:.1f}%" for a in values)


@block("main_job")
def _main_job() -> str:
    j = job()
    p = j["data"]["provenance"]
    return (
        f"It reached {_accuracy(j['accuracy'])} test accuracy (best checkpoint, epoch "
        f"{j['best_epoch']} of {j['epochs']}) in {j['total']:.1f} s wall clock from process start "
        f"({j['inside']:.1f} s inside the run; medians of {j['runs']} runs of "
        f"`{rerun_command(p)}` on a {machine(p)}, {when(p)})."
    )


MISSING["main_job"] = (
    "`python -m experiments.bench_startup` runs it several times and records its test accuracy "
    "and wall-clock time ({folder})."
)


@block("run_safety.cost")
def _run_safety() -> str:
    from experiments.bench_run_safety import summary

    data = results("bench_run_safety")
    ratios = {m: summary(r)["ratio"] for m, r in data["models"].items()}
    spread = [
        max(med) / min(med) - 1
        for rates in data["models"].values()
        for runs in rates.values()
        for med in [[statistics.median(r) for r in runs]]
    ]
    p = data["provenance"]
    return (
        "Cost, against a loop that reads nothing until the epoch ends: "
        + ", ".join(f"{m} {r:.2f}×" for m, r in ratios.items())
        + f" the throughput, where repeated runs of one setting spread by up to "
        f"{100 * max(spread):.0f}% (`{rerun_command(p)}`, {machine(p)})."
    )


MISSING["run_safety.cost"] = (
    "What the checks cost against a loop that reads nothing until the epoch ends: "
    "`python -m experiments.bench_run_safety` ({folder})."
)


# ---------------------------------------------------------------------------------------------
# experiments/README.md: the table of questions
# ---------------------------------------------------------------------------------------------


def _speed() -> str:
    from experiments.report.speed import HEADLINE, MODELS, _rows

    rows = _rows(HEADLINE)

    def ratios(model: str) -> list[float]:
        return [r["ratio_torch_over_jax"] for (m, _), r in rows.items() if m == model]

    ranges = ", ".join(f"{m} {span(ratios(m), lambda x: f'{x:.2f}')}" for m in MODELS)
    return (
        f'torch / cnn_jax step time {ranges} at batch 32-256 (above 1: cnn_jax faster). See "Speed"'
    )


def _startup() -> str:
    j = job()
    return (
        f"{_accuracy(j['accuracy'])} test accuracy (best checkpoint, epoch {j['best_epoch']} of "
        f"{j['epochs']}); first epoch line after {j['first_epoch']:.2f} s, whole run "
        f"{j['total']:.1f} s (medians of {j['runs']})"
    )


def _conv_backends() -> str:
    data = results("bench_conv_backends")
    pool = data["pools"][0]["ms"]
    return (
        f"per layer and backend in `table.md`; max pooling's derivative {pool['cnn_jax']:.1f} ms "
        f"against XLA's {pool['xla']:.1f} ms"
    )


def _gradients() -> str:
    from experiments.gradient_precision import summary

    s = summary(results("gradient_precision"))
    moved = s["cnn_jax"]["moved_range"] + s["torch"]["moved_range"]
    return (
        f"nowhere in the arithmetic: on the same linear piece cnn_jax's float32 error is "
        f"{s['ratio_mean']:.2f} ± {s['ratio_std']:.2f}× torch's; the "
        f"{span(moved, lambda x: f'{x:.0e}')} errors against plain float64 are ReLU / max-pool "
        f'decisions flipped by rounding, in both frameworks. See "Float32 gradients"'
    )


def _styles() -> str:
    return 'the same numbers to float32 rounding; see "Functional vs stateful"'


def _safety() -> str:
    from experiments.bench_run_safety import summary

    data = results("bench_run_safety")
    return "throughput with the checks / without: " + ", ".join(
        f"{m} {summary(r)['ratio']:.2f}" for m, r in data["models"].items()
    )


def _pipeline() -> str:
    data = results("bench_input_pipeline")
    if "decode" not in data["parts"]:
        return 'see "Input pipeline"'
    d = data["decode"]
    ratios = " / ".join(
        f"{r['cnn_jax']['images_per_s'] / r['torchvision']['images_per_s']:.2f}" for r in d["rows"]
    )
    workers = " / ".join(str(r["workers"]) for r in d["rows"])
    return (
        f"cnn_jax / torchvision images/s {ratios} at {workers} worker processes (JPEG decode, "
        f"random-resized-crop, flip to 224×224); a ResNet-50 step on one A100 needs "
        f'{d["a100_resnet50"]["workers_needed"]} of them. See "Input pipeline"'
    )


QUESTIONS: list[tuple[str, str, str, Callable[[], str]]] = [
    ("Does the default main job learn, and how soon does it show an epoch?", "bench_startup",
     "python -m experiments.bench_startup --repeats 5", _startup),
    ("Is a cnn_jax train step faster than PyTorch eager?", "bench_vs_torch",
     "python -m experiments.bench_vs_torch --memory --conv-budget", _speed),
    ("Which convolution backend is faster on CPU?", "bench_conv_backends",
     "python -m experiments.bench_conv_backends --batch 128", _conv_backends),
    ("Where does vgg16_bn's float32 gradient lose precision?", "gradient_precision",
     "python -m experiments.gradient_precision --seeds 8", _gradients),
    ("Do the functional, PyTorch and NNX styles train the same?", "functional_vs_stateful",
     "python -m experiments.functional_vs_stateful", _styles),
    ("What do the loop's per-step divergence and label checks cost?", "bench_run_safety",
     "python -m experiments.bench_run_safety", _safety),
    ("Can the input pipeline feed an accelerator from image files?", "bench_input_pipeline",
     "python -m experiments.bench_input_pipeline", _pipeline),
]  # fmt: skip


@block("index")
def _index() -> str:
    lines = ["| question | command | result | machine |", "|---|---|---|---|"]
    for question, name, command, result in QUESTIONS:
        try:
            data = results(name)
        except Missing:
            lines.append(f"| {question} | `{command}` | not measured yet | - |")
            continue
        p = data["provenance"]
        parts = data.get("parts", {})
        if len({part["command"] for part in parts.values()}) > 1:
            # Parts re-measured by separate runs: the command that measures them all, and the
            # machine of each part in its own section.
            ran, where = f"`{command}` (its parts by separate runs)", "per part, in its section"
        else:
            ran, where = f"`{rerun_command(p)}`", f"{machine(p, torch=True)}, {when(p)}"
        lines.append(f"| {question} | {ran} | {result()} | {where} |")
    return "\n".join(lines)
