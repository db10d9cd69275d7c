"""Question: what does computing a grouped convolution on a map no larger than its windows as
one matmul per group by the unfolded kernel save in a train step on CPU?

A grouped convolution with several channels per group (RegNet's, ResNeXt's) is otherwise im2col
patches times the kernel, one matmul batched over the groups (``backend='grouped'``): on a small
map most of the patches' columns are padding, and each group's matmul has as few output columns
as the group has channels (16 for RegNet-X-400MF, 8 for RegNet-Y-400MF). Where every output's
window reads the whole input (a padded 3x3 convolution on a 1x1 or 2x2 map), cnn_jax's ``'auto'``
backend instead unfolds the kernel into the dense matrix from a group's input map to its output
map (``backend='unfolded'``; ``cnn_jax.functional.conv.UNFOLD_SMALL_GROUPED``): no patches, no
products by padding, and the whole output map's channels as the matmul's columns. RegNets meet
such maps in their last stage at 64x64 (2x2) and in their last two at 32x32 (2x2 and 1x1).

Variants, each model's train step (AdamW, the state's kernels in the step's layout, as the run
loop holds them on the CPU) compiled in one process and timed in alternating blocks:

* ``library``: as cnn_jax is;
* ``without unfolding``: ``UNFOLD_SMALL_GROUPED`` off, so those convolutions run as batched
  im2col, as every other grouped convolution does.

``unfolded``: how many of a model's convolutions the rule covers, of ``convolutions``. A case where
it covers none compiles the same program twice, which shows the spread between two compilations.

    python -m experiments.bench_unfolded_groups
    python -m experiments.bench_unfolded_groups --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_unfolded_groups``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

from cnn_jax.functional import conv
from experiments import record

NAME = "bench_unfolded_groups"

# (model, input size, batch): both RegNets at the zoo's setting and at 32x32, and ShuffleNet,
# which has no grouped convolution with several channels per group (the control).
CASES = [
    ("regnet_x_400mf", 64, 32), ("regnet_y_400mf", 64, 32),
    ("regnet_x_400mf", 32, 128), ("regnet_y_400mf", 32, 128),
    ("shufflenet_v2_x0_5", 64, 32),
]  # fmt: skip
VARIANTS = ("library", "without unfolding")


def _traced_with(variant: str) -> contextlib.AbstractContextManager:
    """A context under which a model is traced with ``variant`` (see the module docstring)."""
    if variant == "without unfolding":
        return mock.patch.object(conv, "UNFOLD_SMALL_GROUPED", False)
    return contextlib.nullcontext()


unfolded_convolutions = functools.partial(record.planned_convolutions, plan="unfolded")


def tables(results: dict) -> str:
    return record.rule_table(
        results,
        off="without unfolding",
        off_means="those grouped convolutions as batched im2col",
        covered="unfolded",
    )


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
        extra=lambda model, size, batch: unfolded_convolutions(model, size),
        prepare=record.run_loop_layout,
    )


if __name__ == "__main__":
    record.entry_point(main)
