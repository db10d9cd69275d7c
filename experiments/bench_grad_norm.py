"""Question: what does the train step's gradient norm, its squares written as ``|g| * |g|``
(:func:`cnn_jax.train.optim.gradient_norm`), save on CPU against ``optax.tree.norm``?

Written as ``optax.tree.norm`` does, the norm's square of each gradient is the same
instruction as AdamW's second-moment square (``g * g``), so XLA merges the two, and XLA:CPU
then writes every parameter's squared gradient to memory for the norm's reduction alone. Each
model's train step (AdamW) is compiled with the library's norm (``library``) and with
``optax.tree.norm`` (``optax norm``) in one process, the two timed in alternating blocks; beside
them, each compiled step's temporary memory (XLA's ``memory_analysis``: what the step allocates
besides its inputs and outputs).

    python -m experiments.bench_grad_norm
    python -m experiments.bench_grad_norm --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_grad_norm``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

from unittest import mock

import optax

from cnn_jax.train import step as step_module
from experiments import record

NAME = "bench_grad_norm"
# (model, input size, batch): the zoo's setting for the families with the most parameters and
# a few with fewer, and ResNet-18 at the README's CIFAR setting.
CASES = [
    ("vgg11", 64, 32), ("alexnet", 64, 32), ("densenet121", 64, 32), ("resnet18", 32, 128),
    ("mobilenet_v2", 64, 32), ("regnet_y_400mf", 64, 32),
]  # fmt: skip
VARIANTS = ("library", "optax norm")


def _norm(variant: str):
    """A context under which train steps are traced with ``variant``'s gradient norm."""
    norm = step_module.gradient_norm if variant == "library" else optax.tree.norm
    return mock.patch.object(step_module, "gradient_norm", norm)


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Train step (AdamW), median ms of {s['blocks']} alternating blocks of {s['repeats']}; "
        "`library`: `gradient_norm` (squares of |g|); `optax norm`: `optax.tree.norm` (squares "
        "merged with AdamW's); temporary memory: what the compiled step allocates besides its "
        "inputs and outputs (XLA's memory analysis)",
        "",
        "| model | input | batch | parameters (M) | library ms | optax norm ms | "
        "optax norm / library | temporary MiB, library | temporary MiB, optax norm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms, temp, n = r["ms"], r["temp_bytes"], r["parameters"]
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {n / 1e6:.1f} | "
            f"{ms['library']:.1f} | {ms['optax norm']:.1f} | "
            f"{ms['optax norm'] / ms['library']:.2f} | {temp['library'] / 2**20:.1f} | "
            f"{temp['optax norm'] / 2**20:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return record.step_bench(
        argv,
        name=NAME,
        description=__doc__.splitlines()[0],
        cases=CASES,
        variants=VARIANTS,
        traced_with=_norm,
        tables=tables,
        blocks=5,
    )


if __name__ == "__main__":
    record.entry_point(main)
