"""Weights in and out of PyTorch.

``from_torch(module, state_dict)`` gives Flax variables; ``to_torch(module, variables)`` gives a
torch ``state_dict``. Both work for every cnn_jax layer and model. :mod:`cnn_jax.interop.weights`
reads and writes weights files (``.pth``, ``.safetensors``) and finds torchvision's published
weights.
"""

from cnn_jax.interop import weights
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
    "weights",
]
