"""Conv2d and ConvTranspose2d equal torch.nn's: forward and gradients (input, weight, bias)."""

from __future__ import annotations

import functools
import itertools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.functional as F
import cnn_jax.nn as cnn
from cnn_jax._utils import pair
from cnn_jax.functional import available_conv_backends, conv
from cnn_jax.testing.parity import check_parity
from cnn_jax.testing.programs import entry_arrays

torch = pytest.importorskip("torch")

# Hand-picked cases covering each argument's edge, then a seeded random sample of the full space.
CONV_CASES = [
    dict(cin=1, cout=1, k=3, size=(5, 5)),  # the course's first example
    dict(cin=1, cout=1, k=4, padding=2, size=(5, 5)),
    dict(cin=3, cout=4, k=3, stride=2, size=(7, 8)),
    dict(cin=3, cout=4, k=3, dilation=2, padding=2, size=(9, 9)),
    dict(cin=3, cout=5, k=(3, 5), stride=(2, 1), padding=(1, 2), size=(9, 10)),
    dict(cin=2, cout=3, k=4, padding="same", size=(6, 7)),  # even kernel: extra pixel bottom/right
    dict(cin=2, cout=3, k=(2, 5), padding="same", dilation=(3, 1), size=(8, 7)),
    dict(cin=2, cout=3, k=3, padding="valid", size=(6, 6)),
    dict(cin=4, cout=6, k=3, groups=2, padding=1, size=(6, 6)),
    dict(cin=4, cout=8, k=3, groups=4, padding=1, size=(6, 6)),  # depthwise (multiplier 2)
    dict(cin=6, cout=6, k=3, groups=6, stride=2, padding=1, size=(7, 8)),  # MobileNet's
    dict(cin=3, cout=3, k=(5, 3), groups=3, dilation=2, padding=(4, 2), size=(9, 9)),
    dict(cin=3, cout=2, k=1, bias=False, size=(4, 5)),
    dict(cin=2, cout=3, k=3, padding=2, padding_mode="reflect", size=(5, 6)),
    dict(cin=2, cout=3, k=3, padding=(1, 2), padding_mode="replicate", size=(5, 6)),
    dict(cin=2, cout=3, k=3, padding=2, padding_mode="circular", stride=2, size=(5, 6)),
    dict(cin=2, cout=3, k=4, padding="same", padding_mode="reflect", size=(6, 6)),
    dict(cin=2, cout=2, k=5, padding="same", padding_mode="circular", size=(7, 5)),
    # Inputs or outputs narrower than the kernel: where the 'auto' backend uses im2col.
    dict(cin=4, cout=6, k=3, padding=1, size=(2, 2)),  # forward and input gradient
    dict(cin=4, cout=6, k=3, padding=1, size=(1, 1)),
    dict(cin=4, cout=6, k=3, stride=2, padding=1, size=(4, 3)),  # input gradient only
    dict(cin=3, cout=4, k=5, size=(5, 5)),  # LeNet's C5: 1x1 output
    dict(cin=4, cout=4, k=3, groups=2, size=(3, 3)),  # 1x1 output, grouped
    dict(cin=2, cout=3, k=3, stride=2, size=(4, 4)),  # 1x1 output reading a corner of the input
    dict(cin=4, cout=4, k=3, dilation=2, padding=2, groups=2, size=(3, 4)),
    # Depthwise with large kernels on small maps: where 'auto' unfolds the kernel.
    dict(cin=4, cout=4, k=7, groups=4, padding=3, size=(4, 4)),  # ConvNeXt's, as a matmul
    dict(cin=4, cout=8, k=7, groups=4, padding=3, size=(2, 3)),  # as a sum, multiplier 2
    dict(cin=3, cout=3, k=5, groups=3, stride=2, padding=2, size=(5, 5)),  # EfficientNet's
]


def _random_cases(n: int, seed: int = 0):
    space = itertools.product(
        [1, 2, 3, (2, 3)],  # kernel
        [1, 2, (1, 2)],  # stride
        [0, 1, (0, 1), "same", "valid"],  # padding
        [1, 2],  # dilation
        [1, 2],  # groups
        ["zeros", "reflect", "replicate", "circular"],
        [(7, 7), (8, 9)],  # odd / even sizes
    )
    valid = [
        dict(
            cin=2 * g,
            cout=2 * g,
            k=k,
            stride=s,
            padding=p,
            dilation=d,
            groups=g,
            padding_mode=m,
            size=size,
        )
        for k, s, p, d, g, m, size in space
        if not (p == "same" and s != 1)
    ]
    return random.Random(seed).sample(valid, n)


def _conv_pair(case, rng):
    kwargs = dict(
        kernel_size=case["k"],
        stride=case.get("stride", 1),
        padding=case.get("padding", 0),
        dilation=case.get("dilation", 1),
        groups=case.get("groups", 1),
        bias=case.get("bias", True),
        padding_mode=case.get("padding_mode", "zeros"),
    )
    torch_layer = torch.nn.Conv2d(case["cin"], case["cout"], **kwargs)
    module = cnn.Conv2d(case["cin"], case["cout"], **kwargs)
    x = rng.standard_normal((2, case["cin"], *case["size"])).astype(np.float32)
    return module, torch_layer, x


@pytest.mark.parametrize("case", CONV_CASES + _random_cases(40), ids=str)
def test_conv2d_matches_torch(case, rng):
    torch.manual_seed(0)
    module, torch_layer, x = _conv_pair(case, rng)
    check_parity(module, torch_layer, x)


def _unfolded_fits(case) -> bool:
    """Whether ``backend='unfolded'`` computes ``case`` itself: its convolution's map (padded
    already, for a padding mode other than zeros) has few enough positions per kernel tap."""
    k, stride, dilation = (
        pair(case.get(a, d), a) for a, d in (("k", 1), ("stride", 1), ("dilation", 1))
    )
    padding = conv.resolve_conv_padding(case.get("padding", 0), k, stride, dilation)
    size = case["size"]
    if case.get("padding_mode", "zeros") != "zeros":  # padded before the convolution
        size = tuple(n + lo + hi for n, (lo, hi) in zip(size, padding, strict=True))
        padding = ((0, 0), (0, 0))
    return conv._unfolded_matrix_fits(size, k, stride, padding, dilation)


def _backend_cases():
    """Every backend but 'auto' (the default, which test_conv2d_matches_torch runs on these
    cases) on every case it computes itself: 'depthwise', 'grouped', 'unfolded' and 'taps'
    hand every other convolution to XLA's, which the 'xla' backend runs."""
    for backend in available_conv_backends():
        for case in CONV_CASES:
            groups = case.get("groups", 1)
            kernel_shape = (case["cout"], case["cin"] // groups)
            own = {
                "depthwise": conv._is_depthwise(kernel_shape, groups),
                "grouped": conv._is_grouped(kernel_shape, groups),
                "unfolded": _unfolded_fits(case),
                "taps": conv._ungrouped(kernel_shape, groups),
            }
            if backend != "auto" and own.get(backend, True):
                yield pytest.param(case, backend, id=f"{case}-{backend}")


@pytest.mark.parametrize(("case", "backend"), list(_backend_cases()))
def test_conv2d_every_backend_matches_torch(case, backend, rng):
    torch.manual_seed(1)
    module, torch_layer, x = _conv_pair(case, rng)
    check_parity(module.clone(backend=backend), torch_layer, x)


def _auto_agrees_with_xla(f, x, w, g):
    """Values, reverse-mode (cotangent ``g``) and forward-mode derivatives of ``f`` under 'auto'
    equal those under 'xla' to float32 rounding."""
    results = {}
    for backend in ("auto", "xla"):
        f_backend = functools.partial(f, backend=backend)

        def derivatives(x, w, g, f_backend=f_backend):
            y, vjp = jax.vjp(f_backend, x, w)
            _, tangent = jax.jvp(f_backend, (x, w), (x, w))
            return (y, *vjp(g), tangent)

        # Compiled: op by op, every slice and pad of the derivative rules compiles on its own.
        results[backend] = jax.jit(derivatives)(x, w, g)
    for ours, ref in zip(results["auto"], results["xla"], strict=True):
        ours, ref = np.asarray(ours), np.asarray(ref)
        # A result is a sum whose float32 rounding scales with its largest terms, not with the
        # sum: an entry where large terms cancel keeps the array's absolute error.
        atol = 1e-6 * max(10.0, float(np.abs(ref).max(initial=0.0)))
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=atol)


def _no_convolution_and_agrees_with_xla(f, x, w, rng):
    """The compiled forward pass and both gradients of ``f`` under 'auto' contain no
    convolution, and agree with 'xla' (:func:`_auto_agrees_with_xla`)."""
    y = f(x, w)
    g = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
    programs = [
        jax.jit(f).lower(x, w),
        jax.jit(lambda x, w: jax.vjp(f, x, w)[1](g)).lower(x, w),
    ]
    for program in programs:
        assert "stablehlo.convolution" not in program.as_text()
    _auto_agrees_with_xla(f, x, w, g)


@pytest.mark.parametrize(
    ("size", "stride", "forward_is_a_convolution"),
    [((8, 8), 1, True), ((2, 2), 1, False), ((1, 1), 1, False), ((4, 4), 2, True)],
)
def test_auto_backend_avoids_xla_convolutions_on_maps_narrower_than_the_kernel(
    size, stride, forward_is_a_convolution, rng
):
    """'auto' computes the forward pass (and the input gradient) of a convolution whose input
    (output) is narrower than its kernel as a matmul, XLA's convolution elsewhere; forward-mode
    and reverse-mode derivatives agree with the 'xla' backend to float32 rounding."""
    x = jnp.asarray(rng.standard_normal((4, *size, 8)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) / 9)

    def f(x, w, backend="auto"):
        return F.conv2d(x, w, stride=stride, padding=1, backend=backend)

    hlo = jax.jit(f).lower(x, w).as_text()
    y = f(x, w)
    assert ("convolution" in hlo) == forward_is_a_convolution
    _auto_agrees_with_xla(f, x, w, jnp.asarray(rng.standard_normal(y.shape).astype(np.float32)))


@pytest.mark.parametrize(
    ("input_shape", "kernel_shape", "kwargs", "plan"),
    [
        # LeNet-5: C1's forward has 6 output channels, C3's input gradient 6, C5 sees a 1x1 output.
        ((8, 32, 32, 1), (6, 1, 5, 5), {}, ("banded", "banded")),
        ((8, 14, 14, 6), (16, 6, 5, 5), {}, ("xla", "banded")),
        ((8, 5, 5, 16), (120, 16, 5, 5), {}, ("xla", "im2col")),
        # 8 result channels is where XLA's own convolution takes over again.
        ((8, 14, 14, 8), (7, 8, 5, 5), {}, ("banded", "xla")),
        ((8, 14, 14, 7), (8, 7, 5, 5), {}, ("xla", "banded")),
        # The band wastes W / kW of its multiplications: at most 8 kernel widths.
        ((8, 24, 24, 3), (6, 3, 3, 3), {}, ("banded", "banded")),
        ((8, 25, 25, 3), (6, 3, 3, 3), {}, ("xla", "xla")),
        ((8, 23, 23, 3), (6, 3, 3, 3), dict(padding=((1, 1), (1, 1))), ("xla", "xla")),
        # Input-dilated (transposed) convolutions stay XLA's.
        ((8, 14, 14, 2), (2, 2, 3, 3), dict(lhs_dilation=(2, 2)), ("xla", "xla")),
    ],
)
def test_auto_plan_rules(input_shape, kernel_shape, kwargs, plan):
    got = F.auto_plan(input_shape, kernel_shape, **kwargs)
    assert (got["forward"], got["input_grad"], got["weight_grad"]) == (*plan, "xla")


@pytest.mark.parametrize(
    ("input_shape", "kernel_shape", "kwargs", "plan"),
    [
        ((8, 14, 14, 256), (64, 256, 1, 1), {}, ("xla", "xla", "im2col")),  # a bottleneck's
        ((8, 14, 14, 64), (256, 64, 1, 1), dict(window_strides=(2, 2)), ("xla", "xla", "im2col")),
        ((8, 8, 8, 64), (4, 64, 1, 1), {}, ("banded", "xla", "im2col")),
        ((8, 1, 1, 64), (32, 64, 1, 1), {}, ("xla", "xla", "im2col")),
        ((8, 14, 14, 64), (64, 16, 1, 1), dict(groups=4), ("grouped",) * 3),  # ShuffleNet's
        ((8, 14, 14, 64), (64, 64, 1, 3), {}, ("xla",) * 3),
        ((8, 14, 14, 64), (64, 64, 1, 1), dict(lhs_dilation=(2, 2)), ("xla",) * 3),
    ],
)
def test_auto_plan_computes_1x1_weight_gradients_as_matmuls(
    input_shape, kernel_shape, kwargs, plan, monkeypatch
):
    """Rule 3: an ungrouped 1x1 kernel's weight gradient is a matmul over pixels (im2col with
    one tap), whatever the other parts are; with the rule off, XLA's convolution."""
    from cnn_jax.functional import conv

    got = F.auto_plan(input_shape, kernel_shape, **kwargs)
    assert (got["forward"], got["input_grad"], got["weight_grad"]) == plan
    monkeypatch.setattr(conv, "POINTWISE_WEIGHT_GRADIENT_AS_MATMUL", False)
    got = F.auto_plan(input_shape, kernel_shape, **kwargs)
    assert got["weight_grad"] == ("grouped" if "groups" in kwargs else "xla")


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "kwargs"),
    [(24, 8, {}), (8, 24, dict(stride=2)), (12, 10, dict(stride=(1, 2), padding=1))],
)
def test_auto_backend_computes_1x1_weight_gradients_as_matmuls(
    in_channels, out_channels, kwargs, rng
):
    """A 1x1 convolution's weight gradient contains no convolution (the input gradient and the
    forward pass are still XLA's), and values, forward-mode and reverse-mode derivatives,
    second order and vmap included, agree with XLA's convolution to float32 rounding."""
    x = jnp.asarray(rng.standard_normal((3, 7, 6, in_channels)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((out_channels, in_channels, 1, 1)).astype(np.float32))

    def f(x, w, backend="auto"):
        return F.conv2d(x, w / in_channels, **kwargs, backend=backend)

    y = f(x, w)
    g = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
    weight_grad = jax.jit(lambda x, w: jax.vjp(lambda w: f(x, w), w)[1](g)).lower(x, w)
    input_grad = jax.jit(lambda x, w: jax.vjp(lambda x: f(x, w), x)[1](g)).lower(x, w)
    assert "stablehlo.convolution" not in weight_grad.as_text()
    assert "stablehlo.convolution" in input_grad.as_text()
    _auto_agrees_with_xla(f, x, w, g)
    _second_order_and_vmap_agree_with_xla(f, x, w)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "kwargs"),
    [(1, 6, {}), (3, 4, dict(stride=2, padding=2)), (2, 5, dict(dilation=2, padding=(1, 3)))],
)
def test_auto_backend_uses_a_banded_matmul_for_few_channel_results(
    in_channels, out_channels, kwargs, rng
):
    """Where the plan says 'banded', the compiled forward pass and input gradient contain no
    convolution, and values, forward-mode and reverse-mode derivatives agree with XLA's
    convolution to float32 rounding."""
    x = jnp.asarray(rng.standard_normal((4, 16, 15, in_channels)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((out_channels, in_channels, 5, 5)).astype(np.float32) / 5)

    def f(x, w, backend="auto"):
        return F.conv2d(x, w, **kwargs, backend=backend)

    y = f(x, w)
    g = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
    forward_hlo = jax.jit(f).lower(x, w).as_text()
    input_grad_hlo = jax.jit(lambda x, w: jax.vjp(lambda x: f(x, w), x)[1](g)).lower(x, w)
    assert "convolution" not in forward_hlo
    assert "convolution" not in input_grad_hlo.as_text()
    _auto_agrees_with_xla(f, x, w, g)


def _pads_that_grow(jaxpr) -> int:
    """How many ``pad`` operations of ``jaxpr`` (and the jaxprs inside it) add elements; a pad
    with only negative padding is a crop."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pad":
            count += any(v > 0 for config in eqn.params["padding_config"] for v in config)
        for sub in jax.core.subjaxprs(eqn.params) if hasattr(jax.core, "subjaxprs") else ():
            count += _pads_that_grow(sub)
    return count


@pytest.mark.parametrize(
    ("channels", "multiplier", "kwargs"),
    [
        (8, 1, dict(padding=1)),
        (6, 1, dict(stride=2, padding=2, dilation=2)),
        (4, 2, dict(stride=(1, 2), padding=(2, 1))),
        # ConvNeXt's 7x7 and EfficientNet's strided 5x5 (their second derivatives take half a
        # minute each; the miniature models run both kernels in the default run).
        pytest.param(5, 1, dict(kernel_size=7, padding=3), marks=pytest.mark.slow),
        pytest.param(4, 1, dict(kernel_size=5, stride=2, padding=2), marks=pytest.mark.slow),
        (3, 1, dict(kernel_size=(2, 3), stride=3)),  # inputs no output reads: zero gradient
        (3, 1, dict(kernel_size=4, padding="same")),  # uneven padding (1, 2)
        (3, 3, dict(kernel_size=3, padding=(0, 4), dilation=(1, 2))),
    ],
)
def test_auto_backend_computes_depthwise_convolutions_as_per_channel_products(
    channels, multiplier, kwargs, rng
):
    """A depthwise convolution (one input channel per group) runs every part as per-channel
    products of slices: the plan says 'depthwise' throughout, the compiled forward pass and
    both gradients contain no convolution, the input gradient pads the output gradient once
    (not once per tap; twice when strided), and values, forward-mode and reverse-mode
    derivatives agree with XLA's convolution to float32 rounding."""
    x = jnp.asarray(rng.standard_normal((4, 11, 10, channels)).astype(np.float32))
    kernel = pair(kwargs.pop("kernel_size", 3), "kernel_size")
    w = rng.standard_normal((channels * multiplier, 1, *kernel)).astype(np.float32) / 3
    w = jnp.asarray(w)

    def f(x, w, backend="auto"):
        return F.conv2d(x, w, groups=channels, **kwargs, backend=backend)

    assert set(F.auto_plan(x.shape, w.shape, groups=channels).values()) == {"depthwise"}
    _no_convolution_and_agrees_with_xla(f, x, w, rng)
    y, vjp = jax.vjp(lambda x: f(x, w), x)
    # Once for the stride's dilation, once for the border; jax's derivative of the slices pads
    # once per tap (9 here and more).
    assert _pads_that_grow(jax.make_jaxpr(vjp)(y).jaxpr) <= 2

    _second_order_and_vmap_agree_with_xla(f, x, w)


@pytest.mark.parametrize(
    ("channels", "multiplier", "kwargs"),
    [
        (6, 1, dict(kernel_size=5, padding=2)),
        (4, 2, dict(stride=2, padding=1)),  # strided, with a channel multiplier
    ],
)
def test_depthwise_weight_gradient_a_few_images_at_a_time(
    channels, multiplier, kwargs, rng, monkeypatch
):
    """On CPU the depthwise weight gradient runs as a loop over chunks of the batch (one image
    at a time here): values and every derivative, forward mode, second order and vmap included,
    still agree with XLA's convolution, and the forward pass keeps the input for the backward
    pass instead of every tap's slice of it."""
    from cnn_jax.functional import conv as conv_module

    x = jnp.asarray(rng.standard_normal((4, 9, 8, channels)).astype(np.float32))
    kernel = pair(kwargs.pop("kernel_size", 3), "kernel_size")
    w = rng.standard_normal((channels * multiplier, 1, *kernel)).astype(np.float32)
    w = jnp.asarray(w / kernel[0])

    def f(x, w, backend="auto"):
        return F.conv2d(x, w, groups=channels, **kwargs, backend=backend)

    def residual_bytes():
        _, vjp = jax.vjp(f, x, w)
        return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(vjp))

    monkeypatch.setattr(conv_module, "_CHUNK_TAP_BYTES", 10**12)  # the whole batch at once
    assert conv_module.depthwise_weight_grad_chunk(f(x, w).shape, kernel, 4) == 4
    whole_batch = residual_bytes()
    monkeypatch.setattr(conv_module, "_CHUNK_TAP_BYTES", 1)
    assert conv_module.depthwise_weight_grad_chunk(f(x, w).shape, kernel, 4) == 1
    vjp_program = jax.jit(lambda x, w, g: jax.vjp(f, x, w)[1](g)).lower(x, w, f(x, w))
    assert "stablehlo.while" in vjp_program.as_text()
    # Input (repeated per multiplier) and kernel, against one slice per tap.
    assert residual_bytes() <= 2 * multiplier * x.nbytes + w.nbytes < whole_batch
    _no_convolution_and_agrees_with_xla(f, x, w, rng)
    _second_order_and_vmap_agree_with_xla(f, x, w)


def test_depthwise_weight_grad_chunk_rule():
    """The largest divisor of the batch within 6400 KiB / taps of output, at least one image."""
    from cnn_jax.functional.conv import depthwise_weight_grad_chunk as rule

    assert rule((32, 16, 16, 96), (7, 7), 4) == 1  # 96 KiB an image, 130 KiB allowed
    assert rule((32, 8, 8, 192), (7, 7), 4) == 2
    assert rule((30, 8, 8, 192), (7, 7), 4) == 2
    assert rule((13, 16, 16, 96), (7, 7), 4) == 1  # a prime batch: one at a time
    assert rule((32, 32, 32, 96), (3, 3), 4) == 1
    assert rule((32, 32, 32, 96), (3, 3), 2) == 2  # bfloat16: half the bytes
    assert rule((32, 16, 16, 144), (3, 3), 4) == 4
    assert rule((32, 4, 4, 384), (7, 7), 4) == 4
    assert rule((32, 2, 2, 960), (3, 3), 4) == 32
    assert rule((1, 112, 112, 32), (3, 3), 4) == 1
    assert rule((0, 4, 4, 8), (3, 3), 4) == 1


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion")
@pytest.mark.parametrize(("shape", "kernel"), [((16, 16, 16, 64), 5), ((32, 16, 16, 96), 3)])
def test_depthwise_sum_is_one_pass_under_a_layer_norm(shape, kernel):
    """A depthwise convolution followed by a LayerNorm (ConvNeXt's block), compiled with its
    gradients on CPU, writes no array per tap: the reductions XLA:CPU hands to YNNPACK would
    grow through the taps' products and write out each tap's slice and weights (about one array
    of the output's shape per tap), unless the sum is fenced off as :func:`_weighted_taps` does.
    Counted: the compiled program's arrays of the output's shape."""
    channels = shape[-1]
    pad = kernel // 2

    def loss(x, w):
        y = F.conv2d(x, w, padding=pad, groups=channels)
        return jnp.sum(F.layer_norm(y, channels, eps=1e-6) ** 2)

    x = jnp.ones(shape)
    w = jnp.ones((channels, 1, kernel, kernel))
    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
    assert 0 < entry_arrays(text, "f32", shape) <= 8 < kernel * kernel


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (1, 5, 6, 3), (1, 1, 3, 2), (1, 1, 1, 2)])
def test_fenced_depthwise_sum_equals_the_plain_sum_bit_for_bit(shape, rng):
    """The fenced sum (two halves of the first axis but the channels' longer than one,
    concatenated) adds the same products in the same order, so it equals the plain sum exactly;
    an array with no such axis is summed whole. The weights' tap-major copy (a product with the
    identity) is exact."""
    from cnn_jax.functional import conv as conv_module

    channels = shape[-1]
    taps = [jnp.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(9)]
    kernel = jnp.asarray(rng.standard_normal((channels, 1, 3, 3)).astype(np.float32))
    np.testing.assert_array_equal(
        conv_module._tap_major(kernel), np.asarray(kernel).reshape(channels, 9).T
    )
    fenced = jax.jit(functools.partial(conv_module._weighted_taps, fenced=True))(taps, kernel)
    plain = jax.jit(conv_module._weighted_taps)(taps, kernel)
    assert fenced.shape == plain.shape == shape
    np.testing.assert_array_equal(fenced, plain)


def _second_order_and_vmap_agree_with_xla(f, x, w):
    """Second-order input gradients and a vmapped gradient go through a backend's derivative
    rule too: both equal XLA's convolution's to float32 rounding."""

    def second_order(x, w, b):
        inner = jax.grad(lambda x: jnp.sum(jnp.sin(f(x, w, b))))
        return jax.grad(lambda x: jnp.sum(inner(x) ** 2))(x)

    def batched(x, w, b):
        return jax.vmap(jax.grad(lambda x: jnp.sum(f(x, w, b) ** 2)))(x[:, None])

    for check in (second_order, batched):
        # Compiled, with the arrays as arguments (constants XLA could fold away).
        auto, xla = (jax.jit(check, static_argnums=2)(x, w, b) for b in ("auto", "xla"))
        np.testing.assert_allclose(auto, xla, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "groups", "kwargs"),
    [
        (8, 8, 2, dict(padding=1)),  # RegNet's and ResNeXt's 3x3, two groups
        (12, 6, 3, dict(stride=2, padding=1)),  # fewer outputs than inputs per group
        (6, 12, 3, dict(stride=(1, 2), padding=(2, 1), dilation=2)),
        (4, 4, 2, dict(kernel_size=(1, 2), padding=0)),
        (6, 6, 3, dict(kernel_size=(2, 3), stride=3)),  # inputs no output reads: zero gradient
        (8, 4, 4, dict(kernel_size=4, padding="same")),  # uneven padding (1, 2)
    ],
)
def test_auto_backend_computes_grouped_convolutions_as_batched_matmuls(
    in_channels, out_channels, groups, kwargs, rng
):
    """A grouped convolution with several channels per group runs every part as one matmul
    batched over the groups: the plan says 'grouped' throughout, the compiled forward pass and
    both gradients contain no convolution, and values, forward-mode and reverse-mode
    derivatives, second order and vmap included, agree with XLA's convolution to float32
    rounding."""
    x = jnp.asarray(rng.standard_normal((3, 9, 10, in_channels)).astype(np.float32))
    kernel = pair(kwargs.pop("kernel_size", 3), "kernel_size")
    w = rng.standard_normal((out_channels, in_channels // groups, *kernel)).astype(np.float32)
    w = jnp.asarray(w / 3)

    def f(x, w, backend="auto"):
        return F.conv2d(x, w, groups=groups, **kwargs, backend=backend)

    assert set(F.auto_plan(x.shape, w.shape, groups=groups).values()) == {"grouped"}
    _no_convolution_and_agrees_with_xla(f, x, w, rng)
    _second_order_and_vmap_agree_with_xla(f, x, w)


def _inside_pairs_counted(size, kernel, stride, padding, dilation) -> float:
    """:func:`conv._inside_fraction` by enumeration: every (tap, output position) pair of both
    spatial dimensions, checked one by one."""
    ranges = []
    for n, k, s, (lo, hi), d in zip(size, kernel, stride, padding, dilation, strict=True):
        out = (n + lo + hi - d * (k - 1) - 1) // s + 1
        ranges.append([(t, o, 0 <= o * s + t * d - lo < n) for t in range(k) for o in range(out)])
    pairs = list(itertools.product(*ranges))
    return sum(a[2] and b[2] for a, b in pairs) / len(pairs)


def test_inside_fraction_counts_the_pairs_that_read_the_input():
    geometries = [
        ((1, 1), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # 1/9: the centre tap only
        ((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # 16/36
        ((2, 2), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
        ((1, 1), (1, 3), (1, 1), ((0, 0), (1, 1)), (1, 1)),  # Inception's 1x3 on a 1x1 map: 1/3
        ((6, 6), (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1)),  # unpadded: 1
    ]
    rng = random.Random(0)
    for _ in range(40):
        k, d, s = (
            (rng.randint(1, 4), rng.randint(1, 4)),
            (rng.randint(1, 2),) * 2,
            (rng.randint(1, 3),) * 2,
        )
        pads = tuple((rng.randint(-1, 3), rng.randint(0, 3)) for _ in range(2))
        size = tuple(
            rng.randint(1, 6) + max(0, kk * dd - lo - hi)
            for kk, dd, (lo, hi) in zip(k, d, pads, strict=True)
        )
        geometries.append((size, k, s, pads, d))
    for geometry in geometries:
        assert conv._inside_fraction(*geometry) == pytest.approx(_inside_pairs_counted(*geometry))
    assert conv._inside_fraction(*geometries[0]) == pytest.approx(1 / 9)
    assert conv._inside_fraction(*geometries[3]) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("input_shape", "kernel_shape", "kwargs", "plan"),
    [
        ((8, 1, 1, 64), (64, 64, 3, 3), dict(padding=((1, 1), (1, 1))), ("taps",) * 3),
        ((8, 1, 1, 64), (64, 64, 1, 3), dict(padding=((0, 0), (1, 1))), ("taps",) * 3),
        ((8, 2, 2, 64), (64, 64, 3, 3), dict(padding=((1, 1), (1, 1))), ("taps",) * 3),  # 16/36
        (
            (8, 2, 2, 64),
            (64, 64, 3, 3),
            dict(window_strides=(2, 2), padding=((1, 1), (1, 1))),
            ("taps",) * 3,
        ),
        ((8, 3, 3, 64), (64, 64, 5, 5), dict(padding=((2, 2), (2, 2))), ("taps",) * 3),  # 81/225
        # More than half inside: XLA's convolution, or im2col where the input (for the input
        # gradient, the output) is narrower than the kernel.
        ((8, 3, 3, 64), (64, 64, 3, 3), dict(padding=((1, 1), (1, 1))), ("xla",) * 3),  # 49/81
        (
            (8, 2, 6, 64),
            (64, 64, 3, 1),
            dict(padding=((1, 0), (0, 0))),
            ("im2col", "im2col", "xla"),
        ),
        # Grouped and depthwise convolutions keep their own paths; 1x1 kernels read no padding
        # here; input-dilated (transposed) convolutions are XLA's.
        (
            (8, 1, 1, 64),
            (64, 16, 3, 3),
            dict(padding=((1, 1), (1, 1)), groups=4),
            ("unfolded",) * 3,
        ),
        (
            (8, 1, 1, 64),
            (64, 1, 3, 3),
            dict(padding=((1, 1), (1, 1)), groups=64),
            ("depthwise",) * 3,
        ),
        ((8, 1, 1, 64), (32, 64, 1, 1), {}, ("xla", "xla", "im2col")),
        (
            (8, 1, 1, 8),
            (8, 8, 3, 3),
            dict(padding=((1, 1), (1, 1)), lhs_dilation=(2, 2)),
            ("xla",) * 3,
        ),
    ],
)
def test_auto_plan_runs_mostly_padding_convolutions_tap_by_tap(
    input_shape, kernel_shape, kwargs, plan, monkeypatch
):
    """Rule 1: an ungrouped convolution with at most half of its (tap, output position) pairs
    inside the input runs every part tap by tap; with the threshold below every fraction, the
    plan is the other rules'."""
    got = F.auto_plan(input_shape, kernel_shape, **kwargs)
    assert (got["forward"], got["input_grad"], got["weight_grad"]) == plan
    monkeypatch.setattr(conv, "MOSTLY_PADDING", -1.0)
    assert "taps" not in F.auto_plan(input_shape, kernel_shape, **kwargs).values()


@pytest.mark.parametrize(
    ("size", "kernel", "kwargs"),
    [
        ((1, 1), (3, 3), dict(padding=((1, 1), (1, 1)))),  # ResNet's last stage on 32x32 images
        ((2, 2), (3, 3), dict(window_strides=(2, 2), padding=((1, 1), (1, 1)))),
        ((1, 4), (3, 3), dict(padding=((1, 1), (1, 1)))),  # two kernel rows read padding only
        (
            (3, 4),
            (3, 2),
            dict(window_strides=(2, 1), padding=((2, 0), (1, 1)), rhs_dilation=(1, 2)),
        ),
        ((5, 5), (3, 3), dict(rhs_dilation=(2, 2), padding=((2, 2), (2, 2)))),
        ((5, 6), (2, 3), dict(window_strides=(2, 3), padding=((-1, 1), (0, 2)))),  # a crop
        ((1, 1), (1, 1), dict(window_strides=(4, 4), padding=((2, 2), (2, 2)))),  # padding only
    ],
)
def test_taps_backend_agrees_with_xla(size, kernel, kwargs, rng):
    """``backend='taps'`` computes no convolution, and its values, forward-mode and reverse-mode
    derivatives, second order and vmap included, agree with XLA's convolution to float32
    rounding, whichever taps read padding only (skipped), for strides, dilations, uneven
    padding and crops (negative padding)."""
    x = jnp.asarray(rng.standard_normal((3, *size, 5)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((4, 5, *kernel)).astype(np.float32) / 3)

    def f(x, w, backend="auto"):
        return conv.conv_general(x, w, **kwargs, backend="taps" if backend == "auto" else backend)

    _no_convolution_and_agrees_with_xla(f, x, w, rng)
    _second_order_and_vmap_agree_with_xla(f, x, w)


def test_taps_backend_multiplies_only_what_reads_the_input():
    """On a 1x1 map a padded 3x3 convolution is one matmul by the centre tap, in the forward
    pass and in each gradient; with 'auto' too (rule 1)."""
    x, w, g = jnp.ones((8, 1, 1, 16)), jnp.ones((32, 16, 3, 3)), jnp.ones((8, 1, 1, 32))

    def dots(backend):
        def f(x, w):
            return F.conv2d(x, w, padding=1, backend=backend)

        programs = [
            jax.make_jaxpr(f)(x, w),
            jax.make_jaxpr(lambda x, w: jax.vjp(lambda w: f(x, w), w)[1](g))(x, w),
            jax.make_jaxpr(lambda x, w: jax.vjp(lambda x: f(x, w), x)[1](g))(x, w),
        ]
        return [str(p).count("dot_general[") for p in programs]

    assert (
        dots("taps") == dots("auto") == [1, 2, 2]
    )  # the gradients: the forward pass's and their own
    y = F.conv2d(x, w, padding=1, backend="taps")
    np.testing.assert_array_equal(y, np.full((8, 1, 1, 32), 16.0))


def _reads_whole_input_counted(size, kernel, stride, padding, dilation) -> bool:
    """:func:`conv._every_window_reads_whole_input` by enumeration: for every (input position,
    output position) pair of each spatial dimension, whether some tap connects them."""
    for n, k, s, (lo, hi), d in zip(size, kernel, stride, padding, dilation, strict=True):
        out = (n + lo + hi - d * (k - 1) - 1) // s + 1
        if out <= 0:
            return False
        for p in range(n):
            for o in range(out):
                if not any(o * s + t * d - lo == p for t in range(k)):
                    return False
    return True


def _tap_between(p, o, stride, tap_count, dilation, low):
    """The tap (along one dimension) through which output ``o`` reads input ``p``, or None."""
    taps = [t for t in range(tap_count) if o * stride + t * dilation - low == p]
    return taps[0] if taps else None


def test_unfolding_rule_and_index_follow_the_pairs_counted():
    """Whether every window reads the whole input, and which tap connects each (input,
    output) pair (``kH*kW`` where none does), agree with a pair-by-pair enumeration over random
    geometries (30 where every window does, 30 where some does not); every window reading the
    whole input implies that the unfolded matrix fits."""
    rng = random.Random(1)
    candidates = []
    for _ in range(3000):
        k = (rng.randint(1, 5), rng.randint(1, 5))
        pads = tuple((rng.randint(-1, 2), rng.randint(0, 2)) for _ in range(2))
        size = (rng.randint(1, 3), rng.randint(1, 3))
        strides, dilations = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(1, 2),) * 2
        if rng.random() < 0.3:
            dilations = (1, 2) if rng.random() < 0.5 else (2, 1)
        candidates.append((size, k, strides, pads, dilations))
    counted = [_reads_whole_input_counted(*g) for g in candidates]
    geometries = [
        ((1, 1), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
        ((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
        ((3, 3), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # a corner misses the far corner
        ((2, 2), (3, 3), (1, 1), ((0, 0), (1, 1)), (1, 1)),  # no output row: an empty index
        *[g for g, c in zip(candidates, counted, strict=True) if c][:30],
        *[g for g, c in zip(candidates, counted, strict=True) if not c][:30],
    ]
    assert sum(counted) >= 30
    whole = [conv._every_window_reads_whole_input(*g) for g in geometries]
    assert whole == [True, True, False, False] + [True] * 30 + [False] * 30
    for (size, kernel, stride, padding, dilation), covered in zip(geometries, whole, strict=True):
        assert conv._unfolded_matrix_fits(size, kernel, stride, padding, dilation) or not covered
        index, out = conv._unfolded_index(size, kernel, stride, padding, dilation)
        assert index.shape == (size[0] * size[1], out[0] * out[1])
        assert covered == (index.size > 0 and bool((index < kernel[0] * kernel[1]).all()))
        for p, q in itertools.product(range(size[0] * size[1]), range(out[0] * out[1])):
            (a, b), (y, x) = divmod(p, size[1]), divmod(q, out[1])
            i = _tap_between(a, y, stride[0], kernel[0], dilation[0], padding[0][0])
            j = _tap_between(b, x, stride[1], kernel[1], dilation[1], padding[1][0])
            want = kernel[0] * kernel[1] if i is None or j is None else i * kernel[1] + j
            assert index[p, q] == want


@pytest.mark.parametrize(
    ("size", "kernel", "fits"),
    [((8, 8), (7, 7), True), ((9, 9), (7, 7), False), ((6, 6), (5, 5), True),
     ((7, 7), (5, 5), False), ((3, 3), (3, 3), True), ((3, 4), (3, 3), True),
     ((4, 4), (3, 3), False), ((1, 1), (1, 1), True), ((2, 1), (1, 1), False),
     ((0, 4), (7, 7), False)],
)  # fmt: skip
def test_unfolded_matrix_fits_maps_with_at_most_one_and_a_half_positions_per_tap(
    size, kernel, fits
):
    """The unfolded matrix is used on maps with at most 1.5 positions per kernel tap, whatever
    the stride, padding and dilation (the output's size scales both counts alike), and not on
    an empty map."""
    for stride, pad, dilation in (((1, 1), 1, (1, 1)), ((2, 2), 0, (1, 1)), ((1, 1), 2, (2, 2))):
        padding = ((pad, pad), (pad, pad))
        assert conv._unfolded_matrix_fits(size, kernel, stride, padding, dilation) == fits


@pytest.mark.parametrize(
    ("size", "kernel", "groups", "kwargs"),
    [
        ((2, 2), (3, 3), 2, dict(padding=((1, 1), (1, 1)))),  # RegNet's last stage at 64x64
        ((1, 1), (3, 3), 3, dict(padding=((1, 1), (1, 1)))),  # ... at 32x32
        ((2, 2), (3, 3), 2, dict(window_strides=(2, 2), padding=((1, 1), (1, 1)))),
        ((2, 3), (3, 5), 1, dict(padding=((1, 1), (2, 2)))),  # ungrouped, uneven kernel
        ((2, 1), (3, 3), 3, dict(window_strides=(2, 1), padding=((1, 1), (1, 1)))),
        ((1, 1), (3, 3), 2, dict(padding=((2, 2), (2, 2)), rhs_dilation=(2, 2))),
        ((1, 2), (2, 3), 6, dict(padding=((1, 0), (1, 1)))),  # uneven padding, depthwise
        # Matrices with zeros (some window misses some input position): grouped, and depthwise
        # as a batched matmul (more than 9 positions) and as a sum of products (at most 9),
        # strided, dilated, cropped.
        ((3, 3), (3, 3), 2, dict(padding=((1, 1), (1, 1)))),
        ((4, 4), (7, 7), 6, dict(padding=((3, 3), (3, 3)))),  # ConvNeXt's third stage at 64x64
        ((8, 8), (7, 7), 6, dict(padding=((3, 3), (3, 3)))),  # ... its second
        ((5, 5), (5, 5), 6, dict(window_strides=(2, 2), padding=((2, 2), (2, 2)))),
        ((3, 3), (3, 3), 6, dict(padding=((1, 1), (1, 1)))),
        ((3, 2), (3, 3), 6, dict(padding=((2, 2), (2, 2)), rhs_dilation=(2, 2))),
        ((3, 3), (3, 3), 6, dict(padding=((-1, 1), (1, 0)))),
    ],
)
def test_unfolded_backend_agrees_with_xla(size, kernel, groups, kwargs, rng):
    """``backend='unfolded'`` computes no convolution on maps with at most 1.5 positions per
    kernel tap, and its values, forward-mode and reverse-mode derivatives, second order and vmap
    included, agree with XLA's convolution to float32 rounding, grouped or not, depthwise with
    a channel multiplier of two."""
    x = jnp.asarray(rng.standard_normal((3, *size, 6)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((12, 6 // groups, *kernel)).astype(np.float32) / 3)
    kwargs = dict(kwargs, groups=groups)

    def f(x, w, backend="auto"):
        return conv.conv_general(
            x, w, **kwargs, backend="unfolded" if backend == "auto" else backend
        )

    _no_convolution_and_agrees_with_xla(f, x, w, rng)
    _second_order_and_vmap_agree_with_xla(f, x, w)


@pytest.mark.parametrize("size", [(2, 2), (4, 4), (3, 3)])
@pytest.mark.parametrize("sum_positions", [0, 100])
def test_unfolded_depthwise_as_matmul_and_as_sum_agree_with_xla(
    size, sum_positions, rng, monkeypatch
):
    """A depthwise convolution (ConvNeXt's 7x7, one channel per group) unfolded both ways, as a
    matmul batched over the channels and as a sum of elementwise products over the input
    positions (``UNFOLDED_SUM_POSITIONS`` forcing each), agrees with XLA's convolution: values,
    both derivatives, second order and vmap."""
    monkeypatch.setattr(conv, "UNFOLDED_SUM_POSITIONS", sum_positions)
    sums = []
    as_sum = conv._unfolded_depthwise_sum
    monkeypatch.setattr(conv, "_unfolded_depthwise_sum", lambda *a: sums.append(a) or as_sum(*a))
    x = jnp.asarray(rng.standard_normal((3, *size, 5)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((5, 1, 7, 7)).astype(np.float32) / 7)

    def f(x, w, backend="auto"):
        return F.conv2d(
            x, w, padding=3, groups=5, backend="unfolded" if backend == "auto" else backend
        )

    _no_convolution_and_agrees_with_xla(f, x, w, rng)
    _second_order_and_vmap_agree_with_xla(f, x, w)
    assert bool(sums) == (sum_positions > 0)  # the form forced is the form traced


def test_unfolded_backend_leaves_maps_too_large_for_the_matrix_to_xla(rng):
    """On maps with more than 1.5 positions per kernel tap (a 3x3 kernel on a 4x4 map, a 7x7
    one on 9x9; a crop of a 4x5 map), ``backend='unfolded'`` is XLA's convolution, bit for
    bit."""
    for size, kernel, padding, groups in (
        ((4, 4), 3, ((1, 1), (1, 1)), 2),
        ((9, 9), 7, ((3, 3), (3, 3)), 4),
        ((4, 5), 3, ((-1, 1), (1, 1)), 2),
    ):
        x = jnp.asarray(rng.standard_normal((2, *size, 4)).astype(np.float32))
        w = jnp.asarray(rng.standard_normal((4, 4 // groups, kernel, kernel)).astype(np.float32))
        kwargs = dict(padding=padding, groups=groups)
        program = jax.jit(lambda x, w, kw=kwargs: conv.conv_general(x, w, **kw, backend="unfolded"))
        assert "stablehlo.convolution" in program.lower(x, w).as_text()
        np.testing.assert_array_equal(
            program(x, w), conv.conv_general(x, w, **kwargs, backend="xla")
        )


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "plan"),
    [((2, 2), 7, 1, "unfolded"), ((4, 4), 7, 1, "unfolded"), ((8, 8), 7, 1, "unfolded"),
     ((9, 9), 7, 1, "depthwise"), ((16, 16), 7, 1, "depthwise"), ((4, 4), 5, 2, "unfolded"),
     ((6, 6), 5, 1, "unfolded"), ((7, 7), 5, 1, "depthwise"), ((1, 1), 3, 1, "depthwise"),
     ((2, 2), 3, 1, "depthwise"), ((2, 2), (5, 3), 1, "depthwise")],
)  # fmt: skip
def test_auto_plan_unfolds_depthwise_convolutions_with_large_kernels_on_small_maps(
    size, kernel, stride, plan, monkeypatch
):
    """Rule 0: a depthwise convolution with a kernel of at least 25 taps on a map with at most
    1.5 positions per tap (ConvNeXt's 7x7 on 8x8 maps and smaller, EfficientNet's 5x5 on 6x6
    and smaller) runs every part unfolded; 3x3 kernels (and 5x3, 15 taps) stay tap by tap on
    every map, as does every depthwise convolution with ``UNFOLD_SMALL_DEPTHWISE`` off."""
    kh, kw = pair(kernel, "kernel_size")
    geometry = dict(window_strides=(stride, stride), padding=((kh // 2,) * 2, (kw // 2,) * 2))
    got = F.auto_plan((8, *size, 64), (64, 1, kh, kw), groups=64, **geometry)
    assert set(got.values()) == {plan}
    multiplier = F.auto_plan((8, *size, 32), (64, 1, kh, kw), groups=32, **geometry)
    assert set(multiplier.values()) == {plan}
    monkeypatch.setattr(conv, "UNFOLD_SMALL_DEPTHWISE", False)
    got = F.auto_plan((8, *size, 64), (64, 1, kh, kw), groups=64, **geometry)
    assert set(got.values()) == {"depthwise"}


@pytest.mark.parametrize(
    ("size", "stride", "plan"),
    [((1, 1), 1, "unfolded"), ((2, 2), 1, "unfolded"), ((2, 2), 2, "unfolded"),
     ((3, 3), 1, "grouped"), ((4, 4), 2, "grouped"), ((8, 8), 1, "grouped")],
)  # fmt: skip
def test_auto_plan_unfolds_grouped_convolutions_whose_windows_read_the_whole_input(
    size, stride, plan
):
    """Rule 0: a grouped convolution with several channels per group runs every part unfolded
    where every window reads the whole input (RegNet's 3x3s on 1x1 and 2x2 maps), as batched
    im2col elsewhere; depthwise and ungrouped ones keep their own rules."""
    geometry = dict(window_strides=(stride, stride), padding=((1, 1), (1, 1)))
    got = F.auto_plan((8, *size, 400), (400, 16, 3, 3), groups=25, **geometry)
    assert set(got.values()) == {plan}
    depthwise = F.auto_plan((8, *size, 64), (64, 1, 3, 3), groups=64, **geometry)
    assert set(depthwise.values()) == {"depthwise"}
    ungrouped = F.auto_plan((8, *size, 64), (64, 64, 3, 3), **geometry)
    assert "unfolded" not in ungrouped.values()


TRANSPOSE_CASES = [
    dict(cin=2, cout=3, k=3, size=(4, 5)),
    dict(cin=2, cout=3, k=3, stride=2, size=(4, 5)),
    dict(cin=2, cout=3, k=3, stride=2, padding=1, output_padding=1, size=(4, 4)),
    dict(cin=4, cout=2, k=4, stride=2, padding=1, size=(5, 5)),  # the usual 2x upsampling
    dict(
        cin=2, cout=3, k=(3, 2), stride=(3, 2), padding=(1, 0), output_padding=(2, 1), size=(3, 4)
    ),
    dict(cin=2, cout=2, k=3, dilation=2, padding=1, size=(4, 4)),
    dict(cin=2, cout=2, k=3, dilation=2, stride=2, output_padding=1, size=(4, 4)),  # op < dilation
    dict(cin=2, cout=2, k=2, padding=2, stride=3, size=(5, 5)),  # padding > d(k-1): crops
    dict(cin=4, cout=6, k=3, groups=2, stride=2, padding=1, output_padding=1, size=(4, 4)),
    dict(cin=4, cout=4, k=3, groups=4, padding=1, size=(5, 5)),  # depthwise
    dict(cin=3, cout=2, k=1, bias=False, stride=2, size=(3, 3)),
]


@pytest.mark.parametrize("backend", available_conv_backends())
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose2d_matches_torch(case, backend, rng):
    torch.manual_seed(0)
    kwargs = dict(
        kernel_size=case["k"],
        stride=case.get("stride", 1),
        padding=case.get("padding", 0),
        output_padding=case.get("output_padding", 0),
        groups=case.get("groups", 1),
        bias=case.get("bias", True),
        dilation=case.get("dilation", 1),
    )
    torch_layer = torch.nn.ConvTranspose2d(case["cin"], case["cout"], **kwargs)
    module = cnn.ConvTranspose2d(case["cin"], case["cout"], **kwargs, backend=backend)
    x = rng.standard_normal((2, case["cin"], *case["size"])).astype(np.float32)
    check_parity(module, torch_layer, x)


@pytest.mark.parametrize(
    ("kw", "size"),
    [
        (dict(kernel_size=3, stride=2, padding=1), (4, 5)),
        (dict(kernel_size=4, stride=3, padding=1, dilation=1), (3, 3)),
        (dict(kernel_size=3, stride=1, dilation=3), (4, 4)),  # sizes from the dilation
        (dict(kernel_size=(3, 2), stride=(2, 3), groups=2), (5, 4)),
    ],
    ids=str,
)
def test_conv_transpose2d_output_size_at_call_time_matches_torch(kw, size, rng):
    from cnn_jax.interop import from_torch

    theirs = torch.nn.ConvTranspose2d(4, 6, **kw)
    ours = cnn.ConvTranspose2d(4, 6, **kw)
    x = rng.standard_normal((2, 4, *size)).astype(np.float32)
    x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    variables = from_torch(ours, theirs.state_dict(), sample_input=x_nhwc)
    default = theirs(torch.tensor(x)).shape[2:]
    valid = 0
    for dh in range(-1, 4):
        for dw in range(-1, 4):
            target = (default[0] + dh, default[1] + dw)
            try:
                expected = theirs(torch.tensor(x), output_size=list(target))
            except ValueError:  # torch's refusal
                with pytest.raises(ValueError, match="valid sizes range from"):
                    ours.apply(variables, x_nhwc, target)
                continue
            valid += 1
            y = ours.apply(variables, x_nhwc, output_size=target)
            assert y.shape[1:3] == target
            np.testing.assert_allclose(
                np.asarray(y), expected.detach().numpy().transpose(0, 2, 3, 1), atol=2e-6
            )
    assert valid >= 1
    with pytest.raises(ValueError, match=r"output_size must be \(H, W\)"):
        ours.apply(variables, x_nhwc, (2, 6, *default))
