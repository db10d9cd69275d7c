"""Functional vs stateful: one model, one initialisation, one stream of batches, one optimiser,
trained three ways — cnn_jax functional (a jitted pure step over a train-state pytree), PyTorch
eager (the course's loop) and Flax NNX (stateful JAX, ``nnx.jit``).

It reports, per model:

* agreement with dropout off (BatchNorm on where the model has it): each style's per-step loss
  and accuracy against the others at steps 1, 10, 100 and the end, the final parameters' relative
  distance, and each float32 run's distance from a float64 torch run (the reference that tells
  rounding from a semantic difference);
* with dropout on (cifar_cnn): final test accuracy over several seeds per style (mean and sample
  standard deviation), after ``--dropout-steps`` at ``--dropout-lr``;
* cost: step time after warm-up, first step (compile) time and peak memory, per batch size, each
  measured in a fresh process, as ratios to torch.

    python -m experiments.functional_vs_stateful                  # every part, every model
    python -m experiments.functional_vs_stateful --parts cost     # re-measure one part
    python -m experiments.functional_vs_stateful --quick          # cifar_cnn, tiny: the tests

``results.json`` (every number; each part with the provenance of the run that measured it, as a
run of some ``--parts`` keeps the others), ``table.md`` and ``agreement.png`` go to ``--out``
(default ``experiments/results/functional_vs_stateful``; ``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import record

NAME = "functional_vs_stateful"
MODULE = f"experiments.{NAME}"
STYLES = ("functional", "torch", "nnx")
PARTS = ("agreement", "dropout", "cost")


# ---------------------------------------------------------------------------------------------
# The three train steps, written the way each style is meant to be written.
# ---------------------------------------------------------------------------------------------


def functional_trainer(linen_model, variables, lr: float, momentum: float, seed: int):
    """cnn_jax functional: the state is an explicit pytree; the step is a pure function of
    (state, batch) that returns a new state; params, BatchNorm statistics, optimiser state and
    the RNG key are threaded by hand (inside ``TrainState``)."""
    import jax
    import optax

    from cnn_jax import train as T

    tx = optax.sgd(lr, momentum=momentum)
    state = T.TrainState.create(
        apply_fn=linen_model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
    step = jax.jit(T.train_step, donate_argnums=0)

    def run(state, images, labels):
        state, metrics = step(state, {"image": images, "label": labels})
        return state, metrics["loss"], metrics["accuracy"]

    return state, run


def torch_trainer(twin, lr: float, momentum: float):
    """PyTorch eager: the module owns its parameters and buffers and mutates them; the optimiser
    owns its momentum; randomness is global."""
    import torch

    optimizer = torch.optim.SGD(twin.parameters(), lr=lr, momentum=momentum)
    twin.train()

    def run(_, images, labels):
        optimizer.zero_grad()
        logits = twin(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(1) == labels).float().mean()
        return None, loss.detach(), accuracy

    return None, run


def nnx_trainer(model, lr: float, momentum: float):
    """Flax NNX: the module owns its state like torch's; ``nnx.jit`` compiles a step that
    mutates the model and the ``nnx.Optimizer`` in place."""
    import optax
    from flax import nnx

    optimizer = nnx.Optimizer(model, optax.sgd(lr, momentum=momentum), wrt=nnx.Param)
    model.train()

    @nnx.jit
    def step(model, optimizer, images, labels):
        def loss_fn(model):
            logits = model(images)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, (logits.argmax(-1) == labels).mean()

    def run(_, images, labels):
        loss, accuracy = step(model, optimizer, images, labels)
        return None, loss, accuracy

    return None, run


# ---------------------------------------------------------------------------------------------
# Building one model three ways from one initialisation
# ---------------------------------------------------------------------------------------------


def build(name: str, channels: int, num_classes: int, dropout: float, seed: int):
    """The torch twin (initialised by torch's own init under ``seed``), and the linen variables
    and NNX model loaded from its state_dict: one initialisation for all three styles."""
    import jax.numpy as jnp
    import torch
    from flax import nnx

    import cnn_jax.testing.torch_models as twins
    from cnn_jax import nnx as cnnx
    from cnn_jax.interop import from_torch
    from cnn_jax.models import create

    kw = dict(num_classes=num_classes, in_channels=channels)
    if name == "cifar_cnn":
        kw["dropout"] = dropout
    torch.manual_seed(seed)
    twin = twins.restatement(name, **kw)
    linen = create(name, **kw)
    size = 32
    variables = from_torch(
        linen, twin.state_dict(), sample_input=jnp.zeros((1, size, size, channels))
    )
    model = from_torch(cnnx.create(name, rngs=nnx.Rngs(seed), **kw), twin.state_dict())
    return twin, linen, variables, model


def _digits(batch_size: int, steps: int, seed: int):
    """``steps`` normalised batches of the embedded digits at 32x32 (NHWC and NCHW copies)."""
    from cnn_jax import data

    ds = data.load("digits", image_size=32)
    out, epoch = [], 0
    while len(out) < steps:
        for b in data.batches(ds["train"], batch_size, shuffle=True, seed=seed, epoch=epoch):
            out.append((b["image"], b["label"].astype(np.int64)))
            if len(out) == steps:
                break
        epoch += 1
    return out, ds


def _flat_params(style: str, state, twin, model) -> dict[str, np.ndarray]:
    from flax import nnx, traverse_util

    if style == "functional":
        flat = traverse_util.flatten_dict(state.params)
        return {".".join(k): np.asarray(v, np.float64) for k, v in flat.items()}
    if style == "torch":
        return {k: p.detach().double().numpy() for k, p in twin.named_parameters()}
    return {
        ".".join(map(str, p)): np.asarray(v[...], np.float64)
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def _rel_distance(a: dict, b: dict) -> float:
    num = sum(float(np.sum((a[k] - b[k]) ** 2)) for k in a)
    den = sum(float(np.sum(b[k] ** 2)) for k in a)
    return (num / den) ** 0.5


def agreement(name: str, channels: int, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """Dropout off: the three float32 styles and a float64 torch run on identical batches."""
    import jax.numpy as jnp
    import torch

    batches, _ = _digits(batch_size, steps, seed)
    twin, linen, variables, model = build(name, channels, 10, 0.0, seed)
    twin64 = copy.deepcopy(twin).double()
    runs = {}
    trainers = {
        "functional": functional_trainer(linen, variables, lr, 0.9, seed),
        "torch": torch_trainer(twin, lr, 0.9),
        "nnx": nnx_trainer(model, lr, 0.9),
        "torch_float64": torch_trainer(twin64, lr, 0.9),
    }
    for style, (state, run) in trainers.items():
        losses, accs = [], []
        for images, labels in batches:
            if style.startswith("torch"):
                dtype = torch.float64 if style == "torch_float64" else torch.float32
                x = torch.tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(dtype)
                state, loss, acc = run(state, x, torch.tensor(labels))
            else:
                state, loss, acc = run(state, jnp.asarray(images), jnp.asarray(labels, np.int32))
            losses.append(loss)
            accs.append(acc)
        runs[style] = {
            "loss": np.array([float(v) for v in losses]),
            "accuracy": np.array([float(v) for v in accs]),
            "params": _flat_params(
                "torch" if style.startswith("torch") else style,
                state,
                twin64 if style == "torch_float64" else twin,
                model,
            ),
        }
    checkpoints = sorted({s for s in (1, 10, 100, steps) if s <= steps})
    pairs = [
        ("functional", "nnx"),
        ("functional", "torch"),
        ("nnx", "torch"),
        ("functional", "torch_float64"),
        ("nnx", "torch_float64"),
        ("torch", "torch_float64"),
    ]
    table = {}
    for a, b in pairs:
        rel = np.abs(runs[a]["loss"] - runs[b]["loss"]) / np.abs(runs[b]["loss"])
        table[f"{a} vs {b}"] = {
            "loss_rel_diff_at": {str(s): float(rel[:s].max()) for s in checkpoints},
            "accuracy_max_abs_diff": float(np.abs(runs[a]["accuracy"] - runs[b]["accuracy"]).max()),
            "final_params_rel_distance": _rel_distance(runs[a]["params"], runs[b]["params"]),
        }
    return {"table": table, "curves": {k: v["loss"].tolist() for k, v in runs.items()}}


def dropout_accuracy(
    name: str, channels: int, steps: int, batch_size: int, lr: float, seeds: list[int]
) -> dict:
    """Dropout on: the styles' test accuracy after ``steps`` over several seeds (the masks come
    from three different RNGs, so only the distributions can agree)."""
    import jax
    import jax.numpy as jnp
    import torch

    from cnn_jax import train as T

    out = {style: [] for style in STYLES}
    for seed in seeds:
        batches, ds = _digits(batch_size, steps, seed)
        test = next(__import__("cnn_jax").data.batches(ds["test"], len(ds["test"])))
        twin, linen, variables, model = build(name, channels, 10, 0.5, seed)
        trainers = {
            "functional": functional_trainer(linen, variables, lr, 0.9, seed),
            "torch": torch_trainer(twin, lr, 0.9),
            "nnx": nnx_trainer(model, lr, 0.9),
        }
        torch.manual_seed(seed)
        for style, (state, run) in trainers.items():
            for images, labels in batches:
                if style == "torch":
                    x = torch.tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
                    state, _, _ = run(state, x, torch.tensor(labels))
                else:
                    state, _, _ = run(state, jnp.asarray(images), jnp.asarray(labels, np.int32))
            if style == "functional":
                acc = float(T.eval_step(state, jax.device_put(test))["accuracy"])
            elif style == "torch":
                twin.eval()
                with torch.no_grad():
                    x = torch.tensor(np.ascontiguousarray(test["image"].transpose(0, 3, 1, 2)))
                    acc = float((twin(x).argmax(1).numpy() == test["label"]).mean())
            else:
                model.eval()
                acc = float(
                    (
                        np.asarray(model(jnp.asarray(test["image"])).argmax(-1)) == test["label"]
                    ).mean()
                )
            out[style].append(acc)
    # std: the sample standard deviation (n - 1), as in every table of experiments/README.md.
    return {s: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                "runs": v} for s, v in out.items()}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Cost: one fresh process per (model, style, batch size)
# ---------------------------------------------------------------------------------------------


def cost_worker(name: str, channels: int, style: str, batch_size: int, steps: int) -> dict:
    """Step time (median after warm-up), first step time (compilation for the JAX styles) and
    the process's peak resident memory, in a fresh process that imports only its own framework
    (JAX styles initialise with their own init: the cost does not depend on the weights)."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, 32, 32, channels)).astype(np.float32)
    labels = (np.arange(batch_size) % 10).astype(np.int64)
    kw = dict(num_classes=10, in_channels=channels)
    if name == "cifar_cnn":
        kw["dropout"] = 0.0
    if style == "torch":
        import torch

        twins = record.torch_models_alone()
        torch.manual_seed(0)
        state, run = torch_trainer(twins.restatement(name, **kw), 0.01, 0.9)
        x = torch.tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        args = (x, torch.tensor(labels))
        sync = lambda out: float(out[1])
    else:
        import jax
        import jax.numpy as jnp
        from flax import nnx

        import cnn_jax.runtime
        from cnn_jax import nnx as cnnx
        from cnn_jax.models import create

        cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)

        x = jnp.asarray(images)
        if style == "functional":
            linen = create(name, **kw)
            variables = jax.jit(lambda k: linen.init(k, x[:1], train=False))(jax.random.key(0))
            state, run = functional_trainer(linen, variables, 0.01, 0.9, 0)
        else:
            state, run = nnx_trainer(cnnx.create(name, rngs=nnx.Rngs(0), **kw), 0.01, 0.9)
        args = (x, jnp.asarray(labels, np.int32))
        sync = lambda out: jax.block_until_ready(out[1])
    t0 = time.perf_counter()
    out = run(state, *args)
    sync(out)
    first = time.perf_counter() - t0
    state = out[0]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = run(state, *args)
        sync(out)
        times.append(time.perf_counter() - t0)
        state = out[0]
    return {"step_s": statistics.median(times), "first_step_s": first, "peak_rss_mb": _peak_rss()}


def _peak_rss() -> float:
    """This process's peak resident memory in MB (VmHWM: unlike ru_maxrss it is not inherited
    from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cost(name: str, channels: int, batch_sizes: list[int], steps: int) -> dict:
    out = {}
    for batch_size in batch_sizes:
        for style in STYLES:
            cmd = [sys.executable, "-m", MODULE, "--cost-worker", name, str(channels), style,
                   str(batch_size), str(steps)]  # fmt: skip
            result = subprocess.run(
                cmd, capture_output=True, text=True, check=True, cwd=record.ROOT
            )
            out[f"{style}@{batch_size}"] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------------------------------------


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        curves = {
            k: np.asarray(v) for k, v in results["models"][name]["agreement"]["curves"].items()
        }
        ax = axes[0, col]
        for style, style_kw in (("torch_float64", dict(color="k", lw=3, alpha=0.3)),
                                ("torch", dict(ls="-")), ("functional", dict(ls="--")),
                                ("nnx", dict(ls=":"))):  # fmt: skip
            ax.plot(np.arange(1, len(curves[style]) + 1), curves[style], label=style, **style_kw)
        ax.set(title=f"{name}: training loss", xlabel="step", ylabel="loss")
        ax.legend()
        ax = axes[1, col]
        ref = curves["torch_float64"]
        for style in ("functional", "torch", "nnx"):
            diff = np.abs(curves[style] - ref) / np.abs(ref)
            ax.semilogy(
                np.arange(1, len(ref) + 1), np.maximum(diff, 1e-12), label=f"{style} vs float64"
            )
        diff = np.abs(curves["functional"] - curves["nnx"]) / np.abs(curves["nnx"])
        ax.semilogy(
            np.arange(1, len(ref) + 1), np.maximum(diff, 1e-12), "k--", label="functional vs nnx"
        )
        ax.set(title=f"{name}: |loss difference| / loss", xlabel="step", ylim=(1e-12, 10))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "agreement.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Tables (table.md and experiments/README.md render these from results.json)
# ---------------------------------------------------------------------------------------------


def agreement_table(results: dict) -> str:
    """Largest relative loss difference up to each checkpoint step, and the final parameters'
    relative distance, for every pair of runs of every model."""
    steps = None
    lines = []
    for name, entry in results["models"].items():
        for pair, row in entry.get("agreement", {}).get("table", {}).items():
            if steps is None:
                steps = list(row["loss_rel_diff_at"])
                lines += [
                    "| model | pair | " + " | ".join(f"s={s}" for s in steps) + " | final params |",
                    "|---|---|" + "---|" * (len(steps) + 1),
                ]
            cells = [f"{row['loss_rel_diff_at'][s]:.1e}" for s in steps]
            lines.append(
                f"| {name} | {pair.replace('torch_float64', 'torch float64')} | "
                + " | ".join(cells)
                + f" | {row['final_params_rel_distance']:.1e} |"
            )
    return "\n".join(lines)


def dropout_table(results: dict) -> str:
    """Test accuracy per style with dropout on: mean ± sample std, and each seed's run."""
    entry = results["models"].get("cifar_cnn", {}).get("dropout")
    if not entry:
        return ""
    n = len(next(iter(entry.values()))["runs"])
    seeds = ", ".join(map(str, range(n)))
    lines = [
        f"| style | test accuracy, mean ± std (sample, n = {n}) | runs (seeds {seeds}) |",
        "|---|---|---|",
    ]
    for style, v in entry.items():
        runs = ", ".join(f"{x:.4f}" for x in v["runs"])
        lines.append(f"| {style} | {v['mean']:.4f} ± {v['std']:.4f} | {runs} |")
    return "\n".join(lines)


def cost_table(results: dict) -> str:
    """Per model and batch size: torch's step, each JAX style's step as a ratio to torch's, the
    first step (compilation) and the peak resident memory of each style's process."""
    lines = [
        "| model | batch | torch step ms | functional / torch | nnx / torch | first step s "
        "(functional / nnx / torch) | peak RSS MB (functional / nnx / torch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["models"].items():
        cost = entry.get("cost", {})
        for batch in sorted({int(k.split("@")[1]) for k in cost}):
            c = {style: cost[f"{style}@{batch}"] for style in STYLES}
            torch_s = c["torch"]["step_s"]
            first = " / ".join(
                f"{c[s]['first_step_s']:.2f}" if s != "torch" else f"{c[s]['first_step_s']:.3f}"
                for s in ("functional", "nnx", "torch")
            )
            rss = " / ".join(f"{c[s]['peak_rss_mb']:.0f}" for s in ("functional", "nnx", "torch"))
            lines.append(
                f"| {name} | {batch} | {1e3 * torch_s:.1f} | "
                f"{c['functional']['step_s'] / torch_s:.2f} | {c['nnx']['step_s'] / torch_s:.2f} "
                f"| {first} | {rss} |"
            )
    return "\n".join(lines)


def tables(results: dict) -> str:
    """``table.md``: the three parts' tables, those measured."""
    out = []
    for title, render in (("Agreement (dropout off)", agreement_table),
                          ("Dropout on (cifar_cnn)", dropout_table),
                          ("Cost (fresh process per cell)", cost_table)):  # fmt: skip
        text = render(results)
        if text.count("\n") > 1:
            out.append(f"{title}:\n\n{text}")
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--cost-worker":
        name, channels, style, batch, steps = argv[1:6]
        print(json.dumps(cost_worker(name, int(channels), style, int(batch), int(steps))))
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "cifar_cnn", "resnet18"])
    parser.add_argument("--steps", type=int, default=200, help="agreement run length")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.02, help="agreement runs' learning rate")
    parser.add_argument("--seeds", type=int, default=3, help="dropout runs per style")
    parser.add_argument("--dropout-steps", type=int, default=600)
    parser.add_argument("--dropout-lr", type=float, default=0.05)
    parser.add_argument("--cost-batches", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--cost-steps", type=int, default=10)
    record.add_out_argument(parser, NAME)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=list(PARTS),
        choices=PARTS,
        help="what to measure (the others are kept from --out's results.json)",
    )
    parser.add_argument("--quick", action="store_true", help="cifar_cnn, tiny sizes (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.steps, args.seeds, args.dropout_steps = ["cifar_cnn"], 12, 2, 10
        args.cost_batches, args.cost_steps = [32], 3
    out = record.out_dir(args.out, NAME, args.quick)
    channels = 1  # the embedded digits are greyscale
    import cnn_jax

    cnn_jax.runtime.apply()  # the settings cnn_jax runs with (cnn-jax and fit apply them)

    # A run of some --parts updates those parts of an existing results.json and keeps the rest,
    # each part with the provenance of the run that measured it.
    previous = out / "results.json"
    results: dict[str, Any] = {"models": {}, "parts": {}}
    if set(args.parts) != set(PARTS) and previous.exists():
        results = record.load(previous)
        results.pop("provenance", None)
    measured = record.provenance(MODULE, argv)
    results["settings"] = results.get("settings", {})
    for part in args.parts:
        results["parts"][part] = measured
        results["settings"][part] = {
            "agreement": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr},
            "dropout": {"steps": args.dropout_steps, "batch_size": args.batch_size,
                        "lr": args.dropout_lr, "seeds": args.seeds, "rate": 0.5},
            "cost": {"batch_sizes": args.cost_batches, "steps": args.cost_steps},
        }[part]  # fmt: skip
    for name in args.models:
        print(f"== {name}", flush=True)
        entry: dict[str, Any] = results["models"].get(name, {})
        if "agreement" in args.parts:
            entry["agreement"] = agreement(name, channels, args.steps, args.batch_size, args.lr, 0)
        for pair, row in entry.get("agreement", {}).get("table", {}).items():
            print(f"  {pair:32s} loss rel diff {row['loss_rel_diff_at']}  params "
                  f"{row['final_params_rel_distance']:.2e}", flush=True)  # fmt: skip
        if name == "cifar_cnn" and "dropout" in args.parts:
            entry["dropout"] = dropout_accuracy(
                name, channels, args.dropout_steps, args.batch_size, args.dropout_lr,
                list(range(args.seeds)),
            )  # fmt: skip
            means = {s: round(v["mean"], 4) for s, v in entry["dropout"].items()}
            print(f"  dropout test accuracy (mean over seeds): {means}")
        if "cost" in args.parts:
            entry["cost"] = cost(name, channels, args.cost_batches, args.cost_steps)
        for key, value in entry.get("cost", {}).items():
            print(f"  cost {key}: {value}", flush=True)
        results["models"][name] = entry
    stored = record.write(out, results, tables, provenance=measured)
    if any(m.get("agreement") for m in stored["models"].values()):
        plot(stored, out)
    print(f"wrote {out}")
    return stored


if __name__ == "__main__":
    record.entry_point(main)
