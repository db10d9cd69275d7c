"""experiments/README.md, "Input pipeline": the table of
``experiments/results/bench_input_pipeline/results.json``, each part with the run that measured
it."""

from __future__ import annotations

from experiments.report import MISSING, block, table_md

MISSING["input_pipeline"] = (
    "Not measured yet: `python -m experiments.bench_input_pipeline` on a quiet machine writes "
    "{folder}, and this section's tables come from it."
)


@block("input_pipeline")
def _input_pipeline() -> str:
    return table_md("bench_input_pipeline")
