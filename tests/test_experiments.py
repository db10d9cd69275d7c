"""Experiment scripts run end to end in their --quick mode and write what they promise."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

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
    assert set(results["parts"]) == {"agreement", "dropout", "cost"}

    # Re-measuring one part keeps the others, each with the command that measured it.
    again = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "functional_vs_stateful.py"), "--quick",
         "--parts", "cost", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["models"]["cifar_cnn"]["agreement"] == entry["agreement"]
    assert merged["models"]["cifar_cnn"]["dropout"] == entry["dropout"]
    assert "--parts cost" in merged["parts"]["cost"]["command"]
    assert "--parts" not in merged["parts"]["agreement"]["command"]


def test_bench_vs_torch_quick(tmp_path):
    """The speed benchmark runs side by side and writes its numbers; the ratio is what the
    medians say (no claim about its size here: timings are the full run's, on a named CPU)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench_vs_torch.py"), "--quick", "--memory",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["command"].endswith("--quick --memory --out " + str(tmp_path))
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["isa"]
    (row,) = saved["results"]
    assert (row["model"], row["batch_size"]) == ("lenet5", 32)
    blocks = row["block_times_s"]
    assert [len(b) for b in blocks["cnn_jax"]] == [2, 2] == [len(b) for b in blocks["torch"]]
    steps = {k: sorted(t for b in v for t in b) for k, v in blocks.items()}
    assert row["step_s"]["cnn_jax"] == (steps["cnn_jax"][1] + steps["cnn_jax"][2]) / 2
    assert row["ratio_torch_over_jax"] == row["step_s"]["torch"] / row["step_s"]["cnn_jax"]
    lo, hi = row["ratio_range"]
    assert 0 < lo <= hi
    assert all(v > 100 for v in row["peak_rss_mb"].values())  # MB: a framework was loaded
    assert "| lenet5 | 32 |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "ratios.png").stat().st_size > 10_000


def test_bench_vs_torch_conv_budget_finds_every_convolution(tmp_path):
    """--conv-budget times LeNet-5's three convolutions in both frameworks (the first without
    its input gradient, which a train step never computes) and sums them per framework."""
    path = ROOT / "experiments" / "bench_vs_torch.py"
    spec = importlib.util.spec_from_file_location("bench_vs_torch", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    found = bench.conv_layers("lenet5", 4)
    assert [(shape, conv.out_channels) for shape, conv in found] == [
        ((4, 32, 32, 1), 6), ((4, 14, 14, 6), 16), ((4, 5, 5, 16), 120)
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench_vs_torch.py"), "--quick",
         "--conv-budget", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "results.json").read_text())["results"]
    layers = row["conv_budget"]["layers"]
    assert [sorted(layer["ms"]["torch"]) for layer in layers] == [
        ["dW", "fwd"], ["dW", "dX", "fwd"], ["dW", "dX", "fwd"]
    ]  # fmt: skip
    for label in ("cnn_jax", "torch"):
        parts = [ms for layer in layers for ms in layer["ms"][label].values()]
        assert all(ms > 0 for ms in parts)
        assert row["conv_budget"]["conv_s"][label] == pytest.approx(sum(parts) / 1e3)
    assert "1.5× budget" in (tmp_path / "table.md").read_text()


# ---------------------------------------------------------------------------------------------
# The course experiments (experiments/course/): each runs in --quick mode, in this process, and
# writes results.json, table.md and its figures; a few claims that hold even at quick sizes are
# checked, the rest is the full run's (experiments/README.md).
# ---------------------------------------------------------------------------------------------

COURSE = ROOT / "experiments" / "course"
FIGURES = {
    "filters_and_feature_maps": ["photo_edges.png", "filters.png", "feature_maps.png"],
    "mlp_vs_cnn": ["accuracy_vs_shift.png", "shifted_examples.png"],
    "regularisation": ["curves.png", "test_accuracy.png"],
    "optimisers": ["optimisers.png"],
    "batch_norm": ["batch_norm.png"],
    "activations": ["gradient_norms.png", "accuracy.png"],
    "early_stopping": ["curves_seed0.png"],
    "transfer_learning": ["transfer.png"],
    "spurious_cue": ["saliency.png", "accuracy.png"],
    "gap_vs_flatten": ["curves.png"],
}


def _run_course(name, tmp_path, seeds=1, dataset="digits"):
    import importlib

    sys.path.insert(0, str(COURSE))
    try:
        module = importlib.import_module(name)
        results = module.main(
            ["--quick", "--seeds", str(seeds), "--dataset", dataset, "--out", str(tmp_path)]
        )
    finally:
        sys.path.remove(str(COURSE))
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["meta"]["command"] == f"python experiments/course/{name}.py --quick"
    assert stored["meta"]["runs"] >= 1 and "cores" in stored["meta"]["machine"]
    assert (tmp_path / "table.md").read_text().startswith(("|", "Validation", "Gradient", "Test"))
    for figure in FIGURES[name]:
        assert (tmp_path / figure).stat().st_size > 2_000, figure
    return results, stored


def test_every_course_experiment_is_tested():
    scripts = {p.stem for p in COURSE.glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(FIGURES)


def test_course_filters_and_feature_maps(tmp_path):
    _, r = _run_course("filters_and_feature_maps", tmp_path)
    fields = [row[3] for row in r["receptive_field"]]
    assert fields[0] == 3 and fields == sorted(fields)  # grows with depth, 3x3 at the first conv
    assert r["photo"]["response_correlation"] < 0.5  # the two orientations answer different edges
    assert 0 < r["edge_likeness"]["trained"][0] <= 1


def test_course_mlp_vs_cnn(tmp_path):
    _, r = _run_course("mlp_vs_cnn", tmp_path)
    assert r["params"]["MLP"] > 10 * r["params"]["CNN, global avg pool"]
    assert r["shifts"][0] == 0
    assert all(len(runs[0]) == len(r["shifts"]) for runs in r["accuracy_vs_shift"].values())


def test_course_regularisation(tmp_path):
    _, r = _run_course("regularisation", tmp_path)
    assert set(r["methods"]) == {"none", "dropout 0.5"}
    assert all(len(m["val_accuracy"][0]) == r["epochs"] for m in r["methods"].values())


def test_course_optimisers(tmp_path):
    _, r = _run_course("optimisers", tmp_path)
    assert set(r["best_lr"]) == {"SGD", "Adam"}
    assert all(r["best_lr"][k] in r["lrs"] for k in r["best_lr"])


def test_course_batch_norm(tmp_path):
    _, r = _run_course("batch_norm", tmp_path)
    assert set(r["runs"]) == {"no BatchNorm", "BatchNorm"}


def test_course_activations(tmp_path):
    _, r = _run_course("activations", tmp_path)
    layers = r["layers"]
    ratio = {
        act: r["gradient_norms_init"][act][0][layers[0]]
        / r["gradient_norms_init"][act][0][layers[-1]]
        for act in ("relu", "tanh", "sigmoid")
    }
    # At initialisation sigmoid's gradients vanish towards the input, by orders of magnitude more
    # than ReLU's (measured ~1e-6 vs ~1e-1): a property of the initial network, not of training.
    assert ratio["sigmoid"] < 1e-2 * ratio["relu"], ratio


def test_course_early_stopping(tmp_path):
    _, r = _run_course("early_stopping", tmp_path)
    s = r["seeds"][0]
    assert 1 <= s["best_checkpoint_epoch"] <= s["stopped_at_epoch"] <= r["epochs"]
    assert len(s["test_curve"]) == r["epochs"]  # every epoch's checkpoint was evaluated
    assert s["best_test_accuracy"] == max(s["test_curve"])


def test_course_transfer_learning(tmp_path):
    _, r = _run_course("transfer_learning", tmp_path)
    assert set(r["test_accuracy"]) == {
        "frozen backbone + new head",
        "fine-tune all",
        "from scratch",
    }


def _register_rgb_digits() -> str:
    """A three-channel dataset by name, as a prepared tfds CIFAR-10 would be given."""
    import numpy as np

    from cnn_jax import data

    def rgb(**kw):
        digits = data.load("digits", **kw)
        arrays = {k: (np.repeat(s.images, 3, axis=-1), s.labels) for k, s in digits.items()}
        return data.from_arrays("rgb-digits", arrays, 10)

    data.register("test-rgb-digits", rgb, replace=True)
    return "test-rgb-digits"


def test_course_spurious_cue(tmp_path):
    """On an RGB dataset (--dataset: any dataset load() knows): the cue is drawn on every
    channel, and the script's channel handling is exercised."""
    _, r = _run_course("spurious_cue", tmp_path, dataset=_register_rgb_digits())
    assert r["meta"]["dataset"] == "test-rgb-digits"
    for setup in r["setups"].values():
        assert 0 <= setup[0]["striped_called_cue_class"] <= 1
        assert 0 < setup[0]["saliency_on_background"] < 1


def test_course_gap_vs_flatten(tmp_path):
    _, r = _run_course("gap_vs_flatten", tmp_path)
    # Heads on 64 channels, 10 classes: 64*10+10 with GAP; 1024*128+128 + 128*10+10 flattened.
    assert r["params"]["global average pooling"]["head"] == 650
    assert r["params"]["flatten + dense"]["head"] == 132_490


def _bench_input_pipeline(tmp_path, *parts):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench_input_pipeline.py"), "--quick",
         "--out", str(tmp_path), "--parts", *parts],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text()), (tmp_path / "table.md").read_text()


def test_bench_input_pipeline_quick_decode(tmp_path):
    """The decode benchmark runs both pipelines on one generated folder and fills in the
    cores an A100 ResNet-50 step needs from its own per-worker rate."""
    saved, table = _bench_input_pipeline(tmp_path, "decode")
    decode = saved["parts"]["decode"]
    assert decode["command"].endswith("--parts decode") and decode["commit"]
    assert saved["machine"]["cpu"] and saved["versions"]["grain"] and saved["versions"]["torch"]
    (row,) = decode["rows"]
    assert row["workers"] == 1
    for name in ("cnn_jax", "cnn_jax_full_decode", "cnn_jax_threads", "torchvision"):
        assert row[name]["images_per_s"] > 0 and row[name]["startup_s"] > 0
    a100 = decode["a100_resnet50"]
    assert a100["cnn_jax_images_per_s_per_worker"] == row["cnn_jax"]["images_per_s"]
    assert a100["workers_needed"] == -(-2500 // a100["cnn_jax_images_per_s_per_worker"])
    assert "| 1 |" in table and "worker processes (cores)" in table


def test_bench_input_pipeline_quick_refuses_the_results_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench_input_pipeline.py"), "--quick",
         "--out", str(ROOT / "experiments" / "results" / "bench_input_pipeline")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and "--quick numbers are not results" in result.stderr


@pytest.mark.slow
def test_bench_input_pipeline_quick_memory_and_host_path(tmp_path):
    saved, table = _bench_input_pipeline(tmp_path, "memory", "host-path")
    runs = saved["parts"]["memory"]["runs"]
    assert set(runs) == {"40", "120"}
    assert all(r["peak_rss_mb"] > 100 and r["peak_tree_rss_mb"] >= r["peak_rss_mb"]
               for r in runs.values())  # fmt: skip
    assert "data_stream=always" in runs["120"]["command"]
    assert [r["model"] for r in saved["parts"]["host-path"]["rows"]] == ["lenet5", "cifar_cnn"]
    assert "## memory" in table and "## host-path" in table
