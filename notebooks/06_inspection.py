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
# # 6. Inspecting a CNN: what it learned, where it looks, how its gradients flow
#
# `cnn_jax.inspect` answers the course's debugging questions on a trained model: the layer table
# (shapes, parameters, receptive fields), the first layer's filters, the feature maps of an
# image, saliency maps (which pixels move the score), and per-layer gradient norms (is anything
# vanishing?). `cnn_jax.inspect.plots` draws each of them.

# %%
import tempfile
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from IPython.display import display

from cnn_jax import inspect as I
from cnn_jax import models, runtime
from cnn_jax import train as T
from cnn_jax.inspect import plots

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
runtime.apply()

# A plain CNN (three conv-ReLU-pool blocks) with a dense head, trained briefly on the digits.
models.register("convnet_dense", replace=True)(lambda **kw: models.convnet(head="flatten", **kw))
config = T.default_config()
config.update(dict(model="convnet_dense", image_size=32, epochs=6, workdir=tempfile.mkdtemp()))
summary = T.fit(config, log=lambda *a: None)
run = T.load_run(config.workdir)
print(f"convnet on the digits: test accuracy {summary['test_accuracy']:.3f}")
print(I.summary(run.model, (1, 32, 32, 1)))

# %% [markdown]
# The receptive field (RF) column: one output pixel of `features.6` sees an 18×18 patch of the
# input; each 3×3 convolution adds 2 × the jump (the product of the strides before it), each
# pooling multiplies the jump by 2.
#
# ## Filters of the first layer

# %%
plots.filters(I.first_conv_filters(run.model, run.variables), title="conv 1: sixteen 3x3 filters")

# %% [markdown]
# ## Feature maps: what each layer passes on

# %%
test = run.splits["test"]
x = jnp.asarray(run.normalize(test.images[:1]))
maps = I.intermediates(run.model, run.variables, x, ["features.1", "features.4", "features.7"])
for name, m in maps.items():
    display(plots.feature_maps(m, max_maps=8, cols=8, title=f"{name}: {m.shape[1]}x{m.shape[2]}"))

# %% [markdown]
# ## Saliency: which pixels change the predicted score
#
# `|∂ logit / ∂ pixel|` (vanilla gradients), the maximum over channels.

# %%
images = test.images[:6]
x = jnp.asarray(run.normalize(images))
# jax.jit: one compiled program for the gradient (run op by op, each operation would compile)
sal = jax.jit(partial(I.saliency, run.model))(run.variables, x)
pred = np.asarray(jax.jit(partial(run.model.apply, train=False))(run.variables, x)).argmax(-1)
plots.saliency(
    images, sal, labels=[f"{t} -> {p}" for t, p in zip(test.labels[:6], pred, strict=True)]
)

# %% [markdown]
# ## Gradient flow: per-layer gradient norms
#
# A deeper network of the same family (`convnet` with two convolutions per block, six in all,
# and global average pooling), freshly initialised twice: with ReLU and with sigmoid
# activations. Relative to the last layer's gradient, the first layer's is orders of magnitude
# smaller with sigmoid than with ReLU (the ratios are printed above the figure): sigmoid's
# gradients vanish with depth, the problem ReLU largely avoids.
# `experiments/course/activations.py` measures it over seeds, and what it does to training.

# %%
train = run.splits["train"]
xb, yb = jnp.asarray(run.normalize(train.images[:128])), jnp.asarray(train.labels[:128])
norms = {}
for act in ("relu", "sigmoid"):
    model = models.create("convnet", activation=act, convs_per_block=2)
    # One compiled program for the initialisation, at -O2: XLA:CPU's default -O3 spends seconds
    # on every new shape of random numbers, and a program that runs once needs no -O3.
    init = jax.jit(
        partial(model.init, train=False), compiler_options={"xla_backend_optimization_level": 2}
    )
    variables = init(jax.random.key(0), xb[:1])
    norms[act] = I.layer_gradient_norms(model, variables, xb, yb)
    values = list(norms[act].values())
    print(f"{act:<8} gradient norm, first layer / last layer: {values[0] / values[-1]:.1e}")
layers = list(norms["relu"])
plots.mean_std(
    range(1, len(layers) + 1),
    {act: list(n.values()) for act, n in norms.items()},
    xlabel="layer (input -> output)",
    ylabel="||dL/dW||",
    logy=True,
    title="gradient norm per layer at initialisation",
)
