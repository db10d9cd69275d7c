"""Kernels stored in the step's layout (:mod:`cnn_jax.train.layout`): exact round trips, the same
training as in torch's layout, and torch's layout wherever a user reads a state."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import nn as cnn
from cnn_jax import train as T
from cnn_jax.testing.programs import entry_arrays
from cnn_jax.train import layout, parallel
from cnn_jax.train.run import loop
from cnn_jax.train.run.config import resolve
from cnn_jax.train.run.setup import build

# One kernel of each kind: dense 3x3, depthwise, 1x1, grouped 3x3, transposed 2x2.
MODEL = cnn.Sequential(
    (
        cnn.Conv2d(3, 8, 3, padding=1),
        cnn.BatchNorm2d(8),
        cnn.ReLU(),
        cnn.Conv2d(8, 8, 3, padding=1, groups=8),
        cnn.Conv2d(8, 16, 1),
        cnn.Conv2d(16, 16, 3, padding=1, groups=4),
        cnn.ConvTranspose2d(16, 4, 2, stride=2),
        cnn.AdaptiveAvgPool2d(1),
        cnn.Flatten(),
        cnn.Linear(4, 10),
    )
)
STEP_KERNELS = ("0.weight", "5.weight", "6.weight")


def _images(n=8, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.standard_normal((n, size, size, 3), dtype=np.float32)),
        "label": jnp.asarray(rng.integers(0, 10, n)),
    }


def _state(tx=None):
    tx = tx or optax.adamw(1e-2, weight_decay=0.1, mask=T.decay_mask)
    return T.create_train_state(MODEL, tx, jax.random.key(0), _images()["image"][:1])


def test_which_kernels_are_stored_hwio():
    """Dense and grouped kernels with several taps (and the transposed convolution's, whose
    shape reads the same); not the depthwise or 1x1 kernels, nor any 1-D or 2-D parameter."""
    state = _state()
    assert layout.step_kernel_paths(state.params) == STEP_KERNELS
    assert layout.is_step_kernel((64, 3, 7, 7)) and layout.is_step_kernel((5, 1, 1, 3)) is False
    assert not layout.is_step_kernel((64, 64, 1, 1))
    assert not layout.is_step_kernel((32, 1, 3, 3))  # depthwise
    assert not layout.is_step_kernel((10, 4))


@pytest.mark.parametrize("tx", ["adamw", "momentum", "masked"])
def test_round_trip_is_exact_and_moves_the_optimiser_state_with_the_kernels(tx):
    optimizers = {
        "adamw": optax.adamw(1e-2, weight_decay=0.1, mask=T.decay_mask),
        "momentum": optax.sgd(0.1, momentum=0.9),
        # freeze and per-prefix learning rates: optax.multi_transform with masked inner states
        "masked": T.make_optimizer(
            "adamw", 1e-2, weight_decay=0.1, freeze=("4",), lr_multipliers={"0": 0.1}
        ),
    }
    state = _state(optimizers[tx])
    state = state.replace(opt_state=jax.tree.map(lambda a: a + 0.5, state.opt_state))  # nonzero
    step = layout.to_step_layout(state)
    assert step.step_layout == STEP_KERNELS
    torch_shape = state.params["0"]["weight"].shape
    assert step.params["0"]["weight"].shape == tuple(torch_shape[i] for i in layout.TO_STEP)
    moved = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(step.opt_state)
        if jax.tree_util.keystr(path).endswith("['0']['weight']")
    ]
    assert moved and all(leaf.shape == step.params["0"]["weight"].shape for leaf in moved)
    # the parameters of other kinds, and everything else, are the same arrays
    assert step.params["4"]["weight"] is state.params["4"]["weight"]
    back = layout.to_torch_layout(step)
    assert back.step_layout == ()
    chex.assert_trees_all_equal(back.params, state.params)
    chex.assert_trees_all_equal(back.opt_state, state.opt_state)
    chex.assert_trees_all_equal_structs(back.opt_state, state.opt_state)
    assert layout.to_step_layout(step) is step and layout.to_torch_layout(state) is state


def test_the_model_sees_torch_layout_kernels():
    """``variables()`` (what every step applies the model to) hands the model OIHW kernels, so
    eval logits are the same bit for bit."""
    state = _state()
    step = layout.to_step_layout(state)
    chex.assert_trees_all_equal(step.variables()["params"], state.variables()["params"])
    x = _images()["image"]
    eval_step = jax.jit(T.make_eval_step())
    batch = _images()
    chex.assert_trees_all_equal(eval_step(step, batch), eval_step(state, batch))
    logits = MODEL.apply(step.variables(), x, train=False)
    chex.assert_trees_all_equal(logits, MODEL.apply(state.variables(), x, train=False))


def test_training_in_the_step_layout_is_training_in_torchs():
    """Five AdamW steps from the same state: the same parameters, moments and losses, to float32
    rounding (the two compiled programs may sum in different orders)."""
    train_step = jax.jit(T.make_train_step(l2=1e-3))
    states = {"torch": _state()}
    states["step"] = layout.to_step_layout(states["torch"])
    losses = {}
    for name in states:
        for seed in range(5):
            states[name], metrics = train_step(states[name], _images(seed=seed))
            losses.setdefault(name, []).append(float(metrics["loss"]))
        assert states[name].step_layout == (STEP_KERNELS if name == "step" else ())
    np.testing.assert_allclose(losses["step"], losses["torch"], rtol=1e-6)
    back = layout.to_torch_layout(states["step"])
    chex.assert_trees_all_close(back.params, states["torch"].params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(back.opt_state, states["torch"].opt_state, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(back.batch_stats, states["torch"].batch_stats, rtol=1e-5)


def test_the_step_layout_removes_the_kernel_transpositions():
    """In torch's layout the compiled step writes a large kernel in OIHW besides the parameter
    itself (the weight gradient, stored once before the update reads it); in the step layout no
    array of that shape is written, and the HWIO ones are the parameter's and its moments'."""
    model = cnn.Sequential((cnn.Conv2d(3, 512, 3), cnn.Conv2d(512, 512, 3), cnn.Flatten()))
    x = jnp.zeros((2, 6, 6, 3))
    batch = {"image": x, "label": jnp.zeros(2, jnp.int32)}
    state = T.create_train_state(model, optax.adamw(1e-3), jax.random.key(0), x[:1])
    oihw, hwio = (512, 512, 3, 3), (3, 3, 512, 512)

    def compiled(state):
        return jax.jit(T.make_train_step(), donate_argnums=0).lower(state, batch).compile()

    torch_text = compiled(state).as_text()
    step_text = compiled(layout.to_step_layout(state)).as_text()
    assert entry_arrays(torch_text, "f32", oihw) >= 4  # param, 2 moments, stored gradient
    assert entry_arrays(step_text, "f32", oihw) == 0
    assert entry_arrays(step_text, "f32", hwio) == entry_arrays(torch_text, "f32", oihw) - 1


@pytest.mark.parametrize("step_layout", [True, False])
def test_placements_hand_out_torch_layout(step_layout):
    placement = T.placement("none", {}, step_layout=step_layout)
    state = _state()
    on_device = placement.replicated(state)
    assert on_device.step_layout == (STEP_KERNELS if step_layout else ())
    chex.assert_trees_all_equal(placement.unreplicated(on_device), state)
    assert placement.unreplicated(on_device).step_layout == ()


def test_placements_use_the_step_layout_on_the_cpu_by_default():
    assert layout.default_on() == (jax.default_backend() == "cpu")
    for mode, devices in (("none", 0), ("sharded", 2), ("pmap", 2)):
        assert T.placement(mode, {}, devices).step_layout == layout.default_on()


def test_fit_checkpoints_torch_layout_and_trains_as_in_torch_layout(tmp_path, monkeypatch):
    """A run whose placement keeps the step layout (the CPU default) checkpoints OIHW kernels
    and ends where the same run in torch's layout does, to float32 rounding."""
    results = {}
    for step_layout in (True, False):
        monkeypatch.setattr(parallel, "_step_layout", lambda chosen, on=step_layout: on)
        config = T.default_config()
        config.update(dict(model="cifar_cnn", epochs=1, batch_size=64, eval_batch_size=100, seed=0))
        config.workdir = str(tmp_path / str(step_layout))
        summary = loop.fit(config, log=lambda *_: None)
        run = T.load_run(config.workdir)
        assert run.state.step_layout == ()
        fresh = build(resolve(config)).initial_state(abstract=True)  # torch's shapes
        assert layout.step_kernel_paths(fresh.params)  # the run did store kernels HWIO
        chex.assert_trees_all_equal_shapes(run.state.params, fresh.params)
        results[step_layout] = (summary, run.state)
    (summary_step, state_step), (summary_torch, state_torch) = results[True], results[False]
    chex.assert_trees_all_equal_shapes(state_step.params, state_torch.params)
    chex.assert_trees_all_close(state_step.params, state_torch.params, rtol=1e-4, atol=1e-5)
    assert summary_step["test_loss"] == pytest.approx(summary_torch["test_loss"], rel=1e-4)
