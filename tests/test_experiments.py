"""Experiment scripts run end to end in their --quick mode and write what they promise."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_functional_vs_stateful_quick(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "functional_vs_stateful.py"), "--quick",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    entry = results["models"]["cifar_cnn"]
    table = entry["agreement"]["table"]
    # Same initialisation, same batches, dropout off: the styles agree to float32 rounding on
    # these few steps, and each is as close to float64 torch as torch's own float32 run.
    for pair in ("functional vs nnx", "functional vs torch", "nnx vs torch"):
        assert table[pair]["loss_rel_diff_at"]["1"] < 1e-5, pair
        assert table[pair]["final_params_rel_distance"] < 1e-5, pair
    own = table["torch vs torch_float64"]["final_params_rel_distance"]
    for style in ("functional", "nnx"):
        assert table[f"{style} vs torch_float64"]["final_params_rel_distance"] < 10 * own + 1e-7
    assert set(entry["dropout"]) == {"functional", "torch", "nnx"}
    assert all(len(v["runs"]) == 2 for v in entry["dropout"].values())
    assert {"functional@32", "torch@32", "nnx@32"} == set(entry["cost"])
    assert all(v["step_s"] > 0 and v["peak_rss_mb"] > 0 for v in entry["cost"].values())
    assert (tmp_path / "agreement.png").stat().st_size > 10_000
