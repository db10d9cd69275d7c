"""Speed on CPU against PyTorch: the headline table (``bench_vs_torch``), its side runs (settings
off and on, the roofline, bfloat16), the convolution budget, convolution backends and start-up,
for README.md's "Speed on CPU" and experiments/README.md's "Speed"."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable
from typing import Any

from experiments import bench_vs_torch
from experiments.report import (
    MISSING,
    Missing,
    block,
    machine,
    rerun_command,
    result_folders,
    results,
    settings,
    span,
    when,
    where,
)

# The course models the headline run times, in its order: the bench says which.
MODELS = tuple(bench_vs_torch.MODELS)
HEADLINE = "bench_vs_torch"


def _rows(name: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["model"], r["batch_size"]): r for r in results(name)["results"]}


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}"


def _blocks(data: dict[str, Any]) -> tuple[int, int]:
    """Blocks per framework and timed steps per block of a run (from its stored times)."""
    times = data["results"][0]["block_times_s"]["cnn_jax"]
    return len(times), len(times[0])


def _ran(name: str) -> str:
    """``command`` on machine (when; settings): how a results folder was measured."""
    p = results(name)["provenance"]
    return f"`{rerun_command(p)}` on a {machine(p, torch=True)} ({when(p)}; {settings(p)})"


def _apart(first: str, second: str) -> str:
    """How the two runs were made: one each, how far apart if their times were recorded (in
    either order), and on which machine each ran where the two differ."""
    a, b = results(first)["provenance"], results(second)["provenance"]
    text = "one run each"
    if a.get("started") and b.get("started"):
        start = datetime.datetime.fromisoformat(a["started"])
        gap = abs(datetime.datetime.fromisoformat(b["started"]) - start)
        text += f", started {gap.total_seconds() / 60:.0f} min apart"
    on_a, on_b = machine(a), machine(b)
    if on_a != on_b:
        text += f", `{first}` on a {on_a} and `{second}` on a {on_b}"
    return text


def _side_by_side(off: str, on: str, what: str) -> str:
    """Per model at the runs' batch size: cnn_jax's step and torch / cnn_jax in run ``off`` ->
    run ``on``."""
    a, b = _rows(off), _rows(on)
    keys = [k for k in a if k in b]

    def cells(rows: dict, key: Callable[[dict], float], fmt: Callable[[float], str]) -> str:
        return " / ".join(fmt(key(rows[k])) for k in keys)

    def step(r: dict) -> float:
        return r["step_s"]["cnn_jax"]

    def torch_step(r: dict) -> float:
        return r["step_s"]["torch"]

    def ratio(r: dict) -> float:
        return r["ratio_torch_over_jax"]

    return (
        f"{' / '.join(k[0] for k in keys)} at batch {keys[0][1]}: {cells(a, step, _ms)} → "
        f"{cells(b, step, _ms)} ms a step, torch / cnn_jax {cells(a, ratio, _ratio)} → "
        f"{cells(b, ratio, _ratio)} ({what}; {_apart(off, on)}: `experiments/results/{off}/` "
        f"and `experiments/results/{on}/`; torch's own step in the same runs "
        f"{cells(a, torch_step, _ms)} → {cells(b, torch_step, _ms)} ms)"
    )


# ---------------------------------------------------------------------------------------------
# README.md
# ---------------------------------------------------------------------------------------------


def _ratio_grid(rows: dict, ratio: str, spread: str) -> list[str]:
    """The headline's models by batch size: each cell the run's ``ratio`` with its ``spread``
    over the blocks in brackets ('-' where the row has no such ratio)."""
    batches = sorted({b for _, b in rows})
    lines = [
        "| model | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for model in MODELS:
        cells = []
        for b in batches:
            r = rows[(model, b)]
            if ratio not in r:
                cells.append("-")
                continue
            lo, hi = r[spread]
            cells.append(f"{_ratio(r[ratio])} ({_ratio(lo)}-{_ratio(hi)})")
        label = f"{model} (32×32)" if model == "resnet18" else model
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


@block("speed.table")
def _table() -> str:
    data = results(HEADLINE)
    blocks, steps = _blocks(data)
    return "\n".join(
        [
            f"{_ran(HEADLINE)}. The same network and AdamW in one process, {blocks} alternating "
            f"blocks of {steps} steps per framework; ratio = torch eager step / cnn_jax step, "
            f"**above 1 means cnn_jax is faster**, in brackets the range over the blocks:",
            "",
            *_ratio_grid(_rows(HEADLINE), "ratio_torch_over_jax", "ratio_range"),
        ]
    )


@block("speed.flax_peer")
def _flax_peer() -> str:
    rows = _rows(HEADLINE)
    if not any("ratio_flax_over_jax" in r for r in rows.values()):
        return (
            "Not measured yet: the stored headline run predates the plain flax.linen peers; "
            "`python -m experiments.bench_vs_torch --memory --conv-budget` times them beside "
            "cnn_jax and torch."
        )
    return "\n".join(
        [
            "The same networks written in plain flax.linen (`experiments/flax_peers.py`: "
            "`nn.Conv`, `nn.BatchNorm`, `nn.max_pool`, a TrainState step), stepped in the same "
            "run's blocks with the same XLA settings; ratio = plain flax step / cnn_jax step, "
            "**above 1 means cnn_jax is faster**, in brackets the range over the blocks:",
            "",
            *_ratio_grid(rows, "ratio_flax_over_jax", "flax_ratio_range"),
        ]
    )


def _on_cpu(name: str) -> bool:
    """Whether a bench_vs_torch run stepped both frameworks on the CPU (older files: yes)."""
    return results(name)["settings"].get("torch_device", "cpu") == "cpu"


def _torch_variance() -> str:
    """torch's own cifar_cnn step at batch 128 across every stored CPU run of the benchmark."""
    found = []
    for name in result_folders():
        if name.startswith(HEADLINE) and _on_cpu(name):
            r = _rows(name).get(("cifar_cnn", 128))
            if r and results(name)["settings"].get("compute_dtype", "float32") == "float32":
                found.append((name, r["step_s"]["torch"]))
    head = dict(found)[HEADLINE]
    others = [s for n, s in found if n != HEADLINE]
    return (
        f"The torch step of cifar_cnn at batch 128 took {_ms(head)} ms in this run and "
        f"{span(others, _ms)} ms in the {len(others)} other stored runs of the benchmark, so a "
        f"ratio from one run moves by as much between runs"
    )


def _budget_verdicts() -> dict[str, list[int]]:
    """Per model, the batch sizes where cnn_jax's convolutions alone exceed torch's step / 1.5."""
    out: dict[str, list[int]] = {m: [] for m in MODELS}
    for (model, batch), r in _rows(HEADLINE).items():
        if r["conv_budget"]["conv_s"]["cnn_jax"] > r["step_s"]["torch"] / 1.5:
            out[model].append(batch)
    return out


@block("speed.goal")
def _goal() -> str:
    rows = _rows(HEADLINE)
    over = _budget_verdicts()
    met, missed = [], []
    for m in MODELS:
        ratios = {b: r["ratio_torch_over_jax"] for (mm, b), r in sorted(rows.items()) if mm == m}
        short = [b for b, ratio in ratios.items() if ratio < 1.5]
        shown = ", ".join(f"batch {b} ({_ratio(ratios[b])})" for b in short)
        if not short:
            met.append(f"{m} at every batch size ({span(list(ratios.values()), _ratio)})")
            continue
        reached = [b for b in ratios if b not in short]
        if reached:
            met.append(f"{m} at " + ", ".join(f"batch {b} ({_ratio(ratios[b])})" for b in reached))
        if len(short) == len(ratios):
            every = f"{m} at every batch size ({span(list(ratios.values()), _ratio)})"
            missed.append((m, short, every))
        else:
            missed.append((m, short, f"{m} at {shown}"))
    verdict = (
        f"The goal of 1.5× *faster* than torch is met in this run for {'; '.join(met)}"
        if met
        else "The goal of 1.5× *faster* than torch is met in this run for no model"
    )
    if missed:
        verdict += ", and missed for " + "; ".join(text for _, _, text in missed)
    budget = []
    for m, short, _ in missed:
        beyond = [b for b in short if b in over[m]]
        within = [b for b in short if b not in over[m]]
        if beyond:
            budget.append(
                f"{m}'s convolutions alone exceed that budget at batch "
                f"{', '.join(map(str, beyond))}, where only faster convolution kernels could "
                "meet it"
            )
        if within:
            budget.append(
                f"{m}'s fit it at batch {', '.join(map(str, within))}, where the rest of the step "
                "is what is slower"
            )
    return (
        f"{verdict}. {_torch_variance()}. "
        + (
            "Timed alone (`--conv-budget`), against a budget of torch's whole step / 1.5: "
            + "; ".join(budget)
            + "."
            if budget
            else ""
        )
    ).rstrip()


ZOO = f"{HEADLINE}/zoo"
MISSING["speed.zoo"] = (
    "Not measured yet: `python -m experiments.bench_vs_torch --zoo --memory` on a quiet machine "
    "writes {folder}, and this table comes from it."
)


def _zoo_table(name: str) -> str:
    """A zoo run's table (bench_vs_torch's) and how many families it has at torch's speed."""
    data = results(name)
    rows = sorted(data["results"], key=lambda r: r["ratio_torch_over_jax"])
    blocks, steps = _blocks(data)
    ahead = [r for r in rows if r["ratio_torch_over_jax"] >= 1.0]
    slowest = ", ".join(f"{r['model']} {_ratio(r['ratio_torch_over_jax'])}" for r in rows[:3])
    return (
        f"{_ran(name)}. Each torchvision family's first (smallest) model, trained side by side "
        f"with torchvision's own code and AdamW, {blocks} alternating blocks of {steps} steps per "
        f"framework; parameters and GMACs at the crop size of torchvision's weights, as it "
        f"publishes them; ratio = torch eager step / cnn_jax step (**above 1: cnn_jax is "
        f"faster**), slowest first:\n\n"
        + bench_vs_torch.zoo_table(data["results"]).rstrip("\n")
        + f"\n\ncnn_jax is at least torch eager's speed on {len(ahead)} of {len(rows)} "
        f"families in this run; the slowest ratios are {slowest}."
    )


@block("speed.zoo")
def _zoo() -> str:
    return _zoo_table(ZOO)


ZOO_SYNC = f"{HEADLINE}/zoo_sync"
MISSING["speed.zoo_sync"] = (
    "Not measured yet: `CNN_JAX_DISPATCH=sync python -m experiments.bench_vs_torch --zoo "
    "--memory --out {folder}` on a quiet machine, and this table comes from it."
)


@block("speed.zoo_sync")
def _zoo_sync() -> str:
    return _zoo_table(ZOO_SYNC)


RESNET_SIZES = (
    (HEADLINE, "resnet18", 128),
    (f"{HEADLINE}/resnet50_b128", "resnet50", 128),
    (f"{HEADLINE}/resnet_224", "resnet18", 16),
    (f"{HEADLINE}/resnet_224", "resnet50", 16),
)
RESNET_224_BUDGET = f"{HEADLINE}/resnet_224_budget"
RESNET50_224_XLA_OFF = f"{HEADLINE}/resnet50_224_xla_off"
MISSING["speed.resnet_sizes"] = (
    "Not measured yet: `python -m experiments.bench_vs_torch --zoo --models resnet18 resnet50 "
    "--size 224 --batch-sizes 16 --memory --out {folder}` on a quiet machine."
)


def _resnet_224_budget(budget: dict[str, Any], model: str) -> str:
    """``model`` at 224x224: its step, and its convolutions timed alone summed per part."""
    (r,) = [r for r in budget["results"] if r["model"] == model]
    step = {k: 1e3 * v for k, v in r["step_s"].items()}
    parts: dict[str, dict[str, float]] = {}
    for kind in conv_kind_parts(budget, model).values():
        for label in ("cnn_jax", "torch"):
            for part, ms in kind[label].items():
                parts.setdefault(part, {}).setdefault(label, 0.0)
                parts[part][label] += ms
    conv = {k: 1e3 * v for k, v in r["conv_budget"]["conv_s"].items()}
    each = ", ".join(
        f"{_PART_NAMES[p]} {v['cnn_jax']:.0f} / {v['torch']:.0f}" for p, v in parts.items()
    )
    faster = all(v["cnn_jax"] < v["torch"] for v in parts.values())
    text = (
        f"{model}'s step took {step['cnn_jax']:.0f} / {step['torch']:.0f} ms (cnn_jax / torch, "
        f"{_ratio(r['ratio_torch_over_jax'])}); each convolution timed alone and summed: {each} "
        f"ms, {conv['cnn_jax']:.0f} / {conv['torch']:.0f} ms in all."
    )
    if faster and conv["torch"] > step["torch"]:
        text += (
            " cnn_jax's convolutions alone are faster than torch's in every part, yet torch's "
            "alone add up to more than its whole step: at this size, layers timed one by one "
            "do not reproduce what a step costs, so this run does not say which part of "
            "cnn_jax's step is behind."
        )
    elif conv["torch"] <= step["torch"]:
        (row,) = [row for row in zoo_budget_rows(budget) if row["model"] == model]
        text += (
            f" With torch's convolutions cnn_jax's step would be {_ratio(row['conv_matched'])} "
            f"of torch's speed, with torch's rest of the step {_ratio(row['rest_matched'])}"
            + (f": {_IN_THE_WAY[_in_the_way(row)]}." if row["ratio"] < 1.0 else ".")
        )
    return text


def _in_the_way(row: dict[str, Any]) -> str:
    """Which part of a step stands between it and torch's speed, from the ratios it would have
    with torch's convolutions or torch's rest of the step (a :func:`zoo_budget_rows` row):
    ``'convolutions'``, ``'rest'``, ``'either'`` (each alone would do) or ``'both'``."""
    conv, rest = row["conv_matched"] >= 1.0, row["rest_matched"] >= 1.0
    return {(True, False): "convolutions", (False, True): "rest", (True, True): "either"}.get(
        (conv, rest), "both"
    )


_IN_THE_WAY = {
    "convolutions": "the convolutions are what stand in the way",
    "rest": "the rest of the step is what stands in the way",
    "either": "either part at torch's time would do",
    "both": "neither part at torch's time alone would do",
}


def _resnet_224_budgets(budget: dict[str, Any]) -> str:
    """Where each ResNet's time goes at 224x224, from one ``--conv-budget`` run."""
    models = [r["model"] for r in budget["results"]]
    p = budget["provenance"]
    return (
        f"Where the time goes at 224×224: `{rerun_command(p)}` on a {machine(p, torch=True)} "
        f"({when(p)}; {settings(p)}), a separate run that times every convolution of a step "
        "alone in both frameworks. " + " ".join(_resnet_224_budget(budget, m) for m in models)
    )


@block("speed.resnet_sizes")
def _resnet_sizes() -> str:
    lines = [
        "| model | input | cnn_jax ms | torch ms | torch / cnn_jax (block range) | "
        "peak RSS MB (cnn_jax / torch) | results |",
        "|---|---|---|---|---|---|---|",
    ]
    commands = {}
    for folder, model, batch in RESNET_SIZES:
        r = _rows(folder)[(model, batch)]
        size = r.get("input_size", 32)
        rss = r.get("peak_rss_mb")
        lo, hi = r["ratio_range"]
        lines.append(
            f"| {model} | {size}x{size}, batch {batch} | {_ms(r['step_s']['cnn_jax'])} | "
            f"{_ms(r['step_s']['torch'])} | **{_ratio(r['ratio_torch_over_jax'])}** "
            f"({_ratio(lo)}-{_ratio(hi)}) | "
            + (f"{rss['cnn_jax']:.0f} / {rss['torch']:.0f}" if rss else "-")
            + f" | `experiments/results/{folder}/` |"
        )
        commands.setdefault(folder, _ran(folder))
    text = (
        "ResNet-18 and ResNet-50 at batch 128 on 32×32 images and at batch 16 on 224×224, "
        "torchvision's own code beside cnn_jax, AdamW; measured by "
        + "; ".join(commands.values())
        + ":\n\n"
        + "\n".join(lines)
    )
    with contextlib.suppress(Missing):
        text += "\n\n" + _resnet_224_budgets(results(RESNET_224_BUDGET))
    with contextlib.suppress(Missing):
        off = _rows(RESNET50_224_XLA_OFF)[("resnet50", 16)]
        text += (
            " With `CNN_JAX_XLA_DEFAULTS=0` (YNNPACK's convolutions, "
            f"`experiments/results/{RESNET50_224_XLA_OFF}/`, a separate run) resnet50's step at "
            f"224×224 took {_ms(off['step_s']['cnn_jax'])} ms against torch's "
            f"{_ms(off['step_s']['torch'])} ({_ratio(off['ratio_torch_over_jax'])}): the "
            "setting pays at this size too."
        )
    return text


@block("speed.xla_setting")
def _xla_setting() -> str:
    return _side_by_side("bench_vs_torch/b128_off", "bench_vs_torch/b128_on", "with "
                         "`CNN_JAX_XLA_DEFAULTS=0` and then without")  # fmt: skip


def _alternating(p: dict, ratio: str, variants: str = "Both variants") -> str:
    """How a step-variant benchmark (``experiments.record.step_bench``) ran, up to its ratios:
    ``ratio`` says which variant over which, and when it is above 1.0; ``variants`` how many
    variants it compiled."""
    return (
        f"`{rerun_command(p)}` on a {machine(p)} ({when(p)}; {settings(p)}). {variants} of "
        f"each step are compiled in the same process and timed in alternating blocks ({ratio})"
    )


MISSING["speed.dispatch"] = (
    "`python -m experiments.bench_dispatch` times train steps and the run loop with TCMalloc and "
    "glibc's allocator, JAX's asynchronous CPU dispatch and `CNN_JAX_DISPATCH=sync`, in "
    "alternating processes; its results ({folder}) are not stored yet."
)


def _named_as_run(s: dict) -> str:
    """Whether each setting's processes ran with the allocator and pages its name says."""
    from experiments.bench_dispatch import named

    wrong = [
        m
        for m in s["allocator"]
        if any(a != named(m)[0] for a in s["allocator"][m])
        or any(h != named(m)[1] for h in s["huge_pages"][m])
    ]
    if not wrong:
        return "every process ran with the allocator and pages its setting names"
    return (
        f"not every process ran with the allocator and pages its setting names: {', '.join(wrong)}"
    )


@block("speed.dispatch")
def _dispatch() -> str:
    from experiments.bench_dispatch import RATIOS, summary

    data = results("bench_dispatch")
    p = data["provenance"]
    s = summary(data)
    batch = data["settings"]["batch_size"]

    def steps(ratio: str) -> str:  # step times, the slower-if-above-1 setting first
        first, second = RATIOS[ratio]
        return "; ".join(
            f"{model} {r[ratio]:.2f}× ({r['ms'][first]:.1f} / {r['ms'][second]:.1f} ms, "
            f"{r['faults'][first]:,.0f} / {r['faults'][second]:,.0f} page faults a step)"
            for model, r in s["steps"].items()
        )

    def loop(ratio: str) -> str:  # throughputs, the other way round
        second, first = RATIOS[ratio]
        return "; ".join(
            f"{model} {r[ratio]:.2f}× ({r['images_per_s'][first]:,.0f} / "
            f"{r['images_per_s'][second]:,.0f} images/s)"
            for model, r in s["loop"].items()
        )

    return (
        f"`{rerun_command(p)}` on a {machine(p)} ({when(p)}; {settings(p)}). Each of "
        f"{len(s['allocator'])} settings runs in its own process, alternating, "
        f"{len(data['rounds'])} rounds; medians over the rounds; {_named_as_run(s)}. Blocking "
        f"train steps (torchvision families at 64×64, batch 32; course models at batch {batch}), "
        f"glibc / TCMalloc, both asynchronous, above 1.0 where TCMalloc is faster: "
        f"{steps('allocator')}. Asynchronous / synchronous dispatch, "
        f"above 1.0 where synchronous is faster, with TCMalloc: "
        f"{steps('dispatch')}; with glibc: "
        f"{steps('dispatch_glibc')}. glibc with 4 KiB / huge "
        f"pages, asynchronous, above 1.0 where huge pages are faster: "
        f"{steps('huge_pages')}. The run loop "
        f"(`fit`, batch {batch}, images/s after the first epoch), TCMalloc / glibc, "
        f"asynchronous: {loop('allocator')}; synchronous / "
        f"asynchronous with TCMalloc: {loop('dispatch')}; with glibc: "
        f"{loop('dispatch_glibc')}; glibc with huge / 4 KiB "
        f"pages, asynchronous: {loop('huge_pages')}."
    )


MISSING["speed.copy_insertion"] = (
    "`python -m experiments.bench_copy_insertion` times train steps with XLA's copy insertion "
    "by region analysis (the library's setting) and by its default analysis; its results "
    "({folder}) are not stored yet."
)


@block("speed.copy_insertion")
def _copy_insertion() -> str:
    data = results("bench_copy_insertion")
    p = data["provenance"]
    region, default = "region analysis", "default analysis"
    gains = "; ".join(
        f"{r['model']} at {r['size']}×{r['size']}, batch {r['batch']}: "
        f"{r['ms'][default] / r['ms'][region]:.2f}× ({r['copied_inputs'][default]} → "
        f"{r['copied_inputs'][region]} inputs copied, "
        f"{r['temp_bytes'][default] / 2**20:.0f} → {r['temp_bytes'][region] / 2**20:.0f} MiB of "
        "temporaries)"
        for r in data["steps"]
    )
    ratio = "default / region analysis, above 1.0 where the library's setting is faster"
    return (
        _alternating(p, ratio)
        + f": {gains} (`experiments/results/bench_copy_insertion/table.md` has the step times)"
    )


MISSING["speed.kernel_layout"] = (
    "`python -m experiments.bench_kernel_layout` times train steps with the state's kernels in "
    "the step's layout (HWIO, what the run loop holds on the CPU) and in torch's (OIHW); its "
    "results ({folder}) are not stored yet."
)


@block("speed.kernel_layout")
def _kernel_layout() -> str:
    data = results("bench_kernel_layout")
    p = data["provenance"]
    step, torch = "step layout", "torch layout"
    gains = "; ".join(
        f"{r['model']} at {r['size']}×{r['size']}, batch {r['batch']}: "
        f"{r['ms'][torch] / r['ms'][step]:.2f}× ({r['step_kernels']} of {r['kernels']} kernels "
        f"HWIO, {r['temp_bytes'][torch] / 2**20:.0f} → {r['temp_bytes'][step] / 2**20:.0f} MiB "
        "of temporaries)"
        for r in data["steps"]
    )
    ratio = "torch layout / step layout, above 1.0 where the step layout is faster"
    return (
        _alternating(p, ratio)
        + f": {gains} (`experiments/results/bench_kernel_layout/table.md` has the step times)"
    )


MISSING["speed.flat_adamw"] = (
    "`python -m experiments.bench_flat_adamw` times train steps with AdamW array by array (the "
    "library) and over one flat vector (`optax.flatten`); its results ({folder}) are not stored "
    "yet."
)


# Step-time ratios this close to 1.0 are told as no difference: two runs of the same step bench
# on a 2-core machine differ by about as much.
TIE = 0.02


def _side(ratio: float, tie: float) -> int:
    """-1 below ``1 - tie``, 1 above ``1 + tie``, 0 in between."""
    return -1 if ratio < 1 - tie else 1 if ratio > 1 + tie else 0


@block("speed.flat_adamw")
def _flat_adamw() -> str:
    from experiments.bench_flat_adamw import VARIANTS

    data = results("bench_flat_adamw")
    p = data["provenance"]
    library, flat = VARIANTS
    ratios = [r["ms"][flat] / r["ms"][library] for r in data["steps"]]
    gains = "; ".join(
        f"{r['model']} at {r['size']}×{r['size']}, batch {r['batch']} "
        f"({r['parameter_arrays']} parameter arrays): {ratio:.2f}× "
        f"({r['temp_bytes'][library] / 2**20:.1f} → {r['temp_bytes'][flat] / 2**20:.1f} MiB of "
        "temporaries)"
        for r, ratio in zip(data["steps"], ratios, strict=True)
    )

    def which(side: int) -> str:
        """The models on one side of the tie band (-1: flat faster, 1: slower, 0: within)."""
        cases = [
            (r, x) for r, x in zip(data["steps"], ratios, strict=True) if _side(x, TIE) == side
        ]
        if not cases:
            return "none"
        names = ", ".join(dict.fromkeys(r["model"] for r, _ in cases))
        if side == 0:
            return names
        most = max(abs(1 - x) for _, x in cases)
        return f"{names} (by up to {most:.0%})"

    return (
        _alternating(p, "flat AdamW / library, above 1.0 where the library's AdamW is faster")
        + f": {gains}. The flat vector was faster for {which(-1)}, slower for {which(1)}, and "
        f"within {TIE:.0%} for {which(0)} (`experiments/results/bench_flat_adamw/table.md` has "
        "the step times)."
    )


MISSING["speed.steps_per_call"] = (
    "`python -m experiments.bench_steps_per_call` times the course models' train steps run one, "
    "four and sixteen to a call (`lax.scan`) beside torch eager's; its results ({folder}) are "
    "not stored yet."
)


@block("speed.steps_per_call")
def _steps_per_call() -> str:
    from experiments.bench_steps_per_call import VARIANTS
    from experiments.report import table_md

    data = results("bench_steps_per_call")
    labels = data["settings"]["variants"]
    shape = {label: (k, unrolled) for label, k, unrolled in VARIANTS}
    one = next(label for label in labels if shape[label][0] == 1)
    several = [label for label in labels if shape[label][0] > 1 and shape[label][1]]
    loops = [label for label in labels if not shape[label][1]]

    def ratio(r: dict, label: str) -> float:
        return r["ms"]["torch"] / r["ms"][label]

    def best(r: dict) -> str:
        return max(several, key=lambda label: ratio(r, label))

    said = "; ".join(
        f"{r['model']} at batch {r['batch']}: {ratio(r, one):.2f} with `{one}`, at best "
        f"{ratio(r, best(r)):.2f} (`{best(r)}`)"
        + "".join(f", {ratio(r, loop):.2f} with `{loop}`" for loop in loops)
        for r in data["steps"]
    )
    reached = [
        f"{r['model']} at batch {r['batch']}" for r in data["steps"] if ratio(r, best(r)) >= 1.5
    ]
    slower = [r["ms"][loop] / r["ms"][one] for r in data["steps"] for loop in loops]
    return (
        f"{_ran('bench_steps_per_call')}. torch eager / cnn_jax per step, with `{one}` (what "
        f"`fit` runs) and with the best of {', '.join(f'`{x}`' for x in several)}: {said}. "
        "With several steps per call written out the 1.5× goal is "
        + (f"reached for {', '.join(reached)}" if reached else "reached for none of them")
        + (
            f". As XLA's while loop the same steps took {min(slower):.1f} to "
            f"{max(slower):.1f} times as long as with `{one}`"
            if slower
            else ""
        )
        + ".\n\n"
        + table_md("bench_steps_per_call")
    )


MISSING["speed.pool_gradient"] = (
    "`python -m experiments.bench_pool_gradient` times train steps with DenseNet's stored "
    "pooling gradient (the library), without it, and with every max pooling's output gradient "
    "stored; its results ({folder}) are not stored yet."
)


@block("speed.pool_gradient")
def _pool_gradient() -> str:
    data = results("bench_pool_gradient")
    p = data["provenance"]
    rows = "; ".join(
        f"{r['model']} at {r['size']}×{r['size']}, batch {r['batch']}: "
        f"{r['ms']['none'] / r['ms']['library']:.2f}× / "
        f"{r['ms']['every max pool'] / r['ms']['library']:.2f}×"
        for r in data["steps"]
    )
    ratio = (
        "none / library and every max pool / library, above 1.0 where the library is faster; "
        "outside DenseNet `none` is the library's step compiled again"
    )
    return (
        _alternating(p, ratio, "The three variants")
        + f": {rows} (`experiments/results/bench_pool_gradient/table.md` has the step times "
        "and each model's number of max poolings)"
    )


MISSING["speed.padding_taps"] = (
    "`python -m experiments.bench_padding_taps` times train steps with convolutions that are "
    "mostly padding computed tap by tap (the library) and without the rule; its results "
    "({folder}) are not stored yet."
)


@block("speed.padding_taps")
def _padding_taps() -> str:
    return _rule_block("bench_padding_taps", off="without taps", covered="taps", verb="tap by tap")


MISSING["speed.unfolded_groups"] = (
    "`python -m experiments.bench_unfolded_groups` times train steps with grouped convolutions "
    "on maps no larger than their windows computed unfolded (the library) and as batched "
    "im2col; its results ({folder}) are not stored yet."
)


@block("speed.unfolded_groups")
def _unfolded_groups() -> str:
    return _rule_block(
        "bench_unfolded_groups", off="without unfolding", covered="unfolded", verb="unfolded"
    )


MISSING["speed.unfolded_depthwise"] = (
    "`python -m experiments.bench_unfolded_depthwise` times train steps with depthwise "
    "convolutions with large kernels on small maps computed unfolded (the library) and tap by "
    "tap; its results ({folder}) are not stored yet."
)


@block("speed.unfolded_depthwise")
def _unfolded_depthwise() -> str:
    return _rule_block(
        "bench_unfolded_depthwise",
        off="tap by tap",
        covered="unfolded",
        verb="unfolded",
        costs=True,
    )


def _rule_block(name: str, *, off: str, covered: str, verb: str, costs: bool = False) -> str:
    """The block of a benchmark that times the library's train steps against ``off`` (one of
    its rules turned off): per case, the convolutions the rule covers (``covered`` of
    ``convolutions``, computed as ``verb`` says) and ``off`` / library; ``costs``: also both
    variants' compile seconds and temporaries."""
    data = results(name)

    def row(r: dict) -> str:
        text = (
            f"{r['model']} at {r['size']}×{r['size']}, batch {r['batch']} ({r[covered]} of "
            f"{r['convolutions']} convolutions {verb}): "
            f"{r['ms'][off] / r['ms']['library']:.2f}×"
        )
        if costs:
            text += (
                f", compiled in {r['compile_s']['library']:.1f} / {r['compile_s'][off]:.1f} s, "
                f"{r['temp_bytes']['library'] / 2**20:.0f} / {r['temp_bytes'][off] / 2**20:.0f} "
                "MiB of temporaries"
            )
        return text

    ratio = f"{off} / library, above 1.0 where the library is faster"
    if costs:
        ratio += f"; compile seconds and temporaries library / {off}"
    rows = "; ".join(row(r) for r in data["steps"])
    return (
        _alternating(data["provenance"], ratio)
        + f": {rows} (`experiments/results/{name}/table.md` has the step times)"
    )


@block("speed.allocator")
def _allocator() -> str:
    return _side_by_side(
        "bench_vs_torch/b128_malloc_off",
        "bench_vs_torch/b128_malloc_on",
        "with `CNN_JAX_MALLOC_DEFAULTS=0` and then without",
    )


@block("speed.bf16")
def _bf16() -> str:
    f32, bf16 = _rows("bench_vs_torch/b128_on"), _rows("bench_vs_torch/b128_bf16")
    keys = [k for k in f32 if k in bf16]
    return (
        f"torch-eager / cnn_jax ratios at batch 128 fall from "
        f"{' / '.join(_ratio(f32[k]['ratio_torch_over_jax']) for k in keys)} to "
        f"{' / '.join(_ratio(bf16[k]['ratio_torch_over_jax']) for k in keys)} for "
        f"{' / '.join(k[0] for k in keys)} (two runs, one per dtype: "
        f"`experiments/results/bench_vs_torch/b128_on/` and `b128_bf16/`)"
    )


MISSING["speed.conv_xla"] = ""


@block("speed.conv_xla")
def _conv_xla() -> str:
    xla, auto = _rows("bench_vs_torch/b128_conv_xla"), _rows("bench_vs_torch/b128_on")
    k = ("resnet18", 128)
    return (
        f" (resnet18 at batch 128: {_ms(xla[k]['step_s']['cnn_jax'])} ms a step with "
        f"`--conv-backend xla` against {_ms(auto[k]['step_s']['cnn_jax'])} ms with `auto`, "
        f"`experiments/results/bench_vs_torch/b128_conv_xla/` and `b128_on/`, one run each)"
    )


MISSING["speed.startup"] = (
    "`python -m experiments.bench_startup` times how long `cnn-jax train` takes to show its first "
    "epoch ({folder})."
)


@block("speed.startup")
def _startup() -> str:
    from experiments.report.summary import job

    j = job()
    return (
        f"`cnn-jax train` shows its first epoch {j['first_epoch']:.2f} s after the process starts "
        f"(median of {j['runs']} runs, {_ran('bench_startup')})."
    )


# ---------------------------------------------------------------------------------------------
# experiments/README.md
# ---------------------------------------------------------------------------------------------


@block("speed.full_table")
def _full_table() -> str:
    data = results(HEADLINE)
    blocks, steps = _blocks(data)
    lines = [
        f"{_ran(HEADLINE)}, {data['settings']['torch_threads']} torch threads. Same network, "
        f"AdamW (lr 1e-3, weight decay 1e-2 on every parameter) and random batch on both sides, "
        f"in one process: {blocks} alternating blocks of {steps} steps (each block's first step "
        f"dropped), medians; in brackets the range of the ratio over blocks. Peak RSS: each "
        f"framework alone in a fresh process.",
        "",
        "| model | batch | cnn_jax ms | torch ms | torch / cnn_jax | plain flax ms | "
        "cnn_jax first step s | peak RSS MB (cnn_jax / torch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        lo, hi = r["ratio_range"]
        rss = r.get("peak_rss_mb")
        flax = r["step_s"].get("flax")
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {_ms(r['step_s']['cnn_jax'])} | "
            f"{_ms(r['step_s']['torch'])} | {_ratio(r['ratio_torch_over_jax'])} "
            f"({_ratio(lo)}-{_ratio(hi)}) | {'-' if flax is None else _ms(flax)} | "
            f"{r['first_step_s']['cnn_jax']:.1f} | "
            + (f"{rss['cnn_jax']:.0f} / {rss['torch']:.0f} |" if rss else "- |")
        )
    if data["provenance"].get("migrated"):
        lines += [
            "",
            "The torch column of peak RSS in a file written before experiments.record includes "
            "the import of JAX (its memory worker imported cnn_jax); re-run, it is torch's own.",
        ]
    return "\n".join(lines)


@block("speed.budget")
def _budget() -> str:
    lines = [
        "| model | batch | torch step ms | 1.5× budget ms (torch step / 1.5) | cnn_jax step ms | "
        "cnn_jax convolutions alone ms | torch convolutions alone ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results(HEADLINE)["results"]:
        s, c = r["step_s"], r["conv_budget"]["conv_s"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {_ms(s['torch'])} | {_ms(s['torch'] / 1.5)} | "
            f"{_ms(s['cnn_jax'])} | {_ms(c['cnn_jax'])} | {_ms(c['torch'])} |"
        )
    return "\n".join(lines)


@block("speed.budget.findings")
def _budget_findings() -> str:
    rows, over = _rows(HEADLINE), _budget_verdicts()
    r = rows[("resnet18", 128)]
    rest = r["step_s"]["cnn_jax"] - r["conv_budget"]["conv_s"]["cnn_jax"]
    torch_conv = r["conv_budget"]["conv_s"]["torch"]
    parts = []
    for m in MODELS:
        n = len({b for mm, b in rows if mm == m})
        if len(over[m]) == n:
            parts.append(f"{m}'s convolutions alone are over the budget at every batch size")
        elif over[m]:
            parts.append(f"{m}'s at batch {', '.join(map(str, over[m]))} only")
        else:
            parts.append(f"{m}'s are under it at every batch size")
    budget = r["step_s"]["torch"] / 1.5
    mine = r["conv_budget"]["conv_s"]["cnn_jax"]
    if torch_conv > budget:
        resnet = (
            f"For resnet18 at batch 128 torch's own convolutions take {_ms(torch_conv)} ms "
            f"against that budget of {_ms(budget)} ms, cnn_jax's {_ms(mine)} ms"
            + (
                ": 1.5× torch eager for resnet18 on this CPU would need XLA:CPU's convolutions "
                "to be faster than oneDNN's and everything else in the step (BatchNorm, ReLU, "
                f"residual adds, AdamW: the step less its convolutions, {_ms(rest)} ms in this "
                "run) to nearly vanish."
                if mine > budget
                else f", the rest of cnn_jax's step (BatchNorm, ReLU, residual adds, AdamW) "
                f"{_ms(rest)} ms."
            )
        )
    else:
        resnet = (
            f"For resnet18 at batch 128 the budget is {_ms(budget)} ms; the convolutions take "
            f"{_ms(mine)} ms in cnn_jax and {_ms(torch_conv)} ms in torch, the rest of cnn_jax's "
            f"step {_ms(rest)} ms."
        )
    return (
        f"In this run {'; '.join(parts)}. {resnet} Where the sums sit under the budget the goal "
        "is not excluded by the convolutions."
    )


@block("speed.roofline")
def _roofline() -> str:
    data = results("bench_vs_torch/b128_roof")
    peak = data["settings"]["matmul_gflops"]
    lines = [
        f"{_ran('bench_vs_torch/b128_roof')}: the float32 matmul rate of each framework on a "
        f"2048³ product, and each step's convolution and linear work (forward MACs ×3 less the "
        f"first layer's input gradient, 2 FLOPs per MAC). float32 matmul: torch {peak['torch']:.0f}"
        f" GFLOP/s, XLA {peak['cnn_jax']:.0f} GFLOP/s.",
        "",
        "| model | batch | GFLOP / step | torch / cnn_jax | torch GFLOP/s | cnn_jax GFLOP/s | "
        "ceiling (XLA peak / torch's rate) | cnn_jax's share of XLA's peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        t, j = r["gflop"] / r["step_s"]["torch"], r["gflop"] / r["step_s"]["cnn_jax"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['gflop']:.2f} | "
            f"{_ratio(r['ratio_torch_over_jax'])} | {t:.0f} | {j:.0f} | "
            f"{peak['cnn_jax'] / t:.1f} | {100 * j / peak['cnn_jax']:.0f}% |"
        )
    ceilings = {
        r["model"]: peak["cnn_jax"] / (r["gflop"] / r["step_s"]["torch"]) for r in data["results"]
    }
    lowest = min(ceilings, key=ceilings.get)
    above = all(c > 1.5 for c in ceilings.values())
    needed = "; ".join(
        f"{r['model']} {100 * 1.5 / ceilings[r['model']]:.0f}% (now "
        f"{100 * r['gflop'] / r['step_s']['cnn_jax'] / peak['cnn_jax']:.0f}%)"
        for r in data["results"]
    )
    lines += [
        "",
        ("So the goal is not above this machine's peak" if above else "So the goal is above "
         "this machine's peak for some model")
        + f": XLA multiplies large matrices {peak['cnn_jax'] / peak['torch']:.1f}× as fast as "
        f"torch here, and the lowest ceiling is {lowest}'s ({ceilings[lowest]:.1f}). 1.5× torch "
        f"at the rates of this run needs each step's work done at this share of XLA's matmul "
        f"rate: {needed}.",
    ]  # fmt: skip
    return "\n".join(lines)


MISSING["speed.conv_parts"] = (
    "`python -m experiments.bench_conv_backends --batch 128 --parts` times each convolution's "
    "forward, weight gradient (dW) and input gradient (dX) apart, per backend, with GFLOP/s; run "
    "with `CNN_JAX_XLA_DEFAULTS=0` it shows XLA's default (YNNPACK) convolutions. Its results "
    "({folder}) are not stored yet."
)


@block("speed.conv_parts")
def _conv_parts() -> str:
    from experiments.report import table_md

    out = [f"With cnn_jax's XLA setting ({_ran('bench_conv_backends_parts')}):", "",
           table_md("bench_conv_backends_parts")]  # fmt: skip
    with contextlib.suppress(LookupError):  # the run with XLA's defaults is optional
        out += ["", f"XLA's defaults ({_ran('bench_conv_backends_parts_xla_off')}):", "",
                table_md("bench_conv_backends_parts_xla_off")]  # fmt: skip
    return "\n".join(out)


MISSING["speed.conv_backends"] = (
    "`python -m experiments.bench_conv_backends --batch 128` times forward + backward of single "
    "convolutions under every backend, and max pooling's derivative against XLA's; its results "
    "({folder}) are not stored yet."
)


@block("speed.conv_backends")
def _conv_backends() -> str:
    from experiments.report import table_md

    data = results("bench_conv_backends")
    layers = {r["layer"]: r["ms"] for r in data["layers"]}
    narrow = layers.get("conv3x3 256->256 @2 (ResNet)")
    pool = data["pools"][0]
    text = f"{_ran('bench_conv_backends')}"
    if narrow:
        text += (
            f": a padded 3×3 256→256 convolution on 2×2 maps takes {narrow['xla']:.1f} ms as "
            f"XLA's convolution against {narrow['im2col']:.1f} ms as im2col + matmul"
        )
    text += (
        f"; max pooling forward + backward ({pool['layer']}): {pool['ms']['cnn_jax']:.1f} ms with "
        f"cnn_jax's derivative against {pool['ms']['xla']:.1f} ms with XLA's "
        f"`select_and_scatter`."
    )
    return text + "\n\n" + table_md("bench_conv_backends")


GROUPED_AUTO, GROUPED_XLA = f"{HEADLINE}/zoo_budget", f"{HEADLINE}/zoo_budget_xla"
MISSING["speed.grouped"] = (
    "Not measured yet: `python -m experiments.bench_vs_torch --zoo --models ... --conv-budget` "
    "with `--out {folder}` (and for regnet_y_400mf and mobilenet_v2 again with "
    f"`--conv-backend xla` and `--out experiments/results/{GROUPED_XLA}`) on a quiet machine, "
    "and this table comes from them."
)


def conv_kind(layer: dict[str, Any]) -> str:
    """'depthwise' (one input channel per group), 'grouped' (several) or 'ungrouped'."""
    if layer["groups"] == 1:
        return "ungrouped"
    return "depthwise" if layer["input"][3] == layer["groups"] else "grouped"


def conv_kind_parts(data: dict[str, Any], model: str) -> dict[str, dict[str, Any]]:
    """Per kind of convolution of ``model``'s step (:func:`conv_kind`): the layers' count and,
    per framework, the milliseconds of each part (forward, weight and input gradient), times
    each layer's count."""
    (row,) = [r for r in data["results"] if r["model"] == model]
    out: dict[str, dict[str, Any]] = {}
    for layer in row["conv_budget"]["layers"]:
        kind = out.setdefault(conv_kind(layer), {"count": 0, "cnn_jax": {}, "torch": {}})
        kind["count"] += layer["count"]
        for label in ("cnn_jax", "torch"):
            for part, ms in layer["ms"][label].items():
                kind[label][part] = kind[label].get(part, 0.0) + layer["count"] * ms
    return out


def conv_kind_ms(data: dict[str, Any], model: str) -> dict[str, dict[str, float]]:
    """:func:`conv_kind_parts` with the parts summed: per kind, the count and each framework's
    milliseconds."""
    return {
        kind: {"count": v["count"], **{f: sum(v[f].values()) for f in ("cnn_jax", "torch")}}
        for kind, v in conv_kind_parts(data, model).items()
    }


@block("speed.grouped")
def _grouped() -> str:
    auto, xla = results(GROUPED_AUTO), results(GROUPED_XLA)
    on_xla = {r["model"] for r in xla["results"]}
    lines = [
        "| model | convolutions | layers | cnn_jax `'xla'` ms | cnn_jax `'auto'` ms | torch ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in auto["results"]:
        ours = conv_kind_ms(auto, r["model"])
        theirs = conv_kind_ms(xla, r["model"]) if r["model"] in on_xla else {}
        for kind in ("grouped", "depthwise", "ungrouped"):
            if kind in ours:
                a = ours[kind]
                x = f"{theirs[kind]['cnn_jax']:.1f}" if kind in theirs else "-"
                lines.append(
                    f"| {r['model']} | {kind} | {a['count']} | {x} | **{a['cnn_jax']:.1f}** | "
                    f"{a['torch']:.1f} |"
                )
    shown = ", ".join(sorted(on_xla))
    return (
        f"{_ran(GROUPED_AUTO)}, and {shown} with `--conv-backend xla` "
        f"(`experiments/results/{GROUPED_XLA}/`; {_apart(GROUPED_XLA, GROUPED_AUTO)}). Each "
        "convolution of one train step timed alone, forward pass, weight gradient and input "
        "gradient (the first layer's left out), summed by kind, times each layer's count "
        "('-': not run under `'xla'`):\n\n" + "\n".join(lines) + "\n\n" + _grouped_findings(auto)
    )


def _grouped_findings(auto: dict[str, Any]) -> str:
    """Where the grouped and depthwise paths stand against torch, part by part."""
    parts = []
    for r in auto["results"]:
        kinds = conv_kind_parts(auto, r["model"])
        for kind in ("grouped", "depthwise"):
            if kind not in kinds:
                continue
            ms = kinds[kind]
            ratios = {
                part: ms["cnn_jax"][part] / ms["torch"][part]
                for part in ms["cnn_jax"]
                if ms["torch"].get(part)
            }
            shown = ", ".join(
                f"{_PART_NAMES[part]} {ms['cnn_jax'][part]:.1f} / {ms['torch'][part]:.1f} ms "
                f"({ratios[part]:.2f}×)"
                for part in ("fwd", "dW", "dX")
                if part in ratios
            )
            parts.append(f"{r['model']}'s {kind} convolutions, cnn_jax / torch: {shown}")
    return "Part by part, " + "; ".join(parts) + "."


_PART_NAMES = {"fwd": "forward", "dW": "weight gradient", "dX": "input gradient"}


MISSING["speed.zoo_budget"] = (
    "Not measured yet: `python -m experiments.bench_vs_torch --zoo --models ... --conv-budget "
    "--blocks 3 --out {folder}` with the families below torch's speed, on a quiet machine."
)


def zoo_budget_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per family of a ``--zoo --conv-budget`` run: its step and the sum of its convolutions
    timed alone in each framework (ms), what is left of each step, and the torch / cnn_jax ratio
    the step would have if cnn_jax's convolutions took torch's time (``conv_matched``) or if the
    rest of its step did (``rest_matched``); slowest first."""
    rows = []
    for r in data["results"]:
        step = {k: 1e3 * v for k, v in r["step_s"].items()}
        conv = {k: 1e3 * v for k, v in r["conv_budget"]["conv_s"].items()}
        rest = {k: step[k] - conv[k] for k in step}
        rows.append(
            {
                "model": r["model"],
                "ratio": r["ratio_torch_over_jax"],
                "step": step,
                "conv": conv,
                "rest": rest,
                "conv_matched": step["torch"] / (rest["cnn_jax"] + conv["torch"]),
                "rest_matched": step["torch"] / (conv["cnn_jax"] + max(rest["torch"], 0.0)),
            }
        )
    return sorted(rows, key=lambda row: row["ratio"])


@block("speed.zoo_budget")
def _zoo_budget() -> str:
    rows = zoo_budget_rows(results(GROUPED_AUTO))
    lines = [
        "| family | torch / cnn_jax | step ms (cnn_jax / torch) | convolutions alone ms "
        "(cnn_jax / torch) | rest of the step ms (cnn_jax / torch) | ratio with torch's "
        "convolutions | ratio with torch's rest |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        step, conv, rest = row["step"], row["conv"], row["rest"]
        lines.append(
            f"| {row['model']} | {_ratio(row['ratio'])} | {step['cnn_jax']:.1f} / "
            f"{step['torch']:.1f} | {conv['cnn_jax']:.1f} / {conv['torch']:.1f} | "
            f"{rest['cnn_jax']:.1f} / {rest['torch']:.1f} | {_ratio(row['conv_matched'])} | "
            f"{_ratio(row['rest_matched'])} |"
        )
    below = [row for row in rows if row["ratio"] < 1.0]
    conv_only, rest_only, either, both = (
        [r["model"] for r in below if _in_the_way(r) == part]
        for part in ("convolutions", "rest", "either", "both")
    )
    negative = [r["model"] for r in rows if r["rest"]["torch"] < 0]
    said = []
    if conv_only:
        said.append(
            f"convolutions as fast as torch's per layer would bring {', '.join(conv_only)} to "
            "torch's speed, and the rest of the step alone would not"
        )
    if rest_only:
        said.append(
            f"for {', '.join(rest_only)} the rest of the step (linear layers, normalisation, "
            "activations, pooling, adds, AdamW) is what stands in the way: at torch's time it "
            "would bring the step to torch's speed, and convolutions at torch's time would not"
        )
    if either:
        said.append(f"for {', '.join(either)} either part at torch's time would be enough")
    if both:
        said.append(
            f"{', '.join(both)} would need both: neither part at torch's time alone reaches 1.0"
        )
    caveat = (
        f" For {', '.join(negative)} torch's convolutions timed alone add up to more than its "
        "whole step (oneDNN reuses work across a step that a layer timed alone cannot), so its "
        "rest is counted as zero there."
        if negative
        else ""
    )
    return (
        f"{_ran(GROUPED_AUTO)}: each family's train step (batch 32, 64×64, AdamW, "
        f"{_blocks(results(GROUPED_AUTO))[0]} alternating blocks) and every convolution of it "
        "timed alone in both frameworks (forward pass, weight gradient, input gradient; the "
        "first layer's input gradient left out), summed. The rest is the step less its "
        "convolutions. The last two columns are the torch / cnn_jax ratio the step would have "
        "if cnn_jax's convolutions, or the rest of its step, took torch's time; slowest "
        "first:\n\n"
        + "\n".join(lines)
        + (
            f"\n\nOf the {len(below)} families below 1.0 in this run, " + "; ".join(said) + "."
            if below and said
            else ""
        )
        + caveat
    )


MISSING["speed.materialize"] = (
    "`python -m experiments.bench_materialize` times train steps with every residual block's "
    "output stored once and with none stored; its results ({folder}) are not stored yet."
)


@block("speed.materialize")
def _materialize() -> str:
    from experiments.report import table_md

    data = results("bench_materialize")
    p = data["provenance"]

    def cases(in_library: bool) -> str:
        said = [
            f"{r['model']} {r['size']}x{r['size']} batch {r['batch']} "
            f"{r['ms']['recomputed'] / r['ms']['stored']:.2f}×"
            for r in data["steps"]
            if r["in_library"] == in_library
        ]
        return "; ".join(said) or "none measured"

    return (
        _alternating(p, "recomputed / stored, above 1.0 where storing is faster")
        + f". Where the library stores block outputs: {cases(True)}. Where it does not: "
        f"{cases(False)}.\n\n" + table_md("bench_materialize")
    )


MISSING["speed.grad_norm"] = (
    "`python -m experiments.bench_grad_norm` times train steps with the library's gradient norm "
    "and with `optax.tree.norm`, whose squares XLA merges with AdamW's; its results ({folder}) "
    "are not stored yet."
)


@block("speed.grad_norm")
def _grad_norm() -> str:
    data = results("bench_grad_norm")
    p = data["provenance"]
    gains = "; ".join(
        f"{r['model']} {r['ms']['optax norm'] / r['ms']['library']:.2f}× "
        f"({r['temp_bytes']['optax norm'] / 2**20:.0f} → {r['temp_bytes']['library'] / 2**20:.0f} "
        "MiB of temporaries)"
        for r in data["steps"]
    )
    return (
        _alternating(p, "optax norm / library, above 1.0 where the library's norm is faster")
        + f": {gains} (`experiments/results/bench_grad_norm/table.md` has the step times)."
    )


MISSING["speed.weight_gradients"] = (
    "`python -m experiments.bench_weight_gradients` times kernels' updates and train steps with "
    "large kernels' weight gradients stored, with none and with all, and with pointwise kernels' "
    "weight gradients by XLA's convolution; its results ({folder}) are not stored yet."
)


@block("speed.weight_gradients")
def _weight_gradients() -> str:
    from experiments.report import table_md

    data = results("bench_weight_gradients")
    p = data["provenance"]

    def ratio(r, variant, of):
        return r["ms"][variant] / r["ms"][of]

    def against_library(variant, touched_by):
        """Rows ``touched_by`` the variant's change as 'model HxW batch B ratio×', fastest
        first; the untouched rows' ratios (the same program: the spread); the touched models
        whose ratio is beyond that spread."""
        touched = [r for r in steps if r[touched_by]]
        control = [ratio(r, variant, "library") for r in steps if not r[touched_by]]
        listed = ", ".join(
            f"{r['model']} {r['size']}x{r['size']} batch {r['batch']} "
            f"{ratio(r, variant, 'library'):.2f}×"
            for r in sorted(touched, key=lambda r: -ratio(r, variant, "library"))
        )
        spread = max((abs(c - 1.0) for c in control), default=0.0)
        clear = [r["model"] for r in touched if ratio(r, variant, "library") - 1.0 > spread]
        return listed, control, ", ".join(dict.fromkeys(clear)) or "none"

    steps = data["steps"]
    gains, control, clear = against_library("none stored", "stored_kernels")
    every = ", ".join(
        f"{r['model']} {r['size']}x{r['size']} {ratio(r, 'all stored', 'library'):.2f}×"
        for r in steps
    )
    text = (
        f"`{rerun_command(p)}` on a {machine(p)} ({when(p)}; {settings(p)}). Every variant is "
        "compiled in the same process and timed in alternating blocks. Whole train steps, none "
        f"stored / library (above 1.0 where storing is faster): {gains}. Every kernel's gradient "
        f"stored, against the library (above 1.0 where storing all is slower): {every}."
    )
    if control:
        text += (
            f" A family without a kernel of at least {data['settings']['size']} elements "
            "compiles the same program with the library's rule and with none stored, so that "
            f"ratio ({', '.join(f'{c:.2f}×' for c in control)}) is the measurement's own spread; "
            f"gains beyond it: {clear}."
        )
    matmuls, control, clear = against_library("1x1 by convolution", "pointwise_kernels")
    text += (
        " 1x1 kernels' weight gradients by XLA's convolution against the library's matmuls "
        f"(above 1.0 where the matmul is faster): {matmuls}."
    )
    if control:
        text += (
            " The families without a 1x1 kernel compile the same program both ways "
            f"({', '.join(f'{c:.2f}×' for c in control)}, the spread); gains beyond it: "
            f"{clear}."
        )
    return text + "\n\n" + table_md("bench_weight_gradients")


MISSING["speed.batch_norm"] = (
    "`python -m experiments.bench_batch_norm` times train-mode BatchNorm2d + ReLU6 with cnn_jax's "
    "derivative rule, with jax's autodiff of the same formula and in torch, and whole train "
    "steps with and without the rule; its results ({folder}) are not stored yet."
)


@block("speed.batch_norm")
def _batch_norm() -> str:
    from experiments.report import table_md

    data = results("bench_batch_norm")
    steps = {r["model"]: r["ms"] for r in data["steps"]}
    gains = ", ".join(f"{model} {ms['autodiff'] / ms['rule']:.2f}×" for model, ms in steps.items())
    return (
        f"{_ran('bench_batch_norm')}. Each variant is traced in the same process and timed in "
        f"alternating blocks; the step times are what the rule saves in a whole step "
        f"(autodiff / rule: {gains}).\n\n" + table_md("bench_batch_norm")
    )


MISSING["speed.backward_rules"] = (
    "`python -m experiments.bench_backward_rules` times depthwise convolutions with their weight "
    "gradient in chunks of the batch and over the whole batch, ConvNeXt's MLP with GELU's "
    "derivative rule and with autodiff, strided layers' input gradients with the window slices "
    "transposed phase by phase and as jax transposes strided slices, torch beside each, and "
    "whole train steps with each arrangement undone; its results ({folder}) are not stored yet."
)


@block("speed.backward_rules")
def _backward_rules() -> str:
    from experiments.report import table_md

    data = results("bench_backward_rules")
    undone = {
        "whole batch": "the depthwise weight gradient over the whole batch",
        "autodiff GELU": "GELU's derivative left to autodiff",
        "erfc GELU": "GELU's value by jax.nn.gelu's erfc",
        "strided slices": "strided windows transposed as strided slices",
    }
    sentences = []
    for variant, what in undone.items():
        parts = [
            f"{r['model']} {r['ms'][variant] / r['ms']['library']:.2f}×"
            for r in data["steps"]
            if variant in r["ms"]
        ]
        if parts:
            sentences.append(f"{what}: {', '.join(parts)}")
    return (
        f"{_ran('bench_backward_rules')}. Each variant is compiled in the same process and "
        "timed in alternating blocks. Whole steps with one arrangement undone, against the "
        f"library: {'; '.join(sentences)}.\n\n" + table_md("bench_backward_rules")
    )


GPU_COURSE = (f"{HEADLINE}/gpu_course", f"{HEADLINE}/gpu_resnet18")
GPU_BF16, GPU_ZOO = f"{HEADLINE}/gpu_bf16", f"{HEADLINE}/gpu_zoo"
# Runs made after an earlier attempt at the same programs, on the same machine, had filled the
# JAX compilation cache their environment names: their first steps read compiled programs.
GPU_CACHED = (GPU_BF16, GPU_ZOO)
MISSING["speed.gpu"] = (
    "Not measured yet: `python -m experiments.bench_vs_torch --batch-sizes 128 --torch-compile "
    "--memory --out {folder}` with JAX on a GPU."
)


def _device(name: str) -> str:
    """'NVIDIA H200 beside a 16-core Intel Xeon (AVX-512), jax 0.11.2, torch 2.11.0; torch on
    cuda': where a GPU run ran (:func:`machine` for the host and versions)."""
    data = results(name)
    s = data["settings"]
    return (
        f"{s['device_kind']} beside a {machine(data['provenance'], torch=True)}; torch on "
        f"{s['torch_device']}"
    )


def _gpu_run(name: str) -> str:
    p = results(name)["provenance"]
    return f"`{rerun_command(p)}` ({when(p)}; stored in {where(name)})"


@block("speed.gpu")
def _gpu() -> str:
    course = [r for name in GPU_COURSE for r in results(name)["results"]]
    bf16, zoo = results(GPU_BF16), results(GPU_ZOO)
    f32 = {r["model"]: r for r in course}
    precision = results(GPU_COURSE[0])["settings"]["precision"]
    blocks, steps = _blocks(results(GPU_COURSE[0]))
    tf32 = "on" if precision["torch_cudnn_allow_tf32"] else "off"
    tf32_mm = "on" if precision["torch_matmul_allow_tf32"] else "off"
    ratios = [r["ratio_torch_over_jax"] for r in course]
    compiled = [r["ratio_compiled_over_jax"] for r in course if "ratio_compiled_over_jax" in r]
    shifts = ", ".join(
        f"{r['model']} {_ratio(f32[r['model']]['ratio_torch_over_jax'])} → "
        f"{_ratio(r['ratio_torch_over_jax'])}"
        for r in bf16["results"]
        if r["model"] in f32
    )
    return (
        f"On one {_device(GPU_COURSE[0])}: {' and '.join(_gpu_run(n) for n in GPU_COURSE)}; "
        f"{blocks} alternating blocks of {steps} steps per framework, AdamW, torch synchronised "
        f"after every step. Float32 as each framework does it by default: XLA may use TF32 for "
        f"float32 convolutions and matmuls (`jax_default_matmul_precision` "
        f"{precision['jax_default_matmul_precision']}), torch's cuDNN TF32 is {tf32} and its "
        f"matmul TF32 {tf32_mm}; cuDNN's algorithm search (`cudnn.benchmark`) is on, as XLA "
        f"autotunes its convolutions while compiling. First step = tracing + compilation "
        f"(cnn_jax) or torch.compile's compilation; peak device memory = the most each "
        f"framework's allocator held, each alone in a fresh process (torch's includes the "
        f"workspaces cuDNN's algorithm search tried):\n\n"
        + bench_vs_torch.table(course).rstrip("\n")
        + f"\n\ntorch eager / cnn_jax: {span(ratios, _ratio)}; torch.compile / cnn_jax: "
        f"{span(compiled, _ratio)}. At these sizes a step is a few milliseconds, far below what "
        f"its arithmetic needs of this GPU, so the likely cause (not profiled) is the work "
        f"around the kernels: XLA runs the whole step as one compiled program with its "
        f"elementwise work fused, torch launches each operation's kernels from Python, and "
        f"torch.compile (`torch.compile(model)`) compiles the model's forward and backward "
        f"passes but not AdamW's update.\n\nbfloat16 in both frameworks (cnn_jax's "
        f"`compute_dtype`, torch's autocast), "
        f"torch eager / cnn_jax from float32 to bfloat16: {shifts} ({_gpu_run(GPU_BF16)}).\n\n"
        f"torchvision families at the zoo's size ({_gpu_run(GPU_ZOO)}):\n\n"
        + bench_vs_torch.zoo_table(zoo["results"]).rstrip("\n")
        + f"\n\nThe first steps of {' and '.join(f'`{n}`' for n in GPU_CACHED)} are not "
        f"compilation times: those runs followed an earlier, timed-out attempt at the same "
        f"programs on the same machine, whose compilation cache (`JAX_COMPILATION_CACHE_DIR`, "
        f"recorded in their results) they may have read."
    )
