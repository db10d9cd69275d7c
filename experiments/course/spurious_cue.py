"""The snow detector (seed 000): a model that learns the background instead of the object.

The course's story: a "husky vs wolf" classifier that was really a snow detector, because every
wolf photo had snow. Here: the digits at 32×32, where a faint striped background (the "snow",
:func:`cnn_jax.data.variants.spurious_cue`) is on *every* 0 and on no other digit in the training
and validation data — so validation accuracy cannot reveal the shortcut — while at test time the
stripes are independent of the label (on half of every class). A CNN (``convnet``, GAP) is
trained on that data ("biased"), and again on representative data where the stripes are
independent of the label in training too (the fix the seed names: more representative data).

Reported, mean ± std over seeds: validation and test accuracy; accuracy on the test images where
the cue misleads (striped non-zeros and plain zeros); how often a striped non-zero is called a 0;
and saliency maps (``cnn_jax.inspect.saliency``) with the share of saliency on background pixels.

    python -m experiments.course.spurious_cue [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from cnn_jax import data
from cnn_jax import inspect as I
from cnn_jax.inspect import plots
from experiments.course import _common as C

NAME = "spurious_cue"
CUE_CLASS = 0
SETUPS = {"biased training data": 1.0, "representative training data": 0.5}


KEYS = [
    "val_accuracy",
    "test_accuracy",
    "consistent_accuracy",
    "misleading_accuracy",
    "striped_called_cue_class",
    "saliency_on_background",
]


def tables(results: dict) -> str:
    """Per training set: validation and test accuracy, test accuracy where the cue agrees and
    where it misleads, striped non-0 digits called 0, and the saliency on the background."""
    header = [
        "training data",
        "val acc",
        "test acc",
        "test acc, cue agrees",
        "test acc, cue misleads",
        "striped non-0 called 0",
        "saliency on background",
    ]
    rows = [
        [label, *[C.fmt([s[k] for s in runs]) for k in KEYS]]
        for label, runs in results["setups"].items()
    ]
    return C.markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
    runs = C.Runs(args)
    V = data.variants
    model = C.register_model("convnet_gap", head="gap")
    epochs = 2 if args.quick else 20
    found: dict[str, list[dict]] = {}
    pictures = {}
    for label, p in SETUPS.items():
        name = C.register_dataset(
            f"{args.dataset}-stripes-on-{CUE_CLASS}-p{p}",
            lambda p=p, **_: V.spurious_cue(
                C.base(args, 32), cue_class=CUE_CLASS, train_correlation=p, test_correlation=0.5
            ),
        )
        found[label] = []
        for seed in C.seeds(args):
            r = runs.fit(f"p{p}-seed{seed}", model=model, dataset=name, epochs=epochs, seed=seed)
            run = C.T.load_run(r.workdir)
            test = run.splits["test"]
            x = jnp.asarray(run.normalize(test.images))
            logits = np.asarray(run.model.apply(run.variables, x, train=False))
            pred = logits.argmax(-1)
            cue = V.cue_mask(test)
            is_cue_class = test.labels == CUE_CLASS
            misleading = cue != is_cue_class  # striped non-zeros, plain zeros
            striped_others = cue & ~is_cue_class
            # Saliency share on the background (pixels the digit does not cover) of striped
            # non-zeros: how much of the decision rests on the stripes.
            rows = np.flatnonzero(striped_others)[:64]
            sal = np.asarray(I.saliency(run.model, run.variables, x[rows]))
            background = (
                np.asarray(
                    data.load(args.dataset, data_dir=args.data_dir or None, image_size=32)[
                        "test"
                    ].images[rows, ..., 0]
                )
                < 32
            )
            share = float((sal * background).sum() / sal.sum())
            found[label].append(
                {
                    "val_accuracy": r.history[r.summary["best_step"] // r.history[0]["step"] - 1][
                        "val_accuracy"
                    ],
                    "test_accuracy": r.test_accuracy,
                    "misleading_accuracy": float(
                        (pred[misleading] == test.labels[misleading]).mean()
                    ),
                    "consistent_accuracy": float(
                        (pred[~misleading] == test.labels[~misleading]).mean()
                    ),
                    "striped_called_cue_class": float((pred[striped_others] == CUE_CLASS).mean()),
                    "saliency_on_background": share,
                }
            )
            if seed == 0:
                pictures[label] = (
                    test.images[rows[:6]],
                    sal[:6],
                    pred[rows[:6]],
                    test.labels[rows[:6]],
                )

    fig = Figure(figsize=(11, 5))
    for row, (label, (imgs, sal, pred, truth)) in enumerate(pictures.items()):
        for i in range(len(imgs)):
            ax = fig.add_subplot(4, len(imgs), 2 * row * len(imgs) + i + 1)
            ax.imshow(imgs[i][..., 0], cmap="gray")
            ax.set_title(f"{truth[i]} -> pred {pred[i]}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label.split()[0], fontsize=8)
            ax = fig.add_subplot(4, len(imgs), (2 * row + 1) * len(imgs) + i + 1)
            ax.imshow(sal[i], cmap="hot")
            ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("striped test digits (not 0) and their saliency; top: biased model, bottom: fixed")
    fig.tight_layout()
    fig.savefig(args.out / "saliency.png", dpi=90)
    plots.bars(
        {
            f"{label.split()[0]}: {k}": [s[k] for s in found[label]]
            for label in SETUPS
            for k in ("test_accuracy", "misleading_accuracy")
        },
        ylabel="accuracy",
        title="the snow detector",
        path=args.out / "accuracy.png",
    )
    stored = C.write(args, {"cue_class": CUE_CLASS, "setups": found}, tables, runs)
    runs.close()
    return stored


if __name__ == "__main__":
    main()
