"""The train state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from cnn_jax import runtime
from cnn_jax._utils import accepts_train
from cnn_jax.train import layout


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, opt_state; apply_fn and tx as static fields) plus the
    BatchNorm statistics and the RNG key that, folded with ``step``, gives each step's dropout key.

    ``rng`` is a raw ``uint32[2]`` key so checkpoints hold plain arrays. ``step_layout``
    (static): the dotted paths of the kernels stored in the compiled step's layout rather than
    torch's (:mod:`cnn_jax.train.layout`); empty for a state in torch's layout, which is what
    :func:`create_train_state` returns and what checkpoints hold.
    """

    batch_stats: Any
    rng: jax.Array
    step_layout: tuple[str, ...] = struct.field(pytree_node=False, default=())

    def variables(self, params: Any = None) -> dict[str, Any]:
        """``{'params', 'batch_stats'}`` for ``apply_fn`` (no ``batch_stats`` when the model has
        none), its kernels in torch's layout whatever ``step_layout`` says; ``params`` replaces
        the state's own (e.g. cast to a compute dtype), with the state's structure and layout."""
        params = self.params if params is None else params
        variables = {"params": layout.torch_params(params, self.step_layout)}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables


def create_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    sample_input: jax.Array,
    *,
    abstract: bool = False,
) -> TrainState:
    """Initialises ``model`` on ``sample_input`` (eval mode) and ``optimizer`` on its params.

    ``key`` (a ``jax.random.PRNGKey``) is split into the init key and the state's dropout key.
    ``abstract=True``: params, optimiser state and BatchNorm statistics as
    ``jax.ShapeDtypeStruct`` (nothing compiled or run), e.g. a template to restore into.
    """
    init_key, rng = jax.random.split(key)
    kwargs = {"train": False} if accepts_train(model) else {}

    def init(init_key, sample_input):
        variables = model.init(init_key, sample_input, **kwargs)
        params = variables["params"]
        return params, optimizer.init(params), variables.get("batch_stats", {})

    # One compiled program: run op by op, initialisation compiles every random draw and
    # optimizer-state constructor separately (dozens of small compilations). It runs once, so
    # it is compiled at LLVM -O2, which compiles faster than XLA:CPU's default -O3; the values
    # are bit-identical to op-by-op ``model.init`` (tests/test_train.py checks), which -O0 is
    # not (no FMA contraction).
    sample_input = jnp.asarray(sample_input)
    if abstract:
        params, opt_state, batch_stats = jax.eval_shape(init, init_key, sample_input)
        return _state(model, optimizer, rng, params, opt_state, batch_stats)
    options = {"xla_backend_optimization_level": 2} if jax.default_backend() == "cpu" else {}
    lowered = runtime.jit(init, compiler_options=options).lower(init_key, sample_input)
    params, opt_state, batch_stats = lowered.compile()(init_key, sample_input)
    return _state(model, optimizer, rng, params, opt_state, batch_stats)


def _state(model, optimizer, rng, params, opt_state, batch_stats) -> TrainState:
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=optimizer,
        opt_state=opt_state,
        batch_stats=batch_stats,
        rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
    )
