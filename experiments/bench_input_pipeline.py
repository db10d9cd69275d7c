"""Question: can the input pipeline feed an accelerator from image files, and does it ever limit
the training step rate?

Three parts (``--parts``, default all), each kept in ``results.json`` with the provenance of the
run that measured it (re-measuring one part keeps the others):

* ``decode``: JPEG decode + random-resized-crop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip
  to 224x224 uint8 batches, images/s with 1, 2 and 4 worker processes — cnn_jax (a streamed
  ``folder:`` split read by ``data.batches``: grain ``mp_prefetch`` workers, Pillow, JPEGs
  decoded at a reduced DCT scale where the crop allows it, and also with that off) side by
  side with torchvision's ``ImageFolder`` + ``DataLoader`` with its PIL transforms
  (``RandomResizedCrop(224)``, ``RandomHorizontalFlip()``, ``PILToTensor()``) and the same
  workers, on the same folder. Each row times ``--batches`` batches after ``2 x workers``
  warm-up batches; the start-up (first batch) is reported apart. From the best per-worker rate
  it computes the cores a ResNet-50 step on one A100 (about 2,500 images/s) needs.
* ``memory``: peak memory of ``cnn-jax train`` on a streamed image folder of
  ``--memory-images`` images at 128x128 (6,000: ~300 MB decoded) against the same command on a
  200-image folder run for as many train steps (more epochs), sampled every 0.1 s: RSS of the
  training process, RSS of its largest worker process, PSS of the whole process tree.
* ``host-path``: batches per second through the loop's host path for in-memory splits (grain
  reading threads, then ``jax.device_put``) against the hand-written generator it replaced,
  the on-device gather, and the train step (the digits at 32x32; a CIFAR-10-sized split).

    python -m experiments.bench_input_pipeline                 # everything
    python -m experiments.bench_input_pipeline --parts decode --folder ~/imagenette2-320/train
    python -m experiments.bench_input_pipeline --quick         # seconds: what the tests run

The decode part generates ``--images`` photo-sized JPEGs (500x375, quality 90, like ImageNet's
average) in a temporary folder unless ``--folder`` names one (a class-per-subfolder tree).
torchvision reads every file of the folder, cnn_jax its train split (80% of each class): the
same kind of files, so images/s compare.
Writes ``results.json`` and ``table.md`` to ``--out`` (default
``experiments/results/bench_input_pipeline``; ``--quick``: a temporary folder, and never a folder
under ``experiments/results/``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import math
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import record

NAME = "bench_input_pipeline"
MODULE = f"experiments.{NAME}"
# Libraries the decode part's numbers depend on, besides those every results file records.
PIPELINE_PACKAGES = ("cnn-jax", "grain", "pillow", "torchvision")
# Images/s a ResNet-50 training step takes on one A100 (mixed precision, the common figure).
A100_RESNET50_IMAGES_PER_S = 2500
PARTS = ("decode", "memory", "host-path")


# ---------------------------------------------------------------------------------------------
# decode: cnn_jax's streamed folder against torchvision's ImageFolder + DataLoader
# ---------------------------------------------------------------------------------------------


def make_folder(root: Path, images: int, size: tuple[int, int], classes: int = 10) -> Path:
    """``images`` random photo-like JPEGs (quality 90) in ``classes`` class folders."""
    from cnn_jax.testing import datasets as D

    rng = np.random.default_rng(0)
    for i in range(images):
        path = root / f"class{i % classes}" / f"{i:06d}.jpg"
        if not path.exists():
            D.save_image(path, D.random_image(rng, *size), quality=90)
    return root


def _timed(iterator, warmup: int, batches: int, batch: int) -> dict[str, float]:
    """Start-up (to the first batch), then images/s over ``batches`` batches after
    ``warmup`` more."""
    start = time.perf_counter()
    next(iterator)
    startup = time.perf_counter() - start
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return {"startup_s": round(startup, 3), "images_per_s": round(batches * batch / seconds, 1)}


def cnn_jax_rate(folder: Path, workers: int, args, reduced=True, threads=False) -> dict:
    """One epoch's batches of a streamed folder split (an epoch long enough for the timing:
    a new epoch would start new worker processes)."""
    import warnings

    from cnn_jax import data
    from cnn_jax.data import images as imagelib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DatasetWarning)
        split = data.load(
            f"folder:{folder}",
            image_size=224,
            augment=data.HostAugment(scale=(0.08, 1.0), flip=True),
            workers=0 if threads else workers,
        )["train"]
    if not reduced:  # full-size decodes, as torchvision's loader does them
        split = _replace_spec(split, imagelib.ImageSpec(**{**vars(split.spec), "reduced": False}))
    _check_epoch(len(split), workers, args)
    iterator = data.batches(
        split, args.batch, shuffle=True, seed=0, epoch=0, normalize=False, threads=workers
    )
    try:
        return _timed(iter(iterator), 2 * workers, args.batches, args.batch)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def _check_epoch(examples: int, workers: int, args) -> None:
    need = (1 + 2 * workers + args.batches) * args.batch
    if examples < need:
        raise SystemExit(
            f"decode: {workers} worker(s) need {need} training images in one epoch, the folder "
            f"has {examples}: give more --images (or a larger --folder), or fewer --batches"
        )


def _replace_spec(split, spec):
    import dataclasses

    return dataclasses.replace(split, spec=spec)


def torchvision_rate(folder: Path, workers: int, args) -> dict[str, float]:
    from cnn_jax.testing.torch_models import torchvision_models

    if torchvision_models() is None:
        raise SystemExit("the decode part needs torchvision (pip install torchvision)")
    import torch
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    _check_epoch(len(dataset), workers, args)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, num_workers=workers, drop_last=True
    )
    return _timed(iter(loader), 2 * workers, args.batches, args.batch)


def decode_part(args) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            folder = Path(args.folder).expanduser()
        else:
            folder = make_folder(Path(tmp) / "jpegs", args.images, args.image_hw)
        files = sum(1 for _ in folder.rglob("*.jp*g"))
        print(f"decode: {files} JPEGs in {folder}, batch {args.batch}", flush=True)
        # Before any timing: the most workers need the most images (cnn_jax reads the train
        # split, about 80% of each class; each row checks its exact count again).
        _check_epoch(files * 8 // 10, max(args.workers), args)
        rows = []
        for workers in args.workers:
            row = {"workers": workers}
            for name, run in (
                ("cnn_jax", lambda w: cnn_jax_rate(folder, w, args)),
                ("cnn_jax_full_decode", lambda w: cnn_jax_rate(folder, w, args, reduced=False)),
                ("cnn_jax_threads", lambda w: cnn_jax_rate(folder, w, args, threads=True)),
                ("torchvision", lambda w: torchvision_rate(folder, w, args)),
            ):
                row[name] = run(workers)
                print(f"  {workers} worker(s) {name:20s} {row[name]}", flush=True)
            rows.append(row)
    per_worker = max(r["cnn_jax"]["images_per_s"] / r["workers"] for r in rows)
    return {
        "folder": str(args.folder)
        if args.folder
        else f"{args.images} generated JPEGs {args.image_hw[1]}x{args.image_hw[0]}",
        "images": files,
        "batch": args.batch,
        "timed_batches": args.batches,
        "rows": rows,
        "a100_resnet50": {
            "images_per_s_needed": A100_RESNET50_IMAGES_PER_S,
            "cnn_jax_images_per_s_per_worker": round(per_worker, 1),
            "workers_needed": math.ceil(A100_RESNET50_IMAGES_PER_S / per_worker),
        },
    }


# ---------------------------------------------------------------------------------------------
# memory: peak RSS of `cnn-jax train` on a streamed folder, large against small
# ---------------------------------------------------------------------------------------------


def _memory(pid: int) -> tuple[int, int, int]:
    """(RSS of the process, the largest RSS among its descendants, PSS of the process and its
    descendants) in bytes.

    RSS summed over a tree of forked workers counts the pages each worker still shares with
    its parent once per worker; PSS (proportional set size) counts a page shared by k processes
    as 1/k in each, so its sum is the memory the tree holds."""
    import psutil

    try:
        proc = psutil.Process(pid)
        own = proc.memory_full_info()
        children = []
        for child in proc.children(recursive=True):
            # A worker that ended between listing and reading is skipped.
            with contextlib.suppress(psutil.Error):
                children.append(child.memory_full_info())
    except psutil.Error:
        return 0, 0, 0
    worker = max((c.rss for c in children), default=0)
    return own.rss, worker, own.pss + sum(c.pss for c in children)


def _train_steps(images: int, args) -> int:
    """About the train steps of one epoch on a generated two-class folder of ``images``
    images (no split folders: the stratified split keeps about 80% of each class; the last
    partial batch is dropped); the runs report the exact count."""
    return (images // 2 * 8 // 10 * 2) // args.memory_batch


def train_peak_memory(folder: Path, workdir: Path, epochs: int, args) -> dict[str, Any]:
    command = [
        sys.executable, "-c", "from cnn_jax.cli import console_main; console_main()", "train",
        "--dataset", f"folder:{folder}", "--model", "cifar_cnn", "--image-size",
        str(args.memory_size), "--epochs", str(epochs), "--batch-size", str(args.memory_batch),
        "--workdir", str(workdir),
        "--set", "data_stream=always", "--set", f"data_workers={args.memory_workers}",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0, 0, 0]

    def sample():
        while proc.poll() is None:
            peak[:] = map(max, peak, _memory(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"cnn-jax train failed:\n{output[-3000:]}")
    per_epoch = re.search(r"(\d+) steps/epoch", output)
    return {
        "command": shlex.join(["cnn-jax", *command[3:]]),
        "epochs": epochs,
        "steps": epochs * int(per_epoch.group(1)) if per_epoch else None,
        "peak_rss_mb": round(peak[0] / 2**20, 1),
        "peak_worker_rss_mb": round(peak[1] / 2**20, 1),
        "peak_tree_pss_mb": round(peak[2] / 2**20, 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def memory_part(args) -> dict[str, Any]:
    """The two runs take (about) the same number of train steps, the small folder over more
    epochs: a run of a few steps would end before its worker processes had grown to their
    working size, and its peaks would not be comparable."""
    from cnn_jax.testing import datasets as D

    size = (args.memory_size, args.memory_size)
    steps = _train_steps(args.memory_images, args)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, n in (("small", args.memory_small), ("large", args.memory_images)):
            folder = D.image_folder(
                Path(tmp) / f"f{n}", classes=("a", "b"), per_class=n // 2, size=size
            )
            decoded = n * size[0] * size[1] * 3
            epochs = math.ceil(steps / max(_train_steps(n, args), 1))
            out[str(n)] = {"decoded_mb": round(decoded / 2**20, 1)}
            out[str(n)].update(train_peak_memory(folder, Path(tmp) / f"run_{label}", epochs, args))
            print(f"memory: {n} images: {out[str(n)]}", flush=True)
    small, large = out[str(args.memory_small)], out[str(args.memory_images)]
    return {
        "runs": out,
        **{
            f"{key}_difference_mb": round(large[f"peak_{key}_mb"] - small[f"peak_{key}_mb"], 1)
            for key in ("rss", "worker_rss", "tree_pss")
        },
    }


# ---------------------------------------------------------------------------------------------
# host-path: in-memory splits through the loop's host path, the on-device gather, the step
# ---------------------------------------------------------------------------------------------


def rate(fn, seconds: float) -> float:
    """Calls per second of fn() over about ``seconds`` (after one warm-up call)."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def host_path_part(args) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax

    from cnn_jax import data
    from cnn_jax import train as T
    from cnn_jax.models import create

    def epochs_rate(make_iterator, split):
        epoch = [0]

        def one_epoch():
            batches = list(make_iterator(epoch[0]))  # all put (asynchronously) before the wait
            jax.block_until_ready(batches[-1])
            epoch[0] += 1

        return rate(one_epoch, args.seconds) * data.num_batches(len(split), args.batch, True)

    def grain_rate(split):
        return epochs_rate(
            lambda e: map(
                jax.device_put,
                data.batches(split, args.batch, shuffle=True, seed=0, epoch=e, normalize=False),
            ),
            split,
        )

    def hand_written_rate(split):
        def epoch(e):
            idx, _ = data.batch_indices(
                len(split), args.batch, shuffle=True, seed=0, epoch=e, drop_remainder=True
            )
            host = ({"image": split.images[r], "label": split.labels[r]} for r in idx)
            queue = collections.deque(jax.device_put(b) for b in itertools.islice(host, 2))
            while queue:
                yield queue.popleft()
                queue.extend(jax.device_put(b) for b in itertools.islice(host, 1))

        return epochs_rate(epoch, split)

    def device_rate(split):
        on_device = data.to_device(split)
        idx, _ = data.batch_indices(
            len(split), args.batch, shuffle=True, seed=0, epoch=0, drop_remainder=True
        )
        gather = jax.jit(data.gather)
        rows = [jnp.asarray(r) for r in idx]
        i = [0]

        def one():
            out = gather(on_device, rows[i[0] % len(rows)])
            i[0] += 1
            jax.block_until_ready(out)

        return rate(one, args.seconds)

    def step_rate(split, model_name):
        h, w, c = split.image_shape
        model = create(model_name, num_classes=split.num_classes, in_channels=c)
        state = T.create_train_state(
            model, optax.adam(1e-3), jax.random.PRNGKey(0), jnp.zeros((1, h, w, c))
        )
        step = jax.jit(T.train_step, donate_argnums=0)
        batch = jax.device_put(next(data.batches(split, args.batch, shuffle=True)))
        holder = [state]

        def one():
            holder[0], metrics = step(holder[0], batch)
            jax.block_until_ready(metrics)

        return rate(one, args.seconds)

    rng = np.random.default_rng(0)
    n = 2000 if args.quick else 50_000
    cifar = data.from_arrays(
        "cifar10-sized",
        {
            "train": (
                rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                rng.integers(0, 10, n),
            )
        },
        num_classes=10,
    )["train"]
    cases = [
        ("digits 32x32", data.load("digits", image_size=32)["train"], "lenet5"),
        (f"cifar10-sized ({n:,})", cifar, "cifar_cnn"),
    ]
    rows = []
    for name, split, model_name in cases:
        row = {
            "dataset": name,
            "model": model_name,
            "grain_batches_per_s": round(grain_rate(split), 1),
            "hand_written_batches_per_s": round(hand_written_rate(split), 1),
            "device_gather_per_s": round(device_rate(split), 1),
            "train_steps_per_s": round(step_rate(split, model_name), 2),
        }
        print(f"host-path: {row}", flush=True)
        rows.append(row)
    return {"batch": args.batch, "device": jax.devices()[0].device_kind, "rows": rows}


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    """What :func:`experiments.record.versions` records, and the input pipeline's libraries."""
    from importlib import metadata

    out = record.versions()
    for package in PIPELINE_PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def measured_by(prov: dict[str, Any]) -> str:
    """How a part was measured: its command, machine, commit and the pipeline's libraries."""
    from experiments.report import machine, when

    v = prov["versions"]
    return f"`{prov['command']}` on a {machine(prov, torch=True)} ({when(prov)}); " + ", ".join(
        f"{k} {v[k]}" for k in PIPELINE_PACKAGES if v.get(k)
    )


def tables(results: dict[str, Any]) -> str:
    """``table.md`` (and experiments/README.md's "Input pipeline" block): the parts measured,
    each with the run that measured it."""
    lines = []
    parts = results["parts"]
    if "decode" in parts:
        d = results["decode"]
        lines += [
            f"### decode: JPEG -> random-resized-crop + flip -> 224x224 uint8, batch {d['batch']}",
            "",
            f"{measured_by(parts['decode'])}; {d['images']} JPEGs ({d['folder']})",
            "",
            "| workers | cnn_jax img/s | cnn_jax, full-size decode | cnn_jax, threads not "
            "processes | torchvision img/s | cnn_jax / torchvision | start-up s (cnn_jax / "
            "torchvision) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in d["rows"]:
            ours, full, theirs = r["cnn_jax"], r["cnn_jax_full_decode"], r["torchvision"]
            lines.append(
                f"| {r['workers']} | {ours['images_per_s']:,.0f} | {full['images_per_s']:,.0f} "
                f"| {r['cnn_jax_threads']['images_per_s']:,.0f} "
                f"| {theirs['images_per_s']:,.0f} | "
                f"{ours['images_per_s'] / theirs['images_per_s']:.2f} | "
                f"{ours['startup_s']:.1f} / {theirs['startup_s']:.1f} |"
            )
        a = d["a100_resnet50"]
        lines += [
            "",
            f"A ResNet-50 step on one A100 takes ~{a['images_per_s_needed']:,} img/s: at "
            f"{a['cnn_jax_images_per_s_per_worker']:,.0f} img/s per worker process that is "
            f"{a['workers_needed']} worker processes (cores).",
            "",
        ]
    if "memory" in parts:
        m = results["memory"]
        lines += [
            "### memory: peak memory of `cnn-jax train` on a streamed folder",
            "",
            measured_by(parts["memory"]),
            "",
            "| images | decoded MB | epochs | train steps | peak RSS MB (training process) | "
            "peak RSS MB (largest worker) | peak PSS MB (process tree) | wall s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, r in m["runs"].items():
            lines.append(
                f"| {int(n):,} | {r['decoded_mb']:,.0f} | {r['epochs']} | {r['steps']} | "
                f"{r['peak_rss_mb']:,.0f} | {r['peak_worker_rss_mb']:,.0f} | "
                f"{r['peak_tree_pss_mb']:,.0f} | {r['wall_s']:.0f} |"
            )
        lines += [
            "",
            f"Large minus small: {m['rss_difference_mb']} MB (training process), "
            f"{m['worker_rss_difference_mb']} MB (largest worker), "
            f"{m['tree_pss_difference_mb']} MB (process tree, PSS). Command: "
            f"`{next(iter(m['runs'].values()))['command']}` (folder and epochs changed).",
            "",
        ]
    if "host-path" in parts:
        h = results["host-path"]
        lines += [
            f"### host-path: in-memory splits, batch {h['batch']}, {h['device']}",
            "",
            measured_by(parts["host-path"]),
            "",
            "| dataset | grain (the loop's host path) | hand-written pipeline it replaced | "
            "on-device gathers | train steps/s |",
            "|---|---|---|---|---|",
        ]
        for r in h["rows"]:
            lines.append(
                f"| {r['dataset']} ({r['model']}) | {r['grain_batches_per_s']:,.0f} | "
                f"{r['hand_written_batches_per_s']:,.0f} | {r['device_gather_per_s']:,.0f} | "
                f"{r['train_steps_per_s']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to measure (the others are kept from --out's results.json)",
    )
    parser.add_argument("--quick", action="store_true", help="seconds; writes to a temp folder")
    record.add_out_argument(parser, NAME)
    parser.add_argument("--folder", help="decode: an existing class-per-subfolder image tree")
    parser.add_argument("--images", type=int, default=4000, help="decode: JPEGs to generate")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="decode: batches timed")
    parser.add_argument("--memory-images", type=int, default=6000)
    parser.add_argument("--memory-small", type=int, default=200)
    parser.add_argument("--memory-size", type=int, default=128)
    parser.add_argument("--memory-workers", type=int, default=2, help="0: threads")
    parser.add_argument("--memory-batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="host-path: per rate")
    args = parser.parse_args(argv)
    args.image_hw = (375, 500)
    if args.quick:
        # A --quick run's numbers are a smoke test's: not even an explicit --out may put them
        # among the results the READMEs quote.
        if args.out is not None:
            given = args.out.resolve()
            if record.RESULTS.resolve() in (given, *given.parents):
                parser.error(
                    f"--quick numbers are not results: give an --out outside {record.RESULTS}"
                )
        # One worker process per variant (each start-up imports JAX), threads for the runs.
        args.images, args.image_hw, args.workers = 80, (96, 128), [1]
        args.batch, args.batches, args.seconds = 8, 3, 0.3
        args.memory_images, args.memory_small, args.memory_size = 120, 40, 32
        args.memory_workers, args.memory_batch = 0, 8
    out = record.out_dir(args.out, NAME, args.quick)

    # A run of some --parts updates those parts of an existing results.json and keeps the rest,
    # each part with the provenance of the run that measured it.
    previous = out / "results.json"
    results: dict[str, Any] = {"parts": {}}
    if set(args.parts) != set(PARTS) and previous.exists():
        results = record.load(previous)
        results.pop("provenance", None)
    measured = record.provenance(MODULE, argv, versions=versions())
    run = {"decode": decode_part, "memory": memory_part, "host-path": host_path_part}
    for part in args.parts:
        results[part] = run[part](args)
        results["parts"][part] = measured
        # Written after each part, so that a part that fails keeps those measured before it.
        stored = record.write(out, results, tables, provenance=measured)
    print(f"wrote {out / 'results.json'} and {out / 'table.md'}")
    return stored


if __name__ == "__main__":
    record.entry_point(main)
