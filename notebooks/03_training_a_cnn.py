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
# # 3. Training a CNN
#
# The course's training loop — forward, loss, backward, optimiser step, evaluate, keep the best
# model — is `cnn_jax.train.fit`, the same function `cnn-jax train` runs. A run lives in a work
# directory (config, metrics per epoch, checkpoints, summary) and can be loaded back. Here:
# LeNet-5 on the embedded digits (no download), a few epochs.

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np

from cnn_jax import runtime
from cnn_jax import train as T
from cnn_jax.inspect import plots

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
runtime.apply()

workdir = tempfile.mkdtemp(prefix="lenet5-")
config = T.default_config()  # LeNet-5, digits at 32x32, Adam 2e-3, cosine schedule
config.epochs = 8
config.workdir = workdir
print(
    {
        k: config[k]
        for k in ("model", "dataset", "optimizer", "lr", "schedule", "batch_size", "epochs")
    }
)

# %%
summary = T.fit(config)

# %% [markdown]
# Every epoch is a record in `metrics.jsonl`; the best checkpoint (highest validation accuracy)
# is the one tested. `plots.curves` draws the history with the best epoch marked.

# %%
history = T.RunDir(workdir).read_history()
best_epoch = summary["best_step"] // history[0]["step"]
plots.curves(history, best_epoch=best_epoch, title="LeNet-5 on the digits")

# %% [markdown]
# ## The trained model, back from its work directory
#
# `load_run` rebuilds the model and data from the stored config and restores the best
# checkpoint: predictions, per-class errors, and evaluation of any images.

# %%
run = T.load_run(workdir)
test = run.splits["test"]
logits = run.model.apply(run.variables, run.normalize(test.images), train=False)
predicted = np.asarray(logits).argmax(-1)
print(
    "test accuracy:", (predicted == test.labels).mean(), "| summary says", summary["test_accuracy"]
)

confusion = np.zeros((10, 10), int)
np.add.at(confusion, (test.labels, predicted), 1)
fig, ax = plt.subplots(figsize=(4.5, 4))
ax.imshow(confusion, cmap="Blues")
for i in range(10):
    for j in range(10):
        if confusion[i, j]:
            ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=7)
ax.set(
    xlabel="predicted",
    ylabel="true",
    title="confusion matrix (test)",
    xticks=range(10),
    yticks=range(10),
)
plt.show()

# %% [markdown]
# ## Resuming, and refusing to lie
#
# Running the same config again in the same work directory does not retrain: the run is
# finished, and `fit` reports its summary. Changing a setting that alters what the run computes
# is refused, rather than silently mixing two runs in one directory.

# %%
T.fit(config)
config.lr = 0.1
try:
    T.fit(config)
except T.WorkdirError as err:
    print("refused:", err)
