"""torchvision's building blocks against torchvision's own classes (Conv2dNormActivation,
SqueezeExcitation, StochasticDepth, shufflenetv2's channel_shuffle) and torch.nn.ChannelShuffle:
values, gradients, state_dict keys, torch's argument errors, and the drop rate and scaling of
stochastic depth in training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cnn_jax.functional as F
import cnn_jax.nn as cnn
from cnn_jax.interop import from_torch
from cnn_jax.testing.parity import check_parity, nchw_to_nhwc, nhwc_to_nchw
from cnn_jax.testing.torch_models import randomize, torchvision_module

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tv():
    """torchvision.ops.misc, torchvision.ops.stochastic_depth and models.shufflenetv2."""
    misc = torchvision_module("ops.misc")
    if misc is None:
        pytest.skip("torchvision is not installed: its own classes are the reference")
    return {
        "misc": misc,
        "sd": torchvision_module("ops.stochastic_depth"),
        "shufflenet": torchvision_module("models.shufflenetv2"),
    }


def _keys(variables) -> list[str]:
    return sorted(
        key
        for collection in ("params", "batch_stats")
        for key in traverse_util.flatten_dict(variables.get(collection, {}), sep=".")
    )


# ---------------------------------------------------------------------------- channel shuffle


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_channel_shuffle_orders_channels_as_torch(tv, groups, rng):
    x = rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    ours = np.asarray(F.channel_shuffle(jnp.asarray(nchw_to_nhwc(x)), groups))
    expected = torch.nn.functional.channel_shuffle(torch.tensor(x), groups).numpy()
    np.testing.assert_array_equal(nhwc_to_nchw(ours), expected)
    torchvisions = tv["shufflenet"].channel_shuffle(torch.tensor(x), groups).numpy()
    np.testing.assert_array_equal(nhwc_to_nchw(ours), torchvisions)
    check_parity(cnn.ChannelShuffle(groups), torch.nn.ChannelShuffle(groups), x)


def test_channel_shuffle_rank3_channels_last(rng):
    x = rng.standard_normal((2, 5, 6)).astype(np.float32)  # (N, L, C); torch's (N, C, L)
    ours = np.asarray(F.channel_shuffle(jnp.asarray(x), 3))
    expected = torch.nn.functional.channel_shuffle(torch.tensor(x).movedim(-1, 1), 3)
    np.testing.assert_array_equal(ours, expected.movedim(1, -1).numpy())


def test_channel_shuffle_errors_as_torch():
    x = jnp.ones((1, 2, 2, 5))
    with pytest.raises(RuntimeError, match="Number of channels must be divisible by groups"):
        torch.nn.functional.channel_shuffle(torch.ones(1, 5, 2, 2), 2)
    with pytest.raises(ValueError, match="Got 5 channels and 2 groups"):
        F.channel_shuffle(x, 2)
    with pytest.raises(RuntimeError, match="groups to divide channels in must be positive"):
        torch.nn.functional.channel_shuffle(torch.ones(1, 4, 2, 2), 0)
    with pytest.raises(ValueError, match="groups to divide channels in must be positive"):
        F.channel_shuffle(x, 0)
    with pytest.raises(ValueError, match="groups to divide channels in must be positive"):
        cnn.ChannelShuffle(-1)
    with pytest.raises(ValueError, match="expects input with > 2 dims"):
        F.channel_shuffle(jnp.ones((2, 4)), 2)


# ---------------------------------------------------------------------------- permute


def test_permute_refuses_other_permutations():
    for dims in ([0, 1, 2, 3], [0, 2, 1, 3], [1, 0]):
        with pytest.raises(ValueError, match="only torch's NCHW <-> NHWC permutations"):
            cnn.Permute(dims)
    with pytest.raises(ValueError, match="4-D NHWC"):
        cnn.Permute([0, 2, 3, 1]).apply({}, jnp.ones((2, 3)))


# ---------------------------------------------------------------------------- stochastic depth


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_stochastic_depth_eval_mode_is_torchvisions(tv, mode, p, rng):
    theirs = tv["sd"].StochasticDepth(p, mode).eval()
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    check_parity(cnn.StochasticDepth(p, mode), theirs, x, train=False)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_stochastic_depth_p0_and_p1_in_training_as_torchvision(tv, mode, rng):
    x = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    x[0, 0, 0, 0] = np.inf
    key = {"dropout": jax.random.key(0)}
    same = cnn.StochasticDepth(0.0, mode).apply({}, jnp.asarray(x), train=True, rngs=key)
    np.testing.assert_array_equal(np.asarray(same), x)
    dropped = cnn.StochasticDepth(1.0, mode).apply({}, jnp.asarray(x), train=True, rngs=key)
    expected = tv["sd"].stochastic_depth(torch.tensor(x), 1.0, mode, True).numpy()
    np.testing.assert_array_equal(np.asarray(dropped), expected)  # 0, and NaN for inf
    assert np.isnan(expected[0, 0, 0, 0])


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_stochastic_depth_row_mode_drop_rate_and_scaling(tv, p):
    """One draw per sample: the dropped fraction is p (within 5 standard errors), survivors
    are scaled by exactly 1/(1 - p), and every element of a sample shares its fate. torch's
    own drop rate is checked the same way."""
    n = 20000
    layer = cnn.StochasticDepth(p, "row")
    x = jnp.ones((n, 2, 2, 3))
    y = np.asarray(jax.jit(lambda k: layer.apply({}, x, train=True, rngs={"dropout": k}))(
        jax.random.key(1)
    ))  # fmt: skip
    per_row = y.reshape(n, -1)
    assert np.all(per_row == per_row[:, :1]), "a sample is dropped whole or kept whole"
    kept = per_row[:, 0] != 0
    np.testing.assert_array_equal(np.unique(per_row[kept, 0]), np.float32(1 / (1 - p)))
    bound = 5 * np.sqrt(p * (1 - p) / n)
    assert abs((1 - kept.mean()) - p) < bound
    torch.manual_seed(0)
    theirs = tv["sd"].stochastic_depth(torch.ones(n, 1, 1, 1), p, "row", True).numpy().ravel()
    assert abs((theirs == 0).mean() - p) < bound
    np.testing.assert_array_equal(np.unique(theirs[theirs != 0]), np.float32(1 / (1 - p)))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_stochastic_depth_batch_mode_drops_the_whole_input(p):
    trials = 4000
    layer = cnn.StochasticDepth(p, "batch")
    x = jnp.ones((3, 2, 2, 4))
    draw = jax.jit(jax.vmap(lambda k: layer.apply({}, x, train=True, rngs={"dropout": k})))
    y = np.asarray(draw(jax.random.split(jax.random.key(2), trials))).reshape(trials, -1)
    assert np.all(y == y[:, :1]), "batch mode: one draw for the whole input"
    kept = y[:, 0] != 0
    np.testing.assert_array_equal(np.unique(y[kept, 0]), np.float32(1 / (1 - p)))
    assert abs((1 - kept.mean()) - p) < 5 * np.sqrt(p * (1 - p) / trials)


def test_stochastic_depth_uses_the_dropout_stream_and_its_gradient_is_the_mask():
    layer = cnn.StochasticDepth(0.5, "row")
    x = jnp.arange(1.0, 33.0).reshape(32, 1)
    run = lambda key: layer.apply({}, x, train=True, rngs={"dropout": key})
    a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    grad = jax.grad(
        lambda v: layer.apply({}, v, train=True, rngs={"dropout": jax.random.key(0)}).sum()
    )(x)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(a / x))
    with pytest.raises(Exception, match="dropout"):  # flax: no 'dropout' rng given
        layer.apply({}, x, train=True)
    with pytest.raises(ValueError, match="needs an rng key"):
        F.stochastic_depth(x, 0.5, "row", True)


def test_stochastic_depth_errors_as_torchvision(tv):
    x = torch.ones(2, 3)
    for p, mode, message in [
        (-0.1, "row", "drop probability has to be between 0 and 1, but got -0.1"),
        (1.5, "batch", "drop probability has to be between 0 and 1, but got 1.5"),
        (0.5, "col", "mode has to be either 'batch' or 'row', but got col"),
    ]:
        with pytest.raises(ValueError, match=message):
            tv["sd"].stochastic_depth(x, p, mode, True)
        with pytest.raises(ValueError, match=message):
            F.stochastic_depth(jnp.ones((2, 3)), p, mode, False)
        with pytest.raises(ValueError, match=message):
            cnn.StochasticDepth(p, mode)


# ---------------------------------------------------------------------------- squeeze-excitation

SE_VARIANTS = {
    "default": ({}, {}),
    "mobilenet_v3": (
        {"scale_activation": cnn.Hardsigmoid},
        {"scale_activation": torch.nn.Hardsigmoid},
    ),
    "efficientnet": ({"activation": cnn.SiLU}, {"activation": torch.nn.SiLU}),
}


@pytest.mark.parametrize("shape, squeeze", [((2, 16, 5, 5), 4), ((1, 8, 3, 7), 2)], ids=str)
@pytest.mark.parametrize("variant", SE_VARIANTS)
def test_squeeze_excitation_is_torchvisions(tv, variant, shape, squeeze, rng):
    ours_kw, theirs_kw = SE_VARIANTS[variant]
    torch.manual_seed(0)
    theirs = tv["misc"].SqueezeExcitation(shape[1], squeeze, **theirs_kw)
    x = (2.0 * rng.standard_normal(shape)).astype(np.float32)
    ours = cnn.SqueezeExcitation(shape[1], squeeze, **ours_kw)
    variables = check_parity(ours, theirs, x)
    assert _keys(variables) == sorted(theirs.state_dict())  # fc1.weight, fc1.bias, fc2.*


def test_squeeze_excitation_initialisers_and_layout_error():
    se = cnn.SqueezeExcitation(
        8, 2, weight_init=jax.nn.initializers.ones, bias_init=jax.nn.initializers.zeros
    )
    variables = se.init(jax.random.key(0), jnp.zeros((1, 2, 2, 8)))
    np.testing.assert_array_equal(variables["params"]["fc2"]["weight"], np.ones((8, 2, 1, 1)))
    np.testing.assert_array_equal(variables["params"]["fc1"]["bias"], np.zeros(2))
    with pytest.raises(ValueError, match="looks like NCHW"):
        se.init(jax.random.key(0), jnp.zeros((1, 8, 4, 4)))


# ---------------------------------------------------------------------------- Conv2dNormActivation

_BN = functools.partial(cnn.BatchNorm2d, eps=1e-3, momentum=0.01)


def _cases():
    misc_bn = lambda: functools.partial(torch.nn.BatchNorm2d, eps=1e-3, momentum=0.01)
    ln = lambda: functools.partial(torchvision_module("models.convnext").LayerNorm2d, eps=1e-6)
    return {
        # name: (args, ours kwargs, torch kwargs factory)
        "defaults": ((3, 8), {}, dict),
        "stride2_k5": ((4, 6, 5, 2), {}, dict),
        "mobilenet_v2_relu6_depthwise": (
            (6, 6),
            {"groups": 6, "activation_layer": cnn.ReLU6},
            lambda: {"groups": 6, "activation_layer": torch.nn.ReLU6},
        ),
        "mobilenet_v3_hardswish": (
            (4, 8),
            {"norm_layer": _BN, "activation_layer": cnn.Hardswish},
            lambda: {"norm_layer": misc_bn(), "activation_layer": torch.nn.Hardswish},
        ),
        "efficientnet_silu": (
            (4, 8, 1),
            {"norm_layer": _BN, "activation_layer": cnn.SiLU},
            lambda: {"norm_layer": misc_bn(), "activation_layer": torch.nn.SiLU},
        ),
        "no_norm": ((3, 5), {"norm_layer": None}, lambda: {"norm_layer": None}),
        "no_activation": ((3, 5), {"activation_layer": None}, lambda: {"activation_layer": None}),
        "neither": (
            (3, 5),
            {"norm_layer": None, "activation_layer": None},
            lambda: {"norm_layer": None, "activation_layer": None},
        ),
        "no_norm_no_bias": (
            (3, 5),
            {"norm_layer": None, "bias": False},
            lambda: {"norm_layer": None, "bias": False},
        ),
        "norm_and_bias": ((3, 5), {"bias": True}, lambda: {"bias": True}),
        "pair_kernel_dilation": (
            (3, 4, (3, 5)),
            {"dilation": (2, 1), "stride": (2, 1)},
            lambda: {"dilation": (2, 1), "stride": (2, 1)},
        ),
        "explicit_padding": ((3, 4, 3), {"padding": 0}, lambda: {"padding": 0}),
        "gelu_inplace_none": (
            (3, 4),
            {"activation_layer": cnn.GELU, "inplace": None},
            lambda: {"activation_layer": torch.nn.GELU, "inplace": None},
        ),
        "convnext_stem": (
            (3, 8, 4, 4),
            {
                "padding": 0,
                "norm_layer": functools.partial(cnn.LayerNorm2d, eps=1e-6),
                "activation_layer": None,
                "bias": True,
            },
            lambda: {"padding": 0, "norm_layer": ln(), "activation_layer": None, "bias": True},
        ),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_conv2d_norm_activation_is_torchvisions(tv, name, rng):
    """Eval mode (BatchNorm statistics randomised): values, every gradient and the state_dict
    keys at torchvision's Sequential indices, with None layers left out as torchvision does."""
    args, ours_kw, theirs_kw = _cases()[name]
    torch.manual_seed(0)
    theirs = randomize(tv["misc"].Conv2dNormActivation(*args, **theirs_kw())).eval()
    ours = cnn.Conv2dNormActivation(*args, **ours_kw)
    x = rng.standard_normal((2, args[0], 9, 8)).astype(np.float32)
    variables = check_parity(ours, theirs, x, train=False)
    assert _keys(variables) == sorted(theirs.state_dict())


def test_conv2d_norm_activation_train_mode_updates_statistics_as_torchvision(tv, rng):
    torch.manual_seed(0)
    theirs = tv["misc"].Conv2dNormActivation(3, 6, activation_layer=torch.nn.Hardswish)
    ours = cnn.Conv2dNormActivation(3, 6, activation_layer=cnn.Hardswish)
    variables = from_torch(ours, theirs.state_dict())
    x = rng.standard_normal((4, 3, 7, 7)).astype(np.float32)
    expected = theirs.train()(torch.tensor(x)).detach().numpy()
    y, updates = ours.apply(
        variables, jnp.asarray(nchw_to_nhwc(x)), train=True, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(nhwc_to_nchw(y), expected, rtol=1e-5, atol=1e-5)
    stats = updates["batch_stats"]["1"]
    np.testing.assert_allclose(stats["running_mean"], theirs[1].running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(stats["running_var"], theirs[1].running_var.numpy(), rtol=1e-5)
    assert int(stats["num_batches_tracked"]) == 1


def test_conv2d_norm_activation_layers_and_arguments():
    block = cnn.Conv2dNormActivation(3, 8, norm_layer=None, activation_layer=cnn.ReLU6)
    variables = block.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)), train=False)
    assert sorted(variables["params"]["0"]) == ["bias", "weight"]  # bias: no norm layer
    assert "1" not in variables["params"]
    assert block.apply(variables, jnp.zeros((1, 6, 6, 3)), train=False).shape == (1, 6, 6, 8)
    assert cnn.Conv2dNormActivation(3, 8, kernel_size=5, dilation=2).example_input_shape()[-1] == 3
    with pytest.raises(ValueError, match="divisible by groups"):
        cnn.Conv2dNormActivation(3, 8, groups=2)
    with pytest.raises(ValueError, match="looks like NCHW"):
        block.init(jax.random.key(0), jnp.zeros((1, 3, 6, 6)), train=False)


def test_summary_counts_the_new_layers_like_torch(tv):
    """inspect.layers lists the new leaf layers (LayerNorm2d, activations, StochasticDepth...)
    so their parameters are counted: the total equals torch's."""
    from cnn_jax import inspect

    convnext = torchvision_module("models.convnext")
    theirs = torch.nn.Sequential(
        tv["misc"].Conv2dNormActivation(
            3, 8, 4, 4, 0, norm_layer=convnext.LayerNorm2d, activation_layer=None, bias=True
        ),
        tv["misc"].Conv2dNormActivation(8, 8, activation_layer=torch.nn.Hardswish),
        tv["misc"].SqueezeExcitation(8, 2, scale_activation=torch.nn.Hardsigmoid),
        tv["sd"].StochasticDepth(0.1, "row"),
        torch.nn.ChannelShuffle(2),
        torch.nn.LocalResponseNorm(3),
        torch.nn.GELU(),
    )
    ours = cnn.Sequential(
        (
            cnn.Conv2dNormActivation(
                3, 8, 4, 4, 0, norm_layer=cnn.LayerNorm2d, activation_layer=None, bias=True
            ),
            cnn.Conv2dNormActivation(8, 8, activation_layer=cnn.Hardswish),
            cnn.SqueezeExcitation(8, 2, scale_activation=cnn.Hardsigmoid),
            cnn.StochasticDepth(0.1, "row"),
            cnn.ChannelShuffle(2),
            cnn.LocalResponseNorm(3),
            cnn.GELU(),
        )
    )
    rows = inspect.layers(ours, (1, 16, 16, 3))
    assert sum(r.params for r in rows) == sum(p.numel() for p in theirs.parameters())
    kinds = [r.kind for r in rows]
    for kind in ("LayerNorm2d", "Hardswish", "Hardsigmoid", "StochasticDepth", "GELU"):
        assert kind in kinds, kinds
    field = {r.kind: r.receptive_field for r in rows}  # elementwise layers keep the field
    assert field["GELU"] == field["LocalResponseNorm"] == field["Hardswish"] == (12, 12)
