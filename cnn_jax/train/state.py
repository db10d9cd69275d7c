"""The train state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from cnn_jax._utils import accepts_train


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, opt_state; apply_fn and tx as static fields) plus the
    BatchNorm statistics and the RNG key that, folded with ``step``, gives each step's dropout key.

    ``rng`` is a raw ``uint32[2]`` key so checkpoints hold plain arrays.
    """

    batch_stats: Any
    rng: jax.Array


def create_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    sample_input: jax.Array,
) -> TrainState:
    """Initialises ``model`` on ``sample_input`` (eval mode) and ``optimizer`` on its params.

    ``key`` (a ``jax.random.PRNGKey``) is split into the init key and the state's dropout key.
    """
    init_key, rng = jax.random.split(key)
    kwargs = {"train": False} if accepts_train(model) else {}
    variables = model.init(init_key, jnp.asarray(sample_input), **kwargs)
    params = variables["params"]
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=optimizer,
        opt_state=optimizer.init(params),
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
    )


def variables_of(state: TrainState) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` for ``model.apply`` / ``to_torch``."""
    out = {"params": state.params}
    if state.batch_stats:
        out["batch_stats"] = state.batch_stats
    return out
