"""experiments/README.md, "Input pipeline": the table of
``experiments/results/bench_input_pipeline/results.json``, each part with the run that measured
it."""

from __future__ import annotations

from experiments.report import MISSING, block, results, table_md

MISSING["input_pipeline"] = (
    "Not measured yet: `python -m experiments.bench_input_pipeline` on a quiet machine writes "
    "{folder}, and this section's tables come from it."
)


@block("input_pipeline")
def _input_pipeline() -> str:
    return table_md("bench_input_pipeline")


MISSING["pipeline.host_path"] = (
    "Not measured yet: `python -m experiments.bench_input_pipeline --parts host-path` writes "
    "{folder}, and this table comes from it."
)


@block("pipeline.host_path")
def _host_path() -> str:
    """README.md: the host-path part (batches per second that reach the device) and what its
    rates say, from the same file."""
    from experiments.bench_input_pipeline import measured_by

    data = results("bench_input_pipeline")
    h, rows = data["host-path"], data["host-path"]["rows"]
    slower = [r["hand_written_batches_per_s"] / r["grain_batches_per_s"] for r in rows]
    ahead = [r["grain_batches_per_s"] / r["train_steps_per_s"] for r in rows]
    table = [
        f"{measured_by(data['parts']['host-path'])}; batch {h['batch']}, batches per second "
        "that reach the device (raw uint8, as the loop feeds them):",
        "",
        "| dataset | grain (the loop's host path) | hand-written pipeline it replaced | "
        "on-device gathers | train steps/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['dataset']} ({r['model']}) | {r['grain_batches_per_s']:,.0f} | "
            f"{r['hand_written_batches_per_s']:,.0f} | {r['device_gather_per_s']:,.0f} | "
            f"{r['train_steps_per_s']:.1f} |"
        )
    return (
        "\n".join(table)
        + f"\n\ngrain's per-batch bookkeeping makes it {min(slower):.1f}–{max(slower):.1f}× "
        "slower than the generator it replaced, and still "
        + " and ".join(f"{a:.0f}× ({r['dataset']})" for a, r in zip(ahead, rows, strict=True))
        + " faster than the train step on this CPU."
    )
