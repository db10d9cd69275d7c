"""A run once trained: loaded back from its work directory (:func:`load_run`), re-evaluated
(:func:`evaluate_workdir`), or used to initialise another run (:func:`read_init_from`,
:func:`initialised_from`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from cnn_jax import data as data_lib
from cnn_jax._utils import matching_prefix
from cnn_jax.errors import CheckpointError, ConfigError, WorkdirError
from cnn_jax.interop import weights as weights_lib
from cnn_jax.train.parallel import default_device
from cnn_jax.train.run.checkpoint import Checkpoints
from cnn_jax.train.run.config import init_exclude_prefixes, resolve
from cnn_jax.train.run.feeds import evaluate_split
from cnn_jax.train.run.pretrained import read_source
from cnn_jax.train.run.setup import Setup, build
from cnn_jax.train.run.workdir import RunDir
from cnn_jax.train.state import TrainState


@dataclasses.dataclass
class Run:
    """A trained run loaded back from its work directory (:func:`load_run`).

    Attributes:
      config: the run's config (as stored in ``config.json``).
      model: the flax module, built as the run built it.
      state: the restored :class:`TrainState` (``variables`` for ``model.apply``).
      splits: the run's data, ``{'train', 'validation', 'test'}``.
      step: the step of the restored checkpoint.
      steps: the steps of every checkpoint kept in the run's directory.
    """

    config: ml_collections.ConfigDict
    model: Any
    state: TrainState
    splits: dict[str, data_lib.Split]
    step: int
    steps: list[int]
    _setup: Setup = dataclasses.field(repr=False)
    _template: TrainState = dataclasses.field(repr=False)
    _checkpoints_path: Path = dataclasses.field(repr=False)

    @property
    def variables(self) -> dict[str, Any]:
        """``{'params', 'batch_stats'}`` for ``model.apply`` / ``to_torch`` / the inspectors."""
        return self.state.variables()

    @property
    def initial_variables(self) -> dict[str, Any]:
        """The variables the run started from: its fresh initialisation (from its seed, before
        any ``init_from``), for before/after comparisons. Initialises the model anew on each
        access (loading a run only needs the state's shapes)."""
        return self._setup.initial_state().variables()

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 images as the model saw them in training (the train split's mean/std)."""
        return self.splits["train"].normalize(images)

    def at(self, step: int) -> Run:
        """The same run restored at checkpoint ``step`` (one of :attr:`steps`)."""
        if step not in self.steps:
            raise CheckpointError(f"no checkpoint at step {step}; kept: {self.steps}")
        checkpoints = Checkpoints(self._checkpoints_path, async_save=False, read_only=True)
        try:
            state = checkpoints.restore(step, self._template)
        finally:
            checkpoints.close()
        return dataclasses.replace(self, state=state, step=step)

    def evaluate(
        self, split: data_lib.Split | str = "test", batch_size: int | None = None
    ) -> dict[str, float]:
        """Loss / accuracy (/ top-5) on a split of the run or any :class:`Split` of images the
        same shape (e.g. shifted test images), normalised with the run's train statistics."""
        if isinstance(split, str):
            if split not in self.splits:
                raise ConfigError(f"unknown split {split!r}; available: {', '.join(self.splits)}")
            split = self.splits[split]
        batch_size = batch_size or self.config.eval_batch_size
        return evaluate_split(self._setup.eval_placement(), self.state, split, batch_size)


def _abstract_state(setup: Setup) -> TrainState:
    """The run's state as shapes and dtypes on the default device: all a checkpoint is restored
    into, without compiling and running the model's initialisation."""
    device = jax.sharding.SingleDeviceSharding(default_device())
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        setup.initial_state(abstract=True),
    )


def load_run(
    workdir: str | Path, step: int | str | None = None, *, data_dir: str | None = None
) -> Run:
    """Loads a run from its work directory: config, model, data and the state of its best
    checkpoint (the newest when none has metrics), or of ``step``: ``'best'``, ``'latest'`` or
    a step number. Reads only: the directory is never changed (it may be a running run's).
    ``data_dir`` replaces the run's tfds data directory (the data moved; it changes no result).

    Raises:
      WorkdirError: not a run directory; CheckpointError: that checkpoint is missing or
      unreadable (the message names the others kept); DatasetError: the run's data cannot be
      loaded here (a dataset registered in Python must be registered again in the process that
      loads the run).
    """
    run = RunDir(workdir)
    stored = run.stored_config()
    if stored is None:
        raise WorkdirError(f"{run.path} has no config.json: not a cnn-jax run directory")
    config = resolve(ml_collections.ConfigDict(stored))
    if data_dir is not None:
        config.data_dir = data_dir
    try:
        setup = build(config)
    except data_lib.UnknownDatasetError as err:
        raise data_lib.UnknownDatasetError(
            f"{err} If {run.path} trained on a dataset registered in Python "
            "(cnn_jax.data.register), it exists only in a process that registers it: there, "
            f"register it again and call cnn_jax.train.load_run({str(run.path)!r}).evaluate()"
        ) from err
    template = _abstract_state(setup)
    (step, state), steps = run.restore(setup.config, template, "best" if step is None else step)
    return Run(
        config=setup.config,
        model=setup.model,
        state=state,
        splits=setup.splits,
        step=step,
        steps=steps,
        _setup=setup,
        _template=template,
        _checkpoints_path=run.checkpoints_path,
    )


def evaluate_workdir(
    workdir: str | Path,
    split: str = "test",
    *,
    checkpoint: int | str = "best",
    data_dir: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Re-evaluates a run's ``checkpoint`` (``'best'``, ``'latest'`` or a step) on ``split``;
    changes nothing in the run. ``data_dir``: as :func:`load_run`'s.

    Raises:
      WorkdirError: not a run directory; CheckpointError: that checkpoint is missing or
      unreadable; ConfigError: an unknown split; DatasetError: the run's data cannot be loaded
      here.
    """
    loaded = load_run(workdir, checkpoint, data_dir=data_dir)
    result = {"split": split, "step": loaded.step, **loaded.evaluate(split)}
    log(
        f"{split}: loss {result['loss']:.4f} accuracy {result['accuracy']:.4f} "
        f"({int(result['count'])} examples, checkpoint step {loaded.step})"
    )
    return result


def export_workdir(workdir: str | Path, out: str | Path, *, log=print) -> Path:
    """Writes the best checkpoint of a run as a state_dict in torchvision's layout (the keys and
    shapes ``to_state_dict`` gives): ``.safetensors`` (NumPy, no torch) or ``.pth``, loadable
    into the torch model with ``load_state_dict(strict=True)``.

    Raises:
      WorkdirError, CheckpointError: as :func:`load_run`; ConfigError: another suffix.
    """
    from cnn_jax.interop.torch import to_state_dict

    weights_lib.check_writable_suffix(out)  # before the run is loaded
    loaded = load_run(workdir)
    h, w, c = loaded.splits["train"].image_shape
    sample = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
    state_dict = to_state_dict(loaded.model, loaded.variables, sample_input=sample)
    path = weights_lib.write_state_dict(state_dict, out)
    log(
        f"wrote {len(state_dict)} arrays of {loaded.config.model} (checkpoint step "
        f"{loaded.step}) to {path}"
    )
    return path


@dataclasses.dataclass
class _Transfer:
    """What :func:`initialised_from` took from the source run, and what it could not."""

    arrays: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    loaded: int = 0
    used: set[str] = dataclasses.field(default_factory=set)
    missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    mismatched: list[str] = dataclasses.field(default_factory=list)
    mismatched_names: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class InitSource:
    """The arrays ``config.init_from`` names (:func:`read_init_from`), checked against a model.

    Attributes:
      arrays: ``{'params': ..., 'batch_stats': ...}``, nested as the model's collections.
      where: what was read, for the log line.
    """

    arrays: dict[str, Any]
    where: str


def read_init_from(config: ml_collections.ConfigDict, state: TrainState) -> InitSource:
    """Reads what ``config.init_from`` names (a finished run's best checkpoint, a ``.pth`` /
    ``.pt`` / ``.safetensors`` file, or ``torchvision:NAME[:WEIGHTS]``) and checks that it fits
    ``state``'s model. Only shapes are compared, so ``state`` may be abstract
    (``Setup.initial_state(abstract=True)``): a mismatch is refused before anything compiles.

    Raises:
      ConfigError: an array whose shape differs between the two models and is not excluded, a
        parameter of this model the source lacks, a key of a weights file that names nothing in
        this model, or an exclude prefix that names nothing.
    """
    source = weights_lib.parse_source(config.init_from)
    exclude = init_exclude_prefixes(config)
    if source.kind == "workdir":
        run = load_run(source.path)
        arrays = {"params": run.state.params, "batch_stats": run.state.batch_stats}
        where = f"{config.init_from} (step {run.step})"
    else:
        arrays, where = read_source(source, state, exclude, config.model)
    _transfer(state, arrays, config, exclude, convert=False)
    return InitSource(arrays, where)


def initialised_from(
    state: TrainState, config: ml_collections.ConfigDict, log, source: InitSource | None = None
) -> TrainState:
    """``state`` with the parameters and BatchNorm statistics ``config.init_from`` names, except
    those under ``config.init_exclude`` (which keep their initialisation); ``source``: what
    :func:`read_init_from` read for it (read here when ``None``).

    Raises:
      ConfigError: as :func:`read_init_from`.
    """
    source = source if source is not None else read_init_from(config, state)
    exclude = init_exclude_prefixes(config)
    taken = _transfer(state, source.arrays, config, exclude, convert=True)
    log(
        f"initialised {taken.loaded} arrays from {source.where}; "
        f"fresh: {', '.join(exclude) or 'none'}"
    )
    params = taken.arrays["params"]
    return state.replace(
        params=params, batch_stats=taken.arrays["batch_stats"], opt_state=state.tx.init(params)
    )


def _transfer(
    state: TrainState, arrays: dict[str, Any], config, exclude: tuple[str, ...], *, convert: bool
) -> _Transfer:
    """Matches ``arrays`` to ``state``'s collections (:func:`_take`) and refuses what does not
    fit; ``convert``: build the merged arrays too (else shapes are only compared)."""
    taken = _Transfer()
    for collection in ("params", "batch_stats"):
        _take(taken, collection, getattr(state, collection), arrays[collection], exclude, convert)
    _refuse_what_does_not_fit(taken, config, exclude)
    return taken


def _take(
    taken: _Transfer,
    collection: str,
    new: Any,
    old: Any,
    exclude: tuple[str, ...],
    convert: bool,
):
    """Fills ``taken.arrays[collection]`` (when ``convert``): the source's array for each of
    this model's, or this model's own under an ``exclude`` prefix; records what is missing or
    mis-shaped."""
    flat_new = traverse_util.flatten_dict(new, sep=".")
    flat_old = traverse_util.flatten_dict(old, sep=".")
    merged = {}
    for name, value in flat_new.items():
        hit = matching_prefix(name, exclude)
        if hit is not None:
            taken.used.add(hit)
            merged[name] = value
        elif name not in flat_old:
            taken.missing.append((collection, name))
        elif flat_old[name].shape != value.shape:
            taken.mismatched_names.append(name)
            taken.mismatched.append(
                f"{name} is {tuple(flat_old[name].shape)} there and {tuple(value.shape)} here"
            )
        else:
            if convert:
                merged[name] = jnp.asarray(flat_old[name], value.dtype)
            taken.loaded += 1
    taken.arrays[collection] = traverse_util.unflatten_dict(merged, sep=".") if merged else {}


def _refuse_what_does_not_fit(taken: _Transfer, config, exclude: tuple[str, ...]) -> None:
    if taken.missing:
        names = [repr(name) for _, name in sorted(taken.missing)]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        collections = " / ".join(sorted({collection for collection, _ in taken.missing}))
        raise ConfigError(
            f"init_from {config.init_from}: its model has no {collections} {shown}; add their "
            "prefixes to init_exclude to keep these arrays' fresh initialisation"
        )
    if taken.mismatched:
        head = weights_lib.classifier_prefix(config.model)
        if all(matching_prefix(name, (head,)) for name in taken.mismatched_names):
            hint = f"the classifier differs (another number of classes): set init_exclude={head}"
        else:
            hint = "add their prefixes to init_exclude to train them from scratch"
        raise ConfigError(
            f"init_from {config.init_from}: {'; '.join(sorted(taken.mismatched))}; {hint}"
        )
    unused = [p for p in exclude if p not in taken.used]
    if unused:
        raise ConfigError(f"init_exclude prefix(es) {unused} name no parameter of {config.model}")


__all__ = [
    "InitSource",
    "Run",
    "evaluate_workdir",
    "export_workdir",
    "initialised_from",
    "load_run",
    "read_init_from",
]
