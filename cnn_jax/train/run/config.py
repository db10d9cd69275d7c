"""Run configuration: an ``ml_collections.ConfigDict`` with defaults, a config file, and settings
changed by dotted key (:func:`override`: ``augment.flip=True``)."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import math
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from cnn_jax.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
    """The defaults: LeNet-5 on the embedded digits (resized to 32×32), Adam, cosine schedule."""
    config = ml_collections.ConfigDict()
    config.model = "lenet5"
    config.dataset = "digits"
    config.data_dir = ""  # '' = tfds default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    config.image_size = 0  # 0 = the model's default input size if it has a fixed one, else native
    config.epochs = 30
    config.batch_size = 64
    config.eval_batch_size = 256
    config.optimizer = "adam"
    config.lr = 2e-3
    config.momentum = 0.9
    config.weight_decay = 0.0
    config.clip_norm = 0.0  # 0 = off
    config.schedule = "cosine"
    config.warmup_epochs = 0
    config.step_size_epochs = 10  # the 'step' schedule
    config.gamma = 0.1
    config.l1 = 0.0
    config.l2 = 0.0
    config.label_smoothing = 0.0
    config.freeze = ""  # comma-separated parameter prefixes not to train, e.g. 'features'
    # Transfer learning: what initialises this run's parameters and BatchNorm statistics (all of
    # them but those under `init_exclude` prefixes, e.g. the classifier head, which keep their
    # fresh initialisation): the workdir of a finished run (its best checkpoint), a .pth / .pt /
    # .safetensors state_dict, or torchvision's published weights 'torchvision:NAME[:WEIGHTS]'.
    config.init_from = ""
    config.init_exclude = ""
    # 'auto': the mean/std of torchvision ImageNet weights in init_from, else the train split's
    # statistics ('dataset'); or 'MEAN/STD' given ('0.5,0.5,0.5/0.25,0.25,0.25'). The stored
    # config records the choice.
    config.normalize = "auto"
    # 0: the data's own; 3: grayscale images repeated to 3 channels (set by 'auto' for ImageNet
    # weights, whose stem takes RGB).
    config.channels = 0
    config.lr_multipliers = ""  # 'features=0.1,layer1=0.5'
    config.augment = ml_collections.ConfigDict(
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
    config.early_stopping = ml_collections.ConfigDict(
        {"metric": "val_accuracy", "mode": "max", "patience": 0, "min_delta": 0.0}
    )
    config.seed = 0
    config.workdir = ""  # '' = runs/<model>-<dataset>
    config.parallel = "none"  # one of cnn_jax.train.parallel.MODES: none, pmap, sharded
    config.devices = 0  # 0 = every local device
    config.keep_checkpoints = 3
    # Seconds between progress lines when the output is not a terminal (0 = none).
    config.progress_every_s = 10.0
    config.data_on_device = True  # keep the train split on the accelerator (up to 2 GiB; not pmap)
    # auto: stream a dataset from its files when its decoded train split exceeds 2 GiB;
    # always / never. Streaming changes memory use only, never the batches.
    config.data_stream = "auto"
    config.data_workers = -1  # processes decoding a streamed dataset; -1 = one per core (max 16)
    # BatchNorm layers under a `freeze` prefix run in inference mode (running statistics, not
    # updated), as Keras does; True makes them normalise with batch statistics and update them.
    config.frozen_batch_norm_trains = False
    # 'bfloat16': mixed precision (bfloat16 forward/backward; float32 parameters, optimiser state,
    # BatchNorm statistics and loss). For accelerators; on a CPU it is slower.
    config.compute_dtype = "float32"
    return config


# Settings that do not change what a run computes: a resumed run may change them.
NON_COMPUTING_KEYS = (
    "workdir",
    "data_dir",
    "keep_checkpoints",
    "data_on_device",
    "data_stream",
    "data_workers",
    "progress_every_s",
)
# data_stream's values: data.load's ``stream`` (None: stream when the decoded train split is large).
DATA_STREAM = types.MappingProxyType({"auto": None, "always": True, "never": False})
# Schedules whose learning rate at a step does not depend on the run's length: with these,
# `epochs` may grow or shrink between runs in one workdir (train longer) without changing any step.
LENGTH_FREE_SCHEDULES = ("constant", "step")
# What a run saved before a key existed computed with, where the key's default is decided at
# resolve time ('auto'): such runs normalised with their train split's statistics.
_BEFORE_THE_KEY = {"normalize": "dataset"}
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
      ConfigError: naming each invalid key, its value and what is valid, all at once.
    """
    from cnn_jax.models import list_models
    from cnn_jax.train.optim import OPTIMIZERS, SCHEDULES
    from cnn_jax.train.parallel import MODES
    from cnn_jax.train.step import COMPUTE_DTYPES

    problems = []  # every invalid value, reported together

    def require(ok: bool, key: str, valid: str) -> None:
        """Notes ``key``'s value and what is ``valid``, unless ``ok``."""
        if not ok:
            value = config
            for part in key.split("."):
                value = value[part]
            problems.append(f"{key}={value!r} is invalid: {valid}")

    def one_of(key: str, valid: Sequence[str]) -> None:
        require(config[key] in valid, key, "one of " + ", ".join(valid))

    one_of("model", list_models())
    one_of("optimizer", OPTIMIZERS)
    one_of("schedule", SCHEDULES)
    one_of("parallel", MODES)
    one_of("compute_dtype", COMPUTE_DTYPES)
    for key in ("epochs", "batch_size", "eval_batch_size", "keep_checkpoints", "step_size_epochs"):
        require(config[key] >= 1, key, "must be >= 1")
    for key in ("image_size", "devices", "warmup_epochs", "seed", "channels"):
        require(config[key] >= 0, key, "must be >= 0")
    require(
        config.devices <= 1 or config.parallel != "none",
        "devices",
        "several devices need parallel=pmap or sharded (--parallel); parallel=none trains on one",
    )
    require(config.lr >= 0, "lr", "the learning rate must be >= 0")
    require(0 <= config.momentum < 1, "momentum", "must be in [0, 1)")
    require(0 <= config.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
    require(config.gamma > 0, "gamma", "must be > 0")
    for key in ("weight_decay", "clip_norm", "l1", "l2", "progress_every_s"):
        require(config[key] >= 0, key, "must be >= 0 (0 = off)")
    require(
        config.schedule != "warmup_cosine" or config.warmup_epochs < config.epochs,
        "warmup_epochs",
        f"must be < epochs ({config.epochs}) for warmup_cosine",
    )
    augment = config.augment
    for key in ("crop_padding", "translate", "cutout"):
        require(augment[key] >= 0, f"augment.{key}", "must be >= 0 pixels (0 = off)")
    require(0 <= augment.brightness <= 1, "augment.brightness", "must be in [0, 1] (0 = off)")
    require(0 <= augment.contrast < 1, "augment.contrast", "must be in [0, 1) (0 = off)")
    require(0 <= augment.resized_crop <= 1, "augment.resized_crop", "must be in [0, 1] (0 = off)")
    require(augment.color_jitter >= 0, "augment.color_jitter", "must be >= 0 (0 = off)")
    one_of("data_stream", list(DATA_STREAM))
    require(config.data_workers >= -1, "data_workers", "must be >= 0, or -1 for one per core")
    early_stopping = config.early_stopping
    require(
        early_stopping.metric in EARLY_STOPPING_METRICS,
        "early_stopping.metric",
        "one of " + ", ".join(EARLY_STOPPING_METRICS),
    )
    require(early_stopping.mode in ("max", "min"), "early_stopping.mode", "max or min")
    require(early_stopping.patience >= 0, "early_stopping.patience", "must be >= 0 (0 = off)")
    require(early_stopping.min_delta >= 0, "early_stopping.min_delta", "must be >= 0")
    try:
        ok = all(factor >= 0 for factor in lr_multipliers(config).values())
    except ValueError:
        ok = False
    require(ok, "lr_multipliers", "'prefix=factor,...' with factors >= 0")
    require(
        not config.get("init_exclude") or bool(config.get("init_from")),
        "init_exclude",
        "is used only with init_from (the run whose parameters initialise this one)",
    )
    if problems:
        raise ConfigError("; ".join(problems))


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config a run runs with, decided in this one place: a copy with every key (one saved
    before a key existed gets its default), validated, and ``image_size`` (the model's fixed
    input size, if any) and ``workdir`` (``runs/<model>-<dataset>``, the dataset's name as a file
    name: ``folder:~/photos/flowers`` -> ``flowers``) filled in when unset.

    Raises:
      ConfigError: an invalid value (see :func:`validate`).
    """
    from cnn_jax.data import short_name
    from cnn_jax.models import registry
    from cnn_jax.train.run.pretrained import resolve_preprocessing

    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in default_config().items():
        if key not in config:
            config[key] = value
        elif isinstance(value, ml_collections.ConfigDict):  # and a nested key (augment.*)
            for sub, default in value.items():
                if sub not in config[key]:
                    config[key][sub] = default
    validate(config)
    resolve_preprocessing(config)  # before the model's default image size
    if not config.image_size:
        config.image_size = registry.spec(config.model).input_size or 0
    if not config.workdir:
        config.workdir = str(Path("runs") / f"{config.model}-{short_name(config.dataset)}")
    return config


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
        before = old_flat.get(key, _BEFORE_THE_KEY.get(key, defaults.get(key, "<unset>")))
        after = new_flat.get(key, "<unset>")
        if before == after:
            continue
        if key == "epochs" and new.schedule in LENGTH_FREE_SCHEDULES:
            continue
        out.append((key, before, after))
    return out


def override(
    config: ml_collections.ConfigDict, settings: Mapping[str, Any] | Iterable[str]
) -> None:
    """Sets settings of ``config`` by dotted key: the one way a run's settings change, used by
    the command line, config files and experiments alike.

    ``settings`` is a mapping (``{'augment.flip': True, 'lr': 0.1}``) or ``'key=value'``
    strings (the command line's ``--set``), whose value is read as a Python literal, else kept
    as text (always for a string setting). An int for a float setting becomes a float.

    Raises:
      ConfigError: naming every unknown key (listing the valid ones), value of the wrong type
        and NaN or infinite number at once, or a string without ``=``.
    """
    if isinstance(settings, Mapping):
        items = [(key, value, None) for key, value in settings.items()]
    else:
        items = [_parse_setting(item) for item in settings]
    valid = sorted(_flatten(config.to_dict()))
    problems = []  # every wrong setting, reported together
    for key, value, text in items:
        if key not in valid:
            problems.append(f"unknown config key {key!r}")
            continue
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        problem = _set(node, leaf, key, value, text)
        if problem:
            problems.append(problem)
    if problems:
        unknown = any(p.startswith("unknown") for p in problems)
        listing = f"; valid keys: {', '.join(valid)}" if unknown else ""
        raise ConfigError("; ".join(problems) + listing)


def _set(node: ml_collections.ConfigDict, leaf: str, key: str, value: Any, text: str | None):
    """Sets ``node[leaf]``; what is wrong with ``value`` as a sentence, else ``None``."""
    old = node[leaf]
    if text is not None and isinstance(old, str) and not isinstance(value, str):
        value = text  # a string setting keeps the text as typed
    number = isinstance(old, int | float) and not isinstance(old, bool)
    if number and isinstance(value, str) and isinstance(old, float):
        with contextlib.suppress(ValueError):
            value = float(value)  # 'nan' / 'inf' are no Python literals
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if number and isinstance(value, float) and not math.isfinite(value):
        return f"{key}={value} is invalid: must be a finite number"
    try:
        node[leaf] = value
    except TypeError:
        return f"{key} must be {_A[type(old).__name__]}, got {value!r}"
    return None


_A = {"int": "an int", "float": "a float", "bool": "a bool (True or False)", "str": "a string"}


def _parse_setting(item: str) -> tuple[str, Any, str]:
    """``'key=value'`` as ``(key, the value as a Python literal else the text, the text)``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, text = (part.strip() for part in item.split("=", 1))
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    return key, value, text


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
    nested = ml_collections.ConfigDict(user).to_dict() if not isinstance(user, dict) else user
    try:
        override(config, _flatten(nested))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return config


def _user_line(err: BaseException, path: Path) -> str:
    """``:LINE`` of the deepest traceback frame in the user's config file, if any."""
    import traceback

    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == str(path)]
    return f":{frames[-1].lineno}" if frames else ""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{'dotted.key': value}``."""
    out = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
