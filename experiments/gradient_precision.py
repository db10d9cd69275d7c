"""Question: where does a deep BatchNorm net's float32 gradient lose precision against torch's?

Open diagnosis for the fidelity issue (vgg16_bn at 64x64, train mode). The network is rebuilt
layer by layer from ``cnn_jax.functional`` with torchvision's parameters (BatchNorm statistics
and affine parameters randomised, dropout 0, ReLUs not in place so torch keeps every
activation's gradient), and for every layer output it prints the relative L2 error of the
loss gradient with respect to that output, against a float64 torch run, for cnn_jax's float32
(the whole backward from the loss to that output compiled as one program) and torch's float32.
With ``--isolate LAYER`` it then recomputes the backward of that BatchNorm layer alone, compiled
by itself, from cnn_jax's own float32 input and upstream gradient, to separate the layer's maths
from the compiled graph it sits in.

    python experiments/gradient_precision.py                       # vgg16_bn, 64x64, batch 6
    python experiments/gradient_precision.py --isolate features.11
    python experiments/gradient_precision.py --kinks   # ReLU decisions within float32 noise
    python experiments/gradient_precision.py --seeds 8 # whole-model parameter gradients, pinned

With ``--seeds N`` it runs ``cnn_jax.testing.kinks.float32_gradient_errors`` (what
``tests/test_float32_gradients.py`` asserts on) for seeds 0..N-1: the worst per-parameter error
of each framework's float32 gradients against float64, plain and with every ReLU sign and
max-pool winner pinned to that float32 run's own (the float64 gradient of the same linear
piece), and how many decisions each float32 run took differently from float64. It writes
``results/gradient_precision/results.json`` and a figure.

Finding (``--seeds 8``): with decisions pinned, cnn_jax's float32 parameter gradients are
1.63 ± 0.09 times torch's own float32 error (max 1.71, within the 2× asked); the 1e-3-1e-2 errors
against plain float64 come from 1-5 flipped ReLU decisions per run, in torch's runs (5 of 8
seeds) as in cnn_jax's (8 of 8; its forward rounding is ~1.7× torch's). experiments/README.md.

Finding (``--kinks``): at features.28 one pre-activation is 9.8e-7 in float64, below the float32
forward error there (~1e-6), and that single element carries 2.1e-3 of the gradient's L2 norm.
Whether its ReLU fires depends on rounding, i.e. on how a program was compiled: the per-layer
rows above move between ~2e-6 and ~1e-3 when the same gradient program gets its input from an
op-by-op or a jitted forward (1.8e-7 apart). The gradient is discontinuous there; no float32
implementation can be held to torch's error on such an input (torch's rounding happened to match
float64's on the issue's seed, not on others).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import cnn_jax
import cnn_jax.functional as F


def build(name: str, num_classes: int):
    import torch

    import cnn_jax.testing.torch_models as twins

    torch.manual_seed(0)
    model = twins.reference(name, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    return twins.randomize(model).train()


def layer_list(net) -> tuple[list, list[str]]:
    layers = [*net.features, net.avgpool, "flatten", *net.classifier]
    names = [f"features.{i}" for i in range(len(net.features))] + ["avgpool", "flatten"]
    names += [f"classifier.{i}" for i in range(len(net.classifier))]
    return layers, names


def torch_run(net, x: np.ndarray, labels: np.ndarray, dtype) -> tuple[list, list]:
    """Every layer's output and the loss gradient with respect to it."""
    import torch

    layers, _ = layer_list(net)
    h = torch.tensor(x.transpose(0, 3, 1, 2).copy(), dtype=dtype)
    outputs = []
    for layer in layers:
        h = torch.flatten(h, 1) if layer == "flatten" else layer(h)
        h.retain_grad()
        outputs.append(h)
    torch.nn.functional.cross_entropy(h, torch.tensor(labels)).backward()
    values = [o.detach().numpy().astype(np.float64) for o in outputs]
    return values, [o.grad.numpy().astype(np.float64) for o in outputs]


def jax_layer(layer, name: str, h, params: dict):
    import torch

    if layer == "flatten":  # torch flattens NCHW
        return h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1)
    if isinstance(layer, torch.nn.Conv2d):
        return F.conv2d(h, params[name + ".weight"], params[name + ".bias"], padding=1)
    if isinstance(layer, torch.nn.BatchNorm2d):
        stats = F.BatchNormStats(
            params[name + ".running_mean"],
            params[name + ".running_var"],
            params[name + ".num_batches_tracked"],
        )
        y, _ = F.batch_norm(h, stats, params[name + ".weight"], params[name + ".bias"],
                            training=True)  # fmt: skip
        return y
    if isinstance(layer, torch.nn.ReLU):
        return jax.nn.relu(h)
    if isinstance(layer, torch.nn.MaxPool2d):
        return F.max_pool2d(h, 2, 2)
    if isinstance(layer, torch.nn.AdaptiveAvgPool2d):
        return F.adaptive_avg_pool2d(h, (7, 7))
    if isinstance(layer, torch.nn.Linear):
        return F.linear(h, params[name + ".weight"], params[name + ".bias"])
    if isinstance(layer, torch.nn.Dropout):
        return h
    raise ValueError(f"no functional equivalent for {layer}")


def _nchw(a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def main(argv: list[str] | None = None) -> None:
    import torch

    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--isolate", default=None, help="a BatchNorm layer, e.g. features.11")
    parser.add_argument(
        "--kinks",
        action="store_true",
        help="list, per ReLU, the input nearest 0 and what flipping its decision costs",
    )
    parser.add_argument("--seeds", type=int, default=0, help="whole-model errors over N seeds")
    args = parser.parse_args(argv)
    if args.seeds:
        seeds_table(args)
        return

    net32 = build(args.model, 5)
    net64 = build(args.model, 5).double()
    net64.load_state_dict(net32.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.size, args.size, 3))
    labels = np.arange(args.batch) % 5
    a64, g64 = torch_run(net64, x, labels, torch.float64)
    a32, g32 = torch_run(net32, x, labels, torch.float32)
    params = {k: jnp.asarray(v.numpy()) for k, v in net32.state_dict().items()}
    layers, names = layer_list(net32)

    acts, h = [], jnp.asarray(x, jnp.float32)
    for layer, name in zip(layers, names, strict=True):
        h = jax_layer(layer, name, h, params)
        acts.append(h)

    def loss_from(k: int, a):
        for i in range(k + 1, len(layers)):
            a = jax_layer(layers[i], names[i], a, params)
        return optax.softmax_cross_entropy_with_integer_labels(a, labels).mean()

    ours = {}

    def rel(a, ref) -> float:
        return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))

    header = f"{'value: cnn_jax / torch':>24s} {'gradient: cnn_jax / torch':>27s}"
    print(f"{'layer output':46s} {header}")
    for k in reversed(range(len(layers))):
        ours[k] = jax.jit(jax.grad(lambda a, k=k: loss_from(k, a)))(acts[k])
        print(
            f"{names[k]:14s} {str(layers[k])[:31]:31s} {rel(_nchw(acts[k]), a64[k]):11.1e} / "
            f"{rel(a32[k], a64[k]):.1e} {rel(_nchw(ours[k]), g64[k]):14.1e} / "
            f"{rel(g32[k], g64[k]):.1e}"
        )

    if args.isolate:
        k = names.index(args.isolate)

        def layer(a):
            return jax_layer(layers[k], names[k], a, params)

        _, vjp = jax.vjp(jax.jit(layer), acts[k - 1])
        alone = vjp(ours[k])[0]
        print(
            f"{args.isolate} backward compiled alone, on cnn_jax's own input and upstream "
            f"gradient: {rel(_nchw(alone), g64[k - 1]):.1e} (inside the whole backward: "
            f"{rel(_nchw(ours[k - 1]), g64[k - 1]):.1e})"
        )

    if args.kinks:
        print("\nReLU inputs nearest the kink (float64), against the float32 forward error there:")
        for k, layer in enumerate(layers):
            if not isinstance(layer, torch.nn.ReLU):
                continue
            x64 = a64[k - 1]
            pos = np.unravel_index(np.abs(x64).argmin(), x64.shape)
            noise = float(np.abs(a32[k - 1] - x64).max())
            share = abs(g64[k][pos]) / np.linalg.norm(g64[k - 1])
            print(
                f"{names[k - 1]:14s} smallest |x| {abs(x64[pos]):.1e}, float32 forward error up "
                f"to {noise:.1e}: a flip there moves the gradient by {share:.1e} (relative L2)"
            )


def seeds_table(args: argparse.Namespace) -> None:
    """Worst per-parameter float32 gradient errors over seeds, pinned and unpinned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bench_vs_torch import machine

    from cnn_jax.testing.kinks import float32_gradient_errors

    rows = []
    print(f"{args.model}, {args.size}x{args.size}, batch {args.batch}: worst per-parameter error")
    print("seed  pinned cnn_jax / torch   unpinned cnn_jax / torch   flips cnn_jax / torch")
    for seed in range(args.seeds):
        e = float32_gradient_errors(args.model, args.size, 3, args.batch, seed=seed)
        rows.append({"seed": seed, **e})
        print(
            f"{seed:4d}  {e['ours']:14.2e} / {e['theirs']:.2e} {e['ours_unpinned']:17.2e} / "
            f"{e['theirs_unpinned']:.2e} {e['ours_flips']:12d} / {e['theirs_flips']}"
        )
    ratios = np.array([r["ours"] / r["theirs"] for r in rows])
    print(f"pinned cnn_jax / torch: mean {ratios.mean():.2f}, std {ratios.std():.2f}, "
          f"max {ratios.max():.2f}")  # fmt: skip
    out = Path(__file__).parent / "results" / "gradient_precision"
    out.mkdir(parents=True, exist_ok=True)
    command = (
        f"python experiments/gradient_precision.py --model {args.model} --size {args.size} "
        f"--batch {args.batch} --seeds {args.seeds}"
    )
    (out / "results.json").write_text(
        json.dumps({"command": command, "machine": machine(), "rows": rows}, indent=1) + "\n"
    )
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    seeds = np.arange(len(rows))
    for key, label, marker in (
        ("ours_unpinned", "cnn_jax, plain float64", "o"),
        ("theirs_unpinned", "torch, plain float64", "s"),
        ("ours", "cnn_jax, same linear piece", "x"),
        ("theirs", "torch, same linear piece", "+"),
    ):
        ax.semilogy(seeds, [r[key] for r in rows], marker, label=label, alpha=0.8)
    ax.set_xlabel("seed")
    ax.set_ylabel("worst parameter's relative L2 error")
    ax.set_title(f"{args.model} float32 gradients against float64 ({args.size}x{args.size})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=120)
    print(f"wrote {out / 'results.json'} and errors.png")


if __name__ == "__main__":
    main()
