"""Mixed precision (``compute_dtype='bfloat16'``): bfloat16 forward/backward, float32 everything
that accumulates (parameters, gradients, optimiser state, BatchNorm statistics, loss); results
within bfloat16's tolerance of torch's float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import cnn_jax.functional as F
import cnn_jax.testing.torch_models as twins
from cnn_jax import data
from cnn_jax import train as T
from cnn_jax.errors import ConfigError
from cnn_jax.interop import from_torch
from cnn_jax.models import create

torch = pytest.importorskip("torch")


def _floating_dtypes(tree) -> set[str]:
    return {str(a.dtype) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}


def test_batch_norm_on_bfloat16_computes_in_float32(rng):
    x = jnp.asarray(rng.standard_normal((8, 5, 5, 3)) * 3 + 20, jnp.bfloat16)  # |mean| >> std
    stats = F.BatchNormStats(jnp.zeros(3), jnp.ones(3), jnp.array(0))
    weight, bias = jnp.asarray([0.5, 1.0, 2.0]), jnp.asarray([0.0, 0.1, -0.1])
    for training in (True, False):
        y, new = F.batch_norm(x, stats, weight, bias, training=training)
        y32, new32 = F.batch_norm(x.astype(jnp.float32), stats, weight, bias, training=training)
        assert y.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y32.astype(jnp.bfloat16)))
        assert _floating_dtypes(new) == {"float32"}
        for a, b in zip(new, new32, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _torch_reference(name, kw, x, labels):
    torch.manual_seed(0)
    twin = twins.randomize(twins.restatement(name, **kw)).train()
    initial = {k: v.clone() for k, v in twin.state_dict().items()}  # before the statistics move
    images = torch.tensor(x.transpose(0, 3, 1, 2).copy())
    loss = torch.nn.functional.cross_entropy(twin(images), torch.tensor(labels))
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in twin.named_parameters()}
    return twin, initial, loss.item(), grads


@pytest.mark.parametrize(
    ("name", "kw", "size"),
    [
        ("lenet5", dict(in_channels=1), 32),
        ("convnet", dict(in_channels=3, batch_norm=True, channels=(8, 16)), 16),
    ],
)
def test_bfloat16_step_matches_torch_float32_within_bfloat16_tolerance(name, kw, size):
    kw = dict(num_classes=5, **kw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, size, size, kw["in_channels"])).astype(np.float32)
    labels = np.arange(16) % 5
    twin, initial, torch_loss, torch_grads = _torch_reference(name, kw, x, labels)
    model = create(name, **kw)
    variables = from_torch(model, initial)
    state = T.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.sgd(1.0),  # one plain SGD step at lr 1: the gradient is params - new params
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.random.key_data(jax.random.key(0)),
    )
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(labels)}
    new_state, metrics = jax.jit(T.make_train_step(compute_dtype="bfloat16"))(state, batch)
    assert metrics["loss"].dtype == jnp.float32
    assert abs(float(metrics["loss"]) - torch_loss) / torch_loss < 2e-2
    assert _floating_dtypes((new_state.params, new_state.opt_state)) == {"float32"}
    if variables.get("batch_stats"):
        assert _floating_dtypes(new_state.batch_stats) == {"float32"}
        ours = traverse_util.flatten_dict(new_state.batch_stats, sep=".")
        for key, ref in twin.state_dict().items():
            if "running" in key:
                np.testing.assert_allclose(np.asarray(ours[key]), ref.numpy(), rtol=2e-2, atol=2e-2)
    before = traverse_util.flatten_dict(state.params, sep=".")
    after = traverse_util.flatten_dict(new_state.params, sep=".")
    ours = np.concatenate([np.asarray(before[k] - after[k]).ravel() for k in torch_grads])
    ref = np.concatenate([v.ravel() for v in torch_grads.values()])
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 5e-2
    # ... and bfloat16 is really used: the float32 step's gradient is much closer to torch's.
    new32, _ = jax.jit(T.make_train_step())(state, batch)
    after32 = traverse_util.flatten_dict(new32.params, sep=".")
    ours32 = np.concatenate([np.asarray(before[k] - after32[k]).ravel() for k in torch_grads])
    assert np.linalg.norm(ours32 - ref) < 0.1 * np.linalg.norm(ours - ref)


def test_bfloat16_training_follows_float32_training(digits):
    """Overfitting one batch: the bfloat16 run's loss falls as the float32 run's does (measured:
    2.295 -> 0.092 vs 0.094 in 40 Adam steps)."""
    model = create("convnet", num_classes=10, in_channels=1, batch_norm=True, channels=(8, 16))
    batch = jax.device_put(next(data.batches(digits["train"], 32, shuffle=True, seed=0)))
    final = {}
    for compute_dtype in ("float32", "bfloat16"):
        state = T.create_train_state(
            model, optax.adam(1e-2), jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1))
        )
        step = jax.jit(T.make_train_step(compute_dtype=compute_dtype), donate_argnums=0)
        for _ in range(40):
            state, metrics = step(state, batch)
        final[compute_dtype] = float(metrics["loss"])
    assert final["float32"] < 0.2
    assert abs(final["bfloat16"] - final["float32"]) < 0.05


def test_compute_dtype_is_a_validated_config_key():
    config = T.default_config()
    config.compute_dtype = "float16"
    with pytest.raises(ConfigError, match="compute_dtype='float16' is invalid: one of float32"):
        T.validate(config)
    with pytest.raises(ValueError, match="compute_dtype='float64'"):
        T.make_train_step(compute_dtype="float64")


def test_cli_trains_in_bfloat16(tmp_path):
    from cnn_jax.cli import main

    workdir = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--workdir", str(workdir), "--compute-dtype",
                 "bfloat16"]) == 0  # fmt: skip
    run = T.load_run(workdir)
    assert run.config.compute_dtype == "bfloat16"
    assert _floating_dtypes(run.state.params) == {"float32"}
    assert run.evaluate("test")["accuracy"] > 0.3
