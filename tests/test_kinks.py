"""Recording and pinning piecewise decisions (cnn_jax.testing.kinks): ReLU, ReLU6/Hardtanh,
Hardswish, Hardsigmoid and max-pool winners, recorded through flax's method interception for
one call and pinned in torch."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import cnn_jax.functional as F
import cnn_jax.nn as cnn
import cnn_jax.testing.torch_models as twins
from cnn_jax.interop import from_torch
from cnn_jax.models import create
from cnn_jax.testing.kinks import Kink, TorchKinks, pieces, record_kinks, to_nchw
from cnn_jax.testing.parity import nchw_to_nhwc, rel_err

torch = pytest.importorskip("torch")


def _ours(model, variables, x):
    forward = record_kinks(lambda x: model.apply(variables, x, train=False))
    out, kinks = jax.jit(forward)(x)
    return out, to_nchw(kinks)


def _summary(kinks):
    return [(k.kind, k.bounds, k.value.shape) for k in kinks]


@pytest.mark.parametrize("name", ["cifar_cnn", "resnet18"])
def test_cnn_jax_and_torch_record_the_same_calls_and_decisions(name):
    torch.manual_seed(0)
    net = twins.restatement(name, num_classes=5).eval()
    model = create(name, num_classes=5)
    variables = from_torch(model, net.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    _, ours = _ours(model, variables, jnp.asarray(x))
    with TorchKinks() as recorder:
        net(torch.tensor(x.transpose(0, 3, 1, 2).copy()))
    theirs = recorder.decisions
    assert _summary(ours) == _summary(theirs)
    assert sum(k.kind == "max_pool2d" for k in ours) == (2 if name == "cifar_cnn" else 1)
    assert sum(k.kind == "relu" for k in ours) == (3 if name == "cifar_cnn" else 17)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.value, b.value, atol=1e-4, err_msg=a.kind)


def test_recording_is_limited_to_the_call():
    """No global is patched and no interceptor outlives the call (also after an error): a
    plain trace afterwards carries no recording scope, and jax.nn / F are untouched."""
    relu, pool = jax.nn.relu, F.max_pool2d
    model = cnn.Sequential((cnn.ReLU(), cnn.MaxPool2d(2)))
    x = jnp.ones((1, 4, 4, 2))
    apply = lambda x: model.apply({}, x, train=False)

    def failing(x):
        apply(x)
        raise RuntimeError("inside the recorded call")

    with pytest.raises(RuntimeError, match="inside the recorded call"):
        record_kinks(failing)(x)
    _, kinks = record_kinks(apply)(x)
    assert [k.kind for k in kinks] == ["relu", "max_pool2d"]
    assert jax.nn.relu is relu and F.max_pool2d is pool
    plain = jax.make_jaxpr(apply)(x)
    assert "cnn_jax_recorded_kink" not in str(
        [str(e.source_info.name_stack) for e in plain.jaxpr.eqns]
    )


class _Bare(nn.Module):
    """A model that calls a piecewise function without its module."""

    function: str

    @nn.compact
    def __call__(self, x):
        x = cnn.ReLU()(cnn.Linear(4, 4)(x.reshape(x.shape[0], -1)[:, :4])).reshape(-1, 2, 2, 1)
        bare = {
            "jax.nn.relu": jax.nn.relu,
            "jax.nn.relu6": jax.nn.relu6,
            "jax.nn.hard_swish": jax.nn.hard_swish,
            "jax.nn.hard_tanh": jax.nn.hard_tanh,
            "F.hardswish": F.hardswish,
            "F.hardsigmoid": F.hardsigmoid,
            "F.relu6": F.relu6,
            "F.max_pool2d": lambda v: F.max_pool2d(v, 2),
            "nn.max_pool": lambda v: nn.max_pool(v, (2, 2), (2, 2)),
            "in_a_cond": lambda v: jax.lax.cond(True, jax.nn.relu, lambda u: u, v),
            "in_a_remat": jax.checkpoint(F.hardtanh),
        }[self.function]
        return bare(x)


@pytest.mark.parametrize(
    "function",
    [
        "jax.nn.relu",
        "jax.nn.relu6",
        "jax.nn.hard_swish",
        "jax.nn.hard_tanh",
        "F.hardswish",
        "F.hardsigmoid",
        "F.relu6",
        "F.max_pool2d",
        "nn.max_pool",
        "in_a_cond",
        "in_a_remat",
    ],
)
def test_a_bare_piecewise_function_is_refused(function):
    model = _Bare(function)
    x = jnp.ones((2, 2, 2, 1))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(
        ValueError, match=r"outside a cnn_jax module at '.*_Bare.*'.*call the module"
    ):
        record_kinks(lambda x: model.apply(variables, x))(x)


def test_recording_under_jit_and_grad_returns_the_programs_own_values():
    model = cnn.Sequential((cnn.Linear(3, 4), cnn.Hardswish(), cnn.Linear(4, 1)))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)

    def loss(params, x, scale):  # a Python scalar argument stays a constant of the trace
        return scale * model.apply({"params": params}, x, train=False).sum()

    grads, kinks = jax.jit(jax.grad(record_kinks(loss), has_aux=True), static_argnums=2)(
        variables["params"], x, 2.0
    )
    expected = jax.grad(loss)(variables["params"], x, 2.0)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5), grads, expected)
    hidden = model.layers[0].apply({"params": variables["params"]["0"]}, x)
    (kink,) = kinks
    assert kink.kind == "hardswish" and kink.bounds is None
    np.testing.assert_allclose(kink.value, hidden, rtol=1e-6)


# ------------------------------------------------------------------ pinning, one kind at a time


def _pinned_grad(fn, x, pinned):
    kinks = TorchKinks(pin=pinned)
    with kinks:
        y = fn(x)
    x.grad = None
    y.sum().backward()
    return kinks.flipped, x.grad.numpy().copy(), y.detach().numpy()


def test_pinning_relu_takes_the_recorded_signs_and_counts_flips():
    x = torch.tensor([[-1.0, -1e-9, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    pinned = [Kink("relu", np.array([[-1.0, 1e-9, 2.0, -3.0]]))]  # 2nd and 4th decided otherwise
    flipped, grad, _ = _pinned_grad(torch.nn.functional.relu, x, pinned)
    assert flipped == 2
    np.testing.assert_array_equal(grad, [[0.0, 1.0, 1.0, 0.0]])

    own = TorchKinks()
    with own:
        torch.relu(x)
    flipped, grad, _ = _pinned_grad(torch.relu, x, own.decisions)
    assert flipped == 0
    np.testing.assert_array_equal(grad, [[0.0, 0.0, 1.0, 1.0]])


# (torch callable, kind, bounds, input, recorded input, expected pinned gradient, values)
PINNED = {
    "hardtanh_module": (
        torch.nn.Hardtanh(-1.0, 2.0),
        "hardtanh",
        (-1.0, 2.0),
        [-1.0 - 1e-9, -1.0 + 1e-9, 0.5, 2.0 - 1e-9, 2.5],
        [-0.9, -1.0, 0.5, 2.0, 2.5],  # 1st, 2nd, 4th flipped
        [1.0, 0.0, 1.0, 0.0, 0.0],
    ),
    "relu6_module": (  # nn.ReLU6 calls F.hardtanh(x, 0, 6)
        torch.nn.ReLU6(),
        "hardtanh",
        (0.0, 6.0),
        [-1e-9, 1e-9, 6.0 - 1e-9, 6.0 + 1e-9],
        [1e-9, 0.0, 6.0, 5.9],  # all four flipped
        [1.0, 0.0, 0.0, 1.0],
    ),
    "relu6_function": (
        torch.nn.functional.relu6,
        "hardtanh",
        (0.0, 6.0),
        [-1.0, 3.0, 7.0],
        [-1.0, 3.0, 7.0],
        [0.0, 1.0, 0.0],
    ),
    "hardswish": (
        torch.nn.Hardswish(),
        "hardswish",
        None,
        [-3.0 - 1e-9, -3.0 + 1e-9, 0.0, 3.0 - 1e-9, 3.0 + 1e-9],
        [-2.9, -3.0, 0.0, 3.0, 2.9],  # all but the middle flipped
        [(-3.0 - 1e-9) * 2 / 6 + 0.5, 0.0, 0.5, 1.0, (3.0 + 1e-9) * 2 / 6 + 0.5],
    ),
    "hardsigmoid": (
        torch.nn.Hardsigmoid(),
        "hardsigmoid",
        None,
        [-3.0 - 1e-9, -3.0 + 1e-9, 3.0 - 1e-9, 3.0 + 1e-9],
        [-2.9, -3.0, 3.0, 2.9],
        [1 / 6, 0.0, 0.0, 1 / 6],
    ),
}


@pytest.mark.parametrize("name", PINNED)
def test_pinning_each_activation_takes_the_recorded_pieces(name):
    fn, kind, bounds, x, recorded, expected = PINNED[name]
    x = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    recorded = np.array([recorded])
    flipped, grad, _ = _pinned_grad(fn, x, [Kink(kind, recorded, bounds)])
    own = pieces(kind, x.detach().numpy(), bounds)
    assert flipped == int(np.sum(pieces(kind, recorded, bounds) != own))
    np.testing.assert_allclose(grad[0], expected, rtol=1e-12)
    # On the pieces the run itself takes, the values are the function's own.
    _, _, own_values = _pinned_grad(fn, x, [Kink(kind, x.detach().numpy(), bounds)])
    np.testing.assert_allclose(own_values, fn(x).detach().numpy(), rtol=1e-15)


def test_recording_sees_the_bounds_torch_was_called_with():
    with TorchKinks() as recorder:
        x = torch.ones(1, 2)
        torch.nn.ReLU6()(x)
        torch.nn.functional.relu6(x)
        torch.nn.functional.hardtanh(x, min_val=-2.0, max_val=0.5)
        torch.nn.Hardswish()(x)
        torch.nn.functional.hardsigmoid(x)
        torch.nn.functional.silu(x)  # smooth: not a decision
    assert [(k.kind, k.bounds) for k in recorder.decisions] == [
        ("hardtanh", (0.0, 6.0)),
        ("hardtanh", (0.0, 6.0)),
        ("hardtanh", (-2.0, 0.5)),
        ("hardswish", None),
        ("hardsigmoid", None),
    ]


def test_pinning_max_pool_routes_the_gradient_to_the_recorded_winner():
    x = torch.tensor([[[[1.0, 1.0 + 1e-12], [0.0, 0.5]]]], dtype=torch.float64, requires_grad=True)
    recorded = np.array([[[[1.0, 0.9], [0.0, 0.5]]]], np.float32)  # float32 saw the first win
    kinks = TorchKinks(pin=[Kink("max_pool2d", recorded)])
    with kinks:
        y = torch.nn.functional.max_pool2d(x, 2)
    y.sum().backward()
    assert kinks.flipped == 1
    assert float(y.detach()) == 1.0
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], [[1.0, 0.0], [0.0, 0.0]])
    with TorchKinks(pin=[Kink("max_pool2d", recorded)]):  # torch's indices are the pinned winners
        values, indices = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    assert float(values.detach()) == 1.0 and int(indices) == 0


def test_pinning_another_network_is_refused():
    x = torch.ones((1, 3))
    with (
        pytest.raises(ValueError, match="call 0 is relu"),
        TorchKinks(pin=[Kink("relu", np.ones(4))]),
    ):
        torch.relu(x)
    other_bounds = [Kink("hardtanh", np.ones((1, 3)), (-1.0, 1.0))]
    with (
        pytest.raises(ValueError, match=r"hardtanh\(0.0, 6.0\) \(1, 3\) in torch but hardtanh\(-1"),
        TorchKinks(pin=other_bounds),
    ):
        torch.nn.ReLU6()(x)
    too_long = TorchKinks(pin=[Kink("relu", np.ones((1, 3)))] * 2)
    message = "made 1 piecewise calls, the pinned recording has 2"
    with pytest.raises(ValueError, match=message), too_long:  # raised on leaving the block
        torch.relu(x)


# ------------------------------------------------------------------ a MobileNet-like network


@pytest.fixture(scope="module")
def misc():
    module = twins.torchvision_module("ops.misc")
    if module is None:
        pytest.skip("torchvision is not installed: its blocks are the torch network")
    return module


def _networks(misc):
    """The same small network from torchvision's blocks and from cnn_jax's: ReLU6, Hardswish,
    a Hardsigmoid-gated squeeze-excitation, a Hardtanh and a max pool."""
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        misc.Conv2dNormActivation(3, 8, activation_layer=torch.nn.ReLU6),
        misc.Conv2dNormActivation(8, 8, groups=8, activation_layer=torch.nn.Hardswish),
        misc.SqueezeExcitation(8, 4, scale_activation=torch.nn.Hardsigmoid),
        torch.nn.Hardtanh(-1.0, 2.0),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 5),
    )
    ours = cnn.Sequential(
        (
            cnn.Conv2dNormActivation(3, 8, activation_layer=cnn.ReLU6),
            cnn.Conv2dNormActivation(8, 8, groups=8, activation_layer=cnn.Hardswish),
            cnn.SqueezeExcitation(8, 4, scale_activation=cnn.Hardsigmoid),
            cnn.Hardtanh(-1.0, 2.0),
            cnn.MaxPool2d(2),
            cnn.Flatten(),
            cnn.Linear(8 * 4 * 4, 5),
        )
    )
    return twins.randomize(theirs).eval(), ours


def _torch_grads(net, x, kinks):
    net.zero_grad()
    with kinks:
        loss = (net(x) ** 2).sum()
    loss.backward()
    return {k: p.grad.numpy().copy() for k, p in net.named_parameters()}


def test_mobilenet_like_network_is_pinned_against_torch(misc):
    theirs, ours = _networks(misc)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    variables = from_torch(ours, theirs.state_dict(), sample_input=jnp.zeros((1, 8, 8, 3)))

    def loss(params):
        y = ours.apply({**variables, "params": params}, jnp.asarray(nchw_to_nhwc(x)), train=False)
        return (y**2).sum()

    grads, kinks = jax.jit(jax.grad(record_kinks(loss), has_aux=True))(variables["params"])
    decisions = to_nchw(kinks)
    recorder = TorchKinks()
    with recorder:
        theirs(torch.tensor(x))
    expected = [
        ("hardtanh", (0.0, 6.0), (2, 8, 8, 8)),
        ("hardswish", None, (2, 8, 8, 8)),
        ("relu", None, (2, 4, 1, 1)),
        ("hardsigmoid", None, (2, 8, 1, 1)),
        ("hardtanh", (-1.0, 2.0), (2, 8, 8, 8)),
        ("max_pool2d", None, (2, 8, 8, 8)),
    ]
    assert _summary(decisions) == _summary(recorder.decisions) == expected
    for a, b in zip(decisions, recorder.decisions, strict=True):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-5, atol=1e-5, err_msg=a.kind)

    # float64 torch on our float32 run's pieces: our gradients are its float32 rounding.
    net64 = theirs.double()
    x64 = torch.tensor(x, dtype=torch.float64)
    pinned = TorchKinks(pin=decisions)
    reference = _torch_grads(net64, x64, pinned)
    ours_flat = traverse_util.flatten_dict(grads, sep=".")
    assert set(ours_flat) == set(reference)
    for key, g64 in reference.items():
        assert rel_err(ours_flat[key], g64) < 1e-4, key

    # Decisions moved to other pieces are taken, counted, and change the gradient.
    moved = list(decisions)
    hs = moved[1].value.copy()
    inside = np.flatnonzero(pieces("hardswish", hs) == 1)[:5]
    hs.reshape(-1)[inside] = 10.0  # onto the identity piece
    moved[1] = moved[1].replace(value=hs)
    ht = moved[4].value.copy()
    ht.reshape(-1)[:3] = -5.0  # onto the constant -1 piece, where not there already
    moved[4] = moved[4].replace(value=ht)
    flipped = TorchKinks(pin=moved)
    changed = _torch_grads(net64, x64, flipped)
    own_low = int(np.sum(pieces("hardtanh", decisions[4].value.reshape(-1)[:3], (-1.0, 2.0)) == 0))
    assert flipped.flipped == len(inside) + 3 - own_low
    assert any(rel_err(changed[k], reference[k]) > 1e-3 for k in reference)
