"""cnn_jax.functional.materialize: exactly the identity, and a boundary XLA:CPU's fusion does not
cross (so a residual stream is computed once, not inside every fusion that reads it)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.functional as F
from cnn_jax import models


@pytest.mark.parametrize(
    "x",
    [
        np.array([-0.0, 0.0, np.nan, np.inf, -np.inf, 1e-45, -3.5], np.float32),
        np.array([np.nan, -0.0, 2.0], np.float32),  # NaN first: the predicate's own element
        np.array([[-0.0, 1.5]], jnp.bfloat16),
        np.array([-2, 0, 7], np.int32),
        np.array([True, False]),
    ],
    ids=["float32", "nan-first", "bfloat16", "int32", "bool"],
)
def test_materialize_is_the_identity_bit_for_bit(x):
    out = jax.jit(F.materialize)(jnp.asarray(x))
    assert out.dtype == x.dtype and out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out).view(np.uint8), np.asarray(x).view(np.uint8))


def test_materialize_derivatives_and_vmap_are_the_identitys():
    x = jnp.array([[-1.0, 2.0, -0.0], [3.0, np.nan, 4.0]])
    g = jax.grad(lambda t: jnp.sum(F.materialize(t) * jnp.arange(3.0)))(jnp.nan_to_num(x))
    np.testing.assert_array_equal(g, jnp.broadcast_to(jnp.arange(3.0), x.shape))
    np.testing.assert_array_equal(
        jax.jvp(F.materialize, (x,), (jnp.ones_like(x),))[1], jnp.ones_like(x)
    )
    np.testing.assert_array_equal(jax.vmap(F.materialize)(x), x)
    assert F.materialize(jnp.zeros((0, 3))).shape == (0, 3)


def _fused_maxima(text: str) -> int:
    """The most ``maximum`` ops in one fused computation of an optimised HLO module."""
    counts, current = {}, None
    for line in text.splitlines():
        header = re.match(r"^%?(fused[\w.\-]*) .*\{$", line)
        if header:
            current = header.group(1)
            counts[current] = 0
        elif line and not line.startswith(" "):
            current = None
        elif current and " maximum(" in line:
            counts[current] += 1
    return max(counts.values(), default=0)


def _residual_stream(store: bool):
    """Four residual "blocks" ``y = relu(y + a * s)``, each output read by an elementwise
    consumer and, transposed, by a matmul (as a weight gradient reads a block's input)."""

    def blocks(y, a, s):
        total = 0.0
        for _ in range(4):
            y = jnp.maximum(y + a * s, 0.0)
            if store:
                y = F.materialize(y)
            total = total + jnp.sum(jnp.tanh(y)) + jnp.sum(y.T @ a)
        return total

    return blocks


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion decision")
def test_materialize_stops_xla_cpu_recomputing_a_residual_stream():
    args = (jnp.ones((64, 32)), jnp.ones((64, 32)), jnp.ones((32,)))
    compiled = {
        store: jax.jit(_residual_stream(store)).lower(*args).compile().as_text()
        for store in (False, True)
    }
    # Without it XLA fuses the whole chain into consumers of the last block (the premise: if a
    # later XLA stops doing this, the test says so); with it every ReLU is computed once.
    assert _fused_maxima(compiled[False]) > 1
    assert _fused_maxima(compiled[True]) == 1
    assert " conditional(" in compiled[True]
    np.testing.assert_allclose(
        jax.jit(_residual_stream(True))(*args), jax.jit(_residual_stream(False))(*args), rtol=1e-6
    )


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU simplification")
def test_materialize_of_an_array_with_a_constant_first_element_is_folded_away():
    """The documented limit: the predicate reads the first element, so on a zero-padded array
    (whose corner XLA knows is 0) the conditional is removed; before the pad it stays."""
    x = jnp.arange(12.0).reshape(3, 4) + 1.0

    def compiled(f):
        return jax.jit(lambda x: f(x) * 2.0).lower(x).compile().as_text()

    assert " conditional(" not in compiled(lambda x: F.materialize(jnp.pad(x, 1)))
    assert " conditional(" in compiled(lambda x: jnp.pad(F.materialize(x), 1))


@pytest.mark.parametrize(
    ("name", "blocks"),
    [("resnet18", 8), ("resnet50", 16), ("regnet_y_400mf", 0), ("mobilenet_v2", 0)],
)
def test_resnet_blocks_store_their_outputs(name, blocks):
    """ResNet's blocks store their output: one ``cond`` per block in the traced forward pass;
    the other families' blocks do not (experiments.bench_materialize measured no gain)."""
    model = models.create(name, num_classes=10)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
    assert sum(eqn.primitive.name == "cond" for eqn in jaxpr.eqns) == blocks
