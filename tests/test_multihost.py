"""Multi-process training for real: two ``cnn-jax train`` processes joined on loopback by
``jax.distributed`` (Gloo collectives on CPU), ``--parallel sharded`` over every global device.

The global batch is the same as on one process, so a 2-process run must end where the
single-process run ends (test loss within 1e-5), also after both processes were killed mid-run
and restarted; only process 0 writes the run's files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

ARGS = ("train", "--epochs", "3", "--parallel", "sharded")
_CLI = "import sys; from cnn_jax.cli import console_main; sys.argv[0] = 'cnn-jax'; console_main()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices_per_process: int = 1, failpoint: str = "") -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
    env.pop("CNN_JAX_FAILPOINT", None)
    if failpoint:
        env["CNN_JAX_FAILPOINT"] = failpoint
    return env


def _two_processes(workdir, *extra, env, env1=None) -> list[subprocess.CompletedProcess]:
    """Both processes of one run (process 1 with ``env1`` when given); returns when both have
    exited (a hang fails the test)."""
    join = ("--coordinator-address", f"127.0.0.1:{_free_port()}", "--num-processes", "2")
    command = (sys.executable, "-c", _CLI, *ARGS, "--workdir", str(workdir), *extra, *join)
    procs = [
        subprocess.Popen(
            [*command, "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env1 if i == 1 and env1 is not None else env,
        )
        for i in range(2)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _single(workdir, *extra) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", _CLI, *ARGS, "--workdir", str(workdir), *extra],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(2),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _summary(workdir) -> dict:
    return json.loads((workdir / "summary.json").read_text())


def _records(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run in one process over 2 devices."""
    workdir = tmp_path_factory.mktemp("single")
    _single(workdir, "--devices", "2")
    return workdir


def test_two_processes_train_like_one(tmp_path, reference):
    workdir = tmp_path / "run"
    first, second = _two_processes(workdir, env=_env(1))
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 cpu device(s) in 2 processes" in first.stdout
    assert "epoch" not in second.stdout  # only process 0 logs
    summary, expected = _summary(workdir), _summary(reference)
    assert summary["processes"] == 2 and summary["device"].startswith("2x")
    assert abs(summary["test_loss"] - expected["test_loss"]) <= 1e-5
    assert summary["test_examples"] == expected["test_examples"] == 270  # each example once
    records, expected_records = _records(workdir), _records(reference)
    assert [r["epoch"] for r in records] == [1, 2, 3]  # written once, by process 0
    for got, want in zip(records, expected_records, strict=True):
        assert abs(got["val_loss"] - want["val_loss"]) <= 1e-5
    assert (workdir / "curves.png").exists()


@pytest.mark.slow  # four two-process runs
def test_killed_processes_resume_to_the_same_result(tmp_path, reference):
    """Both processes are SIGKILLed after epoch 3's record (checkpoints 19 and 38 complete,
    38 + 19 not yet saved), then restarted: the run resumes from step 38 in both and ends
    where the uninterrupted single-process run ends. Two devices per process (a mesh of 4)
    and batches read on the host by each process (grain), not gathered on the device."""
    workdir = tmp_path / "run"
    extra = ("--set", "data_on_device=False")
    killed = _two_processes(workdir, *extra, env=_env(2, failpoint="record:3"))
    assert killed[0].returncode == -9, killed[0].stderr[-3000:]
    assert not (workdir / "summary.json").exists()
    resumed = _two_processes(workdir, *extra, env=_env(2))
    for r in resumed:
        assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step 38" in resumed[0].stdout
    assert "4 cpu device(s) in 2 processes, data on host" in resumed[0].stdout
    summary = _summary(workdir)
    assert summary["steps"] == 57 and summary["processes"] == 2
    assert abs(summary["test_loss"] - _summary(reference)["test_loss"]) <= 1e-5
    assert [r["epoch"] for r in _records(workdir)] == [1, 2, 3]


def test_partial_multi_process_flags_are_one_line_errors(capsys, tmp_path):
    from cnn_jax import cli

    code = cli.main(["train", "--num-processes", "2", "--workdir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "also give --coordinator-address, --process-id" in err
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.slow  # two two-process runs and their single-process reference
def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes(tmp_path):
    """SIGTERM (a scheduler's preemption notice) reaches process 1 only, at its step 5: JAX's
    preemption service tells process 0, both stop after the same step and save it together,
    exit 143, and the restarted pair ends where the uninterrupted run ends.

    The notice takes a fraction of a second to reach the other process, which on a fast
    machine is dozens of these tiny steps; the run is 8 epochs (152 steps) so that the agreed
    step still leaves steps to resume."""
    epochs = ("--epochs", "8")
    reference = tmp_path / "single"
    _single(reference, "--devices", "2", *epochs)
    workdir = tmp_path / "run"
    stopped = _two_processes(workdir, *epochs, env=_env(1), env1=_env(1, failpoint="step:5:term"))
    codes = [r.returncode for r in stopped]
    assert codes == [143, 143], [r.stderr[-2000:] for r in stopped]
    line = next(x for x in stopped[0].stderr.splitlines() if "stopped by SIGTERM" in x)
    step = int(line.split("at step ")[1].split(";")[0])
    assert 5 <= step < 152 and (workdir / "checkpoints" / str(step)).is_dir()
    resumed = _two_processes(workdir, *epochs, env=_env(1))
    for r in resumed:
        assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step {step}" in resumed[0].stdout
    assert _summary(workdir)["steps"] == 152
    assert abs(_summary(workdir)["test_loss"] - _summary(reference)["test_loss"]) <= 1e-5
