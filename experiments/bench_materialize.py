"""Question: does storing each residual block's output once (``cnn_jax.functional.materialize``)
make train steps faster on CPU, and in which families?

XLA:CPU fuses cheap elementwise chains (BatchNorm, the residual addition, ReLU) into every
fusion that reads their result, so in a ResNet stage a consumer of the last block's output
recomputes the stage's chain back to its first block. ``materialize`` is a boundary fusion does
not cross. Each model's train step (AdamW) is compiled twice in one process, with every
residual block's output stored (``stored``) and with none stored (``recomputed``), and the two
are timed in alternating blocks. Both variants are traced with the models' own calls of
``materialize`` turned off and the block outputs wrapped from outside (flax method
interception), so the same blocks are compared in every family, whether or not the library
stores them (``in_library``: whether the model as it is traces a ``materialize``).

    python -m experiments.bench_materialize
    python -m experiments.bench_materialize --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_materialize``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp

import cnn_jax.functional as F
from cnn_jax.models import (
    convnext,
    create,
    efficientnet,
    mnasnet,
    mobilenetv2,
    regnet,
    resnet,
)
from experiments import record

NAME = "bench_materialize"
# (model, input size, batch): the ResNets at both of the README's sizes, then the zoo's setting.
CASES = [
    ("resnet50", 224, 16), ("resnet50", 32, 128), ("resnet18", 224, 16), ("resnet18", 32, 128),
    ("regnet_y_400mf", 64, 32), ("regnet_x_400mf", 64, 32), ("mobilenet_v2", 64, 32),
    ("efficientnet_b0", 64, 32), ("mnasnet0_5", 64, 32), ("convnext_tiny", 64, 32),
]  # fmt: skip
# The residual blocks whose output the ``stored`` variant stores.
BLOCKS = (
    resnet.BasicBlock, resnet.Bottleneck, regnet.ResBottleneckBlock,
    mobilenetv2.InvertedResidual, efficientnet.MBConv, efficientnet.FusedMBConv,
    mnasnet._InvertedResidual, convnext.CNBlock,
)  # fmt: skip
VARIANTS = ("stored", "recomputed")
_MATERIALIZE = F.materialize  # the real one: the variants patch F.materialize while tracing


def _store_block_outputs(next_fun, args, kwargs, context):
    """Flax interceptor: a residual block's ``__call__`` returns its output stored."""
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, BLOCKS) and context.method_name == "__call__":
        return _MATERIALIZE(out)
    return out


def _traced_with(variant: str) -> contextlib.ExitStack:
    """A context under which a model is traced with ``variant``: the library's own calls of
    ``materialize`` are off, and ``stored`` wraps every residual block's output instead."""
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(F, "materialize", lambda x: x))
    if variant == "stored":
        stack.enter_context(nn.intercept_methods(_store_block_outputs))
    return stack


def _stored_by_the_library(model: nn.Module, x: jax.Array) -> bool:
    """Whether ``model``, traced as it is, calls :func:`cnn_jax.functional.materialize` (seen as
    a ``cond`` in its forward pass)."""
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
    return any(eqn.primitive.name == "cond" for eqn in jaxpr.eqns)


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Train step (AdamW), median ms of {s['blocks']} alternating blocks of {s['repeats']}; "
        "`stored`: every residual block's output through materialize; `recomputed`: none",
        "",
        "| model | input | batch | stored ms | recomputed ms | recomputed / stored | "
        "stored in the library |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms = r["ms"]
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {ms['stored']:.1f} | "
            f"{ms['recomputed']:.1f} | {ms['recomputed'] / ms['stored']:.2f} | "
            f"{'yes' if r['in_library'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    def in_library(model: str, size: int, batch: int) -> dict[str, bool]:
        x = jnp.zeros((1, size, size, 3))
        return {"in_library": _stored_by_the_library(create(model, num_classes=10), x)}

    return record.step_bench(
        argv,
        name=NAME,
        description=__doc__.splitlines()[0],
        cases=CASES,
        variants=VARIANTS,
        traced_with=_traced_with,
        tables=tables,
        blocks=3,
        extra=in_library,
    )


if __name__ == "__main__":
    record.entry_point(main)
