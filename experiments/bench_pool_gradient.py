"""Question: where should a train step store the gradient that a max pooling's backward pass
reads, on CPU: nowhere, after every max pooling, or where the library does (after DenseNet's
stem pooling, whose output is its first dense block's input)?

A pooling's input gradient reads the output gradient at every input position of every window
(max pooling through a select per window slice, ``cnn_jax.functional.max_pool2d``'s
first-maximum rule). XLA:CPU fuses whatever computes that gradient into the pooling's backward
loop and recomputes it there, once per reading position. Where the pooled map feeds a
convolution, its input gradient is already in memory and the recomputation is a read; in
DenseNet the pooled map is a dense block's input, which every layer of the block reads through
its concatenations, so the gradient is a sum of one BatchNorm backward pass per layer.

Variants, each model's train step (AdamW) compiled three ways in one process and timed in
alternating blocks:

* ``library``: as cnn_jax is (DenseNet stores the gradient of its stem pooling's output,
  :func:`~cnn_jax.functional.materialize_gradient`; nothing else is stored for pooling);
* ``every max pool``: besides, every ``MaxPool2d``'s output gradient stored (its output through
  ``materialize_gradient``, by flax method interception);
* ``none``: DenseNet's store undone (in the other families the same program as ``library``,
  which shows the spread between two compilations of one step).

``max pools``: how many max poolings a model's forward pass calls.

    python -m experiments.bench_pool_gradient
    python -m experiments.bench_pool_gradient --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_pool_gradient``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.functional as F
import cnn_jax.nn as cnn
from cnn_jax.models import densenet
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
VARIANTS = ("library", "every max pool", "none")


def _is_max_pool_call(context) -> bool:
    """Whether a flax interceptor's ``context`` is a ``MaxPool2d`` being called."""
    return isinstance(context.module, cnn.MaxPool2d) and context.method_name == "__call__"


def _store_max_pool_outputs(next_fun, args, kwargs, context):
    """Flax interceptor: a ``MaxPool2d``'s output with its gradient stored."""
    out = next_fun(*args, **kwargs)
    return F.materialize_gradient(out) if _is_max_pool_call(context) else out


def _traced_with(variant: str) -> contextlib.AbstractContextManager:
    """A context under which a model is traced with ``variant`` (see the module docstring)."""
    if variant == "every max pool":
        return nn.intercept_methods(_store_max_pool_outputs)
    if variant == "none":
        return mock.patch.object(densenet, "materialize_gradient", lambda x: x)
    return contextlib.nullcontext()


def max_pools(model_name: str, size: int) -> int:
    """How many max poolings ``model_name``'s forward pass on a ``size`` x ``size`` image calls
    (traced for shapes only)."""
    model = record.step_model(model_name, size)
    x = jnp.zeros((1, size, size, 3))
    calls = []

    def count(next_fun, args, kwargs, context):
        if _is_max_pool_call(context):
            calls.append(context.module)
        return next_fun(*args, **kwargs)

    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    with nn.intercept_methods(count):
        jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    return len(calls)


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Train step (AdamW), median ms of {s['blocks']} alternating blocks of {s['repeats']}; "
        "`library`: cnn_jax as it is (DenseNet stores its stem pooling's output gradient); `every "
        "max pool`: besides, every max pooling's output gradient stored; `none`: DenseNet's "
        "store undone (elsewhere the library's program compiled again)",
        "",
        "| model | input | batch | max pools | library ms | every max pool ms | none ms | "
        "every max pool / library | none / library |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms = r["ms"]
        lib, every, none = ms["library"], ms["every max pool"], ms["none"]
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {r['max_pools']} | "
            f"{lib:.1f} | {every:.1f} | {none:.1f} | {every / lib:.2f} | {none / lib:.2f} |"
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
        blocks=10,
        extra=lambda model, size, batch: {"max_pools": max_pools(model, size)},
    )


if __name__ == "__main__":
    record.entry_point(main)
