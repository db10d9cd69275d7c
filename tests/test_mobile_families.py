"""MobileNetV2/V3, MNASNet and EfficientNet (V1, V2) beyond the registry-driven checks of
tests/test_models.py and tests/test_float32_gradients.py (initialisation laws there, dropout and
normalisation settings in tests/test_torchvision_families.py): EfficientNet's per-block
stochastic depth (probabilities and drop rate), torchvision's options (width, reduced tail,
dilation, own settings, norm layer) against torchvision, and the constructors' argument
errors."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cnn_jax.nn as cnn
from cnn_jax.interop import abstract_variables, from_torch
from cnn_jax.models import (
    EfficientNet,
    FusedMBConv,
    FusedMBConvConfig,
    MBConv,
    MBConvConfig,
    MobileNetV2,
    MobileNetV3,
    create,
    efficientnet_config,
    mobilenet_v3_config,
)
from cnn_jax.models.efficientnet import stochastic_depth_probs
from cnn_jax.models.mnasnet import MNASNet, get_depths, round_to_multiple_of
from cnn_jax.models.mobilenetv2 import InvertedResidual
from cnn_jax.testing.parity import RTOL, assert_rel_close, rel_err
from cnn_jax.testing.torch_models import randomize, torchvision_models

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tv():
    models = torchvision_models()
    if models is None:
        pytest.skip("torchvision is not installed: its own models are the reference")
    return models


def _module_calls(model: nn.Module, *classes: type, size: int = 32) -> dict[str, nn.Module]:
    """Every call of a module of one of ``classes`` while ``model`` initialises, by torch's
    dotted path (the trace only: nothing is computed)."""
    calls: dict[str, nn.Module] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, classes) and context.method_name == "__call__":
            calls[".".join(context.module.path)] = context.module
        return next_fun(*args, **kwargs)

    x = jnp.zeros((1, size, size, model.in_channels))
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return calls


# ------------------------------------------------------------------------ stochastic depth


@pytest.mark.parametrize(
    ("name", "prob"),
    [
        ("efficientnet_b0", 0.2),
        ("efficientnet_v2_s", 0.5),
        pytest.param("efficientnet_b7", 0.2, marks=[pytest.mark.slow, pytest.mark.zoo]),
        pytest.param("efficientnet_v2_l", 0.2, marks=[pytest.mark.slow, pytest.mark.zoo]),
    ],
)
def test_efficientnet_stochastic_depth_per_block_is_torchvisions(tv, name, prob):
    """Block i of n drops its residual branch with probability prob * i / n, counted over the
    whole network; blocks without a residual have none. Same keys and the same floats as
    torchvision's StochasticDepth modules of the residual blocks."""
    with torch.device("meta"):
        reference = getattr(tv, name)(num_classes=5, stochastic_depth_prob=prob)
    blocks = [m for m in reference.modules() if hasattr(m, "stochastic_depth")]
    theirs = {
        f"{key}.stochastic_depth": (m.stochastic_depth.p, m.stochastic_depth.mode)
        for key, m in reference.named_modules()
        if hasattr(m, "stochastic_depth") and m.use_res_connect
    }
    model = create(name, num_classes=5, stochastic_depth_prob=prob)
    ours = {k: (m.p, m.mode) for k, m in _module_calls(model, cnn.StochasticDepth).items()}
    assert ours == theirs
    assert [m.stochastic_depth.p for m in blocks] == stochastic_depth_probs(
        model.inverted_residual_setting, prob
    )


@pytest.mark.parametrize("block", [MBConv, FusedMBConv])
def test_residual_block_drops_its_branch_per_sample_at_its_rate(block):
    """In training a residual block's output is its input for a fraction p of the samples
    (within 5 standard errors) and input + branch / (1 - p) for the others, the branch being
    the one computed without stochastic depth; from the 'dropout' stream."""
    n, p = 4000, 0.3
    config = (MBConvConfig if block is MBConv else FusedMBConvConfig)(4, 3, 1, 8, 8, 1)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((n, 2, 2, 8)), jnp.float32)
    plain, dropping = block(config, 0.0, cnn.BatchNorm2d), block(config, p, cnn.BatchNorm2d)
    variables = plain.init(jax.random.key(0), x[:1], train=False)

    def train(module, key):
        y, _ = module.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )
        return y

    branch = np.asarray(jax.jit(functools.partial(train, plain))(jax.random.key(1)) - x)
    y = np.asarray(jax.jit(functools.partial(train, dropping))(jax.random.key(1)))
    other = np.asarray(jax.jit(functools.partial(train, dropping))(jax.random.key(2)))
    dropped = np.all((y == np.asarray(x)).reshape(n, -1), axis=1)
    assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    kept = ~dropped
    np.testing.assert_allclose(
        (y - np.asarray(x))[kept], branch[kept] / (1 - p), rtol=1e-5, atol=1e-5
    )
    assert not np.array_equal(y, other), "a different 'dropout' key draws a different mask"


# ------------------------------------------------------- torchvision's options, against it


def _compare(model, reference, size=32, batch=4):
    """Eval and train-mode logits and the updated running statistics of ``model`` loaded with
    ``reference``'s randomised weights, against ``reference`` (within 1e-5, or within 2x torch's
    own float32 error against float64 torch where that is larger)."""
    import copy

    torch.manual_seed(0)
    reference = randomize(reference)
    x = np.random.default_rng(1).standard_normal((batch, size, size, 3)).astype(np.float32)
    x_t = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    variables = from_torch(model, reference.state_dict(), sample_input=jnp.asarray(x))
    reference64 = copy.deepcopy(reference).double()
    for train in (False, True):
        reference.train(train)
        reference64.train(train)
        with torch.no_grad():
            expected, exact = reference(x_t).numpy(), reference64(x_t.double()).numpy()
        logits, updates = model.apply(
            variables, jnp.asarray(x), train=train, mutable=["batch_stats"]
        )
        torch_error = rel_err(expected, exact)
        if torch_error <= RTOL / 2:
            assert_rel_close(logits, expected, what=f"train={train} logits")
        else:
            assert_rel_close(logits, exact, 2 * torch_error, what=f"train={train} vs float64")
    flat = traverse_util.flatten_dict(updates["batch_stats"], sep=".")
    state = reference.state_dict()
    for key, value in flat.items():
        assert_rel_close(np.asarray(value), state[key].numpy(), 1e-5, what=key)


OPTIONS = {
    "mobilenet_v2 width_mult=1.4": (
        lambda: create("mobilenet_v2", num_classes=5, width_mult=1.4, dropout=0.0),
        lambda tv: tv.mobilenet_v2(num_classes=5, width_mult=1.4, dropout=0.0),
    ),
    "mobilenet_v3_small width_mult=0.75, reduced_tail, dilated": (
        lambda: create(
            "mobilenet_v3_small",
            num_classes=5,
            width_mult=0.75,
            reduced_tail=True,
            dilated=True,
            dropout=0.0,
        ),
        lambda tv: tv.mobilenet_v3_small(
            num_classes=5, width_mult=0.75, reduced_tail=True, dilated=True, dropout=0.0
        ),
    ),
    "efficientnet_b0 norm_layer": (
        lambda: create(
            "efficientnet_b0",
            num_classes=5,
            dropout=0.0,
            stochastic_depth_prob=0.0,
            norm_layer=functools.partial(cnn.BatchNorm2d, eps=1e-2, momentum=0.3),
        ),
        lambda tv: tv.efficientnet_b0(
            num_classes=5,
            dropout=0.0,
            stochastic_depth_prob=0.0,
            norm_layer=functools.partial(torch.nn.BatchNorm2d, eps=1e-2, momentum=0.3),
        ),
    ),
}


# Whole models: slow to compile (their miniatures run by default in tests/test_models.py).
@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_options_match_torchvision(tv, case):
    make_ours, make_theirs = OPTIONS[case]
    _compare(make_ours(), make_theirs(tv))


def test_mobilenet_v3_dilated_keeps_the_last_stage_resolution(tv):
    """dilated=True: the last stage dilates (2) instead of striding, so its output is twice as
    large (torchvision's segmentation backbone)."""

    def features(model):  # shapes only: an abstract trace
        x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        _, state = jax.eval_shape(
            lambda v, x: model.apply(
                v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
            ),
            abstract_variables(model, x),
            x,
        )
        return state["intermediates"]["features"]["__call__"][0].shape

    assert features(create("mobilenet_v3_small", dilated=True)) == (1, 4, 4, 576)
    assert features(create("mobilenet_v3_small")) == (1, 2, 2, 576)


# ---------------------------------------------------------------------------- argument errors


def test_configuration_tables_are_torchvisions(tv):
    for arch in ("mobilenet_v3_small", "mobilenet_v3_large"):
        for options in ({}, {"width_mult": 0.75, "reduced_tail": True, "dilated": True}):
            ours, last = mobilenet_v3_config(arch, **options)
            theirs, their_last = tv.mobilenetv3._mobilenet_v3_conf(arch, **options)
            assert last == their_last
            fields = ("input_channels", "kernel", "expanded_channels", "out_channels")
            fields += ("use_se", "use_hs", "stride", "dilation")
            assert [tuple(getattr(c, f) for f in fields) for c in ours] == [
                tuple(getattr(c, f) for f in fields) for c in theirs
            ]
    for arch, scale in [("efficientnet_b3", (1.2, 1.4)), ("efficientnet_v2_m", None)]:
        kwargs = {} if scale is None else {"width_mult": scale[0], "depth_mult": scale[1]}
        ours, last = efficientnet_config(arch, **kwargs)
        theirs, their_last = tv.efficientnet._efficientnet_conf(arch, **kwargs)
        assert last == their_last
        fields = ("expand_ratio", "kernel", "stride", "input_channels", "out_channels")
        fields += ("num_layers",)
        assert [tuple(getattr(c, f) for f in fields) for c in ours] == [
            tuple(getattr(c, f) for f in fields) for c in theirs
        ]
        assert [c.block.__name__ for c in ours] == [c.block.__name__ for c in theirs]
    for alpha in (0.5, 0.75, 1.0, 1.3):
        assert get_depths(alpha) == tv.mnasnet._get_depths(alpha)


def test_argument_errors():
    with pytest.raises(ValueError, match="inverted_residual_setting should be non-empty"):
        MobileNetV2(inverted_residual_setting=[])
    with pytest.raises(ValueError, match="4-element"):
        MobileNetV2(inverted_residual_setting=[[1, 16, 1]])
    with pytest.raises(ValueError, match="stride should be 1 or 2 instead of 3"):
        InvertedResidual(8, 8, 3, 6)
    with pytest.raises(ValueError, match="should not be empty"):
        MobileNetV3([], 1024)
    with pytest.raises(TypeError, match="InvertedResidualConfig"):
        MobileNetV3([(16, 3, 16, 16)], 1024)
    with pytest.raises(ValueError, match="Unsupported model type mobilenet_v3_medium"):
        mobilenet_v3_config("mobilenet_v3_medium")
    with pytest.raises(ValueError, match=r"alpha should be greater than 0\.0"):
        MNASNet(0.0)
    with pytest.raises(ValueError, match="round_up_bias"):
        round_to_multiple_of(10, 8, round_up_bias=1.0)
    with pytest.raises(ValueError, match="should not be empty"):
        EfficientNet([], dropout=0.2)
    with pytest.raises(TypeError, match="MBConvConfig"):
        EfficientNet([(1, 3, 1, 32, 16, 1)], dropout=0.2)
    with pytest.raises(ValueError, match="Unsupported model type efficientnet_v3"):
        efficientnet_config("efficientnet_v3")
    with pytest.raises(ValueError, match="illegal stride value 3"):
        MBConv(MBConvConfig(6, 3, 3, 16, 16, 1), 0.0, cnn.BatchNorm2d)
    with pytest.raises(ValueError, match="drop probability has to be between 0 and 1"):
        create("efficientnet_b0", stochastic_depth_prob=1.5).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )
    with pytest.raises(ValueError, match="NCHW"):
        create("mnasnet0_5").init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)), train=False)
