"""Every number the READMEs quote is rendered from a results file, and still says what the file
says: the marked blocks of README.md and experiments/README.md, and every table.md, equal what
``python -m experiments.report`` renders from experiments/results/ (no benchmark runs here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from experiments import record, report

ROOT = Path(__file__).resolve().parents[1]
README, EXPERIMENTS = ROOT / "README.md", ROOT / "experiments" / "README.md"


def test_every_block_and_table_equals_its_rendering_from_the_results_files():
    problems = report.stale()
    assert not problems, "stale (run `python -m experiments.report`):\n" + "\n".join(problems)


def test_every_block_has_a_renderer_and_every_renderer_a_block():
    used = report.used_blocks()
    assert used == set(report.BLOCKS), used ^ set(report.BLOCKS)
    for doc in report.DOCS:
        text = doc.read_text()
        assert text.count("<!-- report:") == text.count("<!-- /report -->"), doc


def test_a_block_is_rewritten_from_its_file(monkeypatch):
    """A quoted number edited by hand is put back; a renderer that fails is an error, not a
    silently kept old text."""
    text = "a <!-- report:speed.bf16 -->0.99 / 0.99 / 0.99<!-- /report --> b"
    fixed = report.rewrite(text)
    assert "0.99 / 0.99 / 0.99" not in fixed and fixed.startswith("a <!-- report:speed.bf16 -->")
    assert report.rewrite(fixed) == fixed
    with pytest.raises(KeyError, match="no renderer"):
        report.rewrite("<!-- report:no.such.block --><!-- /report -->")


def test_without_results_files_every_block_renders_and_quotes_no_number(monkeypatch, tmp_path):
    """Before a results file exists its blocks say which command makes it, with no number
    outside the command itself."""
    monkeypatch.setattr(record, "RESULTS", tmp_path)
    for name in report.BLOCKS:
        text = report.render(name)
        prose = re.sub(r"`[^`]*`", "", text)
        assert not re.search(r"(?<![\w.])\d", prose), (name, text)  # vgg16_bn is a name


def test_every_figure_the_readmes_show_has_its_results_file():
    for doc in report.DOCS:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", doc.read_text()):
            path = (doc.parent / target).resolve()
            assert path.exists(), (doc.name, target)
            assert (path.parent / "results.json").exists(), (doc.name, target)


def test_readme_inspection_table_is_the_published_figures_the_tests_check():
    """The model-inspection table is not a measurement: its rows are the published figures
    tests/test_inspect.py holds the library to (read from its source: importing it loads torch)."""
    tree = ast.parse((ROOT / "tests" / "test_inspect.py").read_text())
    (KNOWN,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "KNOWN"
    ]

    rows = re.findall(r"^\| (\w+) \| ([\d,]+) \| ([\d,]+) \| (\d+) \|$", README.read_text(), re.M)
    assert {name for name, *_ in rows} == set(KNOWN)
    for name, params, macs, rf in rows:
        known_params, known_macs, (_, known_rf) = KNOWN[name]
        assert (int(params.replace(",", "")), int(macs.replace(",", "")), int(rf)) == (
            known_params,
            known_macs,
            known_rf,
        )


# A measured quantity: a decimal with a unit or a percentage, a ratio, or a time.
MEASURED = re.compile(
    r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|s|min|%|×|x|MB|GB|GFLOP/s)(?![\w/])"
    r"|(?<![\w.])\d+\.\d+(?![\w.])"
)
# Constants, not measurements: the speed goal (1.5×), momentum 0.9, glibc's mmap thresholds
# (32 MB, 64 MB), jax 0.10 (a version), the validation split's 10% of train, the bfloat16
# tolerances of tests/test_mixed_precision.py (2%, 5%), the input-pipeline memory part's folder
# (6,000 images at 128x128 decoded: 300 MB, arithmetic) and its goal (a difference under 150 MB).
ALLOWED = {"1.5×", "1.5", "0.9", "32 MB", "64 MB", "0.10", "10%", "2%", "5%", "300 MB", "150 MB"}
# Settings, not measurements: the divergence warning's threshold and the full-disk test's tmpfs.
ALLOWED |= {"100×", "100x", "1.2 MB"}


def _prose(text: str) -> str:
    """``text`` without marked blocks, code, images, links' targets and table rows of inputs
    that are settings (the inspection table is checked above)."""
    text = re.sub(r"<!-- report:[\w.-]+ -->.*?<!-- /report -->", "", text, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    return text


def _section(text: str, start: str, end: str | None) -> str:
    a = text.index(start)
    return text[a : text.index(end, a) if end else len(text)]


@pytest.mark.parametrize(
    ("doc", "start", "end"),
    [
        (EXPERIMENTS, "# Experiments", "Checked by tests rather than measured here"),
        (EXPERIMENTS, "Checked by tests rather than measured here", None),
        (README, "## Install and run", "## A short tour"),
        (README, "### Run safety", "### Several processes"),
        (README, "## How it is tested", "## Layout"),
    ],
)
def test_no_measured_number_outside_the_rendered_blocks(doc, start, end):
    """In the parts of the READMEs that report measurements, a time, ratio or percentage comes
    from a results file (a marked block) or is not there."""
    found = [m.group(0) for m in MEASURED.finditer(_prose(_section(doc.read_text(), start, end)))]
    assert not [x for x in found if x not in ALLOWED], found


def test_input_pipeline_block_and_row_render_from_its_results_file(monkeypatch, tmp_path):
    """The input-pipeline section and its row in the table of questions come from the file
    bench_input_pipeline writes (its parts replaced by stand-ins: no benchmark runs here)."""
    from experiments import bench_input_pipeline as B

    monkeypatch.setattr(record, "RESULTS", tmp_path)
    row = {"workers": 2, "cnn_jax": {"images_per_s": 300.0, "startup_s": 1.0},
           "cnn_jax_full_decode": {"images_per_s": 200.0, "startup_s": 1.0},
           "cnn_jax_threads": {"images_per_s": 150.0, "startup_s": 0.5},
           "torchvision": {"images_per_s": 250.0, "startup_s": 2.0}}  # fmt: skip
    decode = {"folder": "f", "images": 10, "batch": 8, "timed_batches": 3, "rows": [row],
              "a100_resnet50": {"images_per_s_needed": 2500,
                                "cnn_jax_images_per_s_per_worker": 150.0,
                                "workers_needed": 17}}  # fmt: skip
    monkeypatch.setattr(B, "decode_part", lambda args: decode)
    B.main(["--parts", "decode", "--out", str(tmp_path / "bench_input_pipeline")])
    section = report.render("input_pipeline")
    assert "| 2 | 300 | 200 | 150 | 250 | 1.20 | 1.0 / 2.0 |" in section
    prose = " ".join(section.split())  # paragraphs are re-filled
    assert "python -m experiments.bench_input_pipeline --parts decode --out" in prose
    assert "17 worker processes (cores)" in prose and "Not measured yet" not in prose
    index = report.render("index")
    assert "cnn_jax / torchvision images/s 1.20 at 2 worker processes" in index
    assert "needs 17 of them" in index


def test_provenance_line_says_when_and_from_which_commit():
    started = {"started": "2026-12-02T10:00:00", "commit": "abcdef0123", "dirty": True}
    assert report.when(started) == "run 2026-12-02, commit abcdef0 with local changes"
    # Outside a git checkout record.py stores no commit: the line says so instead of failing.
    assert report.when({"started": "2026-12-02T10:00:00", "commit": None}) == (
        "run 2026-12-02, no git commit recorded"
    )
    assert report.when({"committed_in": {"commit": "1234567890"}}) == "stored in commit 1234567"
    assert report.when({}) == "date not recorded"


def test_two_runs_are_described_apart_in_either_order_and_by_machine(monkeypatch):
    """A pair of runs cited together: the gap between their starts whichever ran first, and
    each run's machine where they differ (a ratio across two CPUs is not a side-by-side one)."""
    from experiments.report import speed

    def prov(started, cpu):
        return {"provenance": {"started": started, "machine": {"cpu": cpu, "cores": 2},
                               "versions": {"jax": "0.10.2"}}}  # fmt: skip

    runs = {"a": prov("2026-12-05T18:10:00", "CPU X"), "b": prov("2026-12-05T17:59:00", "CPU X"),
            "c": prov("2026-12-05T18:00:00", "CPU Y")}  # fmt: skip
    monkeypatch.setattr(speed, "results", runs.__getitem__)
    assert speed._apart("a", "b") == "one run each, started 11 min apart"
    assert speed._apart("b", "a") == "one run each, started 11 min apart"
    assert speed._apart("b", "c") == (
        "one run each, started 1 min apart, `b` on a 2-core CPU X, jax 0.10.2 and `c` on a "
        "2-core CPU Y, jax 0.10.2"
    )


def test_resnet_budget_says_when_layers_timed_alone_do_not_add_up_to_a_step():
    """The 224x224 budget sentence sums each part per framework for the model it names, and
    says the layer-by-layer timing cannot place cnn_jax's gap only when torch's convolutions
    alone exceed its whole step while cnn_jax's are faster in every part."""
    from experiments.report import speed

    provenance = report.results("bench_vs_torch/resnet_224")["provenance"]

    def row(model: str, torch_ms: float, torch_step_s: float) -> dict:
        layer = {"count": 2, "groups": 1, "input": [1, 8, 8, 4],
                 "ms": {"cnn_jax": {"fwd": 10.0, "dW": 20.0},
                        "torch": {"fwd": torch_ms, "dW": torch_ms}}}  # fmt: skip
        conv_s = {"cnn_jax": 0.06, "torch": 4 * torch_ms / 1e3}
        return {"model": model, "step_s": {"cnn_jax": 0.5, "torch": torch_step_s},
                "ratio_torch_over_jax": 0.8,
                "conv_budget": {"layers": [layer], "conv_s": conv_s}}  # fmt: skip

    def budget(*rows: dict) -> dict:
        return {"provenance": provenance, "results": list(rows)}

    apart = speed._resnet_224_budget(budget(row("resnet50", 30.0, 0.1)), "resnet50")
    assert apart.startswith("resnet50's step took 500 / 100 ms")
    assert "forward 20 / 60, weight gradient 40 / 60 ms, 60 / 120 ms in all" in apart
    assert "do not reproduce what a step costs" in apart
    together = speed._resnet_224_budget(budget(row("resnet50", 30.0, 0.4)), "resnet50")
    assert "do not reproduce" not in together and "60 / 120 ms in all" in together
    # torch / (cnn_jax's rest + torch's convolutions) = 400 / (440 + 120); / (60 + 280)
    assert (
        "would be 0.71 of torch's speed, with torch's rest of the step 1.18: the rest" in together
    )
    slower = speed._resnet_224_budget(budget(row("resnet50", 15.0, 0.01)), "resnet50")
    assert "do not reproduce" not in slower
    # Two models in one run: each sentence reads its own row, in the run's order.
    both = speed._resnet_224_budgets(budget(row("resnet18", 30.0, 0.4), row("resnet50", 30.0, 0.1)))
    assert both.index("resnet18's step took 500 / 400 ms") < both.index(
        "resnet50's step took 500 / 100 ms"
    )
    assert both.count("do not reproduce") == 1 and both.count("would be 0.71") == 1
    faster = budget(row("resnet50", 30.0, 0.4))
    faster["results"][0]["ratio_torch_over_jax"] = 1.05
    assert "1.18." in speed._resnet_224_budget(faster, "resnet50")  # nothing stands in the way
    ways = {(1.03, 0.84): "convolutions", (0.7, 1.2): "rest", (1.1, 1.0): "either",
            (0.9, 0.95): "both"}  # fmt: skip
    for (conv, rest), way in ways.items():
        assert speed._in_the_way({"conv_matched": conv, "rest_matched": rest}) == way
    assert report.machine(provenance, torch=True) in both


def test_xla_setting_names_the_options_a_run_compiled_with():
    """A results file's XLA setting reads as why plus which options, so a run made before an
    option existed is told apart from one made with it."""
    ynn = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    both = {**ynn, "xla_cpu_copy_insertion_use_region_analysis": True}
    reason = "XLA_FLAGS extended before JAX initialised"
    assert record.xla_setting(None) == "not recorded"
    assert record.xla_setting({"reason": "defaults", "compiler_options": {}}) == "defaults"
    assert record.xla_setting({"reason": reason, "compiler_options": ynn}) == (
        f"{reason} (convolutions by XLA, not YNNPACK)"
    )
    assert record.xla_setting({"reason": reason, "compiler_options": both}) == (
        f"{reason} (convolutions by XLA, not YNNPACK; copy insertion with region analysis)"
    )
    assert record.xla_setting({"reason": reason, "compiler_options": {"xla_other": 1}}) == (
        f"{reason} (xla_other)"
    )


def test_flax_peer_block_waits_for_a_run_with_the_peers(monkeypatch):
    """A headline file written before the plain-flax peers renders as not measured; with them,
    each cell is the run's plain flax / cnn_jax ratio and its block range."""
    from experiments.report import speed

    stored = report.results(speed.HEADLINE)
    old = {**stored, "results": [
        {k: v for k, v in r.items() if k not in ("ratio_flax_over_jax", "flax_ratio_range")}
        for r in stored["results"]]}  # fmt: skip
    monkeypatch.setattr(speed, "results", lambda name: old)
    assert speed._flax_peer().startswith("Not measured yet")
    rows = [dict(r, ratio_flax_over_jax=2.5, flax_ratio_range=[2.25, 2.75]) for r in old["results"]]
    monkeypatch.setattr(speed, "results", lambda name: {**old, "results": rows})
    text = speed._flax_peer()
    assert "| lenet5 | 2.50 (2.25-2.75) |" in text and "| resnet18 (32×32) | 2.50" in text


def test_roofline_verdict_is_computed_from_the_run(monkeypatch):
    """The roofline sentence says whether 1.5x is under every model's ceiling (XLA's matmul
    peak / torch's achieved rate) and the share of that peak 1.5x would need."""
    from experiments.report import speed

    stored = report.results("bench_vs_torch/b128_roof")

    def run(torch_s: float) -> dict:
        rows = [{"model": m, "batch_size": 128, "gflop": 10.0, "ratio_torch_over_jax": 1.0,
                 "step_s": {"torch": torch_s, "cnn_jax": 0.2}}
                for m in ("cifar_cnn", "resnet18")]  # fmt: skip
        return {**stored, "settings": {**stored["settings"],
                "matmul_gflops": {"torch": 100.0, "cnn_jax": 200.0}}, "results": rows}  # fmt: skip

    monkeypatch.setattr(speed, "results", lambda name: run(0.1))  # torch at 100 GFLOP/s
    text = speed._roofline()
    assert "So the goal is not above this machine's peak" in text
    assert "lowest ceiling is cifar_cnn's (2.0)" in text and "cifar_cnn 75% (now 25%)" in text
    monkeypatch.setattr(speed, "results", lambda name: run(0.05))  # torch at 200 GFLOP/s
    assert "So the goal is above this machine's peak for some model" in speed._roofline()


def _provenance(environment: dict, dispatch: dict | None) -> dict:
    """A results file's provenance with the given environment and recorded dispatch."""
    p = report.results("bench_dispatch")["provenance"]
    runtime = {**p["runtime"], "environment": environment}
    if dispatch is None:
        runtime.pop("dispatch", None)
    else:
        runtime["dispatch"] = dispatch
    return {**p, "command": "python -m experiments.bench_vs_torch --zoo", "runtime": runtime}


def test_a_run_with_synchronous_dispatch_says_so_and_reruns_with_its_variable():
    sync = _provenance(
        {"CNN_JAX_DISPATCH": "sync", "XLA_FLAGS": "--x"},
        {"synchronous": True, "reason": "CNN_JAX_DISPATCH=sync: single-device CPU programs ..."},
    )
    assert report.rerun_command(sync) == (
        "CNN_JAX_DISPATCH=sync python -m experiments.bench_vs_torch --zoo"
    )  # XLA_FLAGS is recorded but not a variable of cnn_jax's that the command needs
    assert report.settings(sync).endswith(
        "; dispatch: CNN_JAX_DISPATCH=sync: single-device CPU programs ..."
    )
    default = _provenance({}, {"synchronous": False, "reason": "JAX's default (asynchronous)"})
    older = _provenance({"CNN_JAX_MALLOC_DEFAULTS": "0"}, None)  # a file from before the setting
    assert report.rerun_command(default) == "python -m experiments.bench_vs_torch --zoo"
    assert "dispatch" not in report.settings(default) and "dispatch" not in report.settings(older)
    assert report.rerun_command(older).startswith("CNN_JAX_MALLOC_DEFAULTS=0 python -m")


def test_a_run_with_huge_pages_says_so():
    """The settings line names huge pages where the heap asked for them and only there; the
    re-run command needs no variable for them (the script relaunches itself)."""
    p = _provenance({}, None)
    p["runtime"].pop("huge_pages", None)  # as a file from before the setting
    reason = "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 set by relaunch() at this process's start"
    on = {**p, "runtime": {**p["runtime"], "huge_pages": {"enabled": True, "reason": reason}}}
    off = {**p, "runtime": {**p["runtime"], "huge_pages": {"enabled": False, "reason": "x"}}}
    assert report.settings(on).endswith(f"; huge pages: {reason}")
    assert "huge pages" not in report.settings(off) and "huge pages" not in report.settings(p)
    assert report.rerun_command(on) == "python -m experiments.bench_vs_torch --zoo"
    switched = _provenance({"CNN_JAX_HUGE_PAGES": "0"}, None)
    assert report.rerun_command(switched).startswith("CNN_JAX_HUGE_PAGES=0 python -m")


def test_a_run_with_tcmalloc_names_it_as_its_allocator():
    """Where TCMalloc served malloc the settings line names it instead of glibc's options (which
    do not apply then); the re-run command asks for it as the run did."""
    p = _provenance({"CNN_JAX_ALLOCATOR": "tcmalloc"}, None)
    reason = "TCMalloc (/usr/lib/libtcmalloc_minimal.so.4) preloaded by relaunch() at this ..."
    tc = {"name": "tcmalloc", "library": "/usr/lib/libtcmalloc_minimal.so.4", "reason": reason}
    on = {**p, "runtime": {**p["runtime"], "allocator": tc}}
    assert f"allocator: {reason}" in report.settings(on)
    assert report.rerun_command(on).startswith("CNN_JAX_ALLOCATOR=tcmalloc python -m")
    glibc = {"name": "glibc", "library": None, "reason": "CNN_JAX_ALLOCATOR=glibc"}
    off = {**p, "runtime": {**p["runtime"], "allocator": glibc}}
    assert f"allocator: {p['runtime']['malloc']['reason']}" in report.settings(off)
    p = _provenance({}, None)
    off = {**p, "runtime": {**p["runtime"], "allocator": glibc}}
    assert report.rerun_command(off) == "python -m experiments.bench_vs_torch --zoo"


def test_dispatch_block_quotes_the_figures_in_the_order_it_names_them(monkeypatch):
    """Step times glibc / TCMalloc, asynchronous / synchronous (each allocator) and 4 KiB /
    huge pages; the run loop's images/s the other way round, as their ratios; and whether every
    process ran with what its setting names."""
    from experiments.bench_dispatch import MODES, named
    from experiments.report import speed

    data = report.results("bench_dispatch")
    figures = {"async": (80.0, 10.0, 1000.0), "sync": (40.0, 2.0, 500.0),
               "async, glibc": (100.0, 300.0, 900.0), "sync, glibc": (50.0, 3.0, 600.0),
               "async, glibc, 4 KiB pages": (200.0, 9000.0, 800.0)}  # fmt: skip
    rounds = [
        {m: {"steps": {"m": {"ms": figures[m][0], "faults_per_step": figures[m][1]}},
             "loop": {"l": figures[m][2]},
             "allocator": {"name": named(m)[0], "reason": "..."},
             "huge_pages": {"enabled": named(m)[1], "reason": "..."}}
         for m in MODES}
    ]  # fmt: skip
    fake = {**data, "settings": {**data["settings"], "models": ["m"], "loop_models": ["l"]},
            "rounds": rounds}  # fmt: skip
    monkeypatch.setattr(speed, "results", lambda name: fake)
    text = " ".join(speed._dispatch().split())
    assert "Each of 5 settings runs in its own process" in text
    assert "TCMalloc is faster: m 1.25× (100.0 / 80.0 ms, 300 / 10 page faults a step)." in text
    assert "with TCMalloc: m 2.00× (80.0 / 40.0 ms, 10 / 2 page faults a step);" in text
    assert "with glibc: m 2.00× (100.0 / 50.0 ms, 300 / 3 page faults a step)." in text
    assert "huge pages are faster: m 2.00× (200.0 / 100.0 ms, 9,000 / 300 page faults" in text
    assert "TCMalloc / glibc, asynchronous: l 1.11× (1,000 / 900 images/s)" in text
    assert "synchronous / asynchronous with TCMalloc: l 0.50× (500 / 1,000 images/s)" in text
    assert "with glibc: l 0.67× (600 / 900 images/s)" in text
    assert "huge / 4 KiB pages, asynchronous: l 1.12× (900 / 800 images/s)." in text
    assert "every process ran with the allocator and pages its setting names" in text
    rounds[0]["async"]["allocator"]["name"] = "glibc"
    rounds[0]["async, glibc, 4 KiB pages"]["huge_pages"]["enabled"] = True
    assert "pages its setting names: async, async, glibc, 4 KiB pages." in " ".join(
        speed._dispatch().split()
    )


def test_flat_adamw_block_says_which_models_the_flat_vector_made_faster(monkeypatch):
    """The flat-AdamW sentence names the models on each side of the tie band around 1.0 (each
    once, whatever its number of cases) with the largest difference on that side, those
    within it, and 'none' for an empty side."""
    from experiments.report import speed

    provenance = report.results("bench_flat_adamw")["provenance"]

    def step(model: str, library: float, flat: float) -> dict:
        return {"model": model, "size": 32, "batch": 8, "parameter_arrays": 4,
                "ms": {"library": library, "flat AdamW": flat},
                "temp_bytes": {"library": 3.48 * 2**20, "flat AdamW": 3.72 * 2**20}}  # fmt: skip

    steps = [step("a", 10.0, 9.0), step("b", 10.0, 12.0), step("b", 10.0, 10.5),
             step("c", 10.0, 10.1)]  # fmt: skip
    data = {"provenance": provenance, "steps": steps}
    monkeypatch.setattr(speed, "results", lambda name: data)
    text = speed._flat_adamw()
    assert "faster for a (by up to 10%), slower for b (by up to 20%), and within 2% for c" in text
    assert "a at 32×32, batch 8 (4 parameter arrays): 0.90× (3.5 → 3.7 MiB of temporaries)" in text
    data["steps"] = steps[1:3]
    assert "faster for none, slower for b (by up to 20%), and within 2% for none" in (
        speed._flat_adamw()
    )
    assert [speed._side(x, 0.02) for x in (0.97, 0.99, 1.0, 1.02, 1.03)] == [-1, 0, 0, 0, 1]


def test_steps_per_call_block_says_where_the_goal_is_reached_and_what_the_loop_costs(
    monkeypatch,
):
    """The steps-per-call sentence quotes torch / cnn_jax with one step per call, with the best
    of the unrolled counts (whichever it is) and as a loop, names the cases at 1.5x or above,
    and spans the while loop's slowdown; the labels are the results file's."""
    from experiments.report import speed

    data = report.results("bench_steps_per_call")
    labels = data["settings"]["variants"]
    assert labels[0] == "1 per call" and labels[-1].endswith("loop")

    def case(model: str, one: float, four: float, sixteen: float, loop: float) -> dict:
        ms = dict(zip(labels, (one, four, sixteen, loop), strict=True))
        return {"model": model, "batch": 8, "ms": {**ms, "torch": 3.0}}

    fake = {**data, "steps": [case("a", 2.5, 1.9, 2.0, 10.0), case("b", 3.0, 2.6, 2.5, 60.0)]}
    monkeypatch.setattr(speed, "results", lambda name: fake)
    monkeypatch.setattr(speed, "_ran", lambda name: "`ran`")
    monkeypatch.setattr(report, "table_md", lambda name: "| table |")
    text = speed._steps_per_call()
    assert (
        "a at batch 8: 1.20 with `1 per call`, at best 1.58 (`4 per call`), 0.30 with `16 per "
        "call, loop`; b at batch 8: 1.00 with `1 per call`, at best 1.20 (`16 per call`)"
    ) in text
    assert "the 1.5× goal is reached for a at batch 8." in text
    assert "took 4.0 to 20.0 times as long as with `1 per call`" in text
    fake["steps"] = fake["steps"][1:]
    assert "reached for none of them" in speed._steps_per_call()
