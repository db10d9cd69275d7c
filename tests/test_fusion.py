"""cnn_jax.functional.materialize: exactly the identity, and a boundary XLA:CPU's fusion does not
cross (so a residual stream is computed once, not inside every fusion that reads it)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.functional as F
from cnn_jax import models
from cnn_jax import nn as cnn
from cnn_jax.functional import conv


@pytest.mark.parametrize(
    "x",
    [
        np.array([-0.0, 0.0, np.nan, np.inf, -np.inf, 1e-45, -3.5], np.float32),
        np.array([np.nan, -0.0, 2.0], np.float32),  # NaN first: the predicate's own element
        np.array([[-0.0, 1.5]], jnp.bfloat16),
        np.array([-2, 0, 7], np.int32),
        np.array([True, False]),
    ],
    ids=["float32", "nan-first", "bfloat16", "int32", "bool"],
)
def test_materialize_is_the_identity_bit_for_bit(x):
    out = jax.jit(F.materialize)(jnp.asarray(x))
    assert out.dtype == x.dtype and out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out).view(np.uint8), np.asarray(x).view(np.uint8))


def test_materialize_derivatives_and_vmap_are_the_identitys():
    x = jnp.array([[-1.0, 2.0, -0.0], [3.0, np.nan, 4.0]])
    g = jax.grad(lambda t: jnp.sum(F.materialize(t) * jnp.arange(3.0)))(jnp.nan_to_num(x))
    np.testing.assert_array_equal(g, jnp.broadcast_to(jnp.arange(3.0), x.shape))
    np.testing.assert_array_equal(
        jax.jvp(F.materialize, (x,), (jnp.ones_like(x),))[1], jnp.ones_like(x)
    )
    np.testing.assert_array_equal(jax.vmap(F.materialize)(x), x)
    assert F.materialize(jnp.zeros((0, 3))).shape == (0, 3)


def _fused_maxima(text: str) -> int:
    """The most ``maximum`` ops in one fused computation of an optimised HLO module."""
    counts, current = {}, None
    for line in text.splitlines():
        header = re.match(r"^%?(fused[\w.\-]*) .*\{$", line)
        if header:
            current = header.group(1)
            counts[current] = 0
        elif line and not line.startswith(" "):
            current = None
        elif current and " maximum(" in line:
            counts[current] += 1
    return max(counts.values(), default=0)


def _residual_stream(store: bool):
    """Four residual "blocks" ``y = relu(y + a * s)``, each output read by an elementwise
    consumer and, transposed, by a matmul (as a weight gradient reads a block's input)."""

    def blocks(y, a, s):
        total = 0.0
        for _ in range(4):
            y = jnp.maximum(y + a * s, 0.0)
            if store:
                y = F.materialize(y)
            total = total + jnp.sum(jnp.tanh(y)) + jnp.sum(y.T @ a)
        return total

    return blocks


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion decision")
def test_materialize_stops_xla_cpu_recomputing_a_residual_stream():
    args = (jnp.ones((64, 32)), jnp.ones((64, 32)), jnp.ones((32,)))
    compiled = {
        store: jax.jit(_residual_stream(store)).lower(*args).compile().as_text()
        for store in (False, True)
    }
    # Without it XLA fuses the whole chain into consumers of the last block (the premise: if a
    # later XLA stops doing this, the test says so); with it every ReLU is computed once.
    assert _fused_maxima(compiled[False]) > 1
    assert _fused_maxima(compiled[True]) == 1
    assert " conditional(" in compiled[True]
    np.testing.assert_allclose(
        jax.jit(_residual_stream(True))(*args), jax.jit(_residual_stream(False))(*args), rtol=1e-6
    )


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU simplification")
def test_materialize_of_an_array_with_a_constant_first_element_is_folded_away():
    """The documented limit: the predicate reads the first element, so on a zero-padded array
    (whose corner XLA knows is 0) the conditional is removed; before the pad it stays."""
    x = jnp.arange(12.0).reshape(3, 4) + 1.0

    def compiled(f):
        return jax.jit(lambda x: f(x) * 2.0).lower(x).compile().as_text()

    assert " conditional(" not in compiled(lambda x: F.materialize(jnp.pad(x, 1)))
    assert " conditional(" in compiled(lambda x: jnp.pad(F.materialize(x), 1))


@pytest.mark.parametrize(
    ("name", "blocks"),
    [("resnet18", 8), ("resnet50", 16), ("regnet_y_400mf", 0), ("mobilenet_v2", 0)],
)
def test_resnet_blocks_store_their_outputs(name, blocks):
    """ResNet's blocks store their output: one ``cond`` per block in the traced forward pass;
    the other families' blocks do not (experiments.bench_materialize measured no gain)."""
    model = models.create(name, num_classes=10)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
    assert sum(eqn.primitive.name == "cond" for eqn in jaxpr.eqns) == blocks


# --------------------------------------------------------------------------------------------------
# materialize_gradient: the forward pass untouched, the gradient stored once.
# --------------------------------------------------------------------------------------------------


def _loss(w):
    return jnp.sum(jnp.sin(w) * jnp.arange(w.size, dtype=w.dtype).reshape(w.shape))


def test_materialize_gradient_derivatives_are_the_identitys_bit_for_bit():
    w = jnp.array([[-1.0, 2.0, -0.0], [3.0, 0.5, 4.0]])
    stored = lambda w: _loss(F.materialize_gradient(w))
    np.testing.assert_array_equal(jax.jit(F.materialize_gradient)(w), w)
    for derivative in (jax.grad, jax.jacfwd, jax.hessian):
        np.testing.assert_array_equal(
            jax.jit(derivative(stored))(w), jax.jit(derivative(_loss))(w), err_msg=str(derivative)
        )
    tangent = jnp.full_like(w, 0.25)
    np.testing.assert_array_equal(jax.jvp(F.materialize_gradient, (w,), (tangent,))[1], tangent)
    np.testing.assert_array_equal(
        jax.vmap(jax.grad(stored))(jnp.stack([w, -w])),
        jax.vmap(jax.grad(_loss))(jnp.stack([w, -w])),
    )
    assert F.materialize_gradient(jnp.zeros((0, 3))).shape == (0, 3)
    assert jax.grad(lambda s: F.materialize_gradient(s) ** 2)(3.0) == 6.0  # a Python scalar
    assert jax.grad(lambda s: F.materialize(s) ** 2)(3.0) == 6.0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="stores on the CPU only")
def test_materialize_gradient_leaves_the_forward_pass_alone():
    """No conditional in the compiled forward pass (nothing is copied); one in the gradient's."""
    w = jnp.ones((4, 5))

    def conditionals(f):
        return jax.jit(f).lower(w).compile().as_text().count(" conditional(")

    assert conditionals(lambda w: _loss(F.materialize_gradient(w))) == 0
    assert conditionals(jax.grad(lambda w: _loss(F.materialize_gradient(w)))) == 1


def _computations(text: str) -> dict[str, str]:
    """The computations of an optimised HLO module's text: name (``%`` included) to body."""
    return dict(re.findall(r"\n(%?[\w.\-]+) [^\n]*\{\n(.*?)\n\}", text, re.S))


def _transposing_updates(text: str, shape: tuple[int, ...] | None) -> int:
    """Fused computations of an optimised HLO module that transpose an array of ``shape`` (of
    any shape: ``None``) and do arithmetic with it (an update reading a gradient in another
    layout)."""
    dims = "" if shape is None else ",".join(map(str, shape))
    return sum(
        any(f"[{dims}" in line and " transpose(" in line for line in body.splitlines())
        and (" multiply(" in body or " add(" in body)
        for name, body in _computations(text).items()
        if name.lstrip("%").startswith("fused")
    )


def _conv_weight_update(w, mu, nu, x):
    """A convolution's weight gradient read by two moment updates, as Adam's are."""
    g = jax.grad(lambda w: jnp.sum(F.conv2d(x, w, None, 1, 1) ** 2))(w)
    return 0.9 * mu + 0.1 * g, 0.999 * nu + 0.001 * g * g


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU layout and fusion decision")
def test_a_large_conv_weight_gradient_is_transposed_once_not_inside_every_update(monkeypatch):
    """XLA:CPU computes the weight gradient input-channel major; without storing it, each update
    transposes it as it reads it (the premise: if a later XLA stops doing this, the test says
    so), with it the transposition is a copy of its own and the updates read the stored
    gradient. Small kernels are left alone (:data:`STORED_WEIGHT_GRADIENT_SIZE`)."""
    w = jnp.full((512, 512, 3, 3), 0.01)
    assert w.size >= conv.STORED_WEIGHT_GRADIENT_SIZE
    args = (w, w, w, jnp.ones((2, 4, 4, 512)))

    def run():
        # A new function each time: jax reuses a function's trace, whatever the module says.
        step = jax.jit(lambda *a: _conv_weight_update(*a))
        return step.lower(*args).compile().as_text(), step(*args)

    stored, stored_out = run()
    assert _transposing_updates(stored, w.shape) == 0
    assert " conditional(" in stored
    monkeypatch.setattr(conv, "STORED_WEIGHT_GRADIENT_SIZE", w.size + 1)
    fused, fused_out = run()
    assert _transposing_updates(fused, w.shape) == 2
    assert " conditional(" not in fused
    # The gradient is the same; the updates' arithmetic is fused differently, so XLA may
    # contract a different multiply-add (an ulp apart).
    for got, want in zip(stored_out, fused_out, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(("out_channels", "stored"), [(511, False), (512, True)])
def test_conv_stores_the_weight_gradient_of_large_kernels_only(out_channels, stored):
    """The size rule, read off the traced gradient: a conditional for kernels of at least
    :data:`STORED_WEIGHT_GRADIENT_SIZE` elements (512 x 57 x 3 x 3 is 2**18 + 512, 511 x 57 x 3
    x 3 is 2**18 - 1), none below. 3x3 kernels: a 1x1 kernel's weight gradient is a matmul
    that stores its output gradient (another conditional)."""
    w = jnp.zeros((out_channels, 57, 3, 3))
    x = jnp.ones((1, 4, 4, 57))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(F.conv2d(x, w))))(w))
    assert ("cond[" in jaxpr) == (stored and jax.default_backend() == "cpu")


@pytest.mark.parametrize("store", [True, False])
def test_store_weight_gradient_overrides_the_size_rule(store):
    """``store_weight_gradient=`` decides whatever the kernel's size, through the functional,
    the layer and :func:`~cnn_jax.nn.with_layer_settings` (which the train step uses for a
    state whose kernels are stored HWIO: ``False``)."""
    on_cpu = jax.default_backend() == "cpu"
    w = jnp.zeros((512 if not store else 8, 57, 3, 3))  # large when the rule would store it
    x = jnp.ones((1, 4, 4, 57))

    def conditionals(loss, *args):
        return "cond[" in str(jax.make_jaxpr(jax.grad(loss))(*args))

    functional = conditionals(lambda w: jnp.sum(F.conv2d(x, w, store_weight_gradient=store)), w)
    assert functional == (store and on_cpu)
    layer = cnn.Conv2d(57, w.shape[0], 3)
    params = layer.init(jax.random.key(0), x)["params"]
    apply = cnn.with_layer_settings(layer.apply, store_weight_gradients=store)
    through_settings = conditionals(lambda p: jnp.sum(apply({"params": p}, x)), params)
    assert through_settings == (store and on_cpu)
    up = cnn.ConvTranspose2d(w.shape[0], 57, 3)
    up_params = up.init(jax.random.key(0), jnp.ones((1, 4, 4, w.shape[0])))["params"]
    apply_up = cnn.with_layer_settings(up.apply, store_weight_gradients=store)
    y = jnp.ones((1, 4, 4, w.shape[0]))
    transposed = conditionals(lambda p: jnp.sum(apply_up({"params": p}, y)), up_params)
    assert transposed == (store and on_cpu)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU layout and fusion decision")
def test_a_1x1_weight_gradient_reads_the_stored_output_gradient(monkeypatch):
    """A 1x1 convolution's weight gradient is a matmul over pixels that reads the output
    gradient transposed. Without storing it first, XLA fuses the transposition into the fusion
    that computes the output gradient (the premise: if a later XLA stops doing this, the test
    says so); stored, the transposition is a copy of its own. The gradient is the same."""
    w, x = jnp.full((32, 64, 1, 1), 0.01), jnp.ones((2, 8, 8, 64))
    scale = jnp.linspace(0.5, 1.5, 32)

    def run():
        # A BatchNorm-like backward computes the output gradient: arithmetic a fusion can hold.
        # The input is an argument: the conditional's predicate reads it, and XLA folds a
        # predicate it can prove.
        loss = lambda w, x: jnp.sum(jnp.tanh(F.conv2d(x, w) * scale))
        step = jax.jit(jax.grad(loss))
        return step.lower(w, x).compile().as_text(), step(w, x)

    stored, stored_grad = run()
    assert _transposing_updates(stored, None) == 0
    assert " conditional(" in stored
    monkeypatch.setattr(conv, "store_tangent", lambda tangent, primal: tangent)
    fused, fused_grad = run()
    assert _transposing_updates(fused, None) >= 1
    assert " conditional(" not in fused
    np.testing.assert_allclose(stored_grad, fused_grad, rtol=1e-6)


@pytest.mark.parametrize(
    ("backend", "out_channels", "conditionals"),
    [("auto", 512, 1), ("auto", 511, 1), ("xla", 512, 1), ("xla", 511, 0)],
)
def test_a_large_1x1_kernels_weight_gradient_is_stored_only_where_xla_computes_it(
    backend, out_channels, conditionals
):
    """Under 'auto' a 1x1 kernel's weight gradient is a matmul whose result is already in the
    kernel's OIHW layout: its output gradient is stored (one conditional, whatever the kernel's
    size), the result is not. XLA's convolution's weight gradient is stored for kernels of at
    least :data:`STORED_WEIGHT_GRADIENT_SIZE` elements (512 x 512 is 2**18)."""
    w = jnp.zeros((out_channels, 512, 1, 1))
    x = jnp.ones((1, 4, 4, 512))
    loss = lambda w: jnp.sum(F.conv2d(x, w, backend=backend))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(w))
    # Conditionals that return an array (the store also traces one with no outputs).
    stores = len(re.findall(r"= cond\[", jaxpr))
    assert stores == (conditionals if jax.default_backend() == "cpu" else 0)


def _fusions_computing(text: str, op: str, shape: str) -> list[str]:
    """The fusions of a compiled program whose result has ``shape`` (``'f32[2,16,16,8]'``) and
    whose fused computation holds an ``op`` instruction."""
    bodies = _computations(text)
    found = re.findall(r"%([\w.\-]+) = (\S+) fusion\(.*?calls=(%[\w.\-]+)", text)
    return [name for name, out, called in found if out.startswith(shape + "{")
            and f" {op}(" in bodies.get(called, "")]  # fmt: skip


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion decision")
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 2, 1), (2, 2, 0)])
def test_max_pooling_reads_a_stored_output_gradient_instead_of_recomputing_it(
    kernel, stride, padding
):
    """Max pooling's input gradient reads the output gradient at every input position of its
    windows. Left to XLA, the expression computing that gradient (here a tanh's derivative,
    standing for the BatchNorm backward passes of DenseNet's first block) is fused into the
    pooling's backward loop and recomputed there (the premise of DenseNet's store: if a later
    XLA stops doing this, the test says so); with the pooled output through
    ``materialize_gradient`` it is computed once and the loop reads it. The gradient is the
    same, bit for bit."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 8)), jnp.float32)
    scale = jnp.linspace(0.5, 1.5, 8)

    def run(store):
        wrap = F.materialize_gradient if store else (lambda y: y)
        pooled = lambda x: wrap(F.max_pool2d(x, kernel, stride, padding))
        step = jax.jit(jax.grad(lambda x: jnp.sum(jnp.tanh(pooled(x) * scale))))
        return step.lower(x).compile().as_text(), step(x)

    stored, stored_grad = run(True)
    assert " conditional(" in stored
    assert _fusions_computing(stored, "tanh", "f32[2,16,16,8]") == []
    fused, fused_grad = run(False)
    assert " conditional(" not in fused
    assert _fusions_computing(fused, "tanh", "f32[2,16,16,8]") != []
    np.testing.assert_array_equal(stored_grad, fused_grad)


@pytest.mark.slow  # traces and compiles DenseNet-121's gradient
def test_densenet_stores_the_gradient_of_its_stem_pooling_only(monkeypatch):
    """One conditional more in the gradient than without the store (on the CPU; the others
    store convolutions' gradients), none in the forward pass; the stored gradient is the
    identity's, so the model's values are untouched."""
    from cnn_jax.models import densenet

    model = models.create("densenet121", num_classes=10)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    params, stats = variables["params"], variables["batch_stats"]

    def conditionals():
        forward = lambda p, s: model.apply({"params": p, "batch_stats": s}, x, train=False)
        assert "cond[" not in str(jax.make_jaxpr(forward)(params, stats))
        loss = lambda p, s: jnp.sum(forward(p, s))
        return len(re.findall(r"= cond\[", str(jax.make_jaxpr(jax.grad(loss))(params, stats))))

    stored = conditionals()
    monkeypatch.setattr(densenet, "materialize_gradient", lambda y: y)
    assert stored - conditionals() == (1 if jax.default_backend() == "cpu" else 0)
