"""AlexNet with torchvision's exact layout (``features``, ``avgpool``, ``classifier``)."""

from __future__ import annotations

import flax.linen as nn
import jax

import cnn_jax.nn as cnn
from cnn_jax._utils import check_model_input
from cnn_jax.models.registry import register

Array = jax.Array


class AlexNet(nn.Module):
    """torchvision's ``AlexNet``: five convs (11×11/4, 5×5, 3×3 ×3), three max pools,
    ``AdaptiveAvgPool2d((6, 6))`` and a three-layer classifier with dropout. 61.1M parameters for
    1000 classes. Default input 224×224; inputs down to 63×63 work (the adaptive pool upsamples).

    >>> model = AlexNet(num_classes=10)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((1, 64, 64, 3)), train=False).shape
    (1, 10)
    """

    num_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.5

    def example_input_shape(self) -> tuple[int, ...]:
        """Default input: ``(1, 224, 224, in_channels)``."""
        return (1, 224, 224, self.in_channels)

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        # 11x11/4 conv and three 3x3/2 max pools leave at least 1x1 from 63x63 up.
        check_model_input(x, "AlexNet", self.in_channels, min_hw=63)
        x = cnn.Sequential(
            (
                cnn.Conv2d(self.in_channels, 64, 11, stride=4, padding=2),
                cnn.ReLU(),
                cnn.MaxPool2d(3, 2),
                cnn.Conv2d(64, 192, 5, padding=2),
                cnn.ReLU(),
                cnn.MaxPool2d(3, 2),
                cnn.Conv2d(192, 384, 3, padding=1),
                cnn.ReLU(),
                cnn.Conv2d(384, 256, 3, padding=1),
                cnn.ReLU(),
                cnn.Conv2d(256, 256, 3, padding=1),
                cnn.ReLU(),
                cnn.MaxPool2d(3, 2),
            ),
            name="features",
        )(x, train=train)
        x = cnn.AdaptiveAvgPool2d((6, 6), name="avgpool")(x)
        x = cnn.Flatten()(x)
        return cnn.Sequential(
            (
                cnn.Dropout(self.dropout),
                cnn.Linear(256 * 6 * 6, 4096),
                cnn.ReLU(),
                cnn.Dropout(self.dropout),
                cnn.Linear(4096, 4096),
                cnn.ReLU(),
                cnn.Linear(4096, self.num_classes),
            ),
            name="classifier",
        )(x, train=train)


@register("alexnet", torchvision=True, min_input_size=63)
def alexnet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """torchvision's AlexNet."""
    return AlexNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
