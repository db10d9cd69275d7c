"""No module-level mutable state of cnn_jax decides what a traced function computes.

A layer's behaviour must come from its attributes and call arguments only; a setting read from a
module-level container while tracing (as BatchNorm's axis name and frozen prefixes once were,
pushed by context managers onto lists in ``cnn_jax.nn.layers``) is frozen into whatever was
jitted under it and is not thread-safe. Here every list, dict, set and deque bound to a name at
the top of a cnn_jax module is swapped for a copy that records reads, while the train and eval
steps of a few models are traced with every setting they take (frozen BatchNorm, a pmap axis, a
convolution backend, augmentation, penalties); none may be read. Constants that traced code
reads are immutable (``types.MappingProxyType``, tuples) and so are not watched. Rebinding a
module global from a function (``global``) is refused outright.
"""

from __future__ import annotations

import ast
import collections
import importlib
import pkgutil
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest

import cnn_jax
from cnn_jax import models
from cnn_jax import train as T
from cnn_jax.data.augment import Augment

PACKAGE = Path(cnn_jax.__file__).parent
WATCHED_TYPES = (list, dict, set, collections.deque)


def _modules():
    return [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(cnn_jax.__path__, "cnn_jax.")
    ]


def _watched(value, name: str, reads: list[str]):
    """A copy of ``value`` whose every read appends ``name`` to ``reads``."""
    base = type(value)
    methods = {
        "__getitem__",
        "__iter__",
        "__len__",
        "__contains__",
        "get",
        "keys",
        "values",
        "items",
        "copy",
        "index",
        "count",
    }

    def recorder(method):
        def read(self, *args, **kwargs):
            reads.append(name)
            return getattr(base, method)(self, *args, **kwargs)

        return read

    cls = type(
        f"Watched{base.__name__}",
        (base,),
        {m: recorder(m) for m in methods if hasattr(base, m)},
    )
    return cls(value)


def _watch_globals(monkeypatch) -> list[str]:
    """Swaps every module-level mutable container of cnn_jax (in every module that binds it)
    for a read-recording copy; returns the list that collects the names read."""
    reads: list[str] = []
    modules = _modules()
    originals = {}
    for module in modules:
        for name, value in vars(module).items():
            if not name.startswith("__") and isinstance(value, WATCHED_TYPES):
                originals.setdefault(id(value), (value, f"{module.__name__}.{name}"))
    copies = {key: _watched(value, name, reads) for key, (value, name) in originals.items()}
    assert copies, "nothing watched: the check would prove nothing"
    for module in modules:
        for name, value in list(vars(module).items()):
            if id(value) in copies and not name.startswith("__"):
                monkeypatch.setattr(module, name, copies[id(value)])
    return reads


def _abstract_state(model, shape) -> T.TrainState:
    """A train state of shapes only: tracing needs no values (and nothing is compiled)."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    tx = optax.sgd(0.1, momentum=0.9)
    return T.TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        opt_state=jax.eval_shape(tx.init, variables["params"]),
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )


MODELS = [
    ("lenet5", {}, (2, 32, 32, 1), ("features.0",)),
    (
        "convnet",
        dict(batch_norm=True, dropout=0.5, activation="tanh"),
        (2, 16, 16, 1),
        ("features",),
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "shape", "freeze"), MODELS, ids=[m[0] for m in MODELS])
def test_tracing_a_step_reads_no_module_level_mutable_state(
    name, kwargs, shape, freeze, monkeypatch
):
    model = models.create(name, **kwargs)
    state = _abstract_state(model, (1, *shape[1:]))
    batch = {
        "image": jax.ShapeDtypeStruct(shape, jnp.uint8),
        "label": jax.ShapeDtypeStruct(shape[:1], jnp.int32),
    }
    options = dict(
        augment=Augment(crop_padding=2, flip=True, brightness=0.1),
        mean=0.5,
        std=0.25,
        l1=1e-4,
        l2=1e-4,
        label_smoothing=0.1,
        compute_dtype="bfloat16",
    )
    reads = _watch_globals(monkeypatch)  # the model is built: registries may be read before
    steps = [
        T.make_train_step(freeze=freeze, conv_backend="im2col", **options),
        T.make_train_step(**options),  # the 'auto' convolution plans
        T.make_eval_step(mean=0.5, std=0.25, conv_backend="banded"),
    ]
    for step in steps:
        jax.make_jaxpr(step)(state, batch)
    # pmap's synchronised BatchNorm: an axis name for every BatchNorm2d (vmap stands in).
    synced = T.make_train_step(axis_name="devices", **options)
    per_device = jax.tree.map(lambda x: jax.ShapeDtypeStruct((2, 1, *x.shape[1:]), x.dtype), batch)
    jax.make_jaxpr(jax.vmap(synced, in_axes=(None, 0), axis_name="devices"))(state, per_device)
    assert reads == [], f"read while tracing: {sorted(set(reads))}"


def test_the_check_catches_the_old_frozen_batch_norm_stack(monkeypatch):
    """The old design, restated: frozen prefixes pushed onto a module-level list that
    BatchNorm2d read while tracing. The check names it."""
    from cnn_jax.nn import layers

    monkeypatch.setattr(layers, "_FROZEN_BN", [("bn",)], raising=False)

    class StackReadingBatchNorm(layers.BatchNorm2d):
        def __call__(self, x, *, train):
            frozen = ".".join(self.path) in layers._FROZEN_BN[-1]
            return super().__call__(x, train=train and not frozen)

    reads = _watch_globals(monkeypatch)
    bn = StackReadingBatchNorm(3, name="bn")
    x = jnp.ones((2, 4, 4, 3))
    variables = bn.init(jax.random.key(0), x, train=False)
    reads.clear()
    jax.make_jaxpr(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert set(reads) == {"cnn_jax.nn.layers._FROZEN_BN"}


def test_no_function_rebinds_a_module_global():
    """``global NAME`` in a function is a process-wide switch (the old convolution backend was
    one): settings are arguments instead."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Global):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert offenders == []
