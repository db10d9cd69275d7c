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
# # 10. Optimisers and the learning rate
#
# "The learning rate is the single most important hyperparameter" (Bengio, quoted in the
# course). This notebook shows what the optimisers of `cnn_jax.train.make_optimizer` do on a
# problem small enough to draw, plots the learning-rate schedules of `make_schedule`, runs a
# learning-rate range test on the digits to pick a learning rate in a minute instead of a sweep,
# and compares its suggestion with the course experiment that swept optimisers and learning
# rates over seeds.

# %%
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import display

from cnn_jax import data, models, runtime
from cnn_jax import train as T
from cnn_jax.inspect import plots

# cnn_jax's XLA and allocator settings for the whole process, before anything runs JAX, so
# that this notebook's own jax.jit programs compile as cnn_jax's do (cnn_jax.runtime).
_ = runtime.apply()

# %% [markdown]
# ## The optimisers on a long, narrow valley
#
# `f(x, y) = x²/2 + 10·y²`: the curvature along `y` is 20 times that along `x`, the shape that
# makes plain gradient descent slow (a step small enough not to bounce across the valley is
# tiny along it). Each optimiser starts at the same point and takes 40 steps at one learning
# rate. Optimisers are optax gradient transformations, so they work on any pytree of
# parameters, here a single vector.

# %%
valley = lambda w: 0.5 * w[0] ** 2 + 10.0 * w[1] ** 2
start = jnp.array([-9.0, 1.5])
settings = {"sgd": 0.09, "momentum": 0.02, "nesterov": 0.02, "adam": 0.5}


def trajectory(name, lr, steps=40):
    tx = T.make_optimizer(name, lr)

    def step(carry, _):
        w, opt_state = carry
        updates, opt_state = tx.update(jax.grad(valley)(w), opt_state, w)
        w = optax.apply_updates(w, updates)
        return (w, opt_state), w

    _, path = jax.lax.scan(step, (start, tx.init(start)), length=steps)
    return np.concatenate([np.asarray(start)[None], np.asarray(path)])


paths = {name: trajectory(name, lr) for name, lr in settings.items()}
xs, ys = np.meshgrid(np.linspace(-10, 2, 200), np.linspace(-2.2, 2.2, 200))
fig, ax = plt.subplots(figsize=(9, 3.8))
ax.contour(xs, ys, 0.5 * xs**2 + 10 * ys**2, levels=np.geomspace(0.05, 80, 14), colors="0.8")
for name, path in paths.items():
    ax.plot(path[:, 0], path[:, 1], marker=".", ms=4, lw=1, label=f"{name} (lr {settings[name]})")
    print(f"{name:<9} lr {settings[name]:<5} f after 40 steps: {float(valley(path[-1])):.2e}")
ax.plot(0, 0, "k*", ms=12)
ax.set(xlabel="x", ylabel="y", title="40 steps from (-9, 1.5) on x²/2 + 10y²")
ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# * **SGD**'s learning rate is capped by the steep direction: at 0.09 every step overshoots
#   across the valley (the `y` error is multiplied by `1 − 20·0.09 = −0.8` per step: a zigzag)
#   while it covers only 9% of the remaining distance along it.
# * **Momentum** accumulates velocity along the valley and gets there with a smaller rate, but
#   the velocity carries it past the minimum (it swings back and forth); **Nesterov**'s
#   look-ahead gradient damps that swing.
# * **Adam** divides each coordinate's step by the running size of its gradient, so it moves
#   along both axes at about the same speed whatever the curvature; its steps stay of the
#   order of the learning rate, so near the minimum it circles instead of settling unless the
#   rate decays (a schedule, below).
#
# These learning rates were picked by hand, and the ranking of the four changes with them:
# the learning rate matters as much as the choice of optimiser, which the experiment at the end
# measures on a real network.
#
# ## Learning-rate schedules
#
# `make_schedule(kind, lr, total_steps, ...)` returns an optax schedule (a function of the step);
# `make_optimizer` takes it in place of a constant learning rate, and the run config names it
# (`schedule=`, `warmup_epochs=`, `step_size_epochs=`, `gamma=`).

# %%
total = 300
schedules = {
    "constant": T.make_schedule("constant", 0.1, total),
    "step (every 100, x0.1)": T.make_schedule("step", 0.1, total, step_size=100, gamma=0.1),
    "cosine": T.make_schedule("cosine", 0.1, total),
    "warmup_cosine (30 steps)": T.make_schedule("warmup_cosine", 0.1, total, warmup_steps=30),
    "onecycle": T.make_schedule("onecycle", 0.1, total),
}
steps = np.arange(total)
fig, ax = plt.subplots(figsize=(7, 3.6))
for name, schedule in schedules.items():
    values = np.asarray(jax.vmap(schedule)(steps))
    ax.plot(steps, values, label=name)
    print(
        f"{name:<26} lr at steps 0 / 29 / 150 / 299:",
        " / ".join(f"{values[s]:.4f}" for s in (0, 29, 150, 299)),
    )
ax.set(xlabel="step", ylabel="learning rate", title="make_schedule(kind, 0.1, 300)")
ax.grid(alpha=0.3), ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A learning-rate range test
#
# Leslie Smith's test (*Cyclical Learning Rates for Training Neural Networks*, 2017): train
# once while the learning rate grows exponentially, here from 10⁻⁵ to 10 over 150 steps, and
# record the training loss. While the rate is too small the loss barely moves; then it falls;
# past some rate it turns and explodes. A good constant learning rate lies where the loss falls
# steeply, below the minimum — a common rule takes a tenth of the rate at the minimum of the
# (smoothed) loss. The network and data are those of the optimisers experiment below
# (`convnet` with global average pooling, the digits at 32×32, batch 64).

# %%
digits = data.load("digits", image_size=32)
model = models.create("convnet")
n_steps, low, high = 150, 1e-5, 10.0
growing = lambda step: low * (high / low) ** (step / (n_steps - 1))
sample = digits["train"].normalize(digits["train"].images[:1])
state0 = T.create_train_state(model, optax.identity(), jax.random.PRNGKey(0), sample)


def range_test(name):
    tx = T.make_optimizer(name, growing)
    # Both tests start from the same initial parameters (state0's; not donated to the step).
    state = T.TrainState.create(
        apply_fn=model.apply, params=state0.params, tx=tx, batch_stats={}, rng=state0.rng
    )
    step = jax.jit(T.train_step)
    losses, epoch = [], 0
    while len(losses) < n_steps:
        for batch in data.batches(digits["train"], 64, shuffle=True, seed=0, epoch=epoch):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
            if len(losses) == n_steps or not np.isfinite(losses[-1]):
                break
        if not np.isfinite(losses[-1]):
            break
        epoch += 1
    return np.array(losses)


lrs = growing(np.arange(n_steps))
suggested = {}
fig, ax = plt.subplots(figsize=(7, 3.8))
for name in ("adam", "momentum"):
    losses = range_test(name)
    smooth = np.array(losses)
    for i in range(1, len(smooth)):  # exponential moving average, as the test usually plots
        smooth[i] = 0.9 * smooth[i - 1] + 0.1 * losses[i]
    ax.plot(lrs[: len(smooth)], smooth, label=f"{name}")
    lowest = int(np.nanargmin(smooth))
    suggested[name] = lrs[lowest] / 10
    print(
        f"{name:<9} lowest smoothed loss {smooth[lowest]:.3f} at lr {lrs[lowest]:.2g}"
        f" -> suggested lr {suggested[name]:.2g}; steps run: {len(losses)}"
    )
ax.set(
    xscale="log",
    xlabel="learning rate (growing every step)",
    ylabel="training loss (smoothed)",
    title="learning-rate range test",
    ylim=(0, 4),
)
ax.grid(alpha=0.3), ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The optimisers experiment
#
# `experiments/course/optimisers.py` trained the same network with SGD, SGD + momentum,
# Nesterov, Adam and AdamW at constant learning rates from 10⁻⁴ to 1, 12 epochs each, over three
# seeds. From its results file: validation accuracy after the last epoch against the learning
# rate, with the range test's suggestions marked.

# %%
found = json.loads(Path("../experiments/results/course/optimisers/results.json").read_text())
prov = found["provenance"]  # how the file was made (experiments/record.py)
print("command:", prov["command"], "|", prov["machine"]["cpu"], prov["machine"]["cores"], "cores")
sweep = {}
for label, by_lr in found["runs"].items():
    runs = [by_lr[str(lr)] for lr in found["lrs"]]  # per lr: one record per seed
    sweep[label] = np.array(
        [[r["val_accuracy"][-1] if not r["diverged"] else np.nan for r in seeds] for seeds in runs]
    ).T
    print(
        f"{label:<15} best lr {found['best_lr'][label]:<6}",
        "mean val accuracy per lr:",
        " ".join(f"{a:.2f}" for a in np.nanmean(sweep[label], 0)),
    )
fig = plots.mean_std(
    found["lrs"],
    sweep,
    xlabel="learning rate (constant)",
    ylabel="validation accuracy after 12 epochs",
    logx=True,
    title="optimisers experiment: mean ± std over seeds",
)
for name, colour in (("adam", "tab:red"), ("momentum", "tab:orange")):
    fig.axes[0].axvline(suggested[name], color=colour, ls="--", lw=1, label=f"range test: {name}")
fig.axes[0].legend(fontsize=7)
display(fig)
for label, name in (("Adam", "adam"), ("SGD + momentum", "momentum")):
    print(
        f"{label:<15} range test suggests lr {suggested[name]:.2g};",
        f"the sweep's best: {found['best_lr'][label]}",
    )

# %% [markdown]
# On this network the range test's suggestions land close to the best learning rates of the
# sweep (compare the two printed lines), from one run of 150 steps per optimiser instead of
# five learning rates × three seeds × 12 epochs. The curves also show why the rule takes a
# tenth of the minimum rather than the minimum: Adam's loss turns up right after it, and SGD +
# momentum's explodes within a factor of two. The same picture says what the sweep found:
# with Adam the loss falls over a range of learning rates before it turns; with SGD +
# momentum it barely falls at any rate before exploding — this network (no
# BatchNorm, torch's default initialisation) trains slowly with plain SGD at every rate, which
# is why the SGD family's curves stay low in the sweep (see notebook 8 for what BatchNorm
# changes).
