"""Question: what does XLA:CPU's copy insertion with region analysis
(``--xla_cpu_copy_insertion_use_region_analysis``, one of the options ``cnn_jax.runtime`` sets)
save in a train step?

A train step donates its state, so XLA writes each new parameter into the buffer of the old one.
With its default analysis XLA:CPU keeps the old values in copies made at the start of the step,
for most parameters; with the region analysis it leaves them out. Each model's train step (AdamW)
is compiled with the option on (``region analysis``, the library's setting) and off (``default
analysis``) in one process, the two timed in alternating blocks; beside them, how many of its
inputs each compiled step copies and its temporary memory (XLA's ``memory_analysis``).
``tests/test_runtime.py`` checks that the two give the same state, bit for bit.

    python -m experiments.bench_copy_insertion
    python -m experiments.bench_copy_insertion --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_copy_insertion``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import contextlib

from cnn_jax.runtime import COPY_OPTION
from experiments import record

NAME = "bench_copy_insertion"
# (model, input size, batch): the zoo's setting for the families below torch's speed and two
# above it, and ResNet-18 at the README's CIFAR setting.
CASES = [
    ("resnet18", 64, 32), ("densenet121", 64, 32), ("vgg11", 64, 32), ("alexnet", 64, 32),
    ("convnext_tiny", 64, 32), ("regnet_x_400mf", 64, 32), ("mobilenet_v2", 64, 32),
    ("efficientnet_b0", 64, 32), ("resnet18", 32, 128),
]  # fmt: skip
VARIANTS = ("region analysis", "default analysis")


def _options(variant: str) -> dict[str, bool]:
    return {COPY_OPTION: variant == "region analysis"}


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Train step (AdamW), median ms of {s['blocks']} alternating blocks of {s['repeats']}; "
        "`region analysis`: the library's setting; `default analysis`: XLA's default copy "
        "insertion; copied inputs: `copy` instructions of the compiled step that read one of "
        "its inputs; temporary memory: what it allocates besides inputs and outputs",
        "",
        "| model | input | batch | parameter arrays | copied inputs (region / default) | "
        "region analysis ms | default analysis ms | default / region | temporary MiB "
        "(region / default) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms, temp, copies = r["ms"], r["temp_bytes"], r["copied_inputs"]
        region, default = "region analysis", "default analysis"
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {r['parameter_arrays']} "
            f"| {copies[region]} / {copies[default]} | {ms[region]:.1f} | {ms[default]:.1f} | "
            f"{ms[default] / ms[region]:.2f} | {temp[region] / 2**20:.1f} / "
            f"{temp[default] / 2**20:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return record.step_bench(
        argv,
        name=NAME,
        description=__doc__.splitlines()[0],
        cases=CASES,
        variants=VARIANTS,
        traced_with=lambda _: contextlib.nullcontext(),
        options=_options,
        tables=tables,
        blocks=5,
    )


if __name__ == "__main__":
    record.entry_point(main)
