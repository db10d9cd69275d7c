"""Convolution kernels in the layout the compiled step wants, torch's layout everywhere else.

cnn_jax's parameters have torch's shapes: a convolution kernel is ``(out, in / groups, kH, kW)``
(OIHW), so that checkpoints, ``state_dict`` interop and filter plots read as PyTorch's do.
XLA:CPU's convolutions read the kernel, and produce its gradient, spatial-major with the output
channels last (HWIO). A train state holding OIHW kernels therefore pays, on every step, one
transposition of each kernel for the forward pass and one of its weight gradient for the
optimiser update (``materialize_gradient`` in :mod:`cnn_jax.functional.fusion` at least keeps
the second out of the update itself).

:func:`to_step_layout` stores those kernels HWIO instead, and with them every optimiser-state
array that mirrors them (AdamW's moments, momentum's trace), and records which in the state's
static ``step_layout``. The model still sees torch's kernels: :meth:`TrainState.variables
<cnn_jax.train.state.TrainState.variables>` transposes them back inside the compiled step,
where XLA cancels that transposition against the one its convolution needs, and the gradient,
the transposition's derivative, arrives HWIO, where the optimiser update reads it.
:func:`to_torch_layout` undoes it exactly (a transposition moves values, it computes none).

Which kernels: 4-D parameters with more than one spatial tap and more than one input channel per
group. 1x1 kernels stay OIHW (their weight gradient is a matmul that yields OIHW directly), and
so do depthwise kernels (computed tap by tap by cnn_jax's own depthwise path).

The run loop's placements (:mod:`cnn_jax.train.parallel`) apply the two around their steps on
the CPU, so checkpoints, loaded runs, ``init_from`` and interop only ever see torch's layout.
``python -m experiments.bench_kernel_layout`` measures train steps both ways.

>>> import jax, jax.numpy as jnp, optax
>>> from cnn_jax import nn as cnn
>>> from cnn_jax.train import create_train_state
>>> model = cnn.Conv2d(3, 8, 3)
>>> state = create_train_state(model, optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
>>> step_state = to_step_layout(state)
>>> step_state.params["weight"].shape, step_state.step_layout
((3, 3, 3, 8), ('weight',))
>>> step_state.variables()["params"]["weight"].shape
(8, 3, 3, 3)
>>> bool((to_torch_layout(step_state).params["weight"] == state.params["weight"]).all())
True
"""

from __future__ import annotations

from typing import Any

import jax
from flax import traverse_util

# Torch's OIHW to HWIO and back.
TO_STEP = (2, 3, 1, 0)
TO_TORCH = (3, 2, 0, 1)


def default_on() -> bool:
    """Whether the run loop's placements use the step layout when not told: on the CPU, where it
    is measured (``python -m experiments.bench_kernel_layout``); other backends lay out their
    convolutions' kernels by rules of their own."""
    return jax.default_backend() == "cpu"


def is_step_kernel(shape: tuple[int, ...]) -> bool:
    """Whether a parameter of torch-layout ``shape`` is stored HWIO by :func:`to_step_layout`:
    a 4-D kernel with more than one spatial tap and more than one input channel per group."""
    return len(shape) == 4 and shape[2] * shape[3] > 1 and shape[1] > 1


def step_kernel_paths(params: Any) -> tuple[str, ...]:
    """The dotted paths of ``params`` (torch's layout) that :func:`to_step_layout` stores
    HWIO, in ``flatten_dict`` order."""
    flat = traverse_util.flatten_dict(params, sep=".")
    return tuple(path for path, leaf in flat.items() if is_step_kernel(tuple(leaf.shape)))


def to_step_layout(state: Any) -> Any:
    """``state`` (a :class:`~cnn_jax.train.state.TrainState` in torch's layout) with the kernels
    :func:`is_step_kernel` picks, and every optimiser-state array mirroring one, stored HWIO;
    its ``step_layout`` names them. A state already in the step layout is returned as it is."""
    if state.step_layout:
        return state
    paths = step_kernel_paths(state.params)
    moved = _transposed(state, _shapes(state.params, paths), TO_STEP)
    return moved.replace(step_layout=paths)


def to_torch_layout(state: Any) -> Any:
    """The inverse of :func:`to_step_layout`: every array it transposed back in torch's layout
    and ``step_layout`` empty. A state in torch's layout is returned as it is."""
    if not state.step_layout:
        return state
    moved = _transposed(state, _shapes(state.params, state.step_layout), TO_TORCH)
    return moved.replace(step_layout=())


def torch_params(params: Any, step_layout: tuple[str, ...]) -> Any:
    """``params`` with the kernels named in ``step_layout`` (stored HWIO) transposed back to
    torch's OIHW: what the model is applied to. Traceable; ``params`` may be a subtree of
    arrays or tracers with the state's structure."""
    if not step_layout:
        return params
    flat = traverse_util.flatten_dict(params, sep=".")
    for path in step_layout:
        flat[path] = flat[path].transpose(TO_TORCH)
    return traverse_util.unflatten_dict(flat, sep=".")


def _shapes(params: Any, paths: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of ``params``' leaves at the dotted ``paths``."""
    flat = traverse_util.flatten_dict(params, sep=".")
    return {path: tuple(flat[path].shape) for path in paths}


def _transposed(state: Any, shapes: dict[str, tuple[int, ...]], axes: tuple[int, ...]) -> Any:
    """``state`` with every array transposed by ``axes`` whose trailing dictionary keys are one
    of ``shapes``' paths and whose shape is that path's: the parameter itself and each
    optimiser-state tree that mirrors the parameters (a key path ending in the parameter's)."""

    def move(key_path, leaf):
        path = _trailing_dict_path(key_path)
        if path in shapes and tuple(getattr(leaf, "shape", ())) == shapes[path]:
            return leaf.transpose(axes)
        return leaf

    children = {
        "params": jax.tree_util.tree_map_with_path(move, state.params),
        "opt_state": jax.tree_util.tree_map_with_path(move, state.opt_state),
    }
    return state.replace(**children)


def _trailing_dict_path(key_path: tuple) -> str | None:
    """The dotted names of the dictionary keys that end ``key_path`` (None when it does not
    end in one)."""
    names: list[str] = []
    for entry in reversed(key_path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        names.append(str(entry.key))
    return ".".join(reversed(names)) if names else None


__all__ = [
    "TO_STEP",
    "TO_TORCH",
    "default_on",
    "is_step_kernel",
    "step_kernel_paths",
    "to_step_layout",
    "to_torch_layout",
    "torch_params",
]
