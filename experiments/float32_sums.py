"""Question: where is XLA:CPU's float32 sum over a feature map's pixels less accurate than torch's,
what does cnn_jax's cascaded sum (``cnn_jax.functional.summation``) restore, and what does a
cascade cost, where cnn_jax uses one (small arrays) and where it does not (large ones)?

Three measurements, in one process:

* **sums**: per-channel sums over ``(N, H, W)`` of an NHWC array with ``|mean| = 3 std`` (``bare``)
  and of its product with a standard normal array (``product``, a gradient's form), each
  framework's float32 against float64, RMS over ``--draws`` draws of the relative L2 error:
  a plain ``jnp.sum`` compiled with cnn_jax's settings (``plain``), cnn_jax's ``leading_sum``
  (``cnn_jax``: a cascade below ``CASCADE_BELOW_ELEMENTS``, plain above), a cascade at every size
  (``cascade``) and torch's sum of the contiguous NCHW tensor (``torch``);
* **cost**: a train-mode ``BatchNorm2d`` + ReLU forward and backward with plain sums and with a
  cascade, timed in alternating blocks;
* **network**: the miniature GoogLeNet of ``tests/test_float32_gradients.py`` (64x64, batch 6), its
  worst per-parameter float32 gradient error against float64 on the same linear piece
  (``cnn_jax.testing.kinks``) for seeds 0..``--seeds``-1, with cnn_jax's sums and with plain
  ones, against torch's.

    python -m experiments.float32_sums
    python -m experiments.float32_sums --quick    # tiny: what the tests run

Writes ``results.json``, ``table.md`` and ``ratios.png`` to ``--out`` (default
``experiments/results/float32_sums``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import cnn_jax
from cnn_jax.functional import batch_norm, summation
from experiments import record
from experiments.bench_batch_norm import interleaved

NAME = "float32_sums"
MODULE = f"experiments.{NAME}"
# Small maps with few channels (XLA's own emitter), then sizes YNNPACK's reduce takes.
SUM_SHAPES = [
    (6, 16, 16, 1), (6, 16, 16, 2), (6, 7, 7, 2), (6, 7, 7, 8), (32, 7, 7, 2), (6, 24, 24, 1),
    (6, 32, 32, 8), (32, 16, 16, 64), (32, 56, 56, 8),
]  # fmt: skip
COST_SHAPES = [(6, 16, 16, 2), (32, 8, 8, 32), (32, 32, 32, 96), (128, 32, 32, 64)]
SUM_VARIANTS = ("plain", "cnn_jax", "cascade", "torch")
MINIATURE = "mini_googlenet"


def _sums_traced(variant: str):
    """A context under which :func:`summation.leading_sum` is traced as ``variant``."""
    limit = {"plain": 0, "cascade": sys.maxsize}.get(variant)
    if limit is None:
        return contextlib.nullcontext()
    return mock.patch.object(summation, "CASCADE_BELOW_ELEMENTS", limit)


def _sum_errors(shape, form: str, draws: int, rng) -> dict[str, float]:
    import torch

    options = cnn_jax.runtime.settings().compiler_options
    count = len(shape) - 1
    programs = {}
    example = jnp.zeros(shape, jnp.float32)
    for variant in SUM_VARIANTS[:3]:
        with _sums_traced(variant):
            lowered = jax.jit(
                lambda x, y: summation.leading_sum(x if form == "bare" else x * y, count)
            ).lower(example, example)
            programs[variant] = lowered.compile(compiler_options=options)
    errors: dict[str, list[float]] = {v: [] for v in SUM_VARIANTS}
    for _ in range(draws):
        x = (rng.standard_normal(shape) * 0.4 + 1.2).astype(np.float32)
        y = rng.standard_normal(shape).astype(np.float32)
        term = x.astype(np.float64) * (1 if form == "bare" else y)
        exact = term.sum(axis=tuple(range(count)))
        for variant, program in programs.items():
            errors[variant].append(_relative(program(x, y), exact))
        xt, yt = (torch.from_numpy(a.transpose(0, 3, 1, 2).copy()) for a in (x, y))
        errors["torch"].append(_relative((xt if form == "bare" else xt * yt).sum((0, 2, 3)), exact))
    return {v: float(np.sqrt(np.mean(np.square(e)))) for v, e in errors.items()}


def _relative(a, exact) -> float:
    a = np.asarray(a, np.float64)
    return float(np.linalg.norm(a - exact) / np.linalg.norm(exact))


def _cost_programs(shape) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w, b = jnp.ones(shape[-1]), jnp.zeros(shape[-1])
    options = cnn_jax.runtime.settings().compiler_options

    programs = {}
    for variant in ("plain", "cascade"):

        def forward_backward(x, w, b, g):  # a new function per variant: jit caches traces
            def f(x, w, b):
                return jax.nn.relu(batch_norm(x, None, w, b, training=True)[0])

            return jax.vjp(f, x, w, b)[1](g)

        with _sums_traced(variant):
            step = jax.jit(forward_backward).lower(x, w, b, g).compile(compiler_options=options)
        programs[variant] = lambda step=step: jax.block_until_ready(step(x, w, b, g))
    return programs


def _network_errors(seed: int) -> dict[str, float]:
    from cnn_jax.models import create
    from cnn_jax.testing import zoo
    from cnn_jax.testing.kinks import float32_gradient_errors
    from cnn_jax.testing.miniatures import MINIATURES

    (m,) = [m for m in MINIATURES if m.label == MINIATURE]
    channels = create(m.base).example_input_shape()[-1]
    row = {}
    for variant in ("cnn_jax", "plain"):
        with _sums_traced(variant):
            e = float32_gradient_errors(m.base, zoo.input_size(m.base), channels,
                                        build=(m.ours, m.reference), seed=seed)  # fmt: skip
        row[variant] = e["ours"]
        row["torch"] = e["theirs"]
    return row


def summary(results: dict) -> dict:
    """Per variant, the network ratios to torch's error: mean, sample std, max."""
    out = {}
    for variant in ("cnn_jax", "plain"):
        ratios = [r[variant] / r["torch"] for r in results["network"]]
        std = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        out[variant] = {"mean": statistics.fmean(ratios), "std": std, "max": max(ratios)}
    return out


def tables(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Per-channel float32 sums over (N, H, W) against float64, |mean| = 3 std: relative L2 "
        f"error, RMS over {s['draws']} draws",
        "",
        "| input (NHWC) | elements | sum of | plain | cnn_jax | cascade | torch | plain / torch |"
        " cnn_jax / torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["sums"]:
        e = r["errors"]
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {r['elements']} | {r['form']} | "
            f"{e['plain']:.1e} | {e['cnn_jax']:.1e} | {e['cascade']:.1e} | {e['torch']:.1e} | "
            f"{e['plain'] / e['torch']:.1f} | {e['cnn_jax'] / e['torch']:.1f} |"
        )
    lines += [
        "",
        f"Train-mode batch norm + ReLU, forward and backward: median ms of {s['blocks']} "
        f"alternating blocks of {s['repeats']}",
        "",
        "| input (NHWC) | plain sums | cascaded sums | cascaded / plain |",
        "|---|---|---|---|",
    ]
    for r in results["cost"]:
        ms = r["ms"]
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {ms['plain']:.3f} | {ms['cascade']:.3f} | "
            f"{ms['cascade'] / ms['plain']:.2f} |"
        )
    lines += [
        "",
        f"{MINIATURE} float32 train gradients: the worst parameter's relative L2 error against "
        f"float64 on the same linear piece",
        "",
        "| seed | cnn_jax | cnn_jax with plain sums | torch | cnn_jax / torch | plain / torch |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["network"]:
        lines.append(
            f"| {r['seed']} | {r['cnn_jax']:.2e} | {r['plain']:.2e} | {r['torch']:.2e} | "
            f"{r['cnn_jax'] / r['torch']:.2f} | {r['plain'] / r['torch']:.2f} |"
        )
    sm = summary(results)
    lines += [
        "",
        "Over the seeds, against torch's error (mean ± sample std, max): cnn_jax "
        f"{sm['cnn_jax']['mean']:.2f} ± {sm['cnn_jax']['std']:.2f}, {sm['cnn_jax']['max']:.2f}; "
        f"with plain sums {sm['plain']['mean']:.2f} ± {sm['plain']['std']:.2f}, "
        f"{sm['plain']['max']:.2f}",
    ]
    return "\n".join(lines)


def plot(results: dict, path) -> None:
    """Each seed's network error ratio to torch's, with cnn_jax's sums and with plain ones."""
    from cnn_jax.inspect.plots import Figure

    rows = results["network"]
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    seeds = [r["seed"] for r in rows]
    for key, label, marker in (("cnn_jax", "cnn_jax", "o"), ("plain", "with plain sums", "x")):
        ax.plot(seeds, [r[key] / r["torch"] for r in rows], marker, label=label)
    ax.axhline(2.0, color="grey", linestyle="--", linewidth=1, label="the tests' bar (2x)")
    ax.set_xlabel("seed")
    ax.set_ylabel("worst error / torch's")
    ax.set_title(f"{MINIATURE} float32 gradients against float64")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=16, help="random inputs per sum shape")
    parser.add_argument("--seeds", type=int, default=8, help="seeds of the network check")
    parser.add_argument("--blocks", type=int, default=5, help="alternating blocks per variant")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per block")
    parser.add_argument("--quick", action="store_true", help="two sums, one shape, one seed")
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    sum_shapes, cost_shapes = SUM_SHAPES, COST_SHAPES
    if args.quick:
        sum_shapes, cost_shapes = SUM_SHAPES[1:2], COST_SHAPES[:1]
        args.draws, args.seeds, args.blocks, args.repeats = 2, 1, 1, 1
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    run = record.provenance(MODULE, argv)
    results: dict = {
        "settings": {"draws": args.draws, "seeds": args.seeds, "blocks": args.blocks,
                     "repeats": args.repeats,
                     "cascade_below_elements": summation.CASCADE_BELOW_ELEMENTS},
        "sums": [], "cost": [], "network": [],
    }  # fmt: skip
    rng = np.random.default_rng(0)
    for shape in sum_shapes:
        for form in ("bare", "product"):
            errors = _sum_errors(shape, form, args.draws, rng)
            row = {"shape": list(shape), "elements": int(np.prod(shape)), "form": form}
            results["sums"].append({**row, "errors": errors})
            print(results["sums"][-1], flush=True)
    for shape in cost_shapes:
        ms = interleaved(_cost_programs(shape), args.blocks, args.repeats)
        results["cost"].append({"shape": list(shape), "ms": ms})
        print(results["cost"][-1], flush=True)
    for seed in range(args.seeds):
        results["network"].append({"seed": seed, **_network_errors(seed)})
        print(results["network"][-1], flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(out, results, tables, provenance=run)
    plot(stored, out / "ratios.png")
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    record.entry_point(main)
