"""GoogLeNet and Inception v3 against torchvision's own code, in the default suite: their modules
(Inception blocks, auxiliary heads) against torchvision's classes, and the auxiliary heads'
behaviour: the same constructor default (``aux_logits=True``), the same train-mode named tuples
and eval-mode logits, the same ``state_dict`` keys with and without the heads.

The full models (logits, auxiliary logits, statistics, every gradient) are compared with
torchvision's under ``-m slow`` in ``tests/test_models.py`` and
``tests/test_float32_gradients.py`` (googlenet at 64x64; inception_v3 at 75x75 without its head,
which needs 299x299 in training: here)."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cnn_jax.testing.torch_models as torch_models
from cnn_jax.interop import abstract_variables, from_torch, to_torch
from cnn_jax.models import create, logits_terms, loss_terms, main_logits, registry
from cnn_jax.models.googlenet import Inception, InceptionAux
from cnn_jax.models.inception import (
    AUX_MIN_INPUT,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
)
from cnn_jax.models.inception import InceptionAux as InceptionV3Aux
from cnn_jax.testing.parity import assert_as_close_as_torch, nchw_to_nhwc, nhwc_to_nchw

torch = pytest.importorskip("torch")
tv = torch_models.torchvision_models()
if tv is None:
    pytest.skip("torchvision is not installed: it is the reference", allow_module_level=True)

MODELS = {"googlenet": 32, "inception_v3": AUX_MIN_INPUT}  # input sizes that run the heads


def _form(output):
    """A model output's type, fields and shapes (``None`` for a head that did not run)."""
    if isinstance(output, tuple):
        return type(output).__name__, output._fields, [o if o is None else o.shape for o in output]
    return tuple(output.shape)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_keys_and_output_forms_are_torchvisions(name):
    assert create(name).aux_logits is True  # torchvision's default
    size = MODELS[name]
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    rngs = {"dropout": jax.random.key(0)}
    for aux_logits in (True, False):
        model = create(name, num_classes=5, aux_logits=aux_logits)
        variables = abstract_variables(model, x)  # shapes only
        keys = {".".join(p[1:]) for p in traverse_util.flatten_dict(variables)}
        with torch.device("meta"):  # torchvision's layout and output shapes, no computation
            reference = torch_models.reference(name, num_classes=5, aux_logits=aux_logits)
            assert keys == set(reference.state_dict()), aux_logits
            for train in (True, False):
                out = jax.eval_shape(
                    lambda v, x, m=model, train=train: m.apply(
                        v, x, train=train, mutable=["batch_stats"], rngs=rngs
                    )[0],
                    variables,
                    x,
                )
                expected = reference.train(train)(torch.empty(2, 3, size, size))
                assert _form(out) == _form(expected), (aux_logits, train)


def test_loss_terms_weigh_the_auxiliary_heads():
    from cnn_jax.models import GoogLeNetOutputs, InceptionOutputs

    a, b, c = jnp.zeros((2, 5)), jnp.ones((2, 5)), 2 * jnp.ones((2, 5))
    assert [w for w, _ in loss_terms(GoogLeNetOutputs(a, b, c))] == [1.0, 0.3, 0.3]
    assert [w for w, _ in loss_terms(InceptionOutputs(a, b))] == [1.0, 0.4]
    assert [w for w, _ in loss_terms(InceptionOutputs(a, None))] == [1.0]
    assert loss_terms(a) == [(1.0, a)] and logits_terms(a) == [a]
    assert main_logits(GoogLeNetOutputs(a, b, c)) is a and main_logits(a) is a
    from collections import namedtuple

    with pytest.raises(ValueError, match="no loss_weights"):
        loss_terms(namedtuple("Outputs", ["logits", "aux"])(a, b))


@pytest.mark.slow  # compiles googlenet's and inception_v3's train steps
def test_the_train_step_weighs_the_auxiliary_heads_and_scores_the_main_logits():
    """googlenet trains with its auxiliary heads (torchvision's default ``aux_logits=True``):
    the step's loss is the weighted sum of the heads' cross-entropies (1, 0.3, 0.3), its
    accuracy that of the main logits, and the gradient reaches the heads' parameters."""
    import optax

    from cnn_jax import train as T

    model = create("googlenet", num_classes=5, dropout=0.0, dropout_aux=0.0)
    x = np.random.default_rng(0).standard_normal((4, 64, 64, 3)).astype(np.float32)
    labels = jnp.asarray([0, 1, 2, 3])
    state = T.create_train_state(model, optax.sgd(0.1), jax.random.key(0), jnp.asarray(x[:1]))
    out = model.apply(state.variables(), jnp.asarray(x), train=True, mutable=["batch_stats"])[0]
    ce = [optax.softmax_cross_entropy_with_integer_labels(h, labels).mean() for h in out]
    expected = ce[0] + 0.3 * ce[1] + 0.3 * ce[2]
    new, metrics = jax.jit(T.make_train_step())(state, {"image": jnp.asarray(x), "label": labels})
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    accuracy = (np.asarray(out.logits).argmax(-1) == np.asarray(labels)).mean()
    assert float(metrics["accuracy"]) == accuracy
    for head in ("aux1", "aux2"):
        before, after = state.params[head]["fc2"]["weight"], new.params[head]["fc2"]["weight"]
        assert not np.array_equal(before, after), head


def test_a_torchvision_file_with_heads_loads_into_a_model_without():
    """torchvision's pretrained googlenet file holds the heads; ``googlenet(weights=...)`` loads
    it and drops them. Here: strict loading names exactly the heads' keys, ``strict=False``
    loads everything else."""
    with torch.device("meta"):
        state_dict = torch_models.reference("googlenet", num_classes=5).state_dict()
    state_dict = {k: np.zeros(v.shape, np.float32) for k, v in state_dict.items()}
    model = create("googlenet", num_classes=5, aux_logits=False)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    with pytest.warns(UserWarning, match="Unexpected key") as record:
        variables = from_torch(model, state_dict, strict=False, sample_input=x)
    unexpected = str(record[0].message).split("Unexpected key(s): ")[1].split(", ")
    assert {k.split(".")[0] for k in unexpected} == {"aux1", "aux2"}
    loaded = {".".join(p[1:]) for p in traverse_util.flatten_dict(variables)}
    assert loaded == set(state_dict) - set(unexpected)


_torchvision = torch_models.torchvision_class


# Each module of the two networks against torchvision's class, on small inputs and channels
# (the modules take their input channels; the rest are torchvision's fixed widths).
MODULES = {
    "googlenet.Inception": (
        lambda: Inception(16, 8, 4, 8, 4, 8, 8),
        lambda: _torchvision("googlenet", "Inception")(16, 8, 4, 8, 4, 8, 8),
        (4, 7, 7, 16),
    ),
    "googlenet.InceptionAux": (
        lambda: InceptionAux(16, 5, dropout=0.0),
        lambda: _torchvision("googlenet", "InceptionAux")(16, 5, dropout=0.0),
        (4, 6, 6, 16),
    ),
    "inception.InceptionA": (
        lambda: InceptionA(16, 8),
        lambda: _torchvision("inception", "InceptionA")(16, 8),
        (4, 5, 5, 16),
    ),
    "inception.InceptionB": (
        lambda: InceptionB(16),
        lambda: _torchvision("inception", "InceptionB")(16),
        (4, 7, 7, 16),
    ),
    "inception.InceptionC": (
        lambda: InceptionC(16, 8),
        lambda: _torchvision("inception", "InceptionC")(16, 8),
        (4, 5, 5, 16),
    ),
    "inception.InceptionD": (
        lambda: InceptionD(16),
        lambda: _torchvision("inception", "InceptionD")(16),
        (4, 7, 7, 16),
    ),
    "inception.InceptionE": (
        lambda: InceptionE(16),
        lambda: _torchvision("inception", "InceptionE")(16),
        (4, 3, 3, 16),
    ),
    # The head needs Mixed_6e's 17x17 maps.
    "inception.InceptionAux": (
        lambda: InceptionV3Aux(16, 5),
        lambda: _torchvision("inception", "InceptionAux")(16, 5),
        (4, 17, 17, 16),
    ),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_matches_torchvisions_class(name):
    """Eval and train-mode outputs and the running statistics of one train-mode step (judged
    as the models are: within 1e-5 of torch's float32, or twice its own error of float64)."""
    make_ours, make_theirs, shape = MODULES[name]
    torch.manual_seed(0)
    twin = torch_models.randomize(make_theirs())
    twin64 = copy.deepcopy(twin).double()
    module = make_ours()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x_t = torch.tensor(nhwc_to_nchw(x))
    variables = from_torch(module, twin.state_dict(), sample_input=jnp.asarray(x))
    apply = jax.jit(
        lambda v, x, train: module.apply(v, x, train=train, mutable=["batch_stats"]),
        static_argnums=2,
    )
    for train in (False, True):
        twin.train(train)
        twin64.train(train)
        with torch.no_grad():
            expected, reference = twin(x_t).numpy(), twin64(x_t.double()).numpy()
        out, updates = apply(variables, jnp.asarray(x), train)
        if expected.ndim == 4:
            expected, reference = nchw_to_nhwc(expected), nchw_to_nhwc(reference)
        assert_as_close_as_torch(out, expected, reference, f"train={train}")
    state = to_torch(module, {**variables, **updates}, sample_input=jnp.asarray(x))
    exact = twin64.state_dict()
    assert set(state) == set(twin.state_dict())
    for key, value in twin.state_dict().items():
        assert_as_close_as_torch(state[key].numpy(), value.numpy(), exact[key].numpy(), key)


def test_inception_v3_refuses_a_small_input_for_its_head_in_training():
    model = create("inception_v3", num_classes=5)
    small = jnp.zeros((2, 75, 75, 3))
    variables = abstract_variables(model, jax.ShapeDtypeStruct(small.shape, small.dtype))
    with pytest.raises(
        ValueError, match=r"needs input of at least 299x299 in training.*aux_logits"
    ):
        jax.eval_shape(
            lambda v: model.apply(v, small, train=True, mutable=["batch_stats"]), variables
        )
    # Without the head the smaller input trains; in eval mode the head does not run.
    for kw, train in (({"aux_logits": False}, True), ({}, False)):
        model = create("inception_v3", num_classes=5, **kw)
        out = jax.eval_shape(
            lambda v, m=model, t=train: m.apply(
                v, small, train=t, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
            )[0],
            abstract_variables(model, jax.ShapeDtypeStruct(small.shape, small.dtype)),
        )
        assert out.shape == (2, 5)


@pytest.mark.slow
@pytest.mark.zoo
def test_inception_v3_with_its_head_matches_torchvision_at_299():
    """The full model in training with its auxiliary head, at the size the head needs."""
    kw = dict(num_classes=5, **registry.spec("inception_v3").deterministic)
    torch.manual_seed(0)
    twin = torch_models.randomize(torch_models.reference("inception_v3", **kw)).train()
    twin64 = copy.deepcopy(twin).double()
    model = create("inception_v3", **kw)
    # Batch 4: the head's last BatchNorm normalises 1x1 maps, one value per image and channel.
    x = np.random.default_rng(0).standard_normal((4, 299, 299, 3)).astype(np.float32)
    variables = from_torch(model, twin.state_dict(), sample_input=jnp.asarray(x))
    x_t = torch.tensor(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        expected, reference = twin(x_t), twin64(x_t.double())
    out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    assert type(out).__name__ == type(expected).__name__ == "InceptionOutputs"
    for i, (ours, want, want64) in enumerate(
        zip(*map(logits_terms, (out, expected, reference)), strict=True)
    ):
        assert_as_close_as_torch(ours, want.numpy(), want64.numpy(), f"output {i}")
    state = to_torch(model, {**variables, **updates}, sample_input=jnp.asarray(x))
    exact = twin64.state_dict()
    for key, value in twin.state_dict().items():
        if "running" in key:
            assert_as_close_as_torch(state[key].numpy(), value.numpy(), exact[key].numpy(), key)
