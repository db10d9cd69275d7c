"""Streamed splits: read by index, never whole; the same batches as in memory; host
augmentation keyed by (seed, step, row); worker processes; bounded memory; a streamed run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.testing import datasets as D

AUG = data.HostAugment(color_jitter=0.3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream") / "f"
    return D.image_folder(root, classes=("a", "b", "c"), per_class=10, size=(20, 28))


def _load(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return data.load(f"folder:{root}", image_size=16, workers=0, **kw)


def _epoch(split, **kw):
    return list(data.batches(split, 8, normalize=False, threads=0, **kw))


def test_a_streamed_split_has_the_split_interface_but_no_images_array(folder):
    held, streamed = _load(folder)["train"], _load(folder, stream=True)["train"]
    assert isinstance(held, data.Split) and isinstance(streamed, data.StreamedSplit)
    assert (held.in_memory, streamed.in_memory) == (True, False)
    assert len(streamed) == len(held) == 24 and streamed.image_shape == held.image_shape
    assert streamed.nbytes == held.nbytes == held.images.nbytes
    np.testing.assert_array_equal(streamed.labels, held.labels)
    np.testing.assert_array_equal(streamed[5]["image"], held[5]["image"])
    assert streamed[5]["label"] == held[5]["label"]
    assert streamed.class_names == held.class_names == ("a", "b", "c")
    with pytest.raises(data.DatasetError, match=r"is streamed .* data.batches"):
        streamed.images


@pytest.mark.parametrize(
    "options",
    [
        dict(shuffle=True, seed=3, epoch=2),
        dict(drop_remainder=False),
        dict(shuffle=True, seed=1, epoch=0, start=1, rows=slice(2, 6)),
    ],
    ids=["train", "eval_padded", "resume_rows"],
)
def test_streamed_batches_equal_the_in_memory_ones(folder, options):
    held, streamed = _load(folder), _load(folder, stream=True)
    for name in ("train",) if options.get("shuffle") else held:
        a, b = _epoch(held[name], **options), _epoch(streamed[name], **options)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert set(x) == set(y) == {"image", "label", "mask"}
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
                assert x[key].dtype == y[key].dtype
    np.testing.assert_array_equal(held["train"].mean, streamed["train"].mean)
    normalised = next(data.batches(streamed["train"], 8, threads=0))
    np.testing.assert_allclose(
        normalised["image"], held["train"].normalize(held["train"].images[:8]), rtol=1e-6
    )


def test_host_augmentation_is_keyed_by_seed_step_and_row(folder):
    train = _load(folder, augment=AUG)["train"]
    assert not train.in_memory  # host augmentation streams the dataset
    full = _epoch(train, shuffle=True, seed=0, epoch=1)
    again = _epoch(train, shuffle=True, seed=0, epoch=1)
    for x, y in zip(full, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    # Resumed at a step, or one process's rows of each global batch: the same pixels.
    resumed = _epoch(train, shuffle=True, seed=0, epoch=1, start=2, rows=slice(4, 8))
    for x, y in zip(full[2:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"][4:], y["image"])
    # Another epoch, or another seed, draws other crops; evaluating the train split does not
    # augment at all.
    other = _epoch(train, shuffle=True, seed=0, epoch=2)
    assert not np.array_equal(full[0]["image"], other[0]["image"])
    plain = _epoch(train, drop_remainder=False)
    view = _load(folder, stream=True, crop_fraction=0.875)["train"]
    np.testing.assert_array_equal(plain[0]["image"], _epoch(view, drop_remainder=False)[0]["image"])
    assert train.details["crop_fraction"] == 0.875  # torchvision's evaluation crop


def test_worker_processes_give_the_same_batches_as_threads(folder):
    train = _load(folder, augment=AUG)["train"]
    threads = _epoch(train, shuffle=True, seed=5, epoch=0)
    processes = list(
        data.batches(train, 8, normalize=False, shuffle=True, seed=5, epoch=0, workers=2)
    )
    assert len(processes) == len(threads) == 3
    for x, y in zip(threads, processes, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
            assert type(y[key]) is np.ndarray  # copied out of the workers' shared memory


def test_workers_default_and_override(monkeypatch, folder):
    monkeypatch.setenv("CNN_JAX_DATA_WORKERS", "3")
    assert data.default_workers() == 3
    assert data.load(f"folder:{folder}", image_size=16, stream=True)["train"].workers == 3
    monkeypatch.setenv("CNN_JAX_DATA_WORKERS", "many")
    with pytest.raises(data.DatasetError, match="CNN_JAX_DATA_WORKERS"):
        data.default_workers()
    monkeypatch.delenv("CNN_JAX_DATA_WORKERS")
    assert 1 <= data.default_workers() <= 16


def test_a_large_dataset_streams_and_normalises_with_a_seeded_sample(folder, monkeypatch):
    from cnn_jax.data import sources, stream

    exact = _load(folder)["train"]
    monkeypatch.setattr(stream, "IN_MEMORY_LIMIT_BYTES", 1000)  # the train split "does not fit"
    monkeypatch.setattr(stream, "STATS_SAMPLE", 5)
    streamed = _load(folder)
    train = streamed["train"]
    assert not train.in_memory and train.details["streamed"]
    assert train.details["normalisation"] == "a sample of 5 train images (seed 0)"
    assert not np.array_equal(train.mean, exact.mean)
    held = _load(folder, stream=False)["train"]  # held anyway: the same statistics
    np.testing.assert_array_equal(held.mean, train.mean)
    np.testing.assert_array_equal(held.std, train.std)
    assert sources.IN_MEMORY_LIMIT_BYTES == 2 * 2**30


def test_streaming_reads_with_bounded_memory(tmp_path):
    """An epoch over a streamed folder holds a few batches, not the split: peak RSS grows by
    far less than the decoded size of 50x more images (and grows by all of it in memory)."""
    script = textwrap.dedent(
        """
        import json, sys
        from cnn_jax import data
        if __name__ == "__main__":
            split = data.load("folder:" + sys.argv[1], stream=sys.argv[2] == "stream",
                              workers=0)["train"]
            for batch in data.batches(split, 32, shuffle=True, normalize=False):
                pass
            # VmHWM: this process's own peak (ru_maxrss would include the parent's at fork).
            status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
            print(json.dumps({"nbytes": split.nbytes, "peak": int(status) * 1024}))
        """
    )
    (tmp_path / "measure.py").write_text(script)
    small = D.image_folder(tmp_path / "small", per_class=30, size=(96, 96))
    large = D.image_folder(tmp_path / "large", per_class=1500, size=(96, 96))

    def measure(root, mode):
        out = subprocess.run(
            [sys.executable, str(tmp_path / "measure.py"), str(root), mode],
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    base, streamed, held = (
        measure(small, "stream"),
        measure(large, "stream"),
        measure(large, "hold"),
    )
    grown = streamed["nbytes"] - base["nbytes"]  # 2,352 more train images: 65 MB decoded
    assert grown > 60e6
    assert streamed["peak"] - base["peak"] < 0.4 * grown
    assert held["peak"] - base["peak"] > 0.9 * grown  # what the test would see if it held them


@pytest.mark.slow  # two training runs; the batches themselves are compared above
def test_a_run_streams_when_asked_and_ends_as_an_in_memory_run(tmp_path, folder):
    """data_stream changes memory use, never a result: the same metrics to the last bit."""
    from cnn_jax import train as T

    def run(workdir, stream):
        c = T.default_config()
        c.update(dict(dataset=f"folder:{folder}", epochs=1, batch_size=8, workdir=str(workdir)))
        # Both read batches on the host (a split on the device runs another compiled step).
        c.data_stream, c.data_workers, c.data_on_device = stream, 0, False
        summary = T.fit(c, log=lambda *a: None)
        records = [
            json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
        ]
        return summary, records

    held, held_records = run(tmp_path / "held", "never")
    streamed, streamed_records = run(tmp_path / "streamed", "always")
    assert streamed["data"]["train"]["streamed"] and not held["data"]["train"]["streamed"]
    for key in ("test_loss", "test_accuracy", "best_step"):
        assert held[key] == streamed[key], key
    for a, b in zip(held_records, streamed_records, strict=True):
        for key in ("train_loss", "train_grad_norm", "val_loss", "val_accuracy"):
            assert a[key] == b[key], key


def test_config_keys_for_streaming_and_host_augmentation(tmp_path):
    from cnn_jax import train as T
    from cnn_jax.errors import ConfigError
    from cnn_jax.train.run.config import resolve
    from cnn_jax.train.run.setup import data_options

    c = T.default_config()
    options = data_options(c)
    assert options == {"stream": None, "workers": None, "augment": None}
    c.augment.resized_crop, c.augment.color_jitter = 0.08, 0.4
    c.data_stream, c.data_workers = "always", 3
    options = data_options(c)
    assert options["augment"] == data.HostAugment((0.08, 1.0), flip=False, color_jitter=0.4)
    assert (options["stream"], options["workers"]) == (True, 3)
    for key, value in (("data_stream", "sometimes"), ("data_workers", -2)):
        bad = T.default_config()
        bad[key] = value
        with pytest.raises(ConfigError, match=key):
            T.validate(bad)
    # A config saved before the nested augment keys existed resolves with their defaults.
    old = T.default_config().to_dict()
    del old["augment"]["resized_crop"], old["augment"]["color_jitter"]
    import ml_collections

    resolved = resolve(ml_collections.ConfigDict(old))
    assert resolved.augment.resized_crop == 0.0 and resolved.augment.color_jitter == 0.0


def test_a_streamed_split_is_fed_from_the_host_even_when_small(folder):
    """data_on_device holds an in-memory split on the device; a streamed one, however small, is
    decoded on the host (it has no images array to put there)."""
    from cnn_jax.train.parallel import SingleDevice
    from cnn_jax.train.run.feeds import DeviceFeed, HostFeed, train_feed

    held, streamed = _load(folder)["train"], _load(folder, stream=True)["train"]
    placement = SingleDevice({})
    assert isinstance(train_feed(placement, held, 8, 0), DeviceFeed)
    assert isinstance(train_feed(placement, streamed, 8, 0), HostFeed)
    assert isinstance(train_feed(placement, held, 8, 0, on_device=False), HostFeed)
