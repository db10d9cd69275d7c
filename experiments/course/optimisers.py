"""Optimisers and the learning rate (seeds 001, 002): how fast does each optimiser converge, and
how much does the learning rate matter?

A CNN with global average pooling (``convnet``, ReLU, ~24k parameters) on the digits at 32×32,
batch 64, 12 epochs at a constant learning rate, trained with SGD, SGD + momentum 0.9, Nesterov
momentum 0.9, Adam and AdamW (decoupled decay 0.01), each at learning rates 1e-4 … 1. Reported:
validation accuracy at the end against the learning rate (the sweep), the training-loss curves
of each optimiser at its best learning rate, and diverged runs (the loop stops a run whose loss
becomes NaN or infinite and says so; they count as failures, not as zeros).

    python -m experiments.course.optimisers [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import math

from matplotlib.figure import Figure

from cnn_jax.inspect import plots
from experiments.course import _common as C

NAME = "optimisers"
OPTIMISERS = {
    "SGD": dict(optimizer="sgd"),
    "SGD + momentum": dict(optimizer="momentum", momentum=0.9),
    "Nesterov": dict(optimizer="nesterov", momentum=0.9),
    "Adam": dict(optimizer="adam"),
    "AdamW (0.01)": dict(optimizer="adamw", weight_decay=0.01),
}
LRS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def tables(results: dict) -> str:
    """Final validation accuracy per optimiser and learning rate, each optimiser's best rate and
    the test accuracy there, from the stored runs."""
    lrs, best = results["lrs"], results["best_lr"]
    header = ["optimiser"] + [f"lr {lr:g}" for lr in lrs] + ["best lr", "test acc at best lr"]
    rows = [
        [label]
        + [C.sweep_cell(by_lr[str(lr)]) for lr in lrs]
        + [
            f"{best[label]:g}" if best[label] is not None else "-",
            C.fmt([r["test_accuracy"] for r in by_lr[str(best[label])]]) if best[label] else "-",
        ]
        for label, by_lr in results["runs"].items()
    ]
    return "Validation accuracy after the last epoch (mean ± std over seeds):\n\n" + (
        C.markdown_table(header, rows)
    )


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
    runs = C.Runs(args)
    model = C.register_model("convnet_gap", head="gap")
    optimisers, lrs, epochs = OPTIMISERS, LRS, 12
    if args.quick:
        optimisers = {k: OPTIMISERS[k] for k in ("SGD", "Adam")}
        lrs, epochs = [1e-2, 1e-1], 1
    found: dict[str, dict[float, list]] = {}
    for label, overrides in optimisers.items():
        found[label] = {}
        for lr in lrs:
            found[label][lr] = [
                runs.fit(
                    f"{overrides['optimizer']}-lr{lr:g}-seed{seed}",
                    model=model,
                    dataset=args.dataset,
                    data_dir=args.data_dir,
                    image_size=32,
                    epochs=epochs,
                    lr=lr,
                    schedule="constant",
                    seed=seed,
                    **overrides,
                )
                for seed in C.seeds(args)
            ]

    final_val = C.final_val
    best_lr = {}
    for label, by_lr in found.items():
        scores = {lr: C.mean_std([final_val(r) for r in rs])[0] for lr, rs in by_lr.items()}
        finite = {lr: s for lr, s in scores.items() if not math.isnan(s)}
        best_lr[label] = max(finite, key=finite.get) if finite else None

    fig = Figure(figsize=(12, 4.2))
    ax_sweep, ax_curves = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    plots.mean_std(
        lrs,
        {
            label: [
                [final_val(rs[i]) for lr, rs in by_lr.items()] for i in range(len(C.seeds(args)))
            ]
            for label, by_lr in found.items()
        },
        xlabel="learning rate",
        ylabel="validation accuracy (last epoch)",
        logx=True,
        title="learning-rate sweep (diverged runs left out)",
        ax=ax_sweep,
    )
    x = list(range(1, epochs + 1))
    plots.mean_std(
        x,
        {
            f"{label} (lr {best_lr[label]:g})": [
                r.curve("train_loss") for r in found[label][best_lr[label]]
            ]
            for label in found
            if best_lr[label] is not None
        },
        xlabel="epoch",
        ylabel="train loss",
        logy=True,
        title="convergence at each optimiser's best learning rate",
        ax=ax_curves,
    )
    fig.savefig(args.out / "optimisers.png", dpi=90)

    results = {
        "lrs": lrs,
        "epochs": epochs,
        "best_lr": best_lr,
        "runs": C.sweep_runs(found),
    }
    stored = C.write(args, results, tables, runs)
    runs.close()
    return stored


if __name__ == "__main__":
    main()
