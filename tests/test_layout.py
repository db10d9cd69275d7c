"""The package layout is the architecture: data flows one way, and the pure step does not depend
on the run machinery. Checked on the imports written in the source (module level and inside
functions alike), so a lazy import cannot hide a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import cnn_jax

PACKAGE = Path(cnn_jax.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every cnn_jax module ``path`` imports (``from a import b`` counts as ``a`` and
    ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "cnn_jax"}


def _offenders(importers: str, imported: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        if module == importers or module.startswith(importers + "."):
            for name in _imports(path):
                if any(name == m or name.startswith(m + ".") for m in imported):
                    out.append(f"{module} imports {name}")
    return out


def test_the_step_maths_and_distribution_do_not_import_the_run_machinery():
    for core in ("state", "step", "optim", "parallel"):
        assert _offenders(f"cnn_jax.train.{core}", ("cnn_jax.train.run",)) == []


def test_nothing_below_train_imports_train_or_the_command_line():
    for lower in ("nn", "functional", "models", "data", "interop", "inspect", "nnx"):
        assert _offenders(f"cnn_jax.{lower}", ("cnn_jax.train", "cnn_jax.cli")) == []


def test_the_check_sees_lazy_imports(tmp_path):
    """An import inside a function counts as much as one at the top."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from cnn_jax.train.run import loop\n")
    assert _imports(source) == {"cnn_jax.train.run", "cnn_jax.train.run.loop"}
