"""Question: what does computing a convolution whose products are mostly by padding tap by tap,
on the inside of the input only, save in a train step on CPU?

On a map not much larger than its kernel, most of a padded convolution's multiplications read
padding: a 3x3 convolution (padding 1) on a 1x1 map reads the input through its centre tap only,
1/9 of the products XLA's direct convolution or im2col computes, and on a 2x2 map 16/36.
cnn_jax's ``'auto'`` backend runs a convolution of which at most half of the (tap, output
position) pairs read inside the input (``cnn_jax.functional.conv.MOSTLY_PADDING``) as one matmul
per tap on the positions that tap reads (``backend='taps'``, every part, weight gradient
included). ResNets and DenseNets meet such maps in their last stage at 64x64 (2x2 maps), ResNets
at 32x32 in their last two (2x2 and 1x1), GoogLeNet at 64x64 and Inception-v3 at its smallest
input too.

Variants, each model's train step (AdamW, the state's kernels in the step's layout, as the run
loop holds them on the CPU) compiled in one process and timed in alternating blocks:

* ``library``: as cnn_jax is;
* ``without taps``: the rule off (``MOSTLY_PADDING`` below every fraction), so those
  convolutions run as before it: im2col where the input is narrower than the kernel, XLA's
  convolution for the weight gradient.

``taps``: how many of a model's convolutions the rule covers, of ``convolutions``. A case where it
covers none compiles the same program twice, which shows the spread between two compilations.

    python -m experiments.bench_padding_taps
    python -m experiments.bench_padding_taps --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_padding_taps``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

from cnn_jax.functional import conv
from experiments import record

NAME = "bench_padding_taps"
# (model, input size, batch): ResNet-18 at the README's CIFAR setting and at batch 32, ResNet-50
# at the CIFAR setting, the zoo's families with such convolutions at the zoo's setting
# (Inception-v3 at its smallest input), and SqueezeNet, which has none (the control).
CASES = [
    ("resnet18", 32, 128), ("resnet18", 32, 32), ("resnet50", 32, 128), ("resnet18", 64, 32),
    ("densenet121", 64, 32), ("googlenet", 64, 32), ("inception_v3", 75, 32),
    ("squeezenet1_1", 64, 32),
]  # fmt: skip
VARIANTS = ("library", "without taps")


def _traced_with(variant: str) -> contextlib.AbstractContextManager:
    """A context under which a model is traced with ``variant`` (see the module docstring)."""
    if variant == "without taps":
        return mock.patch.object(conv, "MOSTLY_PADDING", -1.0)
    return contextlib.nullcontext()


tap_convolutions = functools.partial(record.planned_convolutions, plan="taps")


def tables(results: dict) -> str:
    return record.rule_table(
        results,
        off="without taps",
        off_means=(
            "the rule off (those convolutions as im2col where the input is narrower than the "
            "kernel, XLA's convolution elsewhere)"
        ),
        covered="taps",
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
        extra=lambda model, size, batch: tap_convolutions(model, size),
        prepare=record.run_loop_layout,
    )


if __name__ == "__main__":
    record.entry_point(main)
