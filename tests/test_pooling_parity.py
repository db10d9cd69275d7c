"""MaxPool2d, AvgPool2d and the adaptive pools equal torch.nn's, forward and gradient."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import check_parity, torch

import cnn_jax.nn as cnn

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
