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
# # Functional vs stateful: one CNN trained three ways
#
# The course trains CNNs in **PyTorch**, where a module *owns* its parameters and buffers and
# the optimiser *mutates* them. JAX asks for the **functional** style: parameters, BatchNorm
# statistics, optimiser state and random keys are values that a pure function takes and returns.
# **Flax NNX** brings the stateful style to JAX. This notebook trains the same network, from the
# same initial weights, on the same batches, with the same optimiser, in all three styles, and
# checks what the course promises: the three compute the same thing — up to float32 rounding.
#
# The full measurement (three models, cost per batch size, dropout over seeds) is
# `experiments/functional_vs_stateful.py`; this is the small version.

# %%
import copy

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import torch
from flax import nnx

import cnn_jax.testing.torch_models as twins
from cnn_jax import data
from cnn_jax import nnx as cnnx
from cnn_jax import train as T
from cnn_jax.interop import from_torch
from cnn_jax.models import create

ds = data.load("digits", image_size=32)  # the embedded handwritten digits, 1,257 train images
batches = list(data.batches(ds["train"], 64, shuffle=True, seed=0, epoch=0))[:15]
print(len(batches), "batches of", batches[0]["image"].shape)

# %% [markdown]
# ## One initialisation for all three
# torch initialises the twin; its `state_dict` loads into the linen model's variables and into
# the NNX model. Dropout is off here so that the runs can agree exactly (the three styles draw
# their masks from three different random number generators).

# %%
kw = dict(num_classes=10, in_channels=1, dropout=0.0)
torch.manual_seed(0)
twin = twins.restatement("cifar_cnn", **kw)  # PyTorch
linen = create("cifar_cnn", **kw)  # cnn_jax functional (flax.linen)
variables = from_torch(linen, twin.state_dict(), sample_input=jnp.zeros((1, 32, 32, 1)))
model = from_torch(cnnx.create("cifar_cnn", rngs=nnx.Rngs(0), **kw), twin.state_dict())  # NNX
twin64 = copy.deepcopy(twin).double()  # the float64 reference

# %% [markdown]
# ## The three train steps
# **Functional**: the step is a pure function; everything it reads comes in, everything it
# changes goes out, and the caller threads the new state into the next call.

# %%
state = T.TrainState.create(
    apply_fn=linen.apply,
    params=variables["params"],
    tx=optax.sgd(0.02, momentum=0.9),
    batch_stats={},
    rng=jax.random.key_data(jax.random.key(0)),
)
functional_step = jax.jit(T.train_step, donate_argnums=0)  # (state, batch) -> (state, metrics)

# %% [markdown]
# **PyTorch**: the module and the optimiser hold the state and change it in place.


# %%
def torch_step(net, optimizer, images, labels):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


opt32 = torch.optim.SGD(twin.parameters(), lr=0.02, momentum=0.9)
opt64 = torch.optim.SGD(twin64.parameters(), lr=0.02, momentum=0.9)

# %% [markdown]
# **NNX**: stateful like torch, compiled like JAX; `nnx.jit` carries the model's and the
# optimiser's state in and out of the compiled function for you.

# %%
optimizer = nnx.Optimizer(model, optax.sgd(0.02, momentum=0.9), wrt=nnx.Param)


@nnx.jit
def nnx_step(model, optimizer, images, labels):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


# %% [markdown]
# ## Same batches, three styles

# %%
losses = {"functional": [], "torch": [], "nnx": [], "torch float64": []}
for batch in batches:
    nchw = torch.tensor(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    labels_t = torch.tensor(batch["label"].astype(np.int64))
    state, metrics = functional_step(state, batch)
    losses["functional"].append(float(metrics["loss"]))
    losses["torch"].append(torch_step(twin, opt32, nchw, labels_t))
    losses["torch float64"].append(torch_step(twin64, opt64, nchw.double(), labels_t))
    losses["nnx"].append(float(nnx_step(model, optimizer, batch["image"], batch["label"])))

ref = np.array(losses["torch float64"])
for style in ("functional", "torch", "nnx"):
    rel = np.abs(np.array(losses[style]) - ref) / ref
    print(
        f"{style:10s} largest |loss - float64 loss| / loss over {len(ref)} steps: {rel.max():.1e}"
    )

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
for style, values in losses.items():
    ax1.plot(values, label=style, lw=4 if style == "torch float64" else 1.5, alpha=0.8)
ax1.set(xlabel="step", ylabel="training loss", title="The curves lie on top of each other")
ax1.legend()
for style in ("functional", "torch", "nnx"):
    rel = np.abs(np.array(losses[style]) - ref) / ref
    ax2.semilogy(np.maximum(rel, 1e-10), label=f"{style} vs float64")
ax2.set(xlabel="step", title="...and differ by float32 rounding only")
ax2.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# All three float32 runs stay within ~1e-6 of the float64 run: what separates them is the order
# of float32 additions, not their semantics. (Over thousands of steps such rounding differences
# grow, as they do between two GPUs; the experiment script measures how fast.)
#
# ## Where the state lives

# %%
print("functional: one pytree, passed in and returned:", list(state.__dataclass_fields__))
print("torch:      inside the module and the optimiser:", list(twin.state_dict())[:4], "...")
nnx_paths = [path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
print("nnx:        inside the module, as Variables:", nnx_paths[:4], "...")

# %% [markdown]
# | | functional (cnn_jax) | PyTorch | Flax NNX |
# |---|---|---|---|
# | parameters | `state.params`, returned by the step | `module.parameters()`, mutated | `nnx.Param` in the module, mutated |
# | BatchNorm statistics | `state.batch_stats`, returned | module buffers, mutated | `nnx.BatchStat`, mutated |
# | optimiser state | `state.opt_state`, returned | inside `torch.optim` | inside `nnx.Optimizer` |
# | dropout randomness | key = `fold_in(state.rng, state.step)`: a pure function of the step | the global generator | an `nnx.Rngs` stream in the module |
# | train / eval | `train=` argument of every call | `model.train()` / `.eval()` | `model.train()` / `.eval()` |
# | compiled | `jax.jit` of a pure function | eager (or `torch.compile`) | `nnx.jit` |
#
# The functional step is the easiest to reason about — the same `(state, batch)` always gives
# the same result, which is what makes a resumed run bit-identical and `pmap`/sharding a
# one-line change — at the price of threading the state by hand.
