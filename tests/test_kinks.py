"""Recording and pinning ReLU / max-pool decisions (cnn_jax.testing.kinks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.functional as F
import cnn_jax.testing.torch_models as twins
from cnn_jax.interop import from_torch
from cnn_jax.models import create
from cnn_jax.testing.kinks import TorchKinks, recording_kinks, to_nchw

torch = pytest.importorskip("torch")


def _ours(model, variables, x):
    with recording_kinks() as recorded:

        def forward(x):
            out = model.apply(variables, x, train=False)
            return out, [value for _, value in recorded]

        out, values = jax.jit(forward)(x)
    return out, to_nchw(recorded, values)


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
    assert [(k, v.shape) for k, v in ours] == [(k, v.shape) for k, v in theirs]
    assert sum(k == "max_pool2d" for k, _ in ours) == (2 if name == "cifar_cnn" else 1)
    for (kind, a), (_, b) in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=kind)
    assert jax.nn.relu is not None and F.max_pool2d.__name__ == "max_pool2d"  # restored


def test_recording_restores_the_functions_after_an_error():
    relu, pool = jax.nn.relu, F.max_pool2d
    with pytest.raises(RuntimeError), recording_kinks():
        assert jax.nn.relu is not relu and F.max_pool2d is not pool
        raise RuntimeError
    assert jax.nn.relu is relu and F.max_pool2d is pool


def _relu_net(x, kinks):
    with kinks:
        return torch.nn.functional.relu(x).sum()


def test_pinning_relu_takes_the_recorded_signs_and_counts_flips():
    x = torch.tensor([[-1.0, -1e-9, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    pinned = [("relu", np.array([[0.0, 1e-9, 2.0, 0.0]]))]  # second and fourth decided otherwise
    kinks = TorchKinks(pin=pinned)
    _relu_net(x, kinks).backward()
    assert kinks.flipped == 2
    np.testing.assert_array_equal(x.grad.numpy(), [[0.0, 1.0, 1.0, 0.0]])

    x.grad = None
    own = TorchKinks()
    _relu_net(x, own).backward()
    again = TorchKinks(pin=own.decisions)
    x.grad = None
    _relu_net(x, again).backward()
    assert again.flipped == 0
    np.testing.assert_array_equal(x.grad.numpy(), [[0.0, 0.0, 1.0, 1.0]])


def test_pinning_max_pool_routes_the_gradient_to_the_recorded_winner():
    x = torch.tensor([[[[1.0, 1.0 + 1e-12], [0.0, 0.5]]]], dtype=torch.float64, requires_grad=True)
    recorded = np.array([[[[1.0, 0.9], [0.0, 0.5]]]], np.float32)  # float32 saw the first win
    kinks = TorchKinks(pin=[("max_pool2d", recorded)])
    with kinks:
        y = torch.nn.functional.max_pool2d(x, 2)
    y.sum().backward()
    assert kinks.flipped == 1
    assert float(y.detach()) == 1.0
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], [[1.0, 0.0], [0.0, 0.0]])
    with TorchKinks(pin=[("max_pool2d", recorded)]):  # torch's indices are the pinned winners
        values, indices = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    assert float(values.detach()) == 1.0 and int(indices) == 0


def test_pinning_another_network_is_refused():
    x = torch.ones((1, 3))
    with pytest.raises(ValueError, match="call 0 is relu"), TorchKinks(pin=[("relu", np.ones(4))]):
        torch.relu(x)
    too_long = TorchKinks(pin=[("relu", np.ones((1, 3)))] * 2)
    message = "made 1 ReLU / max-pool calls, the pinned recording has 2"
    with pytest.raises(ValueError, match=message), too_long:  # raised on leaving the block
        torch.relu(x)
