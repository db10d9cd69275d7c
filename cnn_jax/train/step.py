"""Pure train and eval steps.

``train_step(state, batch) -> (state, metrics)`` and ``eval_step(state, batch) -> metrics`` are
pure functions of their inputs: jit them (donating the state), pmap them, or shard them.
Batches are ``{'image': f32[N, H, W, C] or u8, 'label': i32[N], 'mask': bool[N]}`` (mask
optional; uint8 images are scaled to [0, 1] inside the step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from cnn_jax.data.augment import Augment
from cnn_jax.nn.layers import batch_norm_axis_name
from cnn_jax.train.optim import l1_penalty, l2_penalty
from cnn_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _as_float(images: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1] on the device (a quarter of the bytes to transfer);
    float images pass through unchanged."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images


def _mask(batch: Batch) -> jax.Array:
    return batch.get("mask", jnp.ones(batch["label"].shape, bool)).astype(jnp.float32)


def _sums(logits: jax.Array, labels: jax.Array, mask: jax.Array, smoothing: float) -> Metrics:
    """Masked sums of loss, top-1 and top-5 hits, and the count (additive over batches)."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    loss = optax.softmax_cross_entropy(logits, targets)
    out = {
        "loss": (loss * mask).sum(),
        "correct": ((logits.argmax(-1) == labels) * mask).sum(),
        "count": mask.sum(),
    }
    if num_classes >= 5:
        top5 = lax.top_k(logits, 5)[1]
        out["correct5"] = ((top5 == labels[:, None]).any(-1) * mask).sum()
    return out


def _means(sums: Metrics) -> Metrics:
    count = jnp.maximum(sums["count"], 1.0)
    out = {
        "loss": sums["loss"] / count,
        "accuracy": sums["correct"] / count,
        "count": sums["count"],
    }
    if "correct5" in sums:
        out["top5_accuracy"] = sums["correct5"] / count
    return out


def combine(metrics: list[Metrics]) -> dict[str, float]:
    """Combines per-batch eval metrics (means with their ``count``) into dataset means: each batch
    weighs by its count of real (unmasked) examples, so every example counts exactly once."""
    total = sum(float(m["count"]) for m in metrics)
    if total == 0:
        raise ValueError("no examples were evaluated")
    keys = [k for k in metrics[0] if k != "count"]
    out = {k: sum(float(m[k]) * float(m["count"]) for m in metrics) / total for k in keys}
    out["count"] = total
    return out


def make_train_step(
    *,
    augment: Augment | None = None,
    mean: Any = None,
    std: Any = None,
    l1: float = 0.0,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds a pure train step.

    Args:
      augment: applied to ``batch['image']`` (expected in [0, 1]) with a key folded from the
        state's rng and step; then ``(x - mean) / std`` when ``mean``/``std`` are given.
      l1, l2: the course's penalties added to the loss, ``l1 * Σ|w| + l2 * Σw²`` over conv and
        linear weights (not biases or BatchNorm).
      label_smoothing: optax's label smoothing of the one-hot targets.
      axis_name: when the step runs under ``pmap``/``shard_map`` over this axis: gradients and
        metrics are averaged over it and BatchNorm uses the global batch's statistics.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        step_key = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:  # a different dropout mask on every device
            step_key = jax.random.fold_in(step_key, lax.axis_index(axis_name))
        aug_key, dropout_key = jax.random.split(step_key)
        images = _as_float(batch["image"])
        if augment is not None:
            images = augment(aug_key, images)
        if mean is not None:
            images = (images - jnp.asarray(mean)) / jnp.asarray(std)
        mask = _mask(batch)

        def loss_fn(params):
            variables = {"params": params}
            mutable = []
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
                mutable = ["batch_stats"]
            with batch_norm_axis_name(axis_name):
                logits, updates = state.apply_fn(
                    variables,
                    images,
                    train=True,
                    mutable=mutable,
                    rngs={"dropout": dropout_key},
                )
            sums = _sums(logits, batch["label"], mask, label_smoothing)
            loss = sums["loss"] / jnp.maximum(sums["count"], 1.0)
            if l1:
                loss = loss + l1 * l1_penalty(params)
            if l2:
                loss = loss + l2 * l2_penalty(params)
            return loss, (sums, updates)

        (loss, (sums, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if axis_name is not None:
            grads = lax.pmean(grads, axis_name)
            loss = lax.pmean(loss, axis_name)
            sums = lax.psum(sums, axis_name)
        new_state = state.apply_gradients(grads=grads)
        if state.batch_stats:
            new_state = new_state.replace(batch_stats=updates["batch_stats"])
        metrics = {
            "loss": loss,  # includes the penalties
            "accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0),
            "grad_norm": optax.tree.norm(grads),
        }
        return new_state, metrics

    return train_step


def make_eval_step(
    *, mean: Any = None, std: Any = None, axis_name: str | None = None
) -> Callable[[TrainState, Batch], Metrics]:
    """Builds a pure eval step: masked means ``loss``, ``accuracy``, ``top5_accuracy`` (with >= 5
    classes) and ``count``, the number of real examples; :func:`combine` merges batches."""

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        images = _as_float(batch["image"])
        if mean is not None:
            images = (images - jnp.asarray(mean)) / jnp.asarray(std)
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        logits = state.apply_fn(variables, images, train=False)
        sums = _sums(logits, batch["label"], _mask(batch), 0.0)
        if axis_name is not None:
            sums = lax.psum(sums, axis_name)
        return _means(sums)

    return eval_step


train_step = make_train_step()
"""The plain train step: cross-entropy, no augmentation, normalised images in the batch."""

eval_step = make_eval_step()
"""The plain eval step: loss, accuracy, top5_accuracy and count of one batch."""
