"""Regenerates the notebooks' stored outputs from their jupytext sources.

Each ``notebooks/NAME.py`` (jupytext percent format, the diff-friendly source) is read, executed
top to bottom in a fresh ``python3`` kernel whose working directory is ``notebooks/`` (as under
``jupyter lab notebooks/``) and which imports this checkout's ``cnn_jax``, and written to
``notebooks/NAME.ipynb`` with its outputs. Cell ids are derived from the cells' sources and no
timings are recorded, so rebuilding an unchanged notebook changes only what the run itself
changed::

    python notebooks/build.py                  # every notebook
    python notebooks/build.py 07_pooling 03    # by name, or by the start of a name

``tests/test_notebooks.py`` executes every notebook the same way and fails when the stored
outputs no longer match what the code prints (:func:`signature`): run this script after changing
a notebook or anything its outputs show.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 600  # per cell; a notebook is meant to run in well under a minute


def sources() -> list[Path]:
    """Every notebook's jupytext source (``notebooks/*.py`` with a jupytext header)."""
    return sorted(p for p in HERE.glob("*.py") if p != Path(__file__).resolve() and _is_jupytext(p))


def _is_jupytext(path: Path) -> bool:
    return path.read_text().startswith("# ---\n# jupyter:")


def select(names: list[str]) -> list[Path]:
    """The sources named (stem or the start of one); all of them when ``names`` is empty."""
    everything = sources()
    if not names:
        return everything
    chosen = []
    for name in names:
        stem = Path(name).stem
        found = [p for p in everything if p.stem == stem] or [
            p for p in everything if p.stem.startswith(stem)
        ]
        if not found:
            known = ", ".join(p.stem for p in everything)
            raise SystemExit(f"no notebook named {name!r}; notebooks: {known}")
        chosen += [p for p in found if p not in chosen]
    return chosen


def read_source(source: Path) -> nbformat.NotebookNode:
    """The notebook of a jupytext source, without outputs, with stable cell ids."""
    notebook = jupytext.read(source)
    seen: dict[str, int] = {}
    for cell in notebook.cells:
        digest = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:8]
        seen[digest] = seen.get(digest, 0) + 1
        cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
    return notebook


def execute(notebook: nbformat.NotebookNode) -> float:
    """Runs ``notebook`` in place, top to bottom, in a fresh kernel (cwd: ``notebooks/``), and
    returns the CPU seconds the kernel used (all its threads): unlike wall-clock time, hardly
    affected by other processes sharing the machine.

    The kernel imports this checkout's ``cnn_jax`` (the repository root goes first on its
    ``PYTHONPATH``), and unless ``JAX_COMPILATION_CACHE_DIR`` is set it gets a fresh JAX
    persistent compilation cache, deleted afterwards: every ``fit`` builds its steps anew, so a
    notebook with several runs of one model would compile the same programs again; with the
    cache they compile once. The outputs are the same either way (the same compiled programs
    run). Raises ``nbclient.exceptions.CellExecutionError`` naming the failing cell.
    """
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "JAX_COMPILATION_CACHE_DIR")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
    # One more cell, removed again after the run, reads the kernel's CPU time.
    notebook.cells.append(nbformat.v4.new_code_cell(_CPU_PROBE))
    with tempfile.TemporaryDirectory(prefix="notebook-jax-cache-") as cache:
        if saved["JAX_COMPILATION_CACHE_DIR"] is None:
            os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
        try:
            nbclient.NotebookClient(
                notebook,
                timeout=TIMEOUT_S,
                kernel_name="python3",
                record_timing=False,
                resources={"metadata": {"path": str(HERE)}},
            ).execute()
        finally:
            probe = notebook.cells.pop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = _coalesce_streams(cell.outputs)
    return float(probe.outputs[-1]["text"])


def _coalesce_streams(outputs: list) -> list:
    """Adjacent stdout (or stderr) chunks as one output: where a kernel happened to flush does
    not change the stored notebook."""
    merged: list = []
    for output in outputs:
        last = merged[-1] if merged else None
        if (
            last is not None
            and output.get("output_type") == "stream"
            and last.get("output_type") == "stream"
            and output.get("name") == last.get("name")
        ):
            last["text"] += output["text"]
        else:
            merged.append(output)
    return merged


_CPU_PROBE = "import os as _os\nprint(sum(_os.times()[:2]))"


# What may differ between two runs of an unchanged notebook, masked before comparing: numbers
# (timings, throughput, float rounding across CPUs), temporary paths, object addresses, the
# ' *' that marks an epoch that improved on the best so far (a tie in validation accuracy can go
# either way across CPUs), and runs of spaces (column widths follow the numbers).
_MASKS = [
    (re.compile(re.escape(tempfile.gettempdir()) + r"""/[^\s'"(),]*"""), "<tmp>"),
    (re.compile(r"""/tmp/[^\s'"(),]*"""), "<tmp>"),
    (re.compile(r"0x[0-9a-fA-F]+"), "<addr>"),
    (
        re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"),
        "#",
    ),
    (re.compile(r" +\*$", re.MULTILINE), ""),
    (re.compile(r"[ \t]+"), " "),
]


def _mask(text: str) -> str:
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text.strip()


def signature(notebook: nbformat.NotebookNode) -> list[tuple[str, int]]:
    """Per code cell: what it printed and returned (stdout, results, errors; numbers and other
    run-to-run noise masked) and how many figures it drew. Two runs of an unchanged notebook
    give the same signature; a changed, added or removed line of output, or a missing figure,
    changes it. stderr is left out: warnings there depend on the machine, not the notebook."""
    out = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        text, figures = [], 0
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "stream" and output.get("name") == "stdout":
                text.append(output.get("text", ""))
            elif kind in ("execute_result", "display_data"):
                data = output.get("data", {})
                figures += "image/png" in data
                if "image/png" not in data:
                    text.append(data.get("text/plain", "") + "\n")
            elif kind == "error":
                text.append(f"{output.get('ename')}: {output.get('evalue')}\n")
        out.append((_mask("".join(text)), figures))
    return out


def build(source: Path) -> tuple[float, float]:
    """Executes ``source`` and writes its ``.ipynb`` with the outputs; returns the wall-clock
    and kernel CPU seconds."""
    notebook = read_source(source)
    start = time.perf_counter()
    cpu = execute(notebook)
    elapsed = time.perf_counter() - start
    jupytext.write(notebook, source.with_suffix(".ipynb"), fmt="ipynb")
    return elapsed, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to rebuild (default: all)")
    for source in select(parser.parse_args(argv).names):
        print(f"{source.stem}: ", end="", flush=True)
        wall, cpu = build(source)
        target = source.with_suffix(".ipynb").relative_to(ROOT)
        print(f"{wall:.1f} s ({cpu:.1f} s of kernel CPU) -> {target}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
