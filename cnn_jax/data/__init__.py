"""Data: image folders, tfds datasets without TensorFlow (and ``prepare`` to write them from
the official archives), the embedded ``digits`` dataset, splits held in memory or streamed,
batching, and augmentations in JAX (on the device) and Pillow (on the host).

>>> from cnn_jax import data
>>> ds = data.load('digits')
>>> batch = next(data.batches(ds['train'], batch_size=32, shuffle=True, seed=0, epoch=0))
>>> batch['image'].shape, batch['label'].dtype
((32, 8, 8, 1), dtype('int32'))
"""

from cnn_jax.data import variants
from cnn_jax.data.archives import prepare
from cnn_jax.data.augment import (
    Augment,
    brightness,
    contrast,
    cutout,
    random_crop,
    random_flip_lr,
    random_translate,
)
from cnn_jax.data.batching import (
    batch_dataset,
    batch_indices,
    batches,
    epoch_permutation,
    gather,
    num_batches,
    to_device,
)
from cnn_jax.data.images import HostAugment, ImageSpec
from cnn_jax.data.sources import (
    IN_MEMORY_LIMIT_BYTES,
    TFDS_SPLITS,
    DatasetError,
    DatasetWarning,
    Split,
    UnknownDatasetError,
    default_data_dir,
    from_arrays,
    load,
    register,
    registered,
    short_name,
    standardize,
)
from cnn_jax.data.stream import StreamedSplit, default_workers

__all__ = [
    "IN_MEMORY_LIMIT_BYTES",
    "TFDS_SPLITS",
    "Augment",
    "DatasetError",
    "DatasetWarning",
    "HostAugment",
    "ImageSpec",
    "Split",
    "StreamedSplit",
    "UnknownDatasetError",
    "batch_dataset",
    "batch_indices",
    "batches",
    "brightness",
    "contrast",
    "cutout",
    "default_data_dir",
    "default_workers",
    "epoch_permutation",
    "from_arrays",
    "gather",
    "load",
    "num_batches",
    "prepare",
    "random_crop",
    "random_flip_lr",
    "random_translate",
    "register",
    "registered",
    "short_name",
    "standardize",
    "to_device",
    "variants",
]
