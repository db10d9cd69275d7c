"""Model inspection: summary totals against published figures and torch twins, receptive fields
against the formula and against gradient support, feature maps and filters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import torch

import cnn_jax.inspect as inspect
import cnn_jax.interop.torch_twins as torch_twins
import cnn_jax.nn as cnn
from cnn_jax import maths
from cnn_jax.interop import init_variables
from cnn_jax.models import create

# Published figures for 224x224 inputs, 1000 classes: parameters, multiply-accumulates, and the
# receptive field of the last conv/pool layer.
KNOWN = {
    "alexnet": (61_100_840, 714_188_480, ("features.12", 195)),
    "vgg16": (138_357_544, 15_470_264_320, ("features.30", 212)),
    "resnet18": (11_689_512, 1_814_073_344, ("layer4.1.conv2", 435)),
    "resnet50": (25_557_032, 4_089_184_256, ("layer4.2.conv3", 427)),
}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_totals_and_receptive_fields_match_published_figures(name):
    rows = inspect.layers(create(name))
    params, macs, (layer, rf) = KNOWN[name]
    assert sum(r.params for r in rows) == params
    assert sum(r.macs for r in rows) == macs
    assert {r.name: r.receptive_field for r in rows}[layer] == (rf, rf)


def test_per_layer_params_and_shapes_equal_the_torch_twin():
    model = create("resnet18", num_classes=10)
    twin = torch_twins.twin("resnet18", num_classes=10)
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
        for n, m in twin.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.BatchNorm2d | torch.nn.Linear)
    ]
    twin(torch.zeros(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    torch_modules = dict(twin.named_modules())
    rows = {r.name: r for r in inspect.layers(model, (1, 64, 64, 3))}
    for name, shape in shapes.items():
        row = rows[name]
        assert row.params == sum(p.numel() for p in torch_modules[name].parameters()), name
        ours = row.output_shape
        if len(ours) == 4:  # NHWC -> NCHW
            ours = (ours[0], ours[3], ours[1], ours[2])
        assert ours == shape, name


def test_summary_table_lists_layers_and_totals():
    text = inspect.summary(create("lenet5"))
    assert "features.0 (Conv2d)" in text and "(1, 28, 28, 6)" in text
    assert "Total params: 61,706" in text
    assert "Total MACs: 416,520" in text
    lenet_params = [
        maths.conv_param_count(1, 6, 5),
        maths.conv_param_count(6, 16, 5),
        maths.conv_param_count(16, 120, 5),
    ]
    rows = [r for r in inspect.layers(create("lenet5")) if r.kind == "Conv2d"]
    assert [r.params for r in rows] == lenet_params


def test_receptive_field_of_a_chain_equals_the_formula():
    rows = [
        r
        for r in inspect.layers(create("alexnet"))
        if r.name.startswith("features.") and r.kind in ("Conv2d", "MaxPool2d")
    ]
    spec = [(11, 4, 2), (3, 2), (5, 1, 2), (3, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2)]
    expected = maths.receptive_field(spec)
    assert [r.receptive_field[0] for r in rows] == [e.size for e in expected]
    assert [r.jump[0] for r in rows] == [e.jump for e in expected]


def test_receptive_field_equals_gradient_support():
    """For a conv/avg-pool net, the pixels that influence one output are its receptive field."""
    model = cnn.Sequential(
        (
            cnn.Conv2d(1, 2, 3),
            cnn.ReLU(),
            cnn.AvgPool2d(2),
            cnn.Conv2d(2, 2, 3, dilation=2),
            cnn.AvgPool2d(3, 1),
        )
    )
    x = jnp.ones((1, 40, 40, 1))
    variables = init_variables(model, jax.random.key(0), x)
    variables = jax.tree.map(jnp.abs, variables)  # positive weights: no cancellations
    g = jax.grad(lambda x: model.apply(variables, x, train=False)[0, 3, 3, 0])(x)
    rows = np.nonzero(np.asarray(g[0, :, :, 0]).any(axis=1))[0]
    rf = inspect.layers(model, x.shape)[-1].receptive_field
    assert rows.max() - rows.min() + 1 == rf[0]


def test_intermediates_by_name():
    model = create("lenet5")
    variables = init_variables(model, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
    maps = inspect.intermediates(model, variables, x, ["features.0", "features.1"])
    assert set(maps) == {"features.0", "features.1"}
    assert maps["features.0"].shape == (2, 28, 28, 6)
    np.testing.assert_allclose(maps["features.1"], jnp.tanh(maps["features.0"]), rtol=1e-6)
    every = inspect.intermediates(model, variables, x)
    assert list(every)[:3] == ["features.0", "features.1", "features.2"]
    np.testing.assert_allclose(
        every["classifier.2"], model.apply(variables, x, train=False), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"unknown layer name.*features\.0"):
        inspect.intermediates(model, variables, x, ["features.99"])


def test_first_conv_filters_and_images():
    model = create("resnet18", num_classes=10)
    variables = init_variables(model, jax.random.key(0))
    w = inspect.first_conv_filters(model, variables)
    assert w.shape == (64, 3, 7, 7)
    np.testing.assert_array_equal(w, variables["params"]["conv1"]["weight"])
    images = inspect.filters_as_images(w)
    assert images.shape == (64, 7, 7, 3)
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    with pytest.raises(ValueError, match="no Conv2d"):
        inspect.first_conv_filters(create("mlp"), init_variables(create("mlp"), jax.random.key(0)))
