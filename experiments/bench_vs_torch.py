"""Question: how fast is a cnn_jax train step against PyTorch on the same CPU, or the same GPU?

For each model and batch size, one process builds the same network twice, cnn_jax (the jitted
``train.make_train_step`` with the state donated, as the loop runs it) and its PyTorch twin (eager,
and ``torch.compile``-d where ``--torch-compile`` is given and it compiles), both with AdamW
(lr 1e-3, weight decay 1e-2 on every parameter, so both sides do the same work) on the same random
batch. It then times alternating blocks of steps (cnn_jax, torch, cnn_jax, ...; the first step of
each block is dropped, because one framework's idle worker threads slow the other's first step)
and reports per framework the median step time, and the ratio torch / cnn_jax (above 1: cnn_jax is
faster) with its spread over the blocks. First-step times (tracing + compilation) are reported
separately. The headline's models (not ``--zoo`` runs) are also written in plain flax.linen
(:mod:`experiments.flax_peers`) and timed in the same blocks, in float32, so that cnn_jax's lead
over the JAX peer stays measured (``--no-flax`` leaves them out). With ``--memory``, each framework
(not the peers) also trains alone in a fresh process importing only
itself, whose peak resident memory (VmHWM) is reported.

Where JAX's default backend is a GPU, torch steps on CUDA (:func:`torch_device`; a torch without
CUDA is refused), synchronised after every step, with cuDNN's algorithm search on; each framework
keeps its own float32 defaults (which may use TF32), recorded in the results. ``--memory`` then
also reports each framework's peak device memory. ``--torch-dtype bfloat16`` runs torch's forward
pass under ``torch.autocast``, to compare with ``--compute-dtype bfloat16``:

    python -m experiments.bench_vs_torch --batch-sizes 128 --torch-compile --memory --out /tmp/gpu
    python -m experiments.bench_vs_torch --batch-sizes 128 --compute-dtype bfloat16 \
        --torch-dtype bfloat16 --out /tmp/gpu_bf16

    python -m experiments.bench_vs_torch --memory --conv-budget  # the headline table
    python -m experiments.bench_vs_torch --torch-compile --memory --out /tmp/compiled
    python -m experiments.bench_vs_torch --zoo --memory          # every torchvision family
    python -m experiments.bench_vs_torch --zoo --models resnet50 --size 224 --batch-sizes 16 \
        --out experiments/results/bench_vs_torch/resnet_224
    python -m experiments.bench_vs_torch --quick                 # seconds: what the tests run
    python -m experiments.bench_vs_torch --roofline --batch-sizes 128 --out /tmp/roofline

With ``--roofline`` it also measures the CPU's float32 matmul rate (the best of torch's and
XLA's on a 2048-cube product) and counts each step's convolution / linear work (forward MACs
three times, for forward, input and weight gradients, less the first layer's input gradient; 2
FLOPs per MAC; elementwise work left out). Each framework's achieved GFLOP/s follows, and the
*ceiling*: matmul peak / torch's rate, the largest torch / cnn_jax ratio that any implementation
doing the same arithmetic could reach on this machine.

With ``--memory``, the torch process imports torch and the models' torch references only (not
cnn_jax, which would load JAX), so each framework's peak is its own.

Writes ``results.json`` (every block's times, with ``experiments.record``'s provenance: command,
commit, machine, versions, cnn_jax's runtime settings), ``table.md`` and ``ratios.png`` to
``--out`` (default ``experiments/results/bench_vs_torch``; ``--quick``: a temporary folder). Side
runs (other flags, other settings) belong in their own ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import record

NAME = "bench_vs_torch"
MODULE = f"experiments.{NAME}"
MODELS = {
    "lenet5": (32, 32, 1),
    "cifar_cnn": (32, 32, 3),
    "convnet": (32, 32, 3),
    "resnet18": (32, 32, 3),
}
LR, WEIGHT_DECAY, NUM_CLASSES = 1e-3, 1e-2, 10
ZOO_SIZE, ZOO_BATCH = 64, 32  # --zoo: torchvision's families at 64x64, batch 32


def zoo_models(every_width: bool = False) -> list[str]:
    """``--zoo``: the first registered (smallest) model of every torchvision family, or with
    ``every_width`` every registered torchvision model (those ``--zoo --models`` accepts)."""
    from cnn_jax.models import registry

    first: dict[str, str] = {}
    for spec in registry.specs():
        if spec.torchvision:
            first.setdefault(spec.name if every_width else spec.family, spec.name)
    return list(first.values())


Zoo = bool | int  # --zoo: True (at ZOO_SIZE) or the image size (--size); False: a course model


def _course(name: str, zoo: Zoo) -> bool:
    """Whether ``name`` is timed as a course model (:data:`MODELS`); with ``zoo`` (``--zoo``)
    every model, resnet18 too, is timed as its torchvision family is."""
    return name in MODELS and not zoo


def _zoo_size(zoo: Zoo) -> int:
    """The image size a torchvision family is asked for: ``zoo`` when it is a size, else
    :data:`ZOO_SIZE`."""
    return ZOO_SIZE if isinstance(zoo, bool) or not zoo else int(zoo)


def input_shape(name: str, zoo: Zoo = False) -> tuple[int, int, int]:
    """NHWC sample shape: the course models' in :data:`MODELS`, torchvision's families RGB at
    ``zoo``'s size (:data:`ZOO_SIZE` unless ``--size`` is given) or the model's minimum
    (inception_v3's 75), whichever is larger."""
    if _course(name, zoo):
        return MODELS[name]
    from cnn_jax.models import registry

    size = registry.spec(name).test_input_size(_zoo_size(zoo))
    return (size, size, 3)


def _jax_kwargs(name: str, zoo: Zoo = False) -> dict:
    # The course's networks take their input channels; torchvision's take RGB only.
    if _course(name, zoo):
        return {"in_channels": MODELS[name][2]} if name != "resnet18" else {}
    return zoo_kwargs(name)


def zoo_kwargs(name: str) -> dict:
    """A torchvision family's arguments at :func:`input_shape` (both frameworks): those its
    tests use below its default size (inception_v3's auxiliary head needs 299x299, so it
    trains without it at 75x75)."""
    from cnn_jax.models import registry

    return dict(registry.spec(name).small_input)


def zoo_spec(name: str, zoo: Zoo = True) -> dict:
    """What torch's side of a torchvision family needs from cnn_jax's registry (JSON, so a
    process that imports torch only can take it): its arguments and square input size."""
    return {"kwargs": zoo_kwargs(name), "size": input_shape(name, zoo=zoo or True)[0]}


def _batch(shape: tuple[int, int, int], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, *shape)).astype(np.float32)
    return images, rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)


def jax_state_and_batch(name: str, batch_size: int, zoo: Zoo = False) -> tuple[Any, dict]:
    """``name``'s cnn_jax train state (AdamW as torch's side has it, the kernels held as the
    run loop's placement holds them) and the benchmark's random batch of ``batch_size``
    (:func:`input_shape`; ``zoo``: ``name`` as its torchvision family is timed)."""
    import jax
    import jax.numpy as jnp
    import optax

    from cnn_jax import models
    from cnn_jax import train as T
    from cnn_jax.train import layout

    shape = input_shape(name, zoo)
    model = models.create(name, num_classes=NUM_CLASSES, **_jax_kwargs(name, zoo))
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    state = T.create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    if layout.default_on():  # as the run loop's placement holds the state
        state = layout.to_step_layout(state)
    images, labels = _batch(shape, batch_size)
    return state, {"image": jnp.asarray(images), "label": jnp.asarray(labels)}


def jax_trainer(
    name: str,
    batch_size: int,
    compute_dtype: str = "float32",
    conv_backend: str = "auto",
    zoo: Zoo = False,
):
    """A callable running one cnn_jax train step (blocking until done); ``zoo``: ``name`` as
    its torchvision family is timed (:func:`input_shape`)."""
    import jax

    from cnn_jax import train as T

    state, batch = jax_state_and_batch(name, batch_size, zoo)
    step = jax.jit(
        T.make_train_step(compute_dtype=compute_dtype, conv_backend=conv_backend),
        donate_argnums=0,
    )

    def run() -> None:
        nonlocal state
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))

    return run


def flax_trainer(name: str, batch_size: int):
    """A callable running one train step of ``name``'s plain flax.linen peer
    (:mod:`experiments.flax_peers`) on the same batch and AdamW as :func:`jax_trainer`."""
    import jax
    import jax.numpy as jnp
    import optax

    from experiments import flax_peers

    shape = input_shape(name)
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    state = flax_peers.create_state(name, tx, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    step = jax.jit(flax_peers.train_step, donate_argnums=0)
    images, labels = _batch(shape, batch_size)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    rng = jax.random.PRNGKey(1)

    def run() -> None:
        nonlocal state
        state, metrics = step(state, batch, rng)
        jax.block_until_ready((state, metrics))

    return run


def has_flax_peer(name: str, zoo: Zoo, compute_dtype: str) -> bool:
    """Whether a run of ``name`` times its plain flax.linen peer too: the headline's models
    (not a ``--zoo`` run), in float32 (the peers have no mixed precision)."""
    from experiments import flax_peers

    return not zoo and name in flax_peers.PEERS and compute_dtype == "float32"


# On CUDA, cuDNN picks each convolution's algorithm by timing them, as torchvision's reference
# training script asks and as XLA's GPU compiler does for cnn_jax's convolutions.
CUDNN_BENCHMARK = True


def torch_device(jax_backend: str) -> str:
    """The device torch's side runs on: CUDA when JAX's default backend is a GPU (a GPU step
    is compared with a GPU step), else the CPU. Raises where JAX has a GPU and torch has no
    CUDA, rather than timing a GPU against a CPU."""
    if jax_backend not in ("gpu", "cuda", "rocm"):
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"JAX runs on its {jax_backend} backend but this torch ({torch.__version__}) has no "
            "CUDA: install a CUDA build of torch, or run JAX on the CPU (JAX_PLATFORMS=cpu)"
        )
    return "cuda"


def torch_trainer(
    name: str,
    batch_size: int,
    compiled: bool,
    alone: bool = False,
    zoo: dict | None = None,
    device: str = "cpu",
    dtype: str = "float32",
):
    """A callable running one torch eager (or compiled) train step on ``device`` (blocking
    until the device is done); ``alone``: without importing cnn_jax (and so JAX) in this
    process. ``zoo`` (the parent process's :func:`zoo_spec`, required with ``alone``) times
    ``name`` as its torchvision family, with those arguments and that input size. ``dtype``
    ``'bfloat16'`` runs the forward pass and loss under ``torch.autocast`` in bfloat16 (torch's
    mixed precision: float32 parameters and optimiser, as cnn_jax's ``compute_dtype``)."""
    import contextlib

    import torch

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"torch's dtype is 'float32' or 'bfloat16', not {dtype!r}")
    if alone:
        twins = record.torch_models_alone()
    else:
        import cnn_jax.testing.torch_models as twins

    if zoo is None and name in MODELS:
        shape = MODELS[name]
        kwargs = {} if name in ("lenet5", "resnet18") else {"in_channels": shape[2]}
        model = twins.restatement(name, num_classes=NUM_CLASSES, **kwargs)
    else:  # torchvision's own code (imports torch only, as `alone` needs)
        zoo = zoo if zoo is not None else zoo_spec(name)
        shape = (zoo["size"], zoo["size"], 3)
        model = getattr(twins.torchvision_models(), name)(num_classes=NUM_CLASSES, **zoo["kwargs"])
    model = model.train().to(device)
    opt = torch.optim.AdamW(model.parameters(), LR, weight_decay=WEIGHT_DECAY)
    forward = torch.compile(model) if compiled else model
    images, labels = _batch(shape, batch_size)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
    y = torch.from_numpy(labels).long().to(device)
    autocast = (
        (lambda: torch.autocast(device, dtype=torch.bfloat16))
        if dtype == "bfloat16"
        else contextlib.nullcontext
    )
    wait = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.backends.cudnn.benchmark = CUDNN_BENCHMARK

    def loss(out):
        # googlenet / inception_v3 train with auxiliary heads (a named tuple): every head's
        # cross-entropy, as cnn_jax's step sums them (the weights do not change the work).
        heads = [o for o in out if o is not None] if isinstance(out, tuple) else [out]
        return sum(torch.nn.functional.cross_entropy(h, y) for h in heads)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            value = loss(forward(x))
        value.backward()
        opt.step()
        wait()

    return run


def step_gflop(name: str, batch_size: int, zoo: Zoo = False) -> float:
    """Convolution and linear work of one train step in GFLOP (see the module docstring)."""
    from cnn_jax import models
    from cnn_jax.inspect import layers

    shape = input_shape(name, zoo)
    model = models.create(name, num_classes=NUM_CLASSES, **_jax_kwargs(name, zoo))
    macs = [r.macs for r in layers(model, (batch_size, *shape)) if r.macs]
    return 2 * (3 * sum(macs) - macs[0]) / 1e9


def published_size(name: str) -> dict[str, float]:
    """Parameters (millions) and GMACs of one image at the crop size of torchvision's default
    weights with 1000 classes: the figures torchvision publishes with them ("GFLOPS" in its
    docs), as ``cnn_jax.inspect.summary`` counts them (``tests/test_inspect.py`` holds the two
    equal), for the family table."""
    from cnn_jax import inspect, models
    from cnn_jax.testing.torch_models import torchvision_models

    crop = torchvision_models().get_model_weights(name).DEFAULT.transforms.keywords["crop_size"]
    kwargs = {"aux_logits": False} if name == "googlenet" else {}  # published without them
    text = inspect.summary(models.create(name, **kwargs), (1, crop, crop, 3))
    totals = {
        key: int(value.replace(",", ""))
        for key, value in (
            line.split(": ") for line in text.splitlines()
            if line.startswith(("Total params: ", "Total MACs: "))
        )
    }  # fmt: skip
    return {
        "params_m": totals["Total params"] / 1e6,
        "gmacs": totals["Total MACs"] / 1e9,
        "crop": crop,
    }


def conv_layers(name: str, batch_size: int, zoo: Zoo = False) -> list[tuple[tuple[int, ...], Any]]:
    """(NHWC input shape, ``cnn_jax.nn.Conv2d``) of every convolution one forward pass calls."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import cnn_jax.nn as cnn
    from cnn_jax import models

    shape = input_shape(name, zoo)
    model = models.create(name, num_classes=NUM_CLASSES, **_jax_kwargs(name, zoo))
    found = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, cnn.Conv2d):
            found.append((tuple(args[0].shape), context.module))
        return next_fun(*args, **kwargs)

    sample = jax.ShapeDtypeStruct((batch_size, *shape), jnp.float32)
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sample)
    return found


def _block_median(run, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one untimed call (warm-up / other runtime)."""
    return statistics.median([_timed(run) for _ in range(repeats + 1)][1:])


def _conv_part_programs(
    in_shape, cout, k, stride, pads, dilation, groups, backend
) -> dict[str, dict]:
    """For "fwd", "dW", "dX": a blocking no-argument call per framework ("cnn_jax", "torch")."""
    import jax
    import jax.numpy as jnp
    import torch

    import cnn_jax.functional as F
    from cnn_jax import runtime

    rng = np.random.default_rng(0)
    x = rng.standard_normal(in_shape).astype(np.float32)
    w = (rng.standard_normal((cout, in_shape[3] // groups, *k)) * 0.1).astype(np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(w)

    tpad = [lo for lo, _ in pads]  # symmetric: conv_budget checks

    def conv(x, w):
        return F.conv2d(x, w, None, stride, tuple(tpad), dilation, groups, backend=backend)

    # The output gradient is an argument, as in a step: a constant one lets XLA fold it into
    # the gradient programs, which then no longer time what a step runs.
    g = jnp.ones_like(runtime.jit(conv)(xj, wj))
    jax_programs = {
        "fwd": runtime.jit(lambda x, w, g: conv(x, w)),
        "dW": runtime.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
        "dX": runtime.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
    }
    xt, wt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(w)
    gt = torch.ones(g.shape[0], g.shape[3], g.shape[1], g.shape[2])

    def t_backward(mask):  # what torch's autograd calls for a convolution
        return torch.ops.aten.convolution_backward(
            gt, xt, wt, None, list(stride), tpad, list(dilation), False, [0, 0], groups, mask
        )

    torch_programs = {
        "fwd": lambda: torch.nn.functional.conv2d(xt, wt, None, stride, tpad, dilation, groups),
        "dW": lambda: t_backward([False, True, False]),
        "dX": lambda: t_backward([True, False, False]),
    }
    return {
        part: {
            "cnn_jax": lambda p=jax_programs[part]: jax.block_until_ready(p(xj, wj, g)),
            "torch": torch_programs[part],
        }
        for part in ("fwd", "dW", "dX")
    }


def conv_budget(
    name: str, batch_size: int, repeats: int, conv_backend: str = "auto", zoo: Zoo = False
) -> dict:
    """Each convolution of one train step timed alone in both frameworks, and the sums.

    Per distinct convolution (input shape, channels, kernel, stride, padding, dilation, groups):
    forward, weight gradient and input gradient as separate programs (the first layer's input
    gradient left out: a train step never computes it), cnn_jax with ``conv_backend`` and its XLA
    settings, torch with ``conv2d`` and ``aten.convolution_backward`` (what its autograd calls),
    each in blocks of ``repeats`` after an untimed call, alternating framework per part. The
    sums are what the convolutions alone cost each framework in a step: if cnn_jax's exceeds
    torch's whole step / 1.5, no change outside the convolution kernels reaches the 1.5× goal.
    """
    import torch

    from cnn_jax._utils import pair
    from cnn_jax.functional.conv import resolve_conv_padding

    layers_: dict[tuple, dict] = {}
    for i, (in_shape, conv) in enumerate(conv_layers(name, batch_size, zoo)):
        k, stride = pair(conv.kernel_size, "kernel_size"), pair(conv.stride, "stride")
        dilation = pair(conv.dilation, "dilation")
        key = (in_shape, conv.out_channels, k, stride, conv.padding, dilation, conv.groups, i == 0)
        layers_.setdefault(key, {"count": 0})["count"] += 1
    rows, totals = [], {"cnn_jax": 0.0, "torch": 0.0}
    for (in_shape, cout, k, stride, padding, dilation, groups, first), entry in layers_.items():
        pads = resolve_conv_padding(padding, k, stride, dilation)
        if any(lo != hi for lo, hi in pads):
            raise ValueError(f"asymmetric padding {pads} has no torch conv2d equivalent")
        programs = _conv_part_programs(
            in_shape, cout, k, stride, pads, dilation, groups, conv_backend
        )
        row = {"input": list(in_shape), "out_channels": cout, "kernel": list(k),
               "stride": list(stride), "padding": [list(p) for p in pads], "groups": groups,
               "count": entry["count"], "ms": {"cnn_jax": {}, "torch": {}}}  # fmt: skip
        for part, runs in programs.items():
            if part == "dX" and first:
                continue
            runs["cnn_jax"]()  # compile
            with torch.no_grad():
                ms = {label: _block_median(run, repeats) for label, run in runs.items()}
            for label, seconds in ms.items():
                row["ms"][label][part] = 1e3 * seconds
                totals[label] += seconds * entry["count"]
        rows.append(row)
    return {"conv_s": totals, "layers": rows}


def matmul_peak(n: int = 2048, repeats: int = 7) -> dict[str, float]:
    """Best float32 GFLOP/s of an n×n by n×n product in torch and in jax (XLA) on this CPU."""
    import jax
    import jax.numpy as jnp
    import torch

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ta, ja = torch.from_numpy(a), jnp.asarray(a)
    dot = jax.jit(jnp.dot)
    runs = {
        "torch": lambda: torch.mm(ta, ta),
        "cnn_jax": lambda: dot(ja, ja).block_until_ready(),
    }
    out = {}
    for label, run in runs.items():
        run()
        out[label] = 2 * n**3 / 1e9 / min(_timed(run) for _ in range(repeats))
    return out


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compare(
    name: str,
    batch_size: int,
    blocks: int,
    steps: int,
    torch_compile: bool,
    compute_dtype: str = "float32",
    conv_backend: str = "auto",
    zoo: Zoo = False,
    device: str = "cpu",
    torch_dtype: str = "float32",
    flax: bool = False,
) -> dict:
    """Side by side in this process: first-step times, then alternating timed blocks; torch on
    ``device`` (:func:`torch_device`) in ``torch_dtype``; ``flax``: the model's plain
    flax.linen peer (:func:`flax_trainer`) in the same blocks."""
    runners, first = {}, {}
    spec = zoo_spec(name, zoo) if zoo else None
    makers = {"cnn_jax": lambda: jax_trainer(name, batch_size, compute_dtype, conv_backend, zoo)}

    def torch_maker(compiled: bool):
        return lambda: torch_trainer(
            name, batch_size, compiled=compiled, zoo=spec, device=device, dtype=torch_dtype
        )

    makers["torch"] = torch_maker(False)
    if torch_compile:
        makers["torch.compile"] = torch_maker(True)
    if flax:
        makers["flax"] = lambda: flax_trainer(name, batch_size)
    errors = {}
    for label, make in makers.items():
        try:
            runners[label] = make()
            first[label] = _timed(runners[label])
        except Exception as e:  # torch.compile needs a working C++ toolchain; report, go on
            if label != "torch.compile":
                raise
            errors[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            runners.pop(label, None)
    times: dict[str, list[list[float]]] = {label: [] for label in runners}
    for _ in range(blocks):
        for label, run in runners.items():
            block = [_timed(run) for _ in range(steps + 1)][1:]
            times[label].append(block)
    medians = {
        label: statistics.median(t for b in blocks_ for t in b) for label, blocks_ in times.items()
    }

    def range_over_blocks(label: str) -> list[float]:
        """The lowest and highest ratio ``label`` / cnn_jax of the blocks' medians."""
        ratios = [
            statistics.median(other) / statistics.median(ours)
            for other, ours in zip(times[label], times["cnn_jax"], strict=True)
        ]
        return [min(ratios), max(ratios)]

    out = {
        "model": name,
        "batch_size": batch_size,
        "step_s": medians,
        "first_step_s": first,
        "ratio_torch_over_jax": medians["torch"] / medians["cnn_jax"],
        "ratio_range": range_over_blocks("torch"),
        "block_times_s": times,
        "errors": errors,
    }
    if "torch.compile" in medians:
        out["ratio_compiled_over_jax"] = medians["torch.compile"] / medians["cnn_jax"]
    if "flax" in medians:
        out["ratio_flax_over_jax"] = medians["flax"] / medians["cnn_jax"]
        out["flax_ratio_range"] = range_over_blocks("flax")
    return out


def _memory_worker(
    framework: str,
    name: str,
    batch_size: int,
    steps: int,
    backend: str,
    compute_dtype: str,
    zoo: str = "null",
    device: str = "cpu",
    torch_dtype: str = "float32",
) -> None:
    """Trains ``steps`` steps of one framework alone and prints its peaks as JSON: the
    process's resident memory and, off the CPU, the device memory the framework's allocator
    held at most (``peak_device_mb``; None on the CPU)."""
    if framework == "cnn_jax":
        import cnn_jax

        cnn_jax.runtime.apply()  # as in the side-by-side process
        spec = json.loads(zoo)
        run = jax_trainer(name, batch_size, compute_dtype, backend, spec["size"] if spec else False)
    else:
        run = torch_trainer(
            name, batch_size, False, alone=True, zoo=json.loads(zoo), device=device,
            dtype=torch_dtype,
        )  # fmt: skip
    for _ in range(steps):
        run()
    device_peak = None
    if framework == "cnn_jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats and jax.default_backend() != "cpu":
            device_peak = stats["peak_bytes_in_use"] / 2**20
    elif device == "cuda":
        import torch

        device_peak = torch.cuda.max_memory_allocated() / 2**20
    rss = None
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # unlike ru_maxrss, not inherited across fork + exec
            rss = int(line.split()[1]) / 1024
    print(json.dumps({"peak_rss_mb": rss, "peak_device_mb": device_peak}))


def peak_memory(
    name: str,
    batch_size: int,
    steps: int,
    compute_dtype: str,
    conv_backend: str = "auto",
    zoo: Zoo = False,
    device: str = "cpu",
    torch_dtype: str = "float32",
) -> dict[str, dict[str, float | None]]:
    """Each framework's peaks (:func:`_memory_worker`) in a fresh process of its own:
    ``{"peak_rss_mb": {framework: MB}, "peak_device_mb": {framework: MB or None}}``."""
    out: dict[str, dict[str, float | None]] = {"peak_rss_mb": {}, "peak_device_mb": {}}
    spec = None if _course(name, zoo) else zoo_spec(name, zoo)
    for framework in ("cnn_jax", "torch"):
        cmd = [sys.executable, "-m", MODULE, "--memory-worker", framework, name,
               str(batch_size), str(steps), conv_backend, compute_dtype,
               json.dumps(spec), device, torch_dtype]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=record.ROOT)
        peaks = json.loads(result.stdout.strip().splitlines()[-1])
        for key in out:
            out[key][framework] = peaks[key]
    return out


def _memory_heading(results: list[dict]) -> str:
    """Off the CPU the device's memory is the one that limits a batch; on it, the process's."""
    kind = "device" if any(r.get("peak_device_mb") for r in results) else "RSS"
    return f"peak {kind} MB (cnn_jax / torch)"


def _memory_cell(r: dict) -> str:
    mem = r.get("peak_device_mb") or r.get("peak_rss_mb")
    return f" {mem['cnn_jax']:.0f} / {mem['torch']:.0f} |" if mem else " - |"


def table(results: list[dict]) -> str:
    """Step times, torch / cnn_jax with its range over blocks, first steps, peak memory."""
    has_compiled = any("ratio_compiled_over_jax" in r for r in results)
    head = "| model | batch | cnn_jax ms | torch ms | torch / cnn_jax (block range) |"
    rule = "|---|---|---|---|---|"
    if has_compiled:
        head += " torch.compile ms | torch.compile / cnn_jax |"
        rule += "---|---|"
    has_flax = any("ratio_flax_over_jax" in r for r in results)
    if has_flax:
        head += " plain flax ms | plain flax / cnn_jax (block range) |"
        rule += "---|---|"
    head += f" first step s (cnn_jax / torch.compile) | {_memory_heading(results)} |"
    rule += "---|---|"
    lines = [head, rule]
    for r in results:
        s, lo, hi = r["step_s"], *r["ratio_range"]
        row = (
            f"| {r['model']} | {r['batch_size']} | {1e3 * s['cnn_jax']:.1f} | "
            f"{1e3 * s['torch']:.1f} | **{r['ratio_torch_over_jax']:.2f}** ({lo:.2f}-{hi:.2f}) |"
        )
        if has_compiled:
            if "torch.compile" in s:
                row += f" {1e3 * s['torch.compile']:.1f} | {r['ratio_compiled_over_jax']:.2f} |"
            else:
                row += " did not run | - |"
        if has_flax:
            if "ratio_flax_over_jax" in r:
                flo, fhi = r["flax_ratio_range"]
                row += (
                    f" {1e3 * s['flax']:.1f} | **{r['ratio_flax_over_jax']:.2f}** "
                    f"({flo:.2f}-{fhi:.2f}) |"
                )
            else:
                row += " - | - |"
        compiled_first = r["first_step_s"].get("torch.compile")
        row += f" {r['first_step_s']['cnn_jax']:.1f} / " + (
            f"{compiled_first:.1f} |" if compiled_first is not None else "- |"
        )
        row += _memory_cell(r)
        lines.append(row)
    return "\n".join(lines) + "\n"


def zoo_table(results: list[dict]) -> str:
    """``--zoo``: each family's first model, its size as torchvision publishes it, and the
    train step side by side, slowest ratio first."""
    lines = [
        "| model | params (M) | GMACs (crop) | input | cnn_jax ms | torch ms "
        "| torch / cnn_jax (block range) | first step s (cnn_jax / torch) | "
        f"{_memory_heading(results)} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r["ratio_torch_over_jax"]):
        s, p, (lo, hi) = r["step_s"], r["published"], r["ratio_range"]
        lines.append(
            f"| {r['model']} | {p['params_m']:.1f} | {p['gmacs']:.2f} ({p['crop']}) | "
            f"{r['input_size']}x{r['input_size']}, batch {r['batch_size']} | "
            f"{1e3 * s['cnn_jax']:.1f} | {1e3 * s['torch']:.1f} | "
            f"**{r['ratio_torch_over_jax']:.2f}** ({lo:.2f}-{hi:.2f}) | "
            f"{r['first_step_s']['cnn_jax']:.1f} / {r['first_step_s']['torch']:.1f} |"
            + _memory_cell(r)
        )
    return "\n".join(lines) + "\n"


def roofline_table(results: list[dict], peak: dict[str, float]) -> str:
    """Each step's achieved GFLOP/s against the matmul peak of each framework."""
    best = max(peak.values())
    lines = [
        f"\nfloat32 matmul (2048³): torch {peak['torch']:.0f} GFLOP/s, XLA "
        f"{peak['cnn_jax']:.0f} GFLOP/s\n",
        "| model | batch | GFLOP / step | torch GFLOP/s | cnn_jax GFLOP/s | ceiling (peak / torch) "
        "|",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        torch_rate = r["gflop"] / r["step_s"]["torch"]
        jax_rate = r["gflop"] / r["step_s"]["cnn_jax"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['gflop']:.2f} | {torch_rate:.0f} | "
            f"{jax_rate:.0f} | {best / torch_rate:.2f} |"
        )
    return "\n".join(lines) + "\n"


def budget_table(results: list[dict]) -> str:
    """torch's step / 1.5 against each framework's convolutions timed alone."""
    lines = [
        "\n| model | batch | torch step ms | 1.5× budget ms (torch step / 1.5) | cnn_jax step ms "
        "| cnn_jax convolutions alone ms | torch convolutions alone ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s, c = r["step_s"], r["conv_budget"]["conv_s"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {1e3 * s['torch']:.1f} | "
            f"{1e3 * s['torch'] / 1.5:.1f} | {1e3 * s['cnn_jax']:.1f} | "
            f"**{1e3 * c['cnn_jax']:.1f}** | {1e3 * c['torch']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def tables(stored: dict) -> str:
    """``table.md``: what was run and with which settings, then every table measured."""
    p, settings, results = stored["provenance"], stored["settings"], stored["results"]
    m, rt = p["machine"], p["runtime"]
    xla, malloc = rt.get("xla") or {}, rt.get("malloc") or {}  # None: not recorded (older file)
    backend = settings.get("conv_backend") or rt.get("conv_backend")  # older files: in runtime
    device = settings.get("torch_device", "cpu")  # older files: the CPU, in float32
    torch_dtype = f" (torch: {settings['torch_dtype']})" if "torch_dtype" in settings else ""
    where = (
        f"{settings['device_kind']} (torch on {device}) with {m['cores']} cores, {m['cpu']}"
        if device != "cpu"
        else f"{m['cores']} cores, {m['cpu']} ({m['isa']})"
    )
    head = (
        f"`{p['command']}` on {where}, jax "
        f"{p['versions']['jax']}, torch {p['versions']['torch']} ({settings['torch_threads']} "
        f"threads), conv backend {backend!r}, compute dtype "
        f"{settings['compute_dtype']}{torch_dtype}; "
        f"XLA setting: {record.xla_setting(xla)}; "
        f"allocator: {malloc.get('reason', 'not recorded')}\n\n"
    )
    if "published" in results[0]:
        budget = budget_table(results) if "conv_budget" in results[0] else ""
        return head + zoo_table(results) + budget
    return (
        head
        + table(results)
        + (roofline_table(results, settings["matmul_gflops"]) if "gflop" in results[0] else "")
        + (budget_table(results) if "conv_budget" in results[0] else "")
    )


def zoo_plot(results: list[dict], path: Path) -> None:
    """``--zoo``: torch / cnn_jax per family, the block range as error bars."""
    from cnn_jax.inspect.plots import Figure

    rows = sorted(results, key=lambda r: r["ratio_torch_over_jax"])
    y = [r["ratio_torch_over_jax"] for r in rows]
    err = np.abs(np.array([r["ratio_range"] for r in rows]).T - np.array(y))
    fig = Figure(figsize=(7, 0.35 * len(rows) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh([r["model"] for r in rows], y, xerr=err, capsize=3, color="C0")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set(
        xlabel="torch eager step / cnn_jax step",
        title=f"Train step, CPU, batch {rows[0]['batch_size']}",
    )
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot(results: list[dict], path: Path) -> None:
    """torch / cnn_jax per batch size, one line per model, the block range as error bars."""
    from cnn_jax.inspect.plots import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    names = list(dict.fromkeys(r["model"] for r in results))
    for i, name in enumerate(names):
        rows = [r for r in results if r["model"] == name]
        x = [r["batch_size"] for r in rows]
        y = [r["ratio_torch_over_jax"] for r in rows]
        err = np.abs(np.array([r["ratio_range"] for r in rows]).T - np.array(y))
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name, color=f"C{i}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.5, color="k", lw=0.8, ls="--", label="goal (1.5)")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size", ylabel="torch eager step / cnn_jax step", title="Train step, CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--memory-worker":
        _memory_worker(argv[1], argv[2], int(argv[3]), int(argv[4]), *argv[5:10])
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)} (--zoo: its own)"
    )
    parser.add_argument(
        "--zoo",
        action="store_true",
        help=f"the first model of every torchvision family at {ZOO_SIZE}x{ZOO_SIZE}, batch "
        f"{ZOO_BATCH}, with its parameters and GMACs (default --out: "
        "experiments/results/bench_vs_torch/zoo)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"with --zoo: the image size (default {ZOO_SIZE}; a model's minimum if larger)",
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64, 128, 256])
    parser.add_argument("--blocks", type=int, default=5, help="alternating blocks per framework")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    parser.add_argument(
        "--no-flax",
        action="store_true",
        help="leave out the plain flax.linen peers (experiments/flax_peers.py), which are timed "
        "by default beside the headline's models in float32",
    )
    parser.add_argument("--memory", action="store_true", help="peak RSS in fresh processes")
    parser.add_argument("--quick", action="store_true", help="lenet5, batch 32, 2 blocks of 2")
    parser.add_argument("--roofline", action="store_true", help="achieved GFLOP/s and ceiling")
    parser.add_argument(
        "--conv-budget",
        action="store_true",
        help="each convolution alone in both frameworks, summed, against torch's step / 1.5",
    )
    parser.add_argument(
        "--compute-dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="cnn_jax's compute dtype (torch's: --torch-dtype)",
    )
    parser.add_argument(
        "--torch-dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="torch's: float32, or bfloat16 under torch.autocast (its mixed precision)",
    )
    parser.add_argument(
        "--conv-backend",
        default=None,
        help="cnn_jax.functional conv backend to time (default: the library's, 'auto')",
    )
    record.add_out_argument(parser, NAME)
    args = parser.parse_args(argv)
    zoo = zoo_models()
    if args.zoo:
        args.models = args.models or zoo
        if "--batch-sizes" not in argv:
            args.batch_sizes = [ZOO_BATCH]
    args.models = args.models or list(MODELS)
    if args.quick:
        args.models, args.blocks, args.steps = args.models[:1] if args.zoo else ["lenet5"], 2, 2
        args.batch_sizes = [2] if args.zoo else [32]
    known = [*MODELS, *[m for m in zoo_models(every_width=args.zoo) if m not in MODELS]]
    unknown = [m for m in args.models if m not in known]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {known}")
    if args.size is not None and (not args.zoo or args.size < 1):
        parser.error("--size is a positive image size, for --zoo runs")
    if args.size is not None and args.out is None and not args.quick:
        parser.error("a --size run is a side run: give it its own --out")
    if args.zoo and args.out is None and not args.quick:
        args.out = record.RESULTS / NAME / "zoo"
    if args.blocks < 1 or args.steps < 1:
        parser.error("--blocks and --steps must be >= 1")
    zoo_as: Zoo = (args.size or True) if args.zoo else False
    out = record.out_dir(args.out, NAME, args.quick)

    # First: cnn_jax's XLA and allocator settings (cnn_jax.runtime.apply, as `cnn-jax` and `fit`
    # apply them); the allocator setting is process-wide, so torch, stepping in this process,
    # runs with it too.
    import cnn_jax  # isort: skip

    cnn_jax.runtime.apply()
    import jax
    import torch

    conv_backend = args.conv_backend or "auto"
    run = record.provenance(MODULE, argv)
    device = torch_device(jax.default_backend())
    if device != "cpu" and (args.roofline or args.conv_budget):
        parser.error("--roofline and --conv-budget measure the CPU: run them with JAX on the CPU")
    settings: dict[str, Any] = {
        "models": args.models, "batch_sizes": args.batch_sizes, "blocks": args.blocks,
        "steps": args.steps, "torch_threads": torch.get_num_threads(),
        "compute_dtype": args.compute_dtype, "conv_backend": conv_backend,
        "torch_device": device, "torch_dtype": args.torch_dtype,
        "device_kind": jax.devices()[0].device_kind,
    }  # fmt: skip
    if device == "cuda":  # the float32 shortcuts each framework takes on the GPU (TF32)
        settings["precision"] = {
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
            "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "torch_cudnn_benchmark": CUDNN_BENCHMARK,
        }
    if args.zoo:
        settings["size"] = _zoo_size(zoo_as)
    if args.roofline:
        settings["matmul_gflops"] = matmul_peak()
    print(f"{settings}", flush=True)
    results = []
    for name in args.models:
        for batch_size in args.batch_sizes:
            r = compare(
                name, batch_size, args.blocks, args.steps, args.torch_compile, args.compute_dtype,
                conv_backend, zoo_as, device, args.torch_dtype,
                not args.no_flax and has_flax_peer(name, zoo_as, args.compute_dtype),
            )  # fmt: skip
            if args.memory:
                peaks = peak_memory(
                    name, batch_size, 3, args.compute_dtype, conv_backend, zoo_as, device,
                    args.torch_dtype,
                )  # fmt: skip
                r["peak_rss_mb"] = peaks["peak_rss_mb"]
                if device != "cpu":
                    r["peak_device_mb"] = peaks["peak_device_mb"]
            if args.roofline:
                r["gflop"] = step_gflop(name, batch_size, zoo_as)
            if args.zoo:
                r["input_size"] = input_shape(name, zoo=zoo_as)[0]
                r["published"] = published_size(name)
            if args.conv_budget:
                r["conv_budget"] = conv_budget(name, batch_size, args.steps, conv_backend, zoo_as)
                c = r["conv_budget"]["conv_s"]
                print(
                    f"{'':10s} convolutions alone: cnn_jax {1e3 * c['cnn_jax']:8.1f} ms  torch "
                    f"{1e3 * c['torch']:8.1f} ms  (1.5x budget: torch step / 1.5 = "
                    f"{1e3 * r['step_s']['torch'] / 1.5:.1f} ms)",
                    flush=True,
                )
            results.append(r)
            lo, hi = r["ratio_range"]
            flax_part = (
                f"  plain flax {1e3 * r['step_s']['flax']:8.1f} ms (/ cnn_jax "
                f"{r['ratio_flax_over_jax']:.2f})"
                if "flax" in r["step_s"]
                else ""
            )
            print(
                f"{name:10s} batch {batch_size:4d}  cnn_jax {1e3 * r['step_s']['cnn_jax']:8.1f} ms"
                f"  torch {1e3 * r['step_s']['torch']:8.1f} ms  ratio "
                f"{r['ratio_torch_over_jax']:.2f} ({lo:.2f}-{hi:.2f}){flax_part}",
                flush=True,
            )
    stored = record.write(
        out, {"settings": settings, "results": results}, tables, provenance=run
    )  # fmt: skip
    (zoo_plot if args.zoo else plot)(stored["results"], out / "ratios.png")
    print(f"wrote {out}")
    return stored


if __name__ == "__main__":
    record.entry_point(main)
