"""Flax NNX layers and models: torch parity (forward, gradients, BatchNorm statistics), the same
numbers as the linen modules, nnx.Optimizer training and orbax checkpoints."""

from __future__ import annotations

import copy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx, traverse_util

import cnn_jax.testing.torch_models as torch_models
from cnn_jax import nnx as cnnx
from cnn_jax.interop import from_torch, to_state_dict, to_torch
from cnn_jax.models import create
from cnn_jax.testing.parity import RTOL, assert_rel_close, nchw_to_nhwc, nhwc_to_nchw, rel_err

torch = pytest.importorskip("torch")


def _grads_by_key(grads) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(grads)}


LAYERS = [
    (
        "conv_strided",
        lambda: cnnx.Conv2d(3, 8, 3, stride=2, padding=1, rngs=nnx.Rngs(0)),
        lambda: torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        (2, 3, 9, 9),
    ),
    (
        "conv_groups_reflect_same",
        lambda: cnnx.Conv2d(
            4, 6, 3, padding="same", groups=2, bias=False, padding_mode="reflect", rngs=nnx.Rngs(0)
        ),
        lambda: torch.nn.Conv2d(
            4, 6, 3, padding="same", groups=2, bias=False, padding_mode="reflect"
        ),
        (2, 4, 7, 6),
    ),
    (
        "linear",
        lambda: cnnx.Linear(12, 5, rngs=nnx.Rngs(0)),
        lambda: torch.nn.Linear(12, 5),
        (3, 12),
    ),
    (
        "maxpool_ceil",
        lambda: cnnx.MaxPool2d(3, 2, 1, ceil_mode=True),
        lambda: torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        (2, 3, 8, 8),
    ),
    (
        "avgpool_exclude_pad",
        lambda: cnnx.AvgPool2d(3, 2, 1, count_include_pad=False),
        lambda: torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False),
        (2, 3, 7, 7),
    ),
    (
        "adaptive_avg",
        lambda: cnnx.AdaptiveAvgPool2d((3, 2)),
        lambda: torch.nn.AdaptiveAvgPool2d((3, 2)),
        (2, 3, 7, 5),
    ),
]


@pytest.mark.parametrize(("label", "ours", "theirs", "shape"), LAYERS, ids=[p[0] for p in LAYERS])
def test_layers_match_torch_forward_and_gradients(label, ours, theirs, shape, rng):
    torch.manual_seed(0)
    layer_t, layer = theirs(), ours()
    if layer_t.state_dict():
        from_torch(layer, layer_t.state_dict())
    x = rng.standard_normal(shape).astype(np.float32)
    spatial = len(shape) == 4
    x_t = torch.tensor(x, requires_grad=True)
    y_t = layer_t(x_t)
    cot = rng.standard_normal(tuple(y_t.shape)).astype(np.float32)
    y_t.backward(torch.tensor(cot))

    to_ours = nchw_to_nhwc if spatial else np.asarray
    to_ref = nhwc_to_nchw if spatial else np.asarray

    def loss(model, x):
        y = model(x)
        return jnp.sum(y * to_ours(cot)), y

    (_, y), (g_model, g_x) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        layer, jnp.asarray(to_ours(x))
    )
    assert_rel_close(to_ref(y), y_t.detach().numpy(), what="forward")
    assert_rel_close(to_ref(g_x), x_t.grad.numpy(), what="grad wrt input")
    grads = _grads_by_key(g_model)
    assert set(grads) == {n for n, _ in layer_t.named_parameters()}
    for name, p in layer_t.named_parameters():
        assert_rel_close(grads[name], p.grad.numpy(), what=f"grad wrt {name}")


@pytest.mark.parametrize(("momentum", "bias"), [(0.1, True), (None, True), (0.1, False)])
def test_batch_norm_owns_and_updates_torch_statistics(momentum, bias, rng):
    bn_t = torch.nn.BatchNorm2d(3, momentum=momentum, bias=bias)
    bn = cnnx.BatchNorm2d(3, momentum=momentum, bias=bias)
    for step in range(3):
        x = (rng.standard_normal((4, 3, 5, 5)) * (step + 1) + step).astype(np.float32)
        y_t = bn_t(torch.tensor(x)).detach().numpy()
        y = bn(jnp.asarray(nchw_to_nhwc(x)))  # training mode: updates bn in place
        assert_rel_close(nhwc_to_nchw(y), y_t, what=f"train output {step}")
    theirs = bn_t.state_dict()
    assert set(to_state_dict(bn)) == set(theirs)
    for key, value in to_state_dict(bn).items():
        assert value.dtype == theirs[key].numpy().dtype, key
        assert_rel_close(value, theirs[key].numpy(), what=key)
    bn.eval()
    bn_t.eval()
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    assert_rel_close(
        nhwc_to_nchw(bn(jnp.asarray(nchw_to_nhwc(x)))),
        bn_t(torch.tensor(x)).detach().numpy(),
        what="eval output",
    )


def test_dropout_owns_its_rng_stream_and_obeys_eval():
    drop = cnnx.Dropout(0.25, rngs=nnx.Rngs(dropout=3))
    x = jnp.ones((4000,))
    a, b = drop(x), drop(x)
    assert not np.array_equal(a, b)  # the stream advanced: a new mask per call
    kept = np.asarray(a) != 0
    assert abs(kept.mean() - 0.75) < 0.03  # 3 sigma of a binomial(4000, 0.75) is 0.02
    np.testing.assert_allclose(np.asarray(a)[kept], 1 / 0.75, rtol=1e-6)
    drop.eval()
    np.testing.assert_array_equal(drop(x), x)


NNX_MODELS = [
    pytest.param("lenet5", 1, 32, id="lenet5"),
    pytest.param("cifar_cnn", 3, 16, id="cifar_cnn"),
    pytest.param("resnet18", 3, 32, marks=pytest.mark.slow, id="resnet18"),  # a minute on 2 cores
]


def _close(ours, theirs, reference, what):
    """Within 1e-5 of torch, or, where torch's own float32 is further than half that from
    float64 (deep nets in train mode), within twice torch's error of float64 (as test_models)."""
    torch_error = rel_err(theirs, reference)
    if torch_error <= RTOL / 2:
        assert_rel_close(ours, theirs, what=what)
    else:
        assert_rel_close(ours, reference, 2 * torch_error, what=f"{what} vs float64")


@pytest.mark.parametrize(("name", "channels", "size"), NNX_MODELS)
def test_models_match_torch_twin_train_and_eval(name, channels, size, rng):
    """Eval logits; train-mode logits and the running statistics one training forward leaves;
    and every parameter's train-mode gradient for lenet5 and cifar_cnn. resnet18's gradients are
    compared with the linen model's below instead: a float32 run's early-layer gradients can be
    far from float64 when rounding flips a ReLU or max-pool decision (experiments/README.md,
    "Float32 gradients"), in both styles alike, which is not something NNX adds."""
    kw = dict(num_classes=5, in_channels=channels)
    if name == "cifar_cnn":
        kw["dropout"] = 0.0
    torch.manual_seed(0)
    twin = torch_models.randomize(torch_models.restatement(name, **kw))
    model = from_torch(cnnx.create(name, rngs=nnx.Rngs(0), **kw), twin.state_dict())
    twin64 = copy.deepcopy(twin).double()
    x = rng.standard_normal((8, channels, size, size)).astype(np.float32)
    x_nhwc = jnp.asarray(nchw_to_nhwc(x))
    labels = np.arange(8) % 5

    model.eval()
    twin.eval()
    twin64.eval()
    with torch.no_grad():
        expected, reference = twin(torch.tensor(x)).numpy(), twin64(torch.tensor(x).double())
    _close(model(x_nhwc), expected, reference.numpy(), "eval logits")

    model.train()
    twin.train()
    twin64.train()
    results = {}
    for net in (twin, twin64):
        net.zero_grad()
        out = net(torch.tensor(x).to(next(net.parameters()).dtype))
        torch.nn.functional.cross_entropy(out, torch.tensor(labels)).backward()
        grads = {n: p.grad.numpy().copy() for n, p in net.named_parameters()}
        results[net is twin64] = (out.detach().numpy(), grads)
    (logits_t, grads_t), (logits_64, grads_64) = results[False], results[True]

    def loss(m, x):
        logits = m(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model, x_nhwc)
    _close(logits, logits_t, logits_64, "train logits")
    ours = _grads_by_key(grads)
    assert set(ours) == set(grads_t)
    if name != "resnet18":
        for key, g in grads_t.items():
            _close(ours[key], g, grads_64[key], f"grad {key}")
    # The training forward inside nnx.value_and_grad updated the model's statistics in place,
    # exactly as torch's forward updated the twin's.
    theirs = twin.state_dict()
    for key, value in to_state_dict(model).items():
        assert_rel_close(value, theirs[key].numpy(), what=key)


@pytest.mark.parametrize(("name", "channels", "size"), NNX_MODELS)
def test_nnx_and_linen_compute_the_same_numbers(name, channels, size, rng):
    """One set of weights, two styles: the linen model's variables load into the NNX model, and
    eval and train-mode outputs, train-mode gradients and the new running statistics agree."""
    kw = dict(num_classes=5, in_channels=channels)
    linen = create(name, **kw)
    x = jnp.asarray(rng.standard_normal((4, size, size, channels)).astype(np.float32))
    variables = linen.init(jax.random.key(1), x, train=False)
    model = from_torch(cnnx.create(name, rngs=nnx.Rngs(0), **kw), to_state_dict(linen, variables))
    model.eval()
    chex.assert_trees_all_close(model(x), linen.apply(variables, x, train=False), rtol=1e-6)
    if name == "cifar_cnn":
        return  # train mode draws dropout masks from different streams
    model.train()
    labels = jnp.arange(4) % 5

    def linen_loss(params):
        y, updates = linen.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(y, labels).mean()
        return loss, (y, updates)

    def nnx_loss(m):
        y = m(x)
        return optax.softmax_cross_entropy_with_integer_labels(y, labels).mean(), y

    (_, (y, updates)), g_linen = jax.value_and_grad(linen_loss, has_aux=True)(variables["params"])
    (_, y_nnx), g_nnx = nnx.value_and_grad(nnx_loss, has_aux=True)(model)
    chex.assert_trees_all_close(y_nnx, y, rtol=1e-6, atol=1e-6)
    g_linen = {".".join(p): np.asarray(v) for p, v in traverse_util.flatten_dict(g_linen).items()}
    for key, g in _grads_by_key(g_nnx).items():
        assert_rel_close(g, g_linen[key], rtol=1e-5, what=f"grad {key}")
    linen_sd = to_state_dict(linen, {**variables, **updates})
    for key, value in to_state_dict(model).items():
        np.testing.assert_allclose(value, linen_sd[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_nnx_optimizer_trains_and_orbax_round_trips(tmp_path):
    """The Flax docs' recipe: nnx.Optimizer + optax under nnx.jit, state saved with orbax."""
    from cnn_jax import data

    model = cnnx.create("lenet5", num_classes=10, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    @chex.assert_max_traces(n=1)
    def train_step(model, optimizer, images, labels):
        def loss_fn(model):
            logits = model(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    digits = data.load("digits", image_size=32)
    batch = next(data.batches(digits["train"], 64, shuffle=True, seed=0))
    images, labels = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    losses = [float(train_step(model, optimizer, images, labels)) for _ in range(30)]
    assert losses[-1] < 0.2 * losses[0]

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", nnx.state(model))
    checkpointer.wait_until_finished()
    fresh = cnnx.create("lenet5", num_classes=10, rngs=nnx.Rngs(1))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: cnnx.create("lenet5", rngs=nnx.Rngs(0))))
    restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    nnx.update(fresh, restored)
    chex.assert_trees_all_equal(fresh(images), model(images))
    del graphdef


def test_to_torch_round_trips_an_nnx_model():
    model = cnnx.create("resnet18", num_classes=5, rngs=nnx.Rngs(0))
    twin = torch_models.restatement("resnet18", num_classes=5)
    twin.load_state_dict(to_torch(model))  # strict: every key, torch's dtypes
    with pytest.raises(ValueError, match="holds its own variables"):
        to_state_dict(model, {"params": {}})
    with pytest.raises(ValueError, match=r"unknown NNX model 'vgg11'.*lenet5"):
        cnnx.create("vgg11", rngs=nnx.Rngs(0))
