"""Bad input fails loudly with a message that says what was expected — where torch refuses, we
refuse too."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import cnn_jax.nn as cnn

torch = pytest.importorskip("torch")


def _init(layer, shape, **kw):
    return layer.init(jax.random.key(0), jnp.zeros(shape), **kw)


@pytest.mark.parametrize(
    ("layer", "shape", "kw"),
    [
        (cnn.Conv2d(3, 8, 3), (2, 3, 32, 32), {}),
        (cnn.ConvTranspose2d(3, 8, 3), (2, 3, 16, 16), {}),
        (cnn.BatchNorm2d(3), (2, 3, 16, 16), {"train": False}),
    ],
    ids=["conv", "conv_transpose", "batchnorm"],
)
def test_nchw_input_is_refused_naming_the_layout(layer, shape, kw):
    with pytest.raises(ValueError, match="NCHW") as err:
        _init(layer, shape, **kw)
    assert "NHWC" in str(err.value) and "transpose(0, 2, 3, 1)" in str(err.value)


@pytest.mark.parametrize(
    "layer",
    [
        cnn.Conv2d(3, 8, 3),
        cnn.MaxPool2d(2),
        cnn.AvgPool2d(2),
        cnn.AdaptiveAvgPool2d(1),
        cnn.AdaptiveMaxPool2d(1),
        cnn.ConvTranspose2d(3, 3, 2),
    ],
    ids=lambda m: type(m).__name__,
)
def test_wrong_rank_is_refused(layer):
    with pytest.raises(ValueError, match="4-D NHWC") as err:
        _init(layer, (16, 16, 3))
    assert "x[None]" in str(err.value)


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="in_channels=3"):
        _init(cnn.Conv2d(3, 8, 3), (1, 16, 16, 4))
    with pytest.raises(ValueError, match="num_features=3"):
        _init(cnn.BatchNorm2d(3), (2, 4, 4, 5), train=False)
    with pytest.raises(ValueError, match="in_features=10"):
        _init(cnn.Linear(10, 2), (4, 11))


def test_invalid_padding_string_is_refused_like_torch():
    with pytest.raises(ValueError, match="Invalid padding string 'full'"):
        cnn.Conv2d(3, 8, 3, padding="full")
    with pytest.raises(ValueError):
        torch.nn.Conv2d(3, 8, 3, padding="full")


def test_same_padding_with_stride_is_refused_like_torch():
    with pytest.raises(ValueError, match="not supported for strided convolutions"):
        cnn.Conv2d(3, 8, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="not supported for strided convolutions"):
        torch.nn.Conv2d(3, 8, 3, stride=2, padding="same")


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: cnn.Conv2d(3, 8, 3, groups=2), lambda: torch.nn.Conv2d(3, 8, 3, groups=2)),
        (
            lambda: cnn.Conv2d(3, 8, 3, padding_mode="mirror"),
            lambda: torch.nn.Conv2d(3, 8, 3, padding_mode="mirror"),
        ),
        (lambda: cnn.Conv2d(3, 8, 0), lambda: torch.nn.Conv2d(3, 8, 0)(torch.zeros(1, 3, 4, 4))),
        (
            lambda: cnn.Conv2d(3, 8, 3, padding=-1),
            lambda: torch.nn.Conv2d(3, 8, 3, padding=-1)(torch.zeros(1, 3, 4, 4)),
        ),
        (
            lambda: cnn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2),
            lambda: torch.nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)(
                torch.zeros(1, 2, 3, 3)
            ),
        ),
        (
            lambda: cnn.MaxPool2d(2, padding=2),
            lambda: torch.nn.MaxPool2d(2, padding=2)(torch.zeros(1, 1, 4, 4)),
        ),
        (
            lambda: cnn.AvgPool2d(3, padding=2),
            lambda: torch.nn.AvgPool2d(3, padding=2)(torch.zeros(1, 1, 4, 4)),
        ),
        (lambda: cnn.Dropout(1.5), lambda: torch.nn.Dropout(1.5)),
        (lambda: cnn.Dropout2d(-0.1), lambda: torch.nn.Dropout2d(-0.1)),
    ],
    ids=[
        "groups",
        "padding_mode",
        "kernel0",
        "neg_padding",
        "output_padding",
        "maxpool_pad",
        "avgpool_pad",
        "dropout_p",
        "dropout2d_p",
    ],
)
def test_invalid_arguments_are_refused_like_torch(ours, theirs):
    with pytest.raises(ValueError):
        ours()
    with pytest.raises((ValueError, RuntimeError)):
        theirs()


def test_kernel_larger_than_input_is_refused():
    with pytest.raises(ValueError, match="output would be empty"):
        _init(cnn.Conv2d(1, 1, 5), (1, 3, 3, 1))
    with pytest.raises(ValueError, match="too small"):
        _init(cnn.MaxPool2d(4), (1, 3, 3, 1))


@pytest.mark.parametrize(("mode", "pad"), [("reflect", 3), ("circular", 4)])
def test_padding_larger_than_input_is_refused_for_non_zero_modes(mode, pad):
    with pytest.raises(ValueError, match=mode):
        _init(cnn.Conv2d(1, 1, 3, padding=pad, padding_mode=mode), (1, 3, 3, 1))
    with pytest.raises(RuntimeError):
        torch.nn.Conv2d(1, 1, 3, padding=pad, padding_mode=mode)(torch.zeros(1, 1, 3, 3))


def test_bad_adaptive_output_size_is_refused():
    with pytest.raises(ValueError, match="output_size"):
        cnn.AdaptiveAvgPool2d((1, 2, 3))
    with pytest.raises(ValueError, match="positive"):
        cnn.AdaptiveMaxPool2d(0)
