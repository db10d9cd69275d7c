"""Every docstring example in the package runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax

MODULES = sorted(m.name for m in pkgutil.walk_packages(cnn_jax.__path__, prefix="cnn_jax."))
# The model families' examples initialise and apply whole networks op by op (no jit): minutes
# on 2 cores, so they run with the slow tests.
_NETWORK_EXAMPLES = {
    name
    for name in MODULES
    if name.startswith("cnn_jax.models.")
    and name not in {"cnn_jax.models.registry", "cnn_jax.models.outputs", "cnn_jax.models._utils"}
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow) if name in _NETWORK_EXAMPLES else name
        for name in MODULES
    ],
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module,
        extraglobs={"jax": jax, "jnp": jnp, "np": np},
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
        verbose=False,
    )
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
