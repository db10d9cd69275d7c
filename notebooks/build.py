"""Regenerates the notebooks' stored outputs from their jupytext sources.

Each ``notebooks/NAME.py`` (jupytext percent format, the diff-friendly source) is read, executed
top to bottom in a fresh ``python3`` kernel whose working directory is ``notebooks/`` (as under
``jupyter lab notebooks/``) and which imports this checkout's ``cnn_jax``, and written to
``notebooks/NAME.ipynb`` with its outputs. Cell ids are derived from the cells' sources and no
timings are recorded, so rebuilding an unchanged notebook changes only what the run itself
changed::

    python notebooks/build.py                  # every notebook
    python notebooks/build.py 07_pooling 03    # by name, or by the start of a name
    python notebooks/build.py -j 1             # one at a time (default: two)
    python notebooks/build.py --text-only 04   # markdown edited only: keep the outputs

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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import jupytext
import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 600  # per cell; a notebook is meant to run in well under a minute
# What a notebook's kernel may use: ~30 s on 2 cores is the aim, a minute of both the most. The
# build and the tests report a notebook over it (CPU time, unlike wall-clock time, does not
# depend on what else runs; it still moves by 10-15% between runs).
AIM_CPU_S = 120
# How a notebook fails: a cell raised, a cell ran past TIMEOUT_S, or the kernel died.
NOTEBOOK_FAILURES = (
    nbclient.exceptions.CellExecutionError,
    nbclient.exceptions.CellTimeoutError,
    nbclient.exceptions.DeadKernelError,
)


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
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # One more cell, removed again after the run, reads the kernel's CPU time.
    notebook.cells.append(nbformat.v4.new_code_cell(_CPU_PROBE))
    with tempfile.TemporaryDirectory(prefix="notebook-jax-cache-") as cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
        try:
            # The kernel's environment goes to its launch (not into os.environ): notebooks may
            # run in parallel threads (run_all).
            nbclient.NotebookClient(
                notebook,
                timeout=TIMEOUT_S,
                kernel_name="python3",
                record_timing=False,
                resources={"metadata": {"path": str(HERE)}},
            ).execute(env=env)
        finally:
            probe = notebook.cells.pop()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = _coalesce_streams(cell.outputs)
    return _probe_seconds(probe.outputs)


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


def _probe_seconds(outputs: list) -> float:
    """The CPU seconds that ``_CPU_PROBE`` printed. The kernel may deliver one print as several
    stdout chunks (the number, then its newline), so the chunks are joined before parsing."""
    text = "".join(
        o["text"] for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    try:
        return float(text.strip())
    except ValueError:
        raise RuntimeError(f"the CPU-time probe cell printed {text!r}, not a number") from None


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


def code_cells(notebook: nbformat.NotebookNode) -> list[str]:
    """The sources of ``notebook``'s code cells."""
    return [c.source for c in notebook.cells if c.cell_type == "code"]


def update_text(source: Path) -> bool:
    """Copies ``source``'s markdown into its stored ``.ipynb`` and keeps the stored outputs,
    without running anything: for a change to the text only. Returns whether the ``.ipynb``
    changed. Raises ``SystemExit`` when a code cell differs (then the outputs must be rebuilt)."""
    target = source.with_suffix(".ipynb")
    stored = nbformat.read(target, as_version=4)
    notebook = read_source(source)
    if code_cells(notebook) != code_cells(stored):
        raise SystemExit(f"{source.name}'s code differs from {target.name}'s: rebuild it")
    outputs = iter([(c.outputs, c.execution_count) for c in stored.cells if c.cell_type == "code"])
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = next(outputs)
    if [(c.cell_type, c.source) for c in notebook.cells] == [
        (c.cell_type, c.source) for c in stored.cells
    ]:
        return False
    jupytext.write(notebook, target, fmt="ipynb")
    return True


def run_all(sources_: list[Path], jobs: int, run=None) -> dict[Path, Future]:
    """Starts ``run(source)`` (default :func:`build`) for every source, ``jobs`` notebooks at a
    time, each in its own kernel, and returns their futures at once: a caller waits on each
    (``.result()`` re-raises that notebook's error). Notebooks spend much of their time
    compiling, one core each, so two at a time on two cores take about half as long."""
    run = run or build
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="notebook")
    futures = {source: pool.submit(run, source) for source in sources_}
    pool.shutdown(wait=False)  # the threads finish the queue; nothing more is submitted
    return futures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to rebuild (default: all)")
    parser.add_argument(
        "-j", "--jobs", type=int, default=2, help="notebooks run at a time (default: 2)"
    )
    parser.add_argument(
        "--text-only",
        action="store_true",
        help="copy the markdown of unchanged-code notebooks, keep their outputs, run nothing",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.text_only:
        for source in select(args.names):
            changed = update_text(source)
            print(f"{source.stem}: {'text updated' if changed else 'unchanged'}")
        return 0
    failed = []
    for source, future in run_all(select(args.names), args.jobs).items():
        try:
            wall, cpu = future.result()
        except NOTEBOOK_FAILURES as err:
            failed.append(source.stem)
            print(f"{source.stem}: FAILED, its .ipynb left as it was\n{err}", flush=True)
            continue
        target = source.with_suffix(".ipynb").relative_to(ROOT)
        over = f", over the {AIM_CPU_S} s aim: make it cheaper" if cpu > AIM_CPU_S else ""
        print(
            f"{source.stem}: {wall:.1f} s ({cpu:.1f} s of kernel CPU{over}) -> {target}",
            flush=True,
        )
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
