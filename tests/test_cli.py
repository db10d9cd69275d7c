"""The command line as a user meets it, each behaviour checked on a real ``cnn-jax`` process:
help, ``--debug``, settings refused before any work, the work-directory lock, read-only
``evaluate``, progress lines off a terminal, the divergence warning and a full disk."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cnn_jax.testing.cli import command, run_cli

# Stops a run right after its first step (the headline is printed by then): SIGKILL, exit -9.
FIRST_STEP = {"CNN_JAX_FAILPOINT": "step:1"}


def _one_error_line(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_help_shows_the_defaults_and_no_markup():
    top = run_cli("--help")
    assert top.returncode == 0 and "``" not in top.stdout
    assert "The cnn-jax command line" in top.stdout
    train = " ".join(run_cli("train", "--help").stdout.split())  # argparse wraps lines
    for flag, default in [("--model", "lenet5"), ("--epochs", "30"), ("--lr", "0.002")]:
        assert re.search(rf"{flag} .*?\(default: {re.escape(default)}\)", train), flag
    assert "(default: runs/<model>-<dataset>)" in train


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_subcommand_keeps_the_exit_code(tmp_path, where):
    args = ["train", "--lr", "-1", "--workdir", tmp_path / "run"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cnn-jax train: error: lr=-1.0")


def test_an_unknown_dispatch_setting_is_one_line(tmp_path):
    result = run_cli("train", "--workdir", tmp_path / "run", env={"CNN_JAX_DISPATCH": "fastest"})
    line = _one_error_line(result, 2)
    assert "CNN_JAX_DISPATCH must be one of ('async', 'sync'), got 'fastest'" in line
    assert not (tmp_path / "run").exists()


def test_devices_without_parallel_is_refused(tmp_path):
    line = _one_error_line(run_cli("train", "--devices", 64, "--workdir", tmp_path / "run"), 2)
    assert "devices=64 is invalid" in line and "--parallel" in line


def test_pmap_headline_counts_the_parameters_once(tmp_path):
    result = run_cli(
        "train", "--parallel", "pmap", "--devices", 2, "--workdir", tmp_path, env=FIRST_STEP
    )
    headline = result.stdout.splitlines()[0]
    assert "61,706 params" in headline and "parallel=pmap on 2 cpu device(s)" in headline


def test_summary_names_the_head_and_reproduces_the_readme_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`cnn-jax summary resnet18`" in readme  # the command the README gives for its table
    params = re.search(r"^\| resnet18 \| ([\d,]+) \|", readme, flags=re.MULTILINE).group(1)
    result = run_cli("summary", "resnet18")
    assert result.returncode == 0, result.stderr[-2000:]
    header = result.stdout.splitlines()[0]
    assert header.startswith("resnet18: num_classes=1000 (default), in_channels=3 (default)")
    assert f"Total params: {params}" in result.stdout
    small = run_cli("summary", "resnet18", "--num-classes", 10).stdout
    assert small.startswith("resnet18: num_classes=10,") and "Total params: 11,181,642" in small


def test_nan_and_several_wrong_types_are_reported_together(tmp_path):
    line = _one_error_line(run_cli("train", "--lr", "nan", "--workdir", tmp_path / "a"), 2)
    assert line.endswith("lr=nan is invalid: must be a finite number")
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"epochs": "two", "lr": "fast", "augment": {"flip": 3}}))
    line = _one_error_line(run_cli("train", "--config", config, "--workdir", tmp_path / "b"), 2)
    for part in ("epochs must be an int, got 'two'", "lr must be a float, got 'fast'",
                 "augment.flip must be a bool (True or False), got 3"):  # fmt: skip
        assert part in line, line
    line = _one_error_line(
        run_cli("train", "--epochs", 0, "--set", "momentum=2", "--workdir", tmp_path / "c"), 2
    )
    assert "epochs=0 is invalid" in line and "momentum=2.0 is invalid" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image-size", 7], "cannot train on digits images of 7x7x1"),
        (["--dataset", "no_such_dataset"], "no_such_dataset"),
    ],
    ids=["model-input", "dataset"],
)
def test_a_refused_run_leaves_no_workdir(tmp_path, args, message):
    workdir = tmp_path / "new" / "run"
    line = _one_error_line(run_cli("train", *args, "--workdir", workdir), 2)
    assert message in line
    assert not (tmp_path / "new").exists()  # nor the parent it created


def test_a_second_run_of_a_workdir_is_refused_and_a_dead_holder_never_blocks(tmp_path):
    args = ["train", "--epochs", 30, "--workdir", tmp_path]
    first = subprocess.Popen(command(*args), stdout=subprocess.PIPE, text=True)
    try:
        assert "params" in first.stdout.readline()  # the headline: it holds the workdir
        line = _one_error_line(run_cli(*args), 2)
        assert f"{tmp_path} is in use by another run (pid {first.pid} on host" in line
        assert "wait for it to end, or choose another --workdir" in line
    finally:
        first.kill()
        first.communicate(timeout=60)
    holder = json.loads((tmp_path / ".lock").read_text())
    assert holder["pid"] == first.pid  # left behind by the killed run, which no longer holds it
    second = run_cli(*args, env=FIRST_STEP)
    assert second.returncode == -signal.SIGKILL and "in use" not in second.stderr
    assert "params" in second.stdout


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-epoch run (checkpoints at steps 19 and 38)."""
    workdir = tmp_path_factory.mktemp("finished")
    result = run_cli("train", "--epochs", 2, "--workdir", workdir, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir, json.loads((workdir / "summary.json").read_text())


def test_evaluate_reads_the_checkpoint_asked_for(finished):
    workdir, summary = finished
    best = run_cli("evaluate", "--workdir", workdir)
    assert best.returncode == 0, best.stderr[-2000:]
    assert f"accuracy {summary['test_accuracy']:.4f}" in best.stdout
    assert f"checkpoint step {summary['best_step']}" in best.stdout
    for choice, step in (("latest", 38), ("19", 19)):
        result = run_cli("evaluate", "--workdir", workdir, "--checkpoint", choice)
        assert f"checkpoint step {step})" in result.stdout, result.stderr[-2000:]
    line = _one_error_line(run_cli("evaluate", "--workdir", workdir, "--checkpoint", 7), 1)
    assert "no checkpoint at step 7; kept: 38, 19" in line  # newest first


def test_output_that_is_no_terminal_gets_progress_lines(tmp_path):
    result = run_cli(
        "train", "--epochs", 1, "--set", "progress_every_s=0.01", "--workdir", tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = re.findall(
        r"^epoch 1/1 step (\d+)/19  loss \d+\.\d{4}  [\d,]+ img/s  ETA \d+s \(training\)$",
        result.stdout,
        flags=re.MULTILINE,
    )
    assert lines and all(1 <= int(step) <= 19 for step in lines), result.stdout
    assert "\r" not in result.stdout + result.stderr  # no terminal bar in a log


def test_progress_lines_come_every_interval_with_an_eta():
    from cnn_jax.train.run.progress import StepLines

    now, lines = [0.0], []
    steps = StepLines(
        lines.append, "epoch 2/3", 12, 5, batch_size=64, run_steps_left=15, every_s=10,
        clock=lambda: now[0],
    )  # fmt: skip
    for _ in range(7):  # the first step (compilation) starts the clock; then one every 4 s
        now[0] += 4.0 if lines or now[0] else 30.0
        steps.update(1, lambda: 0.5)
    steps.update(1)  # no loss given: no line
    assert lines == [
        "epoch 2/3 step 9/12  loss 0.5000  16 img/s  ETA 44s (training)",
        "epoch 2/3 step 12/12  loss 0.5000  16 img/s  ETA 32s (training)",
    ]


def test_a_jupyter_kernel_gets_no_progress_lines(monkeypatch):
    from cnn_jax.train.run.progress import Progress, StepLines

    lines = []
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    kw = dict(every_s=10.0, batch_size=64, run_steps_left=15)
    assert isinstance(Progress(lines.append).bar(12, 0, "epoch 1/1", **kw), StepLines)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    bar = Progress(lines.append).bar(12, 0, "epoch 1/1", **kw)
    assert not isinstance(bar, StepLines)
    bar.update(1, lambda: 0.5)
    bar.close()
    assert lines == []


def test_a_loss_far_above_its_start_warns_once_and_the_run_goes_on(tmp_path):
    """LeNet-5 with Adam at lr 1e6 never reaches NaN (tanh saturates, Adam bounds each step):
    it trains on at a huge loss, warned about once, in the log and in summary.json."""
    result = run_cli("train", "--lr", "1e6", "--epochs", 2, "--workdir", tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    warned = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1, result.stdout
    assert "over 100x its first value" in warned[0] and "(epoch 1)" in warned[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["warnings"] == [warned[0].removeprefix("warning: ")]


_FULL_DISK = """
mount -t tmpfs -o size=1200k tmpfs "$1" || exit 97
shift
"$@" > first.out 2> first.err; echo $? > first.rc
mount -o remount,size=20m "$MNT"
"$@" > second.out 2> second.err; echo $? > second.rc
cp "$MNT/run/summary.json" "$MNT/run/metrics.jsonl" .
"""


@pytest.mark.slow  # three two-epoch runs (with the module's finished run)
def test_a_full_disk_during_a_save_is_one_line_and_the_same_command_resumes(tmp_path, finished):
    """A 1.2 MB tmpfs holds the first checkpoint (~0.75 MB) but not the second: the run stops
    at its save in one line, exit 1; with space freed the same command ends as the
    uninterrupted run did."""
    if subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here: a small tmpfs cannot be mounted")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = command("train", "--epochs", 2, "--workdir", mnt / "run")
    result = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", _FULL_DISK, "sh", str(mnt), *args],
        cwd=tmp_path,
        env={**os.environ, "MNT": str(mnt), "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    first = subprocess.CompletedProcess(
        args, int((tmp_path / "first.rc").read_text()), "", (tmp_path / "first.err").read_text()
    )
    line = _one_error_line(first, 1)
    assert line.endswith(
        f"no space left on device while saving checkpoint 38 in {mnt / 'run' / 'checkpoints'}; "
        "free space and run the same command to resume"
    ), line
    assert len(first.stderr.strip().splitlines()) <= 3, first.stderr
    assert (tmp_path / "second.rc").read_text().strip() == "0", (
        tmp_path / "second.err"
    ).read_text()
    assert "resuming from step 19" in (tmp_path / "second.out").read_text()
    reference, summary = finished
    resumed = json.loads((tmp_path / "summary.json").read_text())
    for key in ("test_loss", "test_accuracy", "best_step", "steps", "epochs", "status"):
        assert resumed[key] == summary[key], key
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in records] == [
        (r["step"], r["train_loss"], r["val_loss"]) for r in expected
    ]


@pytest.mark.parametrize("how", ["--data-dir", "TFDS_DATA_DIR"])
def test_the_embedded_digits_are_prepared_where_the_user_says(tmp_path, how):
    data_dir, home = tmp_path / "tfds", tmp_path / "home"
    home.mkdir()
    env = {**FIRST_STEP, "HOME": str(home)}
    args = ["train", "--workdir", tmp_path / "run"]
    if how == "--data-dir":
        args += ["--data-dir", data_dir]
    else:
        env["TFDS_DATA_DIR"] = str(data_dir)
    result = run_cli(*args, env=env, timeout=600)
    assert "params" in result.stdout, result.stderr[-2000:]  # it got as far as training
    assert list((data_dir / "sklearn_digits").rglob("*.array_record*"))
    assert not (home / "tensorflow_datasets").exists()


def test_console_main_relaunches_before_anything_else(monkeypatch):
    """``cnn-jax`` re-executes itself for glibc's huge pages (cnn_jax.runtime.relaunch) before
    it installs its signal handlers or parses anything; ``test_runtime`` tests relaunch."""
    from cnn_jax import cli, runtime

    calls = []
    monkeypatch.setattr(runtime, "relaunch", lambda: calls.append("relaunch"))
    monkeypatch.setattr(signal, "signal", lambda *args: calls.append("signal"))
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 0)
    with pytest.raises(SystemExit) as exit_:
        cli.console_main()
    assert exit_.value.code == 0
    assert calls[0] == "relaunch" and calls[-1] == "main" and "signal" in calls
