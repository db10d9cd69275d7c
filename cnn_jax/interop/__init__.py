"""Weights in and out of PyTorch: ``from_torch(module, state_dict)`` / ``to_torch(module, variables)``."""

from cnn_jax.interop.torch import (
    StateDictError,
    StateDictReport,
    abstract_variables,
    check_state_dict,
    from_torch,
    init_variables,
    to_state_dict,
    to_torch,
)

__all__ = [
    "StateDictError",
    "StateDictReport",
    "abstract_variables",
    "check_state_dict",
    "from_torch",
    "init_variables",
    "to_state_dict",
    "to_torch",
]
