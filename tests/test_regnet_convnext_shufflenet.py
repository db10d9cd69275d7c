"""RegNet, ConvNeXt and ShuffleNet V2 against torchvision's own code, beyond the registry-driven
checks of test_models.py / test_float32_gradients.py (initialisation laws there, normalisation
settings in test_torchvision_families.py): RegNet's derived block widths, ConvNeXt's per-block
stochastic depth, and the families' argument errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.nn as cnn
import cnn_jax.testing.torch_models as torch_models
from cnn_jax.models import (
    BlockParams,
    CNBlockConfig,
    ConvNeXt,
    ShuffleNetV2,
    create,
    registry,
)
from cnn_jax.models.regnet import _SETTINGS as REGNET_SETTINGS
from cnn_jax.models.regnet import block_params
from cnn_jax.models.shufflenet import InvertedResidual

torch = pytest.importorskip("torch")

FAMILIES = ("regnet_x", "regnet_y", "convnext", "shufflenet_v2")
NAMES = [s.name for s in registry.specs() if s.family in FAMILIES]


@pytest.fixture(scope="module")
def tv():
    models = torch_models.torchvision_models()
    if models is None:
        pytest.skip("torchvision is not installed: its own code is the reference")
    import torchvision.models.convnext
    import torchvision.models.regnet

    return {"regnet": torchvision.models.regnet, "convnext": torchvision.models.convnext}


# ---------------------------------------------------------------------------------- RegNet


def _fields(p) -> tuple:
    return (
        list(p.depths),
        list(p.widths),
        list(p.group_widths),
        list(p.bottleneck_multipliers),
        list(p.strides),
        p.se_ratio,
    )


def test_regnet_block_params_are_torchvisions(tv):
    """Every named model's settings, and 200 random ones (widths near rounding boundaries
    included by chance), give torchvision's stage depths, widths and group widths."""
    cases = [
        dict(
            zip(("depth", "w_0", "w_a", "w_m", "group_width"), s, strict=True),
            se_ratio=0.25 if n.startswith("regnet_y") else None,
        )
        for n, s in REGNET_SETTINGS.items()
    ]
    rng = np.random.default_rng(0)
    for _ in range(200):
        cases.append(
            dict(
                depth=int(rng.integers(1, 30)),
                w_0=8 * int(rng.integers(1, 60)),
                w_a=float(np.round(rng.uniform(0, 200), 2)),
                w_m=float(np.round(rng.uniform(1.01, 3.0), 2)),
                group_width=int(rng.choice([1, 8, 16, 24, 48, 56, 112, 232])),
                bottleneck_multiplier=float(rng.choice([1.0, 0.5, 0.25])),
            )
        )
    for case in cases:
        expected = tv["regnet"].BlockParams.from_init_params(**case)
        assert _fields(BlockParams.from_init_params(**case)) == _fields(expected), case
    assert block_params("regnet_y_8gf").widths == (224, 448, 896, 2016)


def test_regnet_refuses_invalid_settings_and_names():
    with pytest.raises(ValueError, match=r"Invalid RegNet settings.*w_0=20"):
        BlockParams.from_init_params(depth=4, w_0=20, w_a=8.0, w_m=2.0, group_width=8)
    with pytest.raises(ValueError, match=r"Invalid RegNet settings.*w_m=1\.0"):
        BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=1.0, group_width=8)
    with pytest.raises(ValueError, match="unknown RegNet 'regnet_z_1gf'"):
        block_params("regnet_z_1gf")


# ------------------------------------------------------------------ ConvNeXt stochastic depth


def _stochastic_depths(model, variables, x):
    """A jitted ``key -> [(input, output)]`` of every StochasticDepth module in call order, from
    one train-mode pass (recorded inside the traced program and returned from it), and the
    modules' probabilities (filled when it is first traced)."""
    probabilities = []

    def run(key):
        recorded = []

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            m = context.module
            if context.method_name == "__call__" and isinstance(m, cnn.StochasticDepth):
                recorded.append((args[0], out))
                probabilities.append(m.p)
            return out

        with nn.intercept_methods(record):
            model.apply(variables, x, train=True, rngs={"dropout": key})
        return recorded

    return jax.jit(run), probabilities


@pytest.mark.slow  # initialises convnext_tiny op by op
def test_convnext_stochastic_depth_rises_linearly_per_block_as_torchvision(tv):
    """Block ``i`` of ``n`` drops its residual branch per sample with probability
    ``stochastic_depth_prob * i / (n - 1)``, exactly torchvision's numbers for every named model
    and a miniature with convnext_tiny's depths; in training the miniature's drop frequencies
    (8 x 500 samples) are those probabilities within 5 standard errors per block, their slope
    over the blocks within 5 standard errors of the schedule's, and the surviving samples are
    scaled by 1 / (1 - p)."""
    cn = tv["convnext"]

    def torchvisions(net):
        return [m.stochastic_depth.p for m in net.modules() if isinstance(m, cn.CNBlock)]

    for name in [n for n in NAMES if n.startswith("convnext")]:
        with torch_models.meta_parameters():
            expected = torchvisions(getattr(cn, name)())
        assert create(name).block_probabilities() == expected, name

    setting = [(8, 16, 3), (16, 32, 3), (32, 64, 9), (64, None, 3)]
    model = ConvNeXt([CNBlockConfig(*s) for s in setting], stochastic_depth_prob=0.5, num_classes=5)
    with torch_models.meta_parameters():
        twin = cn.ConvNeXt([cn.CNBlockConfig(*s) for s in setting], stochastic_depth_prob=0.5)
    expected = torchvisions(twin)
    assert model.block_probabilities() == expected and len(expected) == 18
    assert expected[0] == 0.0 and expected[-1] == 0.5

    n, draws = 500, 8
    x = jnp.asarray(np.random.default_rng(0).standard_normal((n, 32, 32, 3)), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    dropped = np.zeros(len(expected))
    run, probabilities = _stochastic_depths(model, variables, x)
    for draw in range(draws):
        recorded = run(jax.random.key(draw + 1))
        for i, ((inp, out), p) in enumerate(zip(recorded, expected, strict=True)):
            inp, out = np.asarray(inp).reshape(n, -1), np.asarray(out).reshape(n, -1)
            gone = np.all(out == 0, axis=1)
            assert not np.any(np.all(inp == 0, axis=1)), "a zero branch would look dropped"
            scale = np.float32(1.0) / np.float32(1.0 - p)
            np.testing.assert_allclose(out[~gone], inp[~gone] * scale, rtol=1e-6, atol=0)
            dropped[i] += gone.sum()
    assert probabilities == expected  # traced once, with torchvision's probabilities
    rates, total = dropped / (n * draws), n * draws
    p = np.asarray(expected)
    bound = 5 * np.sqrt(p * (1 - p) / total)
    assert np.all(np.abs(rates - p) <= bound), np.stack([rates, p])
    blocks = np.arange(len(p))
    slope, expected_slope = np.polyfit(blocks, rates, 1)[0], np.polyfit(blocks, p, 1)[0]
    standard_error = np.sqrt(0.25 / total / np.sum((blocks - blocks.mean()) ** 2))
    assert abs(slope - expected_slope) <= 5 * standard_error, (slope, expected_slope)


# ------------------------------------------------------------------------ argument errors


def test_convnext_refuses_bad_settings_and_small_inputs():
    with pytest.raises(ValueError, match="block_setting should not be empty"):
        ConvNeXt([])
    with pytest.raises(TypeError, match="sequence of CNBlockConfig"):
        ConvNeXt([(8, None, 1)])
    model = create("convnext_tiny", num_classes=3)
    with pytest.raises(ValueError, match="ConvNeXt needs input of at least 32x32, got 16x16"):
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)


def test_shufflenet_refuses_bad_settings_as_torchvision():
    with pytest.raises(ValueError, match="stages_repeats as list of 3"):
        ShuffleNetV2((4, 8), (24, 48, 96, 192, 1024))
    with pytest.raises(ValueError, match="stages_out_channels as list of 5"):
        ShuffleNetV2((4, 8, 4), (24, 48, 96, 192))
    # A stride-1 unit splits its input in halves: inp must be oup rounded down to even.
    with pytest.raises(ValueError, match="Invalid combination of stride 1, inp 24 and oup 48"):
        InvertedResidual(24, 48, 1)
    with pytest.raises(ValueError, match="illegal stride value 4"):
        InvertedResidual(24, 48, 4)
