"""Question: does the input pipeline ever limit the training step rate?

Measures, for a batch size, (1) how many batches per second ``data.batches`` produces on the host
(shuffled, normalised), (2) the on-device fast path (``to_device`` + jitted ``gather``), and (3) how
many jitted train steps per second a model runs on the same batches. Input keeps up when (1) is
well above (3). Datasets: the embedded digits at 32x32 and a CIFAR-10-sized split (50,000 random
32x32x3 uint8 images: the same array shapes and costs as the real one).

    python experiments/bench_input_pipeline.py --batch 128
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def host_rate(split, batch):
    epoch = [0]

    def one_epoch():
        for _ in data.batches(split, batch, shuffle=True, seed=0, epoch=epoch[0]):
            pass
        epoch[0] += 1

    steps = data.num_batches(len(split), batch, True)
    return rate(one_epoch) * steps


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
        f"{'dataset':16s} {'host batches/s':>15s} {'device gather/s':>16s} "
        f"{'train steps/s':>14s}  model"
    )
    for name, split, model_name in cases:
        print(
            f"{name:16s} {host_rate(split, args.batch):15.0f} "
            f"{device_rate(split, args.batch):16.0f} "
            f"{step_rate(split, args.batch, model_name):14.1f}  {model_name}"
        )


if __name__ == "__main__":
    main()
