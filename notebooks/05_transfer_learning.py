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
# # 5. Transfer learning
#
# Train a network on one task, then reuse what it learned for a related task with few labels:
# keep the convolutional backbone, replace the head. With `cnn_jax` this is configuration:
#
# * `init_from=<work directory>` starts from another run's best checkpoint,
# * `init_exclude='classifier'` keeps a fresh head (the new task has its own classes),
# * `freeze='features'` trains only the head (a frozen feature extractor); leave it empty to
#   fine-tune everything, or use `lr_multipliers='features=0.1'` for a slower backbone.
#
# Source task: digits 0–4. Target task: digits 5–9, with only 5 labelled images per class.

# %%
import tempfile

import jax
import numpy as np

from cnn_jax import data, runtime
from cnn_jax import train as T
from cnn_jax.inspect import plots

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
runtime.apply()

V = data.variants
data.register("digits-0to4", lambda **kw: V.select_classes(data.load("digits", **kw), range(5)))
data.register(
    "digits-5to9-few",
    lambda **kw: V.subset(V.select_classes(data.load("digits", **kw), range(5, 10)), 5),
)
target = data.load("digits-5to9-few", image_size=32)
print({k: len(v) for k, v in target.items()}, "| classes:", target["train"].num_classes)
order = np.argsort(target["train"].labels, kind="stable")  # by class
plots.images(
    target["train"].images[order],
    labels=[f"digit {int(label) + 5}" for label in target["train"].labels[order]],
    cols=5,
    title="every labelled image the target task gets: 5 per class (one row per class)",
)

# %%
root = tempfile.mkdtemp()


def run(name, **overrides):
    config = T.default_config()
    config.update({"model": "convnet", "image_size": 32, "workdir": f"{root}/{name}", **overrides})
    return T.fit(config, log=lambda *a: None)


source = run("source", dataset="digits-0to4", epochs=10)
print(f"source task (0-4): test accuracy {source['test_accuracy']:.3f}")

few = dict(dataset="digits-5to9-few", epochs=12, batch_size=5, lr=3e-3, schedule="constant")
pretrained = dict(init_from=f"{root}/source", init_exclude="classifier")
results = {
    "frozen backbone + new head": run("frozen", **few, **pretrained, freeze="features"),
    "fine-tune all": run("finetune", **few, **pretrained),
    "from scratch": run("scratch", **few),
}
for name, summary in results.items():
    print(f"{name:<28} test accuracy on 5-9: {summary['test_accuracy']:.3f}")

# %% [markdown]
# What was loaded, and what was not: the frozen run's backbone is bit-identical to the source
# run's. Its head has the same shape as the source's (both tasks have five classes), so the
# shape cannot tell. The values can: `init_exclude='classifier'` kept the head out of what was
# loaded, so it started from a fresh initialisation and is the only part that trained.

# %%
source_run, frozen_run = T.load_run(f"{root}/source"), T.load_run(f"{root}/frozen")


def same(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


source_params, frozen_params = source_run.state.params, frozen_run.state.params
print("backbone equal to the source's:", same(source_params["features"], frozen_params["features"]))
print(
    "head equal to the source's:    ",
    same(source_params["classifier"], frozen_params["classifier"]),
)
print(
    "head weight shapes: source",
    source_params["classifier"]["3"]["weight"].shape,
    "| target",
    frozen_params["classifier"]["3"]["weight"].shape,
)
plots.bars(
    {k: [v["test_accuracy"] for v in [s]] for k, s in results.items()},
    ylabel="test accuracy (digits 5-9)",
    title="5 labels per class, one seed",
)

# %% [markdown]
# ## From a torchvision weights file
#
# The same settings take a torchvision `state_dict` file: `init_from` accepts a `.pth` / `.pt`
# file, a `.safetensors` file, or `torchvision:NAME[:WEIGHTS]` (torch hub's cache), besides a work
# directory. Nothing is downloaded here, so the file below holds torchvision's own
# *initialisation* of resnet18 rather than its ImageNet training; with the published
# `resnet18-f37072fd.pth` every line below is the same, and the accuracies are what changes.
#
# The file's head has 1000 classes and the target task has 5: loading it whole is refused in one
# line that names the setting to add.

# %%
import torch

from cnn_jax.interop import weights as W
from cnn_jax.testing.torch_models import torchvision_models

# torchvision's model definitions (need only torch.nn; its compiled operators are not needed).
tv = torchvision_models()
torch.manual_seed(0)
torch.save(tv.resnet18().state_dict(), f"{root}/resnet18.pth")
from_file = dict(model="resnet18", init_from=f"{root}/resnet18.pth")
try:
    run("refused", **few, **from_file)
except Exception as err:
    print(f"{type(err).__name__}: {str(err).replace(root + '/', '')}")  # paths under root

# %% [markdown]
# With `init_exclude='fc'` the head starts fresh with 5 classes; `freeze` names the early
# layers to keep (their BatchNorm layers stay in inference mode). A 1000-class head marks the
# file as ImageNet weights, so the run takes torchvision's preprocessing: the digits are
# repeated to 3 channels and normalised with ImageNet's mean and std (recorded in the run's
# config). `image_size=32` is set, so the weights' 224x224 is not used.

# %%
frozen_early = "conv1,bn1,layer1,layer2"
# Six epochs rather than twelve: each epoch's checkpoint holds resnet18's 11M parameters and
# AdamW's two moments.
tuned = run("resnet18", **few | {"epochs": 6}, **from_file, init_exclude="fc", freeze=frozen_early)
tuned_run = T.load_run(f"{root}/resnet18")
print(f"resnet18 from the file, {frozen_early} frozen: test accuracy {tuned['test_accuracy']:.3f}")
print(
    "recorded preprocessing:", tuned_run.config.normalize, "| channels", tuned_run.config.channels
)

# %% [markdown]
# And back: `export_workdir` (the command line's `cnn-jax export WORKDIR OUT`) writes the best
# checkpoint in torchvision's layout. torchvision's resnet18 with 5 classes loads it with
# `strict=True` and gives the same logits on the same normalised test images.

# %%
exported = T.export_workdir(
    f"{root}/resnet18",
    f"{root}/resnet18-digits.safetensors",
    log=lambda line: print(line.replace(root + "/", "")),
)
model = tv.resnet18(num_classes=5)
model.load_state_dict({k: torch.from_numpy(v) for k, v in W.read_state_dict(exported).items()})
images = tuned_run.normalize(tuned_run.splits["test"].images[:16])
ours = np.asarray(tuned_run.model.apply(tuned_run.variables, images, train=False))
with torch.no_grad():
    theirs = model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
print(f"largest logit difference, cnn_jax vs torchvision: {np.abs(ours - theirs).max():.1e}")
print("same predictions:", bool((ours.argmax(1) == theirs.argmax(1)).all()))

# %% [markdown]
# One seed, one label budget. Whether a pre-trained backbone helps depends on how general its
# features are for the new task: features learned from five digit classes by a 24k-parameter
# network are not ImageNet features. `experiments/course/transfer_learning.py` repeats this over
# three seeds and 1–30 labels per class; its table in `experiments/README.md` says what the data
# supports.
