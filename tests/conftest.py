"""Shared helpers: PyTorch as the reference, NCHW <-> NHWC, relative-error checks."""

from __future__ import annotations

import jax

# Two CPU devices for the data-parallel tests (pmap / sharding); must precede JAX's first use.
jax.config.update("jax_num_cpu_devices", 2)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")

from cnn_jax.interop import from_torch  # noqa: E402

RTOL = 1e-5  # the bar: relative error <= 1e-5 in float32


def nchw_to_nhwc(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def nhwc_to_nchw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected| (scale-relative, robust to entries near zero)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(initial=0.0), 1e-30)
    return float(np.abs(actual - expected).max(initial=0.0) / scale)


def assert_rel_close(actual, expected, rtol=RTOL, what=""):
    err = rel_err(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


def torch_forward_backward(layer, x_nchw, cotangent_nchw):
    """torch output, dL/dx and dL/dparam for L = sum(y * cotangent)."""
    x = torch.tensor(x_nchw, requires_grad=True)
    layer.zero_grad()
    y = layer(x)
    y.backward(torch.tensor(cotangent_nchw))
    grads = {name: p.grad.numpy().copy() for name, p in layer.named_parameters()}
    return y.detach().numpy(), x.grad.numpy(), grads


def check_parity(module, torch_layer, x_nchw, *, seed=0, spatial=True, rtol=RTOL, **apply_kwargs):
    """Loads torch_layer's weights into module; checks outputs and gradients (input, params).

    ``spatial``: x is NCHW for torch and is fed to the Flax module as NHWC.
    """
    x_jax = nchw_to_nhwc(x_nchw) if spatial else np.asarray(x_nchw)
    variables = from_torch(module, torch_layer.state_dict(), sample_input=jnp.asarray(x_jax))

    y_ref = torch_layer(torch.tensor(x_nchw)).detach().numpy()
    rng = np.random.default_rng(seed + 1)
    cot_nchw = rng.standard_normal(y_ref.shape).astype(np.float32)
    y_t, gx_t, gp_t = torch_forward_backward(torch_layer, x_nchw, cot_nchw)
    cot = nchw_to_nhwc(cot_nchw) if spatial and y_ref.ndim == 4 else cot_nchw

    @jax.jit
    def fwd_bwd(params, x):
        def loss(params, x):
            y = module.apply({**variables, "params": params}, x, **apply_kwargs)
            return jnp.sum(y * cot), y

        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
        return y, grads

    y, (gp, gx) = fwd_bwd(variables.get("params", {}), jnp.asarray(x_jax))
    to_ref = nhwc_to_nchw if spatial and y_ref.ndim == 4 else np.asarray
    assert_rel_close(to_ref(y), y_t, rtol, "forward")
    assert_rel_close(nhwc_to_nchw(gx) if spatial else gx, gx_t, rtol, "grad wrt input")
    assert set(gp) == set(gp_t), (set(gp), set(gp_t))
    for name in gp_t:
        assert_rel_close(gp[name], gp_t[name], rtol, f"grad wrt {name}")
    return variables


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    """chex counts traces per code location; parametrized tests must not share counts."""
    import chex

    chex.clear_trace_counter()
    yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_tfds_data_dir(tmp_path_factory):
    """Datasets prepared by tests (the embedded digits) go to a temporary tfds data_dir."""
    import os

    previous = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))
    yield
    if previous is None:
        os.environ.pop("TFDS_DATA_DIR", None)
    else:
        os.environ["TFDS_DATA_DIR"] = previous


@pytest.fixture(scope="session")
def digits():
    from cnn_jax import data

    return data.load("digits")
