"""Question: does AdamW over one flat parameter vector (as torch's foreach and fused AdamW
work) make a train step faster than AdamW array by array?

cnn_jax's train state keeps one set of AdamW moments per parameter array, and XLA compiles the
update of each array as fusions of its own: a model with hundreds of arrays runs hundreds of
small update kernels a step. ``optax.flatten`` ravels the gradients into one vector, updates
one vector of moments and splits the updates back, which trades those kernels for a
concatenation and a split of every gradient. Each model's train step is compiled with AdamW per
array (``library``, what ``fit`` and ``cnn-jax train`` run) and with ``optax.flatten(adamw)``
(``flat AdamW``; the same arithmetic, element for element) in one process, the two timed in
alternating blocks; beside them, how many parameter arrays the model has and each compiled
step's temporary memory. Both states hold their kernels in the step's layout, as ``fit`` does on
the CPU.

    python -m experiments.bench_flat_adamw
    python -m experiments.bench_flat_adamw --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_flat_adamw``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import contextlib
from typing import Any

from experiments import record

NAME = "bench_flat_adamw"
# (model, input size, batch): the course models at their size, ResNet-18 at the CIFAR setting,
# and families of the zoo table at its setting, from few parameter arrays to many.
CASES = [
    ("lenet5", 32, 32), ("cifar_cnn", 32, 32), ("convnet", 32, 32), ("resnet18", 32, 128),
    ("resnet18", 64, 32), ("mobilenet_v2", 64, 32), ("regnet_y_400mf", 64, 32),
    ("densenet121", 64, 32), ("convnext_tiny", 64, 32),
]  # fmt: skip
VARIANTS = ("library", "flat AdamW")


def flat_adamw(state: Any) -> Any:
    """``state`` with its optimiser (AdamW) run over one flat vector, ``optax.flatten`` of the
    same transformation, and freshly initialised moments (one vector each) for its parameters
    as they are stored."""
    import optax

    tx = optax.flatten(state.tx)
    return state.replace(tx=tx, opt_state=tx.init(state.params))


def _prepare(variant: str, state: Any) -> Any:
    state = record.run_loop_layout(variant, state)
    return flat_adamw(state) if variant == "flat AdamW" else state


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Train step (AdamW), median ms of {s['blocks']} alternating blocks of {s['repeats']}; "
        "`library`: AdamW array by array (what `fit` runs); `flat AdamW`: "
        "`optax.flatten(optax.adamw(...))`, one vector of moments; temporary memory: what the "
        "compiled step allocates besides inputs and outputs",
        "",
        "| model | input | batch | parameter arrays | library ms | flat AdamW ms | "
        "flat AdamW / library | temporary MiB (library / flat) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms, temp = r["ms"], r["temp_bytes"]
        lib, flat = VARIANTS
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | "
            f"{r['parameter_arrays']} | {ms[lib]:.1f} | {ms[flat]:.1f} | "
            f"{ms[flat] / ms[lib]:.2f} | {temp[lib] / 2**20:.1f} / {temp[flat] / 2**20:.1f} |"
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
        prepare=_prepare,
        tables=tables,
        blocks=5,
    )


if __name__ == "__main__":
    record.entry_point(main)
