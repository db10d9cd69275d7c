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
# # 7. Pooling
#
# A pooling layer summarises each window of a feature map by one number — the maximum (max
# pooling) or the mean (average pooling) — separately for every channel. It has no parameters.
# The course says pooling reduces the spatial size (and with it the compute and parameters of
# what follows), adds some translation invariance, and is lossy. This notebook shows what each
# pooling layer computes, the output-size rules (`ceil_mode`, padding), adaptive pooling, and
# then measures what pooling buys.

# %%
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

import cnn_jax.nn as cnn
from cnn_jax import data, maths, models, runtime
from cnn_jax import functional as F
from cnn_jax import inspect as I
from cnn_jax.interop import abstract_variables
from cnn_jax.testing.parity import nchw_to_nhwc, nhwc_to_nchw

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
_ = runtime.apply()

# %% [markdown]
# ## Max and average pooling
#
# A 4×4 map, 2×2 windows. torch's pooling layers default the stride to the kernel size, so the
# windows do not overlap and the map halves; `cnn_jax.nn` follows torch. Plain Flax's
# `nn.max_pool` defaults the stride to 1 (overlapping windows) — a trap when porting torch code.

# %%
x = jnp.array([[1, 3, 2, 1], [4, 6, 5, 0], [3, 1, 1, 2], [0, 2, 7, 8]], jnp.float32)
x = x[None, :, :, None]  # NHWC: one image, one channel
for layer, twin in [
    (cnn.MaxPool2d(2), torch.nn.MaxPool2d(2)),
    (cnn.AvgPool2d(2), torch.nn.AvgPool2d(2)),
]:
    ours = layer.apply({}, x)
    theirs = nchw_to_nhwc(twin(torch.tensor(nhwc_to_nchw(x))))
    print(f"{type(layer).__name__}(2):\n{np.asarray(ours)[0, ..., 0]}")
    print("  equal to torch:", np.array_equal(np.asarray(ours), theirs))
print("flax.linen.max_pool(x, (2, 2)) output shape:", nn.max_pool(x, (2, 2)).shape, "(stride 1)")

# %% [markdown]
# Backpropagation: max pooling passes each window's gradient to the one input that was the
# maximum (the first one on ties, torch's rule); average pooling spreads it evenly over the
# window. The gradient of the sum of the outputs, with respect to the input:

# %%
for layer in (cnn.MaxPool2d(2), cnn.AvgPool2d(2)):
    grad = jax.grad(lambda x, layer=layer: layer.apply({}, x).sum())(x)
    print(f"{type(layer).__name__}:\n{np.asarray(grad)[0, ..., 0]}")

# %% [markdown]
# ## Output size, `ceil_mode` and padding
#
# A pooling layer's output size follows the convolution formula, `⌊(W + 2P − d(K−1) − 1) / S⌋ +
# 1`. With `ceil_mode=True` the division rounds up instead, so a last, partial window covers the
# pixels that `⌊·⌋` drops — but, torch's rule, a window may not start in the right padding.
# Below: the formula (`cnn_jax.maths.pool_output_size`) against the shapes the layers return,
# in cnn_jax and torch.

# %%
print(" W  K  S  P   floor    ceil   (formula/cnn_jax/torch)   ceil, before the rule")
for w, k, s, p in [(5, 2, 2, 0), (6, 3, 2, 0), (7, 3, 2, 0), (5, 2, 2, 1), (32, 3, 2, 1)]:
    sizes = []
    for ceil in (False, True):
        image = jnp.zeros((1, w, w, 1))
        ours = cnn.MaxPool2d(k, s, p, ceil_mode=ceil).apply({}, image).shape[1]
        theirs = torch.nn.MaxPool2d(k, s, p, ceil_mode=ceil)(torch.zeros(1, 1, w, w)).shape[-1]
        formula = maths.pool_output_size(w, k, s, p, ceil_mode=ceil)
        sizes.append(f"{formula}/{ours}/{theirs}")
    rounded_up = -(-(w + 2 * p - k) // s) + 1
    print(f"{w:2d} {k:2d} {s:2d} {p:2d}  {sizes[0]:>6}  {sizes[1]:>6}  {rounded_up:>27}")

# %% [markdown]
# The row with `P = 1` on a 5-wide map is the rule at work: rounding up would add a window (the
# last column), but it would start in the right padding, so `ceil_mode` does not add it.
#
# The windows of a 2×2, stride-2 pooling on a 5×5 map: `⌊·⌋` leaves the last row and column
# out; `ceil_mode` adds windows that hang over the edge and pool only the pixels that exist.

# %%
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
for ax, ceil in zip(axes, (False, True), strict=True):
    n = maths.pool_output_size(5, 2, ceil_mode=ceil)
    ax.add_patch(Rectangle((0, 0), 5, 5, color="0.85", zorder=0))  # the input
    for i in range(n):
        for j in range(n):
            ax.add_patch(
                Rectangle(
                    (2 * j + 0.08, 2 * i + 0.08),
                    1.84,
                    1.84,
                    fill=False,
                    lw=2,
                    color=plt.cm.tab10((i * n + j) % 10),
                )
            )
    ax.set(xlim=(-0.2, 6.2), ylim=(6.2, -0.2), xticks=range(6), yticks=range(6))
    ax.set_title(f"ceil_mode={ceil}: {n}x{n} output")
    ax.grid(alpha=0.3)
fig.suptitle("MaxPool2d(2) on a 5x5 map (grey: the input; coloured squares: the windows)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Padding with average pooling: `count_include_pad=True` (torch's default) divides every
# window's sum by the full window size, padding zeros included, so border outputs shrink;
# `False` divides by the number of real pixels. On a map of ones:

# %%
ones = jnp.ones((1, 4, 4, 1))
for include in (True, False):
    out = cnn.AvgPool2d(3, stride=1, padding=1, count_include_pad=include).apply({}, ones)
    theirs = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=include)(torch.ones(1, 1, 4, 4))
    print(f"count_include_pad={include}:\n{np.round(np.asarray(out)[0, ..., 0], 3)}")
    print("  equal to torch:", np.allclose(np.asarray(out), nchw_to_nhwc(theirs)))

# %% [markdown]
# ## Adaptive pooling: choose the output size, not the window
#
# `AdaptiveAvgPool2d(o)` / `AdaptiveMaxPool2d(o)` compute the windows from the input size:
# output `i` pools rows `[⌊i·W/o⌋, ⌈(i+1)·W/o⌉)`. When `o` divides `W` these are ordinary
# non-overlapping windows; otherwise they differ in size and overlap.

# %%
for w, o in [(6, 3), (7, 3), (5, 2)]:
    print(f"W={w} -> {o}: windows {F.adaptive_windows(w, o)}")
x7 = np.random.default_rng(0).standard_normal((2, 7, 7, 3)).astype(np.float32)
ours = jax.jit(cnn.AdaptiveAvgPool2d(3).apply)({}, x7)
theirs = nchw_to_nhwc(torch.nn.AdaptiveAvgPool2d(3)(torch.tensor(nhwc_to_nchw(x7))))
print("AdaptiveAvgPool2d(3) on 7x7, max |cnn_jax - torch| =", float(np.abs(ours - theirs).max()))

# %% [markdown]
# That is why networks end in an adaptive pool: whatever the input size, the head sees a
# fixed-size map (torchvision's AlexNet: `AdaptiveAvgPool2d((6, 6))`; global average pooling is
# `AdaptiveAvgPool2d(1)`). The `convnet` below ends in global average pooling, so the same
# parameters classify 32×32 and 48×48 images (`jax.eval_shape` traces the model without
# computing anything):

# %%
gap_net = models.create("convnet")
variables = abstract_variables(gap_net)  # shapes and dtypes: nothing needs computing here
for size in (32, 48):
    x = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)
    logits = jax.eval_shape(lambda v, x: gap_net.apply(v, x, train=False), variables, x)
    print(f"{size}x{size} input -> logits {logits.shape}")

# %% [markdown]
# ## What pooling loses
#
# Pooling is lossy compression. A digit (the embedded handwritten digits at 32×32, as the other
# notebooks load them) after one, two and three 2×2 poolings: max pooling keeps the strongest
# value of each window (the strokes thicken), average pooling blurs.

# %%
digits = data.load("digits", image_size=32)["test"]
image = jnp.asarray(digits.images[3:4], jnp.float32) / 255
fig, axes = plt.subplots(2, 4, figsize=(8, 4.2))
for r, (name, layer) in enumerate({"max": cnn.MaxPool2d(2), "average": cnn.AvgPool2d(2)}.items()):
    shown = image
    for c in range(4):
        axes[r, c].imshow(np.asarray(shown)[0, ..., 0], cmap="gray")
        axes[r, c].set_title(f"{name}: {shown.shape[1]}x{shown.shape[2]}", fontsize=9)
        axes[r, c].axis("off")
        shown = layer.apply({}, shown)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What pooling buys, measured
#
# **Size and cost.** Three versions of the same three 3×3 convolution blocks (16, 32, 64
# channels, ReLU), then a flatten and a linear layer to 10 classes: 2×2 max pooling after each
# block, stride-2 convolutions instead of pooling (what many modern networks do), and no
# downsampling at all. `cnn_jax.inspect.layers` counts the parameters, the
# multiply-accumulates (MACs) and the values every layer outputs, for one 32×32 image.


# %%
def blocks(downsample):
    layers, c_in = [], 1
    for c_out in (16, 32, 64):
        stride = 2 if downsample == "stride-2 conv" else 1
        layers += [cnn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), cnn.ReLU()]
        if downsample in ("max pool", "avg pool"):
            layers.append(cnn.MaxPool2d(2) if downsample == "max pool" else cnn.AvgPool2d(2))
        c_in = c_out
    return layers


print(f"{'downsampling':<14} {'params':>10} {'of which head':>14} {'MACs':>12} {'outputs':>10}")
for name in ("max pool", "stride-2 conv", "none"):
    size = 32 if name == "none" else 4
    net = cnn.Sequential((*blocks(name), cnn.Flatten(), cnn.Linear(64 * size * size, 10)))
    rows = I.layers(net, (1, 32, 32, 1))
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    outputs = sum(int(np.prod(r.output_shape)) for r in rows)
    print(f"{name:<14} {params:>10,} {rows[-1].params:>14,} {macs:>12,} {outputs:>10,}")

# %% [markdown]
# Without downsampling the head needs a weight per class for each of the 32·32·64 values of the
# last map, and every convolution runs at full resolution. Stride-2 convolutions shrink the maps
# as pooling does, and cost even less: each computes only every fourth output.
#
# **Translation invariance.** Shift the images a few pixels: how much do the features the head
# sees change? Below, the relative change `‖f(shifted) − f(x)‖ / ‖f(x)‖` of the flattened
# features, averaged over 64 test digits, for the blocks without pooling, with 2×2 max or
# average pooling after each block, and with global average pooling after the max-pooled
# blocks. The convolutions are freshly initialised: this measures the operations, not
# training.

# %%
batch = np.asarray(digits.images[:64], np.float32) / 255
features = {
    "no pooling": cnn.Sequential(blocks("none")),
    "2x2 max pool per block": cnn.Sequential(blocks("max pool")),
    "2x2 avg pool per block": cnn.Sequential(blocks("avg pool")),
    "max pool + global avg pool": cnn.Sequential((*blocks("max pool"), cnn.AdaptiveAvgPool2d(1))),
}
shifts = [0, 1, 2, 3, 4, 6, 8]
moved = jnp.concatenate([data.variants.shift(batch, 0, s) for s in shifts])  # all at once
change = {}
for name, net in features.items():
    weights = net.init(jax.random.key(0), batch[:1], train=False)
    f = net.apply(weights, moved, train=False).reshape(len(shifts), len(batch), -1)
    relative = jnp.linalg.norm(f - f[0], axis=-1) / jnp.linalg.norm(f[0], axis=-1)
    change[name] = relative.mean(axis=1).tolist()
print("shift (px):                 ", " ".join(f"{s:4d}" for s in shifts))
for name, values in change.items():
    print(f"{name:<28}", " ".join(f"{v:4.2f}" for v in values))

fig, ax = plt.subplots(figsize=(6.5, 3.8))
for name, values in change.items():
    ax.plot(shifts, values, marker="o", label=name)
ax.set(
    xlabel="horizontal shift of the input (pixels)",
    ylabel="relative change of the features",
    title="how much the head's input changes under translation",
    xticks=shifts,
)
ax.grid(alpha=0.3), ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# What the measurement shows:
#
# * Without pooling the features are *equivariant*: the maps move with the image, so compared
#   position by position they change more with every pixel of shift.
# * Pooling after each block changes that only a little. 2×2 average pooling lowers the change
#   somewhat, 2×2 max pooling barely (compare the rows above): a window of two pixels absorbs
#   only part of a shift, and what is left moves through the next layers. The invariance that
#   local pooling buys is partial and small.
# * Global average pooling throws away *where* a feature is, and the change stays small at every
#   shift: this is where a CNN's translation robustness comes from.
#
# Trained networks: `experiments/course/mlp_vs_cnn.py` measured the test accuracy of trained
# CNNs on shifted digits, one with a flatten + dense head after three max-pooled blocks and one
# with global average pooling. From its results file:

# %%
found = json.loads(Path("../experiments/results/course/mlp_vs_cnn/results.json").read_text())
prov = found["provenance"]  # how the file was made (experiments/record.py)
print("command:", prov["command"], "|", prov["machine"]["cpu"], prov["machine"]["cores"], "cores")
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for name in ("CNN, flatten head", "CNN, global avg pool"):
    runs = np.asarray(found["accuracy_vs_shift"][name])  # (seeds, shifts)
    ax.errorbar(found["shifts"], runs.mean(0), runs.std(0), marker="o", capsize=3, label=name)
    print(f"{name:<22} test accuracy at shifts {found['shifts']}:")
    print("   ", " ".join(f"{a:.2f}" for a in runs.mean(0)))
ax.set(
    xlabel="shift (pixels)",
    ylabel="test accuracy (mean ± std over seeds)",
    title="trained CNNs on shifted digits (experiments/course/mlp_vs_cnn.py)",
)
ax.grid(alpha=0.3), ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The same picture after training: the network whose dense head sees the flattened 4×4 maps of
# three max-pooled blocks loses most of its accuracy by a shift of 3 pixels; the network with
# global average pooling keeps far more of it at every shift from 3 pixels on, and is back near
# its unshifted accuracy at 8 pixels (the total stride of three 2×2 pools: the pooling grid
# lines up again). Pooling buys size and cost reliably, and translation robustness mainly when
# it is global.
