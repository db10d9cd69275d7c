"""The piecewise-linear decisions of a run (ReLU signs, max-pool winners), recorded and pinned.

A float32 gradient of a ReLU / max-pool network is the gradient of one linear piece: the one its
rounded forward pass selected. Where an activation lies within float32 rounding of a kink (a
pre-activation of 1e-7 whose float32 value came out with the other sign, or two near-equal
maxima in a pooling window) float32 and float64 runs can take different pieces, and their
gradients then differ by that element's whole contribution, however precise each arithmetic
step was. Such inputs appear by chance in any large network (vgg16_bn has ~6.6 million ReLU
inputs per batch of six 64×64 images), in torch's float32 runs as in ours, depending on each
program's rounding.

To measure rounding error alone, compare a float32 gradient with the float64 gradient of **the
same piece**: record the float32 run's decisions, then run float64 torch with every ReLU and max
pool pinned to them. Decisions are matched by call order (the k-th ReLU of the cnn_jax model with
the k-th of the torch one), which holds for a model and its torch twin; kinds and shapes are
checked.

>>> with recording_kinks() as recorded:                                 # doctest: +SKIP
...     def loss_and_values(params):   # the recorded values leave the program as aux output
...         return loss(params), [value for _, value in recorded]
...     grads, values = jax.jit(jax.grad(loss_and_values, has_aux=True))(params)
>>> decisions = to_nchw(recorded, values)                            # doctest: +SKIP
>>> with TorchKinks(pin=decisions):                                     # doctest: +SKIP
...     loss64 = torch_loss(net64)     # float64, on the float32 run's linear piece
>>> loss64.backward()                                                   # doctest: +SKIP

Torch is imported lazily; only :class:`TorchKinks` needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import cnn_jax.functional as F
from cnn_jax import runtime

Decision = tuple[str, Any]  # ("relu", output) or ("max_pool2d", input); NHWC in cnn_jax


@contextlib.contextmanager
def recording_kinks() -> Iterator[list[Decision]]:
    """Within the block, every ``jax.nn.relu`` output and every :func:`cnn_jax.functional.
    max_pool2d` input (the models' ReLUs and max pools all go through them) is appended, in call
    order, to the yielded list, as ``("relu", output)`` or ``("max_pool2d", input)``.

    Trace the function to record inside the block (a fresh ``jax.jit``, or no jit), and return
    the list from it (e.g. as ``has_aux`` output) so the recorded values come from the very
    program whose gradient is examined: a separately compiled forward rounds differently.
    """
    relu, max_pool2d = jax.nn.relu, F.max_pool2d
    recorded: list[Decision] = []

    def recording_relu(x, *args, **kwargs):
        y = relu(x, *args, **kwargs)
        recorded.append(("relu", y))
        return y

    def recording_max_pool2d(x, *args, **kwargs):
        recorded.append(("max_pool2d", x))
        return max_pool2d(x, *args, **kwargs)

    jax.nn.relu, F.max_pool2d = recording_relu, recording_max_pool2d
    try:
        yield recorded
    finally:
        jax.nn.relu, F.max_pool2d = relu, max_pool2d


def to_nchw(decisions: list[Decision], values: list | None = None) -> list[tuple[str, np.ndarray]]:
    """cnn_jax decisions (NHWC arrays) as numpy arrays in torch's NCHW layout. ``values``: the
    concrete arrays a traced program returned for a :func:`recording_kinks` list (whose own
    entries are then tracers and give only the kinds)."""
    if values is not None:
        decisions = [(kind, v) for (kind, _), v in zip(decisions, values, strict=True)]
    out = []
    for kind, value in decisions:
        a = np.asarray(value)
        out.append((kind, a.transpose(0, 3, 1, 2) if a.ndim == 4 else a))
    return out


class TorchKinks:
    """A ``torch.overrides.TorchFunctionMode`` that records or pins a torch run's decisions.

    ``TorchKinks()`` records, in call order, every ``relu`` output and ``max_pool2d`` input of
    the torch code run inside it (NCHW numpy copies in :attr:`decisions`), the same list
    :func:`recording_kinks` makes for cnn_jax after :func:`to_nchw`. ``TorchKinks(pin=decisions)``
    makes the run take those decisions instead of its own: each ReLU returns ``x * mask`` with
    the recorded sign pattern, each max pool the input elements that won in the recorded input
    (first maximum on ties, torch's and cnn_jax's rule); its gradient is then the exact gradient
    of the recorded run's linear piece. :attr:`flipped` counts the elements (ReLU) and windows
    (max pool) where the pinned decision differs from the one this run would have taken. A max
    pool asked for its indices returns the pinned winners.
    """

    def __init__(self, pin: list[tuple[str, np.ndarray]] | None = None) -> None:
        from torch.overrides import TorchFunctionMode

        outer = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in ("relu", "relu_", "max_pool2d", "max_pool2d_with_indices"):
                    return outer._handle(name, func, args, kwargs or {})
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self.pin = pin
        self.decisions: list[tuple[str, np.ndarray]] = []
        self.flipped = 0

    def __enter__(self) -> TorchKinks:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        if self.pin is not None and exc[0] is None and len(self.decisions) != len(self.pin):
            raise ValueError(
                f"TorchKinks: the torch run made {len(self.decisions)} ReLU / max-pool calls, "
                f"the pinned recording has {len(self.pin)}"
            )

    def _next_pinned(self, kind: str, shape) -> np.ndarray:
        k = len(self.decisions)
        if k >= len(self.pin):
            raise ValueError(f"TorchKinks: call {k} ({kind}) is beyond the pinned recording")
        pinned_kind, value = self.pin[k]
        if pinned_kind != kind or value.shape != tuple(shape):
            raise ValueError(
                f"TorchKinks: call {k} is {kind} {tuple(shape)} in torch but {pinned_kind} "
                f"{value.shape} in the pinned recording (not the same network?)"
            )
        return value

    def _handle(self, name: str, func, args, kwargs):
        import torch

        x = args[0]
        if name.startswith("max_pool2d"):
            own = x.detach().numpy().copy()
            if self.pin is None:
                self.decisions.append(("max_pool2d", own))
                return func(*args, **kwargs)
            pinned = self._next_pinned("max_pool2d", x.shape)
            self.decisions.append(("max_pool2d", own))
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
        if self.pin is None:
            y = func(*args, **kwargs)
            self.decisions.append(("relu", y.detach().numpy().copy()))
            return y
        pinned = self._next_pinned("relu", x.shape)
        self.decisions.append(("relu", x.detach().numpy().copy()))
        mask = torch.as_tensor(pinned > 0)
        self.flipped += int(torch.sum(mask != (x.detach() > 0)))
        return x * mask.to(x.dtype)


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
    name: str, size: int, channels: int, batch: int = 6, seed: int = 0
) -> dict:
    """cnn_jax's and torch's float32 train-mode parameter gradients of model ``name`` (its torch
    reference: torchvision's code where it loads), judged against float64 torch.

    BatchNorm statistics and affine parameters are randomised (``torch_twins.randomize``),
    dropout is 0, the input a ``(batch, size, size, channels)`` standard normal draw with labels
    ``arange(batch) % 5``; the loss sums the cross-entropy of every head (auxiliary heads too,
    :func:`cnn_jax.models.outputs.logits_terms`). Returned, for cnn_jax (``ours_*``) and torch
    (``theirs_*``):

    - ``ours`` / ``theirs``: the worst per-parameter relative L2 error ``||g - g64|| / ||g64||``
      against the float64 gradient of the run's own linear piece (every decision pinned);
    - ``*_unpinned``: the same against plain float64;
    - ``*_zero``: the L2 norm, relative to the whole float64 gradient's, of the gradients whose
      true value is exactly zero (a conv bias followed by BatchNorm): pure rounding;
    - ``*_flips``: the ReLU elements and max-pool windows decided differently from float64.
    """
    import optax
    import torch
    from flax import traverse_util

    import cnn_jax.testing.torch_models as twins
    from cnn_jax.interop import from_torch
    from cnn_jax.models import create, logits_terms
    from cnn_jax.testing import zoo

    # Random train-mode layers (dropout, stochastic depth) off: their masks cannot match torch's.
    kw = zoo.kwargs(name, deterministic=True, in_channels=channels)
    torch.manual_seed(seed)
    t64 = twins.randomize(twins.reference(name, **kw), seed=seed).double().train()
    t32 = twins.reference(name, **kw).train()
    t32.load_state_dict({k: v.float() if v.is_floating_point() else v
                         for k, v in t64.state_dict().items()})  # fmt: skip
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, channels))
    labels = np.arange(batch) % 5
    state = {k: v.clone() for k, v in t64.state_dict().items()}  # BN statistics move per run

    def float64(kinks: TorchKinks) -> dict[str, np.ndarray]:
        t64.load_state_dict(state)
        return _torch_grads(t64, x, labels, torch.float64, kinks)

    recorder = TorchKinks()
    theirs = _torch_grads(t32, x, labels, torch.float32, recorder)

    model = create(name, **kw)
    variables = from_torch(model, t32.state_dict())

    def loss(params):
        output, _ = model.apply({**variables, "params": params}, jnp.asarray(x, jnp.float32),
                                train=True, mutable=["batch_stats"])  # fmt: skip
        return sum(
            optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            for logits in logits_terms(output)
        )

    with recording_kinks() as recorded:

        def loss_and_decisions(params):
            return loss(params), [value for _, value in recorded]

        grads, values = runtime.jit(jax.grad(loss_and_decisions, has_aux=True))(variables["params"])
    decisions = to_nchw(recorded, values)
    flat = traverse_util.flatten_dict(grads, sep=".")
    ours = {k: np.asarray(v, np.float64) for k, v in flat.items()}

    reference = float64(TorchKinks())
    pinned_ours, pinned_theirs = TorchKinks(pin=decisions), TorchKinks(pin=recorder.decisions)
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
