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
# # 2. Layers and shapes, side by side with PyTorch
#
# Every `cnn_jax.nn` layer has `torch.nn`'s name, arguments and numerics; only the layout
# differs: JAX images are **NHWC** (channels last), torch's are NCHW. Here each layer is built
# both ways with the *same* weights (`cnn_jax.interop.from_torch` loads a torch `state_dict`),
# run on the same input, and compared.

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch

import cnn_jax.nn as cnn
import cnn_jax.testing.torch_models as twins
from cnn_jax.inspect import summary
from cnn_jax.interop import from_torch
from cnn_jax.models import create

torch.manual_seed(0)
x_nhwc = np.random.default_rng(0).standard_normal((4, 13, 13, 3)).astype(np.float32)
x_nchw = torch.tensor(x_nhwc.transpose(0, 3, 1, 2).copy())

# %%
pairs = {
    "Conv2d(3, 8, 3, stride=2, padding=1)": (
        cnn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
    ),
    "Conv2d dilation=2, groups=3": (
        cnn.Conv2d(3, 6, 3, dilation=2, groups=3),
        torch.nn.Conv2d(3, 6, 3, dilation=2, groups=3),
    ),
    "ConvTranspose2d(3, 4, 3, stride=2)": (
        cnn.ConvTranspose2d(3, 4, 3, stride=2),
        torch.nn.ConvTranspose2d(3, 4, 3, stride=2),
    ),
    "MaxPool2d(3, 2, ceil_mode=True)": (
        cnn.MaxPool2d(3, 2, ceil_mode=True),
        torch.nn.MaxPool2d(3, 2, ceil_mode=True),
    ),
    "AvgPool2d(3, 2, 1, count_include_pad=False)": (
        cnn.AvgPool2d(3, 2, 1, count_include_pad=False),
        torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False),
    ),
    "AdaptiveAvgPool2d(5)": (cnn.AdaptiveAvgPool2d(5), torch.nn.AdaptiveAvgPool2d(5)),
    "BatchNorm2d(3), training": (cnn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)),
}
differences = {}
for name, (ours, theirs) in pairs.items():
    training = "training" in name
    theirs.train(training)
    variables = from_torch(ours, theirs.state_dict(), sample_input=jnp.asarray(x_nhwc))
    kwargs = {"train": True, "mutable": ["batch_stats"]} if training else {}
    out = ours.apply(variables, x_nhwc, **kwargs)
    out = out[0] if training else out
    with torch.no_grad():
        expected = theirs(x_nchw).numpy().transpose(0, 2, 3, 1)
    assert out.shape == expected.shape, name
    differences[name] = float(np.abs(np.asarray(out) - expected).max())
    print(f"{name:<48} output {tuple(out.shape)}  max |ours - torch| = {differences[name]:.1e}")

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.barh(list(differences), [max(v, 1e-9) for v in differences.values()])
ax.set_xscale("log"), ax.set_xlabel("max |cnn_jax - torch| (float32; 1e-9 = identical)")
ax.axvline(1e-5, color="grey", ls="--")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Whole models
#
# The same holds for networks: `cnn_jax.models` use torchvision's module names, so a torch
# `state_dict` loads with no glue. LeNet-5 (the course's first CNN), eval mode:

# %%
twin = twins.restatement("lenet5").eval()
model = create("lenet5")
digits = np.random.default_rng(1).standard_normal((8, 32, 32, 1)).astype(np.float32)
variables = from_torch(model, twin.state_dict(), sample_input=jnp.asarray(digits))
with torch.no_grad():
    expected = twin(torch.tensor(digits.transpose(0, 3, 1, 2).copy())).numpy()
ours = np.asarray(model.apply(variables, digits, train=False))
print("LeNet-5 logits, max |ours - torch| =", float(np.abs(ours - expected).max()))
print(summary(model))
