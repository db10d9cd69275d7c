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

import argparse
import contextlib
import sys

import cnn_jax
from cnn_jax.runtime import COPY_OPTION
from experiments import record
from experiments.bench_batch_norm import interleaved

NAME = "bench_copy_insertion"
MODULE = f"experiments.{NAME}"
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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    record.add_case_arguments(parser, blocks=5)
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    cases = record.selected_cases(parser, args, CASES)
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    run = record.provenance(MODULE, argv)
    results: dict = {"settings": {"blocks": args.blocks, "repeats": args.repeats}, "steps": []}
    for model, size, batch in cases:
        steps = record.step_variants(
            model, size, batch, VARIANTS, lambda _: contextlib.nullcontext(), _options
        )
        results["steps"].append(
            {
                "model": model,
                "size": size,
                "batch": batch,
                "parameters": steps.parameters,
                "parameter_arrays": len(steps.parameter_shapes),
                "copied_inputs": steps.copied_inputs,
                "ms": interleaved(steps.programs, args.blocks, args.repeats),
                "temp_bytes": steps.temp_bytes,
            }
        )
        print(results["steps"][-1], flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(out, results, tables, provenance=run)
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    main()
