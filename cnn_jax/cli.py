"""The ``cnn-jax`` command line: ``train``, ``evaluate``, ``prepare``, ``export``, ``summary``,
``models``.

cnn-jax train                                  # LeNet-5 on the embedded digits, ~a minute
cnn-jax train --dataset folder:~/photos/flowers --model resnet18 --image-size 128
cnn-jax prepare cifar10 --from cifar-10-python.tar.gz --data-dir ~/tfds   # no TensorFlow
cnn-jax train --dataset cifar10 --data-dir ~/tfds --model resnet18
cnn-jax train --model resnet18 --image-size 32 --epochs 5 --parallel sharded --devices 2
cnn-jax train --parallel sharded --coordinator-address 10.0.0.1:1234 --num-processes 2 \
    --process-id 0                             # and --process-id 1 on the second host
cnn-jax train --config my_config.py --set augment.flip=True --set early_stopping.patience=5
cnn-jax train --model resnet50 --init-from resnet50.pth --set init_exclude=fc \
    --set freeze=conv1,bn1,layer1,layer2       # fine-tune a pretrained network's new head
cnn-jax evaluate --workdir runs/lenet5-digits
cnn-jax export runs/resnet50-digits resnet50-digits.safetensors
cnn-jax summary resnet18 --input-shape 1,224,224,3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
import warnings

# The flags that set the config key of their name (argparse's dest: --batch-size -> batch_size).
_CONFIG_FLAGS = (
    "model",
    "dataset",
    "data_dir",
    "image_size",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "schedule",
    "seed",
    "workdir",
    "parallel",
    "devices",
    "compute_dtype",
    "init_from",
)


def _parser() -> argparse.ArgumentParser:
    from cnn_jax.models import list_models
    from cnn_jax.train.optim import OPTIMIZERS, SCHEDULES
    from cnn_jax.train.parallel import MODES
    from cnn_jax.train.step import COMPUTE_DTYPES

    # The first docstring line without its reST markup (``cnn-jax`` -> cnn-jax).
    parser = argparse.ArgumentParser(
        prog="cnn-jax", description=__doc__.split("\n")[0].replace("``", "")
    )
    _add_debug(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (defaults: lenet5 on the embedded digits)")
    t.add_argument("--config", help="a .py file with get_config() or a .json of overrides")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override, repeatable (e.g. augment.flip=True)",
    )
    shown = _defaults_shown()
    t.add_argument(
        "--model",
        choices=list_models(),
        metavar="NAME",
        help=shown("model", "the model (`cnn-jax models` lists them)"),
    )
    t.add_argument(
        "--dataset",
        help=shown(
            "dataset",
            "digits (embedded), folder:PATH (an image folder: one subfolder per class), or a "
            "prepared tfds dataset name (see `cnn-jax prepare`)",
        ),
    )
    t.add_argument("--data-dir", help=shown("data_dir", "tfds data directory"))
    t.add_argument("--image-size", type=int, help=shown("image_size", "resize images to N x N"))
    t.add_argument("--epochs", type=int, help=shown("epochs"))
    t.add_argument("--batch-size", type=int, help=shown("batch_size", "global batch size"))
    t.add_argument("--lr", type=float, help=shown("lr", "peak learning rate"))
    t.add_argument("--optimizer", choices=OPTIMIZERS, help=shown("optimizer"))
    t.add_argument("--schedule", choices=SCHEDULES, help=shown("schedule"))
    t.add_argument("--weight-decay", type=float, help=shown("weight_decay"))
    t.add_argument("--seed", type=int, help=shown("seed"))
    t.add_argument("--workdir", help=shown("workdir", "run directory"))
    t.add_argument(
        "--init-from",
        metavar="SOURCE",
        help=shown(
            "init_from",
            "initial weights: a run directory, a .pth / .pt / .safetensors state_dict, or "
            "torchvision:NAME[:WEIGHTS] (torch hub's cache); with --set init_exclude=fc for a "
            "new head",
        ),
    )
    t.add_argument("--parallel", choices=MODES, help=shown("parallel"))
    t.add_argument(
        "--compute-dtype",
        choices=COMPUTE_DTYPES,
        help=shown(
            "compute_dtype",
            "bfloat16: mixed precision (float32 parameters, optimiser state and BatchNorm "
            "statistics); for accelerators",
        ),
    )
    t.add_argument(
        "--devices",
        type=int,
        help=shown(
            "devices",
            "devices to use, with --parallel pmap or sharded; on a CPU-only machine, N fake CPU "
            "devices",
        ),
    )
    d = t.add_argument_group(
        "multi-process (one process per host; with --parallel sharded)",
        "Start the same command on every host. --distributed alone detects SLURM, Open MPI and "
        "TPU pods; otherwise give all three of the others.",
    )
    d.add_argument(
        "--distributed", action="store_true", help="call jax.distributed.initialize() first"
    )
    d.add_argument("--coordinator-address", metavar="HOST:PORT", help="process 0's address")
    d.add_argument("--num-processes", type=int, metavar="N")
    d.add_argument("--process-id", type=int, metavar="I", help="0 .. N-1")
    t.add_argument(
        "--restart",
        action="store_true",
        help="move the run already in --workdir aside (<workdir>.old-<time>) and start over",
    )

    _add_debug(t)
    e = sub.add_parser(
        "evaluate", help="re-evaluate a checkpoint of a run (reads only: changes nothing)"
    )
    e.add_argument("--workdir", required=True, help="the run's work directory")
    e.add_argument(
        "--split", default="test", choices=("train", "validation", "test"), help="(default: test)"
    )
    e.add_argument(
        "--checkpoint",
        default="best",
        type=_checkpoint_choice,
        metavar="{best,latest,STEP}",
        help="which checkpoint: the best by the run's early-stopping metric, the newest, or a "
        "step number (default: best)",
    )
    e.add_argument(
        "--data-dir", help="the tfds data directory, if the run's data moved (default: the run's)"
    )

    from cnn_jax.data.archives import FROM

    p = sub.add_parser(
        "prepare",
        help="write a tfds array_record dataset from its official files (no TensorFlow, no "
        "network)",
        description="Writes the tfds array_record dataset NAME from its official files, "
        "without TensorFlow or network; then train with --dataset NAME --data-dir D. "
        + "; ".join(f"{name}: --from {what}" for name, what in FROM.items()),
    )
    p.add_argument("name", choices=list(FROM), help="the dataset to prepare")
    p.add_argument("--from", dest="source", required=True, help="the archive or folder")
    p.add_argument("--data-dir", help="tfds data directory (default $TFDS_DATA_DIR)")
    p.add_argument("--name", dest="dataset_name", help="for folder: the dataset name to load")
    p.add_argument("--config", help="for imagenette / imagewoof: e.g. 320px-v2")
    p.add_argument("--labels", help="for imagenet2012: labels of a flat val/ folder")
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="for folder: the seed of the 80/10/10 split of a folder without split folders",
    )

    x = sub.add_parser(
        "export", help="write a run's best checkpoint as a torchvision-layout state_dict"
    )
    x.add_argument("workdir", help="the run directory")
    x.add_argument("out", help="OUT.safetensors (no torch needed) or OUT.pth")

    s = sub.add_parser("summary", help="print a model's layer table")
    s.add_argument(
        "model",
        choices=list_models(),
        metavar="NAME",
        help="the model (`cnn-jax models` lists them)",
    )
    s.add_argument("--num-classes", type=int, help="classes of the head (default: the model's own)")
    s.add_argument("--in-channels", type=int, help="input channels (default: the model's own)")
    s.add_argument("--input-shape", help="N,H,W,C (default: the model's own)")

    _add_debug(e)
    _add_debug(p)
    _add_debug(x)
    _add_debug(s)
    _add_debug(sub.add_parser("models", help="list the available models"))
    return parser


def _checkpoint_choice(text: str) -> str | int:
    """``evaluate --checkpoint``: best, latest or a step number."""
    if text in ("best", "latest"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not best, latest or a step number")


def _add_debug(parser: argparse.ArgumentParser, **default) -> None:
    """``--debug`` before or after the subcommand. A subcommand's flag has no default of its own
    (argparse.SUPPRESS), else it would reset the value given before the subcommand."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default.get("default", argparse.SUPPRESS),
        help="show the traceback of a failure (also: CNN_JAX_DEBUG=1); the exit code stays",
    )


def _defaults_shown():
    """``shown(key, text)``: a train flag's help with the config default it overrides."""
    from cnn_jax.train.run.config import default_config

    defaults = default_config()
    described = {
        "data_dir": "$TFDS_DATA_DIR or ~/tensorflow_datasets",
        "image_size": "the model's own input size, else the data's",
        "workdir": "runs/<model>-<dataset>",
        "devices": "every local device",
        "init_from": "none: the model's own initialisation",
    }

    def shown(key: str, text: str = "") -> str:
        default = described.get(key, defaults[key])
        return f"{text} (default: {default})".strip()

    return shown


def _config_from_args(args):
    from cnn_jax.train.run.config import default_config, load_config_file, override

    config = load_config_file(args.config) if args.config else default_config()
    flags = {key: getattr(args, key) for key in _CONFIG_FLAGS if getattr(args, key) is not None}
    override(config, flags)
    override(config, args.set)
    return config


def _start_distributed(args) -> None:
    """``jax.distributed.initialize`` from the flags (before JAX does any work); nothing when
    none of them is given.

    Raises:
      ConfigError: only some of coordinator address / number of processes / process id."""
    given = {
        "coordinator_address": args.coordinator_address,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    named = {k: v for k, v in given.items() if v is not None}
    if not (args.distributed or named):
        return
    if named and len(named) < len(given):
        from cnn_jax.errors import ConfigError

        missing = ", ".join("--" + k.replace("_", "-") for k in given if k not in named)
        raise ConfigError(f"multi-process: also give {missing} (or only --distributed)")
    import jax

    jax.distributed.initialize(**named)


def _use_fake_cpu_devices(n: int | None) -> None:
    """N fake CPU devices when there is no accelerator; must run before JAX starts."""
    if not n or n < 2:
        return
    import jax

    # Only affects the CPU platform; on accelerators --devices picks how many real ones to use.
    jax.config.update("jax_num_cpu_devices", n)


class _Terminated(KeyboardInterrupt):
    """SIGTERM before training started."""


def _raise_terminated(signum, frame):
    raise _Terminated


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"cnn-jax: warning: {message}", file=file or sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the exit code: 0 done, 1 the run failed, 2 bad usage or
    settings, 130 / 143 stopped by SIGINT / SIGTERM. Expected failures print one line;
    ``--debug`` or ``CNN_JAX_DEBUG=1`` prints their traceback first (same exit code)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = _parser()
    args = parser.parse_args(argv)
    from cnn_jax import runtime

    try:
        runtime.apply()  # before JAX starts: the XLA flag reaches every program of the command
    except ValueError as err:  # a runtime setting from the environment (CNN_JAX_DISPATCH)
        print(f"cnn-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    debug = args.debug or os.environ.get("CNN_JAX_DEBUG", "") not in ("", "0")
    previous_term = None
    with contextlib.suppress(ValueError):  # not the main thread
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # console_main set none
            previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    show = warnings.showwarning
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        return _run(args)
    except _Terminated:
        print(f"cnn-jax {args.command}: stopped by SIGTERM", file=sys.stderr)
        return 143
    except KeyboardInterrupt as stop:
        from cnn_jax.train.run.guards import TrainingInterrupted

        if debug:
            traceback.print_exc()
        if isinstance(stop, TrainingInterrupted):
            print(stop, file=sys.stderr)
            return 143 if stop.signal == "SIGTERM" else 130
        print(f"cnn-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:  # the traceback, then the same line and exit code as without --debug
            traceback.print_exc()
        from cnn_jax.errors import CnnJaxError

        if isinstance(err, CnnJaxError):
            print(f"cnn-jax {args.command}: error: {err}", file=sys.stderr)
            return err.exit_code
        if isinstance(err, ValueError | TypeError):  # bad arguments caught by a library check
            print(f"cnn-jax {args.command}: error: {err}", file=sys.stderr)
            return 2
        if isinstance(err, OSError):
            print(f"cnn-jax {args.command}: error: {err}", file=sys.stderr)
            return 1
        first = str(err).splitlines()[0] if str(err) else ""
        print(
            f"cnn-jax {args.command}: internal error: {type(err).__name__}: {first} (re-run "
            "with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.showwarning = show
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _run(args) -> int:
    if args.command == "train":
        config = _config_from_args(args)
        distributed = args.distributed or args.coordinator_address or args.num_processes
        if not distributed:  # --devices counts global devices when there are several processes
            _use_fake_cpu_devices(config.devices)
        _start_distributed(args)
        from cnn_jax.train.run.loop import fit

        fit(config, restart=args.restart, hard_exit=True)
    elif args.command == "evaluate":
        from cnn_jax.train.run.results import evaluate_workdir

        evaluate_workdir(
            args.workdir, args.split, checkpoint=args.checkpoint, data_dir=args.data_dir
        )
    elif args.command == "prepare":
        from cnn_jax.data.archives import prepare

        done = prepare(
            args.name,
            args.source,
            args.data_dir,
            dataset_name=args.dataset_name,
            config=args.config,
            labels=args.labels,
            split_seed=args.split_seed,
        )
        counts = ", ".join(f"{n:,} {split}" for split, n in done["splits"].items())
        print(
            f"{done['dataset']}: {counts} in {done['path']}\ntrain on it with: cnn-jax train "
            f"--dataset {done['dataset']} --data-dir {done['data_dir']}"
        )
    elif args.command == "export":
        from cnn_jax.train.run.results import export_workdir

        export_workdir(args.workdir, args.out)
    elif args.command == "summary":
        from cnn_jax.inspect import summary
        from cnn_jax.models import create

        given = {"num_classes": args.num_classes, "in_channels": args.in_channels}
        model = create(args.model, **{k: v for k, v in given.items() if v is not None})
        shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
        print(_summary_header(model, args.model, given, shape))
        print(summary(model, shape))
    elif args.command == "models":
        from cnn_jax.models import list_models

        print("\n".join(list_models()))
    return 0


def _summary_header(model, name: str, given: dict, shape) -> str:
    """What the table describes: the head's classes, the input channels and shape, each marked
    when it is the model's own default (the README's published figures are those)."""
    parts = []
    for key, value in given.items():
        actual = getattr(model, key, None)
        if actual is not None:
            parts.append(f"{key}={actual}" + ("" if value is not None else " (default)"))
    shape = shape or tuple(model.example_input_shape())
    return f"{name}: {', '.join(parts)}, input {'x'.join(map(str, shape))} (NHWC)"


def _exit_now(signum, frame):
    name = signal.Signals(signum).name
    print(
        f"cnn-jax: stopped by {name}; finished checkpoints are intact (re-run the same command "
        "to continue)",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + signum)


def console_main() -> None:
    """The ``cnn-jax`` entry point.

    Outside the training loop (start-up, the final evaluation) SIGINT / SIGTERM exit at once
    with ``os._exit`` and one line: raising KeyboardInterrupt there was seen to be swallowed by
    JAX's garbage-collection callback (the run went on) or to end in a segfault at interpreter
    shutdown, and every file a run writes is written atomically, so stopping anywhere is as safe
    as ``kill -9``. Inside the loop the first signal saves a checkpoint (see
    :func:`cnn_jax.train.fit`).

    First of all the process may re-execute itself once, with glibc's huge pages tunable or,
    asked for, TCMalloc preloaded (:func:`cnn_jax.runtime.relaunch`; same PID, same
    arguments)."""
    from cnn_jax import runtime

    runtime.relaunch()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _exit_now)
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
