"""cnn_jax's initialisers against torch's ``torch.nn.init`` functions they stand for: the same law
for the same torch-layout shape (two-sample Kolmogorov–Smirnov tests, fixed seeds), the same
bounds where the law is cut."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from cnn_jax.nn import init

torch = pytest.importorskip("torch")
stats = pytest.importorskip("scipy.stats")

# A grouped-conv weight (fan_in 16*3*3, fan_out 64*3*3), a 1x1 conv and a Linear weight: each
# gives >= 8,000 draws, enough to tell a factor sqrt(2) in scale or uniform from normal apart.
SHAPES = [(64, 16, 3, 3), (128, 96, 1, 1), (200, 50)]


def _torch_draws(fill, shape, n=1):
    torch.manual_seed(0)
    return np.concatenate([fill(torch.empty(shape)).numpy().ravel() for _ in range(n)])


CASES = {
    "kaiming_normal_fan_in": (
        init.kaiming_normal_fan_in,
        lambda w: torch.nn.init.kaiming_normal_(w),
    ),
    "kaiming_normal_fan_out": (
        init.kaiming_normal_fan_out,
        lambda w: torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
    ),
    "kaiming_uniform_fan_in": (
        init.kaiming_uniform_fan_in,
        lambda w: torch.nn.init.kaiming_uniform_(w),
    ),
    "normal_0.01": (init.normal(0.01), lambda w: torch.nn.init.normal_(w, 0.0, 0.01)),
    "trunc_normal_0.01": (
        init.trunc_normal(0.01),
        lambda w: torch.nn.init.trunc_normal_(w, std=0.01, a=-2.0, b=2.0),
    ),
    "trunc_normal_0.1": (
        init.trunc_normal(0.1),
        lambda w: torch.nn.init.trunc_normal_(w, std=0.1, a=-2.0, b=2.0),
    ),
    # Bounds that cut (at 1 and 2 standard deviations): torch's a and b are absolute values.
    "trunc_normal_cut": (
        init.trunc_normal(0.5, a=-0.5, b=1.0),
        lambda w: torch.nn.init.trunc_normal_(w, std=0.5, a=-0.5, b=1.0),
    ),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_initialiser_has_torchs_law(name, shape):
    ours_init, torch_fill = CASES[name]
    ours = np.asarray(ours_init(jax.random.key(0), shape)).ravel()
    theirs = _torch_draws(torch_fill, shape)
    assert ours.shape == theirs.shape
    p = stats.ks_2samp(ours, theirs).pvalue
    assert p > 1e-3, (
        f"{name} {shape}: KS p-value {p:.2g} (std {ours.std():.4g} vs {theirs.std():.4g})"
    )
    if name == "trunc_normal_cut":
        assert ours.min() >= -0.5 and ours.max() <= 1.0
        assert ours.min() < -0.49 and ours.max() > 0.99  # the law reaches both cuts


def test_kaiming_fans_are_torchs():
    """The scale itself, not only the law: N(0, 2/fan_in) and N(0, 2/fan_out) with torch's fans
    (dimension 1 or 0 times the kernel area)."""
    shape = (256, 64, 3, 3)
    w_in = np.asarray(init.kaiming_normal_fan_in(jax.random.key(1), shape))
    w_out = np.asarray(init.kaiming_normal_fan_out(jax.random.key(1), shape))
    assert abs(w_in.std() / math.sqrt(2 / (64 * 9)) - 1) < 0.01
    assert abs(w_out.std() / math.sqrt(2 / (256 * 9)) - 1) < 0.01
    bound = math.sqrt(6 / (64 * 9))
    w_u = np.asarray(init.kaiming_uniform_fan_in(jax.random.key(1), shape))
    assert w_u.max() <= bound and w_u.max() > 0.99 * bound
