"""Run configuration: an ``ml_collections.ConfigDict`` with defaults, a config file, and dotted
overrides (``augment.flip=True``)."""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections

from cnn_jax.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
    """The defaults: LeNet-5 on the embedded digits (resized to 32×32), Adam, cosine schedule."""
    c = ml_collections.ConfigDict()
    c.model = "lenet5"
    c.dataset = "digits"
    c.data_dir = ""  # '' = tfds default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.image_size = 0  # 0 = the model's default input size if it has a fixed one, else native
    c.epochs = 30
    c.batch_size = 64
    c.eval_batch_size = 256
    c.optimizer = "adam"
    c.lr = 2e-3
    c.momentum = 0.9
    c.weight_decay = 0.0
    c.clip_norm = 0.0  # 0 = off
    c.schedule = "cosine"
    c.warmup_epochs = 0
    c.step_size_epochs = 10  # the 'step' schedule
    c.gamma = 0.1
    c.l1 = 0.0
    c.l2 = 0.0
    c.label_smoothing = 0.0
    c.freeze = ""  # comma-separated parameter prefixes not to train, e.g. 'features'
    # Transfer learning: the workdir of a finished run whose best checkpoint initialises this
    # run's parameters and BatchNorm statistics (all of them but those under `init_exclude`
    # prefixes, e.g. the classifier head, which keep their fresh initialisation).
    c.init_from = ""
    c.init_exclude = ""
    c.lr_multipliers = ""  # 'features=0.1,layer1=0.5'
    c.augment = ml_collections.ConfigDict(
        {
            "crop_padding": 0,
            "translate": 0,
            "flip": False,
            "brightness": 0.0,
            "contrast": 0.0,
            "cutout": 0,
            # On the host, from each full-size image, in the reading processes (the dataset is
            # then streamed): torchvision's RandomResizedCrop with this minimum area fraction
            # (0 = off; its ImageNet recipe: 0.08) and ColorJitter's brightness = contrast =
            # saturation strength (0 = off; 0.4 in the classic ImageNet recipes).
            "resized_crop": 0.0,
            "color_jitter": 0.0,
        }
    )
    c.early_stopping = ml_collections.ConfigDict(
        {"metric": "val_accuracy", "mode": "max", "patience": 0, "min_delta": 0.0}
    )
    c.seed = 0
    c.workdir = ""  # '' = runs/<model>-<dataset>
    c.parallel = "none"  # none | pmap | sharded
    c.devices = 0  # 0 = every local device
    c.keep_checkpoints = 3
    c.data_on_device = True  # keep the train split on the accelerator (up to 2 GiB; not pmap)
    # auto: stream a dataset from its files when its decoded train split exceeds 2 GiB;
    # always / never. Streaming changes memory use only, never the batches.
    c.data_stream = "auto"
    c.data_workers = -1  # processes decoding a streamed dataset; -1 = one per core (max 16)
    # BatchNorm layers under a `freeze` prefix run in inference mode (running statistics, not
    # updated), as Keras does; True makes them normalise with batch statistics and update them.
    c.frozen_batch_norm_trains = False
    # 'bfloat16': mixed precision (bfloat16 forward/backward; float32 parameters, optimiser state,
    # BatchNorm statistics and loss). For accelerators; on a CPU it is slower.
    c.compute_dtype = "float32"
    return c


# Settings that do not change what a run computes: a resumed run may change them.
NON_COMPUTING_KEYS = (
    "workdir",
    "data_dir",
    "keep_checkpoints",
    "data_on_device",
    "data_stream",
    "data_workers",
)
# Schedules whose learning rate at a step does not depend on the run's length: with these,
# `epochs` may grow or shrink between runs in one workdir (train longer) without changing any step.
LENGTH_FREE_SCHEDULES = ("constant", "step")
EARLY_STOPPING_METRICS = (
    "val_loss",
    "val_accuracy",
    "val_top5_accuracy",
    "train_loss",
    "train_accuracy",
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every value of a run config against its valid range or names, before any work.

    Raises:
      ConfigError: naming the key, the value and what is valid.
    """
    from cnn_jax.models import list_models
    from cnn_jax.train.optim import OPTIMIZERS, SCHEDULES
    from cnn_jax.train.step import COMPUTE_DTYPES

    def need(ok: bool, key: str, valid: str) -> None:
        if not ok:
            value = config
            for part in key.split("."):
                value = value[part]
            raise ConfigError(f"{key}={value!r} is invalid: {valid}")

    c = config
    need(c.model in list_models(), "model", "one of " + ", ".join(list_models()))
    need(c.optimizer in OPTIMIZERS, "optimizer", "one of " + ", ".join(OPTIMIZERS))
    need(c.schedule in SCHEDULES, "schedule", "one of " + ", ".join(SCHEDULES))
    need(c.parallel in ("none", "pmap", "sharded"), "parallel", "one of none, pmap, sharded")
    need(c.compute_dtype in COMPUTE_DTYPES, "compute_dtype", "one of " + ", ".join(COMPUTE_DTYPES))
    for key in ("epochs", "batch_size", "eval_batch_size", "keep_checkpoints", "step_size_epochs"):
        need(c[key] >= 1, key, "must be >= 1")
    for key in ("image_size", "devices", "warmup_epochs", "seed"):
        need(c[key] >= 0, key, "must be >= 0")
    need(c.lr >= 0, "lr", "the learning rate must be >= 0")
    need(0 <= c.momentum < 1, "momentum", "must be in [0, 1)")
    need(0 <= c.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
    need(c.gamma > 0, "gamma", "must be > 0")
    for key in ("weight_decay", "clip_norm", "l1", "l2"):
        need(c[key] >= 0, key, "must be >= 0 (0 = off)")
    need(
        c.schedule != "warmup_cosine" or c.warmup_epochs < c.epochs,
        "warmup_epochs",
        f"must be < epochs ({c.epochs}) for warmup_cosine",
    )
    a = c.augment
    for key in ("crop_padding", "translate", "cutout"):
        need(a[key] >= 0, f"augment.{key}", "must be >= 0 pixels (0 = off)")
    need(0 <= a.brightness <= 1, "augment.brightness", "must be in [0, 1] (0 = off)")
    need(0 <= a.contrast < 1, "augment.contrast", "must be in [0, 1) (0 = off)")
    need(0 <= a.resized_crop <= 1, "augment.resized_crop", "must be in [0, 1] (0 = off)")
    need(a.color_jitter >= 0, "augment.color_jitter", "must be >= 0 (0 = off)")
    need(c.data_stream in ("auto", "always", "never"), "data_stream", "auto, always or never")
    need(c.data_workers >= -1, "data_workers", "must be >= 0, or -1 for one per core")
    es = c.early_stopping
    need(
        es.metric in EARLY_STOPPING_METRICS,
        "early_stopping.metric",
        "one of " + ", ".join(EARLY_STOPPING_METRICS),
    )
    need(es.mode in ("max", "min"), "early_stopping.mode", "max or min")
    need(es.patience >= 0, "early_stopping.patience", "must be >= 0 (0 = off)")
    need(es.min_delta >= 0, "early_stopping.min_delta", "must be >= 0")
    try:
        ok = all(factor >= 0 for factor in lr_multipliers(c).values())
    except ValueError:
        ok = False
    need(ok, "lr_multipliers", "'prefix=factor,...' with factors >= 0")
    need(
        not c.get("init_exclude") or bool(c.get("init_from")),
        "init_exclude",
        "is used only with init_from (the run whose parameters initialise this one)",
    )


def _prefixes(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def freeze_prefixes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """``config.freeze`` ('features,layer1') as a tuple of parameter prefixes."""
    return _prefixes(config.freeze)


def init_exclude_prefixes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """``config.init_exclude`` ('fc,classifier.6') as a tuple of parameter prefixes."""
    return _prefixes(config.get("init_exclude", ""))


def lr_multipliers(config: ml_collections.ConfigDict) -> dict[str, float]:
    """``config.lr_multipliers`` ('features=0.1,layer1=0.5') as ``{prefix: factor}``.

    Raises:
      ValueError: an item that is not ``prefix=number``.
    """
    out = {}
    for item in filter(None, (part.strip() for part in config.lr_multipliers.split(","))):
        prefix, sep, factor = item.partition("=")
        if not (sep and prefix.strip()):
            raise ValueError(f"lr_multipliers item {item!r} is not prefix=factor")
        out[prefix.strip()] = float(factor)
    return out


def differences(old: dict[str, Any], new: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every setting that changes what a run computes and differs between
    the config a workdir's run was started with and ``new`` (see :data:`NON_COMPUTING_KEYS`)."""
    old_flat, new_flat = _flatten(old), _flatten(new.to_dict())
    defaults = _flatten(default_config().to_dict())
    out = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if key in NON_COMPUTING_KEYS:
            continue
        # A key added to the config after the run started was at its default all along.
        before = old_flat.get(key, defaults.get(key, "<unset>"))
        after = new_flat.get(key, "<unset>")
        if before == after:
            continue
        if key == "epochs" and new.schedule in LENGTH_FREE_SCHEDULES:
            continue
        out.append((key, before, after))
    return out


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies ``key.sub=value`` strings; values are Python literals, else strings.

    Raises:
      ValueError: unknown key (listing the valid ones) or a value of the wrong type.
    """
    valid = sorted(_flat_keys(config))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in valid:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        value = _parse_value(text.strip())
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        old = node[leaf]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, str) and not isinstance(value, str):
            value = text.strip()
        if isinstance(old, int | float) and isinstance(value, float) and value != value:
            raise ConfigError(f"config key {key!r} cannot be NaN")
        try:
            node[leaf] = value
        except TypeError as err:
            raise ConfigError(
                f"config key {key!r} is a {type(old).__name__}, got {value!r}"
            ) from err


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out += _flat_keys(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """A ``.py`` file defining ``get_config()`` or a ``.json`` file of overrides, applied over
    :func:`default_config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist or is not a file")
    if path.suffix == ".py":
        try:
            source = path.read_text()
            code = compile(source, str(path), "exec")
        except SyntaxError as err:
            raise ConfigError(f"{path}:{err.lineno}: syntax error: {err.msg}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from err
        spec = importlib.util.spec_from_file_location("cnn_jax_user_config", path)
        module = importlib.util.module_from_spec(spec)
        try:
            exec(code, module.__dict__)
            if not callable(getattr(module, "get_config", None)):
                raise ConfigError(f"{path} must define get_config() returning a ConfigDict")
            user = module.get_config()
        except ConfigError:
            raise
        except Exception as err:  # the user's code failed: name the file and line
            raise ConfigError(
                f"{path}{_user_line(err, path)}: {type(err).__name__}: {err}"
            ) from err
    elif path.suffix == ".json":
        try:
            user = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from err
    else:
        raise ConfigError(f"config file must be .py (get_config) or .json, got {path}")
    if not isinstance(user, dict | ml_collections.ConfigDict):
        raise ConfigError(f"{path} must give a dict / ConfigDict of settings, got {type(user)}")
    config = default_config()
    flat = ml_collections.ConfigDict(user).to_dict() if not isinstance(user, dict) else user
    try:
        apply_overrides(config, [f"{k}={v!r}" for k, v in _flatten(flat).items()])
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return config


def _user_line(err: BaseException, path: Path) -> str:
    """``:LINE`` of the deepest traceback frame in the user's config file, if any."""
    import traceback

    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == str(path)]
    return f":{frames[-1].lineno}" if frames else ""


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
