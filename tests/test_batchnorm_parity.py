"""BatchNorm2d equals torch.nn.BatchNorm2d: outputs, gradients and running statistics over several
training steps, then eval mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.nn as cnn
from cnn_jax.interop import from_torch, to_torch
from cnn_jax.testing.parity import assert_rel_close, check_parity, nchw_to_nhwc, nhwc_to_nchw

torch = pytest.importorskip("torch")

CONFIGS = [
    dict(),
    dict(momentum=None),  # cumulative moving average
    dict(momentum=0.3, eps=1e-3),
    dict(affine=False),
    dict(track_running_stats=False),
    dict(affine=False, track_running_stats=False),
    dict(bias=False),  # torch's keyword: a learnable scale, no shift
]


def _torch_bn(c, cfg):
    bn = torch.nn.BatchNorm2d(c, **cfg)
    with torch.no_grad():  # non-trivial affine parameters and statistics
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            if bn.bias is not None:
                bn.bias.uniform_(-0.5, 0.5)
        if bn.track_running_stats:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(3)
    return bn


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_training_steps_then_eval_match_torch(cfg, rng):
    torch.manual_seed(0)
    c = 3
    bn_t = _torch_bn(c, cfg)
    bn = cnn.BatchNorm2d(c, **cfg)
    variables = from_torch(bn, bn_t.state_dict())
    step = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))

    bn_t.train()
    for i in range(4):
        # Non-zero mean and a batch of 2 with odd spatial size; each step a different shape.
        x = (rng.standard_normal((2 + i % 2, c, 5, 3 + i)) * 2 + 1).astype(np.float32)
        y_t = bn_t(torch.tensor(x)).detach().numpy()
        y, updates = step(variables, jnp.asarray(nchw_to_nhwc(x)))
        variables = {**variables, **updates}
        assert_rel_close(nhwc_to_nchw(y), y_t, what=f"train output, step {i}")
        ours = to_torch(bn, variables)
        assert set(ours) == set(bn_t.state_dict())
        for name, value in bn_t.state_dict().items():
            assert ours[name].dtype == value.dtype, name
            assert_rel_close(ours[name].numpy(), value.numpy(), what=f"{name}, step {i}")

    bn_t.eval()
    x = rng.standard_normal((4, c, 4, 4)).astype(np.float32)
    y = bn.apply(variables, jnp.asarray(nchw_to_nhwc(x)), train=False)
    assert_rel_close(nhwc_to_nchw(y), bn_t(torch.tensor(x)).detach().numpy(), what="eval output")


@pytest.mark.parametrize("cfg", [*CONFIGS[:1], *CONFIGS[3:5], CONFIGS[-1]], ids=str)
@pytest.mark.parametrize("train", [False, True])
def test_gradients_match_torch(cfg, train, rng):
    torch.manual_seed(0)
    bn_t = _torch_bn(3, cfg).train(train)
    x = (rng.standard_normal((4, 3, 5, 6)) + 0.5).astype(np.float32)
    if train and bn_t.track_running_stats:
        # Gradients only; running-stat updates are checked above (mutable is needed to write them).
        bn_t_eval_stats = {k: v.clone() for k, v in bn_t.state_dict().items()}
        module = cnn.BatchNorm2d(3, **cfg)
        variables = from_torch(module, bn_t_eval_stats)

        def loss(params, x, cot):
            y, _ = module.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(y * cot)

        xt = torch.tensor(x, requires_grad=True)
        y_t = bn_t(xt)
        cot = rng.standard_normal(y_t.shape).astype(np.float32)
        y_t.backward(torch.tensor(cot))
        gp, gx = jax.grad(loss, argnums=(0, 1))(
            variables.get("params", {}),
            jnp.asarray(nchw_to_nhwc(x)),
            jnp.asarray(nchw_to_nhwc(cot)),
        )
        assert_rel_close(nhwc_to_nchw(gx), xt.grad.numpy(), what="grad wrt input")
        assert set(gp) == {name for name, _ in bn_t.named_parameters()}
        for name, p in bn_t.named_parameters():
            assert_rel_close(gp[name], p.grad.numpy(), what=f"grad wrt {name}")
    else:
        check_parity(cnn.BatchNorm2d(3, **cfg), bn_t, x, train=train)


def test_init_does_not_update_statistics():
    bn = cnn.BatchNorm2d(2)
    variables = bn.init(jax.random.key(0), jnp.ones((4, 3, 3, 2)) * 5, train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["running_mean"], np.zeros(2))
    np.testing.assert_array_equal(variables["batch_stats"]["running_var"], np.ones(2))
    assert int(variables["batch_stats"]["num_batches_tracked"]) == 0


def test_train_mode_without_mutable_batch_stats_raises():
    bn = cnn.BatchNorm2d(2)
    variables = bn.init(jax.random.key(0), jnp.ones((4, 3, 3, 2)), train=False)
    with pytest.raises(Exception, match="batch_stats"):
        bn.apply(variables, jnp.ones((4, 3, 3, 2)), train=True)


def test_single_value_per_channel_in_training_raises():
    bn = cnn.BatchNorm2d(2)
    variables = bn.init(jax.random.key(0), jnp.ones((1, 1, 1, 2)), train=False)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.apply(variables, jnp.ones((1, 1, 1, 2)), train=True, mutable=["batch_stats"])


@pytest.mark.parametrize("size", [4, 6], ids=["plain-sums", "cascaded-sums"])
def test_axis_name_averages_statistics_across_devices(size, rng):
    """vmap with an axis name stands in for devices: 2 shards of 3 == one batch of 6, values
    and parameter gradients (summed over the shards). At 6x6 a shard has 108 pixels, enough for
    cascaded sums (cnn_jax.functional.summation)."""
    from cnn_jax.functional import summation

    shape = (6, size, size, 3)
    assert bool(summation.levels((3, *shape[1:]), 3)) == (size == 6)
    bn = cnn.BatchNorm2d(3, axis_name="batch")
    bn_single = cnn.BatchNorm2d(3)
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    cot = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    variables = bn_single.init(jax.random.key(0), jnp.asarray(x), train=False)
    variables = {**variables, "params": {"weight": jnp.asarray([0.5, 1.0, 1.5]),
                                         "bias": jnp.asarray([0.1, -0.2, 0.3])}}  # fmt: skip
    y_ref, upd_ref = bn_single.apply(variables, x, train=True, mutable=["batch_stats"])
    shards = jnp.asarray(x).reshape(2, 3, *shape[1:])
    y, upd = jax.vmap(
        lambda xs: bn.apply(variables, xs, train=True, mutable=["batch_stats"]),
        axis_name="batch",
    )(shards)
    assert_rel_close(y.reshape(shape), y_ref, what="output")
    for name in ("running_mean", "running_var"):
        # Every shard holds the same (global) statistics.
        assert_rel_close(upd["batch_stats"][name][0], upd_ref["batch_stats"][name], what=name)
        assert_rel_close(upd["batch_stats"][name][1], upd_ref["batch_stats"][name], what=name)

    def loss(module, params, x, cot):
        out, _ = module.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])  # fmt: skip
        return jnp.sum(out * cot)

    g_ref = jax.grad(loss, argnums=(1, 2))(bn_single, variables["params"], x, cot)
    g = jax.vmap(
        jax.grad(lambda p, x, c: loss(bn, p, x, c), argnums=(0, 1)),
        in_axes=(None, 0, 0),
        axis_name="batch",
    )(variables["params"], shards, cot.reshape(shards.shape))
    assert_rel_close(g[1].reshape(shape), g_ref[1], what="input gradient")
    for name in ("weight", "bias"):
        assert_rel_close(g[0][name].sum(0), g_ref[0][name], what=f"{name} gradient")


def _by_autodiff(x, weight, bias, eps):
    """The batch-statistics normalisation with no rule of its own: what jax differentiates."""
    mean = x.mean(axis=(0, 1, 2))
    var = jnp.square(x - mean).mean(axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + eps) * weight + bias, mean, var


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(3, id="plain-sums"),
        # compiles every transformation again, for the other summation
        pytest.param(6, id="cascaded-sums", marks=pytest.mark.slow),
    ],
)
def test_batch_statistics_derivative_rule_equals_autodiff_under_every_transformation(size):
    """The written-out derivative of train-mode normalisation (its transpose is the two-sum
    backward pass) equals jax's own differentiation of the formula, in float64, for reverse and
    forward mode, under vmap, and at second order, through all three outputs (y, mean, var). At
    6x6 the rule's sums are cascaded (cnn_jax.functional.summation)."""
    from cnn_jax.functional import summation
    from cnn_jax.functional.normalization import _normalise_by_batch

    assert bool(summation.levels((4, size, size, 5), 3)) == (size == 6)
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(4, size, size, 5)) * 2 + 1)
        w, b = jnp.asarray(rng.random(5) + 0.5), jnp.asarray(rng.normal(size=5))
        g = jnp.asarray(rng.normal(size=x.shape))

        def loss(f):
            def value(x, w, b):
                y, mean, var = f(x, w, b, 1e-5)
                return jnp.sum(jnp.sin(y) * g) + jnp.sum(var**2) + jnp.sum(3 * mean)

            return value

        checks = {
            "grad": lambda f: jax.grad(loss(f), argnums=(0, 1, 2))(x, w, b),
            "jit(grad)": lambda f: jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(x, w, b),
            "jvp": lambda f: jax.jvp(loss(f), (x, w, b), (g, w, b))[1],
            "vmap(grad)": lambda f: jax.vmap(jax.grad(loss(f)), in_axes=(0, None, None))(
                jnp.stack([x, 2 * x]), w, b
            ),
            "grad(grad)": lambda f: jax.grad(lambda x: jnp.sum(jax.grad(loss(f))(x, w, b) ** 2))(x),
            "jvp(grad)": lambda f: jax.jvp(lambda x: jax.grad(loss(f))(x, w, b), (x,), (g,))[1],
            "jacfwd": lambda f: jax.jacfwd(lambda w: loss(f)(x, w, b))(w),
        }
        # What is checked here is what batch_norm uses in training (with and without affine).
        from cnn_jax.functional.normalization import BatchNormStats, batch_norm

        stats = BatchNormStats(jnp.zeros(5), jnp.ones(5), jnp.array(0))
        for affine in ((w, b), ()):
            jaxpr = jax.make_jaxpr(lambda x, a=affine: batch_norm(x, stats, *a, training=True))(x)
            assert "custom_jvp_call" in str(jaxpr), affine
        for name, check in checks.items():
            ours, reference = check(_normalise_by_batch), check(_by_autodiff)
            for a, r in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
                assert a.dtype == jnp.float64, name
                np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12, err_msg=name)
