"""ReLU, ReLU6, Hardtanh, Hardswish, Hardsigmoid, SiLU and GELU against torch: values and
gradients on random inputs, torch's derivative exactly at every kink, and torch's argument
errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.functional as F
import cnn_jax.nn as cnn
from cnn_jax.testing.parity import check_parity

torch = pytest.importorskip("torch")
TF = torch.nn.functional

# (cnn_jax module, torch module, the kinks of the function)
MODULES = {
    "relu": (lambda: cnn.ReLU(), lambda: torch.nn.ReLU(), (0.0,)),
    # inplace changes nothing in JAX (torch's would refuse the test's leaf input)
    "relu_inplace": (lambda: cnn.ReLU(inplace=True), lambda: torch.nn.ReLU(), (0.0,)),
    "relu6": (lambda: cnn.ReLU6(), lambda: torch.nn.ReLU6(), (0.0, 6.0)),
    "hardtanh": (lambda: cnn.Hardtanh(), lambda: torch.nn.Hardtanh(), (-1.0, 1.0)),
    "hardtanh_-2_0.5": (
        lambda: cnn.Hardtanh(-2.0, 0.5),
        lambda: torch.nn.Hardtanh(-2.0, 0.5),
        (-2.0, 0.5),
    ),
    "hardswish": (lambda: cnn.Hardswish(), lambda: torch.nn.Hardswish(), (-3.0, 3.0)),
    "hardsigmoid": (lambda: cnn.Hardsigmoid(), lambda: torch.nn.Hardsigmoid(), (-3.0, 3.0)),
    "silu": (lambda: cnn.SiLU(), lambda: torch.nn.SiLU(), ()),
    "gelu": (lambda: cnn.GELU(), lambda: torch.nn.GELU(), ()),
    "gelu_tanh": (lambda: cnn.GELU("tanh"), lambda: torch.nn.GELU("tanh"), ()),
}


def _inputs(rng, shape, kinks):
    """Wide normal draws (beyond +-3 and 6) with every kink value planted several times."""
    x = (4.0 * rng.standard_normal(shape)).astype(np.float32)
    flat = x.reshape(-1)
    for i, kink in enumerate(kinks):
        flat[i :: 2 * len(kinks) + 1] = kink
    return flat.reshape(shape)


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (4, 7)], ids=str)
@pytest.mark.parametrize("name", MODULES)
def test_activation_modules_match_torch(name, shape, rng):
    ours, theirs, kinks = MODULES[name]
    x = _inputs(rng, shape, kinks)
    check_parity(ours(), theirs(), x, spatial=len(shape) == 4)


# (cnn_jax function, torch function, points at and beside its kinks)
FUNCTIONS = {
    "relu": (F.relu, TF.relu, (0.0,)),
    "relu6": (F.relu6, TF.relu6, (0.0, 6.0)),
    "hardtanh": (F.hardtanh, TF.hardtanh, (-1.0, 1.0)),
    "hardtanh_-3_3": (
        lambda x: F.hardtanh(x, -3.0, 3.0),
        lambda x: TF.hardtanh(x, -3.0, 3.0),
        (-3.0, 3.0),
    ),
    "hardtanh_0_0": (  # torch's function accepts an empty range
        lambda x: F.hardtanh(x, 0.0, 0.0),
        lambda x: TF.hardtanh(x, 0.0, 0.0),
        (0.0,),
    ),
    "hardswish": (F.hardswish, TF.hardswish, (-3.0, 3.0)),
    "hardsigmoid": (F.hardsigmoid, TF.hardsigmoid, (-3.0, 3.0)),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_derivative_at_each_kink_is_torchs(name):
    """Exactly on a kink (and one float32 step to each side) the derivative is torch's choice:
    e.g. 0 for relu6 at 0 and 6, 0 for hardswish at -3 and 1 at 3."""
    ours, theirs, kinks = FUNCTIONS[name]
    points = []
    for k in kinks:
        k32 = np.float32(k)
        # Beside 0 the nearest *normal* floats: XLA:CPU flushes subnormals to zero (a
        # difference from torch's CPU kernels in any comparison, not a kink convention).
        step = np.finfo(np.float32).tiny if k == 0 else np.spacing(k32)
        points += [k32 - step, k32, k32 + step]
    x = np.array([*points, -7.0, -0.5, 0.5, 7.0], np.float32)
    xt = torch.tensor(x, requires_grad=True)
    theirs(xt).sum().backward()
    grad = jax.grad(lambda v: ours(v).sum())(jnp.asarray(x))
    y = np.asarray(jax.jit(ours)(jnp.asarray(x)))
    np.testing.assert_allclose(y, theirs(torch.tensor(x)).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad), xt.grad.numpy(), rtol=1e-6, atol=0)
    on_kinks = np.asarray(grad)[1 : 3 * len(kinks) : 3]
    np.testing.assert_array_equal(on_kinks, xt.grad.numpy()[1 : 3 * len(kinks) : 3])


def test_kink_derivatives_are_the_documented_values():
    """The values themselves (not just agreement), so a change in torch is noticed here."""
    at = jnp.array([-3.0, 3.0])
    g = lambda f, x: np.asarray(jax.vmap(jax.grad(f))(x))
    np.testing.assert_array_equal(g(F.hardswish, at), [0.0, 1.0])
    np.testing.assert_array_equal(g(F.hardsigmoid, at), [0.0, 0.0])
    np.testing.assert_array_equal(g(F.relu6, jnp.array([0.0, 6.0])), [0.0, 0.0])
    np.testing.assert_array_equal(g(F.relu, jnp.array([0.0])), [0.0])
    np.testing.assert_array_equal(g(F.hardtanh, jnp.array([-1.0, 1.0])), [0.0, 0.0])


@pytest.mark.parametrize("name", ["relu6", "hardtanh", "hardswish", "hardsigmoid", "silu", "gelu"])
def test_nan_and_infinities_as_torch(name):
    x = np.array([np.nan, np.inf, -np.inf, 0.0], np.float32)
    ours = {"relu6": F.relu6, "hardtanh": F.hardtanh, "hardswish": F.hardswish,
            "hardsigmoid": F.hardsigmoid, "silu": F.silu, "gelu": F.gelu}[name]  # fmt: skip
    # One element at a time: torch's vectorised GELU gives NaN at +inf on AVX-512 CPUs, where
    # its element-by-element kernel (and the limit, GELU(x) -> x) gives +inf.
    expected = [getattr(TF, name)(torch.tensor([v])).item() for v in x]
    np.testing.assert_array_equal(np.asarray(ours(jnp.asarray(x))), np.float32(expected))


def test_second_derivative_of_hardswish_is_torchs():
    x = np.array([-2.5, -0.5, 0.0, 1.5, 2.9], np.float32)
    xt = torch.tensor(x, requires_grad=True)
    (g,) = torch.autograd.grad(TF.hardswish(xt).sum(), xt, create_graph=True)
    g.sum().backward()
    ours = jax.vmap(jax.grad(jax.grad(F.hardswish)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), xt.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_first_and_second_derivatives_are_torchs(approximate):
    """The exact GELU's derivative is written out (torch's backward formula, one factor); both
    it and jax's derivative of the tanh form agree with torch's, and so do the second
    derivatives, infinities included."""
    x = np.array(
        [-9.0, -3.5, -1.0, -0.25, 0.0, 1e-3, 0.7, 2.0, 5.5, 12.0, np.inf, -np.inf], np.float32
    )
    xt = torch.tensor(x, requires_grad=True)
    (g1,) = torch.autograd.grad(TF.gelu(xt, approximate=approximate).sum(), xt, create_graph=True)
    g1.sum().backward()
    f = lambda v: F.gelu(v, approximate)
    ours1 = jax.vmap(jax.grad(f))(jnp.asarray(x))
    ours2 = jax.vmap(jax.grad(jax.grad(f)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours1), g1.detach().numpy(), rtol=2e-6, atol=5e-7)
    np.testing.assert_allclose(np.asarray(ours2), xt.grad.numpy(), rtol=2e-5, atol=2e-6)


def test_gelu_derivative_in_bfloat16_is_torchs():
    x = np.linspace(-6, 6, 41, dtype=np.float32)
    xt = torch.tensor(x, dtype=torch.bfloat16, requires_grad=True)
    TF.gelu(xt).sum().backward()
    ours = jax.grad(lambda v: F.gelu(v).astype(jnp.float32).sum())(jnp.asarray(x, jnp.bfloat16))
    assert ours.dtype == jnp.bfloat16
    # Equal to bfloat16 rounding (2**-8 relative); in the far left tail, where 1 + erf cancels
    # in float32 in both frameworks, to float32's absolute rounding there.
    np.testing.assert_allclose(
        np.asarray(ours.astype(jnp.float32)),
        xt.grad.to(torch.float32).numpy(),
        rtol=2**-8,
        atol=1e-7,
    )


def test_gelu_value_is_torchs_formula_and_as_accurate():
    """The exact GELU's value is torch's ``x * (1 + erf(x / sqrt 2)) / 2``: judged against
    float64 torch on a dense grid, its error is no larger than torch's own, in float32 and in
    bfloat16 (where ``1 + erf`` cancels, x below about -4, both frameworks round to float32's
    absolute spacing near 1, not to the tiny true value). A bfloat16 input is computed in
    float32 and rounded once, as torch does: away from that tail it is torch's value to within
    one bfloat16 rounding, and mostly exactly."""
    x = np.linspace(-12, 12, 200_001, dtype=np.float32)
    for dtype, jdtype in ((torch.float32, jnp.float32), (torch.bfloat16, jnp.bfloat16)):
        xt = torch.tensor(x).to(dtype)
        exact = TF.gelu(xt.to(torch.float64)).numpy()
        theirs = TF.gelu(xt).to(torch.float64).numpy()
        ours = F.gelu(jnp.asarray(xt.to(torch.float32).numpy(), jdtype))
        assert ours.dtype == jdtype
        ours = np.asarray(ours.astype(jnp.float32), np.float64)
        assert np.abs(ours - exact).max() <= np.abs(theirs - exact).max(), dtype
    body = np.abs(exact) > 1e-3
    np.testing.assert_allclose(ours[body], theirs[body], rtol=2**-7, atol=0)  # a bfloat16 step
    assert np.mean(ours == theirs) > 0.9


def test_activations_keep_dtype_and_work_under_jit_and_vmap():
    x = jnp.linspace(-8, 8, 24, dtype=jnp.bfloat16).reshape(2, 3, 4)
    for f in (F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.silu, F.gelu):
        y = jax.jit(jax.vmap(f))(x)
        assert y.dtype == jnp.bfloat16 and y.shape == x.shape, f


def test_argument_errors_as_torch():
    x = jnp.ones(3)
    with pytest.raises(AssertionError, match="must be greater than min_val"):
        torch.nn.Hardtanh(1.0, 1.0)
    with pytest.raises(ValueError, match=r"max_val \(1.0\) must be greater than min_val \(1.0\)"):
        cnn.Hardtanh(1.0, 1.0)
    with pytest.raises(ValueError, match="must be greater than min_val"):
        cnn.Hardtanh(2.0, 1.0)
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        TF.hardtanh(torch.ones(3), 2.0, 1.0)
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        F.hardtanh(x, 2.0, 1.0)
    with pytest.raises(RuntimeError, match="approximate argument must be either none or tanh"):
        TF.gelu(torch.ones(3), approximate="erf")
    with pytest.raises(ValueError, match="approximate argument must be either none or tanh"):
        F.gelu(x, approximate="erf")
    with pytest.raises(ValueError, match="approximate argument must be either none or tanh"):
        cnn.GELU(approximate="erf")
