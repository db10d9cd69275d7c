"""PyTorch ``state_dict`` <-> Flax ``variables``, for any cnn_jax layer or model.

cnn_jax stores every parameter and buffer under torch's name and in torch's layout, so the mapping
is structural: the Flax path ``('params', 'features', '0', 'weight')`` is the torch key
``features.0.weight``, and ``('batch_stats', 'bn1', 'running_var')`` is ``bn1.running_var``. The
expected structure comes from ``jax.eval_shape`` of the module's ``init`` (no computation), so
missing, unexpected and mis-shaped keys are reported exactly, like torch's ``strict=True``.

The same functions take Flax NNX modules (:mod:`cnn_jax.nnx`), whose variables carry the same
names: ``from_torch`` then loads the state_dict into the module in place and returns it, and
``to_torch`` / ``to_state_dict`` read the module's own state.

torch itself is only imported by :func:`to_torch`; :func:`from_torch` also accepts NumPy arrays.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnn_jax import runtime
from cnn_jax._utils import accepts_train

Variables = dict[str, Any]


class StateDictError(ValueError):
    """A state_dict does not match a module: lists every missing, unexpected or mis-shaped key."""


@dataclass
class StateDictReport:
    """How a state_dict matches a module (torch's ``load_state_dict`` return value, plus shapes)."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.mismatched)

    def __str__(self) -> str:
        lines = []
        if self.missing_keys:
            lines.append(f"Missing key(s): {', '.join(self.missing_keys)}")
        if self.unexpected_keys:
            lines.append(f"Unexpected key(s): {', '.join(self.unexpected_keys)}")
        for key, expected, got in self.mismatched:
            lines.append(f"Size mismatch for {key}: expected shape {expected}, got {got}")
        return "\n".join(lines) or "state_dict matches"


def _is_nnx(module: Any) -> bool:
    from flax import nnx

    return isinstance(module, nnx.Module)


def _nnx_flat(module: Any) -> list[tuple[tuple[Any, ...], Any]]:
    """``(path, Variable)`` for every parameter and BatchNorm statistic of an NNX module."""
    from flax import nnx

    return list(nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))))


def _nnx_expected(module: Any) -> Variables:
    """An NNX module's variables as ``{'nnx': nested}``: the collection-first shape the linen
    helpers read (the first path element is dropped to form the torch key)."""
    flat = {
        ("nnx", *map(str, path)): jax.ShapeDtypeStruct(tuple(v.shape), v.dtype)
        for path, v in _nnx_flat(module)
    }
    return traverse_util.unflatten_dict(flat)


def _nnx_load(module: Any, state_dict: Mapping[str, Any]) -> Any:
    """Loads the state_dict's tensors into an NNX module, in place (checked by the caller)."""
    from flax import nnx

    loaded = []
    for path, variable in _nnx_flat(module):
        key = ".".join(map(str, path))
        if key in state_dict:
            # A copy, never a view of torch's memory (see from_torch).
            value = _loaded(state_dict[key], variable.dtype)
            loaded.append((path, value))
    nnx.update(module, nnx.from_flat_state(loaded))
    return module


def _enforce(report: StateDictReport, module: Any, strict: bool) -> None:
    """torch's ``strict``: a mismatched shape always raises; missing or unexpected keys raise
    with ``strict=True`` and are warned about (at :func:`from_torch`'s caller) otherwise."""
    if report.mismatched or (strict and not report.ok):
        raise StateDictError(f"state_dict does not match {type(module).__name__}:\n{report}")
    if not report.ok:
        warnings.warn(
            f"from_torch(strict=False) for {type(module).__name__}:\n{report}", stacklevel=3
        )


def _call_kwargs(module: nn.Module) -> dict[str, Any]:
    """``train=False`` for modules whose ``__call__`` takes ``train``."""
    return {"train": False} if accepts_train(module) else {}


def _sample(module: nn.Module, sample_input: Any) -> Any:
    if sample_input is not None:
        return sample_input
    shape_fn = getattr(module, "example_input_shape", None)
    if shape_fn is None:
        raise ValueError(
            f"{type(module).__name__} has no example_input_shape(); pass sample_input= (an array "
            "or jax.ShapeDtypeStruct the module accepts) so its variables can be laid out"
        )
    return jax.ShapeDtypeStruct(tuple(shape_fn()), jnp.float32)


def init_variables(module: nn.Module, key: jax.Array, sample_input: Any = None) -> Variables:
    """``module.init`` on a sample input (``example_input_shape()`` when not given), eval mode,
    as one compiled program: run op by op, every initialiser and every layer of the forward pass
    compiles on its own, which for a deep network (an EfficientNet's hundreds of layers) costs
    minutes; compiled, the forward pass, whose output init discards, is dropped."""
    x = _sample(module, sample_input)
    if isinstance(x, jax.ShapeDtypeStruct):
        x = jnp.zeros(x.shape, x.dtype)
    kwargs = _call_kwargs(module)
    return runtime.jit(lambda key, x: module.init(key, x, **kwargs))(key, x)


def abstract_variables(module: nn.Module, sample_input: Any = None) -> Variables:
    """Shapes and dtypes of ``module``'s variables, without computing anything."""
    x = _sample(module, sample_input)
    kwargs = _call_kwargs(module)
    return jax.eval_shape(lambda inp: module.init(jax.random.key(0), inp, **kwargs), x)


def _torch_keys(variables: Variables) -> dict[str, tuple[str, ...]]:
    """torch key -> full Flax path (collection first)."""
    out: dict[str, tuple[str, ...]] = {}
    for path in traverse_util.flatten_dict(variables):
        out[".".join(path[1:])] = path
    return out


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no NumPy twin
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _loaded(value: Any, default_dtype: Any) -> jax.Array:
    """A copy of a state_dict tensor as a JAX array: floating tensors keep their own precision
    (float64 stays float64 when ``jax_enable_x64`` is on; float32 otherwise, as JAX does);
    integer buffers take the variable's dtype (``num_batches_tracked``: int32).

    The copy matters: torch updates buffers in place, and on CPU ``jnp.asarray`` may alias the
    tensor's memory, which would let a later torch step change these "immutable" variables."""
    array = _to_numpy(value)
    if np.issubdtype(array.dtype, np.floating) and jnp.issubdtype(default_dtype, jnp.floating):
        return jnp.array(array, dtype=jax.dtypes.canonicalize_dtype(array.dtype))
    return jnp.array(array, dtype=default_dtype)


def check_state_dict(
    module: nn.Module, state_dict: Mapping[str, Any], sample_input: Any = None
) -> StateDictReport:
    """Compares a state_dict's keys and shapes with ``module``'s variables."""
    return _report(abstract_variables(module, sample_input), state_dict)


def _report(expected: Variables, state_dict: Mapping[str, Any]) -> StateDictReport:
    flat = traverse_util.flatten_dict(expected)
    keys = _torch_keys(expected)
    report = StateDictReport()
    for key, path in keys.items():
        if key not in state_dict:
            report.missing_keys.append(key)
            continue
        got = tuple(np.shape(_to_numpy(state_dict[key])))
        if got != tuple(flat[path].shape):
            report.mismatched.append((key, tuple(flat[path].shape), got))
    report.unexpected_keys = [k for k in state_dict if k not in keys]
    return report


def from_torch(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    sample_input: Any = None,
    init_key: jax.Array | None = None,
) -> Variables:
    """Builds Flax ``variables`` for ``module`` from a torch ``state_dict``.

    Args:
      module: a cnn_jax layer or model.
      state_dict: torch key -> tensor (torch or NumPy), e.g. ``torch_layer.state_dict()``.
      strict: raise :class:`StateDictError` listing every missing or unexpected key (like torch).
        With ``strict=False`` those are reported in a warning instead, unexpected keys are ignored
        and missing variables keep a fresh initialisation from ``init_key``. Shape mismatches
        always raise: such a tensor cannot be loaded.
      sample_input: an input (or ``jax.ShapeDtypeStruct``) the module accepts; defaults to the
        module's ``example_input_shape()``.
      init_key: key for the fresh variables of ``strict=False`` (default ``jax.random.key(0)``).

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` (only the collections the module has).

    >>> import cnn_jax.nn as cnn
    >>> conv = cnn.Conv2d(1, 2, 3)
    >>> sd = {'weight': np.ones((2, 1, 3, 3), np.float32), 'bias': np.zeros(2, np.float32)}
    >>> from_torch(conv, sd)['params']['weight'].shape
    (2, 1, 3, 3)

    For a Flax NNX module (:mod:`cnn_jax.nnx`) the state_dict is loaded into the module in place
    and the module is returned (``sample_input`` and ``init_key`` are not needed: the module
    already holds its variables).
    """
    if _is_nnx(module):
        _enforce(_report(_nnx_expected(module), state_dict), module, strict)
        return _nnx_load(module, state_dict)
    expected = abstract_variables(module, sample_input)  # traced once, used twice below
    report = _report(expected, state_dict)
    _enforce(report, module, strict)
    if report.missing_keys:
        key = jax.random.key(0) if init_key is None else init_key
        base = traverse_util.flatten_dict(init_variables(module, key, sample_input))
    else:
        base = traverse_util.flatten_dict(expected)
    out = {}
    for torch_key, path in _torch_keys(traverse_util.unflatten_dict(base)).items():
        if torch_key in state_dict:
            # jnp.array copies: torch updates buffers in place, and on CPU jnp.asarray may alias
            # the tensor's memory, which would let a later torch step change these "immutable"
            # variables.
            out[path] = _loaded(state_dict[torch_key], base[path].dtype)
        else:
            out[path] = base[path]
    return traverse_util.unflatten_dict(out)


def to_state_dict(
    module: nn.Module, variables: Variables | None = None, *, sample_input: Any = None
) -> OrderedDict[str, np.ndarray]:
    """Flax ``variables`` -> ``{torch key: NumPy array}``, checked against ``module``'s layout.
    An NNX module is read directly (pass no ``variables``).

    ``num_batches_tracked`` is returned as int64, torch's dtype.
    """
    if _is_nnx(module):
        if variables is not None:
            raise ValueError("an NNX module holds its own variables: call to_state_dict(module)")
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for path, v in _nnx_flat(module):
            value = np.asarray(v[...])
            if path[-1] == "num_batches_tracked":
                value = value.astype(np.int64)
            out[".".join(map(str, path))] = value
        return out
    if variables is None:
        raise ValueError("to_state_dict(linen_module, variables): variables are required")
    expected = traverse_util.flatten_dict(abstract_variables(module, sample_input))
    given = traverse_util.flatten_dict(variables)
    missing = [".".join(p) for p in expected if p not in given]
    unexpected = [".".join(p) for p in given if p not in expected]
    mismatched = [
        (".".join(p), tuple(expected[p].shape), tuple(np.shape(given[p])))
        for p in expected
        if p in given and tuple(np.shape(given[p])) != tuple(expected[p].shape)
    ]
    if missing or unexpected or mismatched:
        report = StateDictReport(missing, unexpected, mismatched)
        raise StateDictError(
            f"variables do not match {type(module).__name__} (Flax paths, collection first):\n"
            f"{report}"
        )
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for path in expected:
        value = np.asarray(given[path])
        if path[-1] == "num_batches_tracked":
            value = value.astype(np.int64)
        out[".".join(path[1:])] = value
    return out


def to_torch(module: nn.Module, variables: Variables | None = None, *, sample_input: Any = None):
    """Flax ``variables`` (or an NNX module's own state) -> a torch ``state_dict``
    (``OrderedDict[str, torch.Tensor]``) that the torch twin of ``module`` accepts with
    ``load_state_dict``. A module with a ``torch_version`` attribute has it recorded as the
    state_dict's root version (``_metadata``), as torch's own ``state_dict()`` does."""
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "to_torch needs PyTorch: pip install torch (use to_state_dict for NumPy arrays)"
        ) from err
    out = OrderedDict(
        (key, torch.from_numpy(np.array(value)))
        for key, value in to_state_dict(module, variables, sample_input=sample_input).items()
    )
    version = getattr(module, "torch_version", None)
    if version is not None:
        # torch's state_dict() carries each module's _version in _metadata; a model whose
        # loading reads it (torchvision's MNASNet refuses a state_dict without it) says its own.
        out._metadata = OrderedDict({"": {"version": version}})
    return out
