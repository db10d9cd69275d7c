"""Optimiser recipes with optax: the courses' optimisers, weight-decay masks, schedules, clipping,
and freezing for transfer learning."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from cnn_jax._utils import as_prefixes, matching_prefix

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "warmup_cosine", "onecycle")


def decay_mask(params: Any) -> Any:
    """True for weights that should be decayed or penalised: conv and linear ``weight`` tensors
    (rank >= 2); False for biases and BatchNorm's scale and shift (rank 1), as is standard."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def l1_penalty(params: Any) -> jax.Array:
    """Σ|w| over the decayed weights (the course's L1 term; multiply by λ)."""
    leaves = jax.tree.leaves(
        jax.tree.map(lambda p, m: jnp.abs(p).sum() if m else 0.0, params, decay_mask(params))
    )
    return sum(leaves, jnp.zeros(()))


def l2_penalty(params: Any) -> jax.Array:
    """Σw² over the decayed weights (the course's L2 term, Keras' ``l2(λ)``; multiply by λ)."""
    leaves = jax.tree.leaves(
        jax.tree.map(lambda p, m: jnp.square(p).sum() if m else 0.0, params, decay_mask(params))
    )
    return sum(leaves, jnp.zeros(()))


def gradient_norm(grads: Any) -> jax.Array:
    """The global L2 norm of the pytree ``grads`` (``optax.tree.norm``'s value, summed leaf by
    leaf in the same order), with each square written as ``|g| * |g|``.

    ``|g| * |g|`` equals ``g * g`` bit for bit for real ``g``, but XLA does not recognise it as
    the optimiser's own square of the same gradient (Adam's second moment), so the two are not
    merged into one instruction. Merged, the square has two consumers, the optimiser's update
    and this norm's reduction (which XLA:CPU hands to YNNPACK), and XLA:CPU wrote it to memory
    as a full-size array for every parameter, only to sum it: a pass over all the parameters'
    size on every step (``tests/test_train.py`` counts the arrays in a compiled step). Written
    apart, the reduction reads each gradient directly. The train step's ``grad_norm`` metric and
    :func:`clip_by_global_norm` both use it, so with clipping XLA computes the norm once.
    """
    squares = jax.tree.map(lambda g: jnp.sum(jnp.abs(g) * jnp.abs(g)), grads)
    return jnp.sqrt(jax.tree.reduce(operator.add, squares, initializer=0.0))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm(max_norm)`` with the norm computed by :func:`gradient_norm`:
    the same rule (updates unchanged below ``max_norm``, else scaled by ``max_norm / norm``) and
    the same values, but the norm is the very expression of the train step's ``grad_norm``
    metric, so XLA computes it once for both; with optax's own, whose squares differ from the
    metric's, the step would reduce every gradient twice."""

    def clip(updates: Any, params: Any = None) -> Any:
        del params
        norm = gradient_norm(updates)
        keep = norm < max_norm
        return jax.tree.map(
            lambda t: jax.lax.select(keep, t, (t / norm.astype(t.dtype)) * max_norm), updates
        )

    return optax.stateless(clip)


def make_schedule(
    kind: str,
    lr: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    step_size: int | None = None,
    gamma: float = 0.1,
    final_lr_fraction: float = 0.0,
) -> optax.Schedule:
    """Learning-rate schedules.

    * ``constant``: ``lr`` (after an optional linear warmup);
    * ``step``: multiply by ``gamma`` every ``step_size`` steps (torch's StepLR);
    * ``cosine``: cosine decay from ``lr`` to ``final_lr_fraction * lr`` over ``total_steps``;
    * ``warmup_cosine``: linear warmup for ``warmup_steps``, then cosine decay;
    * ``onecycle``: torch's OneCycleLR shape (warm up to ``lr`` over 30%, anneal to ~0).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; available: {', '.join(SCHEDULES)}")
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if kind == "onecycle":
        return optax.cosine_onecycle_schedule(total_steps, lr)
    if kind in ("cosine", "warmup_cosine"):
        warmup = warmup_steps if kind == "warmup_cosine" else 0
        return optax.warmup_cosine_decay_schedule(
            0.0 if warmup else lr,
            lr,
            warmup,
            max(total_steps, warmup + 1),
            end_value=final_lr_fraction * lr,
        )
    if kind == "step":
        if not step_size or step_size < 1:
            raise ValueError("the 'step' schedule needs step_size >= 1")
        main = optax.exponential_decay(lr, step_size, gamma, staircase=True)
    else:
        main = optax.constant_schedule(lr)
    if warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup_steps), main], [warmup_steps]
        )
    return main


def parameter_prefixes(params: Any, depth: int = 2) -> list[str]:
    """The dotted parameter paths of ``params`` cut to ``depth`` parts (``'features.0'``): what
    ``freeze`` and ``lr_multipliers`` prefixes can name."""
    flat = traverse_util.flatten_dict(params)
    return sorted({".".join(path[:depth]) for path in flat})


def _path_label(rules: Sequence[tuple[str, str]], default: str) -> Callable[[Any], Any]:
    """Labels each parameter by the first rule whose prefix its dotted path starts with."""

    prefixes = [prefix for prefix, _ in rules]
    label_of: dict[str, str] = {}
    for prefix, name in rules:
        label_of.setdefault(prefix, name)  # the first rule of a prefix wins

    def label(params):
        flat = traverse_util.flatten_dict(params)
        labels = {}
        used = set()
        for path in flat:
            prefix = matching_prefix(path, prefixes)
            labels[path] = default if prefix is None else label_of[prefix]
            if prefix is not None:
                used.add(prefix)
        unused = [prefix for prefix in prefixes if prefix not in used]
        if unused:
            raise ValueError(
                f"parameter prefix(es) {', '.join(map(repr, unused))} match no parameter (a "
                "typo would silently freeze or rescale nothing); valid prefixes include: "
                + ", ".join(parameter_prefixes(params))
            )
        return traverse_util.unflatten_dict(labels)

    return label


def make_optimizer(
    name: str = "adamw",
    learning_rate: float | optax.Schedule = 1e-3,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    freeze: Sequence[str] = (),
    lr_multipliers: Mapping[str, float] | None = None,
) -> optax.GradientTransformation:
    """An optax optimiser by name, with torch's meaning of ``weight_decay``.

    Args:
      name: ``sgd``, ``momentum`` (SGD + momentum), ``nesterov``, ``adam`` or ``adamw``.
      learning_rate: a float or an optax schedule.
      weight_decay: ``adamw``: decoupled decay (Loshchilov & Hutter, torch's AdamW); ``sgd`` /
        ``momentum`` / ``nesterov`` / ``adam``: added to the gradient (torch's coupled
        ``weight_decay``). Either way only the weights of :func:`decay_mask` decay, never biases or
        BatchNorm parameters.
      clip_norm: clip the global gradient norm first.
      freeze: dotted parameter-path prefixes that are not updated at all (e.g. everything but the
        head for transfer learning: ``freeze=('features',)``).
      lr_multipliers: dotted prefix -> factor on the learning rate (e.g. ``{'features': 0.1}``
        for a slower backbone).

    Raises:
      ValueError: unknown optimiser name (listing the valid ones).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not callable(learning_rate) and not learning_rate >= 0:
        raise ValueError(f"learning_rate must be >= 0, got {learning_rate}")
    if name in ("momentum", "nesterov") and not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"momentum must be in [0, 1), got {momentum} (>= 1 makes SGD's velocity grow without "
            "bound)"
        )
    if clip_norm is not None and not clip_norm >= 0:
        raise ValueError(f"clip_norm must be >= 0, got {clip_norm}")
    freeze = as_prefixes(freeze, "freeze")
    for prefix, factor in (lr_multipliers or {}).items():
        if not factor >= 0:
            raise ValueError(f"lr_multipliers[{prefix!r}] must be >= 0, got {factor}")

    def base(lr) -> optax.GradientTransformation:
        if name == "adamw":
            return optax.adamw(lr, weight_decay=weight_decay, mask=decay_mask)
        chain = []
        if weight_decay:
            chain.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
        if name == "adam":
            chain.append(optax.adam(lr))
        else:
            chain.append(
                optax.sgd(
                    lr, momentum=None if name == "sgd" else momentum, nesterov=name == "nesterov"
                )
            )
        return optax.chain(*chain)

    scale = lambda factor: (
        (lambda step: learning_rate(step) * factor)
        if callable(learning_rate)
        else learning_rate * factor
    )
    rules = [(prefix, "frozen") for prefix in freeze]
    transforms: dict[str, optax.GradientTransformation] = {
        "default": base(learning_rate),
        "frozen": optax.set_to_zero(),
    }
    for i, (prefix, factor) in enumerate((lr_multipliers or {}).items()):
        rules.append((prefix, f"scaled{i}"))
        transforms[f"scaled{i}"] = base(scale(factor))
    tx = (
        optax.multi_transform(transforms, _path_label(rules, "default"))
        if rules
        else base(learning_rate)
    )
    if clip_norm:
        tx = optax.chain(clip_by_global_norm(clip_norm), tx)
    return tx
