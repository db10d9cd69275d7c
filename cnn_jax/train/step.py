"""Pure train and eval steps.

``train_step(state, batch) -> (state, metrics)`` and ``eval_step(state, batch) -> metrics`` are
pure functions of their inputs: jit them (donating the state), pmap them, or shard them.
Batches are ``{'image': f32[N, H, W, C] or u8, 'label': i32[N], 'mask': bool[N]}`` (mask
optional; uint8 images are scaled to [0, 1] inside the step).

Nothing wrong passes silently, at no cost per step: labels must be integers (checked when the step
is traced); a label outside ``[0, num_classes)`` makes the loss NaN and is counted in
``metrics['invalid_labels']`` (:func:`combine` refuses such batches); ``metrics['finite']`` says
whether the loss and the gradients were finite, for the loop to stop a diverging run. With
``debug=True`` the step also checks, with ``jax.experimental.checkify``, that every pixel, the loss
and every gradient are finite and every label is in range, and raises naming what failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.experimental import checkify

from cnn_jax import runtime
from cnn_jax._utils import as_prefixes, matching_prefix
from cnn_jax.data.augment import Augment
from cnn_jax.data.sources import standardize
from cnn_jax.errors import InvalidLabelError
from cnn_jax.models.outputs import loss_terms
from cnn_jax.nn.layer_settings import with_layer_settings
from cnn_jax.train.optim import gradient_norm, l1_penalty, l2_penalty
from cnn_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _as_float(images: jax.Array, normalized_here: bool) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1] on the device (a quarter of the bytes to transfer);
    float images pass through unchanged.

    A step that normalises (``mean``/``std`` given) takes raw uint8 pixels only: float images
    may already have been normalised (``data.batches`` does so by default), and normalising twice
    would train on wrong inputs without any error."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    if normalized_here:
        raise TypeError(
            f"this step normalises with mean/std and takes raw uint8 pixels, got {images.dtype} "
            "images, which may already be normalised: batch with data.batches(..., "
            "normalize=False) (uint8), or build the step without mean/std"
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images


def _check_labels(labels: jax.Array) -> None:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise InvalidLabelError(
            f"labels must be integer class indices, got {labels.dtype} (e.g. 1.5 is no class)"
        )
    if labels.ndim != 1:
        raise InvalidLabelError(f"labels must have shape (N,), got {labels.shape}")


def _mask(batch: Batch) -> jax.Array:
    return batch.get("mask", jnp.ones(batch["label"].shape, bool)).astype(jnp.float32)


def _sums(logits: jax.Array, labels: jax.Array, mask: jax.Array, smoothing: float) -> Metrics:
    """Masked sums of loss, top-1 and top-5 hits, the count and the invalid labels (additive
    over batches). An example whose label is outside ``[0, num_classes)`` has a NaN loss:
    ``one_hot`` would give it an all-zero target and a silently wrong mean."""
    _check_labels(labels)
    num_classes = logits.shape[-1]
    real = mask > 0
    valid = (labels >= 0) & (labels < num_classes)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    loss = optax.softmax_cross_entropy(logits, targets)
    loss = jnp.where(real, jnp.where(valid, loss, jnp.nan), 0.0)
    out = {
        "loss": loss.sum(),
        "correct": ((logits.argmax(-1) == labels) * mask).sum(),
        "count": mask.sum(),
        "invalid_labels": (real & ~valid).sum(),
    }
    if num_classes >= 5:
        top5 = lax.top_k(logits, 5)[1]
        out["correct5"] = ((top5 == labels[:, None]).any(-1) * mask).sum()
    return out


def _train_sums(output: Any, labels: jax.Array, mask: jax.Array, smoothing: float) -> Metrics:
    """:func:`_sums` of a train-mode output: the hits of the main logits, and a loss that sums
    every head's weighted by the output's ``loss_weights`` (googlenet's and inception_v3's
    auxiliary heads, :func:`cnn_jax.models.outputs.loss_terms`); plain logits as they are."""
    terms = loss_terms(output)
    weight, main = terms[0]
    sums = _sums(main.astype(jnp.float32), labels, mask, smoothing)
    sums["loss"] = weight * sums["loss"]
    for weight, logits in terms[1:]:
        head = _sums(logits.astype(jnp.float32), labels, mask, smoothing)
        sums["loss"] = sums["loss"] + weight * head["loss"]
    return sums


def _means(sums: Metrics) -> Metrics:
    count = jnp.maximum(sums["count"], 1.0)
    out = {
        "loss": sums["loss"] / count,
        "accuracy": sums["correct"] / count,
        "count": sums["count"],
        "invalid_labels": sums["invalid_labels"],
    }
    if "correct5" in sums:
        out["top5_accuracy"] = sums["correct5"] / count
    return out


def combine(metrics: list[Metrics]) -> dict[str, float]:
    """Combines per-batch eval metrics (means with their ``count``) into dataset means: each batch
    weighs by its count of real (unmasked) examples, so every example counts exactly once."""
    invalid = sum(int(m.get("invalid_labels", 0)) for m in metrics)
    if invalid:
        raise InvalidLabelError(
            f"{invalid} evaluated label(s) are outside [0, num_classes): the metrics would be wrong"
        )
    total = sum(float(m["count"]) for m in metrics)
    if total == 0:
        raise ValueError("no examples were evaluated")
    keys = [k for k in metrics[0] if k not in ("count", "invalid_labels")]
    out = {k: sum(float(m[k]) * float(m["count"]) for m in metrics) / total for k in keys}
    out["count"] = total
    return out


COMPUTE_DTYPES = ("float32", "bfloat16")
"""Compute dtypes a step accepts (see :func:`make_train_step`'s ``compute_dtype``)."""

EVAL_OPTIONS = ("mean", "std", "compute_dtype", "conv_backend")
"""The options of :func:`make_train_step` that :func:`make_eval_step` takes too."""


def eval_options(step_options: dict[str, Any]) -> dict[str, Any]:
    """The part of ``make_train_step``'s keyword arguments that the matching eval step takes."""
    return {k: step_options[k] for k in EVAL_OPTIONS if k in step_options}


def _compute_dtype(name: str | None) -> Any:
    if name is None or name == "float32":
        return None
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={name!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    return jnp.dtype(name)


def _cast_floating(tree: Any, dtype: Any) -> Any:
    """Floating-point leaves of ``tree`` as ``dtype`` (others unchanged); ``dtype=None``: as is."""
    if dtype is None:
        return tree
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def _validate(l1: float, l2: float, label_smoothing: float) -> None:
    for name, value in (("l1", l1), ("l2", l2)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(
            f"label_smoothing must be in [0, 1), got {label_smoothing} (1 would make every target "
            "uniform: nothing left to learn)"
        )


def _split_frozen(params: Any, freeze: tuple[str, ...]) -> Any:
    """``stop_gradient`` on every parameter under a frozen prefix: XLA then drops their weight
    gradients instead of computing and discarding them."""
    if not freeze:
        return params
    from flax import traverse_util

    flat = traverse_util.flatten_dict(params, sep=".")
    return traverse_util.unflatten_dict(
        {
            k: v if matching_prefix(k, freeze) is None else lax.stop_gradient(v)
            for k, v in flat.items()
        },
        sep=".",
    )


def make_train_step(
    *,
    augment: Augment | None = None,
    mean: Any = None,
    std: Any = None,
    l1: float = 0.0,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
    freeze: tuple[str, ...] = (),
    frozen_batch_norm_trains: bool = False,
    compute_dtype: str | None = None,
    conv_backend: str | None = None,
    debug: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds a pure train step.

    Args:
      augment: applied to the images in [0, 1] with a key folded from the state's rng and step;
        then ``(x - mean) / std`` when ``mean``/``std`` are given (the step then takes raw uint8
        pixels only, so images cannot be normalised twice).
      l1, l2: the course's penalties added to the loss, ``l1 * Σ|w| + l2 * Σw²`` over conv and
        linear weights (not biases or BatchNorm).
      label_smoothing: optax's label smoothing of the one-hot targets, in [0, 1).
      axis_name: when the step runs under ``pmap``/``shard_map`` over this axis: gradients and
        metrics are averaged over it and BatchNorm uses the global batch's statistics (every
        BatchNorm2d gets it as its ``axis_name``).
      freeze: dotted parameter prefixes that are not trained (pass the same to
        :func:`~cnn_jax.train.make_optimizer`): their gradients are not computed, and their
        BatchNorm layers run in inference mode — running statistics used and left unchanged, as
        Keras does for frozen layers — unless ``frozen_batch_norm_trains``.
      compute_dtype: ``'bfloat16'`` for mixed precision: the forward and backward passes run in
        bfloat16 (parameters and images cast at the start of the step), while the parameters,
        their gradients, the optimiser state, BatchNorm's statistics (computed in float32 from
        the bfloat16 activations) and the loss stay float32. ``None``/``'float32'``: float32
        throughout. Meant for accelerators; on a CPU it is slower (checked there for
        correctness only).
      conv_backend: how every convolution of the model is computed
        (:func:`cnn_jax.functional.conv_general`; ``None``: each layer's own, else ``'auto'``).
      debug: check with ``checkify`` that pixels, loss and gradients are finite and labels are in
        range, raising an error that names the failure. The returned function is then already
        jitted (do not wrap it in ``jax.jit`` again) and slower: for debugging only.

    Returns:
      ``train_step(state, batch) -> (state, metrics)`` with metrics ``loss`` (penalties
      included), ``accuracy``, ``grad_norm`` (the gradients' global L2 norm,
      :func:`gradient_norm`), ``finite`` (loss and gradients finite) and
      ``invalid_labels`` (labels outside ``[0, num_classes)``: the loss is NaN then).
    """
    freeze = as_prefixes(freeze, "freeze")
    _validate(l1, l2, label_smoothing)
    dtype = _compute_dtype(compute_dtype)
    layer_settings = dict(
        conv_backend=conv_backend,
        batch_norm_axis_name=axis_name,
        frozen_batch_norm=() if frozen_batch_norm_trains else freeze,
    )

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        step_key = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:  # a different dropout mask on every device
            step_key = jax.random.fold_in(step_key, lax.axis_index(axis_name))
        aug_key, dropout_key = jax.random.split(step_key)
        images = _as_float(batch["image"], mean is not None)
        if debug:
            _debug_check_inputs(images, batch["label"], state)
        if augment is not None:
            images = augment(aug_key, images)
        if mean is not None:
            images = standardize(images, jnp.asarray(mean), jnp.asarray(std))
        mask = _mask(batch)

        def loss_fn(params):
            params = _split_frozen(params, freeze)
            # batch_stats stay float32 whatever the compute dtype.
            variables = state.variables(params=_cast_floating(params, dtype))
            mutable = ["batch_stats"] if "batch_stats" in variables else []
            # Kernels stored HWIO (cnn_jax.train.layout) take their gradient as XLA computes
            # it; storing it in torch's layout first would add a transposition.
            stored = False if state.step_layout else None
            apply = with_layer_settings(
                state.apply_fn, **layer_settings, store_weight_gradients=stored
            )
            output, updates = apply(
                variables,
                _cast_floating(images, dtype),
                train=True,
                mutable=mutable,
                rngs={"dropout": dropout_key},
            )
            sums = _train_sums(output, batch["label"], mask, label_smoothing)
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
        grad_norm = gradient_norm(grads)
        if debug:
            checkify.check(jnp.isfinite(loss), "the loss is not finite: {}", loss)
            checkify.check(jnp.isfinite(grad_norm), "a gradient is not finite (norm {})", grad_norm)
        new_state = state.apply_gradients(grads=grads)
        if state.batch_stats:
            new_state = new_state.replace(batch_stats=updates["batch_stats"])
        metrics = {
            "loss": loss,  # includes the penalties
            "accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0),
            "grad_norm": grad_norm,
            "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
            "invalid_labels": sums["invalid_labels"],
        }
        return new_state, metrics

    return _checked(train_step) if debug else train_step


def _debug_check_inputs(images: jax.Array, labels: jax.Array, state: TrainState) -> None:
    checkify.check(jnp.isfinite(images).all(), "a pixel of the batch is NaN or inf")
    num_classes = jax.eval_shape(
        lambda: state.apply_fn(state.variables(), images[:1], train=False)
    ).shape[-1]
    bad = ((labels < 0) | (labels >= num_classes)).sum()
    checkify.check(bad == 0, "{} label(s) outside [0, num_classes)", bad)


def _checked(step: Callable) -> Callable:
    """``step`` functionalised by checkify and jitted; raises ``checkify.JaxRuntimeError`` (a
    ValueError) naming the failed check. Nothing is donated: after a failed check the caller
    still holds the state it passed in."""
    compiled = runtime.jit(checkify.checkify(step))

    def run(*args):
        error, out = compiled(*args)
        error.throw()
        return out

    return run


def make_eval_step(
    *,
    mean: Any = None,
    std: Any = None,
    axis_name: str | None = None,
    compute_dtype: str | None = None,
    conv_backend: str | None = None,
    debug: bool = False,
) -> Callable[[TrainState, Batch], Metrics]:
    """Builds a pure eval step: masked means ``loss``, ``accuracy``, ``top5_accuracy`` (with >= 5
    classes), ``count`` (real examples) and ``invalid_labels``; :func:`combine` merges batches.
    ``mean``/``std``, ``compute_dtype``, ``conv_backend`` and ``debug`` as in
    :func:`make_train_step`."""
    dtype = _compute_dtype(compute_dtype)

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        images = _as_float(batch["image"], mean is not None)
        if debug:
            _debug_check_inputs(images, batch["label"], state)
        if mean is not None:
            images = standardize(images, jnp.asarray(mean), jnp.asarray(std))
        variables = state.variables(params=_cast_floating(state.params, dtype))
        apply = with_layer_settings(state.apply_fn, conv_backend=conv_backend)
        logits = apply(variables, _cast_floating(images, dtype), train=False)
        sums = _sums(logits.astype(jnp.float32), batch["label"], _mask(batch), 0.0)
        if axis_name is not None:
            sums = lax.psum(sums, axis_name)
        return _means(sums)

    return _checked(eval_step) if debug else eval_step


train_step = make_train_step()
"""The plain train step: cross-entropy, no augmentation, normalised images in the batch."""

eval_step = make_eval_step()
"""The plain eval step: loss, accuracy, top5_accuracy and count of one batch."""
