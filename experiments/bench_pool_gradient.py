"""Question: does storing a max pooling's output gradient once, before the window selects that
read it, make train steps faster on CPU, and in which families?

Max pooling's derivative (``cnn_jax.functional.max_pool2d``, torch's first-maximum rule) is a
select over the kH*kW window slices: in reverse mode every input position reads the output
gradient at each window that contains it. XLA:CPU fuses whatever computes that gradient into the
loop of selects and recomputes it there, once per reading window position. Where the pooled map
feeds a cheap consumer (the next convolution's input gradient is already in memory) that costs
little; in DenseNet the pooled stem feeds every layer of the first dense block through its
concatenations, so the gradient is a sum of six BatchNorm backward passes, recomputed for every
input pixel of the pooling. The library passes the pooled gradient through
:func:`cnn_jax.functional.fusion.store_tangent` (``stored``); ``fused`` leaves it to XLA. Each
model's train step (AdamW) is compiled both ways in one process and the two are timed in
alternating blocks; every model here has at least one max pooling (``max pools``: how many its
forward pass calls).

    python -m experiments.bench_pool_gradient
    python -m experiments.bench_pool_gradient --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_pool_gradient``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import jax
import jax.numpy as jnp

from cnn_jax.functional import pooling
from experiments import record

NAME = "bench_pool_gradient"
# (model, input size, batch): the course models with max pooling and ResNet-18 at the README's
# CIFAR setting, then every torchvision family with max pooling at the zoo's setting
# (inception_v3 at its smallest input).
CASES = [
    ("cifar_cnn", 32, 128), ("convnet", 32, 128), ("resnet18", 32, 128),
    ("densenet121", 64, 32), ("resnet18", 64, 32), ("googlenet", 64, 32),
    ("inception_v3", 75, 32), ("alexnet", 64, 32), ("vgg11", 64, 32), ("squeezenet1_1", 64, 32),
    ("shufflenet_v2_x0_5", 64, 32),
]  # fmt: skip
VARIANTS = ("stored", "fused")


def _traced_with(variant: str):
    """``fused``: the pooled gradient is not stored (the library's store undone)."""
    if variant == "fused":
        return mock.patch.object(pooling, "_stored_pool_tangent", lambda tangent, y: tangent)
    return contextlib.nullcontext()


def max_pools(model_name: str, size: int) -> int:
    """How many max poolings ``model_name``'s forward pass on a ``size`` x ``size`` image calls
    (traced for shapes only)."""
    model = record.step_model(model_name, size)
    x = jnp.zeros((1, size, size, 3))
    calls = []
    real = pooling._max_pool

    def counted(*args):
        calls.append(args)
        return real(*args)

    with mock.patch.object(pooling, "_max_pool", counted):
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
        jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    return len(calls) // 2  # init and apply each call every pooling once


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Train step (AdamW), median ms of {s['blocks']} alternating blocks of {s['repeats']}; "
        "`stored`: each max pooling's output gradient stored before its window selects (the "
        "library); `fused`: left to XLA's fusion",
        "",
        "| model | input | batch | max pools | stored ms | fused ms | fused / stored |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms = r["ms"]
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {r['max_pools']} | "
            f"{ms['stored']:.1f} | {ms['fused']:.1f} | {ms['fused'] / ms['stored']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return record.step_bench(
        argv,
        name=NAME,
        description=__doc__.splitlines()[0],
        cases=CASES,
        variants=VARIANTS,
        traced_with=_traced_with,
        tables=tables,
        blocks=5,
        extra=lambda model, size, batch: {"max_pools": max_pools(model, size)},
    )


if __name__ == "__main__":
    main()
