"""Question: what does cnn_jax's written-out derivative of train-mode batch normalisation buy on
CPU, against jax differentiating the same formula itself and against PyTorch?

Two measurements, both in one process with the variants interleaved:

* **layers**: a train-mode ``BatchNorm2d`` followed by ReLU6, forward and backward (input,
  weight and bias gradients), on the feature-map shapes of MobileNetV2's train step at 64x64,
  batch 32: cnn_jax (``rule``), the same normalisation left to jax's autodiff (``autodiff``)
  and ``torch.nn.BatchNorm2d`` + ``ReLU6`` (``torch``, 2 threads);
* **steps**: whole train steps (AdamW, batch 32, 64x64) of models with many BatchNorm layers,
  built once with the rule and once with the normalisation left to autodiff.

The rule (``cnn_jax.functional.normalization``) exists because jax's derivative of the two-pass
moments makes a backward of six full reductions and five full-size temporaries, which is
memory-bound once a feature map outgrows the cache.

    python -m experiments.bench_batch_norm
    python -m experiments.bench_batch_norm --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_batch_norm``; ``--quick``: a temporary folder).
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

NAME = "bench_batch_norm"
MODULE = f"experiments.{NAME}"
# MobileNetV2's BatchNorm inputs in its train step at 64x64, batch 32 (NHWC), largest first.
SHAPES = [
    (32, 32, 32, 96), (32, 32, 32, 32), (32, 16, 16, 144), (32, 16, 16, 96), (32, 8, 8, 192),
    (32, 4, 4, 384), (32, 2, 2, 960),
]  # fmt: skip
MODELS = ("mobilenet_v2", "efficientnet_b0", "resnet18")
VARIANTS = ("rule", "autodiff")


def _by_autodiff(x, weight, bias, eps):
    """The normalisation with no derivative rule of its own: what jax differentiates."""
    mean, var = normalization._moments(x, tuple(range(x.ndim - 1)), None)
    return (x - mean) * jax.lax.rsqrt(var + eps) * weight + bias, mean, var


def _traced_with(variant: str):
    """A context under which cnn_jax's batch norm is traced with ``variant``."""
    if variant == "rule":
        return contextlib.nullcontext()
    return mock.patch.object(normalization, "_normalise_by_batch", _by_autodiff)


def interleaved(programs: dict, blocks: int, repeats: int, settle: int = 0) -> dict[str, float]:
    """Median milliseconds of each zero-argument program, timed in alternating blocks (each
    run twice first, untimed). ``settle`` untimed runs open each program's block: where torch
    and jax programs alternate, the one that follows the other framework runs slower while
    that framework's worker threads still spin."""
    for run in programs.values():
        run()
        run()
    times: dict[str, list[float]] = {k: [] for k in programs}
    for _ in range(blocks):
        for label, run in programs.items():
            for _ in range(settle):
                run()
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times[label].append((time.perf_counter() - start) * 1e3)
    return {label: statistics.median(ts) for label, ts in times.items()}


def _layer_programs(shape) -> dict:
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32) * 3 + 1
    g = rng.normal(size=shape).astype(np.float32)
    c = shape[-1]
    bn = cnn_jax.nn.BatchNorm2d(c)
    variables = bn.init(jax.random.key(0), jnp.asarray(x[:2]), train=False)
    xj, gj = jnp.asarray(x), jnp.asarray(g)
    programs = {}
    for variant in VARIANTS:

        def loss(params, x, variables=variables):
            y, _ = bn.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(jnp.clip(y, 0, 6) * gj)

        with _traced_with(variant):
            step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables["params"], xj).compile()
        programs[variant] = lambda step=step: jax.block_until_ready(step(variables["params"], xj))
    layer = torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU6())
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()

    def torch_step():
        layer.zero_grad()
        xt.grad = None
        layer(xt).backward(gt)

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


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Train-mode BatchNorm2d + ReLU6, forward and backward; median ms of {s['blocks']} "
        f"alternating blocks of {s['repeats']}; torch with {s['torch_threads']} threads",
        "",
        "| input (NHWC) | cnn_jax rule | jax autodiff | torch | autodiff / rule | torch / rule |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["layers"]:
        ms = r["ms"]
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {ms['rule']:.2f} | {ms['autodiff']:.2f} | "
            f"{ms['torch']:.2f} | {ms['autodiff'] / ms['rule']:.2f} | "
            f"{ms['torch'] / ms['rule']:.2f} |"
        )
    total = {k: sum(r["ms"][k] for r in results["layers"]) for k in ("rule", "autodiff", "torch")}
    lines.append(
        f"| all of the above | {total['rule']:.2f} | {total['autodiff']:.2f} | "
        f"{total['torch']:.2f} | {total['autodiff'] / total['rule']:.2f} | "
        f"{total['torch'] / total['rule']:.2f} |"
    )
    lines += [
        "",
        f"Whole train steps (AdamW, batch {s['batch']}, {s['size']}x{s['size']}), median ms:",
        "",
        "| model | with the rule | normalisation left to autodiff | autodiff / rule |",
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
    parser.add_argument("--quick", action="store_true", help="one small shape, resnet18 at 16x16")
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    shapes, size, batch = SHAPES, 64, 32
    if args.quick:
        shapes, args.models, size, batch = [(4, 8, 8, 16)], ["resnet18"], 16, 4
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
    for shape in shapes:
        ms = interleaved(_layer_programs(shape), args.blocks, args.repeats)
        results["layers"].append({"shape": list(shape), "ms": ms})
        print(results["layers"][-1], flush=True)
    for model in args.models:
        ms = interleaved(_step_programs(model, size, batch), args.blocks, args.repeats)
        results["steps"].append({"model": model, "ms": ms})
        print(results["steps"][-1], flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(out, results, tables, provenance=run)
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    record.entry_point(main)
