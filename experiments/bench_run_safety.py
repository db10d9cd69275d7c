"""What do the loop's per-step safety checks cost?

The loop reads each step's ``finite`` / ``invalid_labels`` flags two steps behind the step it
dispatches (``loop.RUN_AHEAD = 2``), which also bounds how far the host runs ahead. Without that
bound the host would dispatch a whole epoch and read the flags at its end. This script trains the
same runs both ways, interleaved, and reports the training throughput (images/s over the training
steps of epochs 2 and later, so compilation is excluded; the median over epochs) and its ratio.

    python experiments/bench_run_safety.py --models lenet5 cifar_cnn --epochs 5 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import jax

from cnn_jax import train as T
from cnn_jax.train.run import loop


def _throughput(model: str, epochs: int, batch_size: int, run_ahead: int, workdir: Path) -> float:
    loop.RUN_AHEAD = run_ahead
    config = T.default_config()
    config.update(
        dict(model=model, epochs=epochs, batch_size=batch_size, workdir=str(workdir), lr=1e-3)
    )
    if model != "lenet5":
        config.image_size = 32
    loop.fit(config, log=lambda *_: None)
    records = T.RunDir(workdir).read_history()[1:]  # epoch 1 includes compilation
    return statistics.median(r["images_per_s"] for r in records)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "cifar_cnn"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {_cpu_name()}, jax {jax.__version__}")
    print("| model | checked (RUN_AHEAD=2) img/s | unbounded img/s | ratio checked/unbounded |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            rates: dict[str, list[float]] = {"checked": [], "unbounded": []}
            for r in range(args.repeats):
                for name, ahead in (("checked", 2), ("unbounded", 10**9)):
                    workdir = Path(tmp) / f"{model}-{name}-{r}"
                    rates[name].append(
                        _throughput(model, args.epochs, args.batch_size, ahead, workdir)
                    )
            checked = statistics.median(rates["checked"])
            unbounded = statistics.median(rates["unbounded"])
            print(f"| {model} | {checked:,.0f} | {unbounded:,.0f} | {checked / unbounded:.3f} |")


if __name__ == "__main__":
    main()
