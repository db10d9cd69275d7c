"""Batch normalisation (seed 002): does BatchNorm speed up training and allow larger learning
rates?

A deeper plain CNN (``convnet``: six 3×3 convolutions in three blocks, ReLU, global average
pooling) on the digits at 16×16, with and without BatchNorm after every convolution, trained with
SGD + momentum 0.9 at a constant learning rate from 0.003 to 3, batch 64, 10 epochs. Reported:
final validation accuracy against the learning rate, the epochs needed to reach 90% validation
accuracy, and the largest learning rate at which every seed trained (no divergence, validation
accuracy above 50%).

    python -m experiments.course.batch_norm [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

from matplotlib.figure import Figure

from cnn_jax.inspect import plots
from experiments.course import _common as C

NAME = "batch_norm"
LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]


def epochs_to(run: dict, level: float = 0.9) -> float:
    """First epoch whose validation accuracy reaches ``level`` in a stored run (NaN if never)."""
    for epoch, accuracy in enumerate(run["val_accuracy"], start=1):
        if accuracy >= level:
            return float(epoch)
    return float("nan")


def trained(r) -> bool:
    return bool(r.summary) and r.history[-1]["val_accuracy"] > 0.5


def tables(results: dict) -> str:
    """Final validation accuracy per learning rate, the largest rate every seed trained at, and
    the epochs to 90% at lr 0.03, from the stored runs."""
    lrs, n = results["lrs"], len(results["meta"]["seeds"])
    shown = 0.03 if 0.03 in lrs else lrs[0]
    rows = []
    for label, by_lr in results["runs"].items():
        largest = results["largest_stable_lr"][label]
        reach = [epochs_to(r) for r in by_lr[str(shown)]]
        rows.append(
            [
                label,
                *[C.sweep_cell(by_lr[str(lr)]) for lr in lrs],
                f"{largest:g}" if largest else "none",
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
    return "Validation accuracy after the last epoch (mean ± std over seeds):\n\n" + (
        C.markdown_table(header, rows)
    )


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
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
    results = {
        "lrs": lrs,
        "epochs": epochs,
        "largest_stable_lr": largest,
        "runs": C.sweep_runs(found),
    }
    stored = C.write(args, results, tables, runs)
    runs.close()
    return stored


if __name__ == "__main__":
    main()
