# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 12. Training on several devices
#
# Data parallelism: every device holds the same parameters, each computes the gradient on its
# share of the global batch, the gradients are averaged across devices (an all-reduce), and
# every device applies the same update, so the copies never drift apart. Done right, the result
# is the result of one device on the whole batch.
#
# This notebook runs anywhere: it asks JAX for two *fake* CPU devices (one CPU split into two
# XLA devices), which must happen before JAX starts, so it is the first thing the notebook does
# — before importing `cnn_jax`. It also pins JAX to the CPU, so that on a machine with one GPU
# the two devices still exist; on a machine with several GPUs or TPU cores, delete the first
# cell and the same code runs on them.

# %%
import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 2)

# %%
import matplotlib.pyplot as plt
import numpy as np

from cnn_jax import data, models, runtime
from cnn_jax import train as T

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
runtime.apply()

print(jax.devices())

# %% [markdown]
# ## One model, one batch stream, three placements
#
# A small CNN with BatchNorm (`convnet`: two conv-BatchNorm-ReLU-pool blocks of 8 and 16
# channels, global average pooling) on the digits at 16×16, Adam, global batches of 64, 12
# steps, from the same initial state, three ways:
#
# * `'none'`: `jax.jit` of the plain step on one device;
# * `'pmap'`: `jax.pmap` — the state is replicated (one copy per device, a leading device
#   axis), each global batch is reshaped to (devices, 32, ...), and inside the step the
#   gradients are averaged with `lax.pmean` and BatchNorm's batch statistics are computed over
#   both devices' images (synchronised BatchNorm);
# * `'sharded'`: `jax.jit` with shardings — the state is replicated and the batch *split along
#   its first axis* over a `('data',)` mesh; the step is the single-device step, and XLA inserts
#   the communication. This is the modern path; `pmap` is maintained but superseded.
#
# `cnn_jax.train.placement(mode, ...)` wraps each: how the state goes on the devices
# (`replicated`) and comes back as one copy (`unreplicated`), how a batch is put on them
# (`batch_to_devices`), the compiled step (`train_step`), how a result is read on the host
# (`to_host`). `fit` and `cnn-jax train --parallel {none,pmap,sharded} --devices N` use the same
# objects.

# %%
digits = data.load("digits", image_size=16)["train"]
model = models.create("convnet", channels=(8, 16), batch_norm=True)
tx = T.make_optimizer("adam", 1e-3)
state0 = T.create_train_state(model, tx, jax.random.PRNGKey(0), digits.normalize(digits.images[:1]))
batches = [
    b for _, b in zip(range(12), data.batches(digits, 64, shuffle=True, seed=0), strict=False)
]

losses, finals, placements = {}, {}, {}
for mode in ("none", "pmap", "sharded"):
    placement = T.placement(mode, {}, devices=0 if mode == "none" else 2)
    # A fresh copy: the compiled steps donate (reuse) the state's buffers.
    state = placement.replicated(jax.tree.map(lambda x: x.copy(), state0))
    losses[mode] = []
    for batch in batches:
        state, metrics = placement.train_step(state, placement.batch_to_devices(batch))
        losses[mode].append(float(placement.to_host(metrics)["loss"]))
    finals[mode], placements[mode] = placement.unreplicated(state), placement
    print(f"{mode:<8} loss at steps 1 / 12: {losses[mode][0]:.6f} / {losses[mode][-1]:.6f}")

# %% [markdown]
# How a batch sits on the devices in each mode:

# %%
for mode in ("pmap", "sharded"):
    images = placements[mode].batch_to_devices(batches[0])["image"]
    shards = [(str(s.device), s.data.shape) for s in images.addressable_shards]
    print(f"{mode:<8} global shape {images.shape}, per device: {shards}")
sharded_state = placements["sharded"].replicated(jax.tree.map(lambda x: x.copy(), state0))
kernel = sharded_state.params["features"]["0"]["weight"]
print(
    "sharded: a conv weight is",
    kernel.sharding.spec,
    "(replicated) on",
    sorted(str(d) for d in kernel.sharding.device_set),
)

# %% [markdown]
# ## The same numbers
#
# The three runs agree step by step, and so do their final parameters and BatchNorm running
# statistics. They are not bit-identical: summing a gradient as two halves and then adding the
# halves rounds differently from one sum over 64 images, and float32 rounding differences grow
# slowly over steps. The relative differences to the single-device run:


# %%
def relative(a, b):
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


for mode in ("pmap", "sharded"):
    loss_gap = max(abs(a - b) / b for a, b in zip(losses[mode], losses["none"], strict=True))
    print(
        f"{mode:<8} vs one device: loss (largest over steps) {loss_gap:.1e}, "
        f"final parameters {relative(finals[mode].params, finals['none'].params):.1e}, "
        f"running statistics {relative(finals[mode].batch_stats, finals['none'].batch_stats):.1e}"
    )

fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(11, 3.6))
for mode, values in losses.items():
    ax_loss.plot(range(1, 13), values, marker="o", ms=4, label=mode, alpha=0.7)
    if mode != "none":
        gaps = [max(abs(a - b) / b, 1e-9) for a, b in zip(values, losses["none"], strict=True)]
        ax_gap.plot(range(1, 13), gaps, marker="o", ms=4, label=f"{mode} vs none")
ax_loss.set(xlabel="step", ylabel="training loss", title="the three runs (curves overlap)")
ax_gap.set(
    xlabel="step",
    ylabel="relative loss difference (0 drawn at 1e-9)",
    yscale="log",
    title="difference from one device",
)
for ax in (ax_loss, ax_gap):
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Two details make the runs agree, and both are easy to get wrong by hand:
#
# * **BatchNorm must see the global batch.** Each device normalising with its own 32 images
#   would be a different model (torch's `DistributedDataParallel` does exactly that unless the
#   model is converted with `SyncBatchNorm`). `cnn_jax`'s pmap step computes the statistics over
#   the mapped axis; under `jit` with shardings the single-device step already computes them
#   over the whole (sharded) batch.
# * **Randomness per device.** Dropout masks must differ between devices (each holds different
#   images): the pmap step folds the device index into the step's key. This model has no
#   dropout, so the comparison above is exact up to rounding; with dropout, pmap and one device
#   draw different masks, and agree only in distribution.
#
# ## What changes on a GPU (or several)
#
# Nothing in the code above, apart from deleting the first cell:
#
# * `jax.devices()` lists the accelerators, and `jax.device_count()` counts all of them across
#   hosts. Several hosts start with `jax.distributed.initialize()`; then only `'sharded'` spans
#   them (each process feeds its own rows of every global batch).
# * The all-reduce of the gradients runs over the GPUs' interconnect (NCCL over NVLink or
#   PCIe) instead of memory copies between two fake devices of one CPU, so it costs something:
#   data parallelism pays when each device's share of the batch keeps it busy. Here, two fake
#   devices share the same two CPU cores, so nothing gets faster; this notebook is about the
#   numbers, not speed.
# * Each device needs the whole model, its optimiser state and its share of the activations in
#   its own memory; the global batch is what must be divisible by the number of devices.
# * Dispatch is asynchronous: the Python loop runs ahead of the device, and a timing needs
#   `jax.block_until_ready`. Keeping the dataset on the device (`data_on_device`, the default
#   for small datasets with `'none'` and `'sharded'`) avoids a host-to-device copy per step.
# * `compute_dtype='bfloat16'` (mixed precision: bfloat16 forward and backward, float32
#   parameters and optimiser state) is meant for accelerators; on a CPU it is slower.
