"""Model inspection: summary totals against published figures and torch twins, receptive fields
against the formula and against gradient support, feature maps and filters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.inspect as inspect
import cnn_jax.nn as cnn
import cnn_jax.testing.torch_models as torch_models
from cnn_jax import maths
from cnn_jax.interop import init_variables
from cnn_jax.models import create

torch = pytest.importorskip("torch")

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
    twin = torch_models.restatement("resnet18", num_classes=10)
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


def _twin_pair(name="convnet", **kw):
    from cnn_jax.interop import from_torch

    torch.manual_seed(0)
    twin = torch_models.randomize(torch_models.restatement(name, **kw)).eval()
    model = create(name, **kw)
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 1)).astype(np.float32)
    variables = from_torch(model, twin.state_dict(), sample_input=jnp.asarray(x))
    return twin, model, variables, x


def _nchw(x):
    return torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_saliency_equals_torch_input_gradients():
    twin, model, variables, x = _twin_pair(activation="tanh", batch_norm=True, channels=(4, 8))
    labels = np.array([0, 3, 7, 9])
    xt = _nchw(x).requires_grad_(True)
    twin(xt)[torch.arange(4), torch.tensor(labels)].sum().backward()
    expected = xt.grad.abs().amax(dim=1).numpy()
    ours = np.asarray(inspect.saliency(model, variables, jnp.asarray(x), labels))
    assert ours.shape == (4, 32, 32)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * expected.max())
    # Without labels: the predicted class's gradient.
    predicted = np.asarray(model.apply(variables, x, train=False)).argmax(-1)
    np.testing.assert_array_equal(
        inspect.saliency(model, variables, jnp.asarray(x)),
        inspect.saliency(model, variables, jnp.asarray(x), predicted),
    )


def test_layer_gradient_norms_equal_torch_weight_gradients():
    twin, model, variables, x = _twin_pair(activation="sigmoid", channels=(4, 8))
    labels = np.array([1, 2, 3, 4])
    torch.nn.functional.cross_entropy(twin(_nchw(x)), torch.tensor(labels)).backward()
    expected = {
        name: m.weight.grad.norm().item()
        for name, m in twin.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    }
    ours = inspect.layer_gradient_norms(model, variables, jnp.asarray(x), jnp.asarray(labels))
    assert list(ours) == list(expected)  # forward order, torch names
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, rel=1e-4), name


def test_plots_draw_and_save_pngs(tmp_path):
    from cnn_jax.inspect import plots

    model = create("convnet", channels=(8, 16))
    variables = init_variables(model, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 1))
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1 / e + 0.1 * e,
            "train_accuracy": 0.5,
            "val_accuracy": [0.5, 0.9, 0.7][e - 1],
        }
        for e in (1, 2, 3)
    ]
    figures = {
        "filters": plots.filters(
            inspect.first_conv_filters(model, variables), path=tmp_path / "a.png"
        ),
        "maps": plots.feature_maps(
            inspect.intermediates(model, variables, x[:1], ["features.1"])["features.1"],
            path=tmp_path / "b.png",
        ),
        "curves": plots.curves(
            history, extra={"test_accuracy": [0.4, 0.8, 0.75]}, path=tmp_path / "c.png"
        ),
        "saliency": plots.saliency(
            x, inspect.saliency(model, variables, x), path=tmp_path / "d.png"
        ),
        "images": plots.images(
            np.random.default_rng(0).random((2, 8, 8, 3)),
            labels=["a", "b"],
            path=tmp_path / "e.png",
        ),
        "mean_std": plots.mean_std([1, 2], {"a": [[1, 2], [2, 3]]}, path=tmp_path / "f.png"),
        "bars": plots.bars({"a": [1, 2], "b": [3]}, path=tmp_path / "g.png"),
    }
    for name in "abcdefg":
        assert (tmp_path / f"{name}.png").stat().st_size > 2_000, name
    # The best epoch (highest validation accuracy: epoch 2) is marked on both panels.
    loss_panel, accuracy_panel = (
        [line.get_label() for line in ax.get_lines()] for ax in figures["curves"].axes
    )
    assert "best (epoch 2)" in loss_panel and "best (epoch 2)" in accuracy_panel
    assert "test accuracy" in accuracy_panel and "test accuracy" not in loss_panel
    assert len(figures["filters"].axes) == 8  # one tile per output channel
    # Figures show themselves in notebooks (IPython calls _repr_png_), with no pyplot involved.
    assert all(f._repr_png_().startswith(b"\x89PNG") for f in figures.values())
    with pytest.raises(ValueError, match=r"\(out, in, kH, kW\)"):
        plots.filters(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="for one image"):
        plots.feature_maps(np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="do not match"):
        plots.saliency(np.zeros((2, 8, 8, 1)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="has 3 points, x has 2"):
        plots.mean_std([1, 2], {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="at least one epoch"):
        plots.curves([])


def test_convnet_refuses_unknown_choices():
    for kw, match in (
        (dict(activation="gelu"), "activation must be one of relu, tanh, sigmoid"),
        (dict(head="mlp"), "head must be 'gap' or 'flatten'"),
    ):
        with pytest.raises(ValueError, match=match):
            init_variables(create("convnet", **kw), jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="needs 32x32 input"):
        model = create("convnet", head="flatten")
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)


# torchvision's googlenet(weights=...) returns its model without the auxiliary heads unless asked
# (inception_v3 keeps its own): the published figures describe that model.
PUBLISHED_AS = {"googlenet": {"aux_logits": False}}
# A couple of families by default; every torchvision model under -m slow.
PUBLISHED_DEFAULT = {"squeezenet1_1", "googlenet"}


def _published_cases():
    from cnn_jax.models import registry
    from cnn_jax.testing import zoo

    return [
        pytest.param(s.name, marks=zoo.slow_marks(s.name, PUBLISHED_DEFAULT), id=s.name)
        for s in registry.specs()
        if s.torchvision
    ]


def _totals(text: str) -> tuple[int, int]:
    """``Total params`` and ``Total MACs`` from a summary table, as ``cnn-jax summary`` prints."""
    values = {}
    for line in text.splitlines():
        for key in ("Total params", "Total MACs"):
            if line.startswith(key + ": "):
                values[key] = int(line.split(": ")[1].replace(",", ""))
    return values["Total params"], values["Total MACs"]


@pytest.mark.parametrize("name", _published_cases())
def test_summary_matches_torchvisions_published_params_and_ops(name):
    """Parameters and operations equal the figures torchvision publishes with its weights
    (``meta['num_params']``, and ``meta['_ops']``: GMACs of its convolutions and matrix
    products at the weights' crop size, despite the docs' "GFLOPS" heading, rounded to 3
    decimals) and, exactly, torch's own FLOP counter (2 per multiply-accumulate) run on
    torchvision's model: ``inspect.summary`` counts what torch counts."""
    from torch.utils.flop_counter import FlopCounterMode

    tv = torch_models.torchvision_models()
    if tv is None:
        pytest.skip("torchvision is not installed: its published figures are not available")
    kwargs = PUBLISHED_AS.get(name, {})
    # (vgg16's IMAGENET1K_FEATURES, a feature extractor without a head, lists no categories)
    weights = [w for w in tv.get_model_weights(name) if len(w.meta["categories"] or ()) == 1000]
    assert weights, name
    for crop in sorted({w.transforms.keywords["crop_size"] for w in weights}):
        params, macs = _totals(inspect.summary(create(name, **kwargs), (1, crop, crop, 3)))
        with torch_models.meta_parameters():  # layout and shapes only
            reference = torch_models.reference(name, **kwargs).eval()
            counter = FlopCounterMode(display=False)
            with counter:
                reference(torch.empty(1, 3, crop, crop))
        assert params == sum(p.numel() for p in reference.parameters()), name
        assert 2 * macs == counter.get_total_flops(), name
        for w in weights:
            if w.transforms.keywords["crop_size"] == crop:
                assert params == w.meta["num_params"], (name, w.name)
                assert abs(macs / 1e9 - w.meta["_ops"]) <= 5e-4 + 1e-9, (name, w.name, macs)


def test_summary_counts_auxiliary_heads_apart():
    """GoogLeNet with its auxiliary heads (torchvision's default): every parameter is counted,
    those of the heads that run only in training are named, and the operations are the
    inference pass's (the heads do not run in eval mode)."""
    with_aux = inspect.summary(create("googlenet"), (1, 64, 64, 3))
    without = inspect.summary(create("googlenet", aux_logits=False), (1, 64, 64, 3))
    assert _totals(with_aux) == (13_004_888, _totals(without)[1])
    assert _totals(without)[0] == 6_624_904
    assert "run only in training (auxiliary heads): 6,379,984" in with_aux
    assert "auxiliary heads" not in without
    assert not any(r.name.startswith("aux") for r in inspect.layers(create("googlenet")))
