"""MLP vs CNN (seeds 000, 003, 004): parameters, accuracy, and robustness to translation.

The digits (resized to 16×16) are centred on a 32×32 canvas, so a test digit can be shifted by up
to 8 pixels without leaving the frame. Trained on centred digits: an MLP, a CNN with a flatten +
dense head, a CNN with global average pooling, and each of the MLP and the GAP CNN again with
random translations (±8 px) as augmentation. Test accuracy is measured as the test digits are
shifted by 0..8 pixels (mean over the four directions).

The course's claims: a CNN needs far fewer parameters than an MLP for the same accuracy; weight
sharing makes convolution translation-*equivariant*, but a CNN is not inherently translation-
*invariant*: its head, padding and pooling grid still see where things are; augmentation teaches
the invariance.

    python -m experiments.course.mlp_vs_cnn [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnn_jax import data
from cnn_jax.inspect import plots
from experiments.course import _common as C

NAME = "mlp_vs_cnn"


def shifted_accuracy(run, test: data.Split, k: int) -> float:
    """Accuracy on the test split shifted by k pixels, averaged over right, left, down and up."""
    if k == 0:
        return run.evaluate(test)["accuracy"]
    accs = []
    for dy, dx in ((0, k), (0, -k), (k, 0), (-k, 0)):
        moved = dataclasses.replace(test, images=data.variants.shift(test.images, dy, dx))
        accs.append(run.evaluate(moved)["accuracy"])
    return float(np.mean(accs))


def tables(results: dict) -> str:
    """Parameters and test accuracy at each shift, per model."""
    shifts, acc = results["shifts"], results["accuracy_vs_shift"]
    header = ["model", "parameters"] + [f"shift {k}" for k in shifts]
    rows = [
        [label, f"{results['params'][label]:,}"]
        + [C.fmt([run[i] for run in runs]) for i in range(len(shifts))]
        for label, runs in acc.items()
    ]
    return C.markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
    runs = C.Runs(args)
    canvas = C.register_dataset(
        f"{args.dataset}-16-on-32", lambda **_: data.variants.on_canvas(C.base(args, 16), 32)
    )
    cnn_flat = C.register_model("convnet_flatten", head="flatten")
    cnn_gap = C.register_model("convnet_gap", head="gap")
    variants = {
        "MLP": dict(model="mlp"),
        "MLP + translate aug": dict(model="mlp", augment__translate=8),
        "CNN, flatten head": dict(model=cnn_flat),
        "CNN, global avg pool": dict(model=cnn_gap),
        "CNN, GAP + translate aug": dict(model=cnn_gap, augment__translate=8),
    }
    if args.quick:
        variants = {k: variants[k] for k in ("MLP", "CNN, global avg pool")}
    shifts = [0, 2, 4] if args.quick else list(range(9))
    epochs = 2 if args.quick else 25
    acc_vs_shift: dict[str, list[list[float]]] = {}
    params: dict[str, int] = {}
    for label, overrides in variants.items():
        acc_vs_shift[label] = []
        for seed in C.seeds(args):
            tag = label.replace(" ", "_").replace(",", "").replace("+", "plus") + f"-seed{seed}"
            r = runs.fit(tag, dataset=canvas, epochs=epochs, seed=seed, **overrides)
            loaded = C.T.load_run(r.workdir)
            params[label] = r.summary["params"]
            test = loaded.splits["test"]
            acc_vs_shift[label].append([shifted_accuracy(loaded, test, k) for k in shifts])

    fig = plots.mean_std(
        shifts,
        acc_vs_shift,
        xlabel="test images shifted by (pixels)",
        ylabel="test accuracy",
        title="translation robustness (mean ± std over seeds)",
    )
    fig.savefig(args.out / "accuracy_vs_shift.png", dpi=90)
    examples = loaded.splits["test"].images[:1]
    strip = np.concatenate([data.variants.shift(examples, 0, k) for k in shifts])
    plots.images(
        strip,
        labels=[f"shift {k}" for k in shifts],
        cols=len(shifts),
        path=args.out / "shifted_examples.png",
    )
    results = {"shifts": shifts, "params": params, "accuracy_vs_shift": acc_vs_shift}
    stored = C.write(args, results, tables, runs)
    runs.close()
    return stored


if __name__ == "__main__":
    main()
