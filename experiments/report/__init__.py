"""Renders every number the READMEs quote from the results files, and checks that they agree.

    python -m experiments.report            # rewrite every table.md and every marked block
    python -m experiments.report --check    # list what differs, exit 1 (tests/test_report.py)
    python -m experiments.report --figures  # also redraw the figures that results.json holds

A marked block in ``README.md`` or ``experiments/README.md`` is ``<!-- report:NAME -->`` ...
``<!-- /report -->``: on lines of their own it holds paragraphs or a table, inside a line a
phrase. :data:`BLOCKS` maps each NAME to the function that renders it from the results files
(``experiments/results/<name>/results.json``, read with :func:`results`), so a number in a block
is exactly what its file says; prose around the blocks carries no measured number. Every
``table.md`` is re-rendered from its ``results.json`` by the ``tables`` function of the script
that wrote it. A results file that does not exist yet renders as the sentence in :data:`MISSING`
(no number; ``experiments/rerun_all.sh`` makes every file). The renderers live in this package's
modules, one per README section.

Standard deviations are sample standard deviations (n - 1) throughout.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import statistics
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments import record

ROOT = record.ROOT
DOCS = (ROOT / "README.md", ROOT / "experiments" / "README.md")
BLOCK = re.compile(r"<!-- report:(?P<name>[\w.-]+) -->(?P<body>.*?)<!-- /report -->", re.DOTALL)
BLOCKS: dict[str, Callable[[], str]] = {}


def block(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Registers the renderer of the block ``name``."""

    def register(fn: Callable[[], str]) -> Callable[[], str]:
        if name in BLOCKS:
            raise ValueError(f"block {name!r} registered twice")
        BLOCKS[name] = fn
        return fn

    return register


class Missing(LookupError):
    """A results file a block needs does not exist (yet)."""


def results(name: str) -> dict[str, Any]:
    """``experiments/results/<name>/results.json``; :class:`Missing` if it is not there."""
    path = record.RESULTS / name / "results.json"
    if not path.exists():
        raise Missing(name)
    return record.load(path)


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = [float(x) for x in values]
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def pct(x: float, digits: int = 1) -> str:
    """``0.9366`` -> ``'93.7%'``."""
    return f"{100 * x:.{digits}f}%"


def pct_pm(values: Sequence[float], digits: int = 1) -> str:
    """Mean ± sample std in percent: ``'96.9 ± 1.1%'``."""
    m, s = mean_std(values)
    return f"{100 * m:.{digits}f} ± {100 * s:.{digits}f}%"


def span(values: Sequence[float], fmt: Callable[[float], str], sep: str = "–") -> str:
    """``'lo–hi'`` of ``values`` (one value when they are equal as formatted)."""
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}{sep}{hi}"


# Environment variables that change what a run measures, shown in front of its command.
RERUN_ENVIRONMENT = record.SWITCHES


def rerun_command(prov: dict[str, Any]) -> str:
    """The command that re-runs a result: as recorded, with a script path written the way the
    scripts are run now (``python experiments/x/y.py`` -> ``python -m experiments.x.y``), and
    with a :data:`RERUN_ENVIRONMENT` variable the run had set in front of it."""
    words = shlex.split(prov["command"])
    if words and words[0] == "python":
        words = words[1:]
    if words and words[0].endswith(".py"):
        path = words[0].removeprefix("./").removesuffix(".py")
        words = ["-m", path.replace("/", "."), *words[1:]]
    # A setting read from the environment that the run changed goes in front of the command.
    environment = (prov.get("runtime") or {}).get("environment") or {}
    prefix = [f"{k}={environment[k]}" for k in RERUN_ENVIRONMENT if k in environment]
    return shlex.join([*prefix, "python", *words])


def machine(prov: dict[str, Any], *, torch: bool = False) -> str:
    """``'2-core AMD EPYC (AVX-512), jax 0.10.2, torch 2.13.0+cpu'``: what was recorded."""
    m, v = prov["machine"], prov["versions"]
    if not m.get("cpu"):
        text = "machine not recorded"
    else:
        text = f"{m['cores']}-core {m['cpu']}" if m.get("cores") else m["cpu"]
    if m.get("isa"):
        text += f" ({m['isa']})"
    if v.get("jax"):
        text += f", jax {v['jax']}"
    if torch and v.get("torch"):
        text += f", torch {v['torch']}"
    return text


def settings(prov: dict[str, Any]) -> str:
    """cnn_jax's runtime settings as the file recorded them (``not recorded`` where it did
    not: such a file predates the setting); huge pages only where the heap asked for them,
    the dispatch only where it was synchronous."""
    rt = prov["runtime"]
    xla = record.xla_setting(rt.get("xla"))
    malloc = (
        rt["malloc"]["reason"]
        if rt.get("malloc")
        else "not recorded: the run predates cnn_jax's allocator setting"
    )
    allocator = rt.get("allocator") or {}
    if allocator.get("name") == "tcmalloc":  # glibc's options do not apply then
        malloc = allocator["reason"]
    text = f"XLA setting: {xla}; allocator: {malloc}"
    if (rt.get("huge_pages") or {}).get("enabled"):  # without them goes without saying
        text += f"; huge pages: {rt['huge_pages']['reason']}"
    if (rt.get("dispatch") or {}).get("synchronous"):  # JAX's default goes without saying
        text += f"; dispatch: {rt['dispatch']['reason']}"
    return text


def when(prov: dict[str, Any]) -> str:
    """When it ran: the recorded date, else the commit that stored the file."""
    if prov.get("started"):
        commit = prov.get("commit")  # None outside a git checkout
        where = f"commit {commit[:7]}" if commit else "no git commit recorded"
        return f"run {prov['started'][:10]}, {where}" + (
            " with local changes" if prov.get("dirty") else ""
        )
    committed = prov.get("committed_in")
    return f"stored in commit {committed['commit'][:7]}" if committed else "date not recorded"


def where(name: str) -> str:
    return f"`experiments/results/{name}/`"


def table_md(name: str) -> str:
    """The ``table.md`` of results folder ``name`` as its script renders it now."""
    return render_table(name, results(name))


# ---------------------------------------------------------------------------------------------
# table.md: each folder's script renders it
# ---------------------------------------------------------------------------------------------


def module_of(name: str, data: dict[str, Any]) -> Any:
    """The script that wrote results folder ``name`` (from its recorded command)."""
    words = shlex.split(rerun_command(data["provenance"]))
    return importlib.import_module(words[words.index("-m") + 1])


def render_table(name: str, data: dict[str, Any]) -> str:
    module = module_of(name, data)
    if module.__name__.startswith("experiments.course."):
        from experiments.course import _common

        return _common.with_note(module.tables(data), data)
    return module.tables(data)


def result_folders() -> list[str]:
    """Every folder under experiments/results/ that holds a results.json, relative."""
    return sorted(
        str(p.parent.relative_to(record.RESULTS)) for p in record.RESULTS.rglob("results.json")
    )


# ---------------------------------------------------------------------------------------------
# Rendering, checking, rewriting
# ---------------------------------------------------------------------------------------------


def wrap(text: str, width: int = 100) -> str:
    """Paragraphs and bullets re-filled to ``width`` (a bullet's lines indented by two);
    tables, images and code left as they are."""
    out = []
    for para in text.strip("\n").split("\n\n"):
        lines = para.split("\n")
        if any(line.startswith(("|", "!", "```", "    ")) for line in lines):
            out.append(para)
            continue
        items: list[list[str]] = []
        for line in lines:
            if line.startswith("- ") or not items:
                items.append([line])
            else:
                items[-1].append(line.strip())
        out.append(
            "\n".join(
                textwrap.fill(
                    " ".join(item),
                    width,
                    subsequent_indent="  " if item[0].startswith("- ") else "",
                    break_long_words=False,
                    break_on_hyphens=False,
                )
                for item in items
            )
        )
    return "\n\n".join(out)


def render(name: str) -> str:
    """Block ``name`` as its renderer writes it from the results files, re-filled; while a
    results file it needs is missing, its :data:`MISSING` sentence."""
    if name not in BLOCKS:
        raise KeyError(f"no renderer for block {name!r} (experiments/report BLOCKS)")
    try:
        return wrap(BLOCKS[name]())
    except Missing as missing:
        return wrap(MISSING.get(name, "").format(folder=where(str(missing))))


# What a block says while its results file does not exist (no numbers).
MISSING: dict[str, str] = {}


def rewrite(text: str) -> str:
    """``text`` with every marked block re-rendered."""

    def sub(m: re.Match) -> str:
        body = render(m["name"])
        # A block of its own (paragraphs, a table) keeps its lines; a phrase inside a paragraph
        # or list item becomes one line, so it cannot break the paragraph's indentation.
        body = f"\n{body}\n" if m["body"].startswith("\n") else " ".join(body.split())
        return f"<!-- report:{m['name']} -->{body}<!-- /report -->"

    return BLOCK.sub(sub, text)


def used_blocks() -> set[str]:
    return {m["name"] for doc in DOCS for m in BLOCK.finditer(doc.read_text())}


def stale() -> list[str]:
    """What differs from its rendering: README files and table.md files, one line each."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        if rewrite(text) != text:
            names = [
                m["name"]
                for m in BLOCK.finditer(text)
                if rewrite(m.group(0)) != m.group(0)  # this block alone
            ]
            out.append(f"{doc.relative_to(ROOT)}: blocks {', '.join(names)}")
    for name in result_folders():
        path = record.RESULTS / name / "table.md"
        want = render_table(name, results(name)).rstrip("\n") + "\n"
        if not path.exists() or path.read_text() != want:
            out.append(f"{path.relative_to(ROOT)}")
    unused = set(BLOCKS) - used_blocks()
    if unused:
        out.append(f"renderers no README uses: {', '.join(sorted(unused))}")
    return out


def redraw_figures() -> list[Path]:
    """The figures a results.json holds all the data of, drawn again from it."""
    from experiments import bench_vs_torch, functional_vs_stateful, gradient_precision

    drawn = []
    for name in result_folders():
        data, out = results(name), record.RESULTS / name
        module = module_of(name, data)
        if module is bench_vs_torch:
            bench_vs_torch.plot(data["results"], out / "ratios.png")
            drawn.append(out / "ratios.png")
        elif module is functional_vs_stateful and any(
            m.get("agreement") for m in data["models"].values()
        ):
            functional_vs_stateful.plot(data, out)
            drawn.append(out / "agreement.png")
        elif module is gradient_precision and "rows" in data:
            gradient_precision.plot(data, out / "errors.png")
            drawn.append(out / "errors.png")
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences, write nothing")
    parser.add_argument("--figures", action="store_true", help="redraw figures from results.json")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for line in problems:
            print(f"stale: {line}")
        if problems:
            print("run `python -m experiments.report` to re-render them")
        return 1 if problems else 0
    for name in result_folders():
        path = record.RESULTS / name / "table.md"
        path.write_text(render_table(name, results(name)).rstrip("\n") + "\n")
    for doc in DOCS:
        doc.write_text(rewrite(doc.read_text()))
    if args.figures:
        for path in redraw_figures():
            print(f"drew {path.relative_to(ROOT)}")
    problems = stale()
    for line in problems:
        print(f"still stale: {line}")
    return 1 if problems else 0


# The renderers, by README section; importing them fills BLOCKS and MISSING.
from experiments.report import course, fidelity, pipeline, speed, summary  # noqa: E402,F401
