"""cnn_jax: convolutional networks in JAX/Flax whose every layer behaves exactly like PyTorch's.

Subpackages: ``cnn_jax.nn`` (flax.linen layers named like torch.nn), ``cnn_jax.functional`` (the
pure maths under them), ``cnn_jax.maths`` (the convolution arithmetic the course teaches) and
``cnn_jax.interop`` (PyTorch ``state_dict`` <-> Flax variables).
"""

__version__ = "0.1.0"

# First, before any JAX program compiles: the XLA settings cnn_jax runs with (cnn_jax.runtime).
from cnn_jax import runtime as runtime
