"""Data: the embedded dataset, tfds without TensorFlow, batching and augmentations."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax import data
from cnn_jax.data import digits as digits_module


def test_digits_splits_are_fixed_disjoint_and_real(digits):
    assert {k: len(v) for k, v in digits.items()} == {"train": 1257, "validation": 270, "test": 270}
    idx = digits_module.split_indices()
    all_idx = np.concatenate(list(idx.values()))
    assert len(np.unique(all_idx)) == 1797  # disjoint and complete
    from sklearn.datasets import load_digits

    ref = load_digits()
    for name, split in digits.items():
        np.testing.assert_array_equal(split.labels, ref.target[idx[name]])
        expected = np.round(ref.images[idx[name]] * 255 / 16).astype(np.uint8)[..., None]
        np.testing.assert_array_equal(split.images, expected)
        assert split.num_classes == 10 and split.image_shape == (8, 8, 1)
    # normalisation statistics come from the train split
    train = digits["train"].images / 255.0
    np.testing.assert_allclose(digits["test"].mean, [train.mean()], rtol=1e-5)
    np.testing.assert_allclose(digits["test"].std, [train.std()], rtol=1e-4)


def test_resize_for_lenet():
    ds = data.load("digits", image_size=32)
    assert ds["train"].image_shape == (32, 32, 1)
    assert ds["train"].images.dtype == np.uint8
    with pytest.raises(data.DatasetError, match="image_size"):
        data.load("digits", image_size=(0, 3))


def test_random_access_with_length(digits):
    split = digits["validation"]
    example = split[5]
    assert example["image"].shape == (8, 8, 1) and 0 <= example["label"] < 10
    assert len(split) == 270


def test_shuffle_is_a_function_of_seed_and_epoch(digits):
    split = digits["train"]
    labels = lambda **kw: np.concatenate(
        [b["label"] for b in data.batches(split, 100, shuffle=True, **kw)]
    )
    np.testing.assert_array_equal(labels(seed=0, epoch=3), labels(seed=0, epoch=3))
    assert not np.array_equal(labels(seed=0, epoch=3), labels(seed=0, epoch=4))
    assert not np.array_equal(labels(seed=0, epoch=3), labels(seed=1, epoch=3))
    perm = data.epoch_permutation(len(split), 0, 3)
    np.testing.assert_array_equal(labels(seed=0, epoch=3), split.labels[perm[:1200]])


@pytest.mark.parametrize("batch_size", [1, 32, 100, 270, 1000])
def test_eval_batches_count_every_example_once(digits, batch_size):
    split = digits["test"]
    seen = []
    shapes = set()
    for batch in data.batches(split, batch_size):
        shapes.add(batch["image"].shape)
        seen.append(batch["label"][batch["mask"]])
    assert shapes == {(batch_size, 8, 8, 1)}  # static shapes: one trace
    np.testing.assert_array_equal(np.concatenate(seen), split.labels)


def test_training_batches_drop_the_remainder(digits):
    got = list(data.batches(digits["train"], 100, shuffle=True))
    assert len(got) == 12 == data.num_batches(1257, 100, drop_remainder=True)
    assert all(b["mask"].all() for b in got)
    with pytest.raises(ValueError, match="larger than the split"):
        list(data.batches(digits["test"], 1000, drop_remainder=True))
    with pytest.raises(ValueError, match="batch_size"):
        list(data.batches(digits["test"], 0))


def test_normalised_and_raw_batches(digits):
    b = next(data.batches(digits["train"], 1257))
    assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32
    assert abs(float(b["image"].mean())) < 1e-5 and abs(float(b["image"].std()) - 1) < 1e-4
    raw = next(data.batches(digits["train"], 16, normalize=False))
    assert raw["image"].dtype == np.uint8 and raw["image"].max() > 1  # raw pixels, 0-255


def test_device_fast_path_equals_host_batches(digits):
    split = digits["train"]
    on_device = data.to_device(split)
    idx, _ = data.batch_indices(len(split), 64, shuffle=True, seed=1, epoch=2, drop_remainder=True)
    host = next(data.batches(split, 64, shuffle=True, seed=1, epoch=2))
    dev = jax.jit(data.gather)(on_device, jnp.asarray(idx[0]))
    np.testing.assert_allclose(dev["image"], host["image"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(dev["label"], host["label"])


def test_batches_resume_mid_epoch_and_read_one_process_rows(digits):
    """``start`` skips whole batches and ``rows`` keeps a block of every batch: what a resumed
    run and one process of a multi-process run read, from the same (seed, epoch) order."""
    split = digits["train"]
    full = list(data.batches(split, 64, shuffle=True, seed=3, epoch=1))
    tail = list(data.batches(split, 64, shuffle=True, seed=3, epoch=1, start=5))
    half = list(data.batches(split, 64, shuffle=True, seed=3, epoch=1, rows=slice(32, 64)))
    assert len(tail) == len(full) - 5 and len(half) == len(full)
    for a, b in zip(full[5:], tail, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    for a, b in zip(full, half, strict=True):
        np.testing.assert_array_equal(a["label"][32:], b["label"])
        chex.assert_shape(b["image"], (32, 8, 8, 1))
    other_epoch = next(data.batches(split, 64, shuffle=True, seed=3, epoch=2))
    assert not np.array_equal(other_epoch["label"], full[0]["label"])


def test_background_reading_keeps_the_order(digits):
    """grain's reader threads change when a batch is read, never which batch comes next."""
    split = digits["train"]
    kwargs = dict(shuffle=True, seed=0, epoch=4, normalize=False)
    inline = list(data.batches(split, 32, threads=0, **kwargs))
    threaded = list(data.batches(split, 32, threads=4, **kwargs))
    assert len(inline) == len(threaded) == 1257 // 32
    for a, b in zip(inline, threaded, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    dataset = data.batch_dataset(split, 32, **kwargs)  # random access to any batch
    np.testing.assert_array_equal(dataset[7]["label"], inline[7]["label"])


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 2, 10]), "outside \\[0, 10\\)"),
        (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, -1, 2, 3]), "outside"),
        (np.zeros((4, 8), np.uint8), np.array([0, 1, 2, 3]), "must be \\(N, H, W, C\\)"),
        (np.zeros((4, 8, 8, 1), np.float32), np.array([0, 1, 2, 3]), "must be uint8"),
        (np.zeros((0, 8, 8, 1), np.uint8), np.array([], np.int64), "empty"),
        (np.zeros((4, 8, 8, 1), np.uint8), np.array([0.0, 1, 2, 3]), "integers"),
        (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 2]), "expected 4 labels"),
    ],
    ids=["label_high", "label_negative", "rank", "dtype", "empty", "float_labels", "count"],
)
def test_bad_data_is_refused_with_a_clear_message(images, labels, match):
    with pytest.raises(data.DatasetError, match=match):
        data.from_arrays("mine", {"train": (images, labels)}, num_classes=10)


def test_from_arrays_needs_train_and_one_image_shape():
    x, y = np.zeros((4, 8, 8, 1), np.uint8), np.arange(4)
    with pytest.raises(data.DatasetError, match="'train' split is required"):
        data.from_arrays("mine", {"test": (x, y)}, num_classes=4)
    with pytest.raises(data.DatasetError, match="different image shapes"):
        data.from_arrays(
            "mine", {"train": (x, y), "test": (np.zeros((4, 9, 9, 1), np.uint8), y)}, num_classes=4
        )
    ds = data.from_arrays("mine", {"train": (x[..., 0], y)}, num_classes=4)  # (N, H, W) is fine
    assert ds["train"].image_shape == (8, 8, 1)


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(data.DatasetError, match=r"unknown dataset 'mnistt'.*digits.*cifar10"):
        data.load("mnistt")


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(data.DatasetError, match="tfds build mnist") as err:
        data.load("mnist", data_dir=str(tmp_path))
    assert "never downloads" in str(err.value)


@pytest.mark.parametrize(("name", "shape"), [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_datasets_flow_through_data_source(name, shape):
    with tfds.testing.mock_data(num_examples=40):
        ds = data.load(name)
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"].image_shape == shape and len(ds["train"]) == 40
    batch = next(data.batches(ds["train"], 16, shuffle=True))
    assert batch["image"].shape == (16, *shape)


def test_variable_size_images_need_image_size():
    with (
        tfds.testing.mock_data(num_examples=6),
        pytest.raises(data.DatasetError, match="pass image_size"),
    ):
        data.load("tf_flowers")
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load("tf_flowers", image_size=24)
    assert ds["train"].image_shape == (24, 24, 3)


# ------------------------------------------------------------------------------------------------
# Augmentations
# ------------------------------------------------------------------------------------------------

IMAGES = jax.random.uniform(jax.random.key(0), (8, 12, 10, 3))
AUGMENTS = {
    "crop": data.Augment(crop_padding=3),
    "crop_reflect": data.Augment(crop_padding=2, crop_mode="reflect"),
    "translate": data.Augment(translate=3),
    "flip": data.Augment(flip=True),
    "brightness": data.Augment(brightness=0.4),
    "contrast": data.Augment(contrast=(0.2, 1.8)),
    "cutout": data.Augment(cutout=5),
    "all": data.Augment(
        crop_padding=2, translate=1, flip=True, brightness=0.2, contrast=(0.5, 1.5), cutout=3
    ),
}


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_augmentations_keep_shape_dtype_range_and_depend_on_the_key(name):
    aug = AUGMENTS[name]
    apply = jax.jit(chex.assert_max_traces(aug.__call__, n=1))
    a = apply(jax.random.key(1), IMAGES)
    b = apply(jax.random.key(2), IMAGES)
    chex.assert_equal_shape([a, IMAGES])
    assert a.dtype == IMAGES.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not np.array_equal(a, b)  # another key, another augmentation
    np.testing.assert_array_equal(a, apply(jax.random.key(1), IMAGES))  # reproducible
    # each image in the batch draws its own randomness
    same_input = jnp.broadcast_to(IMAGES[:1], IMAGES.shape)
    out = apply(jax.random.key(3), same_input)
    assert len({np.asarray(img).tobytes() for img in out}) > 1


def test_eval_path_is_the_identity():
    np.testing.assert_array_equal(data.Augment()(jax.random.key(0), IMAGES), IMAGES)


def test_flip_and_crop_do_what_they_say():
    img = IMAGES[0]
    flipped = data.random_flip_lr(jax.random.key(0), img, p=1.0)
    np.testing.assert_array_equal(flipped, img[:, ::-1])
    np.testing.assert_array_equal(data.random_flip_lr(jax.random.key(0), img, p=0.0), img)
    np.testing.assert_array_equal(data.random_crop(jax.random.key(0), img, 0), img)
    crop = data.random_crop(jax.random.key(5), img, 2)
    # the crop is a window of the zero-padded image
    padded = np.pad(np.asarray(img), ((2, 2), (2, 2), (0, 0)))
    windows = [padded[y : y + 12, x : x + 10] for y in range(5) for x in range(5)]
    assert any(np.array_equal(crop, w) for w in windows)


def test_cutout_zeroes_a_square():
    img = jnp.ones((20, 20, 1))
    for seed in range(5):
        out = np.asarray(data.cutout(jax.random.key(seed), img, 4))
        zero = out[..., 0] == 0
        rows, cols = np.nonzero(zero)
        assert zero.sum() <= 16
        assert rows.max() - rows.min() + 1 <= 4 and cols.max() - cols.min() + 1 <= 4
        assert zero.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_augment_refuses_a_single_image():
    with pytest.raises(ValueError, match="batch"):
        data.Augment(flip=True)(jax.random.key(0), IMAGES[0])
