"""Question: which convolution backend is faster here: XLA's direct convolution, im2col + matmul or
a banded (Toeplitz) matmul?

Times forward+backward (grads w.r.t. input and weight) of single Conv2d layers typical of the
course's CIFAR CNNs and of ResNet-18 on 32x32 images (whose last stages see 2x2 and 1x1 maps),
under jit, for every backend in cnn_jax.functional ('auto' is the default). Prints one row per
layer: median milliseconds over --repeats timed runs after a warm-up. Then the same for max
pooling: cnn_jax's derivative (a select over the window slices) against XLA's own
(``lax.reduce_window``'s ``select_and_scatter``).

    python -m experiments.bench_conv_backends --batch 128
    python -m experiments.bench_conv_backends --batch 128 --parts   # forward, dW, dX apart
    python -m experiments.bench_conv_backends --quick               # tiny: what the tests run

With ``--parts`` each convolution's forward pass, weight gradient and input gradient are timed
as separate programs per backend, and the work of each is given as GFLOP/s (2 FLOPs per MAC),
to compare with the CPU's matmul rate (``bench_vs_torch --roofline``).

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_conv_backends``, with ``--parts``
``experiments/results/bench_conv_backends_parts``; ``--quick``: a temporary folder). A run with
other settings (``CNN_JAX_XLA_DEFAULTS=0``) belongs in its own ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

import cnn_jax
import cnn_jax.functional as F
import cnn_jax.nn as cnn
from cnn_jax.functional import available_conv_backends
from experiments import record

NAME = "bench_conv_backends"
MODULE = f"experiments.{NAME}"

LAYERS = [  # (name, in_channels, out_channels, kernel, stride, padding, spatial size)
    ("conv3x3 3->32 @32", 3, 32, 3, 1, 1, 32),
    ("conv3x3 32->64 @16", 32, 64, 3, 1, 1, 16),
    ("conv3x3 64->128 @8", 64, 128, 3, 1, 1, 8),
    ("conv5x5 1->6 @32 (LeNet C1)", 1, 6, 5, 1, 0, 32),
    ("conv5x5 6->16 @14 (LeNet C3)", 6, 16, 5, 1, 0, 14),
    ("conv5x5 16->120 @5 (LeNet C5)", 16, 120, 5, 1, 0, 5),
    ("conv5x5 3->6 @32 (LeNet on RGB)", 3, 6, 5, 1, 0, 32),
    ("conv7x7/2 3->64 @32 (ResNet stem)", 3, 64, 7, 2, 3, 32),
    ("conv3x3/2 64->64 @16", 64, 64, 3, 2, 1, 16),
    ("conv3x3/2 128->256 @4 (ResNet)", 128, 256, 3, 2, 1, 4),
    ("conv3x3 256->256 @2 (ResNet)", 256, 256, 3, 1, 1, 2),
    ("conv3x3 512->512 @1 (ResNet)", 512, 512, 3, 1, 1, 1),
]
POOLS = [  # (name, kernel, stride, padding, spatial size, channels)
    ("maxpool2 @32x32x32", 2, 2, 0, 32, 32),
    ("maxpool3/2 pad1 @16x16x64 (ResNet stem)", 3, 2, 1, 16, 64),
]


def time_layer(layer, x, repeats):
    variables = layer.init(jax.random.key(0), x)

    @jax.jit
    def fwd_bwd(variables, x):
        return jax.grad(lambda v, x: jnp.sum(layer.apply(v, x) ** 2), argnums=(0, 1))(variables, x)

    jax.block_until_ready(fwd_bwd(variables, x))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fwd_bwd(variables, x))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _conv_parts(x, w, stride, padding, backend):
    """Jitted forward, weight-gradient and input-gradient programs (each called with ``x``,
    ``w`` and an output gradient), the output's size and the output gradient to call them with."""

    def conv(x, w):
        return F.conv2d(x, w, None, stride=stride, padding=padding, backend=backend)

    y = jax.jit(conv)(x, w)
    # A random output gradient, passed as an argument: a constant one (all ones, say) lets XLA
    # fold or simplify what it feeds, and the timed program is no longer the gradient.
    g = jax.random.normal(jax.random.key(2), y.shape, y.dtype)
    weight_grad = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    input_grad = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    forward = jax.jit(lambda x, w, g: conv(x, w))
    return (forward, weight_grad, input_grad), y.size, g


def parts(layers: list, batch: int, repeats: int) -> list[dict]:
    """Forward, weight gradient and input gradient of each layer, apart, per backend."""
    backends = ("xla", "im2col", "banded")
    rows = []
    for name, cin, cout, k, s, p, size in layers:
        x = jax.random.normal(jax.random.key(1), (batch, size, size, cin))
        w = jax.random.normal(jax.random.key(2), (cout, cin, k, k)) * 0.1
        row = {"layer": name, "ms": {}, "gflops": {}}
        for backend in backends:
            programs, out_size, g = _conv_parts(x, w, s, p, backend)
            gflop = 2 * out_size * cin * k * k / 1e9
            for part, program in zip(("fwd", "dW", "dX"), programs, strict=True):
                ms = _median_ms(program, x, w, g, repeats=repeats)
                row["ms"][f"{backend} {part}"] = ms
                row["gflops"][f"{backend} {part}"] = gflop / ms * 1e3
        rows.append(row)
        print(row, flush=True)
    return rows


def tables(results: dict) -> str:
    """Milliseconds per layer and backend (with ``--parts``: per part, with GFLOP/s), then max
    pooling's derivative against XLA's."""
    s = results["settings"]
    head = f"batch {s['batch']}, median of {s['repeats']} runs after a warm-up, milliseconds"
    if "parts" in results:
        cols = list(results["parts"][0]["ms"])
        lines = [head + " (GFLOP/s in brackets)", "", "| layer | " + " | ".join(cols) + " |",
                 "|---|" + "---|" * len(cols)]  # fmt: skip
        for r in results["parts"]:
            cells = [f"{r['ms'][c]:.2f} ({r['gflops'][c]:.0f})" for c in cols]
            lines.append(f"| {r['layer']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    backends = list(results["layers"][0]["ms"])
    lines = [
        head + ", forward + backward (input and weight gradients)",
        "",
        "| layer | " + " | ".join(backends) + " |",
        "|---|" + "---|" * len(backends),
    ]
    for r in results["layers"]:
        lines.append(
            f"| {r['layer']} | " + " | ".join(f"{r['ms'][b]:.2f}" for b in backends) + " |"
        )
    lines += ["", "| max pooling, forward + backward | cnn_jax | XLA select_and_scatter |",
              "|---|---|---|"]  # fmt: skip
    for r in results["pools"]:
        lines.append(f"| {r['layer']} | {r['ms']['cnn_jax']:.2f} | {r['ms']['xla']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--parts", action="store_true", help="forward, dW, dX timed apart")
    parser.add_argument("--quick", action="store_true", help="one layer, one pool, batch 4, once")
    record.add_out_argument(parser, f"{NAME} (with --parts: {NAME}_parts)")
    args = parser.parse_args(argv)
    layers, pools = LAYERS, POOLS
    if args.quick:
        layers, pools, args.batch, args.repeats = LAYERS[:1], POOLS[:1], 4, 1
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    run = record.provenance(MODULE, argv)
    results: dict = {"settings": {"batch": args.batch, "repeats": args.repeats}}
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, batch {args.batch}")
    if args.parts:
        results["parts"] = parts(layers, args.batch, args.repeats)
    else:
        results["layers"], results["pools"] = [], []
        for name, cin, cout, k, s, p, size in layers:
            layer = cnn.Conv2d(cin, cout, k, stride=s, padding=p)
            x = jax.random.normal(jax.random.key(1), (args.batch, size, size, cin))
            ms = {}
            for backend in available_conv_backends():
                ms[backend] = time_layer(layer.clone(backend=backend), x, args.repeats)
            results["layers"].append({"layer": name, "ms": ms})
            print(results["layers"][-1], flush=True)
        for name, k, s, p, size, c in pools:
            x = jax.random.normal(jax.random.key(1), (args.batch, size, size, c))
            layers_ = {"cnn_jax": cnn.MaxPool2d(k, s, p), "xla": _ReduceWindowMaxPool(k, s, p)}
            ms = {label: time_layer(layer, x, args.repeats) for label, layer in layers_.items()}
            results["pools"].append({"layer": name, "ms": ms})
            print(results["pools"][-1], flush=True)
    out = record.out_dir(args.out, f"{NAME}_parts" if args.parts else NAME, args.quick)
    stored = record.write(out, results, tables, provenance=run)
    print((out / "table.md").read_text())
    return stored


class _ReduceWindowMaxPool(nn.Module):
    """Max pooling differentiated by XLA (the implementation cnn_jax used before)."""

    kernel: int
    stride: int
    padding: int

    def __call__(self, x):
        pads = ((0, 0), (self.padding, self.padding), (self.padding, self.padding), (0, 0))
        window, strides = (1, self.kernel, self.kernel, 1), (1, self.stride, self.stride, 1)
        return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pads)


if __name__ == "__main__":
    record.entry_point(main)
