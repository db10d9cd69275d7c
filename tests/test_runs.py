"""Runs as objects: loading a finished run back (`load_run`), initialising a run from another
(`init_from` / `init_exclude`: transfer learning through the loop), and configs saved before a
key existed."""

from __future__ import annotations

import collections
import contextlib
import json
import logging

import jax
import numpy as np
import pytest
from flax import traverse_util

from cnn_jax import data
from cnn_jax import train as T
from cnn_jax.data import variants as V
from cnn_jax.errors import CheckpointError, ConfigError, WorkdirError

QUIET = dict(log=lambda *a: None)


def _register(name, classes):
    if name not in data.registered():
        data.register(name, lambda **kw: V.select_classes(data.load("digits", **kw), classes))
    return name


def _config(workdir, **overrides):
    c = T.default_config()
    c.update(
        dict(model="cifar_cnn", epochs=2, batch_size=64, workdir=str(workdir), keep_checkpoints=5)
    )
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("source")
    summary = T.fit(_config(workdir, dataset=_register("runs-0to4", range(5))), **QUIET)
    return workdir, summary


def test_load_run_restores_the_best_checkpoint_and_evaluates_like_the_summary(source_run):
    workdir, summary = source_run
    run = T.load_run(workdir)
    assert run.step == summary["best_step"]
    assert run.steps == sorted(run.steps) and len(run.steps) == 2
    assert run.evaluate("test")["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    # Any Split of the same shape evaluates, normalised with the run's training statistics.
    test = run.splits["test"]
    logits = run.model.apply(run.variables, run.normalize(test.images), train=False)
    acc = float((np.asarray(logits).argmax(-1) == test.labels).mean())
    assert run.evaluate(test)["accuracy"] == pytest.approx(acc, abs=1e-6)
    # Every kept checkpoint can be restored; the states differ.
    first = run.at(run.steps[0])
    assert first.step == run.steps[0]
    assert not np.allclose(
        first.state.params["fc"]["weight"], run.at(run.steps[1]).state.params["fc"]["weight"]
    )
    with pytest.raises(CheckpointError, match="no checkpoint at step 12345"):
        run.at(12345)
    with pytest.raises(CheckpointError, match="no checkpoint at step 7"):
        T.load_run(workdir, step=7)
    with pytest.raises(ConfigError, match="unknown split 'nope'"):
        run.evaluate("nope")
    # The run's fresh initialisation: what fit started from with this seed.
    init_key, _ = jax.random.split(jax.random.PRNGKey(run.config.seed))
    fresh = run.model.init(init_key, np.zeros((1, 8, 8, 1), np.float32), train=False)
    for a, b in zip(jax.tree.leaves(run.initial_variables), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_run_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(WorkdirError, match="not a cnn-jax run directory"):
        T.load_run(tmp_path)


def test_init_from_loads_every_array_but_the_excluded_head(source_run, tmp_path):
    workdir, _ = source_run
    source = T.load_run(workdir)
    config = _config(
        tmp_path / "ft",
        dataset=_register("runs-5to9", range(5, 10)),
        epochs=1,
        init_from=str(workdir),
        init_exclude="fc",
        freeze="conv1,conv2,conv3",
    )
    lines = []
    T.fit(config, log=lines.append)
    assert any(f"initialised 6 arrays from {workdir}" in line for line in lines), lines
    tuned = T.load_run(tmp_path / "ft")
    # The frozen convolutions are exactly the source's; the head was trained from scratch.
    flat_src = traverse_util.flatten_dict(source.state.params, sep=".")
    flat_new = traverse_util.flatten_dict(tuned.state.params, sep=".")
    for name, value in flat_src.items():
        if name.startswith("conv"):
            np.testing.assert_array_equal(flat_new[name], value, err_msg=name)
    assert not np.allclose(flat_new["fc.weight"], flat_src["fc.weight"])


@contextlib.contextmanager
def _records(logger_name, level=logging.NOTSET):
    """The records ``logger_name`` handles inside the block (after its filters)."""
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    handler, logger = Keep(level), logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def _compiles():
    """Counts the XLA programs compiled inside the block, by name (``jit(step)``...), once the
    block has ended."""
    counts = collections.Counter()
    with _records("jax._src.interpreters.pxla") as seen, jax.log_compiles(True):
        yield counts
    counts.update(str(r.args[0]) for r in seen if r.msg.startswith("Compiling %s"))


@contextlib.contextmanager
def _absl_warnings():
    """The warnings logged through absl (orbax's logger) inside the block, as filtered."""
    with _records("absl", logging.WARNING) as seen:
        messages = []
        yield messages
    messages.extend(r.getMessage() for r in seen)


def test_a_run_compiles_its_steps_once_whether_fresh_initialised_or_resumed(source_run, tmp_path):
    """jit keys its cache on whether each argument is committed to a device: a state mixing
    arrays loaded from a file (committed) with a fresh optimiser state (not) would compile the
    train step again after the first step, and the evaluation again on the restored best
    checkpoint. That costs a second compilation of the largest program of a run."""
    workdir, _ = source_run
    target = _register("runs-5to9", range(5, 10))
    runs = {
        "fresh": _config(tmp_path / "fresh", dataset=target, schedule="constant"),
        "initialised": _config(
            tmp_path / "init", dataset=target, init_from=str(workdir), init_exclude="fc"
        ),
        "frozen": _config(
            tmp_path / "frozen", dataset=target, init_from=str(workdir), freeze="conv1,conv2"
        ),
        "fed from the host": _config(
            tmp_path / "host", dataset=target, init_from=str(workdir), data_on_device=False
        ),
    }

    def check(name, counts):
        # jit(step): the step gathering batches from a split on the device; jit(train_step):
        # the step fed batches from the host.
        trains = counts["jit(step)"] + counts["jit(train_step)"]
        assert trains == 1 and counts["jit(eval_step)"] == 1, (name, counts)

    for name, config in runs.items():
        with _compiles() as counts:
            T.fit(config, **QUIET)
        check(name, counts)
    runs["fresh"].epochs = 3  # resumes the finished two-epoch run for one more epoch
    with _compiles() as counts:
        T.fit(runs["fresh"], **QUIET)
    check("resumed", counts)


def test_load_run_restores_without_initialising_the_model(source_run):
    """The checkpoint is restored into the state's shapes (``create_train_state(...,
    abstract=True)``); the initialisation runs only when ``initial_variables`` asks for it."""
    workdir, _ = source_run
    with _compiles() as counts, _absl_warnings() as warnings:
        run = T.load_run(workdir)
    assert not warnings, warnings  # orbax's notes on opening a directory read-only
    assert "jit(init)" not in counts, counts
    template = run._setup.initial_state(abstract=True)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), template) == jax.tree.map(
        lambda x: (x.shape, x.dtype), run.state
    )
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(template.params))


def test_init_from_refuses_what_it_cannot_load(source_run, tmp_path):
    workdir, _ = source_run
    ten = "digits"  # 10 classes: the head's shape differs from the 5-class source
    with pytest.raises(
        ConfigError,
        match=r"fc.bias is \(5,\) there and \(10,\) here; fc.weight is \(5, 128\) there and "
        r"\(10, 128\) here",
    ):
        T.fit(_config(tmp_path / "a", dataset=ten, init_from=str(workdir)), **QUIET)
    with pytest.raises(ConfigError, match=r"init_exclude prefix\(es\) \['head'\] name no"):
        T.fit(
            _config(tmp_path / "b", dataset=ten, init_from=str(workdir), init_exclude="fc,head"),
            **QUIET,
        )
    with pytest.raises(ConfigError, match=r"init_exclude.*used only with init_from"):
        T.fit(_config(tmp_path / "c", init_exclude="fc"), **QUIET)
    with pytest.raises(WorkdirError, match="not a cnn-jax run directory"):
        T.fit(_config(tmp_path / "d", init_from=str(tmp_path)), **QUIET)
    with pytest.raises(
        ConfigError, match=r"its model has no params 'features\.0\.bias', 'features\.0\.weight'"
    ):
        T.fit(
            _config(
                tmp_path / "e", model="lenet5", init_from=str(workdir), init_exclude="classifier"
            ),
            **QUIET,
        )


def test_a_run_saved_before_new_config_keys_still_resumes(tmp_path):
    config = _config(tmp_path, epochs=1)
    T.fit(config, **QUIET)
    stored = json.loads((tmp_path / "config.json").read_text())
    for key in ("init_from", "init_exclude", "frozen_batch_norm_trains", "normalize", "channels"):
        del stored[key]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    config.epochs = 2  # cosine: a length change is refused, so nothing else may differ
    with pytest.raises(WorkdirError, match=r"epochs: 1 -> 2"):
        T.fit(config, **QUIET)
    config.epochs = 1
    assert T.fit(config, **QUIET)["status"] == "finished"  # the finished run, nothing retrained
    assert jax.tree.leaves(T.load_run(tmp_path).state.params)
