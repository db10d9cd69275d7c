"""Question: what does storing a convolution's weight gradient once
(:func:`cnn_jax.functional.materialize_gradient`, for kernels of at least
``cnn_jax.functional.conv.STORED_WEIGHT_GRADIENT_SIZE`` elements) save on CPU, and from which
kernel size on does it pay? And what does computing 1x1 kernels' weight gradients as matmuls
over pixels (``cnn_jax.functional.conv.POINTWISE_WEIGHT_GRADIENT_AS_MATMUL``) save?

XLA:CPU computes a weight gradient input-channel major, while the parameter, and so AdamW's
updates of its two moments, are in torch's OIHW layout. Left alone, XLA fuses the transposition
into each update that reads the gradient, and a fused transposed read of a large array is
several times slower than a transposition of its own. For that convolution XLA also transposes
the layer's input channel-major, inside the fusion that computes it; a 1x1 kernel's weight
gradient is a plain matmul over pixels instead, which the library computes from the stored
output gradient. Two measurements, each variant compiled in the same process and timed in
alternating blocks:

* ``kernels``: one convolution's weight gradient (a 2-image batch of 6x6 maps, so the
  convolution is cheap beside the update) and AdamW's update of that kernel, with the gradient
  stored and not, for kernels of several sizes;
* ``steps``: whole train steps (AdamW) as the library compiles them (``library``), with no
  weight gradient stored (``none stored``), with every kernel's stored (``all stored``), and
  with 1x1 kernels' weight gradients left to XLA's convolution (``1x1 by convolution``).

    python -m experiments.bench_weight_gradients
    python -m experiments.bench_weight_gradients --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_weight_gradients``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

import cnn_jax
import cnn_jax.functional as F
from cnn_jax.functional import conv
from experiments import record
from experiments.bench_batch_norm import interleaved

NAME = "bench_weight_gradients"
MODULE = f"experiments.{NAME}"
# (model, input size, batch): the families with kernels above the size and the zoo's setting,
# one without any (regnet_y_400mf: its program is the same under `library` and `none stored`,
# so that ratio's distance from 1 is the measurement's own spread), families built of 1x1
# convolutions (densenet121, regnet_x_400mf), and ResNet-18 at the README's CIFAR setting.
CASES = [
    ("resnet18", 64, 32), ("resnet50", 64, 32), ("vgg11", 64, 32), ("alexnet", 64, 32),
    ("convnext_tiny", 64, 32), ("mobilenet_v2", 64, 32), ("regnet_y_400mf", 64, 32),
    ("densenet121", 64, 32), ("regnet_x_400mf", 64, 32), ("resnet18", 32, 128),
]  # fmt: skip
# OIHW kernels: ResNet's and VGG's 3x3 ones by width, and bottleneck 1x1 ones both ways round.
KERNELS = [
    (512, 512, 3, 3), (256, 256, 3, 3), (128, 128, 3, 3), (64, 64, 3, 3),
    (2048, 512, 1, 1), (512, 2048, 1, 1), (1024, 256, 1, 1), (256, 1024, 1, 1),
    (256, 64, 1, 1), (64, 256, 1, 1),
]  # fmt: skip
QUICK_KERNELS = [(512, 512, 1, 1), (64, 64, 3, 3)]
STEP_VARIANTS = ("library", "none stored", "all stored", "1x1 by convolution")
KERNEL_VARIANTS = ("stored", "not stored")
_SIZES = {
    "library": conv.STORED_WEIGHT_GRADIENT_SIZE,
    "none stored": sys.maxsize,
    "all stored": 1,
    "1x1 by convolution": conv.STORED_WEIGHT_GRADIENT_SIZE,
    "stored": 1,
    "not stored": sys.maxsize,
}


@contextlib.contextmanager
def _traced_with(variant: str):
    """A context under which convolutions are traced with ``variant``'s size rule, and with 1x1
    kernels' weight gradients as XLA's convolution for ``1x1 by convolution``."""
    matmul = variant != "1x1 by convolution"
    with (
        mock.patch.object(conv, "STORED_WEIGHT_GRADIENT_SIZE", _SIZES[variant]),
        mock.patch.object(conv, "POINTWISE_WEIGHT_GRADIENT_AS_MATMUL", matmul),
    ):
        yield


def _kernel_programs(shape: tuple[int, int, int, int]) -> dict:
    """One convolution's weight gradient and AdamW's update of the kernel, per variant."""
    _, in_c, kh, kw = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, in_c), dtype=np.float32))
    kernel = jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * 0.01)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(kernel)
    options = cnn_jax.runtime.settings().compiler_options

    def update(kernel, opt_state):
        grad = jax.grad(lambda k: jnp.sum(F.conv2d(x, k, None, 1, (kh // 2, kw // 2)) ** 2))(kernel)
        updates, opt_state = tx.update(grad, opt_state, kernel)
        return optax.apply_updates(kernel, updates), opt_state

    programs = {}
    for variant in KERNEL_VARIANTS:
        with _traced_with(variant):
            # A new function per variant: jax would reuse one function's trace.
            step = jax.jit(lambda k, s: update(k, s))
            step = step.lower(kernel, opt_state).compile(compiler_options=options)
        programs[variant] = lambda step=step: jax.block_until_ready(step(kernel, opt_state))
    return programs


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"One convolution's weight gradient and AdamW's update of the kernel, median ms of "
        f"{s['blocks']} alternating blocks of {s['kernel_repeats']}",
        "",
        "| kernel (OIHW) | elements | MiB | stored ms | not stored ms | not stored / stored |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["kernels"]:
        n, ms = int(np.prod(r["shape"])), r["ms"]
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {n} | {n * 4 / 2**20:.2f} | "
            f"{ms['stored']:.3f} | {ms['not stored']:.3f} | "
            f"{ms['not stored'] / ms['stored']:.2f} |"
        )
    lines += [
        "",
        f"Train step (AdamW), median ms of {s['blocks']} alternating blocks of {s['repeats']}; "
        f"`library`: weight gradients of kernels of at least {s['size']} elements stored",
        "",
        "| model | input | batch | kernels stored by the library | 1x1 kernels | library ms "
        "| none stored ms | all stored ms | 1x1 by convolution ms | none stored / library "
        "| all stored / library | 1x1 by convolution / library |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms = r["ms"]
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | "
            f"{r['stored_kernels']} of {r['kernels']} | {r['pointwise_kernels']} | "
            f"{ms['library']:.1f} | {ms['none stored']:.1f} | {ms['all stored']:.1f} | "
            f"{ms['1x1 by convolution']:.1f} | {ms['none stored'] / ms['library']:.2f} | "
            f"{ms['all stored'] / ms['library']:.2f} | "
            f"{ms['1x1 by convolution'] / ms['library']:.2f} |"
        )
    return "\n".join(lines)


def _kernel_counts(parameter_shapes: list[tuple[int, ...]]) -> tuple[int, int, int]:
    """How many parameters are convolution kernels (4-d), how many of those the library stores
    the gradient of (1x1 ones are matmuls, exempt), and how many are 1x1 (grouped ones included:
    those stay grouped matmuls)."""
    kernels = [shape for shape in parameter_shapes if len(shape) == 4]
    stored = sum(
        math.prod(shape) >= conv.STORED_WEIGHT_GRADIENT_SIZE and shape[2:] != (1, 1)
        for shape in kernels
    )
    pointwise = sum(shape[2:] == (1, 1) for shape in kernels)
    return len(kernels), stored, pointwise


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    record.add_case_arguments(parser, blocks=5)
    parser.add_argument("--no-kernels", action="store_true", help="whole steps only")
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    cases = record.selected_cases(parser, args, CASES)
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    run = record.provenance(MODULE, argv)
    results: dict = {
        "settings": {
            "blocks": args.blocks,
            "repeats": args.repeats,
            "kernel_repeats": 5 * args.repeats,
            "size": conv.STORED_WEIGHT_GRADIENT_SIZE,
        },
        "kernels": [],
        "steps": [],
    }
    kernels = [] if args.no_kernels else QUICK_KERNELS if args.quick else KERNELS
    for shape in kernels:
        programs = _kernel_programs(shape)
        ms = interleaved(programs, args.blocks, 5 * args.repeats)
        results["kernels"].append({"shape": list(shape), "ms": ms})
        print(results["kernels"][-1], flush=True)
    for model, size, batch in cases:
        steps = record.step_variants(model, size, batch, STEP_VARIANTS, _traced_with)
        count, stored, pointwise = _kernel_counts(steps.parameter_shapes)
        results["steps"].append(
            {
                "model": model,
                "size": size,
                "batch": batch,
                "kernels": count,
                "stored_kernels": stored,
                "pointwise_kernels": pointwise,
                "ms": interleaved(steps.programs, args.blocks, args.repeats),
                "compile_s": steps.compile_s,
            }
        )
        print(results["steps"][-1], flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(out, results, tables, provenance=run)
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    record.entry_point(main)
