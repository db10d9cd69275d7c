"""Batch normalisation (seed 002): does BatchNorm speed up training and allow larger learning
rates?

A deeper plain CNN (``convnet``: six 3×3 convolutions in three blocks, ReLU, global average
pooling) on the digits at 16×16, with and without BatchNorm after every convolution, trained with
SGD + momentum 0.9 at a constant learning rate from 0.003 to 3, batch 64, 10 epochs. Reported:
final validation accuracy against the learning rate, the epochs needed to reach 90% validation
accuracy, and the largest learning rate at which every seed trained (no divergence, validation
accuracy above 50%).

    python experiments/course/batch_norm.py [--quick] [--seeds 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
from matplotlib.figure import Figure

from cnn_jax.inspect import plots

NAME = "batch_norm"
COMMAND = f"python experiments/course/{NAME}.py"
LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]


def epochs_to(r, level: float = 0.9) -> float:
    """First epoch whose validation accuracy reaches ``level`` (NaN if never)."""
    for record in r.history:
        if record["val_accuracy"] >= level:
            return float(record["epoch"])
    return float("nan")


def trained(r) -> bool:
    return bool(r.summary) and r.history[-1]["val_accuracy"] > 0.5


def main(argv: list[str] | None = None) -> dict:
    args = C.parser(NAME, __doc__).parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = C.Runs(args)
    nets = {
        "no BatchNorm": C.register_model("convnet6", convs_per_block=2),
        "BatchNorm": C.register_model("convnet6_bn", convs_per_block=2, batch_norm=True),
    }
    lrs, epochs = (LRS, 10) if not args.quick else ([0.03, 3.0], 1)
    found = {
        label: {
            lr: [
                runs.fit(
                    f"{model}-lr{lr:g}-seed{seed}",
                    model=model,
                    dataset=args.dataset,
                    data_dir=args.data_dir,
                    image_size=16,
                    epochs=epochs,
                    optimizer="momentum",
                    momentum=0.9,
                    lr=lr,
                    schedule="constant",
                    seed=seed,
                )
                for seed in C.seeds(args)
            ]
            for lr in lrs
        }
        for label, model in nets.items()
    }

    final_val = C.final_val
    n = len(C.seeds(args))
    fig = Figure(figsize=(12, 4.2))
    ax_sweep, ax_curves = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    plots.mean_std(
        lrs,
        {
            label: [[final_val(by_lr[lr][i]) for lr in lrs] for i in range(n)]
            for label, by_lr in found.items()
        },
        xlabel="learning rate (SGD + momentum 0.9)",
        ylabel="validation accuracy (last epoch)",
        logx=True,
        title="learning-rate sweep (diverged runs left out)",
        ax=ax_sweep,
    )
    shown = 0.03 if 0.03 in lrs else lrs[0]
    plots.mean_std(
        list(range(1, epochs + 1)),
        {
            label: [r.curve("val_accuracy") for r in by_lr[shown] if r.summary]
            for label, by_lr in found.items()
        },
        xlabel="epoch",
        ylabel="validation accuracy",
        title=f"convergence at lr {shown:g}",
        ax=ax_curves,
    )
    fig.savefig(args.out / "batch_norm.png", dpi=90)

    largest = {
        label: max((lr for lr in lrs if all(trained(r) for r in by_lr[lr])), default=None)
        for label, by_lr in found.items()
    }
    rows = []
    for label, by_lr in found.items():
        cells = [C.sweep_cell(by_lr[lr]) for lr in lrs]
        reach = [epochs_to(r) for r in by_lr[shown]]
        rows.append(
            [
                label,
                *cells,
                f"{largest[label]:g}" if largest[label] else "none",
                C.fmt(reach, digits=1)
                if all(x == x for x in reach)
                else f"{sum(x == x for x in reach)}/{n} reached it",
            ]
        )
    header = [
        "",
        *[f"lr {lr:g}" for lr in lrs],
        "largest lr that trains",
        f"epochs to 90% val acc (lr {shown:g})",
    ]
    tables = [
        "Validation accuracy after the last epoch (mean ± std over seeds):\n\n"
        + C.markdown_table(header, rows)
    ]
    results = {
        "lrs": lrs,
        "epochs": epochs,
        "largest_stable_lr": largest,
        "runs": C.sweep_runs(found),
    }
    C.write(args, COMMAND, results, tables, runs)
    runs.close()
    return results


if __name__ == "__main__":
    main()
