"""Filters and feature maps (seeds 000, 001): what a convolution filter detects.

1. Hand-designed vertical and horizontal edge filters (Sobel) applied, as a cross-correlation
   (``cnn_jax.functional.conv2d``), to a real photograph (scikit-learn's ``china.jpg``): each
   responds to edges of its own orientation.
2. A small CNN (``convnet``: conv 3×3 + ReLU + max-pool, three blocks, global average pooling)
   trained on the digits: its learned first-layer filters, the feature maps of a test digit after
   each ReLU, and how similar the learned filters are to oriented edge detectors compared with
   the same filters at initialisation.
3. The receptive field of each layer (``cnn_jax.inspect.layers``): how many input pixels one
   output pixel sees, growing with depth.

    python -m experiments.course.filters_and_feature_maps [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from cnn_jax import functional as F
from cnn_jax import inspect as I
from cnn_jax import models
from experiments.course import _common as C

NAME = "filters_and_feature_maps"
SOBEL_V = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)  # vertical edges
SOBEL_H = SOBEL_V.T.copy()  # horizontal edges


def edge_bank() -> np.ndarray:
    """Eight oriented 3×3 edge detectors (Sobel at 0°, 45°, ... and their negatives), unit norm."""
    d1 = np.array([[0, 1, 2], [-1, 0, 1], [-2, -1, 0]], np.float32)
    d2 = np.fliplr(d1).copy()
    bank = [SOBEL_V, SOBEL_H, d1, d2]
    bank += [-k for k in bank]
    return np.stack([k / np.linalg.norm(k) for k in bank])


def edge_likeness(weight: np.ndarray) -> float:
    """Mean over filters of the best |cosine| between a filter (mean removed, averaged over its
    input channels) and the oriented edge detectors: 1 = a perfect edge detector."""
    w = np.asarray(weight, np.float32).mean(axis=1).reshape(len(weight), -1)
    w = w - w.mean(axis=1, keepdims=True)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    return float(np.abs(w @ edge_bank().reshape(8, -1).T).max(axis=1).mean())


def photo_edges(out: Path) -> dict:
    from sklearn.datasets import load_sample_image

    rgb = load_sample_image("china.jpg").astype(np.float32) / 255.0
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    x = jnp.asarray(grey)[None, :, :, None]
    weight = jnp.asarray(np.stack([SOBEL_V, SOBEL_H])[:, None])  # (out=2, in=1, 3, 3)
    response = np.asarray(jnp.abs(F.conv2d(x, weight, padding=1)))[0]
    # How strongly each filter answers the other's edges: correlation of the two |responses|.
    v, h = response[..., 0], response[..., 1]
    fig = Figure(figsize=(13, 3.6))
    for i, (img, title) in enumerate(
        ((rgb, "photo"), (v, "vertical-edge filter |response|"), (h, "horizontal-edge filter"))
    ):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        ax.set_title(title), ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "photo_edges.png", dpi=80)
    return {
        "image_shape": list(grey.shape),
        "mean_abs_response": {"vertical": float(v.mean()), "horizontal": float(h.mean())},
        "response_correlation": float(np.corrcoef(v.ravel(), h.ravel())[0, 1]),
    }


def tables(results: dict) -> str:
    """Test accuracy, edge-likeness trained and at initialisation, the photo's correlation; then
    each layer's receptive field."""
    edges = results["edge_likeness"]
    summary = C.markdown_table(
        ["", "value (mean ± std over seeds)"],
        [
            ["test accuracy", C.fmt(results["test_accuracy"])],
            ["edge-likeness of first-layer filters, trained", C.fmt(edges["trained"])],
            ["edge-likeness of the same filters at initialisation", C.fmt(edges["init"])],
            [
                "photo: correlation of the vertical and horizontal filters' absolute responses",
                f"{results['photo']['response_correlation']:.3f}",
            ],
        ],
    )
    fields = C.markdown_table(
        ["layer", "kind", "output HxWxC", "receptive field", "jump"], results["receptive_field"]
    )
    return summary + "\n\n" + fields


def main(argv: list[str] | None = None) -> dict:
    args = C.parse(NAME, __doc__, argv)
    runs = C.Runs(args)
    model_name = C.register_model("convnet_relu_gap", activation="relu")
    epochs = 2 if args.quick else 20
    photo = photo_edges(args.out)
    print(
        "photo: vertical/horizontal filters' responses correlate at "
        f"{photo['response_correlation']:.2f}"
    )

    trained, at_init, accuracy = [], [], []
    first = None
    for seed in C.seeds(args):
        r = runs.fit(
            f"seed{seed}",
            model=model_name,
            dataset=args.dataset,
            data_dir=args.data_dir,
            image_size=32,
            epochs=epochs,
            seed=seed,
        )
        loaded = C.T.load_run(r.workdir)
        w = np.asarray(I.first_conv_filters(loaded.model, loaded.variables))
        init = loaded.initial_variables  # the run's own initialisation
        trained.append(edge_likeness(w))
        at_init.append(edge_likeness(init["params"]["features"]["0"]["weight"]))
        accuracy.append(r.test_accuracy)
        first = first or loaded

    # Figures of the first seed's model: filters, feature maps of one test digit.
    I.plots.filters(
        I.first_conv_filters(first.model, first.variables),
        title="learned first-layer filters (3x3)",
        path=args.out / "filters.png",
    )
    test = first.splits["test"]
    x = first.normalize(test.images[:1])
    relus = [row.name for row in I.layers(first.model, x.shape) if row.kind == "ReLU"]
    maps = I.intermediates(first.model, first.variables, jnp.asarray(x), relus)
    fig = Figure(figsize=(12, 2.2 * len(relus) + 1))
    fig.suptitle(f"feature maps after each ReLU for a test image (label {int(test.labels[0])})")
    for row, name in enumerate(relus):
        m = np.asarray(maps[name])[0]
        ax = fig.add_subplot(len(relus), 9, row * 9 + 1)
        ax.imshow(np.asarray(test.images[0])[..., 0], cmap="gray")
        ax.set_ylabel(name, fontsize=8), ax.set_xticks([]), ax.set_yticks([])
        for i in range(8):
            ax = fig.add_subplot(len(relus), 9, row * 9 + i + 2)
            ax.imshow(m[..., i], cmap="viridis")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{m.shape[0]}x{m.shape[1]} ch{i}", fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "feature_maps.png", dpi=80)

    rf_rows = [
        (r.name, r.kind, "x".join(map(str, r.output_shape[1:])), r.receptive_field[0], r.jump[0])
        for r in I.layers(models.create(model_name, in_channels=1), (1, 32, 32, 1))
        if r.receptive_field is not None
    ]
    results = {
        "photo": photo,
        "test_accuracy": accuracy,
        "edge_likeness": {"trained": trained, "init": at_init},
        "receptive_field": [list(r) for r in rf_rows],
    }
    stored = C.write(args, results, tables, runs)
    runs.close()
    return stored


if __name__ == "__main__":
    main()
