"""The notebooks run top to bottom, and each .ipynb holds exactly the code of its jupytext .py
twin (the diff-friendly source), so what a reader sees on the repository page is what runs."""

from __future__ import annotations

import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_matches_its_jupytext_source(path):
    source = path.with_suffix(".py")
    assert source.exists(), f"{path.name} has no paired {source.name} (jupytext --sync)"
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == "code"]
    assert code(nbformat.read(path, as_version=4)) == code(jupytext.read(source)), (
        f"{path.name} and {source.name} differ: run `jupytext --sync {source}` and re-execute"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    elapsed = time.perf_counter() - start
    assert elapsed < 240, f"{path.name} took {elapsed:.0f} s (budget: about a minute)"
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was drawn"
