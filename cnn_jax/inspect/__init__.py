"""Model inspection the way the courses do it: ``summary``, per-layer receptive fields and output
sizes, feature maps by layer name, first-layer filters.

>>> import cnn_jax.inspect
"""

from cnn_jax.inspect.features import filters_as_images, first_conv_filters, intermediates
from cnn_jax.inspect.summary import LayerInfo, layers, summary

__all__ = [
    "LayerInfo",
    "filters_as_images",
    "first_conv_filters",
    "intermediates",
    "layers",
    "summary",
]
