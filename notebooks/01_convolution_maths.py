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
# # 1. Convolution maths
#
# What a "convolutional" layer computes, how big its output is, and why backpropagation through
# it is again a convolution — each claim of the course checked with `cnn_jax` against PyTorch.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits

import cnn_jax.nn as cnn
from cnn_jax import functional as F
from cnn_jax import maths, runtime

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
_ = runtime.apply()

# %% [markdown]
# ## Cross-correlation, not convolution
#
# A deep-learning "convolution" slides the kernel over the image *without flipping it*:
# `out[i, j] = Σ image[i+u, j+v] · kernel[u, v]` (cross-correlation). The textbook convolution
# flips the kernel first. They agree only for symmetric kernels.

# %%
image = jnp.arange(25.0).reshape(5, 5)
kernel = jnp.array([[1.0, 2.0], [0.0, -1.0]])
corr, conv = maths.correlate2d(image, kernel), maths.convolve2d(image, kernel)
theirs = torch.nn.functional.conv2d(
    torch.tensor(np.asarray(image))[None, None], torch.tensor(np.asarray(kernel))[None, None]
)[0, 0].numpy()
print("cross-correlation:\n", corr)
print("textbook convolution (flipped kernel):\n", conv)
print("torch.nn.functional.conv2d equals the cross-correlation:", np.allclose(theirs, corr))

# %% [markdown]
# ## The output-size formula
#
# Along one axis, a convolution with input size W, kernel K, padding P, stride S and dilation d
# gives `⌊(W + 2P − d(K−1) − 1) / S⌋ + 1` outputs. Below: the formula against the shape a
# `cnn_jax.nn.Conv2d` and a `torch.nn.Conv2d` actually produce, for a grid of settings.

# %%
rows = []
x = jnp.zeros((1, 28, 28, 1))
for k, p, s, d in [
    (3, 0, 1, 1),
    (3, 1, 1, 1),
    (5, 2, 2, 1),
    (3, 2, 1, 2),
    (4, 1, 3, 1),
    (7, 3, 2, 1),
]:
    layer = cnn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)
    ours = layer.apply(layer.init(jax.random.key(0), x), x).shape[1]
    torch_size = torch.nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)(
        torch.zeros(1, 1, 28, 28)
    ).shape[-1]
    rows.append((k, p, s, d, maths.conv_output_size(28, k, p, s, d), ours, torch_size))
print(" K  P  S  d  formula  cnn_jax  torch")
for row in rows:
    print("{:2d} {:2d} {:2d} {:2d} {:8d} {:8d} {:6d}".format(*row))
assert all(r[4] == r[5] == r[6] for r in rows)

# %% [markdown]
# Transposed convolution runs the formula backwards, `(W − 1)S − 2P + d(K−1) + output_padding + 1`:
# a stride-2 transposed convolution doubles the size that a stride-2 convolution halved.

# %%
up = cnn.ConvTranspose2d(1, 1, 4, stride=2, padding=1)
small = jnp.zeros((1, 14, 14, 1))
print(
    "14 ->",
    up.apply(up.init(jax.random.key(0), small), small).shape[1],
    "(formula:",
    maths.conv_transpose_output_size(14, 4, stride=2, padding=1),
    ")",
)

# %% [markdown]
# ## What an edge filter sees
#
# A vertical-edge kernel (Sobel) cross-correlated with a digit: strong responses where the
# intensity changes from left to right.

# %%
digit = jnp.asarray(load_digits().images[0], jnp.float32)
sobel_x = jnp.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, (img, title) in zip(
    axes,
    [
        (digit, "digit"),
        (maths.correlate2d(digit, sobel_x), "vertical edges"),
        (maths.correlate2d(digit, sobel_x.T), "horizontal edges"),
    ],
    strict=True,
):
    ax.imshow(img, cmap="gray"), ax.set_title(title), ax.axis("off")
plt.show()

# %% [markdown]
# ## ∂L/∂W is a cross-correlation too
#
# For `Y = X ⋆ W`, the gradient of a loss with respect to the kernel is the cross-correlation of
# the input with the upstream gradient ∂L/∂Y, and ∂L/∂X is the transposed convolution of ∂L/∂Y with
# W. `cnn_jax.maths` writes both out; `jax.grad` and torch's autograd must agree with them.

# %%
key_x, key_w, key_g = jax.random.split(jax.random.key(0), 3)
X = jax.random.normal(key_x, (2, 9, 9, 3))
W = jax.random.normal(key_w, (4, 3, 3, 3))  # torch layout (out, in, kH, kW)
G = jax.random.normal(key_g, (2, 5, 5, 4))  # upstream gradient dL/dY: 9x9, K=3, P=1, S=2 -> 5x5


def loss(W, X):
    return jnp.sum(F.conv2d(X, W, stride=2, padding=1) * G)


dW, dX = jax.grad(loss, argnums=(0, 1))(W, X)
print(
    "dL/dW: autodiff vs correlation formula, max |diff| =",
    float(jnp.abs(dW - maths.conv2d_weight_grad(X, G, 3, stride=2, padding=1)).max()),
)
print(
    "dL/dX: autodiff vs transposed-convolution formula, max |diff| =",
    float(jnp.abs(dX - maths.conv2d_input_grad(G, W, (9, 9), stride=2, padding=1)).max()),
)
Xt = torch.tensor(np.asarray(X).transpose(0, 3, 1, 2), requires_grad=True)
Wt = torch.tensor(np.asarray(W), requires_grad=True)
(
    torch.nn.functional.conv2d(Xt, Wt, stride=2, padding=1)
    * torch.tensor(np.asarray(G).transpose(0, 3, 1, 2))
).sum().backward()
print(
    "dL/dW: cnn_jax vs torch autograd, max |diff| =",
    float(np.abs(np.asarray(dW) - Wt.grad.numpy()).max()),
)
