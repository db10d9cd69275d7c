"""Layers trace once under jit (no recompiles), keep shapes under vmap, and work with chex."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.nn as cnn
from cnn_jax.functional import conv2d

LAYERS = [
    (cnn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), (4, 10, 10, 3), (4, 10, 10, 8), {}),
    (cnn.ConvTranspose2d(3, 2, 4, stride=2, padding=1), (4, 5, 5, 3), (4, 10, 10, 2), {}),
    # torch: ceil((10 + 2 - 3) / 2) + 1 = 6 windows; the last starts at 10 < 10 + pad, so kept
    (cnn.MaxPool2d(3, 2, 1, ceil_mode=True), (4, 10, 10, 3), (4, 6, 6, 3), {}),
    (cnn.AvgPool2d(3, 2, 1, count_include_pad=False), (4, 10, 10, 3), (4, 5, 5, 3), {}),
    (cnn.AdaptiveAvgPool2d(3), (4, 10, 10, 3), (4, 3, 3, 3), {}),
    (cnn.BatchNorm2d(3), (4, 10, 10, 3), (4, 10, 10, 3), {"train": False}),
    (cnn.Dropout(0.5), (4, 6), (4, 6), {"train": False}),
    (cnn.Linear(6, 2), (4, 6), (4, 2), {}),
    (cnn.Flatten(), (4, 2, 3, 5), (4, 30), {}),
]


@pytest.mark.parametrize(
    ("layer", "in_shape", "out_shape", "kw"),
    LAYERS,
    ids=lambda v: type(v).__name__ if hasattr(v, "apply") else None,
)
def test_one_trace_for_repeated_calls(layer, in_shape, out_shape, kw):
    variables = layer.init(jax.random.key(0), jnp.zeros(in_shape), **kw)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(variables, x):
        return layer.apply(variables, x, **kw)

    for i in range(3):
        y = apply(variables, jnp.full(in_shape, float(i)))
        chex.assert_shape(y, out_shape)
        chex.assert_tree_all_finite(y)


def test_batchnorm_train_step_traces_once():
    bn = cnn.BatchNorm2d(3)
    variables = bn.init(jax.random.key(0), jnp.zeros((4, 5, 5, 3)), train=False)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(variables, x):
        return bn.apply(variables, x, train=True, mutable=["batch_stats"])

    for i in range(3):
        _, updates = step(variables, jnp.full((4, 5, 5, 3), float(i)) + jnp.arange(3.0))
        variables = {**variables, **updates}
    assert int(variables["batch_stats"]["num_batches_tracked"]) == 3


def test_functional_conv_is_vmap_and_grad_safe(rng):
    x = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 2)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((4, 2, 3, 3)).astype(np.float32))
    batched = jax.vmap(lambda xi: conv2d(xi, w, padding=1))(x)
    chex.assert_shape(batched, (3, 2, 6, 6, 4))
    np.testing.assert_allclose(batched[1], conv2d(x[1], w, padding=1), rtol=1e-6)
    g = jax.grad(lambda w: jnp.sum(conv2d(x[0], w) ** 2))(w)
    chex.assert_equal_shape([g, w])
