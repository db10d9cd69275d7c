"""The README's Python examples run as written, in order, as a reader would run them."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_in_order():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2, "README.md lost its python examples"
    namespace: dict = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"README.md[python block {index}]", "exec"), namespace)
