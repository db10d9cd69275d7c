"""Question: what do three of cnn_jax's backward-pass arrangements buy on CPU, layer by layer
and in whole train steps, against the plain formulation and against PyTorch?

* **depthwise weight gradient in chunks**: ``cnn_jax.functional.conv`` computes a depthwise
  convolution's weight gradient a few images at a time (a loop over chunks of the batch whose
  size :func:`~cnn_jax.functional.conv.depthwise_weight_grad_chunk` picks), instead of one
  reduction per kernel tap over the whole batch (``whole batch``: the chunk forced to the
  batch);
* **GELU's derivative as one factor**: ``cnn_jax.functional.gelu`` writes the exact GELU's
  derivative out as torch's backward does (``rule``) instead of leaving jax to differentiate
  ``x * (1 + erf(x / sqrt 2)) / 2`` (``autodiff``), and computes the value as torch does, with
  the ``erf`` the derivative shares, instead of ``jax.nn.gelu``'s ``erfc`` (``erfc value``: the
  rule kept, the value by ``jax.nn.gelu``);
* **strided windows transposed phase by phase**: the window slices that the grouped and im2col
  convolutions and max pooling read are taken so that their transpose adds each tap into its
  stride phase with plain pads (``phases``), instead of jax's transpose of a strided slice, a
  pad with interior padding of the whole input per tap (``strided slices``).

Layers: a depthwise convolution, forward pass and both gradients, on ConvNeXt-T's and
MobileNetV2's shapes at 64x64, batch 32; ConvNeXt's MLP (Linear, GELU, Linear), forward and
backward, on its four stages' shapes; forward pass and input gradient of RegNet's strided grouped
convolutions and of a 3x3 stride-2 max pooling; torch (2 threads) beside each. Steps: whole
train steps
(AdamW, batch 32, 64x64) of models with depthwise convolutions, built with the library as it is
and with each arrangement undone. Every variant is compiled in the same process and the
variants are timed in alternating blocks, each opened by one untimed run (the program that
follows torch's otherwise runs while torch's threads still spin).

    python -m experiments.bench_backward_rules
    python -m experiments.bench_backward_rules --quick    # tiny: what the tests run

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_backward_rules``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

import cnn_jax
import cnn_jax.functional as F
from cnn_jax.functional import _windows, activation, conv, pooling
from cnn_jax.models import create
from cnn_jax.train.state import create_train_state
from cnn_jax.train.step import make_train_step
from experiments import record
from experiments.bench_batch_norm import interleaved

NAME = "bench_backward_rules"
MODULE = f"experiments.{NAME}"
# (N, H, W, C, kernel, stride) of depthwise convolutions: ConvNeXt-T's four stages, then
# MobileNetV2's largest ones, at 64x64, batch 32.
DEPTHWISE = [
    (32, 16, 16, 96, 7, 1), (32, 8, 8, 192, 7, 1), (32, 4, 4, 384, 7, 1), (32, 2, 2, 768, 7, 1),
    (32, 32, 32, 96, 3, 2), (32, 16, 16, 144, 3, 1), (32, 8, 8, 192, 3, 1),
]  # fmt: skip
# (N, H, W, C) entering ConvNeXt-T's MLPs (C -> 4C -> C), one per stage.
MLP = [(32, 16, 16, 96), (32, 8, 8, 192), (32, 4, 4, 384), (32, 2, 2, 768)]
# (N, H, W, C, groups) of RegNet-400MF's strided (2) grouped 3x3 convolutions at 64x64, batch
# 32 (Y: 8 channels per group, X: 16), then a 3x3 stride-2 max pooling's input (DenseNet's, groups
# 0).
STRIDED = [
    (32, 32, 32, 48, 6), (32, 16, 16, 104, 13), (32, 8, 8, 208, 26), (32, 16, 16, 64, 4),
    (32, 32, 32, 64, 0),
]  # fmt: skip
MODELS = (
    "convnext_tiny", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "regnet_x_400mf",
    "densenet121",
)  # fmt: skip
STEP_VARIANTS = ("library", "whole batch", "autodiff GELU", "erfc GELU", "strided slices")


@jax.custom_jvp
def _erfc_gelu(x):
    """The exact GELU's value by ``jax.nn.gelu`` (its ``erfc`` form), its derivative by the
    library's rule."""
    return jax.nn.gelu(x, approximate=False)


@_erfc_gelu.defjvp
def _erfc_gelu_jvp(primals, tangents):
    return _erfc_gelu(primals[0]), activation._gelu_exact_jvp(primals, tangents)[1]


def _undone(variant: str):
    """A context under which cnn_jax traces with ``variant``'s arrangement undone."""
    if variant == "whole batch":
        return mock.patch.object(conv, "_CHUNK_TAP_BYTES", 2**62)
    if variant == "autodiff GELU":
        return mock.patch.object(
            activation, "_gelu_exact", lambda x: jax.nn.gelu(x, approximate=False)
        )
    if variant == "erfc GELU":
        return mock.patch.object(activation, "_gelu_exact", _erfc_gelu)
    if variant == "strided slices":
        stack = contextlib.ExitStack()
        for module in (conv, pooling):
            stack.enter_context(mock.patch.object(module, "strided_windows", _windows._slices))
        return stack
    return contextlib.nullcontext()


def _with_output(f, g, *args):
    """``f(*args)`` and its gradients for the output gradient ``g``: the output is returned so
    that the forward pass is timed too, as torch's side computes it (jax would drop an unused
    output's computation)."""
    y, vjp = jax.vjp(f, *args)
    return y, vjp(g)


def _depthwise_programs(case) -> dict:
    import torch

    n, h, w, c, k, stride = case
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, h, w, c)).astype(np.float32)
    kernel = (rng.normal(size=(c, 1, k, k)) / k).astype(np.float32)
    y_shape = jax.eval_shape(
        lambda x, kk: F.conv2d(x, kk, groups=c, stride=stride, padding=k // 2), x, kernel
    ).shape
    g = rng.normal(size=y_shape).astype(np.float32)
    xj, kj, gj = map(jnp.asarray, (x, kernel, g))

    def layer(x, kk):
        return F.conv2d(x, kk, groups=c, stride=stride, padding=k // 2)

    programs = {}
    for label, variant in (("chunked", "library"), ("whole batch", "whole batch")):
        with _undone(variant):
            # The output gradient is an argument too: a constant one, XLA folds what only
            # it feeds (its padding, its chunks) out of the timed program.
            step = jax.jit(lambda x, kk, g: _with_output(layer, g, x, kk)).lower(xj, kj, gj)
            step = step.compile()
        programs[label] = lambda step=step: jax.block_until_ready(step(xj, kj, gj))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    kt = torch.from_numpy(kernel).requires_grad_()
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()

    def torch_step():
        y = torch.nn.functional.conv2d(xt, kt, stride=stride, padding=k // 2, groups=c)
        torch.autograd.grad(y, (xt, kt), gt)

    programs["torch"] = torch_step
    return programs


def _mlp_programs(shape) -> dict:
    import torch

    c = shape[-1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    w1 = (rng.normal(size=(4 * c, c)) / np.sqrt(c)).astype(np.float32)
    w2 = (rng.normal(size=(c, 4 * c)) / np.sqrt(4 * c)).astype(np.float32)
    b1, b2 = np.zeros(4 * c, np.float32), np.zeros(c, np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    args = tuple(map(jnp.asarray, (x, w1, b1, w2, b2)))
    gj = jnp.asarray(g)

    def mlp(x, w1, b1, w2, b2):
        return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)

    programs = {}
    for label, variant in (
        ("rule", "library"),
        ("erfc value", "erfc GELU"),
        ("autodiff", "autodiff GELU"),
    ):
        with _undone(variant):
            step = jax.jit(lambda g, *a: _with_output(mlp, g, *a)).lower(gj, *args).compile()
        programs[label] = lambda step=step: jax.block_until_ready(step(gj, *args))
    tensors = [torch.from_numpy(a).requires_grad_() for a in (x, w1, b1, w2, b2)]
    gt = torch.from_numpy(g)
    tf = torch.nn.functional

    def torch_step():
        xt, w1t, b1t, w2t, b2t = tensors
        y = tf.linear(tf.gelu(tf.linear(xt, w1t, b1t)), w2t, b2t)
        torch.autograd.grad(y, tensors, gt)

    programs["torch"] = torch_step
    return programs


def _strided_programs(case) -> dict:
    """Forward pass and input gradient of a strided grouped convolution (``groups`` > 0) or
    max pooling."""
    import torch

    n, h, w, c, groups = case
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, h, w, c)).astype(np.float32)
    kernel = (rng.normal(size=(c, c // max(groups, 1), 3, 3)) / 3).astype(np.float32)

    def layer(x, kk):
        if groups:
            return F.conv2d(x, kk, stride=2, padding=1, groups=groups)
        return F.max_pool2d(x, 3, 2, 1)

    xj, kj = jnp.asarray(x), jnp.asarray(kernel)
    g = rng.normal(size=jax.eval_shape(layer, xj, kj).shape).astype(np.float32)
    gj = jnp.asarray(g)
    programs = {}
    for label in ("phases", "strided slices"):
        with _undone("library" if label == "phases" else label):
            # Every array an argument (nothing for XLA to fold), and a new function for each
            # variant: jax caches a function's trace, and the second would reuse the first's.
            input_grad = lambda x, kk, g: _with_output(lambda x: layer(x, kk), g, x)
            step = jax.jit(input_grad).lower(xj, kj, gj).compile()
        programs[label] = lambda step=step: jax.block_until_ready(step(xj, kj, gj))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    kt = torch.from_numpy(kernel)
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()

    def torch_step():
        if groups:
            y = torch.nn.functional.conv2d(xt, kt, stride=2, padding=1, groups=groups)
        else:
            y = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
        torch.autograd.grad(y, (xt,), gt)

    programs["torch"] = torch_step
    return programs


def _step_programs(model_name: str, size: int, batch: int) -> dict:
    model = create(model_name, num_classes=10)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((batch, size, size, 3), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, batch))
    data = {"image": images, "label": labels}
    skip = set()
    if "convnext" not in model_name:
        skip.update(("autodiff GELU", "erfc GELU"))
    if model_name.startswith(("regnet", "densenet")):
        skip.add("whole batch")  # no depthwise convolution
    programs = {}
    for variant in STEP_VARIANTS:
        if variant in skip:
            continue
        state = create_train_state(model, optax.adamw(1e-3), jax.random.key(0), images[:1])
        with _undone(variant):  # compiled here: no later call can trace it again
            step = jax.jit(make_train_step(), donate_argnums=0).lower(state, data).compile()
        holder = [step(state, data)[0]]

        def run(step=step, holder=holder):
            holder[0], metrics = step(holder[0], data)
            jax.block_until_ready(metrics)

        programs[variant] = run
    return programs


def _ratio(ms: dict, num: str, den: str) -> str:
    return f"{ms[num] / ms[den]:.2f}" if num in ms and den in ms else "–"


def tables(results: dict) -> str:
    s = results["settings"]
    head = (
        f"median ms of {s['blocks']} alternating blocks of {s['repeats']}, each after one "
        "untimed run"
    )
    lines = [
        f"Depthwise convolution, forward pass and both gradients; {head}; torch with "
        f"{s['torch_threads']} threads; `images`: the chunk the library picks",
        "",
        "| input (NHWC) | kernel | stride | images | chunked | whole batch | torch "
        "| whole batch / chunked | torch / chunked |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["depthwise"]:
        n, h, w, c, k, stride = r["case"]
        ms = r["ms"]
        lines.append(
            f"| {n}x{h}x{w}x{c} | {k}x{k} | {stride} | {r['chunk']} | {ms['chunked']:.2f} | "
            f"{ms['whole batch']:.2f} | {ms['torch']:.2f} | "
            f"{_ratio(ms, 'whole batch', 'chunked')} | {_ratio(ms, 'torch', 'chunked')} |"
        )
    lines += [
        "",
        f"ConvNeXt's MLP (Linear C→4C, GELU, Linear 4C→C), forward and backward; {head}",
        "",
        "| input (NHWC) | GELU rule | erfc value | jax autodiff | torch | erfc value / rule "
        "| autodiff / rule | torch / rule |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["mlp"]:
        ms = r["ms"]
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {ms['rule']:.2f} | {ms['erfc value']:.2f} "
            f"| {ms['autodiff']:.2f} | {ms['torch']:.2f} | {_ratio(ms, 'erfc value', 'rule')} "
            f"| {_ratio(ms, 'autodiff', 'rule')} | {_ratio(ms, 'torch', 'rule')} |"
        )
    lines += [
        "",
        f"Forward pass and input gradient of a strided (2) 3x3 layer; {head}",
        "",
        "| input (NHWC) | layer | phases | strided slices | torch | strided slices / phases "
        "| torch / phases |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.get("strided", []):
        n, h, w, c, groups = r["case"]
        ms = r["ms"]
        layer = f"conv, {groups} groups" if groups else "max pool"
        lines.append(
            f"| {n}x{h}x{w}x{c} | {layer} | {ms['phases']:.2f} | {ms['strided slices']:.2f} | "
            f"{ms['torch']:.2f} | {_ratio(ms, 'strided slices', 'phases')} | "
            f"{_ratio(ms, 'torch', 'phases')} |"
        )
    lines += [
        "",
        f"Whole train steps (AdamW, batch {s['batch']}, {s['size']}x{s['size']}), median ms; "
        "`–`: the model has no GELU (or no depthwise convolution)",
        "",
        "| model | library | depthwise gradient over the whole batch | GELU left to autodiff "
        "| GELU's value by erfc | strided slices | whole batch / library | autodiff GELU / "
        "library | erfc GELU / library | strided slices / library |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        ms = r["ms"]
        cells = [f"{ms[v]:.1f}" if v in ms else "–" for v in STEP_VARIANTS]
        lines.append(
            f"| {r['model']} | {' | '.join(cells)} | {_ratio(ms, 'whole batch', 'library')} | "
            f"{_ratio(ms, 'autodiff GELU', 'library')} | "
            f"{_ratio(ms, 'erfc GELU', 'library')} | {_ratio(ms, 'strided slices', 'library')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per block")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="tiny shapes, mobilenet_v2 at 32x32")
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    depthwise, mlp, strided, size, batch = DEPTHWISE, MLP, STRIDED, 64, 32
    if args.quick:
        depthwise, mlp, strided = [(4, 8, 8, 16, 7, 1)], [(4, 4, 4, 16)], [(4, 8, 8, 16, 2)]
        args.models, size, batch, args.blocks, args.repeats = ["mobilenet_v2"], 32, 4, 1, 1
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    run = record.provenance(MODULE, argv)
    results: dict = {
        "settings": {
            "blocks": args.blocks, "repeats": args.repeats, "size": size, "batch": batch,
            "torch_threads": torch.get_num_threads(),
        },
        "depthwise": [], "mlp": [], "strided": [], "steps": [],
    }  # fmt: skip
    for case in depthwise:
        n, h, w, c, k, stride = case
        out_shape = (n, -(-h // stride), -(-w // stride), c)
        ms = interleaved(_depthwise_programs(case), args.blocks, args.repeats, settle=1)
        chunk = conv.depthwise_weight_grad_chunk(out_shape, (k, k), 4)
        results["depthwise"].append({"case": list(case), "chunk": chunk, "ms": ms})
        print(results["depthwise"][-1], flush=True)
    for shape in mlp:
        ms = interleaved(_mlp_programs(shape), args.blocks, args.repeats, settle=1)
        results["mlp"].append({"shape": list(shape), "ms": ms})
        print(results["mlp"][-1], flush=True)
    for case in strided:
        ms = interleaved(_strided_programs(case), args.blocks, args.repeats, settle=1)
        results["strided"].append({"case": list(case), "ms": ms})
        print(results["strided"][-1], flush=True)
    for model in args.models:
        ms = interleaved(_step_programs(model, size, batch), args.blocks, args.repeats)
        results["steps"].append({"model": model, "ms": ms})
        print(results["steps"][-1], flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    stored = record.write(out, results, tables, provenance=run)
    print((out / "table.md").read_text())
    return stored


if __name__ == "__main__":
    record.entry_point(main)
