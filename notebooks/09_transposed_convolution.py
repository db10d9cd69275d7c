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
# # 9. Transposed convolution and upsampling
#
# A strided convolution shrinks a map; a *transposed* convolution (`ConvTranspose2d`, sometimes
# wrongly called "deconvolution") grows one, with learned weights: decoders, segmentation
# networks and generators use it to go back up in resolution. This notebook shows what it
# computes (three equivalent views), draws the convolution-arithmetic pictures of the course
# (after Dumoulin & Visin, *A guide to convolution arithmetic*), explains `output_padding`, and
# measures the checkerboard artefacts of transposed convolutions against upsampling followed
# by a convolution.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

import cnn_jax.nn as cnn
from cnn_jax import functional as F
from cnn_jax import maths, runtime
from cnn_jax.interop import from_torch
from cnn_jax.testing.parity import nchw_to_nhwc, nhwc_to_nchw

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
runtime.apply()

rng = np.random.default_rng(0)


def output_shape(layer, input_shape, **kwargs):
    """The shape ``layer`` returns, traced with ``jax.eval_shape`` (nothing is computed)."""
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(
        lambda x: layer.init_with_output(jax.random.key(0), x, **kwargs)[0], x
    ).shape


# %% [markdown]
# ## View 1: every input pixel stamps the kernel onto the output
#
# A transposed convolution with stride `S` places a copy of the kernel, scaled by the input
# pixel's value, at `S` times that pixel's position, and sums where the copies overlap. A 2×2
# input, a 3×3 kernel, stride 2: four stamps on a 5×5 output, overlapping in the middle row and
# column. By hand, against `cnn_jax.nn.ConvTranspose2d` and `torch.nn.ConvTranspose2d` with the
# same weights:

# %%
x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
kernel = np.arange(1.0, 10.0, dtype=np.float32).reshape(3, 3)
stride = 2
stamped = np.zeros((5, 5), np.float32)
for i in range(2):
    for j in range(2):
        stamped[stride * i : stride * i + 3, stride * j : stride * j + 3] += x[i, j] * kernel
print("by hand:\n", stamped)

twin = torch.nn.ConvTranspose2d(1, 1, 3, stride=2, bias=False)
with torch.no_grad():
    twin.weight.copy_(torch.tensor(kernel)[None, None])  # (in, out, kH, kW)
layer = cnn.ConvTranspose2d(1, 1, 3, stride=2, bias=False)
variables = from_torch(layer, twin.state_dict())
ours = layer.apply(variables, jnp.asarray(x)[None, :, :, None])[0, :, :, 0]
theirs = twin(torch.tensor(x)[None, None])[0, 0].detach().numpy()
print("cnn_jax equals the stamps:", np.array_equal(np.asarray(ours), stamped))
print("torch equals the stamps:  ", np.array_equal(theirs, stamped))

# %% [markdown]
# ## View 2: an ordinary convolution over a spread-out input
#
# The same result as a direct convolution: insert `S − 1` zeros between the input pixels, pad
# every side with `d(K − 1) − P` zeros (plus `output_padding` on the bottom and right), and
# cross-correlate with the kernel flipped in both axes. That is how `cnn_jax` computes it, and
# it gives the output-size formula: `(W − 1)·S − 2P + d(K − 1) + output_padding + 1`.

# %%
spread = np.zeros((3, 3), np.float32)
spread[::stride, ::stride] = x  # zeros inserted between the pixels
padded = np.pad(spread, 3 - 1)  # d(K-1) - P = 2 on each side
direct = maths.correlate2d(jnp.asarray(padded), jnp.asarray(kernel[::-1, ::-1]))
print("input spread out and padded:\n", padded)
print(
    "cross-correlated with the flipped kernel equals the stamps:",
    np.array_equal(np.asarray(direct), stamped),
)

# %% [markdown]
# ## View 3: the transpose (the adjoint) of a convolution
#
# A convolution is linear: `y = C x` for a (large, sparse) matrix `C`. The transposed convolution
# with the *same* weight multiplies by `Cᵀ`, which is what backpropagation through the
# convolution needs (`∂L/∂x = Cᵀ ∂L/∂y`) — hence the name, and why it is not an inverse. Check:
# `⟨conv(x), y⟩ = ⟨x, conv_transpose(y)⟩` for random `x`, `y` and weight (equal up to float32
# rounding), and `jax.vjp` of the convolution equals the transposed convolution.

# %%
w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)  # torch layout (out, in, kH, kW)
x6 = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)
conv = lambda x: F.conv2d(x, w, stride=2, padding=1)
y6 = rng.standard_normal(conv(x6).shape).astype(np.float32)
back = F.conv_transpose2d(y6, w, stride=2, padding=1, output_padding=0)
print("conv: 9x9 -> 5x5; transposed conv with the same weight: 5x5 ->", back.shape[1:3])
print("<conv(x), y>            =", float(jnp.vdot(conv(x6), y6)))
print("<x, conv_transpose(y)>  =", float(jnp.vdot(x6, back)))
_, pullback = jax.vjp(conv, jnp.asarray(x6))
print(
    "vjp of conv vs conv_transpose, max |difference| =",
    float(jnp.abs(pullback(jnp.asarray(y6))[0] - back).max()),
)

# %% [markdown]
# ## The convolution-arithmetic pictures
#
# Each picture is the equivalent direct convolution of view 2: the blue cells are the input's
# pixels, the white cells the zeros inserted between them (stride > 1), the grey cells the
# padding `d(K − 1) − P`; a `K`×`K` window (dilated by `d`) slides over it with stride 1 and
# produces the output. The titles give the sizes the layers return.

# %%
settings = [
    dict(size=2, kernel_size=3, stride=1, padding=0),  # "full" padding: 2 -> 4
    dict(size=2, kernel_size=3, stride=2, padding=0),
    dict(size=3, kernel_size=3, stride=2, padding=1),
    dict(size=3, kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(size=5, kernel_size=3, stride=1, padding=2, dilation=2),  # the course's example
]
fig, axes = plt.subplots(1, len(settings), figsize=(3.2 * len(settings), 4.0))
for ax, setting in zip(axes, settings, strict=True):
    size, k, s, p = (setting[key] for key in ("size", "kernel_size", "stride", "padding"))
    d, op = setting.get("dilation", 1), setting.get("output_padding", 0)
    up = cnn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op, dilation=d)
    out = output_shape(up, (1, size, size, 1))[1]
    edge = d * (k - 1) - p
    full = (size - 1) * s + 1 + 2 * edge + op
    for r in range(full):
        for c in range(full):
            inside = [edge <= t < edge + (size - 1) * s + 1 for t in (r, c)]
            real = all(inside) and (r - edge) % s == 0 and (c - edge) % s == 0
            colour = "tab:blue" if real else ("white" if all(inside) else "0.85")
            ax.add_patch(Rectangle((c, r), 1, 1, facecolor=colour, edgecolor="0.5", lw=0.5))
    for u in range(k):  # the first window position, dilated taps
        for v in range(k):
            ax.add_patch(
                Rectangle(
                    (v * d + 0.15, u * d + 0.15), 0.7, 0.7, fill=False, edgecolor="tab:red", lw=1.5
                )
            )
    assert full - d * (k - 1) == out  # the picture's geometry is the layer's
    ax.set(xlim=(0, full), ylim=(full, 0), aspect="equal", xticks=[], yticks=[])
    extra = (f", op={op}" if op else "") + (f", d={d}" if d > 1 else "")
    ax.set_title(f"{size}x{size} -> {out}x{out}\nK={k}, S={s}, P={p}{extra}", fontsize=9)
fig.suptitle("transposed convolutions as direct convolutions (red: the first window)")
plt.tight_layout(rect=(0, 0, 1, 0.93))
plt.show()

# %% [markdown]
# ## `output_padding`: which of several sizes to go back to
#
# A stride-2 convolution (K=3, P=1) maps both 7×7 and 8×8 inputs to 4×4: the floor in its size
# formula loses one pixel. Going back up, a transposed convolution cannot know which was meant;
# by default it returns the smaller (7), `output_padding=1` adds the missing row and column
# (8), and `cnn_jax` also takes the wanted size at call time (`output_size=`, like torch's
# forward argument). `output_padding` must be smaller than the stride (or the dilation).

# %%
for size in (7, 8):
    print(f"Conv2d(K=3, S=2, P=1): {size} ->", maths.conv_output_size(size, 3, padding=1, stride=2))
for op in (0, 1):
    ours = output_shape(
        cnn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=op), (1, 4, 4, 1)
    )[1]
    theirs = torch.nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=op)(
        torch.zeros(1, 1, 4, 4)
    ).shape[-1]
    print(f"ConvTranspose2d(K=3, S=2, P=1, output_padding={op}): 4 -> {ours} (torch: {theirs})")
up = cnn.ConvTranspose2d(1, 1, 3, stride=2, padding=1)
print(
    "output_size=(8, 8) at call time: 4 ->", output_shape(up, (1, 4, 4, 1), output_size=(8, 8))[1]
)

# %% [markdown]
# ## Checkerboard artefacts
#
# When the kernel size is not a multiple of the stride, the stamps of view 1 overlap unevenly:
# with K=3 and S=2 some output pixels receive one stamp per axis and others two. With an
# all-ones kernel on an all-ones input the output *is* the overlap count. With K=4 and S=2
# every interior pixel receives the same number. Upsampling first (nearest neighbour, then a
# 3×3 convolution: "resize-convolution", Odena et al. 2016) gives every output pixel the same
# kernel taps by construction.
#
# The bottom row uses random weights instead (one 16-channel input, one output channel, the
# same constant input): uneven overlap is not the only source — with learned or random kernels,
# a transposed convolution gives each of the `S × S` output phases its own subset of the
# kernel's taps, so even K=4 can draw a pattern, while resize-convolution cannot.


# %%
def transposed(x, w, k):  # K=3: P=1 and output_padding=1; K=4: P=1; both double the size
    return F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1 if k == 3 else 0)


def resize_conv(x, w):
    n, h, wd, c = x.shape
    return F.conv2d(jax.image.resize(x, (n, 2 * h, 2 * wd, c), "nearest"), w, padding=1)


methods = {
    "ConvTranspose K=3, S=2": lambda x, w: transposed(x, w, 3),
    "ConvTranspose K=4, S=2": lambda x, w: transposed(x, w, 4),
    "nearest x2 + Conv K=3": resize_conv,
}
shapes = {  # torch layouts: transposed (in, out, kH, kW), direct (out, in, kH, kW)
    "ConvTranspose K=3, S=2": (16, 1, 3, 3),
    "ConvTranspose K=4, S=2": (16, 1, 4, 4),
    "nearest x2 + Conv K=3": (1, 16, 3, 3),
}
flat = jnp.ones((1, 8, 8, 16))
fig, axes = plt.subplots(2, 3, figsize=(9.5, 6.4))
for col, (name, method) in enumerate(methods.items()):
    for row, weight in enumerate(
        (np.ones(shapes[name], np.float32), rng.standard_normal(shapes[name]).astype(np.float32))
    ):
        out = np.asarray(method(flat, weight))[0, ..., 0]
        axes[row, col].imshow(out[2:-2, 2:-2], cmap="viridis")  # the interior: no border effects
        kind = "all-ones" if row == 0 else "random"
        interior = out[2:-2, 2:-2]
        axes[row, col].set_title(
            f"{name}\n{kind} weights: {interior.min():.1f} to {interior.max():.1f}", fontsize=9
        )
        axes[row, col].axis("off")
fig.suptitle("a constant 8x8 input upsampled to 16x16 (interior shown)")
plt.tight_layout()
plt.show()

# %% [markdown]
# How strong is the pattern, measured over 200 random weight draws? The *checkerboard index*
# below is the spread of the four output phases' means (even/odd row × even/odd column) in the
# interior of the output, relative to the output's overall spread of magnitudes: 0 means no
# phase pattern.


# %%
def checkerboard_index(out):
    inner = np.asarray(out)[0, 2:-2, 2:-2, 0]
    phases = [inner[a::2, b::2].mean() for a in (0, 1) for b in (0, 1)]
    return float(np.std(phases) / np.abs(inner).mean())


for name, method in methods.items():
    index = [
        checkerboard_index(method(flat, rng.standard_normal(shapes[name]).astype(np.float32)))
        for _ in range(200)
    ]
    print(
        f"{name:<24} checkerboard index: mean {np.mean(index):.3f}, median {np.median(index):.3f}"
    )

# %% [markdown]
# What the pictures and the index show:
#
# * With all-ones weights the output is the overlap count: K=3, S=2 alternates between pixels
#   covered by one, two or four stamps; K=4, S=2 is flat. Choosing the kernel size as a
#   multiple of the stride fixes the *counting*.
# * With random weights both transposed convolutions draw the pattern, about equally strongly
#   (compare their indices above): each output phase sums its own subset of the kernel's taps,
#   and nothing makes those sums agree. A trained network can learn phase-balanced kernels, but
#   it starts from this, and the pattern often survives training (Odena et al., *Deconvolution
#   and Checkerboard Artifacts*, 2016).
# * Nearest-neighbour upsampling followed by a convolution has an index of exactly 0: every
#   output pixel of a constant input sees the same taps. That is why many decoders and
#   generators upsample and then convolve, or initialise their transposed convolutions so that
#   the phases agree.
#
# The backward pass of a strided convolution is a transposed convolution (view 3), so the same
# uneven overlap appears in the gradients that flow back through stride-2 layers.

# %% [markdown]
# Upsampling here is `jax.image.resize`; for ×2 upsampling its `'nearest'` and `'bilinear'`
# methods compute what torch's `nn.Upsample` / `F.interpolate` (`align_corners=False`) do:

# %%
image = rng.standard_normal((1, 5, 5, 2)).astype(np.float32)
for method in ("nearest", "bilinear"):
    ours = jax.image.resize(image, (1, 10, 10, 2), method)
    theirs = torch.nn.functional.interpolate(
        torch.tensor(nhwc_to_nchw(image)), scale_factor=2, mode=method
    )
    difference = float(np.abs(np.asarray(ours) - nchw_to_nhwc(theirs)).max())
    print(f"{method:<8}: max |jax.image.resize - torch interpolate| = {difference:.1e}")
