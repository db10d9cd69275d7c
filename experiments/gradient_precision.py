"""Question: where does a deep BatchNorm net's float32 gradient lose precision against torch's?

The network (vgg16_bn at 64x64 in train mode by default) is rebuilt layer by layer from
``cnn_jax.functional`` with torchvision's parameters (BatchNorm statistics and affine parameters
randomised, dropout 0, ReLUs not in place so torch keeps every activation's gradient), and for
every layer output it records the relative L2 error of the layer's value and of the loss gradient
with respect to it, against a float64 torch run, for cnn_jax's float32 (the whole backward from
the loss to that output compiled as one program) and torch's float32. With ``--isolate LAYER`` it
then recomputes the backward of that BatchNorm layer alone, compiled by itself, from cnn_jax's
own float32 input and upstream gradient, to separate the layer's maths from the compiled graph it
sits in. With ``--kinks`` it lists, per ReLU, the input nearest the kink in float64 against the
float32 forward error there, and how much of the gradient a flipped decision there would move.

    python -m experiments.gradient_precision                       # vgg16_bn, 64x64, batch 6
    python -m experiments.gradient_precision --isolate features.11 --kinks
    python -m experiments.gradient_precision --seeds 8   # whole-model parameter gradients
    python -m experiments.gradient_precision --quick     # vgg11_bn, 32x32: what the tests run

With ``--seeds N`` it runs ``cnn_jax.testing.kinks.float32_gradient_errors`` (what
``tests/test_float32_gradients.py`` asserts on) for seeds 0..N-1: the worst per-parameter error
of each framework's float32 gradients against float64, plain and with every ReLU sign and
max-pool winner pinned to that float32 run's own (the float64 gradient of the same linear
piece), and how many decisions each float32 run took differently from float64. Results go to
``--out`` (default ``experiments/results/gradient_precision`` for ``--seeds``, with the figure
``errors.png``; ``experiments/results/gradient_precision_layers`` for the per-layer rows);
experiments/README.md says what they show.
"""

from __future__ import annotations

import argparse
import gc
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import cnn_jax
import cnn_jax.functional as F
from experiments import record

NAME = "gradient_precision"
MODULE = f"experiments.{NAME}"


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


def main(argv: list[str] | None = None) -> dict:
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
    parser.add_argument(
        "--quick", action="store_true", help="vgg11_bn, 32x32, batch 2 (one seed with --seeds)"
    )
    record.add_out_argument(parser, f"{NAME} (--seeds) or {NAME}_layers")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.size, args.batch = "vgg11_bn", 32, 2
        args.seeds = min(args.seeds, 1)
    settings = {"model": args.model, "size": args.size, "batch": args.batch}
    run = record.provenance(MODULE, argv)
    if args.seeds:
        return seeds_run(args, run, settings)

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

    def loss_from(k: int, a, params):
        for i in range(k + 1, len(layers)):
            a = jax_layer(layers[i], names[i], a, params)
        return optax.softmax_cross_entropy_with_integer_labels(a, labels).mean()

    ours = {}

    def rel(a, ref) -> float:
        return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))

    rows = []
    for k in reversed(range(len(layers))):
        # params as an argument, not a closure: a closed-over array is baked into each of the
        # per-layer programs as a constant (vgg16_bn's classifier alone is ~0.5 GB).
        ours[k] = jax.jit(jax.grad(lambda a, p, k=k: loss_from(k, a, p)))(acts[k], params)
        rows.append(
            {
                "name": names[k],
                "layer": str(layers[k]),
                "value_error": {
                    "cnn_jax": rel(_nchw(acts[k]), a64[k]),
                    "torch": rel(a32[k], a64[k]),
                },
                "gradient_error": {
                    "cnn_jax": rel(_nchw(ours[k]), g64[k]),
                    "torch": rel(g32[k], g64[k]),
                },
            }
        )
        print(layers_table({"layers": rows[-1:]}).splitlines()[-1], flush=True)
    results: dict = {"settings": settings, "layers": rows[::-1]}

    if args.isolate:
        k = names.index(args.isolate)

        def layer(a):
            return jax_layer(layers[k], names[k], a, params)

        _, vjp = jax.vjp(jax.jit(layer), acts[k - 1])
        alone = vjp(ours[k])[0]
        results["isolate"] = {
            "layer": args.isolate,
            "alone": rel(_nchw(alone), g64[k - 1]),
            "inside": rel(_nchw(ours[k - 1]), g64[k - 1]),
        }

    if args.kinks:
        results["kinks"] = []
        for k, layer in enumerate(layers):
            if not isinstance(layer, torch.nn.ReLU):
                continue
            x64 = a64[k - 1]
            pos = np.unravel_index(np.abs(x64).argmin(), x64.shape)
            results["kinks"].append(
                {
                    "input": names[k - 1],
                    "smallest_abs_input": float(abs(x64[pos])),
                    "float32_forward_error": float(np.abs(a32[k - 1] - x64).max()),
                    "flip_moves_gradient": float(abs(g64[k][pos]) / np.linalg.norm(g64[k - 1])),
                }
            )
    out = record.out_dir(args.out, f"{NAME}_layers", args.quick)
    stored = record.write(out, results, tables, provenance=run)
    print(layers_table(stored))
    print(f"wrote {out}")
    return stored


def layers_table(results: dict) -> str:
    """Per layer output: relative L2 error of its value and of the loss gradient with respect to
    it, cnn_jax's and torch's float32 against float64; then the isolated layer and the kinks."""
    lines = [
        "| layer output | | value error (cnn_jax / torch) | gradient error (cnn_jax / torch) |",
        "|---|---|---|---|",
    ]
    for r in results["layers"]:
        v, g = r["value_error"], r["gradient_error"]
        lines.append(
            f"| {r['name']} | {r['layer'][:40]} | {v['cnn_jax']:.1e} / {v['torch']:.1e} | "
            f"{g['cnn_jax']:.1e} / {g['torch']:.1e} |"
        )
    if "isolate" in results:
        i = results["isolate"]
        lines += [
            "",
            f"{i['layer']} backward compiled alone, on cnn_jax's own input and upstream "
            f"gradient: {i['alone']:.1e} (inside the whole backward: {i['inside']:.1e})",
        ]
    if results.get("kinks"):
        lines += [
            "",
            "| ReLU input | smallest abs. input (float64) | float32 forward error there | "
            "gradient moved by a flip there (relative L2) |",
            "|---|---|---|---|",
        ]
        for r in results["kinks"]:
            lines.append(
                f"| {r['input']} | {r['smallest_abs_input']:.1e} | "
                f"{r['float32_forward_error']:.1e} | {r['flip_moves_gradient']:.1e} |"
            )
    return "\n".join(lines)


def seeds_run(args: argparse.Namespace, run: dict, settings: dict) -> dict:
    """Worst per-parameter float32 gradient errors over seeds, pinned and unpinned."""
    from cnn_jax.testing.kinks import float32_gradient_errors

    rows = []
    for seed in range(args.seeds):
        e = float32_gradient_errors(args.model, args.size, 3, args.batch, seed=seed)
        rows.append({"seed": seed, **e})
        # Each seed compiles its own programs for a new model; dropping them keeps a long run's
        # memory from growing with the number of seeds.
        jax.clear_caches()
        gc.collect()
        print(seeds_table({"settings": settings, "rows": rows}).splitlines()[-1], flush=True)
    out = record.out_dir(args.out, NAME, args.quick)
    results = {"settings": {**settings, "seeds": args.seeds}, "rows": rows}
    stored = record.write(out, results, tables, provenance=run)
    plot(stored, out / "errors.png")
    print(seeds_table(stored))
    print(f"wrote {out}")
    return stored


def summary(results: dict) -> dict:
    """What the seeds show: per framework, on how many seeds the float32 run decided a ReLU or
    max-pool differently from float64, on how many the worst plain error exceeded 1e-4 (a
    flip that moved the gradient), the pinned ranges, and cnn_jax / torch on the same piece
    (mean, sample standard deviation, max)."""
    rows = results["rows"]
    ratios = np.array([r["ours"] / r["theirs"] for r in rows])
    out = {"seeds": len(rows), "ratio_mean": float(ratios.mean()), "ratio_max": float(ratios.max())}
    out["ratio_std"] = float(ratios.std(ddof=1)) if len(rows) > 1 else 0.0
    for who, key in (("cnn_jax", "ours"), ("torch", "theirs")):
        flipped = [r for r in rows if r[f"{key}_flips"] > 0]
        moved = [r for r in rows if r[f"{key}_unpinned"] > FLIP_MOVED]
        out[who] = {
            "seeds_flipped": len(flipped),
            "seeds_moved": len(moved),
            "flips": [min(r[f"{key}_flips"] for r in rows), max(r[f"{key}_flips"] for r in rows)],
            "total_flips": sum(r[f"{key}_flips"] for r in rows),
            "moved_range": [min((r[f"{key}_unpinned"] for r in moved), default=float("nan")),
                            max((r[f"{key}_unpinned"] for r in moved), default=float("nan"))],
            "pinned_range": [min(r[key] for r in rows), max(r[key] for r in rows)],
        }  # fmt: skip
    return out


# A worst parameter error against plain float64 above this is a flipped decision's doing: on
# the run's own linear piece every error is below 1e-4 (the pinned column).
FLIP_MOVED = 1e-4


def seeds_table(results: dict) -> str:
    """One row per seed, then cnn_jax / torch on the same linear piece over the seeds."""
    s = results["settings"]
    lines = [
        f"{s['model']}, {s['size']}x{s['size']}, batch {s['batch']}: the worst parameter's "
        "relative L2 error against float64",
        "",
        "| seed | same linear piece: cnn_jax / torch | plain float64: cnn_jax / torch | "
        "decisions flipped: cnn_jax / torch |",
        "|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['seed']} | {r['ours']:.2e} / {r['theirs']:.2e} | {r['ours_unpinned']:.2e} / "
            f"{r['theirs_unpinned']:.2e} | {r['ours_flips']} / {r['theirs_flips']} |"
        )
    if s.get("seeds") == len(results["rows"]):
        m = summary(results)
        lines += ["", f"cnn_jax / torch on the same linear piece: mean {m['ratio_mean']:.2f}, "
                  f"std {m['ratio_std']:.2f} (sample), max {m['ratio_max']:.2f}"]  # fmt: skip
    return "\n".join(lines)


def tables(results: dict) -> str:
    """``table.md`` of either mode: the seeds table (``--seeds``) or the per-layer rows."""
    return seeds_table(results) if "rows" in results else layers_table(results)


def plot(results: dict, path) -> None:
    """Each seed's four errors (plain and same-piece, per framework) on a log scale."""
    from cnn_jax.inspect.plots import Figure

    rows, s = results["rows"], results["settings"]
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot(1, 1, 1)
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
    ax.set_title(f"{s['model']} float32 gradients against float64 ({s['size']}x{s['size']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    record.entry_point(main)
