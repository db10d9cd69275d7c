"""The README's Python examples run as written, in order, as a reader would run them."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_in_order():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2, "README.md lost its python examples"
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for index, block in enumerate(blocks):
            exec(compile(block, f"README.md[python block {index}]", "exec"), namespace)
    # The tour's training block shows learning, not chance accuracy (0.1 for ten digits).
    accuracies = [float(a) for a in re.findall(r"test accuracy (\d\.\d+)", printed.getvalue())]
    assert len(accuracies) >= 2 and accuracies[-1] > max(0.8, accuracies[0]), printed.getvalue()
