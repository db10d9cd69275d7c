"""Regularisation (seeds 000, 001, 002): which remedy narrows the generalisation gap when the
training set is small enough to memorise?

A CNN with a dense head (``convnet``, flatten head, ~170k parameters) trained on 20 digits per
class (200 images) for 60 epochs with Adam, six ways: no regularisation; dropout 0.5 before the
last layer; an L2 penalty λΣw² in the loss (λ = 1e-3); an L1 penalty λΣ|w| (λ = 1e-4);
decoupled weight decay (AdamW, 0.1); and data augmentation (random translation ±3 px and
contrast ±30%). Penalties and decay apply to conv/linear weights only, never biases.
Reported: train and validation accuracy curves, the gap between them at the end, and the test
accuracy of the best checkpoint (chosen on validation), mean ± std over seeds.

One strength per method, chosen once and not tuned per method: the comparison shows what each
does at a typical setting, not each method's best.

    python -m experiments.course.regularisation [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

from matplotlib.figure import Figure

from cnn_jax.inspect import plots
from experiments.course import _common as C

NAME = "regularisation"
PER_CLASS = 20


def tables(results: dict) -> str:
    """Last epoch's train and validation accuracy, their gap, validation loss, and the best
    checkpoint's test accuracy, per method."""
    rows = [
        [
            label,
            C.fmt([c[-1] for c in m["train_accuracy"]]),
            C.fmt([c[-1] for c in m["val_accuracy"]]),
            C.fmt(m["gap"]),
            C.fmt([c[-1] for c in m["val_loss"]]),
            C.fmt(m["test_accuracy"]),
        ]
        for label, m in results["methods"].items()
    ]
    header = [
        "method",
        "train acc (last epoch)",
        "val acc (last epoch)",
        "gap",
        "val loss (last)",
        "test acc (best ckpt)",
    ]
    return C.markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
    runs = C.Runs(args)
    small = C.register_subset(args, PER_CLASS)
    plain = C.register_model("convnet_flatten", head="flatten")
    dropout = C.register_model("convnet_flatten_dropout", head="flatten", dropout=0.5)
    variants = {
        "none": dict(model=plain),
        "dropout 0.5": dict(model=dropout),
        "L2 in loss (1e-3)": dict(model=plain, l2=1e-3),
        "L1 in loss (1e-4)": dict(model=plain, l1=1e-4),
        "AdamW decay 0.1": dict(model=plain, optimizer="adamw", weight_decay=0.1),
        "augmentation": dict(model=plain, augment__translate=3, augment__contrast=0.3),
    }
    if args.quick:
        variants = {k: variants[k] for k in ("none", "dropout 0.5")}
    epochs = 3 if args.quick else 60
    found: dict[str, list] = {}
    for label, overrides in variants.items():
        found[label] = []
        for seed in C.seeds(args):
            tag = "".join(ch if ch.isalnum() else "_" for ch in label) + f"-seed{seed}"
            found[label].append(
                runs.fit(tag, dataset=small, epochs=epochs, seed=seed, batch_size=50, **overrides)
            )

    fig = Figure(figsize=(4 * min(3, len(variants)), 3.3 * ((len(variants) + 2) // 3)))
    cols = min(3, len(variants))
    for i, (label, rs) in enumerate(found.items()):
        ax = fig.add_subplot((len(variants) + cols - 1) // cols, cols, i + 1)
        x = list(range(1, epochs + 1))
        plots.mean_std(
            x,
            {
                "train": [r.curve("train_accuracy") for r in rs],
                "validation": [r.curve("val_accuracy") for r in rs],
            },
            xlabel="epoch",
            ylabel="accuracy",
            title=label,
            ax=ax,
        )
        ax.set_ylim(0, 1.02)
    fig.savefig(args.out / "curves.png", dpi=80)
    gaps = {
        label: [r.history[-1]["train_accuracy"] - r.history[-1]["val_accuracy"] for r in rs]
        for label, rs in found.items()
    }
    tests = {label: [r.test_accuracy for r in rs] for label, rs in found.items()}
    plots.bars(
        tests,
        ylabel="test accuracy (best checkpoint)",
        title="regularisation",
        path=args.out / "test_accuracy.png",
    )
    results = {
        "per_class": PER_CLASS,
        "epochs": epochs,
        "methods": {
            label: {
                "train_accuracy": [r.curve("train_accuracy") for r in rs],
                "val_accuracy": [r.curve("val_accuracy") for r in rs],
                "val_loss": [r.curve("val_loss") for r in rs],
                "gap": gaps[label],
                "test_accuracy": tests[label],
            }
            for label, rs in found.items()
        },
    }
    stored = C.write(args, results, tables, runs)
    runs.close()
    return stored


if __name__ == "__main__":
    main()
