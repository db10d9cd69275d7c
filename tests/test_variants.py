"""Dataset variants (cnn_jax.data.variants) and datasets registered by name: each transform does
exactly what it documents, deterministically, and a registered dataset trains through `fit`."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data import variants as V
from cnn_jax.errors import DatasetError


@pytest.fixture(scope="module")
def ds():
    return data.load("digits", image_size=16)


def test_subset_keeps_n_per_class_deterministically(ds):
    a, b = V.subset(ds, 7, seed=3), V.subset(ds, 7, seed=3)
    assert np.bincount(a["train"].labels).tolist() == [7] * 10
    np.testing.assert_array_equal(a["train"].images, b["train"].images)
    assert not np.array_equal(a["train"].images, V.subset(ds, 7, seed=4)["train"].images)
    # Every kept example is an original one, and the other splits are untouched.
    originals = {x.tobytes() for x in ds["train"].images}
    assert all(x.tobytes() in originals for x in a["train"].images)
    np.testing.assert_array_equal(a["test"].images, ds["test"].images)
    assert "7 per class (seed 3)" in a["train"].source
    # Statistics are the subset's own.
    assert not np.allclose(a["train"].mean, ds["train"].mean)
    with pytest.raises(DatasetError, match="fewer than per_class"):
        V.subset(ds, 10_000)


def test_select_classes_relabels_in_the_order_given(ds):
    sel = V.select_classes(ds, [7, 2])
    for split in ("train", "validation", "test"):
        s, orig = sel[split], ds[split]
        assert s.num_classes == 2
        keep = np.isin(orig.labels, [7, 2])
        np.testing.assert_array_equal(s.images, orig.images[keep])
        np.testing.assert_array_equal(s.labels, np.where(orig.labels[keep] == 7, 0, 1))
    for bad in ([], [1, 1], [10], [-1]):
        with pytest.raises(DatasetError, match="distinct labels"):
            V.select_classes(ds, bad)


def test_shift_moves_pixels_and_fills():
    x = np.arange(2 * 4 * 5 * 1, dtype=np.uint8).reshape(2, 4, 5, 1) + 1
    right = V.shift(x, 0, 2)
    np.testing.assert_array_equal(right[:, :, 2:], x[:, :, :3])
    assert (right[:, :, :2] == 0).all()
    up = V.shift(x, -1, 0, fill=9)
    np.testing.assert_array_equal(up[:, :3], x[:, 1:])
    assert (up[:, 3] == 9).all()
    assert (V.shift(x, 4, 0) == 0).all()  # moved out of the frame entirely
    np.testing.assert_array_equal(V.shift(x, 0, 0), x)


def test_on_canvas_centres_and_refuses_a_smaller_canvas(ds):
    c = V.on_canvas(ds, 24)
    assert c["train"].image_shape == (24, 24, 1)
    np.testing.assert_array_equal(c["test"].images[:, 4:20, 4:20], ds["test"].images)
    assert c["test"].images[:, :4].max() == 0
    with pytest.raises(DatasetError, match="smaller than the images"):
        V.on_canvas(ds, 8)


def test_spurious_cue_correlates_in_training_only(ds):
    s = V.spurious_cue(ds, cue_class=3, train_correlation=1.0, test_correlation=0.5, seed=1)
    for split in ("train", "validation"):
        cue, is3 = V.cue_mask(s[split]), s[split].labels == 3
        np.testing.assert_array_equal(cue, is3)  # every 3 and nothing else
    cue, is3 = V.cue_mask(s["test"]), s["test"].labels == 3
    # Independent of the label at test time: about half of each group carries it.
    assert 0.3 < cue[is3].mean() < 0.7 and 0.4 < cue[~is3].mean() < 0.6
    assert not V.cue_mask(ds["test"]).any()  # the plain digits never look striped
    # The cue only brightens background pixels; labels are unchanged.
    assert (s["test"].images >= ds["test"].images).all()
    np.testing.assert_array_equal(s["test"].labels, ds["test"].labels)
    with pytest.raises(DatasetError, match="train_correlation"):
        V.spurious_cue(ds, cue_class=3, train_correlation=1.5)
    with pytest.raises(DatasetError, match="cue_class"):
        V.spurious_cue(ds, cue_class=10)


def test_registered_datasets_load_by_name_and_resize():
    name = "test-variants-digits-0to2"
    data.register(name, lambda **kw: V.select_classes(data.load("digits", **kw), range(3)))
    assert name in data.registered()
    with pytest.raises(DatasetError, match="already registered"):
        data.register(name, lambda **kw: None)
    with pytest.raises(DatasetError, match="already registered"):
        data.register("digits", lambda **kw: None, replace=True)  # embedded: never replaced
    data.register(
        name, lambda **kw: V.select_classes(data.load("digits", **kw), range(4)), replace=True
    )
    assert data.load(name)["train"].num_classes == 4
    loaded = data.load(name, image_size=12)
    assert loaded["train"].image_shape == (12, 12, 1) and loaded["train"].num_classes == 4
    # A factory that ignores image_size is resized by load.
    data.register("test-variants-fixed", lambda **kw: data.load("digits"))
    assert data.load("test-variants-fixed", image_size=10)["test"].image_shape == (10, 10, 1)
    data.register("test-variants-broken", lambda **kw: {"train": loaded["train"]})
    with pytest.raises(DatasetError, match="no \\['test', 'validation'\\]"):
        data.load("test-variants-broken")
    with pytest.raises(DatasetError, match=f"Registered in this process: .*{name}"):
        data.load("no-such-dataset")
