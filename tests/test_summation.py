"""Cascaded sums over leading axes (cnn_jax.functional.summation) and the batch norm built on
them: same values as plain sums, the transpose pairing AD relies on, and float32 accuracy at
torch's level where XLA:CPU's sequential reduce is not."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import runtime
from cnn_jax.functional import batch_norm, summation

torch = pytest.importorskip("torch")

SHAPES = [
    ((6, 16, 16, 2), 3),
    ((32, 7, 7, 5), 3),
    ((13, 11, 3), 2),
    ((96, 4), 1),
    ((97, 4), 1),  # a prime count: no block divides it
    ((2, 3, 3, 4), 3),  # below MIN_CASCADE_ROWS
    ((4, 6, 6, 2, 3), 3),  # more than one trailing axis
]


@pytest.mark.parametrize(("shape", "count"), SHAPES, ids=str)
def test_leading_sum_is_the_sum_and_spread_its_transpose(shape, count, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    total = jax.jit(summation.leading_sum, static_argnums=1)(jnp.asarray(x), count)
    np.testing.assert_allclose(total, x.astype(np.float64).sum(axis=tuple(range(count))),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    v = jnp.asarray(rng.standard_normal(shape[count:]).astype(np.float32))
    np.testing.assert_array_equal(summation.spread(v, shape), np.broadcast_to(v, shape))
    (transposed,) = jax.jit(jax.linear_transpose(lambda v: summation.spread(v, shape), v))(
        jnp.asarray(x)
    )
    np.testing.assert_array_equal(transposed, total)


def test_levels_split_the_rows_of_one_image_near_the_square_root_then_the_images():
    for shape, count in SHAPES:
        factors = summation.levels(shape, count)
        m = math.prod(shape[:count])
        if m < summation.MIN_CASCADE_ROWS or math.prod(shape) >= summation.CASCADE_BELOW_ELEMENTS:
            assert factors == (), shape
            continue
        # Empty where no divisor groups the rows (97 images of one row each).
        assert not factors or (m % math.prod(factors) == 0 and factors[0] ** 2 <= m), shape
    # 1024 rows per 32x32 image = 64 * 16, then 6 images = 2 * 3.
    assert summation.levels((6, 32, 32, 4), 3) == (64, 16, 2)
    assert summation.levels((32, 24, 24, 1), 3) == (96, 6, 4)  # M = 18432, then 32 = 4 * 8
    assert summation.levels((256, 1, 1, 16), 3) == (16,)  # one pixel per image: images only
    assert summation.levels((2, 97, 1), 2) == (97,)  # a prime row count: one level
    assert summation.levels((97, 4), 1) == ()  # 97 images: no divisor to group them by
    assert summation.levels((2, 3, 3, 4), 3) == ()  # 18 rows: a plain sum
    assert summation.levels((32, 56, 56, 64), 3) == ()  # YNNPACK's reduce: a plain sum


def test_cascade_under_transformations_and_in_low_precision():
    """On a cascaded shape, in float64: forward mode, vmap and second-order derivatives of
    leading_sum and spread equal a plain sum's and broadcast's; bfloat16 sums in float32."""
    shape, count = (6, 16, 16, 2), 3
    assert summation.levels(shape, count)
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(shape))
        t = jnp.asarray(rng.standard_normal(shape))
        v = jnp.asarray(rng.standard_normal(shape[count:]))
        axes = tuple(range(count))
        pairs = [
            (lambda x: summation.leading_sum(jnp.sin(x), count), lambda x: jnp.sin(x).sum(axes)),
            (lambda x: summation.spread(jnp.sin(x.sum(axes)), shape) * x,
             lambda x: jnp.broadcast_to(jnp.sin(x.sum(axes)), shape) * x),
        ]  # fmt: skip
        for ours, plain in pairs:
            checks = {
                "jvp": lambda f: jax.jvp(f, (x,), (t,)),
                "vmap": lambda f: jax.vmap(f)(jnp.stack([x, 2 * x])),
                "grad(grad)": lambda f: jax.grad(
                    lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(f(x) ** 2))(x) * t)
                )(x),
                "jacfwd(v)": lambda f: jax.jacfwd(lambda v: f(x + jnp.broadcast_to(v, shape)))(v),
            }
            for name, check in checks.items():
                for a, r in zip(jax.tree.leaves(check(ours)), jax.tree.leaves(check(plain)),
                                strict=True):  # fmt: skip
                    np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-10, err_msg=name)
    low = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.bfloat16)
    total = summation.leading_sum(low, count)
    assert total.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        total, low.astype(jnp.float32).sum(axis=(0, 1, 2)).astype(jnp.bfloat16)
    )


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"count must be in 1\.\.2"):
        summation.levels((3, 4), 3)
    with pytest.raises(ValueError, match="cannot spread"):
        summation.spread(jnp.ones(3), (5, 4))
    with pytest.raises(ValueError, match="cannot spread"):
        summation.spread(jnp.ones((5, 3)), (5, 3))


# Every reduce to XLA's own loop emitter, YNNPACK's reductions off (cnn_jax.runtime's setting
# without LIBRARY_FUSION_TYPE_REDUCE): the emitter that adds rows one after another.
LOOP_EMITTER = {runtime.YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def _compiled(fn, *args, emitter):
    if emitter == "default":
        return jax.jit(fn)(*args)
    if jax.default_backend() != "cpu" or not runtime.settings().compiler_options:
        pytest.skip("the XLA:CPU option this case sets is verified on jaxlib 0.10's CPU only")
    return jax.jit(fn).lower(*args).compile(compiler_options=LOOP_EMITTER)(*args)


def _error(a, exact):
    """Relative L2 error against float64, the measure of tests/test_float32_gradients.py."""
    a = np.asarray(a, np.float64)
    return float(np.linalg.norm(a - exact) / np.linalg.norm(exact))


DRAWS = 16  # independent small problems: one draw's error is largely the luck of its roundings


def _rms(errors):
    return float(np.sqrt(np.mean(np.square(errors))))


@pytest.mark.parametrize("emitter", ["default", "loop"])
def test_leading_sum_is_as_accurate_as_torchs_sum(emitter, rng):
    """Two channels of 6x16x16 pixels with |mean| = 3 std: below the size XLA:CPU offloads to
    YNNPACK, where its own emitter adds the 1536 rows one after another. The float32 sum's error
    against float64, RMS over draws, is within twice torch's (a contiguous NCHW sum, as
    torch's models run), where a plain sum's is not."""
    xs = (rng.standard_normal((DRAWS, 6, 16, 16, 2)) * 0.4 + 1.2).astype(np.float32)
    ours, theirs = [], []
    for x in xs:
        exact = x.astype(np.float64).sum(axis=(0, 1, 2))
        ours.append(
            _error(_compiled(lambda x: summation.leading_sum(x, 3), x, emitter=emitter), exact)
        )
        nchw = torch.tensor(x.transpose(0, 3, 1, 2).copy())
        theirs.append(_error(nchw.sum(dim=(0, 2, 3)).numpy(), exact))
    assert _rms(ours) <= 2 * _rms(theirs), (
        f"{_rms(ours):.2e} from float64, torch's {_rms(theirs):.2e}"
    )


@pytest.mark.parametrize("emitter", ["default", "loop"])
def test_batch_norm_training_is_as_accurate_as_torchs(emitter, rng):
    """Batch norm over 6x16x16 pixels of two channels with |mean| = 3 std: its output and all
    three gradients, judged against float64 on the same float32 inputs (RMS over draws), are
    within twice torch's float32 error, which plain sums on XLA's loop emitter (what takes sums
    this small) are not (experiments/README.md, "Float32 sums over the pixels")."""
    labels = ("y", "dx", "dweight", "dbias")
    ours, theirs = {k: [] for k in labels}, {k: [] for k in labels}

    def reference(x, weight, bias, cot, dtype):
        # Contiguous NCHW, as torch's models run (its channels-last kernel sums differently).
        nchw = torch.tensor(x.transpose(0, 3, 1, 2).copy(), dtype=dtype, requires_grad=True)
        w, b = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in (weight, bias))
        y = torch.nn.functional.batch_norm(nchw, None, None, w, b, training=True)
        y.backward(torch.tensor(cot.transpose(0, 3, 1, 2).copy(), dtype=dtype))
        outs = [y.permute(0, 2, 3, 1), nchw.grad.permute(0, 2, 3, 1), w.grad, b.grad]
        return [o.detach().double().numpy() for o in outs]

    def mine(x, weight, bias, cot):
        y, vjp = jax.vjp(
            lambda *a: batch_norm(a[0], None, *a[1:], training=True)[0], x, weight, bias
        )
        return (y, *vjp(cot))

    for _ in range(DRAWS):
        x = (rng.standard_normal((6, 16, 16, 2)) * 0.4 + 1.2).astype(np.float32)
        cot = rng.standard_normal(x.shape).astype(np.float32)
        weight = rng.uniform(0.5, 1.5, 2).astype(np.float32)
        bias = rng.uniform(-0.5, 0.5, 2).astype(np.float32)
        exact = reference(x, weight, bias, cot, torch.float64)
        single = reference(x, weight, bias, cot, torch.float32)
        got = _compiled(mine, x, weight, bias, cot, emitter=emitter)
        for k, a, t, e in zip(labels, got, single, exact, strict=True):
            ours[k].append(_error(a, e))
            theirs[k].append(_error(t, e))
    for k in labels:
        assert _rms(ours[k]) <= 2 * _rms(theirs[k]), (
            f"{k}: {_rms(ours[k]):.2e} from float64 (RMS over draws), torch's {_rms(theirs[k]):.2e}"
        )
