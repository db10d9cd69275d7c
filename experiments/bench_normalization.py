"""Question: what do cnn_jax's written-out derivatives of train-mode batch normalisation and of
layer normalisation buy on CPU, against jax differentiating the same formulas itself and against
PyTorch?

Two measurements, both in one process with the variants interleaved:

* **layers**: forward and backward (input, weight and bias gradients) of a train-mode
  ``BatchNorm2d`` followed by ReLU6 on the feature-map shapes of MobileNetV2's train step, and
  of ConvNeXt's channels-last ``LayerNorm`` on ConvNeXt-Tiny's, at 64x64, batch 32: cnn_jax
  (``rule``), the same normalisation left to jax's autodiff (``autodiff``) and torch's layers
  (``torch``, 2 threads; its LayerNorm on a channels-last tensor, as ConvNeXt's block calls it
  after permuting);
* **steps**: whole train steps (AdamW, batch 32, 64x64) of models with many normalisation
  layers, built once with the rules and once with both normalisations left to autodiff.

The rules (``cnn_jax.functional.normalization``) exist because jax's derivative of the two-pass
moments makes a backward of several more full reductions and full-size temporaries, which is
memory-bound once a feature map outgrows the cache.

    python -m experiments.bench_normalization
    python -m experiments.bench_normalization --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_normalization``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

import cnn_jax
from cnn_jax.functional import normalization
from cnn_jax.models import create
from cnn_jax.train.state import create_train_state
from cnn_jax.train.step import make_train_step
from experiments import record

NAME = "bench_normalization"
MODULE = f"experiments.{NAME}"
# MobileNetV2's BatchNorm inputs in its train step at 64x64, batch 32 (NHWC), largest first.
SHAPES = [
    (32, 32, 32, 96), (32, 32, 32, 32), (32, 16, 16, 144), (32, 16, 16, 96), (32, 8, 8, 192),
    (32, 4, 4, 384), (32, 2, 2, 960),
]  # fmt: skip
# ConvNeXt-Tiny's LayerNorm inputs (one per stage) in its train step at 64x64, batch 32 (NHWC).
LAYER_NORM_SHAPES = [(32, 16, 16, 96), (32, 8, 8, 192), (32, 4, 4, 384), (32, 2, 2, 768)]
MODELS = ("mobilenet_v2", "efficientnet_b0", "resnet18", "convnext_tiny")
VARIANTS = ("rule", "autodiff")
KINDS = ("batch_norm", "layer_norm")


def _by_autodiff(x, weight, bias, eps):
    """Batch normalisation with no derivative rule of its own: what jax differentiates."""
    mean, var = normalization._moments(x, tuple(range(x.ndim - 1)), None)
    return (x - mean) * jax.lax.rsqrt(var + eps) * weight + bias, mean, var


def _rows_by_autodiff(x, weight, bias, eps, features):
    """Layer normalisation with no derivative rule of its own."""
    axes = tuple(range(x.ndim - features, x.ndim))
    mean, var = normalization._moments(x, axes, None, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * weight + bias


def _traced_with(variant: str):
    """A context under which cnn_jax's normalisations are traced with ``variant``."""
    stack = contextlib.ExitStack()
    if variant == "autodiff":
        stack.enter_context(mock.patch.object(normalization, "_normalise_by_batch", _by_autodiff))
        stack.enter_context(
            mock.patch.object(normalization, "_normalise_rows", _rows_by_autodiff)
        )
    return stack


def _interleaved(programs: dict, blocks: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of each zero-argument program, timed in alternating blocks."""
    for run in programs.values():
        run()
        run()
    times: dict[str, list[float]] = {k: [] for k in programs}
    for _ in range(blocks):
        for label, run in programs.items():
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times[label].append((time.perf_counter() - start) * 1e3)
    return {label: statistics.median(ts) for label, ts in times.items()}


def _layer_programs(kind: str, shape) -> dict:
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32) * 3 + 1
    g = rng.normal(size=shape).astype(np.float32)
    c = shape[-1]
    if kind == "batch_norm":
        layer = cnn_jax.nn.BatchNorm2d(c)
        variables = layer.init(jax.random.key(0), jnp.asarray(x[:2]), train=False)

        def forward(params, x):
            y, _ = layer.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats"])  # fmt: skip
            return jnp.clip(y, 0, 6)

        theirs = torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU6())
        to_torch = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    else:
        layer = cnn_jax.nn.LayerNorm(c, eps=1e-6)
        variables = layer.init(jax.random.key(0), jnp.asarray(x[:2]))

        def forward(params, x):
            return layer.apply({**variables, "params": params}, x)

        theirs = torch.nn.LayerNorm(c, eps=1e-6)
        to_torch = torch.from_numpy
    xj, gj = jnp.asarray(x), jnp.asarray(g)
    programs = {}
    for variant in VARIANTS:

        def loss(params, x):
            return jnp.sum(forward(params, x) * gj)

        with _traced_with(variant):
            step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables["params"], xj).compile()
        programs[variant] = lambda step=step: jax.block_until_ready(step(variables["params"], xj))
    xt = to_torch(x).requires_grad_()
    gt = to_torch(g)

    def torch_step():
        theirs.zero_grad()
        xt.grad = None
        theirs(xt).backward(gt)

    programs["torch"] = torch_step
    return programs


def _step_programs(model_name: str, size: int, batch: int) -> dict:
    model = create(model_name, num_classes=10)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((batch, size, size, 3), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, batch))
    programs = {}
    for variant in VARIANTS:
        state = create_train_state(model, optax.adamw(1e-3), jax.random.key(0), images[:1])
        batch = {"image": images, "label": labels}
        with _traced_with(variant):  # compiled here: no later call can trace it again
            step = jax.jit(make_train_step(), donate_argnums=0).lower(state, batch).compile()
        holder = [step(state, batch)[0]]

        def run(step=step, holder=holder, batch=batch):
            holder[0], metrics = step(holder[0], batch)
            jax.block_until_ready(metrics)

        programs[variant] = run
    return programs


TITLES = {
    "batch_norm": "Train-mode BatchNorm2d + ReLU6 on MobileNetV2's shapes",
    "layer_norm": "LayerNorm over the channels (ConvNeXt's, eps 1e-6) on ConvNeXt-Tiny's shapes",
}


def tables(results: dict) -> str:
    s = results["settings"]
    lines = []
    for kind in KINDS:
        rows = [r for r in results["layers"] if r["kind"] == kind]
        if not rows:
            continue
        lines += [
            f"{TITLES[kind]}, forward and backward; median ms of {s['blocks']} alternating "
            f"blocks of {s['repeats']}; torch with {s['torch_threads']} threads",
            "",
            "| input (NHWC) | cnn_jax rule | jax autodiff | torch | autodiff / rule | "
            "torch / rule |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            ms = r["ms"]
            lines.append(
                f"| {'x'.join(map(str, r['shape']))} | {ms['rule']:.2f} | {ms['autodiff']:.2f} | "
                f"{ms['torch']:.2f} | {ms['autodiff'] / ms['rule']:.2f} | "
                f"{ms['torch'] / ms['rule']:.2f} |"
            )
        total = {k: sum(r["ms"][k] for r in rows) for k in ("rule", "autodiff", "torch")}
        lines += [
            f"| all of the above | {total['rule']:.2f} | {total['autodiff']:.2f} | "
            f"{total['torch']:.2f} | {total['autodiff'] / total['rule']:.2f} | "
            f"{total['torch'] / total['rule']:.2f} |",
            "",
        ]
    lines += [
        f"Whole train steps (AdamW, batch {s['batch']}, {s['size']}x{s['size']}), median ms:",
        "",
        "| model | with the rules | normalisation left to autodiff | autodiff / rules |",
        "|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms = r["ms"]
        lines.append(
            f"| {r['model']} | {ms['rule']:.1f} | {ms['autodiff']:.1f} | "
            f"{ms['autodiff'] / ms['rule']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5, help="alternating blocks per variant")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per block")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--quick", action="store_true", help="one small shape of each kind, resnet18 at 16x16"
    )
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    shapes = {"batch_norm": SHAPES, "layer_norm": LAYER_NORM_SHAPES}
    size, batch = 64, 32
    if args.quick:
        shapes = {kind: [(4, 8, 8, 16)] for kind in KINDS}
        args.models, size, batch = ["resnet18"], 16, 4
        args.blocks, args.repeats = 1, 1
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    run = record.provenance(MODULE, argv)
    results: dict = {
        "settings": {
            "blocks": args.blocks, "repeats": args.repeats, "size": size, "batch": batch,
            "torch_threads": torch.get_num_threads(),
        },
        "layers": [],
        "steps": [],
    }  # fmt: skip
    for kind in KINDS:
        for shape in shapes[kind]:
            ms = _interleaved(_layer_programs(kind, shape), args.blocks, args.repeats)
            results["layers"].append({"kind": kind, "shape": list(shape), "ms": ms})
            print(results["layers"][-1], flush=True)
    for model in args.models:
        ms = _interleaved(_step_programs(model, size, batch), args.blocks, args.repeats)
        results["steps"].append({"model": model, "ms": ms})
        print(results["steps"][-1], flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(out, results, tables, provenance=run)
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    main()
