"""Question: what does computing a depthwise convolution with a large kernel on a map not much
larger than the kernel by its unfolded matrix save in a train step on CPU?

cnn_jax computes a depthwise convolution (MobileNet's, EfficientNet's, ConvNeXt's) tap by tap:
each of the kernel's taps a pass of slices times per-channel weights over the output, and in the
weight gradient a reduction per tap (``backend='depthwise'``). On a small map a large kernel's
taps mostly read padding: ConvNeXt's 7x7 on a 4x4 map multiplies 49 taps at each of 16 outputs
where only 16 input positions exist. Where the map has at most 1.5 positions per tap and the
kernel at least 25 taps (5x5 and larger), ``'auto'`` instead unfolds the kernel into the matrix
from each channel's input map to its output map and computes one matmul batched over the channels,
or on maps of at most 9 positions a sum of elementwise products over the input positions
(``backend='unfolded'``; ``cnn_jax.functional.conv.UNFOLD_SMALL_DEPTHWISE``). At 64x64 such maps
are ConvNeXt's last three stages (8x8, 4x4, 2x2) and the last stages of EfficientNet's, MnasNet's
and MobileNetV3's 5x5 layers.

Variants, each model's train step (AdamW, the state's kernels in the step's layout, as the run
loop holds them on the CPU) compiled in one process and timed in alternating blocks:

* ``library``: as cnn_jax is;
* ``tap by tap``: ``UNFOLD_SMALL_DEPTHWISE`` off, so every depthwise convolution runs tap by
  tap.

``unfolded``: how many of a model's convolutions the rule covers, of ``convolutions``. A case where
it covers none (MobileNetV2, whose depthwise kernels are all 3x3) compiles the same program twice,
which shows the spread between two compilations.

    python -m experiments.bench_unfolded_depthwise
    python -m experiments.bench_unfolded_depthwise --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_unfolded_depthwise``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

from cnn_jax.functional import conv
from experiments import record

NAME = "bench_unfolded_depthwise"

# (model, input size, batch): the families with 5x5 or 7x7 depthwise kernels at the zoo's
# setting, ConvNeXt also at 32x32 (every stage after the first on maps of 8x8 and smaller) and at
# 224x224 (its last stage), and MobileNetV2 (3x3 kernels only: the control).
CASES = [
    ("convnext_tiny", 64, 32), ("efficientnet_b0", 64, 32), ("mnasnet0_5", 64, 32),
    ("mobilenet_v3_small", 64, 32), ("convnext_tiny", 32, 128), ("convnext_tiny", 224, 16),
    ("mobilenet_v2", 64, 32),
]  # fmt: skip
VARIANTS = ("library", "tap by tap")


def _traced_with(variant: str) -> contextlib.AbstractContextManager:
    """A context under which a model is traced with ``variant`` (see the module docstring)."""
    if variant == "tap by tap":
        return mock.patch.object(conv, "UNFOLD_SMALL_DEPTHWISE", False)
    return contextlib.nullcontext()


unfolded_convolutions = functools.partial(record.planned_convolutions, plan="unfolded")


def tables(results: dict) -> str:
    return record.rule_table(
        results,
        off="tap by tap",
        off_means="every depthwise convolution tap by tap",
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
