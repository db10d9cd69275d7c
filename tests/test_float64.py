"""Float64: with ``jax_enable_x64`` on, what a researcher does to check gradients exactly, every
model loads a ``.double()`` torch state_dict as float64 and agrees with torch's float64 to
rounding (~1e-12 relative), forward and every parameter's gradient in train mode; the train step
keeps float64. Runs in a subprocess: x64 is a process-wide switch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np, optax, torch
    from flax import traverse_util
    import cnn_jax.testing.torch_models as twins
    from cnn_jax import train as T
    from cnn_jax.interop import from_torch, to_torch
    from cnn_jax.models import create

    args = sys.argv[1:]
    for i in range(0, len(args), 3):
        name, size, channels = args[i], int(args[i + 1]), int(args[i + 2])
        kw = dict(num_classes=5, in_channels=channels)
        if name in ("cifar_cnn", "vgg11_bn", "simple_cnn", "alexnet", "convnet"):
            kw["dropout"] = 0.0
        if name == "simple_cnn":
            kw["input_size"] = size
        torch.manual_seed(0)
        twin = twins.randomize(twins.restatement(name, **kw)).double().train()
        model = create(name, **kw)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, size, size, channels))
        labels = np.arange(4) % 5
        variables = from_torch(model, twin.state_dict())
        out = {"dtypes": sorted({str(v.dtype) for v in jax.tree.leaves(variables)})}

        xt = torch.tensor(x.transpose(0, 3, 1, 2).copy())
        loss_t = torch.nn.functional.cross_entropy(twin(xt), torch.tensor(labels))
        loss_t.backward()

        def loss(params):
            logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                          mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

        (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        out["loss"] = abs(float(value) - loss_t.item()) / abs(loss_t.item())
        flat = traverse_util.flatten_dict(grads, sep=".")
        total = np.sqrt(sum(np.sum(p.grad.numpy() ** 2) for p in twin.parameters()))
        worst = 0.0
        for key, p in twin.named_parameters():
            g, ref = np.asarray(flat[key]), p.grad.numpy()
            # A conv bias before BatchNorm has an exactly zero gradient: both sides are rounding
            # there, so it is judged against the whole gradient's scale instead of its own.
            scale = max(np.linalg.norm(ref), 1e-6 * total)
            worst = max(worst, float(np.linalg.norm(g - ref) / scale))
        out["grad"] = worst
        # Running statistics after the train-mode forward, and the round trip keeps float64.
        state = to_torch(model, {**variables, **updates})
        stats = [float(np.abs(state[k].numpy() - v.numpy()).max())
                 for k, v in twin.state_dict().items() if v.is_floating_point()]
        out["stats"] = max(stats)
        out["to_torch_dtypes"] = sorted({str(v.dtype) for v in state.values()})
        # The train step keeps float64 params, optimiser state and loss.
        tx = optax.sgd(0.1, momentum=0.9)
        ts = T.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}),
                                 rng=jax.random.key_data(jax.random.key(0)))
        batch = {"image": jnp.asarray(x), "label": jnp.asarray(labels)}
        ts, metrics = jax.jit(T.train_step)(ts, batch)
        leaves = jax.tree.leaves((ts.params, ts.opt_state))
        out["step_dtypes"] = sorted({str(v.dtype) for v in leaves
                                     if jnp.issubdtype(v.dtype, jnp.floating)})
        out["step_loss_dtype"] = str(metrics["loss"].dtype)
        print(json.dumps(out))
    """
)

DEFAULT = [("lenet5", 32, 1), ("cifar_cnn", 16, 3), ("convnet", 16, 1)]
SLOW = [("resnet18", 32, 3), ("vgg11_bn", 32, 3)]


def _check(cases):
    """One subprocess for several models (start-up dominates each one's cost)."""
    argv = [str(v) for case in cases for v in case]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [
        json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith("{")
    ]
    assert len(lines) == len(cases)
    for (name, _, _), out in zip(cases, lines, strict=True):
        assert out["dtypes"] in (["float64"], ["float64", "int32"]), (name, out["dtypes"])
        assert out["to_torch_dtypes"] in (["torch.float64"], ["torch.float64", "torch.int64"])
        assert out["step_dtypes"] == ["float64"] and out["step_loss_dtype"] == "float64", name
        # float64 on both sides: any difference beyond rounding would be a semantic one.
        assert out["loss"] < 1e-12, (name, out)
        assert out["grad"] < 1e-10, (name, out)
        assert out["stats"] < 1e-12, (name, out)


@pytest.mark.slow  # every course model in float64 in both frameworks
def test_small_models_in_float64_match_torch_double():
    _check(DEFAULT)


@pytest.mark.slow
@pytest.mark.bigmem  # float64 VGG-sized twins: one at a time in CI (zoo.BIGMEM_GB)
def test_deep_batchnorm_models_in_float64_match_torch_double():
    _check(SLOW)
