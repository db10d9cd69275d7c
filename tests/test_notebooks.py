"""The notebooks run top to bottom, each .ipynb holds exactly the code of its jupytext .py twin
(the diff-friendly source), and its stored outputs are what that code prints today — so what a
reader sees on the repository page is what runs. ``python notebooks/build.py [names]`` rebuilds
them."""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
import warnings

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("nbclient")

HERE = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


class NotebookCostWarning(UserWarning):
    """A notebook's kernel used more CPU time than ``build.AIM_CPU_S``: reported, not failed,
    since CPU time moves by 10-15% between runs and machines and a test must not pass or fail
    on that (the suite's own time limit bounds what the notebooks cost)."""


def _load_build():
    spec = importlib.util.spec_from_file_location("notebook_build", HERE / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no .ipynb"


def test_every_source_has_a_notebook():
    stored = {p.stem for p in NOTEBOOKS}
    missing = [p.name for p in build.sources() if p.stem not in stored]
    assert not missing, f"no .ipynb for {missing}: run `python notebooks/build.py`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_matches_its_jupytext_source(path):
    source = path.with_suffix(".py")
    assert source.exists(), f"{path.name} has no paired {source.name}"
    cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]
    stored = nbformat.read(path, as_version=4)
    assert build.code_cells(stored) == build.code_cells(jupytext.read(source)), (
        f"{path.name} and {source.name} differ: run `python notebooks/build.py {path.stem}`"
    )
    assert cells(stored) == cells(jupytext.read(source)), (
        f"{path.name}'s text differs from {source.name}'s: run "
        f"`python notebooks/build.py --text-only {path.stem}`"
    )
    empty = [i for i, c in enumerate(stored.cells) if not c.source.strip()]
    assert not empty, f"{path.name} has empty cells at {empty} (blank lines in {source.name}?)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_notebook_was_built_and_ran_cleanly(path):
    """Cheap, without running anything: every code cell of the stored notebook was executed, in
    order, none stored an error, and a figure is there (executing the notebooks to compare
    their outputs is the slow test below)."""
    stored = nbformat.read(path, as_version=4)
    code = [c for c in stored.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name} was not built top to bottom in one kernel (execution counts {counts}): "
        f"run `python notebooks/build.py {path.stem}`"
    )
    errors = [i for i, c in enumerate(code) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} stores an error in code cells {errors}"
    assert any(figures for _, figures in build.signature(stored)), f"{path.name} stores no figure"


def test_cpu_probe_reads_a_number_split_across_stream_chunks():
    """A kernel may send one print as several stdout chunks (the number, then its newline);
    stderr noise is ignored, and a probe that printed no number is an error, not a zero."""
    chunk = nbformat.v4.new_output
    split = [
        chunk("stream", name="stdout", text="12.5"),
        chunk("stream", name="stderr", text="a warning\n"),
        chunk("stream", name="stdout", text="\n"),
    ]
    assert build._probe_seconds(split) == 12.5
    assert build._probe_seconds([chunk("stream", name="stdout", text="3.25\n")]) == 3.25
    with pytest.raises(RuntimeError, match="not a number"):
        build._probe_seconds([chunk("stream", name="stdout", text="\n")])


def _first_difference(stored, fresh) -> str:
    for i, (old, new) in enumerate(zip(stored, fresh, strict=True)):
        if old != new:
            diff = "\n".join(
                difflib.unified_diff(
                    old[0].splitlines(), new[0].splitlines(), "stored", "fresh", lineterm=""
                )
            )
            return f"code cell {i}: figures stored {old[1]}, fresh {new[1]}\n{diff}"
    return ""


def _execute(source):
    notebook = build.read_source(source)
    return notebook, build.execute(notebook)


@pytest.fixture(scope="module")
def executed(request):
    """Every notebook this session selected, started at once and run two at a time (each in its
    own kernel): the tests wait on their own notebook only. Under pytest-xdist, which spreads
    tests over workers itself, each notebook starts when its test asks for it."""
    if hasattr(request.config, "workerinput"):
        yield {}  # a generator fixture: a bare return would be "did not yield a value"
        return
    name = test_notebook_runs_and_its_stored_outputs_are_current.__name__
    chosen = [
        item.callspec.params["path"]
        for item in request.session.items
        if getattr(item, "originalname", None) == name and item.module.__name__ == __name__
    ]
    futures = build.run_all([p.with_suffix(".py") for p in chosen], jobs=2, run=_execute)
    yield futures
    for future in futures.values():  # a session stopped early (-x) starts no more notebooks
        future.cancel()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_and_its_stored_outputs_are_current(path, executed):
    source = path.with_suffix(".py")
    future = executed.get(source) or build.run_all([source], jobs=1, run=_execute)[source]
    notebook, cpu = future.result()  # re-raises the failing cell's error
    if cpu > build.AIM_CPU_S:
        warnings.warn(
            f"{path.name} used {cpu:.0f} s of kernel CPU (aim: {build.AIM_CPU_S} s); "
            "make it cheaper",
            NotebookCostWarning,
            stacklevel=1,
        )
    fresh = build.signature(notebook)
    assert any(figures for _, figures in fresh), "no figure was drawn"
    stored = build.signature(nbformat.read(path, as_version=4))
    assert len(stored) == len(fresh), f"{path.name}: code cells changed; rebuild it"
    assert stored == fresh, (
        f"{path.name}'s stored outputs are stale (numbers masked); run "
        f"`python notebooks/build.py {path.stem}`. First difference, "
        + _first_difference(stored, fresh)
    )


def test_signature_masks_run_to_run_noise_but_not_format():
    """What the staleness check ignores (digits, temporary paths, column widths, a best-epoch
    star) and what it catches (a changed word, an added line, a missing figure)."""

    def cell(text, figures=0):
        outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        outputs += [
            nbformat.v4.new_output("display_data", data={"image/png": "", "text/plain": "F"})
        ] * figures
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("x", outputs=outputs)]
        return build.signature(nb)

    line = "epoch   1/8  train loss 1.3814 acc 0.6044  1,065 img/s  *\n"
    noisy = "epoch   2/8  train loss 0.97 acc 0.6  12,345 img/s\n"
    assert cell(line) == cell(noisy)
    assert cell("saved in /tmp/run-abc12/x\n") == cell("saved in /tmp/run-zz9/x\n")
    assert cell("err -1.2e-05\n") == cell("err 3e-7\n")
    assert cell(line) != cell(line.replace("train loss", "loss"))
    assert cell(line) != cell(line + line)
    assert cell(line, figures=1) != cell(line)
    assert cell("backbone unchanged: True\n") != cell("backbone unchanged: False\n")


_SOURCE = """# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
# ---

# %% [markdown]
# TEXT

# %%
print(1)
"""


def test_text_only_keeps_outputs_and_refuses_changed_code(tmp_path):
    source = tmp_path / "nb.py"
    source.write_text(_SOURCE.replace("TEXT", "old words"))
    notebook = build.read_source(source)
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    notebook.cells[1].execution_count = 1
    jupytext.write(notebook, source.with_suffix(".ipynb"), fmt="ipynb")
    assert not build.update_text(source)  # nothing to do

    source.write_text(_SOURCE.replace("TEXT", "new words"))
    assert build.update_text(source)
    stored = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert stored.cells[0].source == "new words"
    assert stored.cells[1].outputs[0]["text"] == "1\n"
    assert stored.cells[1].execution_count == 1

    source.write_text(_SOURCE.replace("print(1)", "print(2)"))
    with pytest.raises(SystemExit, match="code differs"):
        build.update_text(source)


def test_run_all_returns_a_future_per_notebook_and_keeps_each_error(tmp_path):
    def run(source):
        if source.stem == "bad":
            raise ValueError(f"{source.name} failed")
        return source.stem

    sources = [tmp_path / f"{name}.py" for name in ("a", "bad", "c")]
    futures = build.run_all(sources, jobs=2, run=run)
    assert list(futures) == sources
    assert futures[sources[0]].result() == "a" and futures[sources[2]].result() == "c"
    with pytest.raises(ValueError, match=r"bad\.py failed"):
        futures[sources[1]].result()
