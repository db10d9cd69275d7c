"""What a traced program contains, for tests that check how the library's derivatives are built."""

from __future__ import annotations

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
