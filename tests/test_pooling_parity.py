"""MaxPool2d, AvgPool2d and the adaptive pools equal torch.nn's, forward and gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.nn as cnn
from cnn_jax.testing.parity import check_parity

torch = pytest.importorskip("torch")

MAX_CASES = [
    dict(k=2, size=(4, 4)),
    dict(k=2, size=(5, 5)),  # floor drops the last row/col
    dict(k=2, ceil_mode=True, size=(5, 5)),  # ceil keeps a partial window
    dict(k=3, stride=2, size=(7, 8)),
    dict(k=3, stride=2, ceil_mode=True, size=(8, 8)),
    dict(k=3, stride=2, padding=1, size=(7, 6)),  # ResNet's stem pool
    dict(k=3, stride=2, padding=1, ceil_mode=True, size=(6, 6)),  # last window would start in pad
    dict(k=2, stride=2, padding=1, ceil_mode=True, size=(5, 4)),
    dict(k=(2, 3), stride=(1, 2), padding=(1, 1), size=(5, 7)),
    dict(k=3, dilation=2, size=(9, 9)),
    dict(k=3, dilation=(2, 1), stride=1, padding=1, ceil_mode=True, size=(8, 7)),
    dict(k=4, stride=3, padding=2, ceil_mode=True, size=(10, 11)),
    dict(k=1, stride=2, size=(5, 5)),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_max_pool2d_matches_torch(case, rng):
    args = dict(
        kernel_size=case["k"],
        stride=case.get("stride"),
        padding=case.get("padding", 0),
        dilation=case.get("dilation", 1),
        ceil_mode=case.get("ceil_mode", False),
    )
    x = rng.standard_normal((2, 3, *case["size"])).astype(np.float32)
    check_parity(cnn.MaxPool2d(**args), torch.nn.MaxPool2d(**args), x)


AVG_CASES = [
    dict(k=2, size=(4, 4)),
    dict(k=3, stride=2, size=(7, 8)),
    dict(k=3, stride=1, padding=1, size=(5, 5)),
    dict(k=3, stride=1, padding=1, count_include_pad=False, size=(5, 5)),
    dict(k=3, stride=2, padding=1, ceil_mode=True, size=(6, 6)),
    dict(k=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False, size=(6, 7)),
    dict(k=2, stride=2, ceil_mode=True, size=(5, 5)),  # window past the input, no padding
    dict(k=2, stride=2, ceil_mode=True, count_include_pad=False, size=(5, 5)),
    dict(k=4, stride=3, padding=2, ceil_mode=True, size=(10, 11)),
    dict(k=(2, 3), stride=(2, 1), padding=(1, 0), size=(5, 6)),
    dict(k=3, padding=1, divisor_override=2, size=(6, 6)),
    dict(k=2, ceil_mode=True, divisor_override=3, size=(5, 5)),
    dict(k=5, stride=3, size=(32, 32)),  # LeNet-like subsampling
]


@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avg_pool2d_matches_torch(case, rng):
    args = dict(
        kernel_size=case["k"],
        stride=case.get("stride"),
        padding=case.get("padding", 0),
        ceil_mode=case.get("ceil_mode", False),
        count_include_pad=case.get("count_include_pad", True),
        divisor_override=case.get("divisor_override"),
    )
    x = rng.standard_normal((2, 3, *case["size"])).astype(np.float32)
    check_parity(cnn.AvgPool2d(**args), torch.nn.AvgPool2d(**args), x)


ADAPTIVE_CASES = [
    (1, (7, 7)),  # global pooling
    ((1, 1), (5, 6)),
    (2, (8, 8)),  # divisible
    (3, (7, 7)),  # overlapping windows
    ((3, 5), (10, 7)),
    (7, (5, 5)),  # output larger than input: pixels repeat
    ((None, 2), (5, 6)),  # None keeps the input size
    ((4, None), (9, 3)),
    (6, (32, 32)),  # AlexNet's AdaptiveAvgPool2d((6, 6)) on a small input
]


@pytest.mark.parametrize(("out", "size"), ADAPTIVE_CASES, ids=str)
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pools_match_torch(kind, out, size, rng):
    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    if kind == "avg":
        check_parity(cnn.AdaptiveAvgPool2d(out), torch.nn.AdaptiveAvgPool2d(out), x)
    else:
        check_parity(cnn.AdaptiveMaxPool2d(out), torch.nn.AdaptiveMaxPool2d(out), x)


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _indices_values_and_gradient_as_torchs(layer, xt, values_t, indices_t, weights):
    """``layer`` (``return_indices=True``) on torch's input ``xt``: values and indices equal
    torch's, and the gradient of ``sum(values * weights)`` equals ``xt.grad``. Compiled: op by
    op is slow. Returns the indices."""
    x_nhwc = jnp.asarray(_nhwc(xt))
    values, indices = jax.jit(layer.apply)({}, x_nhwc)
    np.testing.assert_array_equal(np.asarray(values), _nhwc(values_t))
    np.testing.assert_array_equal(np.asarray(indices), _nhwc(indices_t))
    w = jnp.asarray(weights.transpose(0, 2, 3, 1))
    grad = jax.jit(jax.grad(lambda x: (layer.apply({}, x)[0] * w).sum()))(x_nhwc)
    np.testing.assert_allclose(np.asarray(grad), _nhwc(xt.grad), rtol=0, atol=1e-6)
    return indices


@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_max_pool2d_indices_values_and_gradient_match_torch(case, rng):
    """return_indices=True: torch's flat per-plane indices, the same values, and the gradient
    of the values (routed to the chosen pixel) equal torch's."""
    args = dict(
        kernel_size=case["k"],
        stride=case.get("stride"),
        padding=case.get("padding", 0),
        dilation=case.get("dilation", 1),
        ceil_mode=case.get("ceil_mode", False),
    )
    x = rng.standard_normal((2, 3, *case["size"])).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    values_t, indices_t = torch.nn.MaxPool2d(**args, return_indices=True)(xt)
    weights = rng.standard_normal(values_t.shape).astype(np.float32)
    (values_t * torch.tensor(weights)).sum().backward()

    layer = cnn.MaxPool2d(**args, return_indices=True)
    indices = _indices_values_and_gradient_as_torchs(layer, xt, values_t, indices_t, weights)
    assert indices.dtype == jnp.int32


def test_ties_go_to_the_first_maximum_like_torch():
    x = np.zeros((1, 1, 4, 4), np.float32)  # every window is a tie
    _, expected = torch.nn.MaxPool2d(2, return_indices=True)(torch.tensor(x))
    _, ours = cnn.MaxPool2d(2, return_indices=True).apply({}, x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(ours), _nhwc(expected))


@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_max_pool2d_gradient_with_ties_is_torchs(case, rng):
    """Inputs with many equal values (as after a ReLU): each window's gradient goes to its first
    maximum, summed where windows overlap, dilated windows included; forward mode agrees."""
    args = dict(
        kernel_size=case["k"],
        stride=case.get("stride"),
        padding=case.get("padding", 0),
        dilation=case.get("dilation", 1),
        ceil_mode=case.get("ceil_mode", False),
    )
    x = rng.integers(0, 3, (2, 3, *case["size"])).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.MaxPool2d(**args)(xt)
    weights = rng.standard_normal(yt.shape).astype(np.float32)
    (yt * torch.tensor(weights)).sum().backward()
    layer = cnn.MaxPool2d(**args)
    x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    w = jnp.asarray(weights.transpose(0, 2, 3, 1))
    grad = jax.jit(jax.grad(lambda x: (layer.apply({}, x) * w).sum()))(x_nhwc)
    # Overlapping windows add in a different order from torch's: rounding, nothing more.
    np.testing.assert_allclose(np.asarray(grad), _nhwc(xt.grad), rtol=1e-6, atol=1e-6)
    # Forward mode: the directional derivative along v is <grad, v> for this piecewise-linear map.
    v = jnp.asarray(rng.standard_normal(x_nhwc.shape).astype(np.float32))
    _, tangent = jax.jvp(lambda x: (layer.apply({}, x) * w).sum(), (x_nhwc,), (v,))
    np.testing.assert_allclose(float(tangent), float(jnp.vdot(grad, v)), rtol=1e-5)


def test_max_pool2d_takes_torchs_positional_order():
    """torch: (kernel_size, stride, padding, dilation, return_indices, ceil_mode). A five-argument
    positional call once bound return_indices' value to ceil_mode, silently."""
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 7)).astype(np.float32)
    theirs = torch.nn.MaxPool2d(3, 2, 1, 1, True)(torch.tensor(x))
    ours = cnn.MaxPool2d(3, 2, 1, 1, True).apply({}, x.transpose(0, 2, 3, 1))
    assert isinstance(ours, tuple) and len(ours) == 2
    np.testing.assert_array_equal(np.asarray(ours[1]), _nhwc(theirs[1]))
    six = cnn.MaxPool2d(3, 2, 1, 1, False, True).apply({}, x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(
        np.asarray(six), _nhwc(torch.nn.MaxPool2d(3, 2, 1, 1, False, True)(torch.tensor(x)))
    )
    with pytest.raises(TypeError, match="return_indices must be a bool"):
        cnn.MaxPool2d(3, 2, 1, 1, "yes")
    from flax import nnx

    from cnn_jax import nnx as cnnx

    del nnx
    stateful = cnnx.MaxPool2d(3, 2, 1, 1, True)(x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(stateful[1]), _nhwc(theirs[1]))


@pytest.mark.parametrize(
    ("k", "stride", "padding", "size", "output_size"),
    [
        (2, None, 0, (4, 6), None),
        (3, 2, 1, (7, 7), None),
        (3, 2, 1, (7, 8), (8, 8)),  # the pool mapped 7 and 8 to the same size: pick 8
        (2, 2, 0, (5, 5), (5, 5)),
    ],
    ids=str,
)
def test_max_unpool2d_matches_torch(k, stride, padding, size, output_size, rng):
    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    pooled, indices = torch.nn.MaxPool2d(k, stride, padding, return_indices=True)(torch.tensor(x))
    expected = torch.nn.MaxUnpool2d(k, stride, padding)(
        pooled, indices, output_size=None if output_size is None else list(output_size)
    )
    ours = cnn.MaxUnpool2d(k, stride, padding).apply(
        {}, _nhwc(pooled), _nhwc(indices).astype(np.int32), output_size
    )
    np.testing.assert_array_equal(np.asarray(ours), _nhwc(expected))


def test_max_unpool2d_refuses_what_torch_refuses():
    import jax.numpy as jnp

    unpool = cnn.MaxUnpool2d(2)
    y = jnp.ones((1, 2, 2, 1))
    with pytest.raises(ValueError, match="indices must lie in"):
        unpool.apply({}, y, jnp.full((1, 2, 2, 1), 16, jnp.int32))  # the plane is 4x4
    with pytest.raises(ValueError, match="out of range"):
        unpool.apply({}, y, jnp.zeros((1, 2, 2, 1), jnp.int32), (7, 7))
    with pytest.raises(ValueError, match="same shape"):
        unpool.apply({}, y, jnp.zeros((1, 2, 1, 1), jnp.int32))


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=(3,), stride=(2,), padding=(1,)),
        dict(kernel_size=3, stride=()),
        dict(kernel_size=3, stride=[]),
        dict(kernel_size=(3, 2), stride=(2,)),
    ],
    ids=str,
)
@pytest.mark.parametrize("kind", ["Avg", "Max"])
def test_pools_take_torchs_one_element_and_empty_arguments(kind, kw, rng):
    """torch's pools read a one-element sequence as both sides and an empty stride as the
    kernel (cases from its own tests)."""
    x = rng.standard_normal((1, 2, 6, 7)).astype(np.float32)
    layer = getattr(cnn, f"{kind}Pool2d")(**kw)
    check_parity(layer, getattr(torch.nn, f"{kind}Pool2d")(**kw), x)
    from cnn_jax.inspect import layers

    assert (
        layers(layer, (1, 6, 7, 2))[0].output_shape[1:3]
        == layer.apply({}, x.transpose(0, 2, 3, 1)).shape[1:3]
    )


@pytest.mark.parametrize(("out", "size"), ADAPTIVE_CASES, ids=str)
def test_adaptive_max_pool2d_indices_match_torch(out, size, rng):

    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    x[0, 0] = 0.0  # a plane of ties: the first maximum wins, as in torch
    xt = torch.tensor(x, requires_grad=True)
    values_t, indices_t = torch.nn.AdaptiveMaxPool2d(out, return_indices=True)(xt)
    weights = rng.standard_normal(values_t.shape).astype(np.float32)
    (values_t * torch.tensor(weights)).sum().backward()
    layer = cnn.AdaptiveMaxPool2d(out, return_indices=True)
    _indices_values_and_gradient_as_torchs(layer, xt, values_t, indices_t, weights)
