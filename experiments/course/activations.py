"""Activations (seed 002): ReLU vs tanh vs sigmoid in a deeper CNN — vanishing gradients.

The same six-convolution CNN (``convnet``: three blocks of two 3×3 convolutions, global average
pooling, no BatchNorm) with ReLU, tanh or sigmoid after every convolution, on the digits at
16×16. Reported: the norm of the loss gradient for each layer's weights at initialisation (on
one batch of 256 training images) — with sigmoid it shrinks by orders of magnitude towards the
input, the vanishing-gradient problem — and after training, and the test accuracy after 15
epochs of Adam (learning rate 1e-3, cosine schedule), mean ± std over seeds.

    python -m experiments.course.activations [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from cnn_jax import inspect as I
from cnn_jax.inspect import plots
from experiments.course import _common as C

NAME = "activations"
ACTIVATIONS = ("relu", "tanh", "sigmoid")


def tables(results: dict) -> str:
    """Each layer's gradient norm at initialisation (mean over seeds), the first / last layer
    ratio, and test accuracy, per activation."""
    layers, norms = results["layers"], results["gradient_norms_init"]

    def ratio(n: dict[str, float]) -> float:
        return n[layers[0]] / n[layers[-1]]

    rows = [
        [act]
        + [f"{np.mean([n[name] for n in norms[act]]):.2e}" for name in layers]
        + [
            f"{np.mean([ratio(n) for n in norms[act]]):.1e}",
            C.fmt(results["test_accuracy"][act]),
        ]
        for act in norms
    ]
    header = ["activation", *layers, "first / last layer", "test accuracy"]
    return (
        "Gradient norm of each layer's weights at initialisation (mean over seeds), and test "
        "accuracy after training (mean ± std):\n\n" + C.markdown_table(header, rows)
    )


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
    runs = C.Runs(args)
    epochs = 1 if args.quick else 15
    found: dict[str, list] = {}
    norms_init: dict[str, list[dict[str, float]]] = {}
    norms_trained: dict[str, list[dict[str, float]]] = {}
    for act in ACTIVATIONS:
        model_name = C.register_model(f"convnet6_{act}", convs_per_block=2, activation=act)
        found[act], norms_init[act], norms_trained[act] = [], [], []
        for seed in C.seeds(args):
            r = runs.fit(
                f"{act}-seed{seed}",
                model=model_name,
                dataset=args.dataset,
                data_dir=args.data_dir,
                image_size=16,
                epochs=epochs,
                optimizer="adam",
                lr=1e-3,
                seed=seed,
            )
            found[act].append(r)
            loaded = C.T.load_run(r.workdir)
            train = loaded.splits["train"]
            x = jnp.asarray(loaded.normalize(train.images[:256]))
            y = jnp.asarray(train.labels[:256])
            norms_init[act].append(
                I.layer_gradient_norms(loaded.model, loaded.initial_variables, x, y)
            )
            norms_trained[act].append(I.layer_gradient_norms(loaded.model, loaded.variables, x, y))

    layer_names = list(norms_init[ACTIVATIONS[0]][0])
    depth = list(range(1, len(layer_names) + 1))
    fig = Figure(figsize=(12, 4.2))
    for i, (norms, when) in enumerate(
        ((norms_init, "at initialisation"), (norms_trained, "after training"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        plots.mean_std(
            depth,
            {act: [[n[name] for name in layer_names] for n in norms[act]] for act in ACTIVATIONS},
            xlabel="layer (1 = first conv; last = classifier)",
            ylabel="||dL/dW||",
            logy=True,
            title=f"per-layer gradient norm {when}",
            ax=ax,
        )
    fig.savefig(args.out / "gradient_norms.png", dpi=90)
    plots.bars(
        {act: [r.test_accuracy for r in rs] for act, rs in found.items()},
        ylabel="test accuracy",
        title="activation",
        path=args.out / "accuracy.png",
    )

    results = {
        "layers": layer_names,
        "gradient_norms_init": norms_init,
        "gradient_norms_trained": norms_trained,
        "test_accuracy": {act: [r.test_accuracy for r in rs] for act, rs in found.items()},
        "val_accuracy": {act: [r.curve("val_accuracy") for r in rs] for act, rs in found.items()},
    }
    stored = C.write(args, results, tables, runs)
    runs.close()
    return stored


if __name__ == "__main__":
    main()
