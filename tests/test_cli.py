"""The command line as a user meets it, each behaviour checked on a real ``cnn-jax`` process:
help, ``--debug``, settings refused before any work, the work-directory lock, read-only
``evaluate``, progress lines off a terminal, the divergence warning and a full disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cnn_jax.testing.cli import run_cli

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
