"""Question: does the input pipeline ever limit the training step rate?

Measures, for a batch size, how many batches per second reach the device (1) through the loop's
host path — ``data.batches`` (grain: batches read ahead by background threads) then
``jax.device_put`` — and (1b) through the hand-written pipeline it replaced (a generator of
index-gathered rows and a two-deep ``device_put`` queue, restated here as the baseline), both
as raw uint8 like the loop; (2) the on-device fast path (``to_device`` + jitted ``gather``); and
(3) how many jitted train steps per second a model runs on the same batches. Input keeps up when
(1) is well above (3). Datasets: the embedded digits at 32x32 and a CIFAR-10-sized split (50,000
random 32x32x3 uint8 images: the same array shapes and costs as the real one).

    python experiments/bench_input_pipeline.py --batch 128
"""

from __future__ import annotations

import argparse
import collections
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import cnn_jax
from cnn_jax import data
from cnn_jax import train as T
from cnn_jax.models import create


def rate(fn, seconds: float = 3.0) -> float:
    """Calls per second of fn() over about ``seconds`` (after one warm-up call)."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def _epochs(make_iterator, split, batch):
    """Batches per second over whole epochs of ``make_iterator(epoch)`` (each batch on the
    device before the next is counted)."""
    epoch = [0]

    def one_epoch():
        batches = list(make_iterator(epoch[0]))  # all put (asynchronously) before the wait
        jax.block_until_ready(batches[-1])
        epoch[0] += 1

    return rate(one_epoch) * data.num_batches(len(split), batch, True)


def grain_rate(split, batch):
    """The loop's host path: grain reading threads, then an asynchronous device_put."""

    def epoch(e):
        host = data.batches(split, batch, shuffle=True, seed=0, epoch=e, normalize=False)
        return map(jax.device_put, host)

    return _epochs(epoch, split, batch)


def hand_written_rate(split, batch):
    """The pipeline before grain: gather rows in a generator, keep two batches in flight."""

    def epoch(e):
        idx, _ = data.batch_indices(
            len(split), batch, shuffle=True, seed=0, epoch=e, drop_remainder=True
        )
        host = ({"image": split.images[r], "label": split.labels[r]} for r in idx)
        queue = collections.deque(jax.device_put(b) for b in itertools.islice(host, 2))
        while queue:
            yield queue.popleft()
            queue.extend(jax.device_put(b) for b in itertools.islice(host, 1))

    return _epochs(epoch, split, batch)


def device_rate(split, batch):
    on_device = data.to_device(split)
    idx, _ = data.batch_indices(
        len(split), batch, shuffle=True, seed=0, epoch=0, drop_remainder=True
    )
    gather = jax.jit(data.gather)
    rows = [jnp.asarray(r) for r in idx]
    i = [0]

    def one():
        out = gather(on_device, rows[i[0] % len(rows)])
        i[0] += 1
        jax.block_until_ready(out)

    return rate(one)


def step_rate(split, batch, model_name):
    h, w, c = split.image_shape
    model = create(model_name, num_classes=split.num_classes, in_channels=c)
    state = T.create_train_state(
        model, optax.adam(1e-3), jax.random.PRNGKey(0), jnp.zeros((1, h, w, c))
    )
    step = jax.jit(T.train_step, donate_argnums=0)
    b = jax.device_put(next(data.batches(split, batch, shuffle=True)))
    holder = [state]

    def one():
        holder[0], metrics = step(holder[0], b)
        jax.block_until_ready(metrics)

    return rate(one)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    rng = np.random.default_rng(0)
    cifar = data.from_arrays(
        "cifar10-sized",
        {
            "train": (
                rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8),
                rng.integers(0, 10, 50_000),
            )
        },
        num_classes=10,
    )["train"]
    cases = [
        ("digits 32x32", data.load("digits", image_size=32)["train"], "lenet5"),
        ("cifar10-sized", cifar, "cifar_cnn"),
    ]
    print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}")
    print(
        f"{'dataset':16s} {'grain batches/s':>16s} {'hand-written/s':>15s} "
        f"{'device gather/s':>16s} {'train steps/s':>14s}  model"
    )
    for name, split, model_name in cases:
        print(
            f"{name:16s} {grain_rate(split, args.batch):16.0f} "
            f"{hand_written_rate(split, args.batch):15.0f} "
            f"{device_rate(split, args.batch):16.0f} "
            f"{step_rate(split, args.batch, model_name):14.1f}  {model_name}",
            flush=True,
        )


if __name__ == "__main__":
    main()
