"""from_torch / to_torch: round trips, strictness, dtypes, copies."""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.nn as cnn
from cnn_jax.interop import (
    StateDictError,
    check_state_dict,
    from_torch,
    init_variables,
    to_state_dict,
    to_torch,
)

torch = pytest.importorskip("torch")

PAIRS = [
    (lambda: cnn.Conv2d(3, 4, 3, groups=1), lambda: torch.nn.Conv2d(3, 4, 3)),
    (
        lambda: cnn.Conv2d(4, 4, 3, groups=4, bias=False),
        lambda: torch.nn.Conv2d(4, 4, 3, groups=4, bias=False),
    ),
    (
        lambda: cnn.ConvTranspose2d(4, 6, 3, groups=2),
        lambda: torch.nn.ConvTranspose2d(4, 6, 3, groups=2),
    ),
    (lambda: cnn.Linear(5, 3), lambda: torch.nn.Linear(5, 3)),
    (lambda: cnn.BatchNorm2d(3), lambda: torch.nn.BatchNorm2d(3)),
    (lambda: cnn.BatchNorm2d(3, affine=False), lambda: torch.nn.BatchNorm2d(3, affine=False)),
    (
        lambda: cnn.BatchNorm2d(3, track_running_stats=False),
        lambda: torch.nn.BatchNorm2d(3, track_running_stats=False),
    ),
]
IDS = ["conv", "depthwise", "conv_transpose", "linear", "bn", "bn_no_affine", "bn_no_stats"]


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_round_trip_flax_torch_flax(ours, theirs):
    module, layer = ours(), theirs()
    variables = init_variables(module, jax.random.key(1))
    sd = to_torch(module, variables)
    layer.load_state_dict(sd)  # torch accepts it, strict
    assert set(sd) == set(layer.state_dict())
    for key, value in layer.state_dict().items():
        assert sd[key].dtype == value.dtype, key
    chex.assert_trees_all_equal(from_torch(module, layer.state_dict()), variables)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_round_trip_torch_flax_torch(ours, theirs):
    torch.manual_seed(0)
    module, layer = ours(), theirs()
    back = to_torch(module, from_torch(module, layer.state_dict()))
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(back[key].numpy(), value.numpy())


def test_missing_unexpected_and_mismatched_keys_are_all_listed():
    sd = torch.nn.Conv2d(3, 4, 3).state_dict()
    sd.pop("bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["weight"] = torch.zeros(4, 3, 5, 5)
    with pytest.raises(StateDictError) as err:
        from_torch(cnn.Conv2d(3, 4, 3), sd)
    msg = str(err.value)
    assert "Missing key(s): bias" in msg
    assert "Unexpected key(s): extra.weight" in msg
    assert "Size mismatch for weight: expected shape (4, 3, 3, 3), got (4, 3, 5, 5)" in msg


def test_non_strict_reports_and_keeps_fresh_values_for_missing():
    sd = torch.nn.Conv2d(3, 4, 3).state_dict()
    weight = sd["weight"].numpy().copy()
    sd.pop("bias")
    sd["other"] = torch.zeros(2)
    with pytest.warns(UserWarning, match="Missing key\\(s\\): bias"):
        variables = from_torch(cnn.Conv2d(3, 4, 3), sd, strict=False)
    np.testing.assert_array_equal(variables["params"]["weight"], weight)
    fresh = init_variables(cnn.Conv2d(3, 4, 3), jax.random.key(0))
    np.testing.assert_array_equal(variables["params"]["bias"], fresh["params"]["bias"])
    report = check_state_dict(cnn.Conv2d(3, 4, 3), sd)
    assert report.missing_keys == ["bias"] and report.unexpected_keys == ["other"]


def test_non_strict_still_refuses_shape_mismatch():
    sd = {"weight": np.zeros((4, 3, 5, 5), np.float32), "bias": np.zeros(4, np.float32)}
    with pytest.raises(StateDictError, match="Size mismatch"):
        from_torch(cnn.Conv2d(3, 4, 3), sd, strict=False)


def test_exact_match_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_torch(cnn.Linear(2, 2), torch.nn.Linear(2, 2).state_dict())


def test_from_torch_copies_so_in_place_torch_updates_do_not_leak():
    bn_t = torch.nn.BatchNorm2d(2)
    variables = from_torch(cnn.BatchNorm2d(2), bn_t.state_dict())
    bn_t.train()(torch.randn(4, 2, 3, 3) + 5)  # updates running_mean in place
    np.testing.assert_array_equal(variables["batch_stats"]["running_mean"], np.zeros(2))


def test_numpy_state_dicts_and_dtypes():
    sd = {"weight": np.ones((3, 2), np.float64), "bias": np.zeros(3, np.float64)}
    variables = from_torch(cnn.Linear(2, 3), sd)
    assert variables["params"]["weight"].dtype == jnp.float32
    out = to_state_dict(cnn.BatchNorm2d(2), init_variables(cnn.BatchNorm2d(2), jax.random.key(0)))
    assert out["num_batches_tracked"].dtype == np.int64


def test_to_torch_checks_variables_against_module():
    variables = init_variables(cnn.Conv2d(3, 4, 3), jax.random.key(0))
    with pytest.raises(StateDictError, match="Size mismatch"):
        to_torch(cnn.Conv2d(3, 5, 3), variables)


def test_module_without_example_shape_needs_sample_input():
    class Net(cnn.Conv2d.__mro__[1]):  # a bare flax Module
        @jax.named_call
        def __call__(self, x):
            return x

    with pytest.raises(ValueError, match="sample_input"):
        from_torch(Net(), {})
