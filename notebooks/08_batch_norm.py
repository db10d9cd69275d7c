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
# # 8. Batch normalisation in depth
#
# `BatchNorm2d` normalises every channel with the mean and variance of the current mini-batch,
# then scales and shifts it with two learned parameters per channel:
#
# `x̂ = (x − μ_B) / √(σ²_B + ε)`, `y = γ·x̂ + β`, with `μ_B`, `σ²_B` over the batch and both
# spatial axes.
#
# That is the training-mode half. At inference there may be a single image, so the layer keeps
# *running* estimates of the mean and variance, updated at every training step, and uses those
# instead. This notebook checks the formula, shows where train and eval mode differ, how the
# running statistics move (`momentum`), what BatchNorm does to the signal in a deep network, and
# the learning-rate range it opens, from the course experiment's results.

# %%
import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch

import cnn_jax.nn as cnn
from cnn_jax import data, models, runtime
from cnn_jax.inspect import plots
from cnn_jax.testing.parity import nchw_to_nhwc, nhwc_to_nchw

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
_ = runtime.apply()

# %% [markdown]
# ## The formula, by hand and by the layer
#
# A batch of 8 maps of 5×5 with 3 channels, each channel with its own mean and spread. In
# training mode (`train=True`, with `mutable=['batch_stats']` so the running statistics can be
# updated), the layer's output equals the formula computed by hand, and torch's `BatchNorm2d` in
# `.train()` mode. Freshly initialised, `γ = 1` and `β = 0`.

# %%
rng, key = np.random.default_rng(0), jax.random.key(0)
x = jnp.asarray(3.0 + np.array([1.0, 2.0, 0.5]) * rng.standard_normal((8, 5, 5, 3)), jnp.float32)
bn = cnn.BatchNorm2d(3)
variables = bn.init(key, x, train=False)
y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])

mean = x.mean(axis=(0, 1, 2))  # one per channel: over the batch and both spatial axes
var = x.var(axis=(0, 1, 2))  # the biased variance (divide by n) normalises
by_hand = (x - mean) / jnp.sqrt(var + bn.eps)
theirs = torch.nn.BatchNorm2d(3).train()(torch.tensor(nhwc_to_nchw(x)))
print("batch mean per channel:", np.round(np.asarray(mean), 3))
print("max |layer - formula| =", float(jnp.abs(y - by_hand).max()))
print("max |layer - torch|   =", float(np.abs(np.asarray(y) - nchw_to_nhwc(theirs.detach())).max()))
print(
    "output mean / std per channel:",
    np.round(np.asarray(y.mean((0, 1, 2))), 4) + 0.0,  # + 0.0: a rounded -0.0 prints as 0.0
    np.round(np.asarray(y.std((0, 1, 2))), 4),
)

# %% [markdown]
# ## Train mode vs eval mode
#
# In training mode an image's output depends on the *other* images in its batch (they set
# `μ_B` and `σ²_B`); in eval mode (`train=False`) it depends only on the image and the running
# statistics. The same first image, in two different batches:

# %%
other = jnp.asarray(10.0 + rng.standard_normal((7, 5, 5, 3)), jnp.float32)
batch_a, batch_b = x, jnp.concatenate([x[:1], other])
for train in (True, False):
    kwargs = {"train": True, "mutable": ["batch_stats"]} if train else {"train": False}
    first_a = bn.apply(variables, batch_a, **kwargs)
    first_b = bn.apply(variables, batch_b, **kwargs)
    if train:
        first_a, first_b = first_a[0], first_b[0]
    print(
        f"train={train!s:<5}: image 0's output differs between the two batches by up to",
        f"{float(jnp.abs(first_a[0] - first_b[0]).max()):.3f}",
    )

# %% [markdown]
# This is why a model must be switched to eval mode for validation and inference
# (`model.apply(..., train=False)` here, `model.eval()` in torch): in train mode its
# predictions change with whatever else is in the batch, and a batch of one image would be
# normalised by its own statistics.
#
# ## Running statistics and `momentum`
#
# After each training step: `running = (1 − momentum)·running + momentum·batch_statistic`
# (torch's convention: `momentum` is the weight of the *new* value, 0.1 by default; Flax's own
# `BatchNorm` uses the opposite convention, 0.99 = weight of the old). `momentum=None` keeps a
# cumulative average instead. The running variance stores the *unbiased* batch variance (divided
# by n − 1), while the normalisation uses the biased one. Feeding 60 batches from a
# distribution with mean 3 and standard deviation 2 (variance 4), from the fresh state (mean
# 0, variance 1), and the same batches to torch:

# %%
stream = jnp.asarray(3.0 + 2.0 * rng.standard_normal((60, 16, 4, 4, 1)), jnp.float32)
curves = {}
for momentum in (0.1, 0.5, None):
    layer = cnn.BatchNorm2d(1, momentum=momentum)
    params, state = layer.init(key, stream[0], train=False).values()
    step = jax.jit(
        lambda state, x, layer=layer, params=params: layer.apply(
            {"params": params, "batch_stats": state}, x, train=True, mutable=["batch_stats"]
        )[1]["batch_stats"]
    )
    twin = torch.nn.BatchNorm2d(1, momentum=momentum).train()
    means = []
    for batch in stream:
        state = step(state, batch)
        twin(torch.tensor(nhwc_to_nchw(batch)))
        means.append(float(state["running_mean"][0]))
    curves[f"momentum={momentum}"] = means
    print(
        f"momentum={momentum!s:<4}: running mean {float(state['running_mean'][0]):.4f}",
        f"(torch {float(twin.running_mean[0]):.4f}),",
        f"running var {float(state['running_var'][0]):.4f} (torch {float(twin.running_var[0]):.4f})",
    )
print("mean of all 60 batches:", f"{float(stream.mean()):.4f}")

fig, ax = plt.subplots(figsize=(6.5, 3.6))
for label, values in curves.items():
    ax.plot(range(1, len(values) + 1), values, label=label)
ax.axhline(float(stream.mean()), color="grey", ls="--", lw=1, label="mean of all batches")
ax.set(xlabel="training step", ylabel="running_mean", title="running mean after each step")
ax.grid(alpha=0.3), ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# With momentum 0.1 the running mean needs about 20 steps to approach the data's mean
# (`1 − 0.9ⁿ` of the way after n steps); 0.5 gets there in a few steps but follows every
# batch's noise; `None` weights all batches equally. A model evaluated after only a few steps of
# training is normalised with running statistics that are still close to the fresh 0 and 1 —
# its eval-mode outputs can be far from its train-mode outputs. The unbiased variance: with 16
# images of 4×4 pixels per batch (n = 256 values) the stored variance is 256/255 of the biased
# one — negligible here, but with a batch of two 1×1 maps it is twice the biased variance.
#
# ## What BatchNorm does to the signal in a deep network
#
# The network of the BatchNorm experiment (`convnet` with two 3×3 convolutions per block, six
# in all, ReLU, torch's default initialisation), freshly initialised, on a batch of 64 digits
# at 16×16: the standard deviation of each ReLU's output, without and with BatchNorm after every
# convolution.

# %%
digits = data.load("digits", image_size=16)["train"]
images = jnp.asarray(digits.normalize(digits.images[:64]))
is_relu = lambda module, method: isinstance(module, cnn.ReLU) and method == "__call__"
spread = {}
for label, batch_norm in (("no BatchNorm", False), ("BatchNorm", True)):
    model = models.create("convnet", convs_per_block=2, batch_norm=batch_norm)
    # One compiled program for the whole initialisation, at -O2: XLA:CPU's default -O3 spends
    # seconds on every new shape of random numbers, and a program that runs once needs no -O3.
    init = jax.jit(
        partial(model.init, train=False), compiler_options={"xla_backend_optimization_level": 2}
    )
    # train=True: BatchNorm normalises with this batch's statistics, as during training
    _, state = model.apply(
        init(key, images[:1]),
        images,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=is_relu,
    )
    maps = jax.tree.leaves(state["intermediates"])  # the ReLU outputs, in forward order
    spread[label] = [float(m.std()) for m in maps]
    print(f"{label:<13} std after each ReLU:", " ".join(f"{s:.3f}" for s in spread[label]))
plots.mean_std(
    range(1, len(maps) + 1),
    spread,
    xlabel="ReLU after convolution number",
    ylabel="std of the activations",
    logy=True,
    title="the signal through six convolutions, at initialisation",
)

# %% [markdown]
# Without BatchNorm the spread of the activations changes by more than a factor of ten from one
# layer to the next: torch's default initialisation (Kaiming-uniform with `a = √5`, a third of
# He's variance) does not preserve the scale of a deep ReLU stack. With BatchNorm every ReLU
# receives a standardised input, and its output's standard deviation is the same at every
# depth: about 0.58, which is that of a ReLU of a standard normal variable,
# `√(1/2 − 1/(2π)) ≈ 0.584`. (The network's convolutions before a BatchNorm have no bias: the
# mean subtraction would cancel it, and `β` takes its place.)
#
# ## The learning-rate range BatchNorm opens
#
# `experiments/course/batch_norm.py` trained this six-convolution network with and without
# BatchNorm, with SGD + momentum 0.9 at constant learning rates from 0.003 to 3, 10 epochs on
# the digits at 16×16, over three seeds. Its results file holds every run; the figure shows
# the final validation accuracy against the learning rate (runs the loop stopped as diverged
# are left out of the mean and counted).

# %%
found = json.loads(Path("../experiments/results/course/batch_norm/results.json").read_text())
prov = found["provenance"]  # how the file was made (experiments/record.py)
print("command:", prov["command"], "|", prov["machine"]["cpu"], prov["machine"]["cores"], "cores")
lrs = found["lrs"]
final = {}
for label, by_lr in found["runs"].items():
    runs = [by_lr[str(lr)] for lr in lrs]  # per lr: one record per seed
    final[label] = np.array(
        [[r["val_accuracy"][-1] if not r["diverged"] else np.nan for r in seeds] for seeds in runs]
    ).T  # (seeds, lrs)
    diverged = sum(bool(r["diverged"]) for seeds in runs for r in seeds)
    print(
        f"{label:<13} largest lr at which every seed trained: {found['largest_stable_lr'][label]};",
        f"runs stopped as diverged: {diverged}",
    )
    print(
        "   final val accuracy per lr:",
        " ".join(
            f"{lr:g}: {a:.2f}" for lr, a in zip(lrs, np.nanmean(final[label], 0), strict=True)
        ),
    )
plots.mean_std(
    lrs,
    final,
    xlabel="learning rate (SGD + momentum 0.9, constant)",
    ylabel="validation accuracy after 10 epochs",
    logx=True,
    title="BatchNorm experiment: mean ± std over seeds",
)

# %% [markdown]
# With BatchNorm every seed trained at every learning rate up to the largest one printed above,
# and accuracy fell off only beyond it; without BatchNorm no learning rate trained every seed
# within the 10 epochs. The claim of the course, "BatchNorm allows larger learning rates and
# converges faster", holds here by a wide margin. Part of the gap is the signal shown above:
# without normalisation torch's default initialisation leaves the early layers with a small,
# drifting scale. How much of the gap a better initialisation alone would close, the experiment
# does not measure. The per-seed numbers and the command are in `experiments/README.md`.
