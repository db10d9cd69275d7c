"""The JAX peer of the speed benchmark: the headline's networks written in plain flax.linen.

``experiments/bench_vs_torch.py`` times these beside cnn_jax and torch, so that cnn_jax's lead
over what a Flax user would write without it stays measured. Each network has the same layers,
widths, kernels, strides and paddings as cnn_jax's model of that name (so the same FLOPs and
parameter count), written the way the Flax documentation writes them: ``nn.Conv`` with HWIO
kernels and ``nn.Dense``, ``nn.max_pool`` / ``nn.avg_pool``, ``nn.BatchNorm`` with torch's
momentum and epsilon, a flatten in (H, W, C) order, and a train step of ``jax.value_and_grad``,
``optax`` and ``TrainState.apply_gradients``. Their initialisers are Flax's own: they are peers
for timing, not twins of torch (cnn_jax's own models are those).

The peers compile with the XLA flags of the process, and the benchmark applies cnn_jax's
(``cnn_jax.runtime.apply``) before anything runs, so the comparison measures the libraries' code
under the same compiler settings, not the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class LeNet5(nn.Module):
    """LeNet-5: conv 6 / 16 / 120 (5×5, valid), tanh, 2×2 average pooling, dense 84."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.avg_pool(jnp.tanh(nn.Conv(6, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
        x = nn.avg_pool(jnp.tanh(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
        x = jnp.tanh(nn.Conv(120, (5, 5), padding="VALID")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes)(jnp.tanh(nn.Dense(84)(x)))


class CifarCNN(nn.Module):
    """Conv 32 / 64 / 128 (3×3, same), ReLU, 2×2 max pooling after the first two, global
    average pooling, dropout 0.5, dense."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i, features in enumerate((32, 64, 128)):
            x = nn.relu(nn.Conv(features, (3, 3), padding="SAME")(x))
            if i < 2:
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Dropout(0.5, deterministic=not train)(x.mean(axis=(1, 2)))
        return nn.Dense(self.num_classes)(x)


class ConvNet(nn.Module):
    """cnn_jax's ``convnet`` with its defaults: conv 16 / 32 / 64 (3×3, padding 1), ReLU, 2×2
    max pooling after each, global average pooling, dense."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool):
        for features in (16, 32, 64):
            x = nn.relu(nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def _batch_norm(train: bool) -> nn.BatchNorm:
    """torch's BatchNorm2d defaults (momentum 0.1 is Flax's 0.9)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class BasicBlock(nn.Module):
    """ResNet's two 3×3 convolutions with batch norm, and a 1×1 projection where the shape
    changes."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x, *, train: bool):
        pad = ((1, 1), (1, 1))
        strides = (self.stride, self.stride)
        y = nn.Conv(self.features, (3, 3), strides, padding=pad, use_bias=False)(x)
        y = nn.relu(_batch_norm(train)(y))
        y = nn.Conv(self.features, (3, 3), padding=pad, use_bias=False)(y)
        y = _batch_norm(train)(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), strides, use_bias=False)(x)
            x = _batch_norm(train)(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """torchvision's ResNet-18: 7×7/2 stem, 3×3/2 max pooling, four stages of two basic blocks
    (64 / 128 / 256 / 512), global average pooling, dense."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False)(x)
        x = nn.relu(_batch_norm(train)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, features in enumerate((64, 128, 256, 512)):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(features, stride)(x, train=train)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


PEERS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "cifar_cnn": CifarCNN,
    "convnet": ConvNet,
    "resnet18": ResNet18,
}


class TrainState(train_state.TrainState):
    """Flax's TrainState with the BatchNorm statistics beside the parameters."""

    batch_stats: Any = None


def create_state(
    name: str, tx: optax.GradientTransformation, rng: jax.Array, sample: jax.Array
) -> TrainState:
    """The peer of ``name`` initialised on ``sample`` (NHWC), with the optimiser ``tx``."""
    if name not in PEERS:
        raise ValueError(f"no plain flax.linen peer for {name!r}; peers: {', '.join(PEERS)}")
    model = PEERS[name]()
    variables = model.init(rng, sample, train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    """One step of softmax cross-entropy: the new state and the batch's loss and accuracy."""
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    accuracy = (logits.argmax(-1) == batch["label"]).mean()
    return state, {"loss": loss, "accuracy": accuracy}
