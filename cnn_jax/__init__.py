"""cnn_jax: convolutional networks in JAX/Flax whose every layer behaves exactly like PyTorch's.

Subpackages: ``cnn_jax.nn`` (flax.linen layers named like torch.nn), ``cnn_jax.functional`` (the
pure maths under them), ``cnn_jax.maths`` (the convolution arithmetic the course teaches) and
``cnn_jax.interop`` (PyTorch ``state_dict`` <-> Flax variables).
"""

__version__ = "0.1.0"

# The settings cnn_jax runs with; importing sets nothing (cnn_jax.runtime.apply() does).
from cnn_jax import runtime as runtime
