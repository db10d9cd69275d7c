"""Where a compiled step should store a value instead of recomputing it.

XLA:CPU counts elementwise arithmetic (a BatchNorm's normalisation, a residual addition, ReLU)
as free to duplicate, so it fuses such a chain into every fusion that reads its result rather
than writing the result to memory once. Across a network this compounds: a residual block's
output is the previous block's output plus a branch, so a fusion that reads the last block of a
ResNet stage (the transposed copy a weight gradient needs, the ReLU mask of the backward pass)
recomputes every BatchNorm, addition and ReLU of the stage from its first block, and each of
the stage's blocks does so again. :func:`materialize` puts a boundary there that fusion cannot
cross. ResNet's blocks (BasicBlock, Bottleneck), which end in ReLU after the residual addition,
call it on their output; in the other families storing block outputs measured no clear gain
(``python -m experiments.bench_materialize``; experiments/README.md, "Speed", has the
measurements), so they do not. :func:`materialize_gradient` puts the same boundary on a value's
gradient only (the forward pass untouched): :func:`cnn_jax.functional.conv_general` applies it to
large kernels, whose weight gradient XLA computes in another layout than the parameter's, so
the transposition is done once rather than inside each optimiser update that reads it. PyTorch
has no counterpart: eager mode stores every result anyway.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def materialize(x: Array) -> Array:
    """``x`` itself, computed once into memory instead of inside every fusion that reads it.

    The value is exactly ``x`` (every bit, gradients too: the derivative of the identity). On the
    CPU it passes through a ``lax.cond`` whose two branches both return ``x``: a conditional is
    a boundary XLA's fusion does not cross, so whatever computes ``x`` runs once, and the
    derivative, a conditional as well, stores the cotangent once in the same way. The predicate
    is true for every value of ``x``'s first element (``v == v or v != v``) but XLA cannot prove
    it, so it keeps the conditional; the other branch (``x + 0``, differing from ``x`` only in
    the sign of zeros, so that XLA does not merge the branches) is never taken. Under ``vmap``
    the conditional becomes a select of the first branch, still exactly ``x``.

    The predicate reads ``x``'s first element, so where XLA can prove that element constant
    (the corner of a zero-padded array, say) it folds the conditional away and nothing is
    stored: materialize such an array before the operation that makes its corner constant.

    Off the CPU, and for an empty ``x``, this returns ``x`` unchanged (a conditional on a GPU
    costs a synchronisation with the host, and GPU fusion weighs recomputation differently).

    >>> import jax.numpy as jnp
    >>> materialize(jnp.arange(3.0))
    Array([0., 1., 2.], dtype=float32)
    """
    x = jnp.asarray(x)
    if x.size == 0 or jax.default_backend() != "cpu":
        return x
    return _through_conditional(x, _always_true(x))


def materialize_gradient(x: Array) -> Array:
    """``x`` itself, whose gradient is computed once into memory instead of inside every fusion
    that reads it.

    The value, and every derivative, is exactly ``x``'s. The forward pass is untouched (nothing
    is copied); the tangent, and so in reverse mode the cotangent, passes through the
    conditional :func:`materialize` uses, with the predicate read from ``x`` (a value known in
    both passes). Where the gradient is produced in one physical layout and read in another,
    XLA:CPU otherwise fuses the transposition into each reader: the convolution weight
    gradients of :func:`cnn_jax.functional.conv_general`, which XLA computes input-channel
    major while the parameter, and so every optimiser update reading the gradient, is torch's
    OIHW, and a fused transposed read of a large array is several times slower than a
    transposition on its own (``python -m experiments.bench_weight_gradients``).

    Off the CPU, and for an empty ``x``, this returns ``x`` unchanged.

    >>> import jax, jax.numpy as jnp
    >>> jax.grad(lambda w: (materialize_gradient(w) ** 2).sum())(jnp.arange(3.0))
    Array([0., 2., 4.], dtype=float32)
    """
    x = jnp.asarray(x)
    if x.size == 0 or jax.default_backend() != "cpu":
        return x
    return _stored_tangent(x)


@jax.custom_jvp
def _stored_tangent(x: Array) -> Array:
    return x


@_stored_tangent.defjvp
def _stored_tangent_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (tangent,) = primals, tangents
    return x, store_tangent(tangent, x)


def store_tangent(tangent: Array, primal: Array) -> Array:
    """``tangent`` itself, passed through :func:`materialize`'s conditional with the predicate
    read from ``primal``, a non-empty array known in both passes. For use inside a JVP rule:
    the conditional is linear in ``tangent``, so in reverse mode it transposes into a
    conditional on the cotangent, which is then computed once into memory, in its own layout,
    before whatever reads it (:func:`materialize_gradient` stores a gradient this way;
    :func:`cnn_jax.functional.conv_general` the output gradient that a 1x1 convolution's
    weight gradient reads). CPU only: callers check the backend."""
    return _through_conditional(tangent, _always_true(primal))


def _always_true(x: Array) -> Array:
    """A zero-dimensional predicate, true for every value of ``x``'s first element (NaN
    included), which XLA cannot prove true."""
    first = x.reshape(-1)[0]
    return (first == first) | (first != first)


def _through_conditional(x: Array, always: Array) -> Array:
    """``x``, returned by the first branch of a conditional on ``always``; the second branch
    (never taken) differs from ``x`` only in the sign of zeros, so XLA does not merge them."""
    return lax.cond(always, lambda t: t, lambda t: t + jnp.zeros((), t.dtype), x)
