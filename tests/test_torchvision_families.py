"""Arguments and options of torchvision's families beyond what the registry-driven tests cover:
ResNet's ``groups``/``width_per_group``/``replace_stride_with_dilation`` checks and
``zero_init_residual``, DenseNet's ``memory_efficient``, GoogLeNet's and Inception v3's
``transform_input``, SqueezeNet's versions — each against torchvision's own code."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cnn_jax.models.resnet as resnet_module
import cnn_jax.nn as cnn
import cnn_jax.testing.torch_models as torch_models
from cnn_jax.interop import abstract_variables
from cnn_jax.models import DenseNet, ResNet, SqueezeNet, create
from cnn_jax.nn.init import zeros
from cnn_jax.testing.parity import assert_rel_close

torch = pytest.importorskip("torch")


def _torchvision_class(module: str, name: str):
    cls = torch_models.torchvision_class(module, name)
    if cls is None:
        pytest.skip("torchvision is not installed: it is the reference")
    return cls


def test_resnet_arguments_are_refused_as_torchvision_refuses_them():
    with pytest.raises(ValueError, match="BasicBlock only supports groups=1 and base_width=64"):
        create("resnet18", groups=2)
    with pytest.raises(ValueError, match="BasicBlock does not support dilation > 1"):
        create("resnet34", replace_stride_with_dilation=(False, True, True))
    with pytest.raises(ValueError, match="should be None or a 3-element tuple"):
        create("resnet50", replace_stride_with_dilation=(True,))
    # ResNeXt and Wide ResNet fix their widths: the fixed value is accepted, another refused.
    with pytest.raises(ValueError, match="'groups' expected value 32 but got 8 instead"):
        create("resnext50_32x4d", groups=8)
    with pytest.raises(ValueError, match="'width_per_group' expected value 128 but got 64"):
        create("wide_resnet50_2", width_per_group=64)
    assert create("resnext101_64x4d", groups=64).groups == 64
    # torchvision raises for the same arguments (its messages are the source of ours).
    tv_resnet, tv_basic = (
        _torchvision_class("resnet", "ResNet"),
        _torchvision_class("resnet", "BasicBlock"),
    )
    with pytest.raises(ValueError, match="BasicBlock only supports groups=1"):
        tv_resnet(tv_basic, [1, 1, 1, 1], groups=2)
    with pytest.raises(NotImplementedError, match="Dilation > 1 not supported in BasicBlock"):
        tv_resnet(tv_basic, [2, 2, 2, 2], replace_stride_with_dilation=[False, True, True])


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_zero_init_residual_zeroes_torchvisions_batchnorms(block):
    """The BatchNorm scales torchvision's ``zero_init_residual`` sets to 0 are the ones cnn_jax
    initialises with ``zeros`` (read from an abstract trace: ``zeros``' values are exact)."""

    reference = _torchvision_class("resnet", "ResNet")(
        _torchvision_class("resnet", block), [1, 1, 1, 1], zero_init_residual=True
    )
    model = ResNet(getattr(resnet_module, block), (1, 1, 1, 1), zero_init_residual=True, width=8)
    zeroed = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, cnn.BatchNorm2d) and module.weight_init is zeros:
            zeroed.append(".".join(module.path) + ".weight")
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract_variables(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    expected = {k for k, v in reference.named_parameters() if k.endswith("weight") and not v.any()}
    assert set(zeroed) == expected
    assert expected == {
        f"layer{i}.0.{'bn2' if block == 'BasicBlock' else 'bn3'}.weight" for i in (1, 2, 3, 4)
    }


def test_densenet_memory_efficient_changes_nothing_but_memory():
    """``memory_efficient=True`` recomputes each dense layer's bottleneck in the backward pass
    (a remat in the traced program) and gives the same logits, gradients and statistics as
    ``False`` — which are torchvision's ``memory_efficient=False`` ones (tests/test_models.py;
    torchvision's recomputation updates norm1's statistics a second time, not reproduced)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    labels = jnp.arange(2)
    results = []
    models = [
        DenseNet(8, (2,), 16, bn_size=2, num_classes=3, memory_efficient=memory_efficient)
        for memory_efficient in (False, True)
    ]
    variables = jax.jit(lambda x: models[0].init(jax.random.key(0), x, train=False))(x)
    for memory_efficient, model in zip((False, True), models, strict=True):

        def loss(params, model=model, variables=variables):
            logits, updates = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            logp = jax.nn.log_softmax(logits)
            return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean(), (logits, updates)

        grad = jax.grad(loss, has_aux=True)
        jaxpr = str(jax.make_jaxpr(grad)(variables["params"]))
        assert ("remat" in jaxpr or "checkpoint" in jaxpr) == memory_efficient
        results.append(jax.jit(grad)(variables["params"]))
    (g0, (logits0, stats0)), (g1, (logits1, stats1)) = results
    assert_rel_close(logits1, logits0, what="logits")
    # Recomputing may round differently, and a few gradients are tiny (norm0's scale: 1e-3 of
    # the largest, from cancellations): the bar is relative to the whole gradient.
    flat0, flat1 = jax.flatten_util.ravel_pytree(g0)[0], jax.flatten_util.ravel_pytree(g1)[0]
    assert_rel_close(flat1, flat0, what="gradients")
    for key, value in traverse_util.flatten_dict(stats0).items():
        assert_rel_close(traverse_util.flatten_dict(stats1)[key], value, what=".".join(key))


def _first_conv_input(model, x):
    """The array the model's first convolution receives, without computing the rest: the call
    is stopped there (shapes-only variables suffice up to that point)."""

    class Stop(Exception):
        pass

    def grab(next_fun, args, kwargs, context):
        if isinstance(context.module, cnn.Conv2d):
            raise Stop(args[0])
        return next_fun(*args, **kwargs)

    variables = abstract_variables(model, jax.ShapeDtypeStruct(x.shape, x.dtype))
    with pytest.raises(Stop) as stopped, nn.intercept_methods(grab):
        model.apply(variables, x, train=False)
    return np.asarray(stopped.value.args[0])


@pytest.mark.parametrize(("name", "size"), [("googlenet", 32), ("inception_v3", 75)])
def test_transform_input_is_torchvisions(name, size):
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    reference = torch_models.reference(
        name, num_classes=5, transform_input=True, init_weights=False
    )
    expected = reference._transform_input(torch.tensor(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = _first_conv_input(create(name, num_classes=5, transform_input=True), jnp.asarray(x))
    assert_rel_close(got, expected.transpose(0, 2, 3, 1), what="transformed input")
    plain = _first_conv_input(create(name, num_classes=5), jnp.asarray(x))
    np.testing.assert_array_equal(plain, x)
    with pytest.raises(ValueError, match="transform_input re-normalises 3 RGB channels"):
        create(name, in_channels=1, transform_input=True)


def test_squeezenet_versions():
    with pytest.raises(ValueError, match="Unsupported SqueezeNet version 1_2: 1_0 or 1_1 expected"):
        SqueezeNet("1_2")
    with pytest.raises(ValueError, match="SqueezeNet needs input of at least 21x21"):
        abstract_variables(
            create("squeezenet1_0"), jax.ShapeDtypeStruct((1, 20, 20, 3), jnp.float32)
        )


def _torchvision_specs():
    from cnn_jax.models import registry
    from cnn_jax.testing import zoo

    default = zoo.default_models()
    return [
        pytest.param(s.name, marks=zoo.slow_marks(s.name, default), id=s.name)
        for s in registry.specs()
        if s.torchvision
    ]


@pytest.mark.parametrize("name", _torchvision_specs())
def test_dropout_rates_are_torchvisions(name):
    """Every dropout a train-mode forward pass applies has torchvision's probability, in
    torchvision's order, with each rate argument (``dropout``, ``dropout_aux``, ``drop_rate``)
    set to its own value (read from abstract traces: torch on the meta device). The masks
    cannot match torch's; ``tests/test_basic_layers.py`` checks Dropout's drop rate itself."""
    from torch.overrides import TorchFunctionMode

    from cnn_jax.models import registry
    from cnn_jax.testing import zoo

    spec = registry.spec(name)
    rates = {arg: 0.1 * (i + 2) for i, arg in enumerate(spec.deterministic)}
    kw = zoo.kwargs(name, **rates)
    size = zoo.input_size(name)

    ours = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, cnn.Dropout) and kwargs.get("train"):
            ours.append(round(context.module.p, 6))
        return next_fun(*args, **kwargs)

    model = create(name, **kw)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = abstract_variables(model, x)
    with nn.intercept_methods(record):
        jax.eval_shape(
            lambda v, x: model.apply(
                v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
            ),
            variables,
            x,
        )

    theirs = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") == "dropout":
                p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
                if kwargs.get("training", args[2] if len(args) > 2 else True):
                    theirs.append(round(p, 6))
            return func(*args, **kwargs)

    with torch_models.meta_parameters():  # layout only (RegNet derives widths on the CPU)
        reference = torch_models.reference(name, **kw).train()
        with Record():
            reference(torch.empty(2, 3, size, size))
    assert ours == theirs
    assert all(p in {round(r, 6) for r in rates.values()} for p in ours), (ours, rates)
    assert bool(ours) == bool(rates)


@pytest.mark.parametrize("name", _torchvision_specs())
def test_normalisation_settings_are_torchvisions(name):
    """Every BatchNorm2d's ``eps`` and ``momentum`` and every LayerNorm's ``eps``, by torch key
    (read from an abstract trace): they are not parameters, and the logits barely depend on
    them, so the parity tests would miss a wrong one (MobileNetV3 1e-3/0.01, MNASNet
    1 - 0.9997, EfficientNet B5-B7 and V2 1e-3, ConvNeXt's LayerNorm 1e-6, Inception 1e-3)."""
    from cnn_jax.testing import zoo

    size = zoo.input_size(name)
    kw = zoo.kwargs(name)
    ours = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__":
            if isinstance(module, cnn.BatchNorm2d):
                ours[".".join(module.path)] = ("BatchNorm2d", module.eps, module.momentum)
            elif isinstance(module, cnn.LayerNorm):
                ours[".".join(module.path)] = ("LayerNorm", module.eps, None)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract_variables(
            create(name, **kw), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        )
    with torch_models.meta_parameters():  # layout only
        reference = torch_models.reference(name, **kw)
    theirs = {}
    for key, module in reference.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            theirs[key] = ("BatchNorm2d", module.eps, module.momentum)
        elif isinstance(module, torch.nn.LayerNorm):  # ConvNeXt's LayerNorm2d too
            theirs[key] = ("LayerNorm", module.eps, None)
    assert ours == theirs
