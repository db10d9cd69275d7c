"""What a traced program contains, for tests that check how the library's derivatives are built."""

from __future__ import annotations

import re

from jax.extend.core import Jaxpr, jaxprs_in_params


def interior_pads(jaxpr: Jaxpr) -> int:
    """How many ``pad`` equations of ``jaxpr``, and of the jaxprs nested in it, insert interior
    padding (jax's transpose of a strided slice is one)."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pad":
            count += any(interior for _, _, interior in eqn.params["padding_config"])
        count += sum(map(interior_pads, jaxprs_in_params(eqn.params)))
    return count


def entry_arrays(compiled_text: str, dtype: str, shape: tuple[int, ...]) -> int:
    """How many instructions of a compiled program's entry computation (``compiled.as_text()``)
    produce a ``dtype`` array of ``shape``: the arrays of that shape the program writes to memory
    (a fusion's inner instructions are not counted)."""
    entry = compiled_text[compiled_text.index("\nENTRY") :]
    dims = ",".join(map(str, shape))
    return len(re.findall(rf"\n\s*(?:ROOT )?%?[\w.-]+ = {dtype}\[{dims}\]", entry))
