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
    c.lr_multipliers = ""  # 'features=0.1,layer1=0.5'
    c.augment = ml_collections.ConfigDict(
        {
            "crop_padding": 0,
            "translate": 0,
            "flip": False,
            "brightness": 0.0,
            "contrast": 0.0,
            "cutout": 0,
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
    return c


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
            raise ValueError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in valid:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
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
        try:
            node[leaf] = value
        except TypeError as err:
            raise ValueError(
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
    if not path.exists():
        raise ValueError(f"config file {path} does not exist")
    if path.suffix == ".py":
        spec = importlib.util.spec_from_file_location("cnn_jax_user_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"{path} must define get_config() returning a ConfigDict")
        user = module.get_config()
    elif path.suffix == ".json":
        user = json.loads(path.read_text())
    else:
        raise ValueError(f"config file must be .py (get_config) or .json, got {path}")
    config = default_config()
    flat = ml_collections.ConfigDict(user).to_dict() if not isinstance(user, dict) else user
    apply_overrides(config, [f"{k}={v!r}" for k, v in _flatten(flat).items()])
    return config


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
