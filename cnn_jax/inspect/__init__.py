"""Model inspection the way the courses do it: ``summary``, per-layer receptive fields and output
sizes, feature maps by layer name, first-layer filters, saliency maps, per-layer gradient norms,
and :mod:`~cnn_jax.inspect.plots` to draw them.

>>> import cnn_jax.inspect
"""

from cnn_jax.inspect import plots
from cnn_jax.inspect.features import (
    filters_as_images,
    first_conv_filters,
    intermediates,
    layer_gradient_norms,
    saliency,
)
from cnn_jax.inspect.summary import LayerInfo, layers, summary

__all__ = [
    "LayerInfo",
    "filters_as_images",
    "first_conv_filters",
    "intermediates",
    "layer_gradient_norms",
    "layers",
    "plots",
    "saliency",
    "summary",
]
