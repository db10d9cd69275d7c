"""cnn_jax: convolutional networks in JAX/Flax whose every layer behaves exactly like PyTorch's.

Subpackages: ``cnn_jax.nn`` (flax.linen layers named like torch.nn), ``cnn_jax.functional`` (the
pure maths under them), ``cnn_jax.models`` (the course's networks and torchvision's classics, by
name), ``cnn_jax.data`` (tfds datasets without TensorFlow, batching, augmentation),
``cnn_jax.train`` (pure steps, data parallelism, optimisers, and the run machinery: ``fit``),
``cnn_jax.inspect`` (summaries, feature maps, filters), ``cnn_jax.interop`` (PyTorch
``state_dict`` <-> Flax variables), ``cnn_jax.nnx`` (the same layers in Flax NNX's stateful
style) and ``cnn_jax.testing`` (the PyTorch references and parity checks the tests use); modules
``cnn_jax.maths`` (the convolution arithmetic the course teaches), ``cnn_jax.errors`` and
``cnn_jax.runtime`` (the XLA and allocator settings that ``cnn-jax`` and ``fit`` apply with
``cnn_jax.runtime.apply()``; importing cnn_jax sets nothing).
"""

__version__ = "0.1.0"

from cnn_jax import runtime as runtime
