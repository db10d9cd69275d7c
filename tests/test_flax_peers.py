"""The plain flax.linen peers the speed benchmark times beside cnn_jax: the same networks (as many
parameters, the same logits shape), and a train step that trains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import models
from experiments import bench_vs_torch, flax_peers


def _count(tree) -> int:
    """Elements in the tree's arrays (scalars, such as torch's ``num_batches_tracked``, aside)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree) if leaf.ndim)


@pytest.mark.parametrize("name", sorted(flax_peers.PEERS))
def test_peer_is_the_same_network(name):
    """Each peer has cnn_jax's parameter count and logits shape at the benchmark's input shape
    (the same layers, widths and kernels, so the same work per step)."""
    shape = bench_vs_torch.input_shape(name)
    ours = models.create(name, num_classes=10, **bench_vs_torch._jax_kwargs(name))
    peer = flax_peers.PEERS[name]()
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    key = jax.random.key(0)
    ours_vars = jax.eval_shape(lambda k, x: ours.init(k, x, train=False), key, x)
    peer_vars = jax.eval_shape(lambda k, x: peer.init(k, x, train=False), key, x)
    assert _count(peer_vars["params"]) == _count(ours_vars["params"])
    assert _count(peer_vars.get("batch_stats", {})) == _count(ours_vars.get("batch_stats", {}))
    ours_out = jax.eval_shape(lambda v, x: ours.apply(v, x, train=False), ours_vars, x)
    peer_out = jax.eval_shape(lambda v, x: peer.apply(v, x, train=False), peer_vars, x)
    assert peer_out.shape == ours_out.shape == (2, 10)


def test_peer_train_step_trains():
    """Steps on one batch lower its loss; dropout's key moves with the step."""
    tx = optax.adamw(1e-3, weight_decay=1e-2)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 8)),
    }
    state = flax_peers.create_state("cifar_cnn", tx, jax.random.key(0), batch["image"][:1])
    step = jax.jit(flax_peers.train_step)
    losses = []
    for _ in range(5):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
        assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    assert int(state.step) == 5
    assert losses[-1] < losses[0]


@pytest.mark.slow  # compiles ResNet-18's train step
def test_peer_batch_norm_statistics_move():
    """ResNet-18's peer updates its running statistics in a train step (torch's momentum)."""
    tx = optax.sgd(0.0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)) + 3.0, jnp.float32)
    state = flax_peers.create_state("resnet18", tx, jax.random.key(0), x[:1])
    new, _ = jax.jit(flax_peers.train_step)(
        state, {"image": x, "label": jnp.zeros(2, jnp.int32)}, jax.random.key(1)
    )
    stem_mean = new.batch_stats["BatchNorm_0"]["mean"]
    assert float(jnp.abs(stem_mean).max()) > 0.0
    assert float(jnp.abs(state.batch_stats["BatchNorm_0"]["mean"]).max()) == 0.0


def test_unknown_peer_is_refused():
    with pytest.raises(ValueError, match=r"no plain flax\.linen peer for 'vgg11'"):
        flax_peers.create_state("vgg11", optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 8)))


def test_which_runs_time_the_peer():
    """The headline's models in float32 only: not the zoo's families, not bfloat16 runs."""
    assert bench_vs_torch.has_flax_peer("resnet18", False, "float32")
    assert not bench_vs_torch.has_flax_peer("resnet18", True, "float32")
    assert not bench_vs_torch.has_flax_peer("lenet5", False, "bfloat16")
    assert not bench_vs_torch.has_flax_peer("vgg11", False, "float32")
    assert set(flax_peers.PEERS) == set(bench_vs_torch.MODELS)
