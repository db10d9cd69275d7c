"""cnn_jax.nn.with_layer_settings: a model-wide convolution backend, BatchNorm axis and frozen
BatchNorm, passed to the layers as their own arguments for the duration of a call."""

from __future__ import annotations

import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.nn as cnn
from cnn_jax.models import create
from cnn_jax.nn import with_layer_settings


@pytest.fixture(scope="module")
def lenet():
    model = create("lenet5")
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 1))
    return model, model.init(jax.random.key(0), x, train=False), x


def _convolutions(apply, variables, x) -> int:
    hlo = jax.jit(lambda v, x: apply(v, x, train=False)).lower(variables, x).as_text()
    return hlo.count("convolution(")


def test_a_whole_model_takes_one_conv_backend(lenet):
    """LeNet-5's forward pass under 'auto' has two XLA convolutions (C3, C5; C1 is a banded
    matmul); 'xla' makes all three XLA's, 'im2col' none. The values agree."""
    model, variables, x = lenet
    expected = model.apply(variables, x, train=False)
    counts = {}
    for backend in ("auto", "xla", "im2col"):
        apply = with_layer_settings(model.apply, conv_backend=backend)
        counts[backend] = _convolutions(apply, variables, x)
        chex.assert_trees_all_close(apply(variables, x, train=False), expected, atol=1e-5)
    assert counts == {"auto": 2, "xla": 3, "im2col": 0}
    assert _convolutions(model.apply, variables, x) == 2  # nothing left behind by the calls


def test_a_layer_with_its_own_backend_keeps_it(rng):
    conv = cnn.Conv2d(2, 3, 3, backend="xla")
    x = jnp.asarray(rng.standard_normal((1, 6, 6, 2)).astype(np.float32))
    variables = conv.init(jax.random.key(0), x)
    apply = with_layer_settings(conv.apply, conv_backend="im2col")
    assert "convolution(" in jax.jit(apply).lower(variables, x).as_text()
    # Without one of its own, the call's backend decides.
    call = lambda v, x: cnn.Conv2d(2, 3, 3).apply(v, x, backend="im2col")
    assert "convolution(" not in jax.jit(call).lower(variables, x).as_text()


def test_unknown_backends_are_refused():
    with pytest.raises(ValueError, match="unknown conv backend 'fast'; available: auto, xla"):
        cnn.Conv2d(1, 1, 3, backend="fast")
    with pytest.raises(ValueError, match="unknown conv backend 'fast'"):
        with_layer_settings(lambda: None, conv_backend="fast")


def test_batch_norm_axis_for_every_layer_equals_the_attribute(rng):
    """vmap with an axis name stands in for devices: the model-wide axis gives what a
    BatchNorm2d built with that ``axis_name`` gives."""
    x = jnp.asarray((rng.standard_normal((6, 4, 4, 3)) * 3 + 2).astype(np.float32))
    shards = x.reshape(2, 3, 4, 4, 3)
    plain, own = cnn.BatchNorm2d(3), cnn.BatchNorm2d(3, axis_name="batch")
    variables = plain.init(jax.random.key(0), x, train=False)

    def run(apply):
        step = lambda xs: apply(variables, xs, train=True, mutable=["batch_stats"])
        return jax.vmap(step, axis_name="batch")(shards)

    chex.assert_trees_all_close(
        run(with_layer_settings(plain.apply, batch_norm_axis_name="batch")),
        run(own.apply),
        rtol=1e-6,
    )


def test_frozen_batch_norm_layers_use_and_keep_their_running_statistics():
    model = create("convnet", batch_norm=True, channels=(4, 8), in_channels=1)
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 1)) * 2 + 1
    variables = model.init(jax.random.key(0), x, train=False)
    apply = with_layer_settings(model.apply, frozen_batch_norm=("features.1",))
    _, updates = apply(variables, x, train=True, mutable=["batch_stats"])
    stats, new = variables["batch_stats"]["features"], updates["batch_stats"]["features"]
    chex.assert_trees_all_equal(new["1"], stats["1"])  # frozen: not updated
    assert int(new["5"]["num_batches_tracked"]) == 1  # the other one trains
    with pytest.raises(ValueError, match="frozen_batch_norm must be a sequence of prefixes"):
        with_layer_settings(model.apply, frozen_batch_norm="features")


def test_settings_stay_with_their_call_across_threads(lenet):
    """Another thread tracing the plain model while a call with settings is under way is not
    affected (flax's interception is per thread)."""
    model, variables, x = lenet
    counts = {}

    def plain():
        counts["plain"] = _convolutions(model.apply, variables, x)

    def apply_meanwhile(*args, **kwargs):
        thread = threading.Thread(target=plain)
        thread.start()
        thread.join()
        return model.apply(*args, **kwargs)

    counts["xla"] = _convolutions(
        with_layer_settings(apply_meanwhile, conv_backend="xla"), variables, x
    )
    assert counts == {"plain": 2, "xla": 3}
