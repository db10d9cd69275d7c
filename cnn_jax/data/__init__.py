"""Data: tfds datasets without TensorFlow, the embedded ``digits`` dataset, batching, and
augmentations in JAX.

>>> from cnn_jax import data
>>> ds = data.load('digits')
>>> batch = next(data.batches(ds['train'], batch_size=32, shuffle=True, seed=0, epoch=0))
>>> batch['image'].shape, batch['label'].dtype
((32, 8, 8, 1), dtype('int32'))
"""

from cnn_jax.data import variants
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
from cnn_jax.data.sources import (
    TFDS_SPLITS,
    DatasetError,
    Split,
    default_data_dir,
    from_arrays,
    load,
    register,
    registered,
    standardize,
)

__all__ = [
    "TFDS_SPLITS",
    "Augment",
    "DatasetError",
    "Split",
    "batch_dataset",
    "batch_indices",
    "batches",
    "brightness",
    "contrast",
    "cutout",
    "default_data_dir",
    "epoch_permutation",
    "from_arrays",
    "gather",
    "load",
    "num_batches",
    "random_crop",
    "random_flip_lr",
    "random_translate",
    "register",
    "registered",
    "standardize",
    "to_device",
    "variants",
]
