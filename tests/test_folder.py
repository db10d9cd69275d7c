"""Image folders as datasets (`data.load('folder:PATH')`, `--dataset folder:PATH`): classes,
splits, formats and modes, unreadable files, refusals, the host transforms, and a run on a
folder through the command line."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_jax import data
from cnn_jax.data import folder as F
from cnn_jax.data import images as I
from cnn_jax.testing import datasets as D


def _load(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning unless a test expects one
        return data.load(f"folder:{root}", **kw)


def _all(split):
    """Every example of a split in its stored order: (images, labels)."""
    batches = list(data.batches(split, 7, normalize=False, drop_remainder=False, threads=0))
    keep = np.concatenate([b["mask"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])[keep]
    return images, np.concatenate([b["label"] for b in batches])[keep]


# ------------------------------------------------------------------------------------------------
# Classes and splits
# ------------------------------------------------------------------------------------------------


def test_classes_are_sorted_subfolders_found_recursively(tmp_path):
    root = D.image_folder(tmp_path / "f", classes=("zebra", "ant", "mole"), per_class=10)
    D.save_image(
        root / "ant" / "deeper" / "x.PNG", D.random_image(np.random.default_rng(0), 24, 32)
    )
    (root / "ant" / "notes.txt").write_text("not an image")
    ds = _load(root)
    assert ds["train"].class_names == ("ant", "mole", "zebra")
    total = sum(len(s) for s in ds.values())
    assert total == 31  # the nested PNG counts, the .txt does not
    assert ds["train"].image_shape == (24, 32, 3) and ds["train"].num_classes == 3
    listing = F.scan(root)
    assert any("ant/deeper/x.PNG" in files for files in listing.files.values())


def test_seeded_stratified_split_is_80_10_10_recorded_and_reproducible(tmp_path):
    root = D.image_folder(tmp_path / "f", classes=("a", "b"), per_class=20, size=(8, 8))
    ds = _load(root)
    assert {k: len(v) for k, v in ds.items()} == {"train": 32, "validation": 4, "test": 4}
    for split in ds.values():
        assert np.bincount(split.labels).tolist() == [len(split) // 2] * 2  # stratified
        assert re.fullmatch(r"[0-9a-f]{64}", split.details["files_sha256"])
    listing = F.scan(root)
    files = [set(listing.files[s]) for s in ("train", "validation", "test")]
    assert set.union(*files) == {f"{c}/{i:05d}.jpg" for c in "ab" for i in range(20)}
    assert sum(map(len, files)) == 40  # disjoint
    again, other = F.scan(root), F.scan(root, split_seed=1)
    assert again.files == listing.files and other.files != listing.files
    assert (
        _load(root, split_seed=1)["test"].details["files_sha256"]
        != ds["test"].details["files_sha256"]
    )
    assert "80% of each class (split seed 0)" in ds["train"].source


def test_split_folders_are_the_splits(tmp_path):
    for split, n in (("train", 10), ("val", 3), ("test", 2)):
        D.image_folder(tmp_path / "f" / split, classes=("a", "b"), per_class=n, size=(8, 8))
    ds = _load(tmp_path / "f")
    assert {k: len(v) for k, v in ds.items()} == {"train": 20, "validation": 6, "test": 4}
    assert ds["validation"].details["split"] == "val/"


def test_a_validation_folder_without_test_becomes_the_test_split(tmp_path):
    D.image_folder(tmp_path / "f" / "train", classes=("a", "b"), per_class=10, size=(8, 8))
    D.image_folder(tmp_path / "f" / "validation", classes=("a", "b"), per_class=3, size=(8, 8))
    ds = _load(tmp_path / "f")
    # The split that picks the best checkpoint is never the one reported.
    assert {k: len(v) for k, v in ds.items()} == {"train": 18, "validation": 2, "test": 6}
    assert ds["test"].details["split"].startswith("validation/")


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ({}, "no images"),
        ({"loose.jpg": None}, "no class subfolders"),
        ({"only/a.jpg": None}, "a single class"),
        ({"a/1.jpg": None, "b/x.txt": None}, r"class folder\(s\) b .* hold no images"),
        ({"train/a/1.jpg": None, "train/b/1.jpg": None, "val/a/1.jpg": None},
         r"different classes \(missing in val/: b\)"),
        ({"train/a/1.jpg": None, "train/b/1.jpg": None, "val/a/1.jpg": None,
          "validation/a/1.jpg": None}, "both val/ and validation/"),
        ({"train/a/1.jpg": None, "train/b/1.jpg": None, "extra/a/1.jpg": None}, "extra/"),
        ({"test/a/1.jpg": None}, "no train/"),
        ({"a/1.jpg": None, "b/1.jpg": None}, r"validation and test split\(s\) would be empty"),
        ({"a/1.jpg": (8, 8), "b/1.jpg": (9, 8)}, r"different sizes \(e.g. 8x8, 9x8\)"),
    ],
    ids=["empty", "loose", "single", "empty_class", "classes_differ", "val_twice", "extra",
         "no_train", "tiny", "sizes"],
)  # fmt: skip
def test_folders_that_cannot_be_a_dataset_are_refused_in_one_line(tmp_path, layout, match):
    rng = np.random.default_rng(0)
    (tmp_path / "f").mkdir()
    for rel, size in layout.items():
        path = tmp_path / "f" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("x")
        else:
            D.save_image(path, D.random_image(rng, *(size or (8, 8))))
    with pytest.raises(data.DatasetError, match=match) as err:
        _load(tmp_path / "f")
    assert "\n" not in str(err.value)


def test_no_such_folder(tmp_path):
    with pytest.raises(data.DatasetError, match="no such folder"):
        data.load(f"folder:{tmp_path / 'missing'}")


# ------------------------------------------------------------------------------------------------
# Files: formats, modes, orientation, unreadable ones
# ------------------------------------------------------------------------------------------------


def test_every_format_and_mode_becomes_the_datasets_channels(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "f"
    rgb = D.random_image(rng, 10, 12)
    files = {
        "a/rgb.jpg": ("RGB", None),
        "a/grey.png": ("L", None),
        "a/alpha.png": ("RGBA", None),
        "a/palette.gif": ("P", None),
        "b/wide.png": ("I;16", None),
        "b/x.bmp": (None, None),
        "b/x.webp": (None, None),
        "b/cmyk.jpg": ("CMYK", None),
        "a/more.jpg": (None, None),  # five per class: one each for validation and test
        "b/more.jpg": (None, None),
    }
    for rel, (mode, _) in files.items():
        D.save_image(root / rel, rgb, mode=mode)
    ds = _load(root, image_size=10, stream=False)
    images = np.concatenate([s.images for s in ds.values()])
    assert images.shape == (10, 10, 10, 3) and images.dtype == np.uint8
    # A palette GIF and an RGBA PNG decode to the RGB pixels they were made from (the GIF up to
    # its 256-colour quantisation); a 16-bit grey PNG to the same grey as an 8-bit one.
    spec = I.ImageSpec((10, 12), 3)
    np.testing.assert_array_equal(I.decode(root / "a/alpha.png", spec), rgb)
    assert np.abs(I.decode(root / "a/palette.gif", spec).astype(int) - rgb).mean() < 12
    grey = I.ImageSpec((10, 12), 1)
    np.testing.assert_array_equal(
        I.decode(root / "b/wide.png", grey), I.decode(root / "a/grey.png", grey)
    )


def test_a_grey_folder_has_one_channel(tmp_path):
    root = D.image_folder(tmp_path / "f", per_class=10, size=(8, 8), channels=1, ext="png")
    ds = _load(root)
    assert ds["train"].image_shape == (8, 8, 1) and ds["train"].mean.shape == (1,)


def test_exif_orientation_is_applied(tmp_path):
    rng = np.random.default_rng(0)
    upright = D.random_image(rng, 12, 20)  # 12 high, 20 wide as displayed
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # stored 20 x 12, rotated
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(tmp_path / "r.png", exif=exif)
    out = I.decode(tmp_path / "r.png", I.ImageSpec(None, 3))
    np.testing.assert_array_equal(out, upright)
    with I.open_image(tmp_path / "r.png") as img:
        assert I.oriented_size(img) == (12, 20)


def test_unreadable_files_are_skipped_with_one_warning(tmp_path):
    root = D.image_folder(tmp_path / "f", classes=("a", "b"), per_class=10, size=(8, 8))
    good = (root / "a" / "00000.jpg").read_bytes()
    for i in range(4):
        (root / "a" / f"bad{i}.jpg").write_bytes(b"not an image")
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "b" / "cut.jpg").write_bytes(good[: len(good) // 2])  # truncated: fails on decode
    with pytest.warns(data.DatasetWarning) as caught:
        ds = data.load(f"folder:{root}")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and "skipped 6 unreadable image file(s)" in message
    assert message.count(".jpg") + message.count(".png") == 5 and "and 1 more" in message
    assert sum(len(s) for s in ds.values()) == 20
    assert sum(s.details["skipped_unreadable"] for s in ds.values()) == 6


# ------------------------------------------------------------------------------------------------
# The host transforms
# ------------------------------------------------------------------------------------------------


def test_evaluation_view_is_a_centred_crop_of_the_output_aspect():
    assert I.center_box(100, 200, (50, 50)) == (0.0, 50.0, 100.0, 100.0)
    top, left, h, w = I.center_box(256, 256, (224, 224), crop_fraction=0.875)
    assert (h, w) == (224, 224) and (top, left) == (16, 16)
    # torchvision's Resize(256) + CenterCrop(224) on a 300 x 400 image covers this box.
    top, left, h, w = I.center_box(300, 400, (224, 224), crop_fraction=224 / 256)
    assert h == w == pytest.approx(300 * 224 / 256) and left == pytest.approx((400 - w) / 2)


def test_random_resized_crop_box_is_torchvisions():
    from cnn_jax.testing.torch_models import torchvision_models

    if torchvision_models() is None:
        pytest.skip("torchvision is not installed")
    import torch
    from torchvision.transforms import RandomResizedCrop

    # Where no try fits, both take the same centred box with the ratio clamped.
    for h, w in ((100, 10), (10, 100), (50, 50)):
        theirs = RandomResizedCrop.get_params(torch.zeros(3, h, w), [1.0, 1.0], [1.5, 2.0])
        ours = I.random_resized_crop_box(np.random.default_rng(0), h, w, (1.0, 1.0), (1.5, 2.0))
        assert ours == tuple(theirs), (h, w)
    # Drawn boxes: inside the image, area and aspect ratio in range (up to rounding).
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, bh, bw = I.random_resized_crop_box(rng, 120, 90)
        assert min(top, left) >= 0 and top + bh <= 120 and left + bw <= 90
        assert 0.07 <= bh * bw / (120 * 90) <= 1.0 and 0.7 <= bw / bh <= 1.4


def test_host_augmentation_is_a_function_of_its_generator(tmp_path):
    rng = np.random.default_rng(0)
    D.save_image(tmp_path / "x.jpg", D.random_image(rng, 60, 80))
    spec = I.ImageSpec((32, 32), 3, 0.875)
    aug = I.HostAugment(color_jitter=0.4)
    a = I.decode(tmp_path / "x.jpg", spec, aug, np.random.default_rng([0, 5, 1]))
    b = I.decode(tmp_path / "x.jpg", spec, aug, np.random.default_rng([0, 5, 1]))
    c = I.decode(tmp_path / "x.jpg", spec, aug, np.random.default_rng([0, 5, 2]))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (32, 32, 3) and not np.array_equal(a, c)
    flip = I.HostAugment(scale=None, flip=True)
    views = {I.decode(tmp_path / "x.jpg", spec, flip, np.random.default_rng(s)).tobytes()
             for s in range(8)}  # fmt: skip
    plain = I.decode(tmp_path / "x.jpg", spec)
    assert views == {plain.tobytes(), plain[:, ::-1].tobytes()}
    with pytest.raises(ValueError, match="rng"):
        I.decode(tmp_path / "x.jpg", spec, aug)


def test_large_jpegs_are_decoded_at_a_reduced_scale_close_to_a_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    D.save_image(tmp_path / "big.jpg", D.random_image(rng, 480, 640), quality=95)
    spec = I.ImageSpec((60, 60), 3)
    fast = I.decode(tmp_path / "big.jpg", spec).astype(float)
    with Image.open(tmp_path / "big.jpg") as img:
        full = np.asarray(img.resize((60, 60), Image.Resampling.BILINEAR, box=(80, 0, 560, 480)))
    assert np.abs(fast - full).mean() < 3  # pixel levels of 255


# ------------------------------------------------------------------------------------------------
# A run on a folder, through the command line
# ------------------------------------------------------------------------------------------------


def test_train_and_evaluate_on_a_folder_from_the_command_line(tmp_path, capsys):
    from cnn_jax import cli
    from cnn_jax import train as T

    root = D.image_folder(tmp_path / "flowers", classes=("daisy", "rose"), per_class=12)
    (root / "rose" / "broken.jpg").write_bytes(b"xx")
    workdir = tmp_path / "run"
    args = ["train", "--dataset", f"folder:{root}", "--epochs", "1", "--batch-size", "8",
            "--workdir", str(workdir)]  # fmt: skip
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "cnn-jax: warning: folder:" in err and "skipped 1 unreadable" in err
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["class_names"] == ["daisy", "rose"]
    assert summary["data"]["train"]["skipped_unreadable"] == 1
    assert (
        summary["data"]["test"]["files_sha256"]
        == data.load(f"folder:{root}", image_size=32)["test"].details["files_sha256"]
    )
    run = T.load_run(workdir)
    assert run.splits["test"].class_names == ("daisy", "rose")
    assert cli.main(["evaluate", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {summary['test_accuracy']:.4f}" in out
    # The default work directory is named after the folder.
    from cnn_jax.train.run.config import resolve

    c = T.default_config()
    assert c.workdir == ""
    c.dataset = f"folder:{root}/"
    assert Path(resolve(c).workdir) == Path("runs/lenet5-flowers")


def test_evaluating_a_run_on_a_python_registered_dataset_says_how(tmp_path, capsys):
    from cnn_jax import cli
    from cnn_jax import train as T

    # A run of a dataset registered in another process: its config names it, nothing here does.
    config = T.default_config()
    config.update(dict(dataset="my-registered-variant", workdir=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'my-registered-variant'" in err
    assert "registered in Python" in err and f"load_run({str(tmp_path)!r})" in err
