"""Run safety: no silent wrong number, no lost work, one line per expected failure.

Every test here reproduces a way a run could go wrong silently or noisily: diverging
runs, invalid labels, resuming with other settings, settings accepted silently, frozen BatchNorm,
corrupt or deleted checkpoints, signals and ``kill -9`` at several points (real subprocesses),
unusable work directories, corrupt datasets and config files.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from cnn_jax import cli, data
from cnn_jax import train as T
from cnn_jax.errors import (
    ConfigError,
    DatasetError,
    DivergenceError,
    InvalidLabelError,
    WorkdirError,
)
from cnn_jax.models import VGG, create
from cnn_jax.testing.cli import INTERRUPTIBLE
from cnn_jax.testing.cli import run_cli as _cli
from cnn_jax.train.run import loop
from cnn_jax.train.run.config import resolve
from cnn_jax.train.run.setup import build

QUIET = dict(log=lambda *_: None)


def _config(workdir, **overrides):
    """Tiny runs: LeNet-5 on the digits, 19 steps per epoch."""
    config = T.default_config()
    config.update(dict(epochs=2, batch_size=64, workdir=str(workdir)))
    T.override(config, overrides)
    return config


def _one_line_error(result, code):
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _corrupt(step_dir: Path, metrics: bool = False) -> None:
    """Overwrites a checkpoint's array data (and its saved metrics, which orbax reads when it
    opens the directory) with garbage."""
    for f in step_dir.rglob("*"):
        keep = f.name in ("_CHECKPOINT_METADATA", "commit_success.txt")
        if f.is_file() and not keep and (metrics or f.parent.name != "metrics"):
            f.write_bytes(b"garbage")


def _steps(workdir) -> list[int]:
    return sorted(
        int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit()
    )


def _restore(workdir, config, step):
    setup = build(resolve(config))
    checkpoints = T.Checkpoints(Path(workdir) / "checkpoints", async_save=False)
    try:
        return checkpoints.restore(step, setup.initial_state())
    finally:
        checkpoints.close()


# ---------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_divergence_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path, optimizer):
    """Epoch 1 trains at a sane rate; the step schedule then multiplies it by 1e8: the run must
    stop within the epoch where the loss turns NaN (2 for SGD; Adam's bounded steps take until
    epoch 3), naming the step, with the previous epoch's checkpoint as the newest one, no NaN
    anywhere on disk and no summary."""
    config = _config(
        tmp_path,
        model="mlp",
        optimizer=optimizer,
        lr=1e-3,
        schedule="step",
        step_size_epochs=1,
        gamma=1e9,
        epochs=3,
    )
    with pytest.raises(DivergenceError, match=r"diverged: the loss became nan at step") as err:
        loop.fit(config, **QUIET)
    import re

    step, epoch = map(int, re.search(r"at step (\d+) \(epoch (\d+)", str(err.value)).groups())
    assert epoch >= 2 and (epoch - 1) * 19 < step <= epoch * 19  # named within its epoch
    last_good = (epoch - 1) * 19
    assert max(_steps(tmp_path)) == last_good
    assert f"the last good checkpoint is step {last_good}" in str(err.value)
    state = _restore(tmp_path, config, last_good)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params))
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epoch))
    assert not (tmp_path / "summary.json").exists()


def test_divergence_on_the_command_line_is_one_line_and_exit_1(tmp_path):
    result = _cli(
        "train", "--model", "mlp", "--optimizer", "sgd", "--lr", "1e6", "--workdir", tmp_path
    )
    line = _one_line_error(result, 1)
    assert "training diverged" in line and "no checkpoint was saved" in line
    assert not (tmp_path / "summary.json").exists()


def test_a_non_finite_value_is_never_best_or_json(tmp_path):
    checkpoints = T.Checkpoints(tmp_path / "checkpoints", async_save=False)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="must be finite"):
            checkpoints.save(1, {"w": jnp.zeros(2)}, metrics={"val_accuracy": bad})
    assert checkpoints.steps() == []
    checkpoints.close()
    with pytest.raises(ValueError, match="not JSON compliant"):
        T.write_json_atomic(Path("/nonexistent/never-written.json"), {"loss": float("nan")})


def test_a_save_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    """Free space below the state's bytes: the save is refused in one line before anything is
    written, and the checkpoints already there stay. (A disk that fills part-way through a save
    is tests/test_cli.py's full-disk test.)"""
    import shutil

    from cnn_jax.errors import CheckpointError

    checkpoints = T.Checkpoints(tmp_path / "checkpoints", async_save=False)
    state = {"w": jnp.zeros(100_000)}  # 400 kB
    checkpoints.save(1, state, metrics={"val_accuracy": 0.5})
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=300_000))
    with pytest.raises(
        CheckpointError, match=r"^no space left on device while saving checkpoint 2 in "
    ):
        checkpoints.save(2, state, metrics={"val_accuracy": 0.6})
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert checkpoints.steps() == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name != "metadata") == [
        "1"
    ]
    checkpoints.close()


# ---------------------------------------------------------------------------------------------
# Labels and pixels inside the steps
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_state():
    model = create("cifar_cnn", num_classes=10, in_channels=1, dropout=0.0)
    return T.create_train_state(
        model, optax.sgd(0.1), jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))
    )


def _batch(labels, image=None):
    n = len(labels)
    images = jnp.ones((n, 8, 8, 1)) if image is None else image
    return {"image": images, "label": jnp.asarray(labels)}


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0, 10], r"1 label\(s\) outside \[0, 10\)"), ([0.0, 1.5], "labels must be integers")],
)
def test_labels_are_checked_once_where_a_dataset_enters(labels, message):
    images = np.zeros((2, 8, 8, 1), np.uint8)
    with pytest.raises(DatasetError, match=message):
        data.from_arrays("mine", {"train": (images, np.asarray(labels))}, num_classes=10)


@pytest.mark.parametrize("bad", [10, -1])
def test_out_of_range_labels_poison_the_loss_and_are_counted(small_state, bad):
    step = jax.jit(T.train_step)
    _, metrics = step(small_state, _batch([1, 2, bad, 3]))
    assert int(metrics["invalid_labels"]) == 1
    assert math.isnan(float(metrics["loss"])) and not bool(metrics["finite"])
    per_batch = jax.jit(T.eval_step)(small_state, _batch([1, 2, bad, 3]))
    with pytest.raises(InvalidLabelError, match="1 evaluated label"):
        T.combine([jax.device_get(per_batch)])


def test_masked_padding_rows_never_count_as_invalid(small_state):
    batch = {**_batch([1, 2, 99, 3]), "mask": jnp.asarray([True, True, False, True])}
    metrics = jax.jit(T.eval_step)(small_state, batch)
    assert int(metrics["invalid_labels"]) == 0 and math.isfinite(float(metrics["loss"]))


def test_float_labels_are_refused_when_traced(small_state):
    with pytest.raises(InvalidLabelError, match="integer class indices, got float32"):
        jax.jit(T.train_step)(small_state, _batch(jnp.asarray([1.5, 2.0])))


def test_a_nan_pixel_is_reported_not_propagated(small_state):
    image = jnp.ones((2, 8, 8, 1)).at[0, 3, 3, 0].set(jnp.nan)
    _, metrics = jax.jit(T.train_step)(small_state, _batch([1, 2], image))
    assert not bool(metrics["finite"])  # what the loop reads to stop the run
    debug_step = T.make_train_step(debug=True)
    with pytest.raises(Exception, match="pixel of the batch is NaN"):
        debug_step(small_state, _batch([1, 2], image))


def test_debug_mode_checks_labels_in_train_and_eval(small_state):
    with pytest.raises(Exception, match=r"label\(s\) outside"):
        T.make_train_step(debug=True)(small_state, _batch([1, 10]))
    with pytest.raises(Exception, match=r"label\(s\) outside"):
        T.make_eval_step(debug=True)(small_state, _batch([-1, 0]))
    state, metrics = T.make_train_step(debug=True)(small_state, _batch([1, 2]))
    assert bool(metrics["finite"]) and int(state.step) == 1


def test_a_normalising_step_refuses_float_images(small_state):
    """make_train_step(mean=, std=) after batches() (which normalises) would normalise twice."""
    step = T.make_train_step(mean=np.float32([0.5]), std=np.float32([0.2]))
    with pytest.raises(TypeError, match="raw uint8 pixels"):
        jax.jit(step)(small_state, _batch([1, 2]))
    raw = {"image": jnp.full((2, 8, 8, 1), 128, jnp.uint8), "label": jnp.asarray([1, 2])}
    _, metrics = jax.jit(step)(small_state, raw)
    assert bool(metrics["finite"])


# ---------------------------------------------------------------------------------------------
# Settings validated before any work
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr", -1.0, "lr=-1.0 is invalid"),
        ("label_smoothing", 2.0, "label_smoothing=2.0 is invalid"),
        ("momentum", 5.0, "momentum=5.0 is invalid"),
        ("devices", -1, "devices=-1 is invalid"),
        ("early_stopping.metric", "foo", "early_stopping.metric='foo' is invalid: one of val_loss"),
        ("augment.brightness", 3.0, "augment.brightness=3.0 is invalid"),
        ("keep_checkpoints", 0, "keep_checkpoints=0 is invalid"),
        ("lr_multipliers", "features=x", "lr_multipliers='features=x' is invalid"),
    ],
)
def test_invalid_settings_fail_before_any_work(tmp_path, key, value, message):
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        loop.fit(_config(workdir, **{key: value}), **QUIET)
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("freeze", "featurs", r"'featurs' match no parameter.*features\.0"),
        ("lr_multipliers", "classifer=0.1", r"'classifer' match no parameter"),
        ("image_size", 7, r"LeNet-5 needs 32x32 input, got 7x7.*--image-size 32"),
    ],
)
def test_settings_that_do_not_fit_the_model_fail_before_training(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        loop.fit(_config(tmp_path, **{key: value}), **QUIET)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_optimizer_and_step_refuse_bad_values_in_the_api():
    with pytest.raises(ValueError, match="momentum must be in"):
        T.make_optimizer("momentum", 0.1, momentum=5)
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        T.make_optimizer("sgd", -1.0)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        T.make_train_step(label_smoothing=2.0)
    params = {"features": {"w": jnp.ones((2, 2))}, "head": {"w": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match="'feature' match no parameter"):
        T.make_optimizer("sgd", 0.1, freeze=("feature",)).init(params)


@pytest.mark.parametrize("name", ["lenet5", "simple_cnn", "cifar_cnn", "mlp", "vgg11", "resnet18"])
def test_every_model_checks_its_input_at_entry(name):
    model = create(name, num_classes=10, in_channels=3)
    init = lambda x: jax.eval_shape(
        lambda: model.init(jax.random.key(0), x, train=False)
    )  # nothing computed
    with pytest.raises(ValueError, match="looks like NCHW"):
        init(jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(TypeError, match="floating-point input, got uint8"):
        init(jnp.zeros((1, 32, 32, 3), jnp.uint8))
    init(jnp.zeros((1, 32, 32, 3)))


def test_integer_input_to_a_layer_is_a_clear_error():
    import cnn_jax.nn as cnn

    conv = cnn.Conv2d(1, 2, 3)
    with pytest.raises(TypeError, match=r"Conv2d expects floating-point input, got uint8"):
        conv.init(jax.random.key(0), jnp.zeros((1, 5, 5, 1), jnp.uint8))


# ---------------------------------------------------------------------------------------------
# One workdir, one run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    summary = loop.fit(_config(workdir), **QUIET)
    return workdir, summary


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", 0.01),
        ("schedule", "constant"),
        ("augment.translate", 2),
        ("l2", 1e-4),
        ("label_smoothing", 0.1),
        ("momentum", 0.8),
        ("early_stopping.patience", 3),
        ("epochs", 5),  # the cosine schedule depends on the run's length
    ],
)
def test_rerunning_with_other_settings_is_refused_listing_them(finished_run, key, value):
    workdir, _ = finished_run
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    with pytest.raises(WorkdirError, match=rf"other settings \({key}: .* -> {value!r}"):
        loop.fit(_config(workdir, **{key: value}), **QUIET)
    after = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    assert after == before  # config.json, summary.json, metrics.jsonl untouched


def test_rerunning_a_finished_run_reports_it_and_touches_nothing(finished_run):
    workdir, summary = finished_run
    files = lambda: {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in workdir.rglob("*") if p.is_file()
    }
    before = files()
    logs = []
    again = loop.fit(_config(workdir), log=logs.append)
    assert again == summary and again["train_s"] > 0 and again["images_per_s"] > 0
    assert any("holds a finished run" in line for line in logs)
    assert files() == before


def test_an_early_stopped_run_is_not_trained_further(tmp_path):
    config = _config(tmp_path, epochs=10, lr=0.0, **{"early_stopping.patience": 2})
    summary = loop.fit(config, **QUIET)
    assert summary["status"] == "stopped_early" and summary["epochs"] == 3
    again = loop.fit(config, **QUIET)
    assert again["epochs"] == 3
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow  # two runs of the CLI
def test_a_constant_schedule_run_can_be_extended(tmp_path):
    first = loop.fit(_config(tmp_path, epochs=1, schedule="constant"), **QUIET)
    assert first["epochs"] == 1
    longer = loop.fit(_config(tmp_path, epochs=2, schedule="constant"), **QUIET)
    assert longer["epochs"] == 2 and longer["steps"] == 38
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2


def test_restart_moves_the_old_run_aside(tmp_path):
    workdir = tmp_path / "run"
    loop.fit(_config(workdir, epochs=1), **QUIET)
    logs = []
    loop.fit(_config(workdir, epochs=1, lr=0.01), log=logs.append, restart=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "summary.json").exists()
    assert json.loads((workdir / "config.json").read_text())["lr"] == 0.01
    assert any("moved the previous run" in line for line in logs)


@pytest.mark.slow  # two runs of the CLI
def test_deleted_checkpoints_are_refused_not_silently_restarted(tmp_path):
    loop.fit(_config(tmp_path, epochs=3), **QUIET)
    (tmp_path / "summary.json").unlink()
    history = (tmp_path / "metrics.jsonl").read_text()
    for step in _steps(tmp_path):
        import shutil

        shutil.rmtree(tmp_path / "checkpoints" / str(step))
    with pytest.raises(WorkdirError, match="checkpoints were deleted"):
        loop.fit(_config(tmp_path, epochs=3), **QUIET)
    assert (tmp_path / "metrics.jsonl").read_text() == history


def test_checkpoints_without_a_config_are_refused(tmp_path):
    loop.fit(_config(tmp_path, epochs=1), **QUIET)
    (tmp_path / "config.json").unlink()
    with pytest.raises(WorkdirError, match=r"no config\.json"):
        loop.fit(_config(tmp_path, epochs=1), **QUIET)


# ---------------------------------------------------------------------------------------------
# Transfer learning: frozen BatchNorm
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # compiles frozen and trained steps of resnet18
def test_frozen_batch_norm_runs_in_inference_mode_and_gets_no_gradient():
    model = VGG(
        num_classes=10,
        in_channels=1,
        cfg=(8, "M", 16),
        batch_norm=True,
        hidden=16,
        pool_size=2,
        dropout=0.0,
    )
    freeze = ("features",)
    tx = T.make_optimizer("adam", 1e-2, freeze=freeze)
    state = T.create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    # Running statistics far from the batch's, so the two modes give different outputs.
    from flax import traverse_util

    flat = traverse_util.flatten_dict(state.batch_stats, sep="/")
    shift = {"running_mean": -1.0, "running_var": 3.0, "num_batches_tracked": 0}
    stats = traverse_util.unflatten_dict(
        {k: v + shift[k.split("/")[-1]] for k, v in flat.items()}, sep="/"
    )
    state = state.replace(batch_stats=stats)
    batch = {
        "image": jax.random.normal(jax.random.key(1), (8, 8, 8, 1)),
        "label": jnp.arange(8) % 10,
    }
    frozen, _ = jax.jit(T.make_train_step(freeze=freeze))(state, batch)
    chex.assert_trees_all_equal(frozen.batch_stats, state.batch_stats)  # not updated
    chex.assert_trees_all_equal(frozen.params["features"], state.params["features"])
    assert not np.allclose(frozen.params["classifier"]["0"]["weight"],
                           state.params["classifier"]["0"]["weight"])  # fmt: skip

    # Inference mode: the head's gradient equals the one computed with train=False features.
    def head_grad(train_features: bool, s):
        def loss(p):
            variables = {"params": p, "batch_stats": s.batch_stats}
            logits = s.apply_fn(variables, batch["image"], train=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        return jax.grad(loss)(s.params)["classifier"]

    expected = head_grad(False, state)
    trains, _ = jax.jit(T.make_train_step(freeze=freeze, frozen_batch_norm_trains=True))(
        state, batch
    )
    assert not jax.tree.all(jax.tree.map(jnp.array_equal, trains.batch_stats, state.batch_stats))
    # Check the frozen step used running statistics: one SGD step of the head reproduces it.
    sgd = T.make_optimizer("sgd", 1.0, freeze=freeze)
    s2 = T.create_train_state(model, sgd, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    s2 = s2.replace(params=state.params, batch_stats=stats, opt_state=sgd.init(state.params))
    after, _ = jax.jit(T.make_train_step(freeze=freeze))(s2, batch)
    moved = jax.tree.map(lambda a, b: a - b, after.params["classifier"], s2.params["classifier"])
    chex.assert_trees_all_close(moved, jax.tree.map(lambda g: -g, expected), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Corrupt checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metrics",
    [
        pytest.param(False, marks=pytest.mark.slow, id="arrays"),
        pytest.param(True, id="arrays-and-metrics"),
    ],
)
def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_run_continues(tmp_path, metrics):
    config = _config(tmp_path, epochs=2)
    loop.fit(config, **QUIET)
    (tmp_path / "summary.json").unlink()
    _corrupt(tmp_path / "checkpoints" / "38", metrics=metrics)
    with pytest.warns(UserWarning, match=r"step 38\)? (cannot be restored|has unreadable).*moved"):
        summary = loop.fit(config, **QUIET)
    assert summary["steps"] == 38 and math.isfinite(summary["test_loss"])  # step 38 re-saved
    moved = list((tmp_path / "checkpoints-corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("38-")
    assert 38 in _steps(tmp_path)


@pytest.mark.slow  # two runs of the CLI
def test_every_checkpoint_corrupt_is_one_line_and_nothing_is_moved(tmp_path):
    config = _config(tmp_path, epochs=2)
    loop.fit(config, **QUIET)
    (tmp_path / "summary.json").unlink()
    for step in _steps(tmp_path):
        _corrupt(tmp_path / "checkpoints" / str(step))
    result = _cli("train", "--epochs", 2, "--batch-size", 64, "--workdir", tmp_path)
    line = _one_line_error(result, 1)
    assert "none of the 2 checkpoint(s)" in line
    assert not (tmp_path / "checkpoints-corrupt").exists() and _steps(tmp_path) == [19, 38]


@pytest.mark.slow  # three runs of the CLI
def test_a_corrupt_best_checkpoint_is_reported_by_evaluate_and_survived_by_train(tmp_path):
    # lr=0 after a good first epoch: epoch 1 stays the best, so best (19) != newest (57).
    config = _config(tmp_path, epochs=3, schedule="step", step_size_epochs=1, gamma=1e-9)
    summary = loop.fit(config, **QUIET)
    assert summary["best_step"] == 19, summary
    _corrupt(tmp_path / "checkpoints" / "19")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    result = _cli("evaluate", "--workdir", tmp_path)  # reads only: says so, exit 1
    line = _one_line_error(result, 1)
    assert "the best checkpoint (step 19)" in line and "nothing was changed" in line
    assert "--checkpoint latest" in line and "<bound method" not in line
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert T.evaluate_workdir(tmp_path, checkpoint="latest", **QUIET)["step"] == 57

    other = tmp_path / "other"
    loop.fit(_config(other, epochs=3, schedule="step", step_size_epochs=1, gamma=1e-9), **QUIET)
    (other / "summary.json").unlink()
    _corrupt(other / "checkpoints" / "19", metrics=True)  # found when the directory is opened
    with pytest.warns(UserWarning, match=r"step 19 has unreadable metrics; moved"):
        summary = loop.fit(
            _config(other, epochs=3, schedule="step", step_size_epochs=1, gamma=1e-9), **QUIET
        )
    assert summary["best_step"] in (38, 57) and (other / "summary.json").exists()


def test_the_run_config_is_stored_with_the_checkpoints(finished_run):
    workdir, _ = finished_run
    # Whoever opens the directory with orbax alone finds the run's config there.
    manager = ocp.CheckpointManager(workdir / "checkpoints")
    try:
        stored = manager.metadata().custom_metadata["config"]
    finally:
        manager.close()
    assert stored == json.loads((workdir / "config.json").read_text())


# ---------------------------------------------------------------------------------------------
# Signals and kill -9 (real processes)
# ---------------------------------------------------------------------------------------------


def _final_params(workdir, config):
    return _restore(workdir, config, max(_steps(workdir)))


@pytest.mark.slow  # seven runs of the CLI
def test_kill_9_at_any_point_then_the_same_command_ends_bit_identical(tmp_path):
    """An uninterrupted run against one killed with SIGKILL at five points in turn — mid-epoch
    before any checkpoint, after a record but before its save, during an asynchronous save,
    mid-epoch after a checkpoint, before the summary — then at a moment chosen by the clock, and
    finally run to the end with the same command."""
    args = ["train", "--epochs", 3, "--batch-size", 64]
    full, part = tmp_path / "full", tmp_path / "part"
    assert _cli(*args, "--workdir", full).returncode == 0
    for point in ("step:5", "record:1", "save:2", "step:10", "summary:1"):
        killed = _cli(*args, "--workdir", part, env={"CNN_JAX_FAILPOINT": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-1500:])
        assert not (part / "summary.json").exists(), point
    (part / "summary.json").exists()
    final = _cli(*args, "--workdir", part)
    assert final.returncode == 0, final.stderr[-2000:]

    a = json.loads((full / "summary.json").read_text())
    b = json.loads((part / "summary.json").read_text())
    for key in ("test_loss", "test_accuracy", "best_step", "steps", "epochs", "status"):
        assert a[key] == b[key], key
    ra = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val_loss"], r["train_loss"]) for r in ra] == [
        (r["step"], r["val_loss"], r["train_loss"]) for r in rb
    ]
    config = _config(full, epochs=3)
    chex.assert_trees_all_equal(
        _final_params(part, _config(part, epochs=3)).params, _final_params(full, config).params
    )


def test_kill_9_at_a_random_moment_of_a_real_run_then_resume(tmp_path):
    """SIGKILL from outside, shortly after the first epoch line (a save is in flight then)."""
    cmd = [sys.executable, "-m", "cnn_jax.cli", "train", "--epochs", "3", "--batch-size", "64"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = subprocess.run([*cmd, "--workdir", str(tmp_path / "full")], env=env, capture_output=True)
    assert full.returncode == 0
    proc = subprocess.Popen(
        [*cmd, "--workdir", str(tmp_path / "part")], stdout=subprocess.PIPE, text=True, env=env
    )
    for line in proc.stdout:
        if line.startswith("epoch   1/3"):
            time.sleep(0.05)
            proc.kill()
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    resumed = subprocess.run(
        [*cmd, "--workdir", str(tmp_path / "part")], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert (a["test_loss"], a["best_step"]) == (b["test_loss"], b["best_step"])


def test_sigint_stops_within_a_step_or_two_and_saves(tmp_path):
    result = _cli(
        "train", "--epochs", 3, "--batch-size", 64, "--workdir", tmp_path,
        env={"CNN_JAX_FAILPOINT": "step:25:int"},
    )  # fmt: skip
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "checkpoint saved" in result.stderr and "Re-run the same command" in result.stderr
    assert max(_steps(tmp_path)) == 25  # the step the signal arrived at, not the epoch's end


def test_sigterm_saves_and_exits_143(tmp_path):
    result = _cli(
        "train", "--epochs", 3, "--batch-size", 64, "--workdir", tmp_path,
        env={"CNN_JAX_FAILPOINT": "step:7:term"},
    )  # fmt: skip
    assert result.returncode == 143, result.stderr[-2000:]
    assert max(_steps(tmp_path)) == 7


@pytest.mark.slow  # three runs of the CLI
def test_a_second_sigint_during_a_save_exits_at_once_and_loses_nothing_finished(tmp_path):
    """SIGINT twice right after the epoch-2 save started: the process exits at once (130), the
    epoch-1 checkpoint is intact, and the same command finishes the run identically."""
    args = ["train", "--epochs", 3, "--batch-size", 64]
    result = _cli(*args, "--workdir", tmp_path / "part", env={"CNN_JAX_FAILPOINT": "save:2:int2"})
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 4
    assert 19 in _steps(tmp_path / "part")
    assert _cli(*args, "--workdir", tmp_path / "part").returncode == 0
    assert _cli(*args, "--workdir", tmp_path / "full").returncode == 0
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert (a["test_loss"], a["best_step"]) == (b["test_loss"], b["best_step"])


@pytest.mark.parametrize("delay", [0.5, 1.5])  # both before training starts (start-up is longer)
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, delay):
    proc = subprocess.Popen(
        [sys.executable, "-c", f"{INTERRUPTIBLE}; from cnn_jax.cli import console_main; "
         "console_main()", "train", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err


# ---------------------------------------------------------------------------------------------
# Errors as one line: workdirs, datasets, config files
# ---------------------------------------------------------------------------------------------


def test_a_workdir_that_is_a_file_is_one_line_exit_2(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    line = _one_line_error(_cli("train", "--workdir", path), 2)
    assert "is not a directory" in line


def test_a_read_only_workdir_is_one_line_exit_2(tmp_path):
    """A real read-only directory: a read-only bind mount in a private mount namespace (root
    ignores permission bits), or permission bits when not root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    code = "from cnn_jax.cli import console_main; console_main()"
    args = [sys.executable, "-c", code, "train", "--workdir", str(ro / "run")]
    if os.geteuid() != 0:
        ro.chmod(0o555)
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    else:
        probe = subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip("running as root without user namespaces: no read-only mount possible")
        mount = f'mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec "$@"'
        result = subprocess.run(
            ["unshare", "-r", "-m", "sh", "-c", mount, "sh", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
    line = _one_line_error(result, 2)
    assert ("cannot write to workdir" in line and "Read-only file system" in line) or (
        "Permission denied" in line
    )


def test_a_corrupt_prepared_dataset_names_the_files(tmp_path):
    data_dir = tmp_path / "tfds"
    data.load("digits", data_dir=str(data_dir))
    (record,) = data_dir.rglob("*-train.array_record*")
    record.write_bytes(record.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"digits/train .*cannot read example 0.*corrupt"):
        data.load("digits", data_dir=str(data_dir))
    result = _cli("train", "--data-dir", data_dir, "--workdir", tmp_path / "run")
    assert str(data_dir) in _one_line_error(result, 2)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", '{"epochs": 2,,}', r"bad\.json:1:\d+: invalid JSON"),
        ("bad.py", "def get_config(:\n", r"bad\.py:1: syntax error"),
        ("raises.py", "def get_config():\n    return 1 / 0\n", r"raises\.py:2: ZeroDivision"),
        ("keys.json", '{"epoch": 2}', r"keys\.json: unknown config key 'epoch'"),
    ],
)
def test_broken_config_files_are_one_line_naming_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        T.load_config_file(path)
    assert cli.main(["train", "--config", str(path), "--workdir", str(tmp_path / "w")]) == 2


def test_debug_shows_the_traceback(tmp_path):
    result = _cli("--debug", "train", "--lr", "-1", "--workdir", tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "ConfigError" in result.stderr


def test_a_dataset_without_a_test_split_never_tests_on_the_validation_split():
    from cnn_jax.data.sources import _default_split_map

    assert _default_split_map({"train": 1, "validation": 1}) == {
        "train": "train[:90%]",
        "validation": "train[90%:]",
        "test": "validation",
    }
    assert _default_split_map({"train": 1}) == {
        "train": "train[:80%]",
        "validation": "train[80%:90%]",
        "test": "train[90%:]",
    }


def test_the_summary_names_the_splits_it_was_measured_on(finished_run):
    _, summary = finished_run
    assert summary["splits"] == {"train": "train", "validation": "validation", "test": "test"}
