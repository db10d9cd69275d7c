"""Train-mode parameter gradients in float32 are as accurate as torch's own float32.

Both frameworks round differently, so neither equals the other exactly; the referee is the same
network in float64 torch. For every parameter the error is ``||g - g64|| / ||g64||`` (a conv bias
before BatchNorm has an exactly zero true gradient, so there the scale is 1e-6 of the whole
gradient's norm); the worst over the network must be within twice torch's own float32 worst.

Each float32 gradient is judged against the float64 gradient **of the linear piece its own
forward pass chose** (``cnn_jax.testing.kinks``: every ReLU sign and max-pool winner of the
float32 run pinned in the float64 run). Without that, a single ReLU input within float32
rounding of 0 that one framework's rounding puts on the other side moves whole-network
gradients far beyond that bar — vgg16_bn at 64×64 has ~6.6 million ReLU inputs per batch of 6,
and which framework flips one is chance (``python -m experiments.gradient_precision --seeds``).
The float64 references without pinning, and the number of flipped decisions, are in the failure
message.

This is what caught a fast XLA:CPU setting (``--xla_cpu_experimental_ynn_fusion_type=
-individual_convolution``) that put resnet18's gradients 1e-2 from float64 where torch's are 1e-5.
"""

from __future__ import annotations

import pytest

from cnn_jax.models import create, registry
from cnn_jax.testing import zoo
from cnn_jax.testing.kinks import float32_gradient_errors
from cnn_jax.testing.miniatures import MINIATURES

pytest.importorskip("torch")


CASES = zoo.cases(float64_twin=True)


# The families whose full models run only under -m slow, checked by default through their
# miniatures (the same classes and block kinds at a few blocks, against torchvision's classes).
SLOW_FAMILY_MINIATURES = [
    pytest.param(m, id=m.label)
    for m in MINIATURES
    if registry.spec(m.base).family in zoo.SLOW_FAMILIES - {"alexnet", "vgg"}
]


@pytest.mark.parametrize("name", CASES)
def test_float32_train_gradients_within_twice_torchs_own_error(name):
    channels = create(name).example_input_shape()[-1]
    _check(name, float32_gradient_errors(name, zoo.input_size(name), channels))


@pytest.mark.parametrize("miniature", SLOW_FAMILY_MINIATURES)
@pytest.mark.slow  # a float64 twin per miniature (minutes); CI runs it in its slow step
def test_miniatures_float32_train_gradients_within_twice_torchs_own_error(miniature):
    base = miniature.base
    channels = create(base).example_input_shape()[-1]
    build = (miniature.ours, miniature.reference)
    _check(
        miniature.label,
        float32_gradient_errors(base, zoo.input_size(base), channels, build=build),
    )


@pytest.mark.slow  # a float64 twin (a minute or two); CI runs it in its slow step
def test_convnext_miniature_with_depthwise_gradients_one_image_at_a_time(monkeypatch):
    """The depthwise weight gradient's loop over chunks of the batch (here forced to one image
    at a time: the tests' inputs are too small for the rule to split the batch) keeps float32
    gradients as accurate as torch's."""
    from cnn_jax.functional import conv

    monkeypatch.setattr(conv, "_CHUNK_TAP_BYTES", 1)
    (miniature,) = [m for m in MINIATURES if m.label == "mini_convnext"]
    channels = create(miniature.base).example_input_shape()[-1]
    build = (miniature.ours, miniature.reference)
    size = zoo.input_size(miniature.base)
    _check(miniature.label, float32_gradient_errors(miniature.base, size, channels, build=build))


@pytest.mark.slow  # a float64 twin; the default size's 2x2 maps are tap by tap too
def test_resnet18_on_1x1_maps_with_convolutions_tap_by_tap():
    """At 16x16, ResNet-18's last two stages run on 1x1 maps, where 'auto' computes its padded
    3x3 convolutions tap by tap (``auto_plan`` rule 1): float32 gradients as accurate as
    torch's."""
    from cnn_jax.functional import auto_plan

    last_stage = auto_plan((6, 1, 1, 512), (512, 512, 3, 3), padding=((1, 1), (1, 1)))
    assert set(last_stage.values()) == {"taps"}
    _check("resnet18 at 16x16", float32_gradient_errors("resnet18", 16, 3))


def test_regnet_miniature_on_small_maps_with_grouped_convolutions_unfolded():
    """At 8x8 the RegNet-X miniature's grouped 3x3s (its second and third stages) run on 2x2 and
    1x1 maps, where 'auto' computes them by the unfolded kernel (``auto_plan`` rule 0): float32
    gradients as accurate as torch's."""
    from experiments.record import forward_plans

    (miniature,) = [m for m in MINIATURES if m.label == "mini_regnet_x"]
    assert forward_plans(miniature.ours(num_classes=10), 8).count("unfolded") == 2
    build = (miniature.ours, miniature.reference)
    _check("mini_regnet_x at 8x8", float32_gradient_errors("regnet_x_400mf", 8, 3, build=build))


def _check(name, e):
    detail = (
        f"{name}: worst {e['ours']:.2e} from float64 on its own linear piece vs torch float32's "
        f"{e['theirs']:.2e}; zero-gradient parameters {e['ours_zero']:.1e} vs "
        f"{e['theirs_zero']:.1e}; unpinned {e['ours_unpinned']:.2e} vs {e['theirs_unpinned']:.2e}, "
        f"decisions flipped from float64's: {e['ours_flips']} vs {e['theirs_flips']}"
    )
    assert e["ours"] <= 2 * e["theirs"], detail
    assert e["ours_zero"] <= 2 * e["theirs_zero"] + 1e-9, detail
