"""`cnn-jax prepare`: tfds array_record datasets written from the official archives (built here
from random data in their real formats), without TensorFlow, read back by `data.load`."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cnn_jax import data
from cnn_jax.data import archives
from cnn_jax.testing import datasets as D

QUIET = dict(log=lambda *a: None)


def _records(data_dir, name, split):
    return list(tfds.data_source(name, split=split, data_dir=str(data_dir)))


def _same_info_as_tfds(name, data_dir, tmp_path, config=None):
    """Our prepared dataset_info against tfds's own builder's (built unprepared, offline)."""
    ours = tfds.builder(f"{name}/{config}" if config else name, data_dir=str(data_dir)).info
    kwargs = {"config": config} if config else {}
    theirs = tfds.builder_cls(name)(data_dir=str(tmp_path / "theirs"), **kwargs).info
    assert repr(ours.features) == repr(theirs.features)
    assert (ours.full_name, ours.supervised_keys) == (theirs.full_name, theirs.supervised_keys)
    assert ours.description == theirs.description and ours.citation == theirs.citation
    assert ours.file_format.value == "array_record"
    return ours


def test_cifar10_from_the_python_tarball(tmp_path):
    tarball, made = D.cifar_tarball(tmp_path / "cifar-10-python.tar.gz", n_train=30, n_test=10)
    done = data.prepare("cifar10", tarball, tmp_path / "tfds", **QUIET)
    assert done["dataset"] == "cifar10" and done["splits"] == {"train": 30, "test": 10}
    info = _same_info_as_tfds("cifar10", tmp_path / "tfds", tmp_path)
    assert info.features["label"].names[:2] == ["class0", "class1"]  # from batches.meta
    for split in ("train", "test"):
        images, labels = made[split]
        for record in _records(tmp_path / "tfds", "cifar10", split):
            index = int(record["id"].decode().split("_")[1])  # tfds's ids: train_00012
            np.testing.assert_array_equal(record["image"], images[index])
            assert record["label"] == labels[index]
    ds = data.load("cifar10", data_dir=str(tmp_path / "tfds"))
    assert {k: len(v) for k, v in ds.items()} == {"train": 27, "validation": 3, "test": 10}


def test_cifar100_keeps_fine_and_coarse_labels(tmp_path):
    tarball, made = D.cifar_tarball(tmp_path / "c100.tar.gz", n_train=12, n_test=6, hundred=True)
    data.prepare("cifar100", tarball, tmp_path / "tfds", **QUIET)
    info = _same_info_as_tfds("cifar100", tmp_path / "tfds", tmp_path)
    assert info.features["coarse_label"].names[0] == "coarse0"
    images, fine, coarse = made["test"]
    for record in _records(tmp_path / "tfds", "cifar100", "test"):
        i = int(record["id"].decode().split("_")[1])
        np.testing.assert_array_equal(record["image"], images[i])
        assert (record["label"], record["coarse_label"]) == (fine[i], coarse[i])


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
def test_mnist_family_from_the_four_idx_files(tmp_path, name):
    folder, made = D.idx_files(tmp_path / "idx", n_train=20, n_test=8)
    data.prepare(name, folder, tmp_path / "tfds", **QUIET)
    _same_info_as_tfds(name, tmp_path / "tfds", tmp_path)
    for split in ("train", "test"):
        images, labels = made[split]
        stored = sorted(
            (r["image"][..., 0].tobytes(), int(r["label"]))
            for r in _records(tmp_path / "tfds", name, split)
        )
        assert stored == sorted((x.tobytes(), int(y)) for x, y in zip(images, labels, strict=True))
    assert data.load(name, data_dir=str(tmp_path / "tfds"))["train"].image_shape == (28, 28, 1)


def test_imagenette_and_imagewoof_from_fast_ais_folders(tmp_path):
    nette = tfds.builder_cls("imagenette")(data_dir=str(tmp_path / "x")).info
    wnids = nette.features["label"].names
    D.fast_ai_folder(tmp_path / "imagenette2-160", wnids, per_class=2)
    done = data.prepare("imagenette", tmp_path / "imagenette2-160", tmp_path / "tfds", **QUIET)
    assert done["dataset"] == "imagenette/160px-v2"
    assert done["splits"] == {"train": 20, "validation": 20}
    _same_info_as_tfds("imagenette", tmp_path / "tfds", tmp_path, config="160px-v2")
    ds = data.load("imagenette/160px-v2", data_dir=str(tmp_path / "tfds"), image_size=24)
    assert ds["test"].source == "validation" and ds["train"].class_names == tuple(wnids)

    D.fast_ai_folder(tmp_path / "imagewoof2-320", archives.IMAGEWOOF_LABELS, per_class=1)
    done = data.prepare("imagewoof", tmp_path / "imagewoof2-320", tmp_path / "tfds", **QUIET)
    assert done["dataset"] == "imagewoof/320px-v2"
    woof = tfds.builder("imagewoof/320px-v2", data_dir=str(tmp_path / "tfds")).info
    assert woof.features["label"].names == list(archives.IMAGEWOOF_LABELS)
    with pytest.raises(data.DatasetError, match="pass --config"):
        data.prepare("imagenette", tmp_path / "imagewoof2-320", tmp_path / "t2", **QUIET)
    with pytest.raises(data.DatasetError, match="not one of imagenette's classes"):
        data.prepare(
            "imagenette", tmp_path / "imagewoof2-320", tmp_path / "t2", config="320px", **QUIET
        )


def test_imagenet_with_a_flat_validation_folder_and_its_labels(tmp_path):
    wnids = tfds.builder_cls("imagenet2012")(data_dir=str(tmp_path / "x")).info
    wnids = wnids.features["label"].names[:2]
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for w in wnids:
        for i in range(2):
            D.save_image(root / "train" / w / f"{w}_{i}.JPEG", D.random_image(rng, 12, 16))
    Image.fromarray(D.random_image(rng, 12, 16)).convert("CMYK").save(
        root / "train" / wnids[0] / "cmyk.JPEG", format="JPEG"
    )
    Image.fromarray(D.random_image(rng, 12, 16)).save(root / "train" / wnids[1] / "png.JPEG", "PNG")
    lines = []
    for i in range(4):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        D.save_image(root / "val" / name, D.random_image(rng, 12, 16))
        lines.append(f"{name} {wnids[i % 2]}")
    (tmp_path / "labels.txt").write_text("\n".join(lines))
    done = data.prepare("imagenet2012", root, tmp_path / "tfds", labels=tmp_path / "labels.txt",
                        **QUIET)  # fmt: skip
    assert done["splits"] == {"train": 6, "validation": 4}
    _same_info_as_tfds("imagenet2012", tmp_path / "tfds", tmp_path)
    source = tfds.data_source(
        "imagenet2012", split="train", data_dir=str(tmp_path / "tfds"),
        decoders={"image": tfds.decode.SkipDecoding()},
    )  # fmt: skip
    for record in source:
        with Image.open(io.BytesIO(record["image"])) as img:
            assert (img.format, img.mode) == ("JPEG", "RGB")  # CMYK and PNG re-encoded
    val = {r["file_name"].decode(): int(r["label"]) for r in _records(tmp_path / "tfds",
           "imagenet2012", "validation")}  # fmt: skip
    assert val == {f"ILSVRC2012_val_{i + 1:08d}.JPEG": i % 2 for i in range(4)}
    # Without --labels, tfds's list of 50,000 labels cannot match a partial folder.
    with pytest.raises(data.DatasetError, match=r"has 4 images but validation_labels\.txt"):
        data.prepare("imagenet2012", root, tmp_path / "t2", **QUIET)


def test_a_prepared_folder_reads_as_the_folder_and_streams(tmp_path):
    root = D.image_folder(tmp_path / "photos", classes=("a", "b"), per_class=10, size=(16, 20))
    (root / "b" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(data.DatasetWarning, match="skipped 1 unreadable"):
        done = data.prepare("folder", root, tmp_path / "tfds", dataset_name="photos", **QUIET)
    assert done["skipped_unreadable"] == 1
    with pytest.warns(data.DatasetWarning):
        direct = data.load(f"folder:{root}")
    for stream in (False, True):
        prepared = data.load("photos", data_dir=str(tmp_path / "tfds"), stream=stream, workers=0)
        assert prepared["train"].in_memory is not stream
        assert prepared["train"].class_names == ("a", "b")
        np.testing.assert_array_equal(prepared["train"].mean, direct["train"].mean)
        for split in direct:

            def examples(s):
                batches = list(data.batches(s, 4, normalize=False, drop_remainder=False))
                keep = np.concatenate([b["mask"] for b in batches])
                return sorted(
                    (x.tobytes(), int(y)) for x, y in zip(
                        np.concatenate([b["image"] for b in batches])[keep],
                        np.concatenate([b["label"] for b in batches])[keep], strict=True)
                )  # fmt: skip

            assert examples(prepared[split]) == examples(direct[split])
    with pytest.raises(data.DatasetError, match="needs --name"):
        data.prepare("folder", root, tmp_path / "tfds", dataset_name="Bad Name", **QUIET)


def _tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def _not_a_tarball(p):
    p.write_bytes(b"not a tarball")
    return p


def _other_tarball(p):
    return _tar_with(p, {"other/file": b"x"})


def _pickle_with_code(p):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    return _tar_with(
        p, {f"cifar-10-batches-py/{n}": pickle.dumps({"data": _Evil()}) for n in names}
    )


def _empty_folder(p):
    p.mkdir()
    return p


def _bad_idx(p):
    import gzip

    D.idx_files(p)
    (p / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x01" + bytes(8)))
    return p


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("cifar10", _not_a_tarball, "not a readable CIFAR"),
        ("cifar10", _other_tarball, "no cifar-10-batches-py/"),
        ("cifar10", _pickle_with_code, "refusing to load builtins.print"),
        ("mnist", _empty_folder, "no train-images-idx3-ubyte.gz"),
        ("mnist", _bad_idx, "bad magic number"),
        ("imagenette", _empty_folder, "cannot tell the imagenette size"),
        ("nonsense", _empty_folder, "cannot prepare 'nonsense'"),
    ],
    ids=["not_tar", "not_python_version", "pickle_code", "no_idx", "bad_idx", "imagenette_name",
         "unknown"],
)  # fmt: skip
def test_bad_sources_are_refused_in_one_line(tmp_path, name, make, match, capsys):
    source = make(tmp_path / "src")
    with pytest.raises(data.DatasetError, match=match) as err:
        data.prepare(name, source, tmp_path / "tfds", **QUIET)
    assert "\n" not in str(err.value) and "code ran" not in capsys.readouterr().out


def test_not_prepared_points_at_cnn_jax_prepare_first(tmp_path):
    with pytest.raises(data.DatasetError) as err:
        data.load("cifar10", data_dir=str(tmp_path))
    message = str(err.value)
    assert "not prepared" in message and "never downloads" in message
    assert message.index("cnn-jax prepare cifar10 --from cifar-10-python.tar.gz") < message.index(
        "tfds build"
    )
    assert "`tfds build` needs it" in message


def test_prepare_train_and_evaluate_without_tensorflow(tmp_path):
    """The command line end to end in a fresh process: prepare MNIST from its idx files, train
    on it, move the data and evaluate with --data-dir; TensorFlow is never imported."""
    folder, _ = D.idx_files(tmp_path / "idx", n_train=40, n_test=10)
    script = textwrap.dedent(
        f"""
        import json, shutil, sys
        from cnn_jax import cli
        d, moved = {str(tmp_path / "tfds")!r}, {str(tmp_path / "moved")!r}
        work = {str(tmp_path / "w")!r}
        codes = [cli.main(["prepare", "mnist", "--from", {str(folder)!r}, "--data-dir", d])]
        codes.append(cli.main(["train", "--dataset", "mnist", "--data-dir", d, "--epochs", "1",
                               "--batch-size", "8", "--workdir", work]))
        shutil.move(d, moved)
        codes.append(cli.main(["evaluate", "--workdir", work]))  # the data is gone: refused
        codes.append(cli.main(["evaluate", "--workdir", work, "--data-dir", moved]))
        print(json.dumps({{"codes": codes, "tensorflow": "tensorflow" in sys.modules}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=900, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 2, 0], "tensorflow": False}
    assert f"cnn-jax train --dataset mnist --data-dir {tmp_path / 'tfds'}" in out.stdout
    assert "not prepared" in out.stderr and "test: loss" in out.stdout
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["class_names"] == [str(i) for i in range(10)] or summary["class_names"] is None


def test_prepare_an_existing_dataset_is_reported_not_redone(tmp_path):
    folder, _ = D.idx_files(tmp_path / "idx", n_train=10, n_test=4)
    lines = []
    data.prepare("mnist", folder, tmp_path / "tfds", log=lines.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = data.prepare("mnist", folder, tmp_path / "tfds", log=lines.append)
    assert again["splits"] == {"train": 10, "test": 4} and "already prepared" in lines[-1]
