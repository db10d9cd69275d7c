"""Question: which convolution backend is faster here: XLA's direct convolution, im2col + matmul or
a banded (Toeplitz) matmul?

Times forward+backward (grads w.r.t. input and weight) of single Conv2d layers typical of the
course's CIFAR CNNs and of ResNet-18 on 32x32 images (whose last stages see 2x2 and 1x1 maps),
under jit, for every backend in cnn_jax.functional ('auto' is the default). Prints one row per
layer: median milliseconds over --repeats timed runs after a warm-up. Then the same for max
pooling: cnn_jax's derivative (a select over the window slices) against XLA's own
(``lax.reduce_window``'s ``select_and_scatter``).

    python experiments/bench_conv_backends.py --batch 128
    python experiments/bench_conv_backends.py --batch 128 --parts   # forward, dW, dX apart

With ``--parts`` each convolution's forward pass, weight gradient and input gradient are timed
as separate programs per backend, and the work of each is given as GFLOP/s (2 FLOPs per MAC),
to compare with the CPU's matmul rate (``bench_vs_torch.py --roofline``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

import cnn_jax
import cnn_jax.functional as F
import cnn_jax.nn as cnn
from cnn_jax.functional import available_conv_backends

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
    """Jitted forward, weight-gradient and input-gradient programs, and the output's size."""

    def conv(x, w):
        return F.conv2d(x, w, None, stride=stride, padding=padding, backend=backend)

    y = jax.jit(conv)(x, w)
    g = jnp.ones_like(y)
    weight_grad = jax.jit(lambda x, w: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    input_grad = jax.jit(lambda x, w: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    return (jax.jit(conv), weight_grad, input_grad), y.size


def parts(batch: int, repeats: int) -> None:
    """Forward, weight gradient and input gradient of each layer, apart, per backend."""
    backends = ("xla", "im2col", "banded")
    head = " ".join(f"{b + ' ' + part:>17s}" for b in backends for part in ("fwd", "dW", "dX"))
    print(f"{'layer (ms, GFLOP/s)':32s} {head}")
    for name, cin, cout, k, s, p, size in LAYERS:
        x = jax.random.normal(jax.random.key(1), (batch, size, size, cin))
        w = jax.random.normal(jax.random.key(2), (cout, cin, k, k)) * 0.1
        row = []
        for backend in backends:
            programs, out_size = _conv_parts(x, w, s, p, backend)
            gflop = 2 * out_size * cin * k * k / 1e9
            for program in programs:
                ms = _median_ms(program, x, w, repeats=repeats)
                row.append(f"{ms:7.2f} {gflop / ms * 1e3:5.0f}/s")
        print(f"{name:32s} " + " ".join(f"{cell:>17s}" for cell in row), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--parts", action="store_true", help="forward, dW, dX timed apart")
    args = parser.parse_args()
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, batch {args.batch}")
    if args.parts:
        parts(args.batch, args.repeats)
        return
    print(f"{'layer':32s} " + " ".join(f"{b:>10s}" for b in available_conv_backends()))
    for name, cin, cout, k, s, p, size in LAYERS:
        layer = cnn.Conv2d(cin, cout, k, stride=s, padding=p)
        x = jax.random.normal(jax.random.key(1), (args.batch, size, size, cin))
        row = []
        for backend in available_conv_backends():
            row.append(time_layer(layer.clone(backend=backend), x, args.repeats))
        print(f"{name:32s} " + " ".join(f"{ms:8.2f}ms" for ms in row))
    print(f"{'max pooling':40s} {'cnn_jax':>10s} {'XLA select_and_scatter':>24s}")
    for name, k, s, p, size, c in POOLS:
        x = jax.random.normal(jax.random.key(1), (args.batch, size, size, c))
        ours = cnn.MaxPool2d(k, s, p)
        xla = _ReduceWindowMaxPool(k, s, p)
        row = [time_layer(layer, x, args.repeats) for layer in (ours, xla)]
        print(f"{name:40s} {row[0]:8.2f}ms {row[1]:22.2f}ms")


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
    main()
