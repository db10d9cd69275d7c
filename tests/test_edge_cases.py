"""Edge cases torch's own tests exercise: empty inputs and zero-sized layers, where torch accepts,
refuses, or (documented) where cnn_jax decides otherwise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.nn as cnn
from cnn_jax.interop import from_torch, to_torch

torch = pytest.importorskip("torch")


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def test_conv2d_with_no_input_channels_is_its_bias():
    """torch accepts Conv2d(0, out, k): an empty weight. The output is the empty sum plus the
    bias, over out_channels (torch 2.13's forward returns 0 channels instead: documented)."""
    theirs = torch.nn.Conv2d(0, 4, 3, padding=1, stride=2)
    with torch.no_grad():
        theirs.bias.uniform_(-1, 1)  # torch leaves it uninitialised when fan_in is 0
    ours = cnn.Conv2d(0, 4, 3, padding=1, stride=2)
    fresh = ours.init(jax.random.key(0), jnp.zeros((1, 5, 5, 0)))
    assert fresh["params"]["weight"].shape == (4, 0, 3, 3)
    np.testing.assert_array_equal(fresh["params"]["bias"], np.zeros(4))
    variables = from_torch(ours, theirs.state_dict(), sample_input=jnp.zeros((1, 5, 5, 0)))
    y = ours.apply(variables, jnp.zeros((2, 5, 5, 0)))
    assert y.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(y, np.broadcast_to(theirs.bias.detach().numpy(), y.shape))
    assert set(to_torch(ours, variables)) == set(theirs.state_dict())
    grads = jax.grad(lambda v: ours.apply(v, jnp.zeros((2, 5, 5, 0))).sum())(variables)
    np.testing.assert_array_equal(grads["params"]["bias"], np.full(4, 2 * 3 * 3.0))


def test_transposed_conv_with_no_input_channels_is_refused():
    # torch builds it and then fails in forward ("expected weight to be at least 1 at dim 0").
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        cnn.ConvTranspose2d(0, 4, 3)


POOLS = [
    ("MaxPool2d", (2,)),
    ("AvgPool2d", (2,)),
    ("AdaptiveMaxPool2d", (2,)),
    ("AdaptiveAvgPool2d", (2,)),
]


@pytest.mark.parametrize(("name", "args"), POOLS, ids=[p[0] for p in POOLS])
@pytest.mark.parametrize("shape", [(2, 0, 6, 6), (0, 3, 6, 6), (2, 3, 0, 6)], ids=str)
def test_pools_on_empty_inputs_do_what_torch_does(name, args, shape):
    x = np.zeros(shape, np.float32)
    try:
        expected = getattr(torch.nn, name)(*args)(torch.tensor(x))
    except RuntimeError:
        expected = None
    ours = getattr(cnn, name)(*args)
    if expected is None:
        with pytest.raises(ValueError, match="expected a non-empty"):
            ours.apply({}, x.transpose(0, 2, 3, 1))
    else:
        y = ours.apply({}, x.transpose(0, 2, 3, 1))
        assert y.shape == _nhwc(expected).shape


def test_batch_norm_counts_an_empty_training_batch_like_torch():
    theirs = torch.nn.BatchNorm2d(3, momentum=0.5)
    with torch.no_grad():
        theirs.running_mean.fill_(2.0)
        theirs.running_var.fill_(3.0)
    ours = cnn.BatchNorm2d(3, momentum=0.5)
    variables = from_torch(ours, theirs.state_dict())
    for shape in [(0, 3, 4, 4), (2, 3, 0, 4)]:
        expected = theirs(torch.zeros(shape))
        y, updates = ours.apply(
            variables, jnp.zeros(_nhwc(torch.zeros(shape)).shape), train=True,
            mutable=["batch_stats"],
        )  # fmt: skip
        variables = {**variables, **updates}
        assert y.shape == _nhwc(expected).shape
        state = to_torch(ours, variables)
        for key, value in theirs.state_dict().items():
            np.testing.assert_array_equal(state[key].numpy(), value.numpy(), err_msg=key)
    assert int(variables["batch_stats"]["num_batches_tracked"]) == 2


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_batch_norm_momentum_outside_0_1_is_refused(momentum):
    # torch accepts any float; outside [0, 1] its "running average" extrapolates. Decided: refuse.
    torch.nn.BatchNorm2d(3, momentum=momentum)  # accepted by torch
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\] or None"):
        cnn.BatchNorm2d(3, momentum=momentum)
