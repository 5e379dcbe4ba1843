"""The plain CNN image classifier of the classic CIFAR-10 tutorial.

conv32 -> pool -> conv64 -> pool -> conv64 -> dense64 -> dense(num_classes), 3x3 valid
convolutions with ReLU, 2x2 max pooling; about 122k parameters at 32x32 with 10 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _features_size(size: int) -> int:
    """Spatial size after conv3 -> pool2 -> conv3 -> pool2 -> conv3 (valid padding)."""
    size = (size - 2) // 2
    size = (size - 2) // 2
    return size - 2


class SimpleCNN(nn.Module):
    """Plain CNN classifier.

    Args:
        in_channels: image channels.
        num_classes: output classes.
        input_size: (height, width) or one int; fixes the dense layer's width. At least 18.
        hidden: width of the hidden dense layer.

    Shape:
        x: (N, in_channels, H, W) with (H, W) = input_size -> logits (N, num_classes).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int | Sequence[int] = 32,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
        h, w = _features_size(height), _features_size(width)
        if h < 1 or w < 1:
            raise ValueError(f"SimpleCNN needs input_size of at least 18x18; got {height}x{width}")
        self.input_size = (height, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * h * w, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"SimpleCNN was built for {self.input_size[0]}x{self.input_size[1]} inputs; "
                f"got {x.shape[-2]}x{x.shape[-1]} (set model.input_size to the data's image size)"
            )
        return self.classifier(self.features(x))  # (N, num_classes)
