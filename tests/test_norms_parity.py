"""LayerNorm, torchvision's channels-last LayerNorm2d (and ConvNeXt's Permute + LayerNorm
block), and LocalResponseNorm against torch: values, gradients, keys and argument errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cnn_jax.functional as F
import cnn_jax.nn as cnn
from cnn_jax.interop import from_torch
from cnn_jax.testing.parity import check_parity
from cnn_jax.testing.torch_models import torchvision_module

torch = pytest.importorskip("torch")


def _randomize(layer, seed=0):
    """Non-trivial affine parameters (torch's are ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return layer


class ChannelsLast(torch.nn.Module):
    """A torch layer that takes channels on dim 1, fed and returning channels-last arrays: the
    reference for cnn_jax's channels-last layers at any rank."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x.movedim(-1, 1)).movedim(1, -1)


@pytest.mark.parametrize(
    "shape, normalized, kw",
    [
        ((4, 7), 7, {}),
        ((2, 3, 5), (3, 5), {}),
        ((2, 3, 5), [5], {"eps": 1e-3}),
        ((2, 4, 4, 6), 6, {"elementwise_affine": False}),
        ((2, 4, 4, 6), 6, {"bias": False}),
        ((3, 5), 5, {"eps": 0.5}),
    ],
    ids=str,
)
def test_layer_norm_matches_torch(shape, normalized, kw, rng):
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)
    theirs = _randomize(torch.nn.LayerNorm(normalized, **kw))
    check_parity(cnn.LayerNorm(normalized, **kw), theirs, x, spatial=False)


def test_layer_norm_function_takes_torchs_arguments(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    w, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    expected = torch.nn.functional.layer_norm(
        torch.tensor(x), [4], torch.tensor(w), torch.tensor(b), 1e-3
    )
    got = F.layer_norm(jnp.asarray(x), [4], jnp.asarray(w), jnp.asarray(b), 1e-3)
    np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_layer_norm_keeps_half_precision_dtype_and_computes_in_float32(rng):
    x = rng.standard_normal((2, 8)).astype(np.float32)
    y = F.layer_norm(jnp.asarray(x, jnp.bfloat16), 8)
    assert y.dtype == jnp.bfloat16
    expected = torch.nn.functional.layer_norm(torch.tensor(x), [8]).numpy()
    np.testing.assert_allclose(np.asarray(y, np.float32), expected, atol=2e-2)


@pytest.fixture(scope="module")
def convnext():
    module = torchvision_module("models.convnext")
    if module is None:
        pytest.skip("torchvision is not installed: its LayerNorm2d is the reference")
    return module


@pytest.mark.parametrize("shape", [(2, 8, 5, 5), (1, 3, 1, 7)], ids=str)
def test_layer_norm_2d_is_torchvisions(convnext, shape, rng):
    """torchvision permutes NCHW -> NHWC, normalises over C, permutes back; on NHWC arrays that
    is a LayerNorm over the last axis (both spellings checked against it)."""
    x = (1.0 + rng.standard_normal(shape)).astype(np.float32)
    theirs = _randomize(convnext.LayerNorm2d(shape[1], eps=1e-6))
    check_parity(cnn.LayerNorm2d(shape[1], eps=1e-6), theirs, x)
    check_parity(cnn.LayerNorm(shape[1], eps=1e-6), theirs, x)


def test_convnext_block_permute_layernorm_linear_keeps_torchvisions_indices(convnext, rng):
    """CNBlock's Sequential: dw conv, Permute, LayerNorm, Linear, GELU, Linear, Permute. The two
    Permutes are layout no-ops on NHWC arrays but keep their indices, so keys match."""
    misc = torchvision_module("ops.misc")
    c = 8
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(c, c, 7, padding=3, groups=c),
        misc.Permute([0, 2, 3, 1]),
        _randomize(torch.nn.LayerNorm(c, eps=1e-6)),
        torch.nn.Linear(c, 4 * c),
        torch.nn.GELU(),
        torch.nn.Linear(4 * c, c),
        misc.Permute([0, 3, 1, 2]),
    )
    # torchvision's own block computes the same Sequential (plus layer scale and residual).
    block = convnext.CNBlock(c, layer_scale=1.0, stochastic_depth_prob=0.0)
    assert [type(m).__name__ for m in block.block] == [type(m).__name__ for m in theirs]
    ours = cnn.Sequential(
        (
            cnn.Conv2d(c, c, 7, padding=3, groups=c),
            cnn.Permute([0, 2, 3, 1]),
            cnn.LayerNorm(c, eps=1e-6),
            cnn.Linear(c, 4 * c),
            cnn.GELU(),
            cnn.Linear(4 * c, c),
            cnn.Permute([0, 3, 1, 2]),
        )
    )
    x = rng.standard_normal((2, c, 9, 9)).astype(np.float32)
    variables = check_parity(ours, theirs, x, train=False)
    assert sorted(traverse_util.flatten_dict(variables["params"], sep=".")) == sorted(
        theirs.state_dict()
    )


@pytest.mark.parametrize(
    "shape, size, kw",
    [
        ((2, 7, 5, 5), 5, {}),
        ((2, 7, 5, 5), 2, {"alpha": 0.5, "beta": 0.9, "k": 2.0}),
        ((2, 4, 3, 3), 1, {"alpha": 1.0}),
        ((1, 3, 4, 4), 6, {"alpha": 1.0, "beta": 1.5}),  # window wider than the channels
    ],
    ids=str,
)
def test_local_response_norm_matches_torch_nchw(shape, size, kw, rng):
    x = (2.0 * rng.standard_normal(shape)).astype(np.float32)
    check_parity(cnn.LocalResponseNorm(size, **kw), torch.nn.LocalResponseNorm(size, **kw), x)


@pytest.mark.parametrize("shape", [(2, 9, 6), (2, 3, 4, 4, 6)], ids=str)
def test_local_response_norm_other_ranks_channels_last(shape, rng):
    """Rank 3 (torch's (N, C, L)) and rank 5 ((N, C, D, H, W)), channels last here."""
    x = (2.0 * rng.standard_normal(shape)).astype(np.float32)
    theirs = ChannelsLast(torch.nn.LocalResponseNorm(3, alpha=0.3, beta=0.8, k=1.5))
    check_parity(cnn.LocalResponseNorm(3, alpha=0.3, beta=0.8, k=1.5), theirs, x, spatial=False)


def test_local_response_norm_empty_input_is_returned():
    x = jnp.zeros((0, 4, 4, 3))
    assert F.local_response_norm(x, 2) is x


def test_argument_errors_as_torch(convnext):
    with pytest.raises(RuntimeError, match=r"expected input with shape \[\*, 4\]"):
        torch.nn.functional.layer_norm(torch.ones(2, 3), [4])
    with pytest.raises(ValueError, match=r"expected input with shape \[\*, 4\], but got input"):
        F.layer_norm(jnp.ones((2, 3)), [4])
    with pytest.raises(ValueError, match=r"expected input with shape \[\*, 2, 3\]"):
        F.layer_norm(jnp.ones(3), (2, 3))
    with pytest.raises(ValueError, match="weight must have shape"):
        F.layer_norm(jnp.ones((2, 3)), 3, jnp.ones(4))
    for bad in (0, (), (2, -1), 2.0):
        with pytest.raises(ValueError, match="normalized_shape must be"):
            cnn.LayerNorm(bad)
    with pytest.raises(ValueError, match="eps must be positive"):
        cnn.LayerNorm(3, eps=0.0)
    with pytest.raises(ValueError, match="normalized_shape must be the channel count"):
        cnn.LayerNorm2d((4, 4))
    ln = cnn.LayerNorm2d(4)
    with pytest.raises(ValueError, match="looks like NCHW"):
        ln.init(jax.random.key(0), jnp.zeros((1, 4, 8, 8)))
    with pytest.raises(TypeError, match="floating-point"):
        cnn.LayerNorm(3).init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))

    with pytest.raises(ValueError, match="3D or higher"):
        torch.nn.functional.local_response_norm(torch.ones(1, 4), 2)
    with pytest.raises(ValueError, match="3D or higher"):
        F.local_response_norm(jnp.ones((1, 4)), 2)
    with pytest.raises(RuntimeError, match="kernel size should be greater than zero"):
        torch.nn.LocalResponseNorm(0)(torch.ones(1, 4, 2, 2))
    with pytest.raises(ValueError, match="size must be a positive int"):
        cnn.LocalResponseNorm(0)
    with pytest.raises(ValueError, match="size must be a positive int"):
        F.local_response_norm(jnp.ones((1, 2, 2, 4)), 0)


def test_layer_norm_loads_torch_state_dict_keys():
    theirs = torch.nn.LayerNorm(6, bias=False)
    variables = from_torch(cnn.LayerNorm(6, bias=False), theirs.state_dict())
    assert sorted(variables["params"]) == ["weight"]
