"""The embedded default dataset: scikit-learn's 1,797 handwritten 8×8 digits as a tfds builder.

The images ship inside scikit-learn (the UCI "Optical Recognition of Handwritten Digits" test set),
so preparing this dataset needs no network and no TensorFlow: the builder writes ``array_record``
files that :func:`tensorflow_datasets.data_source` reads as NumPy, exactly like a prepared MNIST or
CIFAR-10, so the embedded dataset flows through the same pipeline as the real ones.

Split (fixed, documented): a permutation of all 1,797 images drawn with
``numpy.random.default_rng(SPLIT_SEED)``; its first 1,257 images are ``train``, the next 270
``validation`` and the last 270 ``test`` (70 / 15 / 15 %), stored in that order. Pixels are
sklearn's 0–16 intensities scaled to 0–255 uint8 (``round(v * 255 / 16)``), shape (8, 8, 1).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 20_240_917
SPLIT_SIZES = {"train": 1257, "validation": 270, "test": 270}


def split_indices() -> dict[str, np.ndarray]:
    """The fixed train / validation / test indices into sklearn's ``load_digits()`` arrays."""
    order = np.random.default_rng(SPLIT_SEED).permutation(sum(SPLIT_SIZES.values()))
    out, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        out[name] = order[start : start + size]
        start += size
    return out


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits (8×8 grey, 10 classes) as an array_record tfds dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "70/15/15 split of sklearn.datasets.load_digits, uint8 0-255."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: dataset_info_from_configs would look for metadata files beside
        # this module. Tensor (not Image) features: encoding PNGs would need TensorFlow.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            # Keep the documented order (tfds would otherwise reorder records by key hash).
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships with scikit-learn
        return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        # Keyed by position: with shuffling disabled tfds stores records in key order.
        for position, i in enumerate(indices):
            yield position, {"image": images[i], "label": int(digits.target[i])}
