"""Early stopping (seed 002): where does it stop, compared with the best checkpoint and with what
the test set would have said?

A CNN with a dense head (``convnet``, flatten head) on 30 digits per class, Adam at a constant
learning rate 2e-3, up to 60 epochs. Two runs per seed from the same initialisation and batches:
one with early stopping on the validation loss (patience 5), one for all 60 epochs keeping every
checkpoint, each of which is then evaluated on the test split (the test curve no real run may
look at). Reported: the epoch early stopping stopped at, the epoch of its best checkpoint, the
epoch with the best test accuracy, and the test accuracy of early stopping's checkpoint against
the best possible and the last epoch's.

    python -m experiments.course.early_stopping [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import numpy as np

from cnn_jax.inspect import plots
from experiments.course import _common as C

NAME = "early_stopping"
PER_CLASS = 30
PATIENCE = 5


def tables(results: dict) -> str:
    """Where early stopping stopped, its checkpoint, the best epoch in hindsight, and the test
    accuracy of each, over seeds."""
    per_seed, epochs = results["seeds"], results["epochs"]

    def col(key: str) -> list[float]:
        return [float(s[key]) for s in per_seed]

    rows = [
        ["epoch early stopping stopped at", C.fmt(col("stopped_at_epoch"), 1)],
        ["epoch of its best checkpoint (lowest val loss)", C.fmt(col("best_checkpoint_epoch"), 1)],
        ["epoch with the best test accuracy (hindsight)", C.fmt(col("best_test_epoch"), 1)],
        ["test accuracy, early stopping's checkpoint", C.fmt(col("early_stopping_test_accuracy"))],
        ["test accuracy, best epoch in hindsight", C.fmt(col("best_test_accuracy"))],
        [f"test accuracy, last epoch ({epochs})", C.fmt(col("last_epoch_test_accuracy"))],
        [
            "epochs trained: early stopping vs full",
            f"{C.fmt(col('stopped_at_epoch'), 1)} vs {epochs}",
        ],
    ]
    return C.markdown_table(["", "mean ± std over seeds"], rows)


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
    runs = C.Runs(args)
    small = C.register_subset(args, PER_CLASS)
    model = C.register_model("convnet_flatten", head="flatten")
    epochs, patience = (4, 1) if args.quick else (60, PATIENCE)
    common = dict(model=model, dataset=small, epochs=epochs, schedule="constant", batch_size=50)
    per_seed = []
    for seed in C.seeds(args):
        stopped = runs.fit(
            f"early-seed{seed}",
            seed=seed,
            early_stopping__metric="val_loss",
            early_stopping__mode="min",
            early_stopping__patience=patience,
            **common,
        )
        full = runs.fit(f"full-seed{seed}", seed=seed, keep_checkpoints=epochs, **common)
        loaded = C.T.load_run(full.workdir)
        steps_per_epoch = full.history[0]["step"]
        test_curve = [loaded.at(step).evaluate("test")["accuracy"] for step in loaded.steps]
        test_epochs = [step // steps_per_epoch for step in loaded.steps]
        best_step = stopped.summary["best_step"]
        per_seed.append(
            {
                "stopped_at_epoch": len(stopped.history),
                "best_checkpoint_epoch": best_step // steps_per_epoch,
                "early_stopping_test_accuracy": stopped.test_accuracy,
                "best_test_epoch": test_epochs[int(np.argmax(test_curve))],
                "best_test_accuracy": max(test_curve),
                "last_epoch_test_accuracy": test_curve[-1],
                "test_curve": test_curve,
                "history": full.history,
                "stopped_early": stopped.summary["stopped_early"],
            }
        )
        if seed == 0:
            plots.curves(
                full.history,
                best_epoch=best_step // steps_per_epoch,
                extra={"test_accuracy": test_curve},
                title=(
                    f"seed 0: early stopping (val loss, patience {patience}) stopped at epoch "
                    f"{len(stopped.history)}; dashed = its best checkpoint"
                ),
                path=args.out / "curves_seed0.png",
            )

    stored = C.write(
        args, {"epochs": epochs, "patience": patience, "seeds": per_seed}, tables, runs
    )
    runs.close()
    return stored


if __name__ == "__main__":
    main()
