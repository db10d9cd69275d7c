"""Training engine: steps, data parallelism, optimiser recipes, checkpoints, loop and CLI."""

from __future__ import annotations

import json
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnn_jax import data
from cnn_jax import train as T
from cnn_jax.models import VGG, create
from cnn_jax.testing.parity import assert_rel_close
from cnn_jax.testing.programs import entry_arrays
from cnn_jax.train.run import loop
from cnn_jax.train.run.config import resolve
from cnn_jax.train.run.setup import build

torch = pytest.importorskip("torch")

MINI_BN = dict(cfg=(8, "M", 16), batch_norm=True, hidden=16, pool_size=2, dropout=0.0)


def _state(model, tx=None, shape=(1, 8, 8, 1)):
    tx = tx or optax.sgd(0.1, momentum=0.9)
    return T.create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros(shape))


def _digit_batches(digits, batch_size, n):
    it = data.batches(digits["train"], batch_size, shuffle=True, seed=0, epoch=0)
    return [next(it) for _ in range(n)]


def test_create_train_state_is_jitted_init():
    """The compiled initialisation (one program at -O2) gives exactly a jitted ``model.init``'s
    values at XLA's default -O3, and op-by-op ``model.init``'s to rounding (XLA folds the
    initialisers' scale constants differently from op-by-op execution)."""
    model = VGG(**MINI_BN, in_channels=1)  # convolutions and BatchNorm statistics
    tx = optax.adamw(1e-3)
    x = jnp.zeros((1, 8, 8, 1))
    state = T.create_train_state(model, tx, jax.random.PRNGKey(3), x)
    init_key, _ = jax.random.split(jax.random.PRNGKey(3))
    jitted = jax.jit(lambda k, x: model.init(k, x, train=False))(init_key, x)
    chex.assert_trees_all_equal(state.params, jitted["params"])
    chex.assert_trees_all_equal(state.batch_stats, jitted["batch_stats"])
    chex.assert_trees_all_equal(state.opt_state, tx.init(jitted["params"]))
    eager = model.init(init_key, x, train=False)
    chex.assert_trees_all_close(state.params, eager["params"], rtol=3e-7, atol=0)


def test_loss_falls_on_a_tiny_batch(digits):
    """Overfitting 32 images is the smallest end-to-end check that gradients flow."""
    model = create("cifar_cnn", num_classes=10, in_channels=1, dropout=0.0)
    state = _state(model, optax.adam(3e-3))
    batch = jax.device_put(_digit_batches(digits, 32, 1)[0])
    step = jax.jit(T.train_step, donate_argnums=0)
    first = None
    for _ in range(60):
        state, metrics = step(state, batch)
        first = first if first is not None else float(metrics["loss"])
    assert float(metrics["loss"]) < 0.1 * first
    assert float(metrics["accuracy"]) == 1.0
    assert int(state.step) == 60


def test_steps_trace_once(digits):
    model = VGG(num_classes=10, in_channels=1, **MINI_BN)
    state = _state(model)
    train = jax.jit(chex.assert_max_traces(T.make_train_step(), n=1), donate_argnums=0)
    evaluate = jax.jit(chex.assert_max_traces(T.make_eval_step(), n=1))
    for batch in _digit_batches(digits, 16, 3):
        state, _ = train(state, batch)
        metrics = evaluate(state, batch)
    assert set(metrics) == {"loss", "accuracy", "top5_accuracy", "count", "invalid_labels"}


def test_dropout_key_is_a_function_of_step():
    """Same state + batch -> same update; the next step draws a new mask."""
    model = create("simple_cnn", num_classes=10, in_channels=1, input_size=8, dropout=0.5)
    state = _state(model)
    batch = {"image": jnp.ones((4, 8, 8, 1)), "label": jnp.arange(4)}
    step = jax.jit(T.train_step)
    a, _ = step(state, batch)
    b, _ = step(state, batch)
    chex.assert_trees_all_equal(a.params, b.params)
    c, _ = step(a, batch)
    d, _ = step(a.replace(step=a.step + 1), batch)
    assert not all(
        jax.tree.leaves(jax.tree.map(lambda x, y: bool((x == y).all()), c.params, d.params))
    )


def test_pmap_sharded_and_single_device_agree(digits):
    """Same global batches, a BatchNorm model: pmap (synced BN, pmean grads), jit + sharding over
    a ('data',) mesh, and one device end in the same state."""
    assert jax.local_device_count() >= 2
    model = VGG(num_classes=10, in_channels=1, **MINI_BN)
    batches = _digit_batches(digits, 16, 3)
    single = _state(model)
    step = jax.jit(T.make_train_step())
    for batch in batches:
        single, m_single = step(single, batch)

    pm = T.placement("pmap", {}, 2)
    state = pm.replicated(_state(model))
    for batch in batches:
        state, m_pmap = pm.train_step(state, pm.batch_to_devices(batch))
    m_pmap, pm_state = pm.to_host(m_pmap), pm.unreplicated(state)

    sh = T.placement("sharded", {}, 2)
    state = sh.replicated(_state(model))
    for batch in batches:
        state, m_sharded = sh.train_step(state, sh.batch_to_devices(batch))
    assert sh.local_rows(16) == slice(0, 16)  # one process loads every row

    for other in (pm_state, sh.unreplicated(state)):
        chex.assert_trees_all_close(other.params, single.params, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(other.batch_stats, single.batch_stats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_pmap["loss"], m_single["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_sharded["loss"], m_single["loss"], rtol=1e-5)


def test_eval_metrics_combine_to_exact_dataset_means(digits):
    model = create("cifar_cnn", num_classes=10, in_channels=1)
    state = _state(model)
    split = digits["test"]
    evaluate = jax.jit(T.eval_step)
    per_batch = [evaluate(state, b) for b in data.batches(split, 64)]  # 270 = 4*64 + 14
    combined = T.combine(jax.device_get(per_batch))
    whole = jax.device_get(evaluate(state, next(data.batches(split, 270))))
    assert combined["count"] == 270
    np.testing.assert_allclose(combined["loss"], whole["loss"], rtol=1e-5)
    np.testing.assert_allclose(combined["accuracy"], whole["accuracy"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Optimiser recipes
# ---------------------------------------------------------------------------------------------


def test_decay_mask_excludes_biases_and_batchnorm():
    params = T.create_train_state(
        create("resnet18", num_classes=10),
        optax.sgd(0.1),
        jax.random.PRNGKey(0),
        jnp.zeros((1, 32, 32, 3)),
    ).params
    mask = T.decay_mask(params)
    assert mask["conv1"]["weight"] and mask["fc"]["weight"]
    assert not mask["fc"]["bias"]
    assert not mask["bn1"]["weight"] and not mask["bn1"]["bias"]
    assert not mask["layer1"]["0"]["bn2"]["weight"]


def _torch_run(opt_name, params_np, grads_np, **kw):
    w = torch.nn.Parameter(torch.tensor(params_np["weight"]))
    b = torch.nn.Parameter(torch.tensor(params_np["bias"]))
    wd = kw.pop("weight_decay", 0.0)
    groups = [{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}]
    cls = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[opt_name]
    opt = cls(groups, **kw)
    for g in grads_np:
        w.grad, b.grad = torch.tensor(g["weight"]), torch.tensor(g["bias"])
        opt.step()
    return {"weight": w.detach().numpy(), "bias": b.detach().numpy()}


@pytest.mark.parametrize(
    ("ours", "theirs", "torch_kw"),
    [
        (dict(name="momentum", weight_decay=0.05), "sgd", dict(lr=0.1, momentum=0.9)),
        (
            dict(name="nesterov", weight_decay=0.05),
            "sgd",
            dict(lr=0.1, momentum=0.9, nesterov=True),
        ),
        (dict(name="sgd", weight_decay=0.05), "sgd", dict(lr=0.1)),
        (dict(name="adamw", weight_decay=0.05), "adamw", dict(lr=0.1)),
        (dict(name="adam", weight_decay=0.05), "adam", dict(lr=0.1)),
    ],
    ids=["momentum", "nesterov", "sgd", "adamw", "adam"],
)
def test_optimizers_match_torch_optim_with_biases_excluded_from_decay(ours, theirs, torch_kw):
    rng = np.random.default_rng(0)
    params = {
        "weight": rng.standard_normal((3, 4)).astype(np.float32),
        "bias": rng.standard_normal(3).astype(np.float32),
    }
    grads = [
        {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        for _ in range(5)
    ]
    tx = T.make_optimizer(learning_rate=0.1, momentum=0.9, **ours)
    p = jax.tree.map(jnp.asarray, params)
    opt_state = tx.init(p)
    for g in grads:
        updates, opt_state = tx.update(jax.tree.map(jnp.asarray, g), opt_state, p)
        p = optax.apply_updates(p, updates)
    expected = _torch_run(
        theirs, params, grads, weight_decay=ours.get("weight_decay", 0.0), **torch_kw
    )
    for key in params:
        assert_rel_close(p[key], expected[key], what=key)


def test_unknown_optimizer_and_schedule_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'.*adamw"):
        T.make_optimizer("rmsprop")
    with pytest.raises(ValueError, match=r"unknown schedule 'linear'.*cosine"):
        T.make_schedule("linear", 0.1, 100)


def test_schedules():
    step = T.make_schedule("step", 1.0, 100, step_size=10, gamma=0.5)
    assert [float(step(s)) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    warm = T.make_schedule("warmup_cosine", 1.0, 100, warmup_steps=10)
    assert float(warm(0)) == 0.0 and abs(float(warm(10)) - 1.0) < 1e-6 and float(warm(100)) < 1e-6
    cos = T.make_schedule("cosine", 1.0, 100)
    assert float(cos(0)) == 1.0 and abs(float(cos(50)) - 0.5) < 1e-6
    one = T.make_schedule("onecycle", 1.0, 100)
    values = [float(one(s)) for s in range(100)]
    assert max(values) == pytest.approx(1.0, abs=1e-3) and values[0] < 0.1 and values[-1] < 0.01
    warm_const = T.make_schedule("constant", 2.0, 100, warmup_steps=4)
    assert [float(warm_const(s)) for s in (0, 2, 4, 50)] == [0.0, 1.0, 2.0, 2.0]


def test_gradient_clipping_bounds_the_update():
    params = {"w": jnp.ones((2, 2))}
    grads = {"w": jnp.full((2, 2), 100.0)}  # global norm 200
    tx = T.make_optimizer("sgd", 1.0, clip_norm=0.5)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 0.5, rtol=1e-6)
    plain = T.make_optimizer("sgd", 1.0)
    unclipped, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(unclipped)), 200.0, rtol=1e-6)


def test_freeze_and_lr_multipliers_for_transfer_learning():
    model = create("lenet5")
    state = _state(
        model,
        T.make_optimizer("sgd", 0.5, freeze=("features",), lr_multipliers={"classifier.0": 0.0}),
        shape=(1, 32, 32, 1),
    )
    batch = {"image": jax.random.normal(jax.random.key(0), (8, 32, 32, 1)), "label": jnp.arange(8)}
    new, _ = jax.jit(T.train_step)(state, batch)
    chex.assert_trees_all_equal(new.params["features"], state.params["features"])
    chex.assert_trees_all_equal(new.params["classifier"]["0"], state.params["classifier"]["0"])
    assert not np.array_equal(
        new.params["classifier"]["2"]["weight"], state.params["classifier"]["2"]["weight"]
    )


def test_l1_l2_penalties_are_the_course_formulas():
    params = {"conv": {"weight": jnp.array([[1.0, -2.0]]), "bias": jnp.array([3.0])}}
    assert float(T.l1_penalty(params)) == 3.0  # |1| + |-2|, bias excluded
    assert float(T.l2_penalty(params)) == 5.0  # 1 + 4
    model = create("mlp", num_classes=3, in_channels=1, input_size=2, hidden=())
    state = _state(model, optax.sgd(1.0), shape=(1, 2, 2, 1))
    batch = {"image": jnp.zeros((2, 2, 2, 1)), "label": jnp.array([0, 1])}
    plain, _ = jax.jit(T.make_train_step())(state, batch)
    l2, _ = jax.jit(T.make_train_step(l2=0.1))(state, batch)
    # the penalty adds 2 * λ * w to the gradient of each weight (lr 1)
    w = state.params["fc1"]["weight"]
    np.testing.assert_allclose(
        plain.params["fc1"]["weight"] - l2.params["fc1"]["weight"], 0.2 * w, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(plain.params["fc1"]["bias"], l2.params["fc1"]["bias"])


def test_grad_norm_metric_is_the_global_norm_of_the_gradients():
    """``gradient_norm`` is optax's global norm (the same sums in the same order), and the
    step's ``grad_norm`` is that norm of the step's gradients (SGD at lr 1: params less new)."""
    rng = np.random.default_rng(0)
    tree = {
        "a": jnp.asarray(rng.standard_normal((5, 7)), jnp.float32),
        "b": [jnp.asarray(-rng.random(3), jnp.float32), jnp.zeros((0,))],
    }
    assert float(T.step.gradient_norm(tree)) == float(optax.tree.norm(tree))
    assert float(T.step.gradient_norm({})) == 0.0
    model = create("mlp", num_classes=3, in_channels=1, input_size=4, hidden=(5,))
    state = _state(model, optax.sgd(1.0), shape=(1, 4, 4, 1))
    batch = {"image": jnp.asarray(rng.standard_normal((6, 4, 4, 1)), jnp.float32)}
    batch["label"] = jnp.array([0, 1, 2, 0, 1, 2])
    new, metrics = jax.jit(T.make_train_step())(state, batch)
    grads = jax.tree.map(lambda p, q: p - q, state.params, new.params)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.tree.norm(grads)), 1e-5)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_by_global_norm_is_optaxs_with_the_steps_norm(max_norm):
    """``clip_by_global_norm`` (what ``clip_norm`` builds) gives optax's clipped updates bit
    for bit, clipping (0.5) and not (100), and shares the step's norm: a clipped step reduces
    no more than an unclipped one."""
    rng = np.random.default_rng(0)
    grads = {"w": jnp.asarray(rng.standard_normal((8, 5)), jnp.float32), "b": jnp.ones(3)}
    ours, _ = T.optim.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    chex.assert_trees_all_equal(ours, theirs)
    if jax.default_backend() != "cpu":
        return
    model = create("mlp", num_classes=3, in_channels=1, input_size=4, hidden=(5,))
    batch = {"image": jnp.zeros((4, 4, 4, 1)), "label": jnp.array([0, 1, 2, 0])}

    def reductions(tx) -> int:
        state = _state(model, tx, shape=(1, 4, 4, 1))
        text = jax.jit(T.make_train_step()).lower(state, batch).compile().as_text()
        return text[text.index("\nENTRY") :].count(" = f32[] fusion(")

    clipped = optax.chain(T.optim.clip_by_global_norm(max_norm), optax.adamw(1e-3))
    assert reductions(clipped) == reductions(optax.adamw(1e-3))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion decision")
def test_train_step_does_not_write_the_squared_gradients_out():
    """The norm's squares are not merged with AdamW's own: with ``optax.tree.norm``, the
    compiled step writes one more array of the weight's shape (the squared gradient, read only
    by the norm's reduction)."""
    model = create("mlp", num_classes=3, in_channels=1, input_size=16, hidden=(64,))
    state = _state(model, optax.adamw(1e-3), shape=(1, 16, 16, 1))
    batch = {"image": jnp.zeros((4, 16, 16, 1)), "label": jnp.array([0, 1, 2, 0])}
    shape = state.params["fc1"]["weight"].shape

    def arrays() -> int:
        step = jax.jit(T.make_train_step(), donate_argnums=0).lower(state, batch).compile()
        return entry_arrays(step.as_text(), "f32", shape)

    ours = arrays()
    with mock.patch.object(T.step, "gradient_norm", optax.tree.norm):
        merged = arrays()
    assert ours == merged - 1


def test_label_smoothing_matches_torch():
    logits = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    from cnn_jax.train.step import _sums

    ours = _sums(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(6), 0.2)["loss"] / 6
    theirs = torch.nn.CrossEntropyLoss(label_smoothing=0.2)(
        torch.tensor(logits), torch.tensor(labels)
    )
    np.testing.assert_allclose(float(ours), theirs.item(), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The loop, checkpoints and the CLI
# ---------------------------------------------------------------------------------------------


def _config(tmp_path, **overrides):
    config = T.default_config()
    config.update(
        dict(model="cifar_cnn", epochs=3, batch_size=64, workdir=str(tmp_path), eval_batch_size=100)
    )
    config.update(overrides)
    return config


class _StopAfter:
    """Stands in for the SIGINT handler: reports a stop request after ``n`` steps."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def poll(self, step):
        self.calls += 1
        return "SIGINT" if self.calls > self.n else None

    def installed(self):
        import contextlib

        return contextlib.nullcontext(self)


def _latest_params(workdir, config):
    setup = build(resolve(config))
    checkpoints = T.Checkpoints(f"{workdir}/checkpoints", async_save=False)
    step, state = checkpoints.restore_latest(setup.initial_state())
    checkpoints.close()
    return step, state


@pytest.mark.slow  # three trainings; test_faults kills and resumes real runs in the default run
def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    full = _config(tmp_path / "full")
    loop.fit(full, log=lambda *_: None)

    part = _config(tmp_path / "part")
    monkeypatch.setattr(loop, "Stopper", lambda *_: _StopAfter(25))  # mid-epoch 2 (19 steps/epoch)
    with pytest.raises(T.TrainingInterrupted, match="step 26"):
        loop.fit(part, log=lambda *_: None)
    monkeypatch.undo()
    records = [
        json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [1]
    logs = []
    loop.fit(part, log=logs.append)
    assert any("resuming from step 26" in line for line in logs)

    step_full, state_full = _latest_params(tmp_path / "full", full)
    step_part, state_part = _latest_params(tmp_path / "part", part)
    assert step_full == step_part == 57
    chex.assert_trees_all_equal(state_part.params, state_full.params)  # bit-identical
    chex.assert_trees_all_equal(state_part.opt_state, state_full.opt_state)
    full_metrics = [
        json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    part_metrics = [
        json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["val_loss"] for r in part_metrics] == [r["val_loss"] for r in full_metrics]


def test_early_stopping_keeps_the_best_checkpoint(tmp_path):
    config = _config(tmp_path, epochs=10, lr=0.0)  # nothing improves after epoch 1
    config.early_stopping.patience = 2
    summary = loop.fit(config, log=lambda *_: None)
    assert summary["stopped_early"] and summary["epochs"] == 3
    assert summary["best_step"] == 19


def test_config_overrides_and_files(tmp_path):
    config = T.default_config()
    T.override(
        config, ["augment.flip=True", "lr=1", "early_stopping.metric=val_loss", "model=resnet18"]
    )
    assert config.augment.flip is True and config.lr == 1.0 and config.model == "resnet18"
    T.override(config, {"early_stopping.patience": 5, "lr": 2, "dataset": "mnist"})
    assert config.early_stopping.patience == 5 and config.lr == 2.0 and config.dataset == "mnist"
    with pytest.raises(ValueError, match="lr=nan is invalid: must be a finite number"):
        T.override(config, {"lr": float("nan")})
    with pytest.raises(ValueError, match=r"unknown config key 'augment\.flipp'"):
        T.override(config, ["augment.flipp=True"])
    with pytest.raises(ValueError, match="epochs must be an int, got 'many'"):
        T.override(config, ["epochs=many"])
    py = tmp_path / "c.py"
    py.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    return ml_collections.ConfigDict({'epochs': 2, 'augment': {'cutout': 3}})\n"
    )
    assert T.load_config_file(py).augment.cutout == 3
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"optimizer": "sgd", "early_stopping": {"patience": 4}}))
    loaded = T.load_config_file(js)
    assert loaded.optimizer == "sgd" and loaded.early_stopping.patience == 4
    assert isinstance(loaded, ml_collections.ConfigDict)


def test_cli_train_evaluate_and_summary(tmp_path, capsys):
    from cnn_jax import cli

    workdir = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--workdir",
            str(workdir),
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--set",
            "augment.translate=1",
            "--set",
            "early_stopping.patience=5",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "epoch   1/2" in out and "test accuracy" in out
    for name in ("config.json", "metrics.jsonl", "curves.png", "summary.json"):
        assert (workdir / name).exists(), name
    summary = json.loads((workdir / "summary.json").read_text())
    for key in (
        "test_loss",
        "test_accuracy",
        "epochs",
        "steps",
        "wall_s",
        "images_per_s",
        "model",
        "dataset",
        "params",
    ):
        assert key in summary, key
    assert summary["model"] == "lenet5" and summary["epochs"] == 2 and summary["steps"] == 38
    assert summary["test_accuracy"] > 0.5
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((workdir / "config.json").read_text())["augment"]["translate"] == 1

    assert cli.main(["evaluate", "--workdir", str(workdir)]) == 0
    assert f"accuracy {summary['test_accuracy']:.4f}" in capsys.readouterr().out
    assert cli.main(["summary", "lenet5"]) == 0
    assert "Total params: 61,706" in capsys.readouterr().out


def test_cli_rejects_bad_values_with_the_valid_ones(tmp_path, capsys):
    from cnn_jax import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "resnet19"])
    assert "resnet18" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "mnistt", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'mnistt'" in err and "digits" in err
    assert cli.main(["train", "--set", "epochs=0", "--workdir", str(tmp_path)]) == 2
    assert "epochs=0 is invalid: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "parallel",
    [pytest.param("none", marks=pytest.mark.slow), "sharded"],  # sharded covers both
)
def test_data_on_device_trains_exactly_like_host_batches(tmp_path, parallel):
    """Gathering batches inside the step computes the same float32 images as host batching."""
    states = {}
    for on_device in (True, False):
        config = _config(
            tmp_path / f"{parallel}-{on_device}",
            epochs=1,
            parallel=parallel,
            devices=2 if parallel == "sharded" else 0,
            data_on_device=on_device,
        )
        logs = []
        loop.fit(config, log=logs.append)
        assert any(f"data on {'device' if on_device else 'host'}" in line for line in logs)
        states[on_device] = _latest_params(tmp_path / f"{parallel}-{on_device}", config)[1]
    chex.assert_trees_all_equal(states[True].params, states[False].params)


def test_placement_refuses_what_it_cannot_place():
    with pytest.raises(T.ConfigError, match="only 2 global devices"):
        T.placement("sharded", {}, 3)
    with pytest.raises(T.ConfigError, match="only 2 local devices"):
        T.placement("pmap", {}, 4)
    with pytest.raises(T.ConfigError, match="eval_batch_size=5 must be divisible by 2"):
        T.placement("sharded", {}, 2, {"batch_size": 4, "eval_batch_size": 5})
    with pytest.raises(T.ConfigError, match="data_on_device is not available with parallel=pmap"):
        T.placement("pmap", {}, 2).gathering_step(None)
    with pytest.raises(T.ConfigError, match="parallel must be one of"):
        T.placement("ddp", {})


@pytest.mark.parametrize(
    ("mode", "min_delta", "patience", "values", "stops_after"),
    [
        ("min", 0.0, 2, [3.0, 2.0, 2.0, 2.5, 1.0], 4),  # 2 epochs without improvement
        ("min", 0.0, 1, [3.0, 3.0], 2),
        ("max", 0.0, 2, [0.5, 0.6, 0.6, 0.6], 4),
        ("max", 0.05, 2, [0.5, 0.52, 0.54, 0.9], 3),  # +0.02 steps are not improvements
        ("min", 0.0, 3, [3.0, 2.0, 1.0, 0.5], None),
    ],
)
def test_early_stopping_counts_patience_epochs_like_keras(
    mode, min_delta, patience, values, stops_after
):
    """flax's tracker behind the loop stops after ``patience`` epochs without an improvement
    larger than ``min_delta`` (Keras's and the course's rule), in both directions."""
    es = ml_collections.ConfigDict(
        {"metric": "val_loss", "mode": mode, "min_delta": min_delta, "patience": patience}
    )
    stopped = None
    for n in range(1, len(values) + 1):
        history = [{"val_loss": v} for v in values[:n]]
        if loop.Patience(es, history).should_stop:
            stopped = n
            break
    assert stopped == stops_after
