"""experiments/README.md, "The course, measured": each experiment's command and table, and the
findings with their numbers, from ``experiments/results/course/<name>/results.json``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from experiments.report import (
    MISSING,
    block,
    machine,
    mean_std,
    pct,
    pct_pm,
    rerun_command,
    results,
    span,
    table_md,
    when,
)

NAMES = (
    "filters_and_feature_maps", "mlp_vs_cnn", "regularisation", "optimisers", "batch_norm",
    "activations", "early_stopping", "transfer_learning", "spurious_cue", "gap_vs_flatten",
)  # fmt: skip


def _run_and_table(name: str) -> Callable:
    def render() -> str:
        data = results(f"course/{name}")
        p, meta = data["provenance"], data["meta"]
        return (
            f"`{rerun_command(p)}` — {meta['runs']} runs, {meta['train_seconds']:.0f} s of "
            f"training, {machine(p)} ({when(p)}).\n\n" + table_md(f"course/{name}")
        )

    return render


for _name in NAMES:
    block(f"course.{_name}")(_run_and_table(_name))
    MISSING[f"course.{_name}"] = "No results yet: {folder} is made by the command above."


def _within(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two runs' means differ by less than the larger of their sample stds."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return abs(ma - mb) < max(sa, sb)


# ---------------------------------------------------------------------------------------------


@block("course.filters_and_feature_maps.findings")
def _filters() -> str:
    r = results("course/filters_and_feature_maps")
    photo, e = r["photo"], r["edge_likeness"]
    resp = photo["mean_abs_response"]
    deltas = [t - i for t, i in zip(e["trained"], e["init"], strict=True)]
    rf = {row[0]: row[3] for row in r["receptive_field"]}
    convs = [row[0] for row in r["receptive_field"] if row[1] == "Conv2d"]
    pools = [row[0] for row in r["receptive_field"] if row[1] == "MaxPool2d"]
    (mi, si), (mt, st) = mean_std(e["init"]), mean_std(e["trained"])
    consistent = all(d > 0 for d in deltas) or all(d < 0 for d in deltas)
    return f"""\
- **Hand-designed filters detect their own orientation:** on the photograph the vertical- and
  horizontal-edge filters respond about equally strongly on average (mean |response|
  {resp["vertical"]:.3f} vs {resp["horizontal"]:.3f}) but in different places: their absolute
  responses correlate at only {photo["response_correlation"]:.2f} (figure).
- **Learned filters move towards edge detectors, a little:** edge-likeness (the best |cosine|
  of a mean-removed 3×3 filter with eight oriented Sobel kernels, averaged over the 16 filters)
  goes from {mi:.3f} ± {si:.3f} at each run's initialisation to {mt:.3f} ± {st:.3f} after
  training. Across seeds the spread hides it, but paired per seed the change is
  {"consistent" if consistent else "not consistent"} ({", ".join(f"{d:+.3f}" for d in deltas)}).
  On smooth, upscaled 8×8 digits a 3×3 first layer mostly learns blob- and gradient-like filters
  (figure); the crisp edge detectors of the course's ImageNet pictures are not what this data
  asks for.
- **Feature maps** (figure): after the first ReLU the maps are the digit's strokes and its
  borders at full resolution; after the third, 8×8 maps respond to parts of the shape.
- **Receptive fields** (table) grow from {rf[convs[0]]} pixels (first conv) to {rf[convs[-1]]}
  (last conv) and {rf[pools[-1]]} after the last pool; each 3×3 conv adds 2 × the jump, each pool
  doubles the jump. Global average pooling sees the whole image (the formula's
  {rf["classifier.0"]} exceeds the 32-pixel input)."""


@block("course.mlp_vs_cnn.findings")
def _mlp() -> str:
    r = results("course/mlp_vs_cnn")
    shifts, acc, params = r["shifts"], r["accuracy_vs_shift"], r["params"]

    def at(label: str, shift: int) -> float:
        return mean_std([run[shifts.index(shift)] for run in acc[label]])[0]

    def curve(label: str, from_shift: int = 0) -> list[float]:
        return [at(label, k) for k in shifts if k >= from_shift]

    mlp, flat, gap, gap_aug, mlp_aug = (
        "MLP", "CNN, flatten head", "CNN, global avg pool", "CNN, GAP + translate aug",
        "MLP + translate aug",
    )  # fmt: skip
    gap_shifted = curve(gap, 1)
    dip = min(range(1, len(shifts)), key=lambda i: at(gap, shifts[i]))
    return f"""\
- **Parameters:** the GAP CNN needs {params[mlp] / params[gap]:.0f}× fewer parameters than the MLP
  ({params[gap]:,} vs {params[mlp]:,}) at {pct(at(gap, 0))} against {pct(at(mlp, 0))} on centred
  digits; the flatten-head CNN ({pct(at(flat, 0))}) has {params[mlp] / params[flat]:.1f}× fewer
  than the MLP.
- **Not invariant by construction:** shifted by 2 px, the MLP falls from {pct(at(mlp, 0))} to
  {pct(at(mlp, 2), 0)}, the flatten-head CNN to {pct(at(flat, 2), 0)}: its dense head sees
  *where* features are. The GAP CNN is far more robust ({span(gap_shifted, lambda x: pct(x, 0))}
  at shifts of 1–{shifts[-1]} px) but not invariant either: its accuracy is lowest at
  {shifts[dip]} px and back to {pct(at(gap, shifts[-1]), 0)} at {shifts[-1]} px, the network's
  total stride (three 2×2 max-pools), where the pooling grid lines up again — equivariance holds
  exactly only for shifts that are multiples of the stride.
- **Augmentation teaches the invariance:** with random ±8 px translations in training, the GAP
  CNN stays at {span(curve(gap_aug), lambda x: pct(x, 0))} at every shift. The MLP with the same
  augmentation reaches only {span(curve(mlp_aug), lambda x: pct(x, 0))}: it must learn each
  position separately."""


@block("course.regularisation.findings")
def _regularisation() -> str:
    r = results("course/regularisation")
    m = r["methods"]

    def last(label: str, key: str) -> list[float]:
        return [c[-1] for c in m[label][key]]

    def mean(values: Sequence[float]) -> float:
        return mean_std(values)[0]

    def gap(label: str) -> str:
        return f"{100 * mean(m[label]['gap']):.1f}"

    weak = ["L2 in loss (1e-3)", "L1 in loss (1e-4)", "AdamW decay 0.1"]
    aug, none = m["augmentation"]["test_accuracy"], m["none"]["test_accuracy"]
    d, s = 100 * (mean(aug) - mean(none)), 100 * max(mean_std(aug)[1], mean_std(none)[1])
    verdict = (
        "within one standard deviation: not resolved by three seeds"
        if abs(d) < s
        else "more than one standard deviation, over three seeds"
    )
    return f"""\
- With {r["per_class"] * 10} training images every unregularised run ends at
  {pct(mean(last("none", "train_accuracy")))} train accuracy and validation at
  {pct(mean(last("none", "val_accuracy")))}: a {gap("none")}-point gap.
- **Dropout** (gap {gap("dropout 0.5")}) and **augmentation** (gap {gap("augmentation")},
  validation loss {mean(last("augmentation", "val_loss")):.2f} vs
  {mean(last("none", "val_loss")):.2f}) narrow it most; augmentation also gives the best mean test
  accuracy ({pct_pm(aug)} vs {pct_pm(none)} without), a difference of {d:.1f} points, {verdict}.
- **L2 (1e-3), L1 (1e-4) and AdamW decay (0.1)** change nothing measurable at these strengths
  (gaps {span([mean(m[k]["gap"]) for k in weak], lambda x: f"{100 * x:.1f}")}, test
  {span([mean(m[k]["test_accuracy"]) for k in weak], pct)}). Two known reasons fit: Adam divides
  each gradient, the penalty's included, by its running scale, which weakens an L2 term in the
  loss; and decoupled decay shrinks a weight by a factor 1 − lr·λ per step, which at this
  learning rate and number of steps is a few percent in all. Stronger settings would show an
  effect; the table says that typical values are not a remedy by themselves here."""


def _stalled(trained: int, n: int) -> str:
    """'k of n seeds trained' and what the rest did."""
    rest = n - trained
    if rest == 0:
        return f"all {n} seeds trained"
    return f"{trained} of {n} seeds trained, " + (
        "the other stalled" if rest == 1 else f"the other {rest} stalled"
    )


def _final(run: dict[str, Any]) -> float:
    return float("nan") if run["diverged"] else run["val_accuracy"][-1]


def _sweep_mean(runs: list[dict[str, Any]]) -> float:
    return mean_std([_final(x) for x in runs if not x["diverged"]])[0]


@block("course.optimisers.findings")
def _optimisers() -> str:
    r = results("course/optimisers")
    runs, best = r["runs"], r["best_lr"]
    adam = {float(lr): _sweep_mean(v) for lr, v in runs["Adam"].items()}
    swing = max(adam.values()) - min(adam.values())
    gaps = [abs(_sweep_mean(runs["Adam"][lr]) - _sweep_mean(runs["AdamW (0.01)"][lr]))
            for lr in runs["Adam"]]  # fmt: skip

    def test_at_best(label: str) -> str:
        return pct_pm([x["test_accuracy"] for x in runs[label][str(best[label])]])

    def seeds_trained(label: str) -> int:
        return sum(_final(x) > 0.5 for x in runs[label][str(best[label])])

    momentum_trained, n = seeds_trained("SGD + momentum"), len(r["meta"]["seeds"])
    nesterov_diverged = {lr: sum(bool(x["diverged"]) for x in v)
                         for lr, v in runs["Nesterov"].items()}  # fmt: skip
    div = [f"{c} of {n} seeds at lr {float(lr):g}" for lr, c in nesterov_diverged.items() if c]
    sgd01 = _sweep_mean(runs["SGD"]["0.01"])
    bn = results("course/batch_norm")["runs"]["BatchNorm"]
    bn_best = max(bn, key=lambda lr: _sweep_mean(bn[lr]))
    return f"""\
- **The learning rate decides more than the optimiser.** Adam's final validation accuracy goes
  from {pct(adam[min(adam)], 0)} (lr {min(adam):g}) to {pct(max(adam.values()), 0)} (lr
  {max(adam, key=adam.get):g}) to {pct(min(adam.values()), 1)} (lr {min(adam, key=adam.get):g}):
  a swing of {100 * swing:.0f} points from the learning rate alone, larger than any difference
  between optimisers at their best rates.
- **Adam and AdamW converge fastest here** ({test_at_best("Adam")} and
  {test_at_best("AdamW (0.01)")} test accuracy at lr {best["Adam"]:g} after {r["epochs"]} epochs;
  their mean validation accuracies differ by at most {100 * max(gaps):.1f} points at any rate, as
  decoupled decay of 0.01 barely moves the weights in this many steps). The SGD family stays
  far behind in {r["epochs"]} epochs at any rate: SGD {test_at_best("SGD")} test at its best
  (lr {best["SGD"]:g}), momentum {test_at_best("SGD + momentum")} (lr {best["SGD + momentum"]:g};
  {_stalled(momentum_trained, n)}), Nesterov {test_at_best("Nesterov")}
  (lr {best["Nesterov"]:g}). This network (ReLU, no BatchNorm, torch's default initialisation,
  global average pooling) starts with tiny gradients (see the activations and BatchNorm
  experiments); Adam's per-parameter scaling compensates, plain SGD does not. A different
  network, the BatchNorm experiment's six convolutions with BatchNorm on 16×16 digits, reaches
  {pct(_sweep_mean(bn[bn_best]))} final validation accuracy with the same SGD + momentum
  (lr {float(bn_best):g}).
- **Momentum helps SGD** where plain SGD is stuck (lr 0.01:
  {pct(_sweep_mean(runs["SGD + momentum"]["0.01"]), 0)} vs {pct(sgd01, 0)}) but makes large rates
  unstable: Nesterov diverged in {", ".join(div) or "no run"} (stopped by the loop's divergence
  check and reported, not averaged in).
- {r["epochs"]} epochs at constant rates is a short budget; SGD's ranking might change with a
  schedule and more epochs, which this experiment does not measure."""


def _epochs_to(run: dict[str, Any], level: float = 0.9) -> float:
    return next((i for i, a in enumerate(run["val_accuracy"], 1) if a >= level), float("nan"))


@block("course.batch_norm.findings")
def _batch_norm() -> str:
    r = results("course/batch_norm")
    bn, plain, lrs = r["runs"]["BatchNorm"], r["runs"]["no BatchNorm"], r["lrs"]
    largest = r["largest_stable_lr"]["BatchNorm"]
    stable = [lr for lr in lrs if lr <= largest]
    above = [lr for lr in lrs if lr > largest]
    best_plain = max(plain, key=lambda lr: _sweep_mean(plain[lr]))
    seeds_plain = [_final(x) for x in plain[best_plain]]
    diverged = [(float(lr), sum(bool(x["diverged"]) for x in v)) for lr, v in plain.items()]
    diverged = [f"{c} at lr {lr:g}" for lr, c in diverged if c]
    reach = [_epochs_to(x) for x in bn["0.03"]]
    degrade = ", ".join(
        f"{pct_pm([_final(x) for x in bn[str(lr)]], 0)} at lr {lr:g}" for lr in above
    )
    return f"""\
- **With BatchNorm the network trains at every learning rate from {lrs[0]:g} to {largest:g}**
  ({span([_sweep_mean(bn[str(lr)]) for lr in stable], pct)} final validation accuracy after
  {r["epochs"]} epochs) and reaches 90% in {span(reach, lambda x: f"{x:.0f}")} epochs at lr
  0.03; above that it degrades ({degrade}). Largest learning rate at which every seed trained:
  {largest:g}.
- **Without BatchNorm the same six-convolution network barely trains in {r["epochs"]} epochs at
  any learning rate** (best mean: {pct_pm(seeds_plain, 0)} at lr {float(best_plain):g}, its
  seeds at {", ".join(pct(x, 0) for x in seeds_plain)}; diverged and stopped by the loop:
  {", ".join(diverged) or "none"}). This is partly about initialisation: the layers use torch's
  default (Kaiming-uniform with a = √5, a third of He's variance), under which the signal
  shrinks layer by layer in a deep ReLU stack without normalisation; BatchNorm undoes that at
  every layer. The claim "BatchNorm allows larger learning rates and converges faster" holds here
  by a wide margin; how much of the gap a better initialisation would close is not measured."""


@block("course.activations.findings")
def _activations() -> str:
    r = results("course/activations")
    layers, init, trained = r["layers"], r["gradient_norms_init"], r["gradient_norms_trained"]

    def ratio(norms: list[dict[str, float]]) -> float:
        return float(np.mean([n[layers[0]] / n[layers[-1]] for n in norms]))

    sig = [float(np.mean([n[name] for n in init["sigmoid"]])) for name in layers]
    per_layer = (sig[-1] / sig[0]) ** (1 / (len(layers) - 1))
    after = [float(np.mean([n[name] / n[layers[-1]] for n in trained["sigmoid"]]))
             for name in layers[:2]]  # fmt: skip
    acc = r["test_accuracy"]
    tanh_better = mean_std(acc["tanh"])[0] > mean_std(acc["relu"])[0]
    return f"""\
- **Sigmoid's gradients vanish.** At initialisation the gradient reaching the first convolution
  is {ratio(init["sigmoid"]):.0e} of the classifier's, shrinking about {per_layer:.0f}× per layer
  on average (figure, left); ReLU's ratio is {ratio(init["relu"]):.2g} and tanh's
  {ratio(init["tanh"]):.2g}. Trained with Adam, the sigmoid network never leaves chance
  ({pct_pm(acc["sigmoid"])} test accuracy), and its first two layers still receive
  {span(after, lambda x: f"{x:.0e}")} of the classifier's gradient after training (figure,
  right).
- **ReLU vs tanh:** both train; here tanh is {"*better*" if tanh_better else "worse"}
  ({pct_pm(acc["tanh"])} vs {pct_pm(acc["relu"])} for ReLU), so "ReLU trains better than tanh"
  is {"not " if tanh_better else ""}what this six-convolution network on 16×16 digits shows — the
  vanishing-gradient argument separates sigmoid from the other two, not tanh from ReLU, at this
  depth (tanh's derivative is 1 at 0, sigmoid's 0.25)."""


@block("course.early_stopping.findings")
def _early_stopping() -> str:
    r = results("course/early_stopping")
    s, epochs = r["seeds"], r["epochs"]

    def col(key: str) -> list[float]:
        return [float(x[key]) for x in s]

    def pm(key: str) -> str:
        m, sd = mean_std(col(key))
        return f"{m:.1f} ± {sd:.1f}"

    stopped = mean_std(col("stopped_at_epoch"))[0]
    early = mean_std(col("best_test_epoch"))[0] - mean_std(col("best_checkpoint_epoch"))[0]
    cost = [
        100 * (mean_std(col(k))[0] - mean_std(col("early_stopping_test_accuracy"))[0])
        for k in ("last_epoch_test_accuracy", "best_test_accuracy")
    ]
    return f"""\
- Early stopping on the validation loss (patience {r["patience"]}) stopped at epoch
  {pm("stopped_at_epoch")} of {epochs} — {epochs / stopped:.1f}× fewer epochs — and kept the
  checkpoint of epoch {pm("best_checkpoint_epoch")}.
- That checkpoint tests at {pct_pm(col("early_stopping_test_accuracy"))}; the best epoch in
  hindsight ({pm("best_test_epoch")}) at {pct_pm(col("best_test_accuracy"))}, and simply training
  all {epochs} epochs at {pct_pm(col("last_epoch_test_accuracy"))}. Here the validation *loss*
  starts rising (the network grows over-confident on a few examples) while validation and test
  *accuracy* still improve: stopping on the loss is early by ~{early:.0f} epochs and costs
  {span(cost, lambda x: f"{x:.1f}")} points. Early stopping saves compute; whether it saves
  accuracy depends on the metric it watches."""


@block("course.transfer_learning.findings")
def _transfer() -> str:
    r = results("course/transfer_learning")
    acc, labels = r["test_accuracy"], r["labels_per_class"]
    fine, scratch = acc["fine-tune all"], acc["from scratch"]
    frozen = acc["frozen backbone + new head"]
    close = [n for n in labels if _within(fine[str(n)], scratch[str(n)])]
    apart = [n for n in labels if n not in close]
    worst = all(
        mean_std(frozen[str(n)])[0] < min(mean_std(fine[str(n)])[0], mean_std(scratch[str(n)])[0])
        for n in labels
    )
    frozen_means = [mean_std(frozen[str(n)])[0] for n in labels]
    monotone = all(a <= b for a, b in itertools.pairwise(frozen_means))
    frozen_note = (
        ""
        if monotone
        else " The frozen runs are also not monotone in the number of labels ("
        + ", ".join(f"{pct(m)} at {n}" for n, m in zip(labels, frozen_means, strict=True))
        + " per class, the same number of steps); that was not investigated further."
    )
    pairs = "; ".join(
        f"{n}: {pct_pm(scratch[str(n)])} from scratch vs {pct_pm(fine[str(n)])} fine-tuned"
        for n in labels
    )
    verdict = (
        "the two are within one standard deviation of each other at every budget"
        if not apart
        else f"they are within one standard deviation at {', '.join(map(str, close)) or 'no'} "
        f"labels per class, apart at {', '.join(map(str, apart))}"
    )
    return f"""\
- **Not supported here: pre-training on digits 0–4 does not help learn 5–9.** Training from
  scratch is no worse than fine-tuning: {verdict} ({pairs}). The frozen backbone with a new head
  is {"worst at every budget" if worst else "not always worst"}
  ({span(frozen_means, lambda x: pct(x, 0))}).
- The course's claim is about backbones pre-trained on large, varied data (ImageNet): features
  learned by a small network from five digit classes ({pct_pm(r["pretrain_test_accuracy"])} on
  0–4) are specific to those shapes, so a linear head on them is weak, and starting from them is
  no better than a fresh initialisation.{frozen_note}
- What the experiment does show is the mechanism working end to end through `fit`
  (`init_from`, `init_exclude`, `freeze`; the frozen backbone is bit-identical to the source's,
  tested in `tests/test_runs.py`) — a user with a real pre-trained model gets the same path."""


@block("course.spurious_cue.findings")
def _spurious() -> str:
    r = results("course/spurious_cue")
    biased = r["setups"]["biased training data"]
    fixed = r["setups"]["representative training data"]

    def col(setup: list[dict[str, float]], key: str) -> list[float]:
        return [s[key] for s in setup]

    val = [mean_std(col(x, "val_accuracy"))[0] for x in (biased, fixed)]
    return f"""\
- **Validation cannot see the shortcut:** both models reach {span(val, pct)} validation
  accuracy, because the validation data carries the same bias as the training data.
- **The biased model is a stripe detector:** at test time it calls
  {pct_pm(col(biased, "striped_called_cue_class"), 0)} of striped non-zeros a 0 and gets
  {pct_pm(col(biased, "misleading_accuracy"), 0)} of the misleading images right; overall test
  accuracy falls from {pct(val[0])} (validation) to {pct_pm(col(biased, "test_accuracy"))}. Where
  the cue agrees with the label it is still right ({pct_pm(col(biased, "consistent_accuracy"))}).
- **Saliency shows it:** {pct_pm(col(biased, "saliency_on_background"), 0)} of the biased model's
  saliency falls on background pixels, against {pct_pm(col(fixed, "saliency_on_background"), 0)}
  for the model trained on representative data, whose maps follow the strokes (figure).
- **The fix the course names works:** with the stripes independent of the label in training,
  test accuracy is {pct_pm(col(fixed, "test_accuracy"))}, and the misleading images are
  classified at {pct_pm(col(fixed, "misleading_accuracy"))}."""


@block("course.gap_vs_flatten.findings")
def _gap() -> str:
    r = results("course/gap_vs_flatten")
    p, acc = r["params"], r["test_accuracy"]
    gap, dense = "global average pooling", "flatten + dense"
    mlp = results("course/mlp_vs_cnn")
    shifts = mlp["shifts"]

    def shifted(label: str) -> list[float]:
        runs = mlp["accuracy_vs_shift"][label]
        return [mean_std([x[i] for x in runs])[0] for i, k in enumerate(shifts) if k > 0]

    d = 100 * (mean_std(acc[dense])[0] - mean_std(acc[gap])[0])
    return f"""\
- Global average pooling cuts the head from {p[dense]["head"]:,} parameters to {p[gap]["head"]:,}
  (the whole network from {p[dense]["total"]:,} to {p[gap]["total"]:,},
  {p[dense]["total"] / p[gap]["total"]:.1f}× fewer).
- On these 32×32 digits the dense head is {"more" if d > 0 else "less"} accurate:
  {pct_pm(acc[dense])} vs {pct_pm(acc[gap])} test (curves). The course's claim that GAP works "as
  well as" a dense head with far fewer parameters holds only approximately here: {abs(d):.1f}
  points {"lower" if d > 0 else "higher"} with a 4×4 final map and 64 channels. What GAP buys
  instead is robustness to where the object is (see MLP vs CNN:
  {span(shifted("CNN, global avg pool"), lambda x: pct(x, 0))} under shifts of 1–{shifts[-1]} px,
  against {span(shifted("CNN, flatten head"), lambda x: pct(x, 0))} for the dense head)."""
