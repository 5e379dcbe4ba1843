"""Fully Convolutional Network (Long, Shelhamer & Darrell, CVPR 2015) over any smp encoder.

FCN-32s predicts class scores on the stride-32 features and upsamples them to the input;
FCN-16s and FCN-8s first fuse in scores predicted from the stride-16 and stride-8
features ("skip" layers), which recovers finer boundaries. The paper's fc6/fc7 become a
3x3 conv block (as in torchvision's FCN head), and its learned deconvolutions are
bilinear upsampling, which the paper found to perform the same.
"""

from __future__ import annotations

from typing import Literal

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

_SKIP_STRIDES = {"32s": (), "16s": (16,), "8s": (16, 8)}


class FCN(nn.Module):
    """FCN-8s / 16s / 32s segmentation network.

    Args:
        in_channels: image channels.
        num_classes: output classes.
        encoder_name: any encoder of segmentation-models-pytorch (resnet18, resnet50,
            efficientnet-b0, mobilenet_v2, ...).
        encoder_weights: pretrained weights to load ("imagenet"), or None for random init.
        variant: "8s" (default, the paper's best), "16s" or "32s".
        head_channels: width of the conv block on the deepest features.
        dropout: dropout before the final classifier, as the paper's fc6/fc7.

    Shape:
        x: (N, in_channels, H, W), H and W multiples of 32 -> logits (N, num_classes, H, W).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 21,
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        variant: Literal["8s", "16s", "32s"] = "8s",
        head_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if variant not in _SKIP_STRIDES:
            raise ValueError(f"FCN variant must be one of {list(_SKIP_STRIDES)}; got {variant!r}")
        self.encoder = smp.encoders.get_encoder(
            encoder_name, in_channels=in_channels, depth=5, weights=encoder_weights
        )
        channels = self.encoder.out_channels  # strides 1, 2, 4, 8, 16, 32
        self.head = nn.Sequential(
            nn.Conv2d(channels[5], head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        self.skip_strides = _SKIP_STRIDES[variant]
        # Stride 2**k lives at encoder feature index k.
        self.skip_scores = nn.ModuleList(
            nn.Conv2d(channels[stride.bit_length() - 1], num_classes, 1)
            for stride in self.skip_strides
        )
        # Skip branches start at zero (adding nothing), as in the paper's staged training.
        for score in self.skip_scores:
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        scores = self.head(features[5])  # (N, C, H/32, W/32)
        for stride, score in zip(self.skip_strides, self.skip_scores, strict=True):
            skip = features[stride.bit_length() - 1]  # (N, c, H/stride, W/stride)
            scores = F.interpolate(
                scores, size=skip.shape[-2:], mode="bilinear", align_corners=False
            ) + score(skip)
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)
