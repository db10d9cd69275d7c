"""strided_windows: the slices every windowed layer reads, and their phase-by-phase transpose."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.functional._windows import _slices, strided_windows
from cnn_jax.functional.sizes import conv_output_size
from cnn_jax.testing.programs import interior_pads

CASES = [
    # (input H, W), kernel, stride, dilation
    ((9, 9), (3, 3), (2, 2), (1, 1)),
    ((8, 11), (3, 2), (2, 3), (1, 1)),
    ((10, 10), (3, 3), (2, 2), (2, 2)),
    ((7, 9), (1, 1), (2, 2), (1, 1)),
    ((12, 12), (5, 5), (3, 3), (1, 1)),
    ((6, 9), (2, 3), (1, 2), (1, 1)),
    ((9, 9), (3, 3), (1, 1), (1, 1)),
]


def _out(hw, k, s, d):
    return tuple(
        conv_output_size(n, kk, (0, 0), ss, dd) for n, kk, ss, dd in zip(hw, k, s, d, strict=True)
    )


@pytest.mark.parametrize(("hw", "k", "s", "d"), CASES, ids=str)
def test_windows_and_all_their_derivatives_equal_strided_slices(hw, k, s, d, rng):
    x = jnp.asarray(rng.standard_normal((2, *hw, 3)).astype(np.float32))
    out = _out(hw, k, s, d)
    # Compiled, as a model runs them (op by op, each of the many slices compiles on its own).
    ours = jax.jit(lambda x: jnp.stack(strided_windows(x, k, s, d, out)))
    plain = jax.jit(lambda x: jnp.stack(_slices(x, k, s, d, out)))
    np.testing.assert_array_equal(ours(x), plain(x))
    ct = jnp.asarray(rng.standard_normal(ours(x).shape).astype(np.float32))
    # The transpose adds the same terms (several taps reading one input position) in another
    # order, hence float32 rounding; forward mode and vmap are the slices themselves.
    np.testing.assert_allclose(
        jax.vjp(ours, x)[1](ct)[0], jax.vjp(plain, x)[1](ct)[0], rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(jax.jvp(ours, (x,), (x * 2,))[1], plain(x * 2))
    np.testing.assert_array_equal(jax.vmap(ours)(x[:, None]), jax.vmap(plain)(x[:, None]))


@pytest.mark.parametrize(("hw", "k", "s", "d"), CASES, ids=str)
def test_strided_windows_transpose_without_interior_padding(hw, k, s, d):
    """The backward pass of strided windows shifts each tap within its stride phase (plain
    pads) rather than dilating it over the whole input; jax's own transpose of a strided slice
    is an interior-padded pad."""
    x = jnp.zeros((2, *hw, 3))
    out = _out(hw, k, s, d)
    for windows, want in ((strided_windows, 0), (_slices, s != (1, 1))):
        f = lambda x, windows=windows: jnp.stack(windows(x, k, s, d, out))
        ct = jnp.zeros((k[0] * k[1], 2, *out, 3))
        jaxpr = jax.make_jaxpr(lambda ct, f=f: jax.vjp(f, x)[1](ct))(ct).jaxpr
        assert bool(interior_pads(jaxpr)) == bool(want), windows.__name__


def test_integer_windows_are_slices():
    """Integer inputs (max pooling's values path) have no transpose: plain slices."""
    x = jnp.arange(2 * 9 * 9 * 2, dtype=jnp.int32).reshape(2, 9, 9, 2)
    k, s, d = (3, 3), (2, 2), (1, 1)
    out = _out((9, 9), k, s, d)
    for a, b in itertools.zip_longest(strided_windows(x, k, s, d, out), _slices(x, k, s, d, out)):
        np.testing.assert_array_equal(a, b)
