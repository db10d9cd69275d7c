"""Question: how much of a small model's train step is the cost of calling it, and would
running several steps per call (``lax.scan``) bring the course models to 1.5x torch eager?

A course model's step does little arithmetic, so what each call costs besides it (dispatching
the compiled program, handing over its arguments and results, waiting for it) can be a visible
part of the step. Each model's train step (AdamW, cnn_jax's
``make_train_step``) is compiled to run ``k`` steps per call, a ``lax.scan`` over ``k`` batches
(``k`` = 1 is the step ``fit`` runs), unrolled into ``k`` steps one after another and, for 16
steps, also as XLA's while loop (``lax.scan``'s default), and timed per step in alternating
blocks, each block running the same number of steps; torch eager's step on the same network,
AdamW and batch is timed in the same blocks. The run loop (``fit``, ``cnn-jax train``) runs
one step per call: it checks each step's loss for NaN and can stop, save or log after any step.

    python -m experiments.bench_steps_per_call
    python -m experiments.bench_steps_per_call --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_steps_per_call``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from experiments import bench_vs_torch, record

NAME = "bench_steps_per_call"
# (model, batch): the course models at the smallest batch of bench_vs_torch's table, where a
# step does the least arithmetic, and lenet5 at batch 128 beside it.
CASES = [("lenet5", 32), ("cifar_cnn", 32), ("convnet", 32), ("lenet5", 128)]
# (label, steps per call, unrolled): the step `fit` runs; 4 and 16 steps as straight-line
# programs (``lax.scan(..., unroll=True)``); 16 steps as XLA's loop (``lax.scan``'s default).
VARIANTS = (
    ("1 per call", 1, True),
    ("4 per call", 4, True),
    ("16 per call", 16, True),
    ("16 per call, loop", 16, False),
)
STEPS_PER_BLOCK = 16  # every variant runs this many steps per timed run


def steps_per_call(step: Callable, k: int, unrolled: bool) -> Callable:
    """``step`` (a train step ``(state, batch) -> (state, metrics)``) as one compiled call of
    ``k`` steps over a batch stacked ``k`` deep (``unrolled``: the steps written out one after
    another, else XLA's while loop), its state donated; ``k`` = 1 is ``step`` itself on one
    batch."""
    import jax

    if k == 1:
        return jax.jit(step, donate_argnums=0)

    def steps(state, batches):
        return jax.lax.scan(step, state, batches, length=k, unroll=unrolled)

    return jax.jit(steps, donate_argnums=0)


def jax_programs(
    name: str, batch: int, variants: Sequence[tuple[str, int, bool]] = VARIANTS
) -> dict[str, Callable]:
    """Per ``(label, k, unrolled)`` of ``variants``, a zero-argument program running
    :data:`STEPS_PER_BLOCK` train steps of ``name`` (state and batch as ``bench_vs_torch``
    makes them) as ``STEPS_PER_BLOCK / k`` calls of :func:`steps_per_call`, waiting for the
    last."""
    import jax
    import jax.numpy as jnp

    from cnn_jax import train as T

    step = T.make_train_step()
    programs = {}
    for label, k, unrolled in variants:
        if STEPS_PER_BLOCK % k:
            raise ValueError(f"{k} steps per call do not divide {STEPS_PER_BLOCK} steps")
        state, one_batch = bench_vs_torch.jax_state_and_batch(name, batch)
        data = one_batch if k == 1 else jax.tree.map(lambda a, k=k: jnp.stack([a] * k), one_batch)
        call = steps_per_call(step, k, unrolled)
        holder = [call(state, data)[0]]

        def run(call=call, data=data, holder=holder, calls=STEPS_PER_BLOCK // k) -> None:
            for _ in range(calls):
                holder[0], metrics = call(holder[0], data)
            jax.block_until_ready((holder[0], metrics))

        programs[label] = run
    return programs


def tables(results: dict) -> str:
    s = results["settings"]
    heads = s["variants"]
    lines = [
        f"Train step (AdamW) per step, median ms of {s['blocks']} alternating blocks of "
        f"{s['repeats']} runs of {s['steps_per_block']} steps; `k per call`: cnn_jax's step "
        "compiled as k steps written out one after another (1: what `fit` runs), `loop`: as "
        "XLA's while loop over k steps (`lax.scan`'s default); torch eager "
        f"({s['torch_threads']} threads) stepped in the same blocks",
        "",
        "| model | batch | "
        + " | ".join(f"cnn_jax {h} ms" for h in heads)
        + " | torch ms | "
        + " | ".join(f"torch / cnn_jax {h}" for h in heads)
        + " |",
        "|---|---|" + "---|" * (2 * len(heads) + 1),
    ]
    for r in results["steps"]:
        ms = r["ms"]
        lines.append(
            f"| {r['model']} | {r['batch']} | "
            + " | ".join(f"{ms[h]:.2f}" for h in heads)
            + f" | {ms['torch']:.2f} | "
            + " | ".join(f"{ms['torch'] / ms[h]:.2f}" for h in heads)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import torch

    import cnn_jax
    from experiments.bench_batch_norm import interleaved

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=7, help="alternating blocks per variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per block")
    parser.add_argument("--quick", action="store_true", help="lenet5 at batch 4, one block")
    record.add_out_argument(parser, NAME)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    cases = CASES
    if args.quick:
        cases, args.blocks, args.repeats = [("lenet5", 4)], 1, 1
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    provenance = record.provenance(f"experiments.{NAME}", argv)
    results: dict = {
        "settings": {
            "blocks": args.blocks,
            "repeats": args.repeats,
            "steps_per_block": STEPS_PER_BLOCK,
            "variants": [label for label, _, _ in VARIANTS],
            "torch_threads": torch.get_num_threads(),
        },
        "steps": [],
    }
    for name, batch in cases:
        programs = jax_programs(name, batch)
        torch_step = bench_vs_torch.torch_trainer(name, batch, compiled=False)

        def torch_block(torch_step=torch_step) -> None:
            for _ in range(STEPS_PER_BLOCK):
                torch_step()

        programs["torch"] = torch_block
        # one untimed run opens each block: the framework that follows the other runs slower
        # while the other's worker threads still spin
        ms = interleaved(programs, args.blocks, args.repeats, settle=1)
        per_step = {label: t / STEPS_PER_BLOCK for label, t in ms.items()}
        results["steps"].append({"model": name, "batch": batch, "ms": per_step})
        print(results["steps"][-1], flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(out, results, tables, provenance=provenance)
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    record.entry_point(main)
