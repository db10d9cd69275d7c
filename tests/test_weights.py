"""Pretrained weights into a run: ``init_from`` with a ``.pth`` / ``.safetensors`` file or
``torchvision:NAME[:WEIGHTS]`` (torch hub's cache; nothing is downloaded here: the files are built
with torchvision's own model code), the preprocessing ImageNet weights bring, the refusals, the
course's fine-tuning command, and ``cnn-jax export`` back into torchvision's model."""

from __future__ import annotations

import sys
import urllib.error

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cnn_jax import train as T
from cnn_jax.errors import ConfigError
from cnn_jax.interop import weights as W
from cnn_jax.testing.cli import run_cli
from cnn_jax.testing.torch_models import torchvision_models
from cnn_jax.train.run.config import resolve
from cnn_jax.train.run.results import initialised_from
from cnn_jax.train.run.setup import build

torch = pytest.importorskip("torch")
QUIET = dict(log=lambda *a: None)
IMAGENET = "0.485,0.456,0.406/0.229,0.224,0.225"


def _tv():
    tv = torchvision_models()
    assert tv is not None, "the tests need torchvision (the test extra installs it)"
    return tv


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory):
    """torchvision's resnet18 (1000 classes, its own initialisation) as .pth and .safetensors,
    and at torch hub's cache path of a TORCH_HOME."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = _tv().resnet18()
    with torch.no_grad():  # statistics that differ from the fresh ones, so loading shows
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    torch.save(model.state_dict(), root / "resnet18.pth")
    W.write_state_dict(state_dict, root / "resnet18.safetensors")
    home = root / "torch_home"
    cached = home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(model.state_dict(), cached)
    return root, home, state_dict


def _flat(state):
    """A train state's parameters and statistics by torch key."""
    out = traverse_util.flatten_dict(state.params, sep=".")
    return {**out, **traverse_util.flatten_dict(state.batch_stats, sep=".")}


def _config(workdir, **overrides):
    c = T.default_config()
    c.update(dict(model="resnet18", epochs=1, batch_size=256, image_size=16, workdir=str(workdir)))
    T.override(c, overrides)
    return c


def test_the_facts_table_is_torchvisions_weights_enums():
    for model, (default, entries) in W._PUBLISHED.items():
        enum = _tv().get_model_weights(model)
        assert enum.DEFAULT.name == default, model
        assert set(entries) <= set(enum.__members__), model
        for name in entries:
            assert W.published(model, name) == W._from_torchvision_enum(model, name), (model, name)
    # Models outside the table are read from the enums themselves.
    vgg = W._from_torchvision_enum("vgg16", "IMAGENET1K_FEATURES")
    assert vgg.preprocessing.mean == (0.48235, 0.45882, 0.40784)
    with pytest.raises(ConfigError, match=r"resnet50:IMAGENET1K_V9: unknown weights; resnet50 has"):
        W.parse_source("torchvision:resnet50:IMAGENET1K_V9")
    with pytest.raises(ConfigError, match="torchvision:nonet: torchvision has no such model"):
        W.parse_source("torchvision:nonet")


def test_state_dict_files_round_trip_and_bad_files_are_refused(tmp_path, monkeypatch):
    sd = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int64)}
    for suffix in (".pth", ".safetensors"):
        back = W.read_state_dict(W.write_state_dict(sd, tmp_path / f"w{suffix}"))
        assert back.keys() == sd.keys()
        for key in sd:
            np.testing.assert_array_equal(back[key], sd[key])
            assert (back[key].dtype, back[key].shape) == (sd[key].dtype, sd[key].shape)
    torch.save({"model": {"a": torch.zeros(1)}, "epoch": 3}, tmp_path / "ckpt.pth")
    with pytest.raises(ConfigError, match=r"holds a dict, not a state_dict .*model.state_dict"):
        W.read_state_dict(tmp_path / "ckpt.pth")
    (tmp_path / "junk.pth").write_text("not a torch file")
    with pytest.raises(
        ConfigError, match=r"junk.pth: not readable with torch.load\(weights_only=True\)"
    ):
        W.read_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_text("not safetensors")
    with pytest.raises(ConfigError, match=r"junk.safetensors: not a readable \.safetensors"):
        W.read_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(ConfigError, match=r"export to a .safetensors or .pth file"):
        W.write_state_dict(sd, tmp_path / "w.npz")
    # Without torch: .pth needs it and says so in one line; .safetensors does not.
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigError, match=r"^.pth files need PyTorch: pip install torch"):
        W.read_state_dict(tmp_path / "w.pth")
    assert W.read_state_dict(tmp_path / "w.safetensors").keys() == sd.keys()


def test_torchvision_names_resolve_to_torch_hubs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = W.parse_source("torchvision:resnet50").published()
    assert entry.weights == "IMAGENET1K_V2"
    assert entry.url == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    path = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert entry.cache_path() == path
    assert entry.preprocessing.resize_size == 232 and entry.preprocessing.crop_size == 224

    def offline(url, path):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(W, "_download", offline)
    with pytest.raises(ConfigError) as err:
        W.locate(entry)
    message = str(err.value)
    assert "\n" not in message and entry.url in message and str(path) in message
    # Once the file is at the cache path it is used, nothing fetched.
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert W.locate(entry) == path


def test_classifier_prefixes_are_found_from_num_classes():
    assert W.classifier_prefix("resnet50") == "fc"
    assert W.classifier_prefix("vgg11") == "classifier.6"
    assert W.classifier_prefix("alexnet") == "classifier.6"
    assert W.classifier_prefix("lenet5") == "classifier.2"


@pytest.fixture(scope="module")
def fresh18(resnet18_files, tmp_path_factory):
    """A resolved config, setup and fresh state of resnet18 with ImageNet weights from a file."""
    root, _, _ = resnet18_files
    workdir = tmp_path_factory.mktemp("fresh18")
    pth = str(root / "resnet18.pth")
    config = resolve(_config(workdir, init_from=pth, init_exclude="fc"))
    setup = build(config)
    return config, setup, setup.initial_state()


def test_imagenet_weights_bring_their_preprocessing(fresh18):
    config, setup, _ = fresh18
    # Recorded in the resolved config (config.json), used by the data.
    assert (config.normalize, config.channels, config.image_size) == (IMAGENET, 3, 16)
    assert setup.splits["train"].image_shape == (16, 16, 3)
    np.testing.assert_allclose(setup.splits["test"].mean, [0.485, 0.456, 0.406], rtol=1e-6)
    np.testing.assert_allclose(setup.splits["test"].std, [0.229, 0.224, 0.225], rtol=1e-6)
    assert setup.notes == (
        "grayscale repeated to 3 channels",
        "normalised with mean 0.485,0.456,0.406 std 0.229,0.224,0.225",
    )
    gray = setup.splits["train"].images
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("kind", ["pth", "safetensors", "torchvision"])
def test_every_source_initialises_every_array_but_the_head(
    kind, resnet18_files, fresh18, monkeypatch
):
    root, home, state_dict = resnet18_files
    config, _, fresh = fresh18
    monkeypatch.setenv("TORCH_HOME", str(home))
    config = config.copy_and_resolve_references()
    config.init_from = (
        "torchvision:resnet18" if kind == "torchvision" else str(root / f"resnet18.{kind}")
    )
    lines = []
    state = initialised_from(fresh, config, lines.append)
    assert lines[0].startswith("initialised 120 arrays from ") and lines[0].endswith("fresh: fc")
    if kind == "torchvision":
        assert str(home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in lines[0]
    flat = _flat(state)
    fresh_flat = traverse_util.flatten_dict(fresh.params, sep=".")
    for key, value in state_dict.items():
        if key.startswith("fc."):  # the new head keeps its fresh initialisation
            np.testing.assert_array_equal(flat[key], fresh_flat[key])
        else:
            np.testing.assert_array_equal(flat[key], value.astype(flat[key].dtype), err_msg=key)


def test_preprocessing_only_for_imagenet_weights_and_unless_set(resnet18_files, tmp_path):
    root, _, state_dict = resnet18_files
    pth = str(root / "resnet18.pth")
    # Unset sizes take the weights' crop size; a set normalisation is kept.
    config = resolve(_config(tmp_path, init_from=pth, image_size=0))
    assert config.image_size == 224
    config = resolve(_config(tmp_path, init_from=pth, normalize="0.5,0.5,0.5/0.2,0.2,0.2"))
    assert config.normalize == "0.5,0.5,0.5/0.2,0.2,0.2" and config.channels == 0
    # Weights with another head are not taken for ImageNet weights.
    ten = {
        **state_dict,
        "fc.weight": state_dict["fc.weight"][:10],
        "fc.bias": state_dict["fc.bias"][:10],
    }
    W.write_state_dict(ten, tmp_path / "ten.safetensors")
    config = resolve(_config(tmp_path, init_from=str(tmp_path / "ten.safetensors")))
    assert (config.normalize, config.channels) == ("dataset", 0)
    assert resolve(_config(tmp_path)).normalize == "dataset"
    with pytest.raises(ConfigError, match=r"normalize='0.5/0' is invalid"):
        resolve(_config(tmp_path, normalize="0.5/0"))
    with pytest.raises(ConfigError, match=r"has 3 values for 1-channel images"):
        build(resolve(_config(tmp_path, normalize="0.5,0.5,0.5/0.2,0.2,0.2")))
    with pytest.raises(ConfigError, match=r"channels=2: digits images have 1 channel"):
        build(resolve(_config(tmp_path, channels=2)))


def test_what_cannot_be_loaded_is_refused_in_one_line(resnet18_files, fresh18, tmp_path):
    _, _, state_dict = resnet18_files
    config, _, fresh = fresh18

    def refused(match, **overrides):
        c = config.copy_and_resolve_references()
        c.update(overrides)
        with pytest.raises(ConfigError, match=match) as err:
            initialised_from(fresh, c, log=lambda *a: None)
        assert "\n" not in str(err.value)

    refused(
        r"fc.weight is \(1000, 512\) there and \(10, 512\) here; the classifier differs "
        r"\(another number of classes\): set init_exclude=fc$",
        init_exclude="",
    )
    extra = {**state_dict, "head.weight": np.zeros(3, np.float32)}
    W.write_state_dict(extra, tmp_path / "extra.safetensors")
    refused(
        r"'head.weight' match no parameter or statistic of resnet18",
        init_from=str(tmp_path / "extra.safetensors"),
    )
    odd = {**state_dict, "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32)}
    W.write_state_dict(odd, tmp_path / "odd.safetensors")
    refused(
        r"layer1.0.conv1.weight is \(64, 64, 1, 1\) there and \(64, 64, 3, 3\) here; add their "
        "prefixes to init_exclude",
        init_from=str(tmp_path / "odd.safetensors"),
    )
    refused(r"init_exclude prefix\(es\) \['head'\] name no parameter", init_exclude="fc,head")
    with pytest.raises(ConfigError, match=r"init_from nothing.pth: no such weights file"):
        T.fit(_config(tmp_path / "run", init_from="nothing.pth"), **QUIET)


def test_fit_refuses_weights_that_do_not_fit_before_compiling_anything(
    resnet18_files, tmp_path, monkeypatch
):
    """The shapes are compared on the model's abstract state: the refusal comes before the
    fresh state is built (``Training.resume``, the first thing compiled), and leaves no
    directory behind."""
    root, _, _ = resnet18_files

    def compiles(*args, **kwargs):
        raise AssertionError("the fresh train state was built before the refusal")

    monkeypatch.setattr("cnn_jax.train.run.loop.Training.resume", compiles)
    with pytest.raises(ConfigError, match=r"fc.weight is \(1000, 512\) there and \(10, 512\) here"):
        T.fit(_config(tmp_path / "run", init_from=str(root / "resnet18.pth")), **QUIET)
    assert not (tmp_path / "run").exists()


def _cli(*args):
    return run_cli(*args, timeout=900)


def test_a_missing_weights_file_is_one_line_through_the_cli(tmp_path):
    result = _cli("train", "--workdir", tmp_path / "run", "--init-from", "resnet18.pth")
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        result.stderr.strip()
        == "cnn-jax train: error: init_from resnet18.pth: no such weights file"
    )
    assert not (tmp_path / "run").exists()


def _course_command(tmp_path, model, weights):
    """The course's exercise: a pretrained network, a new 10-class head, early layers frozen
    (small images and few steps here)."""
    return _cli(
        "train", "--model", model, "--init-from", weights, "--set", "init_exclude=fc",
        "--set", "freeze=conv1,bn1,layer1,layer2", "--image-size", 16, "--epochs", 1,
        "--batch-size", 256, "--workdir", tmp_path / "run",
    )  # fmt: skip


def _check_course_run(result, workdir, state_dict):
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "grayscale repeated to 3 channels, normalised with mean 0.485,0.456,0.406 std "
        in result.stdout
    )
    tuned = T.load_run(workdir)
    flat = _flat(tuned.state)
    for key, value in state_dict.items():
        frozen = key.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")
        if frozen:  # parameters and (BatchNorm in inference mode) statistics untouched
            np.testing.assert_array_equal(flat[key], value.astype(flat[key].dtype), err_msg=key)
        elif key.endswith("weight") and not key.startswith("fc"):
            assert not np.array_equal(flat[key], value), key
    return tuned


@pytest.fixture(scope="module")
def course_run(resnet18_files, tmp_path_factory):
    root, _, state_dict = resnet18_files
    tmp = tmp_path_factory.mktemp("course")
    result = _course_command(tmp, "resnet18", root / "resnet18.pth")
    return tmp / "run", _check_course_run(result, tmp / "run", state_dict)


def test_the_course_fine_tuning_command(course_run):
    _, tuned = course_run
    assert tuned.config.normalize == IMAGENET and tuned.config.channels == 3


@pytest.mark.slow
def test_the_course_fine_tuning_command_with_resnet50(tmp_path):
    torch.manual_seed(0)
    model = _tv().resnet50()
    torch.save(model.state_dict(), tmp_path / "resnet50.pth")
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    result = _course_command(tmp_path, "resnet50", tmp_path / "resnet50.pth")
    _check_course_run(result, tmp_path / "run", state_dict)


@pytest.mark.slow  # mobilenet_v2's 52 convolutions compile for a while
def test_mobilenet_v2_fine_tunes_with_its_features_frozen(tmp_path):
    torch.manual_seed(0)
    model = _tv().mobilenet_v2()
    torch.save(model.state_dict(), tmp_path / "mobilenet_v2.pth")
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    assert W.classifier_prefix("mobilenet_v2") == "classifier.1"
    result = _cli(
        "train", "--model", "mobilenet_v2", "--init-from", tmp_path / "mobilenet_v2.pth",
        "--set", "init_exclude=classifier.1", "--set", "freeze=features", "--image-size", 32,
        "--epochs", 1, "--batch-size", 256, "--workdir", tmp_path / "run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    flat = _flat(T.load_run(tmp_path / "run").state)
    for key, value in state_dict.items():
        if key.startswith("features."):  # frozen: parameters and statistics untouched
            np.testing.assert_array_equal(flat[key], value.astype(flat[key].dtype), err_msg=key)
    assert flat["classifier.1.weight"].shape == (10, 1280)


def test_export_loads_into_torchvisions_model_strictly(course_run, tmp_path):
    workdir, tuned = course_run
    out = tmp_path / "tuned.safetensors"
    result = _cli("export", workdir, out)  # the command line
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"to {out}" in result.stdout
    T.export_workdir(workdir, tmp_path / "tuned.pth", log=lambda *a: None)  # the API
    images = tuned.normalize(tuned.splits["test"].images[:4])
    ours = np.asarray(tuned.model.apply(tuned.variables, jnp.asarray(images), train=False))
    for state_dict in (
        {k: torch.from_numpy(v) for k, v in W.read_state_dict(out).items()},
        torch.load(tmp_path / "tuned.pth", weights_only=True),
    ):
        model = _tv().resnet18(num_classes=10)
        model.load_state_dict(state_dict, strict=True)
        with torch.no_grad():
            theirs = model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match=r"tuned.npz: export to a .safetensors or .pth file"):
        T.export_workdir(workdir, tmp_path / "tuned.npz")
