"""What a resolved run config builds, in one place: data, model, schedule, optimiser, the step
options and the placement. Training (:func:`cnn_jax.train.fit`) and a loaded run
(:func:`cnn_jax.train.load_run`) build the same :class:`Setup`, so a checkpoint always restores
into the structure it was saved from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnn_jax import data as data_lib
from cnn_jax import models
from cnn_jax.data.augment import Augment
from cnn_jax.errors import ConfigError
from cnn_jax.train import parallel
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.run.config import DATA_STREAM, freeze_prefixes, lr_multipliers
from cnn_jax.train.run.feeds import DeviceFeed, HostFeed, train_feed
from cnn_jax.train.run.pretrained import prepare_splits
from cnn_jax.train.state import TrainState, create_train_state
from cnn_jax.train.step import eval_options


@dataclasses.dataclass(frozen=True)
class Setup:
    """A run's data, model, schedule and optimiser, built from its resolved ``config``."""

    config: ml_collections.ConfigDict
    splits: dict[str, data_lib.Split]
    model: Any
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    steps_per_epoch: int
    notes: tuple[str, ...] = ()  # how the data was prepared, for the header line

    def initial_state(self, *, abstract: bool = False) -> TrainState:
        """The run's fresh train state (from its seed; before any ``init_from``); ``abstract``:
        its shapes only (:func:`~cnn_jax.train.create_train_state`)."""
        h, w, c = self.splits["train"].image_shape
        return create_train_state(
            self.model,
            self.optimizer,
            jax.random.PRNGKey(self.config.seed),
            jnp.zeros((1, h, w, c)),
            abstract=abstract,
        )

    def step_options(self) -> dict[str, Any]:
        """:func:`~cnn_jax.train.make_train_step`'s arguments: augmentation, normalisation with
        the train split's statistics, penalties, freezing, compute dtype."""
        config, train = self.config, self.splits["train"]
        settings = config.augment
        augment = Augment(
            crop_padding=settings.crop_padding,
            translate=settings.translate,
            flip=settings.flip,
            brightness=settings.brightness,
            contrast=(1 - settings.contrast, 1 + settings.contrast) if settings.contrast else None,
            cutout=settings.cutout,
        )
        return dict(
            augment=augment if augment.active else None,
            mean=train.mean,
            std=train.std,
            l1=config.l1,
            l2=config.l2,
            label_smoothing=config.label_smoothing,
            freeze=freeze_prefixes(config),
            frozen_batch_norm_trains=config.frozen_batch_norm_trains,
            compute_dtype=config.compute_dtype,
        )

    def placement(self) -> parallel.Placement:
        """The run's :class:`~cnn_jax.train.parallel.Placement` (``config.parallel``)."""
        config = self.config
        return parallel.placement(
            config.parallel,
            self.step_options(),
            config.devices,
            {"batch_size": config.batch_size, "eval_batch_size": config.eval_batch_size},
        )

    def eval_placement(self) -> parallel.Placement:
        """One device evaluating with the run's normalisation and compute dtype (a loaded run)."""
        return _single_device(eval_options(self.step_options()))

    def feed(self, placement: parallel.Placement) -> HostFeed | DeviceFeed:
        """The training feed: the split on the device(s) when ``config.data_on_device`` and it
        fits (:func:`~cnn_jax.train.run.feeds.train_feed`), else batches read on the host."""
        config = self.config
        return train_feed(
            placement,
            self.splits["train"],
            config.batch_size,
            config.seed,
            on_device=config.data_on_device,
        )


def data_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """:func:`cnn_jax.data.load`'s options from a resolved config: streaming, reading processes
    and the host augmentation (``augment.resized_crop`` / ``augment.color_jitter``)."""
    settings = config.augment
    augment = None
    if settings.resized_crop or settings.color_jitter:
        augment = data_lib.HostAugment(
            scale=(settings.resized_crop, 1.0) if settings.resized_crop else None,
            flip=False,  # augment.flip flips on the device, as for every dataset
            color_jitter=settings.color_jitter,
        )
    return {
        "stream": DATA_STREAM[config.data_stream],
        "workers": None if config.data_workers < 0 else config.data_workers,
        "augment": augment,
    }


def build(config: ml_collections.ConfigDict) -> Setup:
    """The :class:`Setup` of a resolved config (:func:`~cnn_jax.train.run.config.resolve`).

    Raises:
      DatasetError: the dataset cannot be loaded.
      ConfigError: a batch larger than the training split, a model that cannot take the
        data's images, ``channels`` / ``normalize`` the data cannot take, or ``freeze`` /
        ``lr_multipliers`` prefixes that name no parameter.
    """
    splits = data_lib.load(
        config.dataset,
        data_dir=config.data_dir or None,
        image_size=config.image_size or None,
        **data_options(config),
    )
    splits, notes = prepare_splits(splits, config)
    train = splits["train"]
    h, w, c = train.image_shape
    model_kwargs = {"num_classes": train.num_classes, "in_channels": c}
    if "input_size" in models.registry.parameters(config.model):  # a head sized by the input
        model_kwargs["input_size"] = (h, w)
    model = models.create(config.model, **model_kwargs)
    steps_per_epoch = data_lib.num_batches(len(train), config.batch_size, True)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size={config.batch_size} exceeds the {len(train)} training examples"
        )
    schedule = make_schedule(
        config.schedule,
        config.lr,
        config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
        step_size=config.step_size_epochs * steps_per_epoch,
        gamma=config.gamma,
    )
    optimizer = make_optimizer(
        config.optimizer,
        schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm or None,
        freeze=freeze_prefixes(config),
        lr_multipliers=lr_multipliers(config),
    )
    setup = Setup(config, splits, model, schedule, optimizer, steps_per_epoch, notes)
    _check_fits(setup)
    return setup


def _check_fits(setup: Setup) -> None:
    """The model takes the data's images and the optimizer's prefixes name parameters: checked
    on abstract shapes (``jax.eval_shape``, nothing computed), so a mistake is one line before
    any compilation rather than an error deep inside a layer."""
    h, w, c = setup.splits["train"].image_shape
    x = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
    try:
        variables = jax.eval_shape(
            lambda x: setup.model.init(jax.random.PRNGKey(0), x, train=False), x
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"{setup.config.model} cannot train on {setup.config.dataset} images of {h}x{w}x{c}: "
            f"{str(err).splitlines()[0]}"
        ) from err
    try:
        jax.eval_shape(setup.optimizer.init, variables["params"])
    except ValueError as err:
        raise ConfigError(f"freeze / lr_multipliers: {str(err).splitlines()[0]}") from err


_EVAL_PLACEMENTS: dict[tuple, parallel.SingleDevice] = {}


def _single_device(options: dict[str, Any]) -> parallel.SingleDevice:
    """One evaluating placement per set of eval options (normalisation, compute dtype), shared by
    every loaded run: each would otherwise compile its own eval step."""
    key = tuple(
        (k, v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in sorted(options.items())
    )
    if key not in _EVAL_PLACEMENTS:
        _EVAL_PLACEMENTS[key] = parallel.SingleDevice(options)
    return _EVAL_PLACEMENTS[key]


__all__ = ["Setup", "build", "data_options"]
