"""The course's convolution arithmetic: formulas against real layers, gradient identities against
jax.grad, cross-correlation vs convolution."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.nn as cnn
from cnn_jax import maths
from cnn_jax.functional import conv2d
from cnn_jax.testing.parity import assert_rel_close

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("size", "k", "p", "s", "d"),
    [
        c
        for c in itertools.product([5, 8, 32], [1, 2, 3, 5], [0, 1, 2], [1, 2, 3], [1, 2])
        if c[0] + 2 * c[2] >= c[4] * (c[1] - 1) + 1
    ],
)
def test_conv_output_size_matches_layer(size, k, p, s, d):
    layer = torch.nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)
    expected = layer(torch.zeros(1, 1, size, size)).shape[-1]
    assert maths.conv_output_size(size, k, p, s, d) == expected


@pytest.mark.parametrize(
    ("size", "k", "s", "p", "ceil"),
    [
        c
        for c in itertools.product([4, 5, 6, 7, 11], [2, 3, 4], [1, 2, 3], [0, 1, 2], [False, True])
        if c[3] <= c[1] // 2
    ],
)
def test_pool_output_size_matches_torch(size, k, s, p, ceil):
    expected = torch.nn.MaxPool2d(k, s, p, ceil_mode=ceil)(torch.zeros(1, 1, size, size)).shape[-1]
    assert maths.pool_output_size(size, k, s, p, ceil_mode=ceil) == expected


@pytest.mark.parametrize(
    ("size", "k", "s", "p", "op", "d"),
    [
        (4, 3, 1, 0, 0, 1),
        (4, 3, 2, 1, 1, 1),
        (5, 4, 2, 1, 0, 1),
        (3, 3, 3, 0, 2, 1),
        (4, 3, 1, 1, 0, 2),
        (4, 2, 2, 0, 1, 3),
    ],
)
def test_conv_transpose_output_size_matches_torch(size, k, s, p, op, d):
    layer = torch.nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op, dilation=d)
    expected = layer(torch.zeros(1, 1, size, size)).shape[-1]
    assert maths.conv_transpose_output_size(size, k, s, p, op, d) == expected


@pytest.mark.parametrize(
    ("cin", "cout", "k", "groups", "bias"),
    [
        (3, 32, 3, 1, True),
        (1, 6, 5, 1, True),
        (6, 16, 5, 1, True),
        (32, 32, 3, 32, True),
        (8, 12, (1, 3), 4, False),
    ],
)
def test_conv_param_count_matches_torch_and_ours(cin, cout, k, groups, bias):
    expected = sum(
        p.numel() for p in torch.nn.Conv2d(cin, cout, k, groups=groups, bias=bias).parameters()
    )
    assert maths.conv_param_count(cin, cout, k, groups, bias) == expected
    variables = cnn.Conv2d(cin, cout, k, groups=groups, bias=bias).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, cin))
    )
    assert sum(v.size for v in jax.tree.leaves(variables)) == expected


def test_lenet_shapes_from_the_formula():
    # 32 -conv5-> 28 -pool2-> 14 -conv5-> 10 -pool2-> 5 -conv5-> 1
    sizes = [32]
    for op in ["c", "p", "c", "p", "c"]:
        last = sizes[-1]
        sizes.append(
            maths.conv_output_size(last, 5) if op == "c" else maths.pool_output_size(last, 2)
        )
    assert sizes == [32, 28, 14, 10, 5, 1]


def test_receptive_field_known_values():
    # Two 3x3 convs see 5x5; three see 7x7 (the VGG argument).
    assert [rf.size for rf in maths.receptive_field([(3, 1)] * 3)] == [3, 5, 7]
    # AlexNet-style stem: 11x11/4 then 3x3/2 pool then 5x5/1 (pad 2)
    rfs = maths.receptive_field([(11, 4, 2), (3, 2), (5, 1, 2)])
    assert [(r.size, r.jump) for r in rfs] == [(11, 4), (19, 8), (51, 8)]
    # Dilation widens the field without more parameters.
    assert maths.receptive_field([(3, 1, 0, 2)])[0].size == 5


def test_receptive_field_matches_gradient_support():
    """The receptive field is the set of inputs with non-zero gradient for one output pixel."""
    layers = [(3, 1, 0), (3, 2, 0), (3, 1, 0, 2)]
    conv = lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, (3, 3), (1, 1), "VALID")

    def net(x):
        x = conv(x)
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (3, 3), (2, 2), "VALID")
        return jax.lax.reduce_window(
            x, 0.0, jax.lax.add, (3, 3), (1, 1), "VALID", window_dilation=(2, 2)
        )

    g = jax.grad(lambda x: net(x)[0, 0])(jnp.ones((32, 32)))
    rows = np.nonzero(np.asarray(g).any(axis=1))[0]
    rf = maths.receptive_field(layers)[-1]
    assert rows.max() - rows.min() + 1 == rf.size
    assert rf.start == pytest.approx((rows.min() + rows.max() + 1) / 2)


def test_cross_correlation_vs_convolution():
    image = jnp.arange(25.0).reshape(5, 5)
    kernel = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    # by hand: out[0, 0] = 0*1 + 1*2 + 5*3 + 6*4 = 41; flipped: 0*4 + 1*3 + 5*2 + 6*1 = 19
    assert float(maths.correlate2d(image, kernel)[0, 0]) == 41.0
    assert float(maths.convolve2d(image, kernel)[0, 0]) == 19.0
    # A conv layer computes the cross-correlation
    y = conv2d(image[None, :, :, None], kernel[None, None])
    np.testing.assert_array_equal(np.asarray(y[0, :, :, 0]), maths.correlate2d(image, kernel))
    # Symmetric kernels cannot tell them apart
    sym = jnp.array([[1.0, 2.0], [2.0, 1.0]])
    np.testing.assert_array_equal(maths.correlate2d(image, sym), maths.convolve2d(image, sym))


NAIVE_CASES = [
    dict(k=3),
    dict(k=3, stride=2, padding=1),
    dict(k=(2, 3), dilation=(2, 1), padding="same"),
    dict(k=3, groups=2, padding=1),
    dict(k=1, stride=(2, 1)),
]


@pytest.mark.parametrize("case", NAIVE_CASES, ids=str)
def test_naive_conv2d_equals_layer(case, rng):
    k = case["k"]
    kh, kw = (k, k) if isinstance(k, int) else k
    groups = case.get("groups", 1)
    x = jnp.asarray(rng.standard_normal((2, 7, 8, 4)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((6, 4 // groups, kh, kw)).astype(np.float32))
    b = jnp.asarray(rng.standard_normal(6).astype(np.float32))
    kwargs = {key: v for key, v in case.items() if key != "k"}
    assert_rel_close(maths.naive_conv2d(x, w, b, **kwargs), conv2d(x, w, b, **kwargs))


GRAD_CASES = [
    dict(),
    dict(stride=2),
    dict(padding=1),
    dict(stride=2, padding=1, dilation=2),
    dict(stride=(1, 3), padding=(2, 0), dilation=(1, 2)),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_weight_and_input_gradients_are_convolutions(case, rng):
    """dL/dW = input ⋆ dL/dY and dL/dX = conv_transpose(dL/dY, W), checked against jax.grad."""
    x = jnp.asarray(rng.standard_normal((2, 9, 10, 3)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    y = conv2d(x, w, **case)
    gy = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
    loss = lambda w, x: jnp.sum(conv2d(x, w, **case) * gy)
    gw_auto, gx_auto = jax.jit(jax.grad(loss, (0, 1)))(w, x)
    gw = maths.conv2d_weight_grad(x, gy, 3, **case)
    gx = maths.conv2d_input_grad(gy, w, x.shape[1:3], **case)
    assert_rel_close(gw, gw_auto, what="dL/dW")
    assert_rel_close(gx, gx_auto, what="dL/dX")
