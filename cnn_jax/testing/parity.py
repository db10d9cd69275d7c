"""Comparing cnn_jax against PyTorch: layout conversion, scale-relative errors, and a layer's
forward pass and gradients checked against a torch layer with the same weights.

Imports torch lazily (only :func:`torch_forward_backward` and :func:`check_parity` need it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnn_jax.interop import from_torch

RTOL = 1e-5
"""The parity bar: relative error <= 1e-5 in float32."""


def nchw_to_nhwc(a: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def nhwc_to_nchw(a: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def rel_err(actual: Any, expected: Any) -> float:
    """max |actual - expected| / max |expected| (scale-relative, robust to entries near zero)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(initial=0.0), 1e-30)
    return float(np.abs(actual - expected).max(initial=0.0) / scale)


def assert_rel_close(actual: Any, expected: Any, rtol: float = RTOL, what: str = "") -> None:
    err = rel_err(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


def assert_as_close_as_torch(actual: Any, torch32: Any, torch64: Any, what: str = "") -> None:
    """The bar for deep networks: within :data:`RTOL` of torch's float32 result where torch's
    own float32 error (against its float64 run) is at most ``RTOL / 2``; else within twice that
    error of the float64 result (deep nets in train mode amplify float32 rounding past 1e-5 in
    torch too: ResNet-50 at 64x64 2.7e-5, measured)."""
    torch_error = rel_err(torch32, torch64)
    if torch_error <= RTOL / 2:
        assert_rel_close(actual, torch32, what=what)
    else:
        assert_rel_close(actual, torch64, 2 * torch_error, what=f"{what} vs float64")


def torch_forward_backward(layer, x_nchw, cotangent_nchw):
    """torch output, dL/dx and dL/dparam for L = sum(y * cotangent)."""
    import torch

    x = torch.tensor(x_nchw, requires_grad=True)
    layer.zero_grad()
    y = layer(x)
    y.backward(torch.tensor(cotangent_nchw))
    grads = {name: p.grad.numpy().copy() for name, p in layer.named_parameters()}
    return y.detach().numpy(), x.grad.numpy(), grads


def check_parity(module, torch_layer, x_nchw, *, seed=0, spatial=True, rtol=RTOL, **apply_kwargs):
    """Loads torch_layer's weights into module; checks outputs and gradients (input, params;
    nested modules' parameters by their dotted torch keys).

    ``spatial``: x is NCHW for torch and is fed to the Flax module as NHWC.
    """
    import torch

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
    gp = traverse_util.flatten_dict(gp, sep=".")  # nested modules: torch's dotted keys
    to_ref = nhwc_to_nchw if spatial and y_ref.ndim == 4 else np.asarray
    assert_rel_close(to_ref(y), y_t, rtol, "forward")
    assert_rel_close(nhwc_to_nchw(gx) if spatial else gx, gx_t, rtol, "grad wrt input")
    assert set(gp) == set(gp_t), (set(gp), set(gp_t))
    for name in gp_t:
        assert_rel_close(gp[name], gp_t[name], rtol, f"grad wrt {name}")
    return variables
