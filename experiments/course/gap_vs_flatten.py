"""Global average pooling vs flatten + dense head (seed 001): how many parameters does the head
cost, and what does it buy?

The same convolutional body (``convnet``: three blocks of 3×3 convolution + ReLU + max-pool, 16 /
32 / 64 channels) ending in either global average pooling → Linear(64 → 10), or Flatten →
Linear(64·4·4 → 128) → ReLU → Linear(128 → 10), trained on the digits at 32×32 with Adam for 25
epochs. Reported: parameters (total and in the head), validation and test accuracy, mean ± std
over seeds, and the training curves.

    python -m experiments.course.gap_vs_flatten [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import jax
from matplotlib.figure import Figure

from cnn_jax import models
from cnn_jax.inspect import plots
from cnn_jax.interop import abstract_variables
from experiments.course import _common as C

NAME = "gap_vs_flatten"
HEADS = {"global average pooling": "gap", "flatten + dense": "flatten"}


def head_params(name: str, in_channels: int) -> tuple[int, int]:
    params = abstract_variables(models.create(name, in_channels=in_channels))["params"]
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
    return count(params), count(params["classifier"])


def tables(results: dict) -> str:
    """Parameters (whole network and head), best validation and test accuracy, per head."""
    rows = [
        [
            label,
            f"{p['total']:,}",
            f"{p['head']:,}",
            C.fmt([max(curve) for curve in results["val_accuracy"][label]]),
            C.fmt(results["test_accuracy"][label]),
        ]
        for label, p in results["params"].items()
    ]
    header = ["head", "parameters", "of which head", "best val acc", "test acc (best ckpt)"]
    return C.markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
    runs = C.Runs(args)
    epochs = 2 if args.quick else 25
    found = {}
    for label, head in HEADS.items():
        model = C.register_model(f"convnet_{head}", head=head)
        found[label] = [
            runs.fit(
                f"{head}-seed{seed}",
                model=model,
                dataset=args.dataset,
                data_dir=args.data_dir,
                image_size=32,
                epochs=epochs,
                seed=seed,
            )
            for seed in C.seeds(args)
        ]
    in_channels = C.T.load_run(found[next(iter(HEADS))][0].workdir).splits["train"].image_shape[-1]
    fig = Figure(figsize=(12, 4))
    for i, key in enumerate(("val_accuracy", "train_loss")):
        ax = fig.add_subplot(1, 2, i + 1)
        plots.mean_std(
            list(range(1, epochs + 1)),
            {label: [r.curve(key) for r in rs] for label, rs in found.items()},
            xlabel="epoch",
            ylabel=key.replace("_", " "),
            logy=key == "train_loss",
            ax=ax,
        )
    fig.savefig(args.out / "curves.png", dpi=90)
    params = {}
    for label in found:
        total, head = head_params(f"convnet_{HEADS[label]}", in_channels)
        params[label] = {"total": total, "head": head}
    results = {
        "params": params,
        "test_accuracy": {label: [r.test_accuracy for r in rs] for label, rs in found.items()},
        "val_accuracy": {
            label: [r.curve("val_accuracy") for r in rs] for label, rs in found.items()
        },
    }
    stored = C.write(args, results, tables, runs)
    runs.close()
    return stored


if __name__ == "__main__":
    main()
