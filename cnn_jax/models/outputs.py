"""What a model's train-mode output holds: plain logits, or torchvision's named tuple of logits
and auxiliary logits (GoogLeNet, Inception v3), and how a training loss weighs them.

torchvision's GoogLeNet and Inception v3 return, in train mode with ``aux_logits=True``,
``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` / ``InceptionOutputs(logits,
aux_logits)``; cnn_jax's return the same named tuples (JAX pytrees), which carry the weights of
their terms in a training loss as ``loss_weights``.

>>> import jax.numpy as jnp
>>> from cnn_jax.models.googlenet import GoogLeNetOutputs
>>> out = GoogLeNetOutputs(jnp.zeros((2, 5)), jnp.ones((2, 5)), jnp.ones((2, 5)))
>>> [(weight, logits.shape) for weight, logits in loss_terms(out)]
[(1.0, (2, 5)), (0.3, (2, 5)), (0.3, (2, 5))]
>>> main_logits(out).shape
(2, 5)
"""

from __future__ import annotations

from typing import Any


def _is_named_output(output: Any) -> bool:
    return isinstance(output, tuple) and hasattr(output, "_fields")


def main_logits(output: Any) -> Any:
    """The logits a model's output holds: ``output.logits`` for a named tuple of outputs, else
    ``output`` itself (accuracy and evaluation use these)."""
    return output.logits if _is_named_output(output) else output


def logits_terms(output: Any) -> list[Any]:
    """Every logits array of a model's output, main first; auxiliary heads that did not run
    (``None``) left out. Works on cnn_jax's outputs and on torchvision's (tensors)."""
    if not _is_named_output(output):
        return [output]
    return [value for value in output if value is not None]


def loss_terms(output: Any) -> list[tuple[float, Any]]:
    """``(weight, logits)`` pairs whose weighted cross-entropies sum to a model's training loss:
    ``[(1.0, output)]`` for plain logits; for a named tuple its class's ``loss_weights`` (one per
    field), auxiliary heads that did not run left out.

    Raises:
      ValueError: for a tuple of outputs without ``loss_weights``.
    """
    if not _is_named_output(output):
        return [(1.0, output)]
    weights = getattr(type(output), "loss_weights", None)
    if weights is None or len(weights) != len(output):
        raise ValueError(
            f"{type(output).__name__} has no loss_weights for its fields {output._fields}; "
            "give the class one weight per field"
        )
    return [(w, value) for w, value in zip(weights, output, strict=True) if value is not None]
