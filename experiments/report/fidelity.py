"""Numerical fidelity: float32 gradients against float64 (``gradient_precision``, in README.md's
"How it is tested" and experiments/README.md's section), and functional vs stateful
(``functional_vs_stateful``: agreement, dropout, cost)."""

from __future__ import annotations

from typing import Any

from experiments.report import (
    MISSING,
    block,
    machine,
    rerun_command,
    results,
    settings,
    span,
    table_md,
    when,
)


def _e(x: float) -> str:
    return f"{x:.1e}"


# ---------------------------------------------------------------------------------------------
# gradient_precision
# ---------------------------------------------------------------------------------------------


def _seeds_summary() -> tuple[dict[str, Any], dict[str, Any]]:
    from experiments.gradient_precision import summary

    data = results("gradient_precision")
    return data, summary(data)


@block("gradient_precision.tested")
def _tested() -> str:
    data, s = _seeds_summary()
    g, ours, theirs = data["settings"], s["cnn_jax"], s["torch"]
    n = s["seeds"]
    return (
        f"In a network the size of {g['model']} a few ReLU inputs per batch lie within float32 "
        f"rounding of zero, and a float32 run that decides one of them differently from float64 "
        f"has gradients {span(ours['moved_range'] + theirs['moved_range'], _e)} from it however "
        f"exact its arithmetic: over {n} seeds ({g['size']}×{g['size']}, batch {g['batch']}) "
        f"torch's float32 run flipped a decision on {theirs['seeds_flipped']} and cnn_jax's on "
        f"{ours['seeds_flipped']}, moving the worst parameter's gradient by more than 1e-4 on "
        f"{theirs['seeds_moved']} and {ours['seeds_moved']} of them. On the same piece "
        f"cnn_jax's error is {s['ratio_mean']:.2f} ± {s['ratio_std']:.2f} times torch's (mean ± "
        f"sample std over the seeds, at most {s['ratio_max']:.2f}; "
        f"`{rerun_command(data['provenance'])}` on a {machine(data['provenance'], torch=True)}, "
        f"{settings(data['provenance'])}; experiments/README.md)."
    )


MISSING["gradient_precision.tested"] = (
    "`python -m experiments.gradient_precision --seeds 8` measures how often that happens "
    "({folder})."
)


@block("gradient_precision.seeds")
def _gp_seeds() -> str:
    data, s = _seeds_summary()
    p, ours, theirs = data["provenance"], s["cnn_jax"], s["torch"]
    return f"""\
`{rerun_command(p)}` on a {machine(p, torch=True)} ({when(p)}; {settings(p)};
{where_gp()}):

{table_md("gradient_precision")}

- With every decision pinned to the float32 run's own (the float64 gradient of **the same
  linear piece**, `cnn_jax.testing.kinks`), the worst parameter's error is
  {span(ours["pinned_range"], _e)} for cnn_jax and {span(theirs["pinned_range"], _e)} for torch:
  cnn_jax / torch {s["ratio_mean"]:.2f} ± {s["ratio_std"]:.2f} (mean ± sample std over
  {s["seeds"]} seeds, max {s["ratio_max"]:.2f}), the ratio `tests/test_float32_gradients.py`
  holds to 2× for lenet5, cifar_cnn, resnet18, vgg11_bn and vgg16_bn.
- Against plain float64 the errors are up to {_e(max(ours["moved_range"] + theirs["moved_range"]))}:
  each float32 run decided {span(ours["flips"], str)} (cnn_jax, {ours["total_flips"]} in all) or
  {span(theirs["flips"], str)} (torch, {theirs["total_flips"]}) ReLU or max-pool decisions
  differently from float64, on {ours["seeds_flipped"]} and {theirs["seeds_flipped"]} of the
  {s["seeds"]} seeds, and such a flip moved the worst gradient by more than 1e-4 on
  {ours["seeds_moved"]} (cnn_jax) and {theirs["seeds_moved"]} (torch) of them. Which decisions
  flip depends on each run's rounding, so the counts differ between frameworks and machines; no
  float32 implementation can be held to torch's error on such an input.

![errors per seed](results/gradient_precision/errors.png)"""


def where_gp() -> str:
    return "`experiments/results/gradient_precision/`"


MISSING["gradient_precision.seeds"] = (
    "`python -m experiments.gradient_precision --seeds 8` writes {folder}."
)


@block("gradient_precision.layers")
def _gp_layers() -> str:
    data = results("gradient_precision_layers")
    p, g = data["provenance"], data["settings"]
    last = data["layers"][-1]
    text = f"""\
Per layer (`{rerun_command(p)}`, {g["model"]} at {g["size"]}×{g["size"]}, batch {g["batch"]}, on
a {machine(p, torch=True)}, {when(p)}; {settings(p)}): the relative L2 error of each layer's
output and of the loss gradient with respect to it, cnn_jax's and torch's float32 against
float64. At the logits cnn_jax's forward error is {_e(last["value_error"]["cnn_jax"])} against
torch's {_e(last["value_error"]["torch"])}."""
    kinks = data.get("kinks", [])
    close = [k for k in kinks if k["smallest_abs_input"] < k["float32_forward_error"]]
    if kinks:
        worst = max(kinks, key=lambda k: k["flip_moves_gradient"])
        text += (
            f" Of the {len(kinks)} ReLUs, {len(close)} have an input closer to zero in float64 "
            f"than the float32 forward error there (their sign is decided by rounding); the "
            f"largest share of the gradient a single flip would move is "
            f"{_e(worst['flip_moves_gradient'])} (at {worst['input']})."
        )
    table = table_md("gradient_precision_layers")
    return f"{text}\n\n<details><summary>table</summary>\n\n{table}\n\n</details>"


MISSING["gradient_precision.layers"] = (
    "`python -m experiments.gradient_precision --kinks --isolate features.11` writes the "
    "per-layer rows to {folder}."
)


# ---------------------------------------------------------------------------------------------
# float32_sums
# ---------------------------------------------------------------------------------------------


@block("float32_sums")
def _float32_sums() -> str:
    from experiments.float32_sums import MINIATURE, summary

    data = results("float32_sums")
    p, g, sm = data["provenance"], data["settings"], summary(data)
    below = g["cascade_below_elements"]
    small = [r["errors"] for r in data["sums"] if r["elements"] < below]
    large = [r["errors"] for r in data["sums"] if r["elements"] >= below]
    ratio = lambda rows, key: [e[key] / e["torch"] for e in rows]
    cost = [r["ms"]["cascade"] / r["ms"]["plain"] for r in data["cost"]]
    two = lambda x: f"{x:.2f}"
    one = lambda x: f"{x:.1f}"
    ours, plain = sm["cnn_jax"], sm["plain"]
    return f"""\
`{rerun_command(p)}` on a {machine(p, torch=True)} ({when(p)}; {settings(p)};
`experiments/results/float32_sums/`):

- Below {below} elements a plain float32 sum over the pixels is {span(ratio(small, "plain"), one)}×
  torch's error from float64 and cnn_jax's cascade {span(ratio(small, "cnn_jax"), one)}×; from
  {below} on the plain sum (what cnn_jax keeps there) is {span(ratio(large, "plain"), one)}×
  torch's and a cascade would be {span(ratio(large, "cascade"), one)}×.
- A cascade makes a train-mode batch norm's forward and backward {span(cost, two)}× as long as
  plain sums, at the sizes of the table below.
- On the {MINIATURE} miniature over {len(data["network"])} seeds, cnn_jax's worst float32
  gradient error is {ours["mean"]:.2f} ± {ours["std"]:.2f} times torch's (mean ± sample std, max
  {ours["max"]:.2f}); with plain sums it was {plain["mean"]:.2f} ± {plain["std"]:.2f}, at most
  {plain["max"]:.2f} against the 2× that `tests/test_float32_gradients.py` holds.

{table_md("float32_sums")}

![error ratios per seed](results/float32_sums/ratios.png)"""


MISSING["float32_sums"] = "`python -m experiments.float32_sums` writes {folder}."


# ---------------------------------------------------------------------------------------------
# functional_vs_stateful
# ---------------------------------------------------------------------------------------------

FLOAT32_PAIRS = ("functional vs nnx", "functional vs torch", "nnx vs torch")


def _fvs() -> dict[str, Any]:
    return results("functional_vs_stateful")


def _measured(part: str) -> str:
    data = _fvs()
    p = data["parts"][part]
    return f"`{rerun_command(p)}` on a {machine(p, torch=True)} ({when(p)}; {settings(p)})"


@block("fvs.agreement")
def _agreement() -> str:
    from experiments.functional_vs_stateful import agreement_table

    s = _fvs()["settings"]["agreement"]
    return (
        f"Agreement, dropout off, {s['steps']} steps at lr {s['lr']:g}, batch {s['batch_size']} "
        f"(largest relative loss difference up to step s; final parameters' relative distance), "
        f"{_measured('agreement')}:\n\n" + agreement_table(_fvs())
    )


@block("fvs.agreement.findings")
def _agreement_findings() -> str:
    data = _fvs()
    models = data["models"]
    steps = data["settings"]["agreement"]["steps"]

    def row(model: str, pair: str) -> dict[str, Any]:
        return models[model]["agreement"]["table"][pair]

    step1 = max(row(m, pair)["loss_rel_diff_at"]["1"] for m in models for pair in FLOAT32_PAIRS)
    lenet = max(row("lenet5", pair)["loss_rel_diff_at"][str(steps)] for pair in FLOAT32_PAIRS)
    cifar_own = row("cifar_cnn", "torch vs torch_float64")["final_params_rel_distance"]
    far = {
        style: row("cifar_cnn", f"{style} vs torch_float64")["final_params_rel_distance"]
        for style in ("functional", "nnx")
    }
    resnet10 = row("resnet18", "torch vs torch_float64")["loss_rel_diff_at"]["10"]
    final_loss = [c[-1] for c in models["resnet18"]["agreement"]["curves"].values()]
    fn = {
        m: row(m, "functional vs nnx")["final_params_rel_distance"]
        for m in ("cifar_cnn", "resnet18")
    }
    ft = {
        m: row(m, "functional vs torch")["final_params_rel_distance"]
        for m in ("cifar_cnn", "resnet18")
    }
    ratios = " and ".join(f"{far[s] / cifar_own:.1f}×" for s in ("functional", "nnx"))
    return f"""\
- **The three styles compute the same thing.** At step 1 every float32 pair agrees to ≤
  {_e(step1)} (float32 rounding of a loss), and on lenet5 they stay within {_e(lenet)} of each
  other for all {steps} steps.
- **Differences grow, and it is rounding.** On cifar_cnn every pair, torch's own float32 against
  float64 included, drifts apart over the run; in final parameters the cnn_jax and NNX runs end
  {_e(far["functional"])} and {_e(far["nnx"])} from float64, {ratios} torch's own float32
  distance ({_e(cifar_own)}): the same order of magnitude, not a semantic difference. On
  resnet18 (BatchNorm, lr {data["settings"]["agreement"]["lr"]:g}) the amplification is chaotic:
  torch float32 is already {100 * resnet10:.0f}% from float64 in loss within 10 steps, so after
  the first steps no two runs follow the same trajectory — all of them train (final loss
  {span(final_loss, lambda x: f"{x:.3f}")}) but per-step agreement is not a meaningful test
  there; step 1 is.
- Functional and NNX share every line of maths (`cnn_jax.functional`), yet they differ from each
  other (final parameters {_e(fn["cifar_cnn"])} on cifar_cnn, {_e(fn["resnet18"])} on resnet18)
  about as much as functional from torch ({_e(ft["cifar_cnn"])}, {_e(ft["resnet18"])}): XLA
  compiles the two programs differently (fusion, reduction order), so their float32 roundings
  differ, and a rounding difference that flips one ReLU or max-pool decision (the float32
  gradients section above) seeds the drift sooner."""


@block("fvs.dropout")
def _dropout() -> str:
    from experiments.functional_vs_stateful import dropout_table

    data = _fvs()
    s = data["settings"]["dropout"]
    entry = data["models"]["cifar_cnn"]["dropout"]
    means = {k: v["mean"] for k, v in entry.items()}
    stds = [v["std"] for v in entry.values()]
    d = max(means.values()) - min(means.values())
    if d < min(stds):
        verdict = "less than the smallest of the three standard deviations"
    elif d < max(stds):
        verdict = "within the largest standard deviation but not the smallest"
    else:
        verdict = "more than the largest standard deviation"
    return f"""\
Dropout {s["rate"]} on (cifar_cnn), {s["steps"]} steps at lr {s["lr"]:g}, batch {s["batch_size"]},
test accuracy of each style over seeds 0–{s["seeds"] - 1} (same initialisation and batches per
seed, masks from each style's own RNG), {_measured("dropout")}:

{dropout_table(data)}

The means differ by at most {100 * d:.2f} points, {verdict}
({span(stds, lambda x: f"{100 * x:.2f}")} points): {s["seeds"]} seeds cannot tell the styles apart,
and they are never equal run for run: cnn_jax draws each step's masks from `fold_in(seed key,
step)`, NNX from a counter-based `nnx.Rngs` stream, torch from its global Mersenne-Twister
generator, so from the first dropout layer on the three runs see different masks."""


@block("fvs.cost")
def _cost() -> str:
    from experiments.functional_vs_stateful import STYLES, cost_table

    data = _fvs()
    s = data["settings"]["cost"]
    rows = []
    for model, entry in data["models"].items():
        for batch in s["batch_sizes"]:
            c = {st: entry["cost"][f"{st}@{batch}"] for st in STYLES}
            rows.append((model, batch, c))

    def ratios(model: str, key: str) -> list[float]:
        return [
            c[st][key] / c["torch"][key]
            for m, _, c in rows
            if m == model
            for st in ("functional", "nnx")
        ]

    per_model = "; ".join(
        f"{m} {span(ratios(m, 'step_s'), lambda x: f'{x:.2f}')}" for m in data["models"]
    )
    memory = [r for m in data["models"] for r in ratios(m, "peak_rss_mb")]
    first_jax = [c[st]["first_step_s"] for _, _, c in rows for st in ("functional", "nnx")]
    first_torch = [c["torch"]["first_step_s"] for _, _, c in rows]
    return f"""\
Cost, a fresh process per cell, median of {s["steps"]} steps after the first,
{_measured("cost")}; ratios to torch (step time > 1 = slower than torch):

{cost_table(data)}

Step time as a ratio to torch's, both JAX styles, over the batch sizes: {per_model}. Compilation
costs {span(first_jax, lambda x: f"{x:.1f}")} s once; torch's first step takes
{span(first_torch, lambda x: f"{1e3 * x:.0f}")} ms. Peak resident memory of the whole process
(framework included) is {span(memory, lambda x: f"{x:.2f}")}× torch's. Where the step-time ratios
differ between models it is the speed section's finding (XLA:CPU's convolutions and the optimiser
update against torch's), not a property of either JAX style. This does not carry over to
accelerators, where nothing was measured."""
