"""The piecewise decisions of a run (which piece of each ReLU, ReLU6/Hardtanh, Hardswish and
Hardsigmoid every element took, and each max-pool window's winner), recorded and pinned.

A float32 gradient of such a network is the gradient of one linear (or, for hardswish,
quadratic) piece: the one its rounded forward pass selected. Where an activation lies within
float32 rounding of a kink (a pre-activation of 1e-7 whose float32 value came out with the other
sign, or two near-equal maxima in a pooling window) float32 and float64 runs can take different
pieces, and their gradients then differ by that element's whole contribution, however precise
each arithmetic step was. Such inputs appear by chance in any large network (vgg16_bn has ~6.6
million ReLU inputs per batch of six 64×64 images), in torch's float32 runs as in ours,
depending on each program's rounding.

To measure rounding error alone, compare a float32 gradient with the float64 gradient of **the
same piece**: record the float32 run's decisions, then run float64 torch with every piecewise
layer pinned to them. Decisions are matched by call order (the k-th piecewise layer of the
cnn_jax model with the k-th of the torch one), which holds for a model and its torch reference;
kinds, bounds and shapes are checked.

cnn_jax's side is recorded through ``flax.linen.intercept_methods`` for the duration of one
traced call (:func:`record_kinks`), so it sees the piecewise *modules*
(:class:`~cnn_jax.nn.ReLU`, :class:`~cnn_jax.nn.ReLU6`, :class:`~cnn_jax.nn.Hardtanh`,
:class:`~cnn_jax.nn.Hardswish`, :class:`~cnn_jax.nn.Hardsigmoid`,
:class:`~cnn_jax.nn.MaxPool2d`); a model must call those, never a bare ``jax.nn.relu``, and a
bare call that the traced program shows is refused. torch's side is a ``TorchFunctionMode``
(:class:`TorchKinks`) on the functions torch's modules call: ``F.relu`` (``nn.ReLU``),
``F.hardtanh`` (``nn.Hardtanh`` and ``nn.ReLU6``, a Hardtanh(0, 6)), ``F.relu6``,
``F.hardswish``, ``F.hardsigmoid`` and ``F.max_pool2d``.

>>> grads, kinks = jax.jit(jax.grad(record_kinks(loss), has_aux=True))(params)  # doctest: +SKIP
>>> with TorchKinks(pin=to_nchw(kinks)):                                     # doctest: +SKIP
...     loss64 = torch_loss(net64)     # float64, on the float32 run's pieces
>>> loss64.backward()                                                        # doctest: +SKIP

Torch is imported lazily; only :class:`TorchKinks` needs it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.extend.core import jaxpr_as_fun, jaxprs_in_params

import cnn_jax.functional.activation as A
import cnn_jax.functional.pooling as P
import cnn_jax.nn as cnn
from cnn_jax import runtime


@struct.dataclass
class Kink:
    """One piecewise layer call: its ``kind`` (``'relu'``, ``'hardtanh'``, ``'hardswish'``,
    ``'hardsigmoid'`` or ``'max_pool2d'``), the ``value`` its decisions were taken on (the
    layer's input; NHWC in cnn_jax, NCHW after :func:`to_nchw` and in :class:`TorchKinks`) and,
    for hardtanh, its ``bounds`` ``(min_val, max_val)``. A pytree whose only leaf is ``value``,
    so a list of them can leave a jitted function."""

    kind: str = struct.field(pytree_node=False)
    value: Any
    bounds: tuple[float, float] | None = struct.field(pytree_node=False, default=None)


# The lower and upper kink of each activation. Every one has three pieces with torch's
# derivative convention: up to and at `lo`, strictly between, and from `hi` on.
_KINKS = {"relu": (0.0, math.inf), "hardswish": (-3.0, 3.0), "hardsigmoid": (-3.0, 3.0)}


def _piece_bounds(kink: Kink) -> tuple[float, float]:
    return kink.bounds if kink.kind == "hardtanh" else _KINKS[kink.kind]


def pieces(kind: str, x: Any, bounds: tuple[float, float] | None = None) -> Any:
    """Which piece each element of an activation's input ``x`` is on: 0 at or below the lower
    kink, 1 strictly between, 2 at or above the upper one (torch's derivative convention: relu
    has 0 at 0, hardtanh and hardsigmoid 0 at both ends, hardswish 0 at -3 and 1 at 3). Works on
    numpy arrays and torch tensors."""
    lo, hi = _piece_bounds(Kink(kind, None, bounds))
    return (x > lo) * 1 + (x >= hi) * 1


def _module_kink(module: nn.Module) -> tuple[str, tuple[float, float] | None] | None:
    """(kind, bounds) of a piecewise cnn_jax module, None for any other module."""
    if isinstance(module, cnn.ReLU):
        return "relu", None
    if isinstance(module, cnn.ReLU6):
        return "hardtanh", (0.0, 6.0)
    if isinstance(module, cnn.Hardtanh):
        return "hardtanh", (float(module.min_val), float(module.max_val))
    if isinstance(module, cnn.Hardswish):
        return "hardswish", None
    if isinstance(module, cnn.Hardsigmoid):
        return "hardsigmoid", None
    if isinstance(module, cnn.MaxPool2d):
        return "max_pool2d", None
    return None


# What a piecewise function looks like in a traced program: the name of its jit or
# custom_jvp (jax.nn's, and the ones cnn_jax.functional's activations and max pool are built
# on), or lax's differentiable max pool primitive (flax.linen.max_pool).
_KINK_FUNCTIONS = frozenset(
    {"relu", "relu6", "hard_tanh", "hard_sigmoid", "hard_silu", "hard_swish", "leaky_relu"}
    | {f.__name__ for f in (A._hardtanh, A._hardswish, A._hardsigmoid, P._max_pool)}
)
_KINK_PRIMITIVES = frozenset({"reduce_window_max"})
_MARK = "cnn_jax_recorded_kink"  # the name scope around every recorded module call


def _called_name(eqn) -> str | None:
    name = eqn.params.get("name")
    if isinstance(name, str):
        return name
    if eqn.primitive.name.startswith("custom_"):
        for sub in jaxprs_in_params(eqn.params):
            info = getattr(sub, "debug_info", None)
            if info is not None and getattr(info, "func_name", None):
                return info.func_name
    return None


def _refuse_unrecorded(jaxpr, scope: str = "") -> None:
    """Raises if ``jaxpr`` (or any jaxpr inside it) calls a piecewise function outside a
    recorded module call."""
    for eqn in jaxpr.eqns:
        where = f"{scope}/{eqn.source_info.name_stack}".strip("/")
        name = _called_name(eqn)
        is_kink = name in _KINK_FUNCTIONS or eqn.primitive.name in _KINK_PRIMITIVES
        if is_kink and _MARK not in where:
            raise ValueError(
                f"record_kinks: a piecewise function ({name or eqn.primitive.name}) is called "
                f"outside a cnn_jax module at '{where or 'top level'}', so its decisions cannot "
                "be recorded: call the module (cnn_jax.nn.ReLU, ReLU6, Hardtanh, Hardswish, "
                "Hardsigmoid, MaxPool2d) instead of the bare function"
            )
        if not is_kink:
            for sub in jaxprs_in_params(eqn.params):
                _refuse_unrecorded(sub, where)


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def record_kinks(fn: Callable[..., Any]) -> Callable[..., tuple[Any, list[Kink]]]:
    """``fn`` returning also its piecewise decisions: ``record_kinks(fn)(*args)`` is
    ``(fn(*args), kinks)``, ``kinks`` a list of :class:`Kink`, one per call of a piecewise
    module in call order, each holding the input that call received.

    The recording is limited to this call (flax's method interception, no global state). The
    decisions come from the very program whose output (and gradient) is returned: compose it
    inside the transformations, e.g. ``jax.jit(jax.grad(record_kinks(loss), has_aux=True))``
    (a separately compiled forward pass rounds differently). ``fn`` is traced once to a jaxpr,
    which is checked and then evaluated: a piecewise function called outside the modules
    (``jax.nn.relu``, ``jax.nn.relu6``, ``hard_tanh``, ``hard_sigmoid``, ``hard_swish``,
    ``leaky_relu``, the cnn_jax.functional ones, ``flax.linen.max_pool``) raises a ValueError
    naming where. A hand-written ``jnp.maximum(x, 0)`` cannot be told from other uses of
    ``max`` and is not detected; nor is adaptive max pooling (``jnp.max`` windows), which no
    model here or torchvision classifier uses and which is not recorded. Array arguments are
    traced; any other argument is a constant of the trace.

    >>> model = cnn.Sequential((cnn.Linear(2, 3), cnn.ReLU()))
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 2)), train=False)
    >>> forward = lambda x: model.apply(variables, x, train=False)
    >>> out, kinks = record_kinks(forward)(jnp.ones((1, 2)))
    >>> [(k.kind, k.value.shape) for k in kinks]
    [('relu', (1, 3))]
    """

    @functools.wraps(fn)
    def recorded(*args: Any, **kwargs: Any) -> tuple[Any, list[Kink]]:
        leaves, treedef = jax.tree.flatten((args, kwargs))
        traced = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
        kinds: list[tuple[str, tuple[float, float] | None]] = []

        def run(*arrays):
            filled = list(leaves)
            for i, a in zip(traced, arrays, strict=True):
                filled[i] = a
            a_args, a_kwargs = jax.tree.unflatten(treedef, filled)
            values: list[Any] = []
            kinds.clear()

            def interceptor(next_fun, call_args, call_kwargs, context):
                kink = _module_kink(context.module) if context.method_name == "__call__" else None
                if kink is None:
                    return next_fun(*call_args, **call_kwargs)
                kinds.append(kink)
                values.append(call_args[0])
                with jax.named_scope(_MARK):
                    return next_fun(*call_args, **call_kwargs)

            with nn.intercept_methods(interceptor):
                out = fn(*a_args, **a_kwargs)
            return out, values

        arrays = [leaves[i] for i in traced]
        closed, shapes = jax.make_jaxpr(run, return_shape=True)(*arrays)
        _refuse_unrecorded(closed.jaxpr)
        results = jaxpr_as_fun(closed)(*arrays)
        out, values = jax.tree.unflatten(jax.tree.structure(shapes), results)
        return out, [Kink(kind, v, b) for (kind, b), v in zip(kinds, values, strict=True)]

    return recorded


def to_nchw(kinks: list[Kink]) -> list[Kink]:
    """cnn_jax's decisions (NHWC) as numpy arrays in torch's NCHW layout, for
    :class:`TorchKinks` (``pin=``) and comparisons with its ``decisions``."""
    out = []
    for kink in kinks:
        a = np.asarray(kink.value)
        out.append(kink.replace(value=a.transpose(0, 3, 1, 2) if a.ndim == 4 else a))
    return out


# torch function name -> kind. nn.ReLU6 calls F.hardtanh(x, 0, 6); F.relu6 is the same.
_TORCH_KINDS = {
    "relu": "relu",
    "relu_": "relu",
    "hardtanh": "hardtanh",
    "hardtanh_": "hardtanh",
    "relu6": "hardtanh",
    "hardswish": "hardswish",
    "hardsigmoid": "hardsigmoid",
    "max_pool2d": "max_pool2d",
    "max_pool2d_with_indices": "max_pool2d",
}


def _torch_bounds(name: str, args, kwargs) -> tuple[float, float] | None:
    if name == "relu6":
        return (0.0, 6.0)
    if name.startswith("hardtanh"):
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return (float(lo), float(hi))
    return None


class TorchKinks:
    """A ``torch.overrides.TorchFunctionMode`` that records or pins a torch run's decisions.

    ``TorchKinks()`` records, in call order, the input of every ``relu``, ``hardtanh`` (and
    ``relu6``), ``hardswish``, ``hardsigmoid`` and ``max_pool2d`` call of the torch code run
    inside it (NCHW numpy copies in :attr:`decisions`, as :class:`Kink`), the same list
    :func:`record_kinks` makes for cnn_jax after :func:`to_nchw`. ``TorchKinks(pin=decisions)``
    makes the run take those decisions instead of its own: each activation computes, element by
    element, the piece (:func:`pieces`) the recorded input was on — ``x`` or 0 for relu, ``x``
    or a bound for hardtanh, ``(x + 3) / 6`` or 0 or 1 for hardsigmoid, ``x (x + 3) / 6`` or 0
    or ``x`` for hardswish — and each max pool returns the input elements that won in the
    recorded input (first maximum on ties, torch's and cnn_jax's rule); its gradient is then the
    exact gradient of the recorded run's pieces. :attr:`flipped` counts the elements
    (activations) and windows (max pool) where the pinned decision differs from the one this run
    would have taken. A max pool asked for its indices returns the pinned winners.
    """

    def __init__(self, pin: list[Kink] | None = None) -> None:
        from torch.overrides import TorchFunctionMode

        outer = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in _TORCH_KINDS:
                    return outer._handle(name, func, args, kwargs or {})
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self.pin = pin
        self.decisions: list[Kink] = []
        self.flipped = 0

    def __enter__(self) -> TorchKinks:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        if self.pin is not None and exc[0] is None and len(self.decisions) != len(self.pin):
            raise ValueError(
                f"TorchKinks: the torch run made {len(self.decisions)} piecewise calls, the "
                f"pinned recording has {len(self.pin)}"
            )

    def _next_pinned(self, kink: Kink) -> np.ndarray:
        k = len(self.decisions)
        if k >= len(self.pin):
            raise ValueError(f"TorchKinks: call {k} ({kink.kind}) is beyond the pinned recording")
        pinned = self.pin[k]
        shape = tuple(kink.value.shape)
        if (pinned.kind, pinned.bounds, pinned.value.shape) != (kink.kind, kink.bounds, shape):
            raise ValueError(
                f"TorchKinks: call {k} is {kink.kind}{kink.bounds or ''} {shape} in torch but "
                f"{pinned.kind}{pinned.bounds or ''} {pinned.value.shape} in the pinned "
                "recording (not the same network?)"
            )
        return np.asarray(pinned.value)

    def _handle(self, name: str, func, args, kwargs):
        import torch

        x = args[0]
        kind = _TORCH_KINDS[name]
        own = Kink(kind, x.detach().numpy().copy(), _torch_bounds(name, args, kwargs))
        if self.pin is None:
            self.decisions.append(own)
            return func(*args, **kwargs)
        pinned = self._next_pinned(own)
        self.decisions.append(own)
        if kind == "max_pool2d":
            return self._pinned_pool(name, func, args, kwargs, pinned)
        piece = torch.as_tensor(pieces(kind, pinned, own.bounds))
        self.flipped += int(torch.sum(piece != pieces(kind, x.detach(), own.bounds)))
        return _on_pieces(kind, own.bounds, x, piece)

    def _pinned_pool(self, name, func, args, kwargs, pinned):
        import torch

        x = args[0]
        want_indices = name == "max_pool2d_with_indices" or bool(
            kwargs.get("return_indices") or (len(args) > 6 and args[6])
        )
        options = {**kwargs, "return_indices": True}
        pool_args = args[1:6]  # without a positional return_indices
        _, winners = func(torch.from_numpy(np.array(pinned)), *pool_args, **options)
        _, own_winners = func(x.detach(), *pool_args, **options)
        self.flipped += int(torch.sum(winners != own_winners))
        values = x.flatten(2).gather(2, winners.flatten(2)).view(winners.shape)
        return (values, winners) if want_indices else values


def _on_pieces(kind: str, bounds, x, piece):
    """The activation of torch tensor ``x`` with each element on the given piece (0, 1, 2):
    differentiable in ``x`` with that piece's derivative."""
    low, mid, high = ((piece == i).to(x.dtype) for i in range(3))
    if kind == "relu":
        return x * mid
    if kind == "hardtanh":
        lo, hi = bounds
        return x * mid + lo * low + hi * high
    if kind == "hardsigmoid":
        return (x + 3) / 6 * mid + high
    return x * (x + 3) / 6 * mid + x * high  # hardswish


def _torch_grads(net, x, labels, dtype, kinks: TorchKinks) -> dict[str, np.ndarray]:
    import torch

    from cnn_jax.models.outputs import logits_terms

    net.zero_grad()
    images = torch.tensor(x.transpose(0, 3, 1, 2).copy(), dtype=dtype)
    with kinks:
        # Every head's loss (auxiliary heads too), as in float32_gradient_errors.
        loss = sum(
            torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
            for logits in logits_terms(net(images))
        )
    loss.backward()
    return {k: p.grad.numpy().astype(np.float64) for k, p in net.named_parameters()}


def float32_gradient_errors(
    name: str,
    size: int,
    channels: int,
    batch: int = 6,
    seed: int = 0,
    *,
    build: tuple[Callable, Callable] | None = None,
) -> dict:
    """cnn_jax's and torch's float32 train-mode parameter gradients of model ``name`` (its torch
    reference: torchvision's code where it loads), judged against float64 torch.

    ``build``, a pair ``(ours, reference)`` of builders taking the same keyword arguments (a
    :class:`cnn_jax.testing.miniatures.Miniature`'s), checks that model pair instead, built
    with registered model ``name``'s test arguments.

    BatchNorm statistics and affine parameters are randomised (``torch_models.randomize``),
    random train-mode layers are off, the input a ``(batch, size, size, channels)`` standard
    normal draw with labels ``arange(batch) % 5``; the loss sums the cross-entropy of every head
    (auxiliary heads too, :func:`cnn_jax.models.outputs.logits_terms`). Returned, for cnn_jax
    (``ours_*``) and torch (``theirs_*``):

    - ``ours`` / ``theirs``: the worst per-parameter relative L2 error ``||g - g64|| / ||g64||``
      against the float64 gradient of the run's own pieces (every decision pinned);
    - ``*_unpinned``: the same against plain float64;
    - ``*_zero``: the L2 norm, relative to the whole float64 gradient's, of the gradients whose
      true value is exactly zero (a conv bias followed by BatchNorm): pure rounding;
    - ``*_flips``: the activation elements and max-pool windows decided differently from
      float64.
    """
    import optax
    import torch
    from flax import traverse_util

    import cnn_jax.testing.torch_models as twins
    from cnn_jax.interop import from_torch
    from cnn_jax.models import create, logits_terms
    from cnn_jax.testing import zoo

    # Random train-mode layers (dropout, stochastic depth) off: their masks cannot match torch's.
    # torchvision's classes take no in_channels (3 channels): a pair is built without it.
    extra = {} if build else {"in_channels": channels}
    kw = zoo.kwargs(name, deterministic=True, **extra)
    torch.manual_seed(seed)
    make_ours, make_reference = build or (
        lambda **k: create(name, **k),
        lambda **k: twins.reference(name, **k),
    )
    t64 = twins.randomize(make_reference(**kw), seed=seed).double().train()
    t32 = make_reference(**kw).train()
    # A state dict's _metadata carries module versions (torchvision's MNASNet refuses a state
    # without one), so the copies below keep the dict and replace its tensors.
    single = t64.state_dict()
    for key, value in single.items():
        if value.is_floating_point():
            single[key] = value.float()
    t32.load_state_dict(single)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, channels))
    labels = np.arange(batch) % 5
    state = t64.state_dict()  # BN statistics move per run: a copy of the starting values
    for key, value in state.items():
        state[key] = value.clone()

    def float64(kinks: TorchKinks) -> dict[str, np.ndarray]:
        t64.load_state_dict(state)
        return _torch_grads(t64, x, labels, torch.float64, kinks)

    recorder = TorchKinks()
    theirs = _torch_grads(t32, x, labels, torch.float32, recorder)

    model = make_ours(**kw)
    variables = from_torch(model, t32.state_dict())

    def loss(params):
        output, _ = model.apply({**variables, "params": params}, jnp.asarray(x, jnp.float32),
                                train=True, mutable=["batch_stats"])  # fmt: skip
        return sum(
            optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            for logits in logits_terms(output)
        )

    grads, kinks = runtime.jit(jax.grad(record_kinks(loss), has_aux=True))(variables["params"])
    flat = traverse_util.flatten_dict(grads, sep=".")
    ours = {k: np.asarray(v, np.float64) for k, v in flat.items()}

    reference = float64(TorchKinks())
    pinned_ours, pinned_theirs = TorchKinks(pin=to_nchw(kinks)), TorchKinks(pin=recorder.decisions)
    ours_reference, theirs_reference = float64(pinned_ours), float64(pinned_theirs)
    total = np.sqrt(sum(np.sum(g**2) for g in reference.values()))
    if set(ours) != set(reference):
        raise ValueError(
            f"{name}: parameters differ from torch's: {sorted(set(ours) ^ set(reference))}"
        )
    # A conv bias before BatchNorm has a true gradient of exactly zero (float64: ~1e-16 of the
    # whole): no relative error exists there, so those are judged by their size.
    zero = {k for k, g in reference.items() if np.linalg.norm(g) <= 1e-12 * total}

    def worst(grads, reference):
        return max(
            float(np.linalg.norm(grads[k] - ref) / np.linalg.norm(ref))
            for k, ref in reference.items()
            if k not in zero
        )

    def size(grads):
        return float(np.sqrt(sum(np.sum(grads[k] ** 2) for k in zero)) / total)

    return {
        "ours": worst(ours, ours_reference),
        "theirs": worst(theirs, theirs_reference),
        "ours_unpinned": worst(ours, reference),
        "theirs_unpinned": worst(theirs, reference),
        "ours_zero": size(ours),
        "theirs_zero": size(theirs),
        "ours_flips": pinned_ours.flipped,
        "theirs_flips": pinned_theirs.flipped,
    }
