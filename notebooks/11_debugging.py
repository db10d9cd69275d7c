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
# # 11. Debugging a model
#
# A network that trains badly rarely says why. The course's debugging habits, each as a check
# that takes seconds:
#
# 1. **Overfit one batch.** A correct model and training step drive the loss on a single small
#    batch to zero; if they cannot, something is broken before data or capacity matter.
# 2. **Look at the gradient of every layer.** Vanishing, exploding or exactly-zero gradients
#    show where the signal stops.
# 3. **Count dead ReLUs.** A unit whose input is negative for every image outputs zero, passes
#    no gradient, and never recovers.
# 4. **Find the first NaN.** `cnn_jax`'s `debug=True` step names what went non-finite.
# 5. **Check what the model looks at.** A model can be right for the wrong reason, and
#    validation data with the same bias cannot tell (the course's "snow detector").
#
# One small network throughout: `convnet` (three conv-ReLU-pool blocks, global average
# pooling) on the digits at 16×16, Adam.

# %%
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import traverse_util
from IPython.display import Image, display

import cnn_jax.nn as cnn
from cnn_jax import data, models, runtime
from cnn_jax import inspect as I
from cnn_jax import train as T
from cnn_jax.inspect import plots

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
runtime.apply()

digits = data.load("digits", image_size=16)
model = models.create("convnet")
batch = next(data.batches(digits["train"], 32, shuffle=True, seed=0))  # image, label, mask
# optax.inject_hyperparams keeps the learning rate in the optimiser state, so one compiled
# step serves every learning rate below (T.make_optimizer bakes it into the program).
tx = optax.inject_hyperparams(optax.adam)(learning_rate=3e-3)
state0 = T.create_train_state(model, tx, jax.random.PRNGKey(0), batch["image"][:1])
step = jax.jit(T.train_step)


def with_lr(state, lr):
    hyper = state.opt_state.hyperparams
    lr = jnp.full_like(hyper["learning_rate"], lr)
    return state.replace(
        opt_state=state.opt_state._replace(hyperparams={**hyper, "learning_rate": lr})
    )


# %% [markdown]
# ## 1. Overfit one batch
#
# 32 images, 150 steps, twice: at Adam's usual learning rate and at one a hundred times too
# large.

# %%
trained, losses = {}, {}
for name, lr in (("lr 3e-3", 3e-3), ("lr 0.3 (too large)", 0.3)):
    state, losses[name] = with_lr(state0, lr), []
    for _ in range(150):
        state, metrics = step(state, batch)
        losses[name].append(float(metrics["loss"]))
    trained[name] = state
    _, final = step(state, batch)
    print(
        f"{name:<19} loss {losses[name][0]:.3f} -> {losses[name][-1]:.2e}, "
        f"batch accuracy {float(final['accuracy']):.2f}"
    )

fig, ax = plt.subplots(figsize=(6.5, 3.5))
for name, values in losses.items():
    ax.plot(values, label=name)
ax.set(
    yscale="log",
    xlabel="step",
    ylabel="training loss on the one batch",
    title="overfitting one batch of 32",
)
ax.grid(alpha=0.3), ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# At 3·10⁻³ the loss falls by orders of magnitude and every image of the batch is classified
# correctly: the model, the loss and the step can learn. At 0.3 the loss stalls far above
# zero. Had this been the first run of a new model, the check would say: fix this before
# training on the full data.
#
# ## 2. The gradient of every layer
#
# The gradient of the loss with respect to each layer's weight, at initialisation and after
# the two runs (on the same batch). `cnn_jax.inspect.layer_gradient_norms` computes these too
# (notebook 6 uses it); here the computation is written out, jitted once, to show there is
# nothing more to it than `jax.grad`.


# %%
def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["image"], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


@jax.jit
def weight_grad_norms(params, batch):
    grads = traverse_util.flatten_dict(jax.grad(loss_fn)(params, batch), sep=".")
    return {
        k[: -len(".weight")]: jnp.linalg.norm(g) for k, g in grads.items() if k.endswith(".weight")
    }


norms = {"initialisation": weight_grad_norms(state0.params, batch)}
norms.update({name: weight_grad_norms(s.params, batch) for name, s in trained.items()})
layers = [
    r.name for r in I.layers(model, batch["image"].shape) if r.name in norms["initialisation"]
]
print(f"{'layer':<14}", "".join(f"{name:>22}" for name in norms))
for layer in layers:
    print(f"{layer:<14}", "".join(f"{float(n[layer]):>22.2e}" for n in norms.values()))

fig, ax = plt.subplots(figsize=(6.5, 3.5))
for name, n in norms.items():
    values = [max(float(n[layer]), 1e-12) for layer in layers]  # 0 drawn at 1e-12
    ax.plot(layers, values, marker="o", label=name)
ax.set(yscale="log", ylabel="‖∂L/∂W‖ (0 drawn at 1e-12)", title="gradient norm per layer")
ax.grid(alpha=0.3), ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# At initialisation every layer receives a gradient, the first convolution a smaller one than
# the later layers. After the healthy run they are all small: the batch is learned. The run at
# 0.3 has gradients of exactly zero in every layer although its loss is high: nothing can
# change any more. A high loss with zero gradients is the signature of dead units.
#
# ## 3. Dead ReLUs
#
# For every ReLU layer: the fraction of its channels that output zero at every position of
# every one of 256 training images.

# %%
is_relu = lambda module, method: isinstance(module, cnn.ReLU) and method == "__call__"


@jax.jit
def probe(params, images):
    """The logits, and per ReLU layer the fraction of channels that are zero everywhere."""
    logits, state = model.apply(
        {"params": params},
        images,
        train=False,
        mutable=["intermediates"],
        capture_intermediates=is_relu,
    )
    relus = jax.tree.leaves(state["intermediates"])
    return logits, [jnp.mean(jnp.max(a, axis=(0, 1, 2)) <= 0) for a in relus]


images = jnp.asarray(digits["train"].normalize(digits["train"].images[:256]))
states = {"initialisation": state0, **trained}
for name, s in states.items():
    _, dead = probe(s.params, images)
    print(f"{name:<19} dead channels per ReLU layer:", " ".join(f"{float(d):.2f}" for d in dead))

# %% [markdown]
# At initialisation almost no channel is dead; after the healthy run, some of the last layer's
# channels are (this batch does not need them). After the large learning rate the second and
# third ReLU layers are dead entirely: large updates pushed their inputs below zero for every
# image, their gradient is zero, and no optimiser step can bring them back. Remedies: a
# smaller learning rate (or a warmup), BatchNorm before the ReLU, or an activation with a
# non-zero slope for negative inputs.
#
# ## 4. Hunting a NaN
#
# A single NaN pixel (a corrupt image, a division by a zero standard deviation) makes the loss
# NaN, the gradients NaN, and after one update almost every parameter NaN. The plain step does not
# stop: it reports `finite=False` in its metrics (the loop, `fit`, checks that after every step
# and stops the run with "training diverged ... at step N").

# %%
broken = {**batch, "image": batch["image"].copy()}
broken["image"][3, 5, 5, 0] = np.nan
after, metrics = step(state0, broken)
nan_params = sum(int(jnp.isnan(p).sum()) for p in jax.tree.leaves(after.params))
total = sum(p.size for p in jax.tree.leaves(after.params))
print(
    f"plain step: loss {float(metrics['loss'])}, finite {bool(metrics['finite'])}, "
    f"{nan_params:,} of {total:,} parameters NaN after one update"
)

# %% [markdown]
# `make_train_step(debug=True)` checks, with `jax.experimental.checkify` inside the compiled
# step, that the pixels, the labels, the loss and every gradient are valid, and raises an error
# that says which one was not (it is slower: for debugging only). The same broken batch, and one
# with a label that is not a class of the model:

# %%
debug_step = T.make_train_step(debug=True)
bad_label = {**batch, "label": batch["label"].copy()}
bad_label["label"][0] = 10
for name, b in (("NaN pixel", broken), ("label 10", bad_label)):
    try:
        debug_step(state0, b)
    except ValueError as err:
        print(f"{name}: {type(err).__name__}: {str(err).splitlines()[0]}")

# %% [markdown]
# Inside your own code, JAX's `debug_nans` mode finds the first operation that produced a NaN:
# it re-runs a failing function operation by operation and raises at the culprit.


# %%
def log_margin(x):
    return jnp.log(x - 1.0).sum()  # NaN for any x < 1


with jax.debug_nans(True):
    try:
        log_margin(jnp.array([3.0, 0.5]))
    except FloatingPointError as err:
        print("FloatingPointError:", str(err).splitlines()[0])

# %% [markdown]
# ## 5. The snow detector
#
# The course's story: a "husky vs wolf" classifier that was really a snow detector, because
# every wolf photo had snow. Here the snow is a faint striped background
# (`cnn_jax.data.variants.spurious_cue`) on *every* 0 and on no other digit in the training and
# validation data; in the test data the stripes are on half of every class, independent of the
# label.

# %%
V = data.variants
snow = V.spurious_cue(digits, cue_class=0, train_correlation=1.0, test_correlation=0.5)
test = snow["test"]
cue, zero = V.cue_mask(test), test.labels == 0
shown = np.concatenate(
    [
        np.flatnonzero(zero & cue)[:3],
        np.flatnonzero(~zero & cue)[:3],
        np.flatnonzero(~zero & ~cue)[:3],
    ]
)

state = state0
for epoch in range(8):
    for b in data.batches(snow["train"], 32, shuffle=True, seed=0, epoch=epoch):
        state, _ = step(state, b)


def accuracy(split, mask=None):
    logits, _ = probe(state.params, jnp.asarray(snow["train"].normalize(split.images)))
    right = np.asarray(logits).argmax(-1) == split.labels
    return float(right.mean() if mask is None else right[mask].mean()), np.asarray(logits).argmax(
        -1
    )


val_accuracy, _ = accuracy(snow["validation"])
test_accuracy, predicted = accuracy(test)
print(f"validation accuracy {val_accuracy:.3f} (the stripes mean 0 here too)")
print(f"test accuracy       {test_accuracy:.3f}")
print(f"striped digits that are not 0, called 0: {(predicted[cue & ~zero] == 0).mean():.2f}")
print(f"plain 0s (no stripes) recognised:       {(predicted[~cue & zero] == 0).mean():.2f}")
print(
    f"images the stripes do not mislead:      {(predicted[cue == zero] == test.labels[cue == zero]).mean():.2f}"
)
plots.images(
    test.images[shown],
    labels=[f"{t} -> {p}" for t, p in zip(test.labels[shown], predicted[shown], strict=True)],
    cols=9,
    title="test digits, label -> prediction: striped 0s, striped others, plain others",
)

# %% [markdown]
# Validation accuracy is as high as on clean digits, because the validation data carry the same
# bias. On the test data, where the stripes say nothing about the label, accuracy drops: many
# striped non-zeros are called 0, and most plain 0s are missed, while the images on which the
# stripes agree with the label are nearly all right. The model learned "stripes mean 0" as much
# as the shapes of the digits. Nothing in the training or validation numbers shows it; only data
# on which the shortcut fails, or looking at where the model looks, does.
#
# `experiments/course/spurious_cue.py` runs the same test at 32×32, over three seeds, with the
# fix the course names (representative training data: stripes independent of the label), and
# looks at saliency maps (`cnn_jax.inspect.saliency`: which pixels move the predicted score).
# From its results file:

# %%
found = json.loads(Path("../experiments/results/course/spurious_cue/results.json").read_text())
prov = found["provenance"]  # how the file was made (experiments/record.py)
print("command:", prov["command"], "|", prov["machine"]["cpu"], prov["machine"]["cores"], "cores")
for setup, seeds in found["setups"].items():
    mean = {k: np.mean([s[k] for s in seeds]) for k in seeds[0]}
    print(
        f"{setup}: val {mean['val_accuracy']:.3f}, test {mean['test_accuracy']:.3f}, "
        f"striped non-0 called 0 {mean['striped_called_cue_class']:.2f}, "
        f"saliency on the background {mean['saliency_on_background']:.2f}"
    )
display(Image(filename="../experiments/results/course/spurious_cue/saliency.png"))

# %% [markdown]
# At 32×32 and 20 epochs the biased model calls every striped non-zero a 0, and most of its
# saliency falls on the background (top rows of the figure: striped test digits that are not 0,
# with their saliency maps); trained on representative data, the same network is as accurate on
# the test data as on validation and its saliency follows the strokes (bottom rows). The fix the
# course names, more representative data, works.
