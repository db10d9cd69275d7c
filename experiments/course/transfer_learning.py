"""Transfer learning (seeds 001, 002): when few labels exist for a new task, does a network trained
on a related task help — frozen as a feature extractor, or fine-tuned?

Pre-train a CNN (``convnet``, global average pooling) on the digits 0–4 (20 epochs). The new
task is the digits 5–9 with 1, 3, 10 or 30 labelled images per class. Three ways to learn it,
each run through ``fit`` with the config keys a user would set:

* frozen backbone + new head: ``init_from=<pre-trained run>``, ``init_exclude='classifier'``
  (the 5-way head starts fresh), ``freeze='features'``;
* fine-tune everything: the same initialisation, nothing frozen;
* from scratch: neither.

Every target run takes 100 steps of Adam at a constant learning rate 3e-3 (batch: all the
labelled images up to 50), whatever the number of labels. Reported: test accuracy on 5–9 against
the number of labels per class, mean ± std over seeds (the pre-training and the labelled subset
both change with the seed).

    python -m experiments.course.transfer_learning [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

from cnn_jax import data
from cnn_jax.inspect import plots
from experiments.course import _common as C

NAME = "transfer_learning"
LABELS = [1, 3, 10, 30]
METHODS = {
    "frozen backbone + new head": dict(freeze="features"),
    "fine-tune all": {},
    "from scratch": None,
}


def tables(results: dict) -> str:
    """Test accuracy on digits 5-9 per method and labels per class, and the pre-trained
    networks' accuracy on digits 0-4."""
    labels, acc = results["labels_per_class"], results["test_accuracy"]
    header = ["method", *[f"{n} per class" for n in labels]]
    rows = [[m, *[C.fmt(by_n[str(n)]) for n in labels]] for m, by_n in acc.items()]
    return (
        f"Test accuracy on digits 5–9 (mean ± std over seeds); the pre-trained networks reach "
        f"{C.fmt(results['pretrain_test_accuracy'])} on digits 0–4.\n\n"
        + C.markdown_table(header, rows)
    )


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
    runs = C.Runs(args)
    V = data.variants
    source = C.register_dataset(
        f"{args.dataset}-0to4", lambda **_: V.select_classes(C.base(args, 32), range(5))
    )
    target_all = lambda: V.select_classes(C.base(args, 32), range(5, 10))
    model = C.register_model("convnet_gap", head="gap")
    labels, pre_epochs, steps = (LABELS, 20, 100) if not args.quick else ([3], 2, 4)
    found: dict[str, dict[int, list[float]]] = {m: {n: [] for n in labels} for m in METHODS}
    pretrain_acc = []
    for seed in C.seeds(args):
        pre = runs.fit(
            f"pretrain-seed{seed}", model=model, dataset=source, epochs=pre_epochs, seed=seed
        )
        pretrain_acc.append(pre.test_accuracy)
        for n in labels:
            name = f"{args.dataset}-5to9-{n}-per-class-seed{seed}"
            C.register_dataset(
                name, lambda n=n, seed=seed, **_: V.subset(target_all(), n, seed=seed)
            )
            batch = min(50, 5 * n)
            for method, extra in METHODS.items():
                overrides = dict(
                    model=model,
                    dataset=name,
                    seed=seed,
                    epochs=max(1, steps // (5 * n // batch)),  # the same number of steps
                    batch_size=batch,
                    schedule="constant",
                    lr=3e-3,
                )
                if extra is not None:
                    overrides.update(init_from=str(pre.workdir), init_exclude="classifier", **extra)
                tag = f"{method.split()[0]}-{n}pc-seed{seed}"
                found[method][n].append(runs.fit(tag, **overrides).test_accuracy)

    plots.mean_std(
        labels,
        {m: [[found[m][n][i] for n in labels] for i in range(len(C.seeds(args)))] for m in METHODS},
        xlabel="labelled images per class (digits 5-9)",
        ylabel="test accuracy",
        logx=True,
        title="transfer from digits 0-4",
        path=args.out / "transfer.png",
    )
    results = {
        "labels_per_class": labels,
        "pretrain_test_accuracy": pretrain_acc,
        "test_accuracy": {m: {str(n): v for n, v in by_n.items()} for m, by_n in found.items()},
    }
    stored = C.write(args, results, tables, runs)
    runs.close()
    return stored


if __name__ == "__main__":
    main()
