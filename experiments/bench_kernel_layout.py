"""Question: what does storing convolution kernels HWIO in the train state save per step?

cnn_jax's kernels have torch's OIHW shape; XLA:CPU's convolutions read a kernel, and produce its
weight gradient, HWIO. The run loop's placements therefore keep the kernels of a state on the
CPU in the step's layout (``cnn_jax.train.layout``: kernels with more than one spatial tap and
more than one input channel per group, with the optimiser's moments), and the model is applied
to them transposed back, a transposition XLA cancels against its convolution's. Each model's
train step (AdamW) is compiled for the state in the step's layout (``step layout``, what ``fit``
and ``cnn-jax train`` run on the CPU) and in torch's (``torch layout``) in one process, the two
timed in alternating blocks; beside them, how many kernels the step layout stores HWIO and each
compiled step's temporary memory. ``tests/test_kernel_layout.py`` checks that both train alike.

    python -m experiments.bench_kernel_layout
    python -m experiments.bench_kernel_layout --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_kernel_layout``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import contextlib

from experiments import record

NAME = "bench_kernel_layout"
# (model, input size, batch): the families of the zoo table at its setting, and the ResNets at
# the CIFAR setting. Not Inception v3: its registry model trains with the auxiliary head, which
# needs 299x299 images (the zoo table times it at 75x75 without the head).
CASES = [
    ("resnet18", 64, 32), ("resnet50", 64, 32), ("vgg11", 64, 32), ("alexnet", 64, 32),
    ("densenet121", 64, 32), ("convnext_tiny", 64, 32), ("regnet_x_400mf", 64, 32),
    ("regnet_y_400mf", 64, 32), ("mobilenet_v2", 64, 32), ("mobilenet_v3_small", 64, 32),
    ("mnasnet0_5", 64, 32), ("efficientnet_b0", 64, 32), ("efficientnet_v2_s", 64, 32),
    ("googlenet", 64, 32), ("squeezenet1_1", 64, 32), ("shufflenet_v2_x0_5", 64, 32),
    ("resnet18", 32, 128), ("resnet50", 32, 128),
]  # fmt: skip
VARIANTS = ("step layout", "torch layout")


def _prepare(variant: str, state):
    from cnn_jax.train import layout

    return layout.to_step_layout(state) if variant == "step layout" else state


def _kernels(model: str, size: int, batch: int) -> dict[str, int]:
    """How many of ``model``'s 4-D kernels the step layout stores HWIO, of how many."""
    import jax
    import jax.numpy as jnp

    from cnn_jax.models import create
    from cnn_jax.train import layout

    module = create(model, num_classes=10)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    params = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)["params"]
    kernels = [p for p in jax.tree.leaves(params) if p.ndim == 4]
    return {"kernels": len(kernels), "step_kernels": len(layout.step_kernel_paths(params))}


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Train step (AdamW), median ms of {s['blocks']} alternating blocks of {s['repeats']}; "
        "`step layout`: kernels with more than one tap and more than one input channel per "
        "group stored HWIO, with AdamW's moments (what `fit` runs on the CPU); `torch layout`: "
        "every kernel OIHW; temporary memory: what the compiled step allocates besides inputs "
        "and outputs",
        "",
        "| model | input | batch | kernels stored HWIO | step layout ms | torch layout ms | "
        "torch layout / step layout | temporary MiB (step / torch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms, temp = r["ms"], r["temp_bytes"]
        step, torch = "step layout", "torch layout"
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | "
            f"{r['step_kernels']} of {r['kernels']} | {ms[step]:.1f} | {ms[torch]:.1f} | "
            f"{ms[torch] / ms[step]:.2f} | {temp[step] / 2**20:.1f} / {temp[torch] / 2**20:.1f} |"
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
        extra=_kernels,
        tables=tables,
        blocks=5,
    )


if __name__ == "__main__":
    record.entry_point(main)
