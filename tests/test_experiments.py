"""Experiment scripts run end to end in their --quick mode and write what they promise: their
numbers, with the provenance experiments.record adds, and a table.md rendered from them."""

from __future__ import annotations

import importlib
import inspect
import json
import pathlib
import re
import subprocess
import sys

import pytest

from cnn_jax.models import registry
from experiments import record

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m experiments.<module> args`` from the repository root, as the docs run it."""
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip


def _stored(out: pathlib.Path, module: str, *args: str) -> dict:
    """results.json of a run, after checking its provenance names the command that made it."""
    saved = json.loads((out / "results.json").read_text())
    p = saved["provenance"]
    assert p["command"] == " ".join(["python", "-m", f"experiments.{module}", *args])
    assert p["machine"]["cores"] >= 1 and p["machine"]["isa"]
    assert set(p["versions"]) >= {"jax", "jaxlib", "flax", "optax", "torch"}
    assert p["runtime"]["xla"]["reason"] and p["runtime"]["malloc"]["reason"]
    # What the run computed with: cnn_jax.runtime.apply() had run (record.provenance applies it).
    assert "not called" not in p["runtime"]["xla"]["reason"] + p["runtime"]["malloc"]["reason"]
    assert p["wall_s"] >= 0 and p["started"] <= p["finished"]
    assert (out / "table.md").read_text().strip()
    return saved


def test_quick_runs_never_write_into_the_committed_results(tmp_path):
    """--quick without --out goes to a new temporary folder; --out wins; a full run without
    --out goes to experiments/results/<name>."""
    quick = record.out_dir(None, "bench_x", quick=True)
    assert record.RESULTS not in quick.parents and quick.is_dir()
    quick.rmdir()
    assert record.out_dir(tmp_path / "o", "bench_x", quick=True) == tmp_path / "o"
    assert (tmp_path / "o").is_dir()


def test_every_script_chooses_its_folder_through_record():
    """No script builds a default path into experiments/results/ itself: each goes through
    record.out_dir, which keeps --quick runs out of it."""
    # flax_peers.py holds networks bench_vs_torch imports; it writes nothing.
    scripts = [p for p in (ROOT / "experiments").rglob("*.py")
               if p.parent.name != "report"
               and p.name not in ("__init__.py", "record.py", "flax_peers.py")]  # fmt: skip
    assert len(scripts) >= 16
    for path in scripts:
        text = path.read_text()
        assert not re.search(r'/ "results"|default="experiments/results', text), path
        if path.name != "_common.py" and path.parent.name == "course":
            assert "C.parse(" in text, path
        elif path.name != "_common.py":
            # record.step_bench is the shared main of the step-variant benches; it calls
            # out_dir and write itself (checked below).
            assert ("record.out_dir(" in text and "record.write(" in text) or (
                "record.step_bench(" in text
            ), path
    step_bench = inspect.getsource(record.step_bench)
    assert "out_dir(args.out, name, args.quick)" in step_bench and "write(out," in step_bench


@pytest.mark.slow  # compiles every style's step for three models
def test_functional_vs_stateful_quick(tmp_path):
    result = _run("functional_vs_stateful", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    results = _stored(tmp_path, "functional_vs_stateful", "--quick", "--out", str(tmp_path))
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

    assert "| cifar_cnn | functional vs nnx |" in (tmp_path / "table.md").read_text()

    # Re-measuring one part keeps the others, each with the command that measured it.
    again = _run("functional_vs_stateful", "--quick", "--parts", "cost", "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["models"]["cifar_cnn"]["agreement"] == entry["agreement"]
    assert merged["models"]["cifar_cnn"]["dropout"] == entry["dropout"]
    assert "--parts cost" in merged["parts"]["cost"]["command"]
    assert "--parts" not in merged["parts"]["agreement"]["command"]


@pytest.mark.slow  # compiles and times several models' steps in both frameworks
def test_bench_vs_torch_quick(tmp_path):
    """The speed benchmark runs side by side and writes its numbers; the ratio is what the
    medians say (no claim about its size here: timings are the full run's, on a named CPU)."""
    result = _run("bench_vs_torch", "--quick", "--memory", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_vs_torch", "--quick", "--memory", "--out", str(tmp_path))
    assert saved["settings"]["compute_dtype"] == "float32" and saved["settings"]["torch_threads"]
    # On the CPU torch steps on the CPU in float32, and the peaks are the processes' (RSS).
    assert saved["settings"]["torch_device"] == "cpu" == saved["settings"]["device_kind"]
    assert saved["settings"]["torch_dtype"] == "float32"
    (row,) = saved["results"]
    assert (row["model"], row["batch_size"]) == ("lenet5", 32)
    blocks = row["block_times_s"]
    assert [len(b) for b in blocks["cnn_jax"]] == [2, 2] == [len(b) for b in blocks["torch"]]
    steps = {k: sorted(t for b in v for t in b) for k, v in blocks.items()}
    assert row["step_s"]["cnn_jax"] == (steps["cnn_jax"][1] + steps["cnn_jax"][2]) / 2
    assert row["ratio_torch_over_jax"] == row["step_s"]["torch"] / row["step_s"]["cnn_jax"]
    lo, hi = row["ratio_range"]
    assert 0 < lo <= hi
    # The plain flax.linen peer steps in the same blocks; its ratio is what the medians say.
    assert [len(b) for b in blocks["flax"]] == [2, 2]
    assert row["ratio_flax_over_jax"] == row["step_s"]["flax"] / row["step_s"]["cnn_jax"]
    flo, fhi = row["flax_ratio_range"]
    assert 0 < flo <= fhi
    assert "plain flax / cnn_jax" in (tmp_path / "table.md").read_text()
    assert set(row["peak_rss_mb"]) == {"cnn_jax", "torch"}
    assert all(v > 100 for v in row["peak_rss_mb"].values())  # MB: a framework was loaded
    assert "peak_device_mb" not in row
    assert "| lenet5 | 32 |" in (tmp_path / "table.md").read_text()
    assert "peak RSS MB (cnn_jax / torch)" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "ratios.png").stat().st_size > 10_000


def test_bench_vs_torch_times_torch_on_jaxs_device(monkeypatch):
    """torch steps where JAX steps: the CPU beside the CPU, CUDA beside a GPU; a GPU JAX with a
    torch that has no CUDA is refused rather than timed against a CPU."""
    import torch

    from experiments import bench_vs_torch as bench

    assert bench.torch_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="has no CUDA"):
        bench.torch_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench.torch_device("gpu") == "cuda"


def test_bench_vs_torch_refuses_cpu_only_measurements_off_the_cpu(monkeypatch, capsys):
    """--roofline and --conv-budget time the CPU's matmul and torch's CPU convolutions: with
    JAX on a GPU they would be numbers about another machine, so they are refused."""
    from experiments import bench_vs_torch as bench

    monkeypatch.setattr(bench, "torch_device", lambda backend: "cuda")
    for flag in ("--roofline", "--conv-budget"):
        with pytest.raises(SystemExit) as exit_:
            bench.main(["--quick", flag])
        assert exit_.value.code == 2
        assert "measure the CPU" in capsys.readouterr().err


def test_bench_vs_torch_torch_bfloat16_is_autocast(monkeypatch):
    """--torch-dtype bfloat16 runs torch's forward pass and loss under torch.autocast in
    bfloat16 (float32 parameters and AdamW, as cnn_jax's compute_dtype); float32 runs none; any
    other dtype is refused."""
    import torch

    from experiments import bench_vs_torch as bench

    entered = []
    real = torch.autocast

    def recording(device_type, dtype=None, **kwargs):
        entered.append((device_type, dtype))
        return real(device_type, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "autocast", recording)
    bench.torch_trainer("lenet5", 4, compiled=False)()
    assert entered == []
    bench.torch_trainer("lenet5", 4, compiled=False, dtype="bfloat16")()
    assert entered == [("cpu", torch.bfloat16)]
    with pytest.raises(ValueError, match="'float32' or 'bfloat16'"):
        bench.torch_trainer("lenet5", 4, compiled=False, dtype="float16")


def test_bench_vs_torch_gpu_table_names_the_device_and_its_memory():
    """A GPU run's table says which device both frameworks stepped on, torch's dtype, and the
    device memory each framework's allocator held at most (the memory that limits a batch)."""
    from experiments import bench_vs_torch as bench

    stored = json.loads((record.RESULTS / "bench_vs_torch" / "results.json").read_text())
    stored["settings"].update(
        torch_device="cuda", torch_dtype="bfloat16", device_kind="NVIDIA H200",
        compute_dtype="bfloat16",
    )  # fmt: skip
    for r in stored["results"]:
        r["peak_device_mb"] = {"cnn_jax": 1234.4, "torch": 567.6}
    text = bench.tables(stored)
    assert "on NVIDIA H200 (torch on cuda)" in text
    assert "compute dtype bfloat16 (torch: bfloat16)" in text
    assert "peak device MB (cnn_jax / torch)" in text and "| 1234 / 568 |" in text
    assert "peak RSS MB" not in text


def test_a_shipped_copy_records_the_commit_it_names(monkeypatch, tmp_path):
    """A tree shipped to another machine records the commit named in CNN_JAX_SOURCE_COMMIT
    (whether it differs from it is unknown), over git's answer too, since a .git beside a copy
    can be another tree's; without it, a tree outside git records none; a malformed one is
    refused."""
    monkeypatch.delenv(record.SOURCE_COMMIT, raising=False)
    assert record.git_commit()["commit"] is not None  # this checkout
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv(record.SOURCE_COMMIT, sha)
    assert record.git_commit() == {"commit": sha, "dirty": None}
    monkeypatch.setattr(record, "ROOT", tmp_path)  # not a git checkout
    assert record.git_commit() == {"commit": sha, "dirty": None}
    monkeypatch.delenv(record.SOURCE_COMMIT)
    assert record.git_commit() == {"commit": None, "dirty": None}
    monkeypatch.setenv(record.SOURCE_COMMIT, "HEAD")
    with pytest.raises(ValueError, match="not a full 40-digit commit hash"):
        record.git_commit()


@pytest.mark.slow  # googlenet compiled twice (side by side, and alone for its peak memory)
def test_bench_vs_torch_zoo_quick(tmp_path):
    """--zoo: a torchvision family side by side with torchvision's own code, the auxiliary
    heads' losses on torch's side too, and its size as torchvision publishes it."""
    from experiments import bench_vs_torch as bench

    families = bench.zoo_models()
    assert {"resnet18", "mobilenet_v2", "convnext_tiny", "inception_v3"} <= set(families)
    assert len(families) == len({registry.spec(m).family for m in families})
    assert bench.input_shape("inception_v3") == (75, 75, 3)  # its minimum, above 64
    # --size: both frameworks, and each one's fresh memory process, at that image size.
    args = ("--zoo", "--quick", "--memory", "--models", "googlenet", "--size", "48")
    args += ("--out", str(tmp_path))
    result = _run("bench_vs_torch", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = _stored(tmp_path, "bench_vs_torch", *args)
    (row,) = stored["results"]
    assert (row["model"], row["batch_size"], row["input_size"]) == ("googlenet", 2, 48)
    assert stored["settings"]["size"] == 48
    # torchvision's published googlenet: 6,624,904 parameters, 1.498 GMACs at 224x224.
    assert row["published"] == {"params_m": 6.624904, "gmacs": 1.498376192, "crop": 224}
    table = (tmp_path / "table.md").read_text()
    assert "| googlenet | 6.6 | 1.50 (224) | 48x48, batch 2 |" in table
    assert all(v > 100 for v in row["peak_rss_mb"].values())  # MB: a framework was loaded
    assert (tmp_path / "ratios.png").stat().st_size > 10_000


def test_bench_vs_torch_zoo_times_resnet18_as_its_torchvision_family():
    """resnet18 is a course model (32x32) and torchvision's ResNet family's first model: with
    --zoo it is timed at the zoo's size on both sides, and its convolutions are found there."""
    from experiments import bench_vs_torch as bench

    assert bench.input_shape("resnet18") == (32, 32, 3)
    assert bench.input_shape("resnet18", zoo=True) == (64, 64, 3)
    assert bench.zoo_spec("resnet18") == {"kwargs": {}, "size": 64}
    # --size 224: the ImageNet size; a model's minimum wins over a smaller one.
    assert bench.input_shape("resnet18", zoo=224) == (224, 224, 3)
    assert bench.zoo_spec("inception_v3", 32)["size"] == 75
    course, zoo = bench.conv_layers("resnet18", 2), bench.conv_layers("resnet18", 2, zoo=True)
    assert (course[0][0], zoo[0][0]) == ((2, 32, 32, 3), (2, 64, 64, 3))


def test_bench_vs_torch_size_is_a_zoo_side_run():
    """--size needs --zoo, and its own --out: it never writes over the zoo table."""
    for args, message in (
        (("--size", "224"), "--size is a positive image size, for --zoo runs"),
        (("--zoo", "--size", "224"), "a --size run is a side run: give it its own --out"),
    ):
        result = _run("bench_vs_torch", *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_bench_vs_torch_zoo_takes_every_width_of_a_family():
    """--zoo times each family's first model by default and accepts any registered torchvision
    model by name (resnet50 beside resnet18); a name it does not know is refused, listing them."""
    from experiments import bench_vs_torch as bench

    firsts, every = bench.zoo_models(), bench.zoo_models(every_width=True)
    assert "resnet18" in firsts and "resnet50" not in firsts
    assert set(firsts) < set(every) and {"resnet50", "convnext_base", "regnet_y_16gf"} <= set(every)
    result = _run("bench_vs_torch", "--zoo", "--models", "resnet5", "--out", "unused")
    assert result.returncode == 2 and "unknown model(s) ['resnet5']" in result.stderr
    assert "'resnet50'" in result.stderr, result.stderr[-2000:]
    result = _run("bench_vs_torch", "--models", "resnet50")
    assert result.returncode == 2 and "unknown model(s) ['resnet50']" in result.stderr


@pytest.mark.slow  # times each of resnet18's convolutions
def test_bench_vs_torch_conv_budget_finds_every_convolution(tmp_path):
    """--conv-budget times LeNet-5's three convolutions in both frameworks (the first without
    its input gradient, which a train step never computes) and sums them per framework."""
    from experiments import bench_vs_torch as bench

    found = bench.conv_layers("lenet5", 4)
    assert [(shape, conv.out_channels) for shape, conv in found] == [
        ((4, 32, 32, 1), 6), ((4, 14, 14, 6), 16), ((4, 5, 5, 16), 120)
    ]  # fmt: skip
    result = _run("bench_vs_torch", "--quick", "--conv-budget", "--out", str(tmp_path))
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


@pytest.mark.slow  # starts the command line several times
def test_bench_startup_quick(tmp_path):
    """One run of the default job for one epoch: its three times in order, and its summary."""
    result = _run("bench_startup", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_startup", "--quick", "--out", str(tmp_path))
    (run,) = saved["runs"]
    assert 0 < run["first_line_s"] <= run["first_epoch_s"] <= run["total_s"]
    assert run["summary"]["epochs"] == 1 and 0 <= run["summary"]["test_accuracy"] <= 1
    assert "| first epoch line |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow  # times every run-safety setting
def test_bench_run_safety_quick(tmp_path):
    result = _run("bench_run_safety", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_run_safety", "--quick", "--out", str(tmp_path))
    rates = saved["models"]["lenet5"]
    assert set(rates) == {"checked", "unbounded"}
    assert all(len(runs) == 1 and len(runs[0]) == 1 and runs[0][0] > 0 for runs in rates.values())
    from experiments.bench_run_safety import summary

    s = summary(rates)
    assert s["ratio"] == s["checked"] / s["unbounded"]


@pytest.mark.parametrize("parts", [False, True])
@pytest.mark.slow  # compiles every backend for every convolution
def test_bench_conv_backends_quick(tmp_path, parts):
    args = ["--quick", *(["--parts"] if parts else []), "--out", str(tmp_path)]
    result = _run("bench_conv_backends", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_conv_backends", *args)
    if parts:
        (row,) = saved["parts"]
        assert set(row["ms"]) == {f"{b} {p}" for b in ("xla", "im2col", "banded")
                                  for p in ("fwd", "dW", "dX")}  # fmt: skip
    else:
        (row,) = saved["layers"]
        assert set(row["ms"]) == {
            "xla",
            "im2col",
            "banded",
            "depthwise",
            "grouped",
            "unfolded",
            "taps",
            "auto",
        }
        assert set(saved["pools"][0]["ms"]) == {"cnn_jax", "xla"}
    assert all(ms > 0 for ms in row["ms"].values())


@pytest.mark.slow  # compiles BatchNorm and LayerNorm steps of several shapes
def test_bench_batch_norm_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_batch_norm", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_batch_norm", *args)
    (layer,) = saved["layers"]
    assert set(layer["ms"]) == {"rule", "autodiff", "torch"}
    assert [r["model"] for r in saved["steps"]] == ["resnet18"]
    assert all(ms > 0 for r in saved["layers"] + saved["steps"] for ms in r["ms"].values())
    assert "| resnet18 |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow  # compiles the GoogLeNet miniature's gradients twice, with a float64 twin
def test_float32_sums_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("float32_sums", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "float32_sums", *args)
    assert [r["form"] for r in saved["sums"]] == ["bare", "product"]
    for row in saved["sums"]:
        assert set(row["errors"]) == {"plain", "cnn_jax", "cascade", "torch"}
        assert all(0 < e < 1e-4 for e in row["errors"].values()), row
    (cost,) = saved["cost"]
    assert set(cost["ms"]) == {"plain", "cascade"} and all(ms > 0 for ms in cost["ms"].values())
    (network,) = saved["network"]
    assert set(network) == {"seed", "cnn_jax", "plain", "torch"}
    assert (tmp_path / "ratios.png").stat().st_size > 0
    assert "| 6x16x16x2 | 3072 | bare |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow  # compiles a mobilenet_v2 step three times
def test_bench_backward_rules_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_backward_rules", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_backward_rules", *args)
    (layer,) = saved["depthwise"]
    assert set(layer["ms"]) == {"chunked", "whole batch", "torch"} and layer["chunk"] == 4
    (mlp,) = saved["mlp"]
    assert set(mlp["ms"]) == {"rule", "erfc value", "autodiff", "torch"}
    (strided,) = saved["strided"]
    assert set(strided["ms"]) == {"phases", "strided slices", "torch"}
    (step,) = saved["steps"]
    assert step["model"] == "mobilenet_v2"
    assert set(step["ms"]) == {"library", "whole batch", "strided slices"}
    rows = saved["depthwise"] + saved["mlp"] + saved["strided"] + saved["steps"]
    assert all(ms > 0 for r in rows for ms in r["ms"].values())
    assert "| mobilenet_v2 |" in (tmp_path / "table.md").read_text()


def test_bench_backward_rules_undoes_what_its_variants_say():
    """``whole batch`` traces the depthwise weight gradient without the loop over chunks,
    ``autodiff GELU`` a GELU without the written-out derivative, ``erfc GELU`` one with that
    derivative but ``jax.nn.gelu``'s value (an ``erfc``, where the library's has none), and
    ``strided slices`` the
    input gradients of a strided grouped convolution and of max pooling with interior-padded
    pads; ``library`` has none of these."""
    import jax
    import jax.numpy as jnp

    import cnn_jax.functional as F
    from cnn_jax.testing.programs import interior_pads
    from experiments.bench_backward_rules import _undone

    x, k = jnp.ones((16, 16, 16, 96)), jnp.ones((96, 1, 7, 7))  # chunked by the rule
    grouped = jnp.ones((96, 8, 3, 3))
    for variant, loops, rule, erfc, interior in [
        ("library", True, True, False, False),
        ("whole batch", False, True, False, False),
        ("autodiff GELU", True, False, True, False),
        ("erfc GELU", True, True, True, False),
        ("strided slices", True, True, False, True),
    ]:
        with _undone(variant):  # a new function each time: make_jaxpr caches by function
            conv = lambda x, k: jax.vjp(lambda k: F.conv2d(x, k, padding=3, groups=96), k)[1](x)
            assert ("scan[" in str(jax.make_jaxpr(conv)(x, k))) is loops, variant
            gelu = str(jax.make_jaxpr(lambda v: F.gelu(v))(jnp.ones(3)))
            assert ("custom_jvp_call" in gelu) is rule, variant
            assert ("erfc" in gelu) is erfc, variant
            for layer in (
                lambda x: F.conv2d(x, grouped, stride=2, padding=1, groups=12),
                lambda x: F.max_pool2d(x, 3, 2, 1),
            ):
                g = jnp.ones(jax.eval_shape(layer, x).shape)
                grad = jax.make_jaxpr(lambda x, g, f=layer: jax.vjp(f, x)[1](g))(x, g)
                assert (interior_pads(grad.jaxpr) > 0) is interior, variant


# Compiles and times a resnet18 step per variant; the variants' programs are checked by
# test_bench_materialize_stores_what_its_variant_says in the default run.
@pytest.mark.slow
def test_bench_materialize_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_materialize", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_materialize", *args)
    (step,) = saved["steps"]
    assert (step["model"], step["size"], step["batch"], step["in_library"]) == (
        "resnet18",
        16,
        4,
        True,
    )
    assert set(step["ms"]) == {"stored", "recomputed"} and min(step["ms"].values()) > 0
    assert "| resnet18 | 16x16 | 4 |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow  # compiles and times a resnet18 step per norm
def test_bench_grad_norm_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_grad_norm", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_grad_norm", *args)
    (step,) = saved["steps"]
    assert (step["model"], step["size"], step["batch"]) == ("resnet18", 16, 4)
    assert set(step["ms"]) == {"library", "optax norm"} and min(step["ms"].values()) > 0
    assert step["parameters"] == 11_181_642  # torchvision's resnet18 with 10 classes
    # optax's norm adds temporaries (the squared gradients), the library's does not; whether
    # they raise the step's peak depends on what else is live then (here, with the large
    # kernels' gradients stored, they do not), so the library's is at most optax's
    assert 0 < step["temp_bytes"]["library"] <= step["temp_bytes"]["optax norm"]
    assert "| resnet18 | 16x16 | 4 | 11.2 |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow  # compiles and times a resnet18 step per kernel layout
def test_bench_kernel_layout_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_kernel_layout", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_kernel_layout", *args)
    (step,) = saved["steps"]
    assert (step["model"], step["size"], step["batch"]) == ("resnet18", 16, 4)
    assert set(step["ms"]) == {"step layout", "torch layout"}
    assert min(step["ms"].values()) > 0
    # resnet18's 3x3 and 7x7 kernels; not its three 1x1 downsampling kernels
    assert (step["kernels"], step["step_kernels"]) == (20, 17)
    assert "| resnet18 | 16x16 | 4 | 17 of 20 |" in (tmp_path / "table.md").read_text()


def test_bench_kernel_layout_prepares_what_its_variant_says():
    import jax
    import jax.numpy as jnp
    import optax

    from cnn_jax import train as T
    from cnn_jax.models import create
    from experiments.bench_kernel_layout import _prepare

    x = jnp.zeros((1, 16, 16, 3))
    state = T.create_train_state(create("resnet18"), optax.adamw(1e-3), jax.random.key(0), x)
    assert len(_prepare("step layout", state).step_layout) == 17
    assert _prepare("torch layout", state) is state


@pytest.mark.slow  # compiles and times a resnet18 step per AdamW
def test_bench_flat_adamw_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_flat_adamw", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_flat_adamw", *args)
    (step,) = saved["steps"]
    assert (step["model"], step["size"], step["batch"]) == ("resnet18", 16, 4)
    assert set(step["ms"]) == {"library", "flat AdamW"} and min(step["ms"].values()) > 0
    # the flat vector of every gradient (resnet18's 11.2M parameters) is a temporary of the
    # flat step by construction, far larger than what this tiny batch's step needs besides
    assert step["temp_bytes"]["flat AdamW"] > step["temp_bytes"]["library"] > 0
    assert "| resnet18 | 16x16 | 4 | 62 |" in (tmp_path / "table.md").read_text()


def test_bench_flat_adamw_variants_take_the_same_step():
    """Both variants start from the same state in the step's layout and update it alike: the
    flat vector changes how AdamW's arithmetic is laid out, not what it computes."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from cnn_jax import train as T
    from cnn_jax.models import create
    from cnn_jax.train import layout
    from experiments.bench_flat_adamw import _prepare

    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 1), np.float32))
    batch = {"image": x, "label": jnp.arange(4) % 10}
    state = T.create_train_state(create("lenet5"), optax.adamw(1e-3), jax.random.key(0), x[:1])
    library, flat = _prepare("library", state), _prepare("flat AdamW", state)
    expected = layout.step_kernel_paths(state.params) if layout.default_on() else ()
    assert library.step_layout == flat.step_layout == expected
    assert library.opt_state is not flat.opt_state
    # one vector of each moment, as long as all parameters together
    n = sum(p.size for p in jax.tree.leaves(state.params))
    assert sorted({leaf.size for leaf in jax.tree.leaves(flat.opt_state)}) == [1, n]
    step = jax.jit(T.make_train_step())
    for _ in range(2):
        library, _ = step(library, batch)
        flat, _ = step(flat, batch)
    for a, b in zip(jax.tree.leaves(library.params), jax.tree.leaves(flat.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # compiles lenet5's step four ways and times them beside torch's
def test_bench_steps_per_call_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_steps_per_call", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_steps_per_call", *args)
    (step,) = saved["steps"]
    assert (step["model"], step["batch"]) == ("lenet5", 4)
    labels = ["1 per call", "4 per call", "16 per call", "16 per call, loop"]
    assert saved["settings"]["variants"] == labels
    assert set(step["ms"]) == {*labels, "torch"} and min(step["ms"].values()) > 0
    assert "| lenet5 | 4 |" in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize("unrolled", [True, False])
def test_bench_steps_per_call_runs_k_steps_per_call(unrolled):
    """One call of k steps is k train steps: the step count advances by k and the parameters
    are those of k single steps on the same batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cnn_jax import train as T
    from experiments import bench_vs_torch
    from experiments.bench_steps_per_call import steps_per_call

    step = T.make_train_step()
    state, batch = bench_vs_torch.jax_state_and_batch("lenet5", 4)
    single = steps_per_call(step, 1, True)
    losses = []
    for _ in range(3):
        state, m = single(state, batch)
        losses.append(float(m["loss"]))
    batches = jax.tree.map(lambda a: jnp.stack([a] * 3), batch)
    fresh, _ = bench_vs_torch.jax_state_and_batch("lenet5", 4)
    called, metrics = steps_per_call(step, 3, unrolled)(fresh, batches)
    assert int(called.step) == int(state.step) == 3
    np.testing.assert_allclose(np.asarray(metrics["loss"]), losses, rtol=1e-5)
    # AdamW moves each parameter by about its learning rate (1e-3) a step, whatever the
    # gradient's size, so a rounding difference in a near-zero gradient (the loop is compiled
    # apart) can show at 1e-5; a step missing or repeated would show at 1e-3
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(called.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-4)


def test_bench_steps_per_call_refuses_a_count_that_does_not_divide_its_block():
    from experiments import bench_steps_per_call as bench

    with pytest.raises(ValueError, match="3 steps per call do not divide 16 steps"):
        bench.jax_programs("lenet5", 2, [("3 per call", 3, True)])


@pytest.mark.slow  # compiles and times a resnet18 step per copy-insertion analysis
def test_bench_copy_insertion_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_copy_insertion", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_copy_insertion", *args)
    (step,) = saved["steps"]
    assert (step["model"], step["size"], step["batch"]) == ("resnet18", 16, 4)
    assert set(step["ms"]) == {"region analysis", "default analysis"}
    assert min(step["ms"].values()) > 0
    assert (step["parameters"], step["parameter_arrays"]) == (11_181_642, 62)
    # XLA's default analysis copies donated inputs at the start of the step; the region
    # analysis none, and the copies were temporaries
    copies, temp = step["copied_inputs"], step["temp_bytes"]
    assert copies["region analysis"] == 0 < copies["default analysis"]
    assert temp["region analysis"] < temp["default analysis"]
    assert (
        f"| resnet18 | 16x16 | 4 | 62 | 0 / {copies['default analysis']} |"
        in (tmp_path / "table.md").read_text()
    )


# Compiles seven programs; what the variants trace is checked by
# test_bench_weight_gradients_variants_trace_what_they_say in the default run.
@pytest.mark.slow
def test_bench_weight_gradients_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_weight_gradients", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_weight_gradients", *args)
    assert [k["shape"] for k in saved["kernels"]] == [[512, 512, 1, 1], [64, 64, 3, 3]]
    for kernel in saved["kernels"]:
        assert set(kernel["ms"]) == {"stored", "not stored"} and min(kernel["ms"].values()) > 0
    (step,) = saved["steps"]
    assert (step["model"], step["size"], step["batch"]) == ("resnet18", 16, 4)
    # torchvision's resnet18: 20 kernels, 8 of them of at least 2**18 elements (3x3 ones:
    # 256x128, three 256x256, 512x256, three 512x512)
    # and 3 of them 1x1 (the downsampling shortcuts)
    assert (step["kernels"], step["stored_kernels"], step["pointwise_kernels"]) == (20, 8, 3)
    assert set(step["ms"]) == {"library", "none stored", "all stored", "1x1 by convolution"}
    assert min(step["ms"].values()) > 0
    table = (tmp_path / "table.md").read_text()
    assert (
        "| resnet18 | 16x16 | 4 | 8 of 20 | 3 |" in table
        and "| 512x512x1x1 | 262144 | 1.00 |" in table
    )


def test_bench_weight_gradients_variants_trace_what_they_say():
    """``all stored`` stores every kernel's gradient (a conditional in the traced gradient),
    ``none stored`` none, ``library`` and ``1x1 by convolution`` those at least the library's
    size; 1x1 kernels' weight gradients are matmuls in every variant but ``1x1 by
    convolution``."""
    import jax
    import jax.numpy as jnp

    import cnn_jax.functional as F
    from experiments.bench_weight_gradients import STEP_VARIANTS, _traced_with

    def gradient(variant, shape):
        x = jnp.ones((1, 3, 3, shape[1]))
        with _traced_with(variant):
            return str(
                jax.make_jaxpr(jax.grad(lambda w, x: jnp.sum(F.conv2d(x, w, None, 1, 1))))(
                    jnp.zeros(shape), x
                )
            )

    def stored(variant, shape):
        return "cond[" in gradient(variant, shape)

    # 512 x 57 x 3 x 3 is just above 2**18 elements
    small, large = (8, 8, 3, 3), (512, 57, 3, 3)
    on_cpu = jax.default_backend() == "cpu"
    assert [stored("all stored", s) for s in (small, large)] == [on_cpu, on_cpu]
    assert [stored("none stored", s) for s in (small, large)] == [False, False]
    assert [stored("library", s) for s in (small, large)] == [False, on_cpu]
    assert [stored("1x1 by convolution", s) for s in (small, large)] == [False, on_cpu]
    for variant in STEP_VARIANTS:
        # the forward pass, then the weight gradient unless it is a matmul
        convolutions = gradient(variant, (8, 16, 1, 1)).count("conv_general_dilated[")
        assert convolutions == (2 if variant == "1x1 by convolution" or not on_cpu else 1), variant


@pytest.mark.parametrize(
    "name",
    [
        "bench_grad_norm",
        "bench_materialize",
        "bench_weight_gradients",
        "bench_copy_insertion",
        "bench_kernel_layout",
        "bench_flat_adamw",
        "bench_pool_gradient",
        "bench_padding_taps",
        "bench_unfolded_groups",
        "bench_unfolded_depthwise",
    ],
)
def test_step_benches_refuse_a_model_not_among_their_cases(name, capsys):
    import importlib

    bench = importlib.import_module(f"experiments.{name}")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--models", "resnet18", "no_such_model"])
    assert exit_info.value.code == 2
    assert "not among the cases: no_such_model" in capsys.readouterr().err


def test_bench_materialize_stores_what_its_variant_says():
    """``stored`` traces one ``cond`` per residual block, whether or not the library stores that
    family's blocks; ``recomputed`` none, even in a family the library stores."""
    import jax
    import jax.numpy as jnp

    from cnn_jax.models import create
    from experiments.bench_materialize import _traced_with

    def conds(name, variant):
        model = create(name, num_classes=10)
        x = jnp.zeros((1, 32, 32, 3))
        with _traced_with(variant):
            variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
            jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
        return sum(eqn.primitive.name == "cond" for eqn in jaxpr.eqns)

    assert (conds("resnet18", "stored"), conds("resnet18", "recomputed")) == (8, 0)
    assert (conds("mobilenet_v2", "stored"), conds("mobilenet_v2", "recomputed")) == (17, 0)


@pytest.mark.slow  # compiles and times a resnet18 step per variant
def test_bench_pool_gradient_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_pool_gradient", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_pool_gradient", *args)
    (step,) = saved["steps"]
    assert (step["model"], step["size"], step["batch"], step["max_pools"]) == (
        "resnet18",
        16,
        4,
        1,
    )
    assert set(step["ms"]) == {"library", "every max pool", "none"}
    assert min(step["ms"].values()) > 0
    assert "| resnet18 | 16x16 | 4 | 1 |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow  # traces DenseNet's and several models' gradients
def test_bench_pool_gradient_stores_what_its_variant_says_and_counts_the_pools():
    """Against ``library``: ``every max pool`` traces one more ``cond`` per max pooling in the
    gradient (on the CPU), ``none`` one fewer in DenseNet and as many elsewhere; ``max_pools``
    counts each model's max poolings once."""
    import jax
    import jax.numpy as jnp

    from experiments.bench_pool_gradient import _traced_with, max_pools
    from experiments.record import step_model

    def conds(name, size, variant):
        model = step_model(name, size)
        x = jnp.zeros((1, size, size, 3))
        with _traced_with(variant):
            v = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
            loss = lambda p, s: jnp.sum(model.apply({"params": p, **s}, x, train=False))
            rest = {k: c for k, c in v.items() if k != "params"}
            jaxpr = str(jax.make_jaxpr(jax.grad(loss))(v["params"], rest))
        return jaxpr.count("= cond[")

    on_cpu = jax.default_backend() == "cpu"
    for name, size, pools, densenet in (("cifar_cnn", 32, 2, 0), ("densenet121", 32, 1, 1)):
        library = conds(name, size, "library")
        assert conds(name, size, "every max pool") - library == (pools if on_cpu else 0)
        assert library - conds(name, size, "none") == (densenet if on_cpu else 0)
    cases = (("cifar_cnn", 32), ("densenet121", 64), ("vgg11", 32), ("googlenet", 64))
    assert [max_pools(model, size) for model, size in cases] == [2, 1, 5, 13]


@pytest.mark.slow  # compiles and times a resnet18 step per variant
def test_bench_padding_taps_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_padding_taps", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_padding_taps", *args)
    (step,) = saved["steps"]
    # At 16x16, ResNet-18's second stage runs on 2x2 maps, its third and fourth on 1x1 maps.
    assert (step["model"], step["size"], step["batch"], step["taps"], step["convolutions"]) == (
        "resnet18",
        16,
        4,
        11,
        20,
    )
    assert set(step["ms"]) == {"library", "without taps"}
    assert min(step["ms"].values()) > 0
    assert "| resnet18 | 16x16 | 4 | 11 of 20 |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow  # compiles and times a resnet18 step per variant
def test_bench_unfolded_groups_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_unfolded_groups", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_unfolded_groups", *args)
    (step,) = saved["steps"]
    assert (step["model"], step["unfolded"], step["convolutions"]) == ("resnet18", 0, 20)
    assert set(step["ms"]) == {"library", "without unfolding"}
    assert min(step["ms"].values()) > 0
    assert "| resnet18 | 16x16 | 4 | 0 of 20 |" in (tmp_path / "table.md").read_text()


def test_bench_unfolded_groups_counts_the_convolutions_the_rule_covers_and_turns_it_off():
    """``unfolded_convolutions`` counts what ``auto_plan`` unfolds (RegNet's grouped 3x3s on
    2x2 maps at 64x64, on 2x2 and 1x1 maps at 32x32, none in the control case); under ``without
    unfolding`` the same convolution plans batched im2col."""
    from cnn_jax.functional import auto_plan
    from experiments.bench_unfolded_groups import _traced_with, unfolded_convolutions

    assert unfolded_convolutions("regnet_x_400mf", 64) == {"unfolded": 11, "convolutions": 71}
    assert unfolded_convolutions("regnet_x_400mf", 32) == {"unfolded": 18, "convolutions": 71}
    assert unfolded_convolutions("regnet_y_400mf", 64) == {"unfolded": 5, "convolutions": 85}
    assert unfolded_convolutions("shufflenet_v2_x0_5", 64) == {"unfolded": 0, "convolutions": 56}

    def plan(variant):
        with _traced_with(variant):
            return set(
                auto_plan(
                    (8, 2, 2, 400), (400, 16, 3, 3), padding=((1, 1),) * 2, groups=25
                ).values()
            )

    assert plan("library") == {"unfolded"}
    assert plan("without unfolding") == {"grouped"}


@pytest.mark.slow  # compiles and times a resnet18 step per variant
def test_bench_unfolded_depthwise_quick(tmp_path):
    args = ["--quick", "--out", str(tmp_path)]
    result = _run("bench_unfolded_depthwise", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_unfolded_depthwise", *args)
    (step,) = saved["steps"]
    assert (step["model"], step["unfolded"], step["convolutions"]) == ("resnet18", 0, 20)
    assert set(step["ms"]) == {"library", "tap by tap"}
    assert min(step["ms"].values()) > 0
    assert "| resnet18 | 16x16 | 4 | 0 of 20 |" in (tmp_path / "table.md").read_text()


def test_bench_unfolded_depthwise_counts_the_convolutions_the_rule_covers_and_turns_it_off():
    """``unfolded_convolutions`` counts what ``auto_plan`` unfolds (ConvNeXt's 7x7s on its last
    three stages at 64x64, EfficientNet's 5x5s on small maps, none in MobileNetV2, whose kernels
    are 3x3); under ``tap by tap`` the same convolution plans the depthwise path."""
    from cnn_jax.functional import auto_plan
    from experiments.bench_unfolded_depthwise import _traced_with, unfolded_convolutions

    assert unfolded_convolutions("convnext_tiny", 64) == {"unfolded": 15, "convolutions": 22}
    assert unfolded_convolutions("convnext_tiny", 32) == {"unfolded": 18, "convolutions": 22}
    assert unfolded_convolutions("efficientnet_b0", 64) == {"unfolded": 7, "convolutions": 81}
    assert unfolded_convolutions("mobilenet_v2", 64) == {"unfolded": 0, "convolutions": 52}

    def plan(variant):
        with _traced_with(variant):
            return set(
                auto_plan(
                    (8, 4, 4, 384), (384, 1, 7, 7), padding=((3, 3),) * 2, groups=384
                ).values()
            )

    assert plan("library") == {"unfolded"}
    assert plan("tap by tap") == {"depthwise"}


def test_bench_padding_taps_counts_the_convolutions_the_rule_covers_and_turns_it_off():
    """``tap_convolutions`` counts what ``auto_plan`` computes tap by tap (ResNet-18's last stage
    at 64x64, its last two at 32x32, none in the bench's control case); under ``without taps``
    the same model traces a convolution where the library traces only matmuls."""
    import jax
    import jax.numpy as jnp

    from experiments.bench_padding_taps import _traced_with, tap_convolutions
    from experiments.record import step_model

    assert tap_convolutions("resnet18", 32) == {"taps": 7, "convolutions": 20}
    assert tap_convolutions("resnet18", 64) == {"taps": 3, "convolutions": 20}
    assert tap_convolutions("squeezenet1_1", 64) == {"taps": 0, "convolutions": 26}

    def convolutions(variant):
        model = step_model("resnet18", 16)
        x = jnp.zeros((1, 16, 16, 3))
        with _traced_with(variant):
            v = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
            loss = lambda p, s: jnp.sum(model.apply({"params": p, **s}, x, train=False))
            rest = {k: c for k, c in v.items() if k != "params"}
            return str(jax.make_jaxpr(jax.grad(loss))(v["params"], rest)).count("conv_general")

    assert convolutions("without taps") > convolutions("library")


def test_step_model_takes_the_registrys_small_input_arguments_and_refuses_bad_sizes():
    from experiments import record

    assert record.step_model("inception_v3", 75).aux_logits is False
    assert record.step_model("convnet", 32).in_channels == 3
    with pytest.raises(ValueError, match="inception_v3 takes at least 75-pixel inputs, not 64"):
        record.step_model("inception_v3", 64)
    with pytest.raises(ValueError, match="lenet5 takes 32-pixel inputs, not 16"):
        record.step_model("lenet5", 16)


def test_gradient_precision_summary_counts_flips_and_moved_gradients():
    """A flip that left the worst gradient within 1e-4 of float64 is counted as a flip, not as
    a moved gradient (seed 1 of the stored vgg16_bn run: 1 flip, error 1.33e-5)."""
    from experiments.gradient_precision import summary

    rows = [
        {"ours": 1e-5, "theirs": 5e-6, "ours_unpinned": 3e-3, "theirs_unpinned": 5e-6,
         "ours_flips": 2, "theirs_flips": 0},
        {"ours": 1.3e-5, "theirs": 1e-5, "ours_unpinned": 1.3e-5, "theirs_unpinned": 2e-3,
         "ours_flips": 1, "theirs_flips": 1},
    ]  # fmt: skip
    s = summary({"rows": rows})
    assert (s["cnn_jax"]["seeds_flipped"], s["cnn_jax"]["seeds_moved"]) == (2, 1)
    assert (s["torch"]["seeds_flipped"], s["torch"]["seeds_moved"]) == (1, 1)
    assert s["ratio_mean"] == pytest.approx((2 + 1.3) / 2)
    assert s["ratio_std"] == pytest.approx(0.7 / 2**0.5)  # sample std of (2, 1.3)


@pytest.mark.slow
@pytest.mark.bigmem  # vgg11_bn with float64 copies: one at a time in CI (zoo.BIGMEM_GB)
def test_gradient_precision_quick(tmp_path):
    """Both modes on vgg11_bn at 32x32: one seed's whole-model errors, and the per-layer rows
    with --kinks and --isolate (each a compiled program per layer: minutes on 2 cores)."""
    seeds = ["--quick", "--seeds", "1", "--out", str(tmp_path / "seeds")]
    result = _run("gradient_precision", *seeds)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = _stored(tmp_path / "seeds", "gradient_precision", *seeds)["rows"]
    assert 0 < row["ours"] < 1e-4 and 0 < row["theirs"] < 1e-4  # the pinned bar is far below
    assert (tmp_path / "seeds" / "errors.png").stat().st_size > 10_000
    layers = ["--quick", "--kinks", "--isolate", "features.1", "--out", str(tmp_path / "layers")]
    result = _run("gradient_precision", *layers)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path / "layers", "gradient_precision", *layers)
    assert saved["layers"][0]["name"] == "features.0" and saved["isolate"]["layer"] == "features.1"
    assert saved["kinks"] and all(k["float32_forward_error"] > 0 for k in saved["kinks"])


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
    module = importlib.import_module(f"experiments.course.{name}")
    args = ["--quick", "--seeds", str(seeds), "--dataset", dataset, "--out", str(tmp_path)]
    results = module.main(args)
    stored = _stored(tmp_path, f"course.{name}", *args)
    assert results == stored
    assert stored["meta"]["runs"] >= 1 and stored["meta"]["quick"]
    table = (tmp_path / "table.md").read_text()
    assert table.startswith(("|", "Validation", "Gradient", "Test"))
    assert "sample standard deviation (n − 1)" in table
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


@pytest.mark.slow  # one short run per optimiser
def test_course_optimisers(tmp_path):
    _, r = _run_course("optimisers", tmp_path)
    assert set(r["best_lr"]) == {"SGD", "Adam"}
    assert all(r["best_lr"][k] in r["lrs"] for k in r["best_lr"])


@pytest.mark.slow  # two trainings
def test_course_batch_norm(tmp_path):
    _, r = _run_course("batch_norm", tmp_path)
    assert set(r["runs"]) == {"no BatchNorm", "BatchNorm"}


@pytest.mark.slow  # one short run per activation function
def test_course_activations(tmp_path):
    _, r = _run_course("activations", tmp_path)
    layers = r["layers"]
    ratio = {
        act: r["gradient_norms_init"][act][0][layers[0]]
        / r["gradient_norms_init"][act][0][layers[-1]]
        for act in ("relu", "tanh", "sigmoid")
    }
    # At initialisation sigmoid's gradients vanish towards the input, by orders of magnitude more
    # than ReLU's: a property of the initial network, not of training.
    assert ratio["sigmoid"] < 1e-2 * ratio["relu"], ratio


@pytest.mark.slow  # a training past its best epoch
def test_course_early_stopping(tmp_path):
    _, r = _run_course("early_stopping", tmp_path)
    s = r["seeds"][0]
    assert 1 <= s["best_checkpoint_epoch"] <= s["stopped_at_epoch"] <= r["epochs"]
    assert len(s["test_curve"]) == r["epochs"]  # every epoch's checkpoint was evaluated
    assert s["best_test_accuracy"] == max(s["test_curve"])


@pytest.mark.slow  # pretraining, then three fine-tunings
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


@pytest.mark.slow  # two trainings
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
    args = ("--quick", "--out", str(tmp_path), "--parts", *parts)
    result = _run("bench_input_pipeline", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_input_pipeline", *args)
    for part in parts:  # each part with the provenance of the run that measured it
        assert saved["parts"][part] == {
            k: v for k, v in saved["provenance"].items() if k not in ("finished", "wall_s")
        }
    return saved, (tmp_path / "table.md").read_text()


@pytest.mark.slow  # decodes images and times a step
def test_bench_input_pipeline_quick_decode(tmp_path):
    """The decode benchmark runs both pipelines on one generated folder and fills in the
    cores an A100 ResNet-50 step needs from its own per-worker rate."""
    saved, table = _bench_input_pipeline(tmp_path, "decode")
    assert saved["parts"]["decode"]["command"].endswith("--parts decode")
    versions = saved["provenance"]["versions"]
    assert versions["grain"] and versions["pillow"] and versions["torchvision"]
    decode = saved["decode"]
    (row,) = decode["rows"]
    assert row["workers"] == 1
    for name in ("cnn_jax", "cnn_jax_full_decode", "cnn_jax_threads", "torchvision"):
        assert row[name]["images_per_s"] > 0 and row[name]["startup_s"] > 0
    a100 = decode["a100_resnet50"]
    assert a100["cnn_jax_images_per_s_per_worker"] == row["cnn_jax"]["images_per_s"]
    assert a100["workers_needed"] == -(-2500 // a100["cnn_jax_images_per_s_per_worker"])
    assert "| 1 |" in table and "worker processes (cores)" in table
    assert "python -m experiments.bench_input_pipeline --quick" in table


def test_bench_input_pipeline_parts_keep_the_others(tmp_path, monkeypatch):
    """Re-measuring one part keeps the others' numbers and provenance (the parts themselves
    replaced by stand-ins: this is about what is written, not what is measured)."""
    from experiments import bench_input_pipeline as B

    monkeypatch.setattr(record, "provenance", lambda module, argv, **extra: {
        "command": record.command(module, argv), "commit": "0" * 40, "dirty": False,
        "started": "2026-01-01T00:00:00+00:00", "machine": record.machine(),
        "versions": extra["versions"], "runtime": {},
    })  # fmt: skip
    host = {"batch": 8, "device": "cpu", "rows": [{
        "dataset": "d", "model": "lenet5", "grain_batches_per_s": 1.0,
        "hand_written_batches_per_s": 2.0, "device_gather_per_s": 3.0, "train_steps_per_s": 4.0,
    }]}  # fmt: skip
    memory = {"runs": {"40": {"decoded_mb": 1.0, "epochs": 2, "steps": 4, "peak_rss_mb": 5.0,
                              "peak_worker_rss_mb": 0.0, "peak_tree_pss_mb": 6.0,
                              "wall_s": 1.0, "command": "cnn-jax train"}},
              "rss_difference_mb": 0.0, "worker_rss_difference_mb": 0.0,
              "tree_pss_difference_mb": 0.0}  # fmt: skip
    monkeypatch.setattr(B, "host_path_part", lambda args: host)
    monkeypatch.setattr(B, "memory_part", lambda args: memory)
    out = ["--quick", "--out", str(tmp_path)]
    B.main([*out, "--parts", "host-path"])
    merged = B.main([*out, "--parts", "memory"])
    assert merged["host-path"] == host and merged["memory"] == memory
    assert merged["parts"]["host-path"]["command"].endswith("--parts host-path")
    assert merged["parts"]["memory"]["command"].endswith("--parts memory")
    table = (tmp_path / "table.md").read_text()
    assert "### memory" in table and "### host-path" in table and "### decode" not in table


def test_bench_input_pipeline_quick_refuses_the_results_folder():
    result = _run(
        "bench_input_pipeline", "--quick", "--out", str(record.RESULTS / "bench_input_pipeline")
    )
    assert result.returncode == 2 and "--quick numbers are not results" in result.stderr


@pytest.mark.slow
def test_bench_input_pipeline_quick_memory_and_host_path(tmp_path):
    saved, table = _bench_input_pipeline(tmp_path, "memory", "host-path")
    runs = saved["memory"]["runs"]
    assert set(runs) == {"40", "120"}
    # Threads in --quick: no worker processes, and the tree is the training process alone.
    assert all(r["peak_rss_mb"] > 100 and r["peak_worker_rss_mb"] == 0
               and 0.5 * r["peak_rss_mb"] < r["peak_tree_pss_mb"] <= r["peak_rss_mb"]
               for r in runs.values())  # fmt: skip
    # The small folder runs as many train steps as the large one, over more epochs.
    assert runs["40"]["epochs"] > runs["120"]["epochs"] == 1
    assert runs["40"]["steps"] >= runs["120"]["steps"] > 0
    assert "data_stream=always" in runs["120"]["command"]
    assert [r["model"] for r in saved["host-path"]["rows"]] == ["lenet5", "cifar_cnn"]
    assert "### memory" in table and "### host-path" in table


def _dispatch_round(step_ms: float, faults: float, rate: float, mode: str) -> dict:
    from experiments.bench_dispatch import named

    allocator, huge = named(mode)
    return {"steps": {"convnext_tiny": {"ms": step_ms, "faults_per_step": faults}},
            "loop": {"lenet5": rate}, "allocator": {"name": allocator, "reason": "..."},
            "huge_pages": {"enabled": huge, "reason": "..."}}  # fmt: skip


def _dispatch_rounds(*rows: tuple) -> list[dict]:
    """Rounds of the five settings from rows of (step ms, faults, images/s) per setting."""
    from experiments.bench_dispatch import MODES

    return [{m: _dispatch_round(*row[i], mode=m) for i, m in enumerate(MODES)} for row in rows]


def test_bench_dispatch_summary_and_tables():
    """Medians over rounds of each process's figures; each ratio of step times is the first
    setting's over the second's, of throughputs the second's over the first's (above 1.0 where
    the second-named setting is the faster): dispatch async / sync, with TCMalloc and with
    glibc; allocator glibc / TCMalloc; huge pages 4 KiB / huge."""
    from experiments.bench_dispatch import MODES, named, summary, tables

    assert MODES == ("async", "sync", "async, glibc", "sync, glibc", "async, glibc, 4 KiB pages")
    results = {
        "settings": {"models": ["convnext_tiny"], "loop_models": ["lenet5"], "batch_size": 32},
        "rounds": _dispatch_rounds(
            (
                (480, 9, 9000),
                (470, 8, 7000),
                (520, 700, 8800),
                (500, 90, 7000),
                (660, 127_000, 8000),
            ),
            (
                (490, 7, 9500),
                (480, 6, 7200),
                (530, 750, 9300),
                (510, 80, 7200),
                (700, 126_000, 7000),
            ),
            (
                (500, 8, 9300),
                (475, 9, 7100),
                (540, 720, 9500),
                (505, 85, 7100),
                (640, 128_000, 9000),
            ),
        ),
    }
    s = summary(results)
    step = s["steps"]["convnext_tiny"]
    assert step["ms"] == {"async": 490.0, "sync": 475.0, "async, glibc": 530.0,
                          "sync, glibc": 505.0, "async, glibc, 4 KiB pages": 660.0}  # fmt: skip
    assert step["faults"]["async, glibc"] == 720 and step["faults"]["async"] == 8
    assert step["dispatch"] == pytest.approx(490 / 475)
    assert step["dispatch_glibc"] == pytest.approx(530 / 505)
    assert step["allocator"] == pytest.approx(530 / 490)
    assert step["huge_pages"] == pytest.approx(660 / 530)
    loop = s["loop"]["lenet5"]
    assert loop["dispatch"] == pytest.approx(7100 / 9300)
    assert loop["allocator"] == pytest.approx(9300 / 9300)
    assert loop["huge_pages"] == pytest.approx(9300 / 8000)
    assert {m: named(m) for m in MODES} == {
        "async": ("tcmalloc", False), "sync": ("tcmalloc", False),
        "async, glibc": ("glibc", True), "sync, glibc": ("glibc", True),
        "async, glibc, 4 KiB pages": ("glibc", False),
    }  # fmt: skip
    assert s["allocator"]["async"] == ["tcmalloc"] * 3
    assert s["allocator"]["sync, glibc"] == ["glibc"] * 3
    assert s["huge_pages"]["async, glibc"] == [True] * 3 and s["huge_pages"]["async"] == [False] * 3
    text = tables(results)
    for table in text.split("\n\n"):  # every row of a table has its header's columns
        rows = [line for line in table.splitlines() if line.startswith("|")]
        assert len({row.count("|") for row in rows}) <= 1, table
    assert (
        "| convnext_tiny | 490.0 / 475.0 / 530.0 / 505.0 / 660.0 | 1.03 | 1.05 | 1.08 | 1.25 | "
        "8 / 8 / 720 / 85 / 127,000 |" in text
    )
    assert "| lenet5 | 9,300 / 7,100 / 9,300 / 7,100 / 8,000 | 0.76 | 0.76 | 1.00 | 1.16 |" in text
    # the loop's heads name the faster-if-above-1 setting first
    assert "| sync / async | sync, glibc / async, glibc | async / async, glibc |" in text


def test_bench_dispatch_workers_decide_their_settings_afresh(monkeypatch, capsys):
    """Each worker starts from this environment less the settings' variables, plus its own;
    a user's allocator configuration or preload, which would make "glibc" or "4 KiB pages"
    untrue, is refused."""
    from cnn_jax import runtime
    from experiments import bench_dispatch

    monkeypatch.setenv("CNN_JAX_DISPATCH", "sync")
    monkeypatch.setenv(runtime.HUGE_PAGES_SWITCH, "0")
    monkeypatch.setenv(runtime.ALLOCATOR_SWITCH, "glibc")
    env = bench_dispatch._clean_environment()
    assert "CNN_JAX_DISPATCH" not in env and runtime.HUGE_PAGES_SWITCH not in env
    assert runtime.ALLOCATOR_SWITCH not in env
    assert bench_dispatch._expected("async, glibc, 4 KiB pages") == ("glibc", False)
    assert bench_dispatch._expected("sync, glibc")[0] == "glibc"
    tcmalloc = runtime.find_tcmalloc() is not None
    assert bench_dispatch._expected("async")[0] == ("tcmalloc" if tcmalloc else "glibc")
    for name, value in (("GLIBC_TUNABLES", runtime.HUGE_PAGES_TUNABLE), ("LD_PRELOAD", "x.so")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(SystemExit) as exit_info:
                bench_dispatch.main(["--quick"])
            assert exit_info.value.code == 2 and f"unset {name}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--models", "resnet18", "no_such_model", "--loop-models"],
            "unknown models: no_such_model",
        ),
        (["--loop-models", "resnet18"], "--loop-models takes course models"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_bench_dispatch_refuses_bad_arguments(argv, message, capsys):
    """Before any worker process starts."""
    from experiments import bench_dispatch

    with pytest.raises(SystemExit) as exit_info:
        bench_dispatch.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # five processes, each compiling lenet5's step and training it
def test_bench_dispatch_quick(tmp_path):
    result = _run("bench_dispatch", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _stored(tmp_path, "bench_dispatch", "--quick", "--out", str(tmp_path))
    (one_round,) = saved["rounds"]
    from experiments.bench_dispatch import MODES, _expected

    for mode in MODES:
        assert one_round[mode]["dispatch"]["synchronous"] is mode.startswith("sync")
        allocator, huge = _expected(mode)
        assert one_round[mode]["allocator"]["name"] == allocator
        assert one_round[mode]["huge_pages"]["enabled"] is huge
        assert one_round[mode]["steps"]["lenet5"]["ms"] > 0
        assert one_round[mode]["loop"]["lenet5"] > 0
    assert "| lenet5 |" in (tmp_path / "table.md").read_text()


def test_every_script_relaunches_before_its_main(monkeypatch):
    """Each script's ``__main__`` goes through ``record.entry_point``, which relaunches the
    process for glibc's huge pages (as ``cnn-jax`` does) before ``main`` runs."""
    import cnn_jax
    from experiments import record

    scripts = sorted(pathlib.Path(record.ROOT, "experiments").glob("*.py"))
    for script in scripts:
        text = script.read_text()
        if '__name__ == "__main__"' in text:
            assert text.endswith('if __name__ == "__main__":\n    record.entry_point(main)\n'), (
                script
            )
    calls = []
    monkeypatch.setattr(cnn_jax.runtime, "relaunch", lambda: calls.append("relaunch"))
    record.entry_point(lambda: calls.append("main"))
    assert calls == ["relaunch", "main"]
