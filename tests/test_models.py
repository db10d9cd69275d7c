"""Model zoo: registry-driven checks, and parity with PyTorch twins of torchvision's layout."""

from __future__ import annotations

import copy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cnn_jax.testing.torch_models as torch_models
from cnn_jax.interop import abstract_variables, from_torch, init_variables, to_torch
from cnn_jax.models import (
    VGG,
    create,
    list_models,
    logits_terms,
    register,
    registry,
)
from cnn_jax.testing import zoo
from cnn_jax.testing.miniatures import MINIATURES
from cnn_jax.testing.parity import assert_as_close_as_torch, assert_rel_close

torch = pytest.importorskip("torch")

DEFAULT = zoo.default_models()


def _registry_params(every_family=False, giants=True):
    """Every registered model, the first of each family by default and the others slow
    (``every_family``: alexnet's, vgg's, ... first too); without ``giants`` (a check holding a
    float64 twin) zoo.GIANTS need a large machine."""
    return zoo.cases(every_family=every_family, float64_twin=not giants)


_kwargs = zoo.kwargs


def _structure(output):
    """A model output's form: ``'logits'``, or a named tuple's type name and fields (cnn_jax
    returns torchvision's GoogLeNetOutputs / InceptionOutputs where torchvision does)."""
    if isinstance(output, tuple):
        return type(output).__name__, output._fields, [o is None for o in output]
    return "logits"


def _input(name, model, batch=2, seed=0):
    size = zoo.input_size(name)
    channels = model.example_input_shape()[-1]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, size, size, channels)).astype(np.float32)


@pytest.mark.slow  # builds every torchvision reference model
def test_torchvision_is_the_reference_where_installed():
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed: the twins are the reference")
    for name in [s.name for s in registry.specs() if s.torchvision]:
        reference = torch_models.reference(name, num_classes=5)
        assert type(reference).__module__.startswith("torchvision.models."), name
    # Not a torchvision model, or a channel count torchvision's models do not take: the twin.
    assert type(torch_models.reference("lenet5")).__module__ == torch_models.__name__
    assert type(torch_models.reference("resnet18", in_channels=1)).__module__ == (
        torch_models.__name__
    )


def test_registry_lists_every_family_and_rejects_unknown_names():
    assert {
        "lenet5",
        "simple_cnn",
        "cifar_cnn",
        "mlp",
        "alexnet",
        "vgg11",
        "vgg16",
        "vgg11_bn",
        "vgg16_bn",
        "resnet18",
        "resnet34",
        "resnet50",
    } <= set(list_models())
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'.*resnet18"):
        create("resnet19")
    with pytest.raises(ValueError, match="bad arguments for model 'lenet5'"):
        create("lenet5", width=3)
    with pytest.raises(ValueError, match="model 'lenet5' is already registered"):
        register("lenet5")(lambda **kw: None)
    register("test-registry-tiny", replace=True)(
        lambda **kw: create("convnet", channels=(2,), **kw)
    )
    register("test-registry-tiny", replace=True)(
        lambda **kw: create("convnet", channels=(3,), **kw)
    )
    assert create("test-registry-tiny").channels == (3,)


# torchvision's transformer classifiers: not CNNs, outside this library's scope.
TRANSFORMERS = ("vit_", "swin_", "maxvit_")


def test_every_torchvision_cnn_classifier_is_registered_under_its_name():
    tv = torch_models.torchvision_models()
    if tv is None:
        pytest.skip("torchvision is not installed: its list of models is the reference")
    theirs = {n for n in tv.list_models(module=tv) if not n.startswith(TRANSFORMERS)}
    assert len(theirs) == 68  # torchvision 0.28's CNN classifiers
    assert theirs <= set(list_models())
    ours = {s.name for s in registry.specs() if s.torchvision}
    assert ours == theirs


@pytest.mark.parametrize("name", _registry_params(every_family=True))
def test_parameter_count_equals_torch_twin(name):
    """The parameter count, and the state_dict layout: every key with its shape, buffers too."""
    model = create(name, **_kwargs(name))
    variables = abstract_variables(model)
    ours = sum(v.size for v in jax.tree.leaves(variables["params"]))
    with torch_models.meta_parameters():  # layout only, no memory
        twin = torch_models.reference(name, **_kwargs(name))
    assert ours == sum(p.numel() for p in twin.parameters())
    layout = {
        ".".join(path[1:]): tuple(v.shape)
        for path, v in traverse_util.flatten_dict(variables).items()
    }
    assert layout == {k: tuple(v.shape) for k, v in twin.state_dict().items()}


@pytest.mark.parametrize("name", _registry_params(giants=False))
def test_forward_gradients_and_single_trace(name):
    model = create(name, **_kwargs(name))
    x = jnp.asarray(_input(name, model))
    variables = init_variables(model, jax.random.key(0), x)
    labels = jnp.arange(x.shape[0]) % 5

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, x, key):
        def loss(params):
            output, _ = model.apply(
                {**variables, "params": params},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            # Every head's loss (GoogLeNet's and Inception's auxiliary ones too), so every
            # parameter takes part in the gradient.
            total = 0.0
            for logits in logits_terms(output):
                logp = jax.nn.log_softmax(logits)
                total -= jnp.take_along_axis(logp, labels[:, None], axis=1).mean()
            return total, output

        return jax.grad(loss, has_aux=True)(params)

    for i in range(2):
        grads, output = step(variables["params"], x + i, jax.random.key(i))
    for logits in logits_terms(output):
        chex.assert_shape(logits, (x.shape[0], 5))
    chex.assert_tree_all_finite((grads, output))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    chex.assert_shape(eval_logits, (x.shape[0], 5))


# Every registered model against its reference (torchvision's own code for torchvision's
# families), plus miniatures of the big families and of ConvNet's options.
PARITY = [
    pytest.param(
        name,
        lambda name=name, **kw: create(name, **kw),
        lambda name=name, **kw: torch_models.reference(name, **kw),
        marks=p.marks,
        id=name,
    )
    for p in _registry_params(giants=False)
    for name in p.values
]
PARITY += [pytest.param(m.label, m.ours, m.reference, id=m.label) for m in MINIATURES]
MINIATURE_BASE = {m.label: m.base for m in MINIATURES}


def test_every_family_the_default_suite_skips_has_a_miniature():
    """The families whose full models run only under -m slow are checked by default through
    miniatures (alexnet and the VGGs, a few layers each, run whole under -m slow in CI)."""
    covered = {registry.spec(m.base).family for m in MINIATURES}
    assert zoo.SLOW_FAMILIES - {"alexnet", "vgg"} <= covered


@pytest.mark.parametrize(
    ("label", "make_ours", "make_twin"), PARITY, ids=lambda v: v if isinstance(v, str) else ""
)
def test_matches_torch_twin(label, make_ours, make_twin):
    """Eval logits, train-mode logits, updated running stats; to_torch round-trips."""
    # Random train-mode layers off: their masks cannot match torch's; everything else must.
    kw = zoo.kwargs(MINIATURE_BASE.get(label, label), deterministic=True)
    torch.manual_seed(0)
    twin = torch_models.randomize(make_twin(**kw))
    model = make_ours(**kw)
    # Batch 8: with 3 images ResNet's last stage normalises 3 values per channel in train mode,
    # and torch's own float32 result is then further than the 1e-5 bar from float64; at 8 both
    # torch and cnn_jax are within it.
    x_nhwc = _input(MINIATURE_BASE.get(label, label), model, batch=8, seed=1)
    x = torch.tensor(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))

    variables = from_torch(model, twin.state_dict(), sample_input=jnp.asarray(x_nhwc))

    twin64 = copy.deepcopy(twin).double()
    apply_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))
    apply_train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    for mode, ours in (
        ("eval", lambda: apply_eval(variables, x_nhwc)),
        ("train", lambda: apply_train(variables, x_nhwc)[0]),
    ):
        twin.train(mode == "train")
        twin64.train(mode == "train")
        with torch.no_grad():
            expected, reference = twin(x), twin64(x.double())
        output = ours()
        # The same form as torchvision's (a named tuple with auxiliary logits in training).
        assert _structure(output) == _structure(expected), mode
        for i, (logits, want, want64) in enumerate(
            zip(*map(logits_terms, (output, expected, reference)), strict=True)
        ):
            what = f"{mode} logits" + (f" (output {i})" if i else "")
            assert_as_close_as_torch(logits, want.numpy(), want64.numpy(), what)
    # The train-mode forward above was one training step for torch's running statistics.
    _, updates = apply_train(variables, x_nhwc)

    ours = to_torch(model, {**variables, **updates}, sample_input=jnp.asarray(x_nhwc))
    assert set(ours) == set(twin.state_dict())
    exact = twin64.state_dict()  # its running statistics took the same train-mode step
    for key, value in twin.state_dict().items():
        assert ours[key].dtype == value.dtype, key
        # Same rule as the logits: ResNet-50's last-stage variances (32 values per channel) can
        # be further than 1e-5 from torch's in float32; then both are judged against float64.
        # (num_batches_tracked: integers, torch's in both)
        assert_as_close_as_torch(ours[key].numpy(), value.numpy(), exact[key].numpy(), key)
    twin.load_state_dict(ours)  # strict: the torch twin accepts every key


@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.parametrize("name", sorted(zoo.GIANTS))
def test_giant_eval_logits(name):
    """A model of zoo.GIANTS with its reference's weights and BatchNorm statistics: eval-mode
    logits within the parity bar of the reference's float32 ones. Without the float64 twin,
    train mode and gradients that make it a giant; its classes get those checks at smaller
    widths, and its layout is checked in test_parameter_count_equals_torch_twin."""
    kw = _kwargs(name)
    torch.manual_seed(0)
    twin = torch_models.randomize(torch_models.reference(name, **kw)).eval()
    model = create(name, **kw)
    x_nhwc = _input(name, model, batch=2, seed=1)
    variables = from_torch(model, twin.state_dict(), sample_input=jnp.asarray(x_nhwc))
    with torch.no_grad():
        expected = twin(torch.tensor(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    del twin  # its weights are in `variables` now: hold one copy (2.6 GB for regnet_y_128gf)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_nhwc)
    assert_rel_close(logits, expected.numpy(), what="eval logits")


def test_simple_cnn_and_mlp_refuse_the_wrong_input_size():
    model = create("simple_cnn", input_size=28, in_channels=1)
    with pytest.raises(ValueError, match="input_size=\\(28, 28\\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)
    with pytest.raises(
        ValueError, match=r"MLP needs 8x8 input \(built with input_shape=\(8, 8, 3\)\), got 9x9"
    ):
        create("mlp", input_size=8).init(jax.random.key(0), jnp.zeros((1, 9, 9, 3)), train=False)


def test_lenet5_feature_map_sizes_are_the_lectures():
    model = create("lenet5")
    variables = init_variables(model, jax.random.key(0))
    _, inter = model.apply(
        variables,
        jnp.zeros((1, 32, 32, 1)),
        train=False,
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    feats = inter["intermediates"]["features"]
    shapes = {k: feats[k]["__call__"][0].shape for k in ("0", "2", "3", "5", "6")}
    assert shapes == {
        "0": (1, 28, 28, 6),
        "2": (1, 14, 14, 6),
        "3": (1, 10, 10, 16),
        "5": (1, 5, 5, 16),
        "6": (1, 1, 1, 120),
    }


@pytest.mark.slow  # initialises full-size models in both frameworks
def test_torchvision_initialisation_schemes():
    model = create("resnet18", num_classes=10)
    params = init_variables(model, jax.random.key(0))["params"]
    w = np.asarray(params["layer1"]["0"]["conv1"]["weight"])  # 64x64x3x3, fan_out = 576
    assert abs(w.std() - np.sqrt(2 / 576)) < 0.05 * np.sqrt(2 / 576)
    vgg = VGG(cfg=(8, "M"), hidden=16, pool_size=1, num_classes=4)
    p = init_variables(vgg, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    assert float(jnp.abs(p["features"]["0"]["bias"]).max()) == 0.0
    assert abs(float(p["classifier"]["0"]["weight"].std()) - 0.01) < 0.002


# The initialisation check runs one cheap model by default; every torchvision model with -m slow.
INIT_DEFAULT = {"squeezenet1_1"}


def _at_most(values: np.ndarray, n: int = 1_000_000) -> np.ndarray:
    """``values``, or ``n`` of them drawn at fixed random positions when there are more: two
    samples of a million still tell a wrong scheme, fan or scale apart by far, and VGG's
    102-million-value classifier weight would otherwise be sorted whole, twice."""
    if values.size <= n:
        return values
    return values[np.random.default_rng(0).integers(0, values.size, n)]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(s.name, marks=zoo.slow_marks(s.name, INIT_DEFAULT), id=s.name)
        for s in registry.specs()
        if s.torchvision
    ],
)
def test_initialisation_has_torchvisions_law(name):
    """Every parameter starts as torchvision's does: a tensor torchvision fills with a constant
    (BatchNorm's ones and zeros, zero biases) holds that constant; every tensor of >= 1,000
    values is drawn from torchvision's law (two-sample Kolmogorov–Smirnov against torchvision's
    own initialisation, p > 1e-6 with fixed seeds: a wrong scheme, fan or scale fails by far)."""
    from scipy import stats

    kw = zoo.kwargs(name)
    model = create(name, **kw)
    size = registry.spec(name).test_input_size(preferred=1)  # the forward's cost is irrelevant
    x = jnp.zeros((1, size, size, 3))
    # The same laws from the non-partitionable threefry, which XLA:CPU compiles ~6x faster
    # (a deep model's init otherwise compiles for minutes here).
    with jax.threefry_partitionable(False):
        params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)["params"]
    ours = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep=".").items()}
    torch.manual_seed(0)
    reference = dict(torch_models.reference(name, **kw).named_parameters())
    assert set(ours) == set(reference)
    tested = 0
    for key, value in reference.items():
        theirs = value.detach().numpy().ravel()
        if theirs.min() == theirs.max():
            np.testing.assert_array_equal(ours[key], theirs[0], err_msg=key)
        elif theirs.size >= 1000:
            p = stats.ks_2samp(_at_most(ours[key].ravel()), _at_most(theirs)).pvalue
            assert p > 1e-6, f"{key}: KS p {p:.2g}, std {ours[key].std():.3g} vs {theirs.std():.3g}"
        else:
            continue
        tested += theirs.size
    # Small tensors (a 5-class head's bias) have too few values for a test of their law.
    assert tested >= 0.99 * sum(v.numel() for v in reference.values())


@pytest.mark.parametrize(
    "name",
    sorted(n for n in zoo.default_models(every_family=True) if registry.spec(n).torchvision),
)
def test_min_input_size_is_the_smallest_input_the_model_takes(name):
    """A torchvision family's registered ``min_input_size`` (what the tests' input sizes rely
    on) is honest: the model takes it, and refuses one pixel less in one line naming the size
    to use (abstract evaluation: nothing is computed). The course's small networks are built
    for their input size (``input_shape``, ``input_size``) and checked in their own tests."""
    spec = registry.spec(name)
    model = create(name, **zoo.kwargs(name))
    channels = model.example_input_shape()[-1]

    def init(size):
        x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
        return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)

    init(spec.min_input_size)
    if spec.min_input_size > 1:
        with pytest.raises(ValueError, match=rf"at least {spec.min_input_size}x"):
            init(spec.min_input_size - 1)
