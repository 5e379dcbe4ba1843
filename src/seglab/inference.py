"""Segmentation inference on whole images of any size: padding, sliding windows,
flip and multi-scale test-time augmentation.

    inference = SegmentationInference(mode="slide", window=512, stride=341, flip=True)
    logits = inference(net, images)  # (N, C, H, W) at the images' own size
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from seglab.sizes import size_pair

Net = Callable[[torch.Tensor], torch.Tensor]


def class_indices(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class per pixel: logits (N, C, H, W) -> LongTensor (N, H, W).

    Same result as `argmax(dim=1)`, but on CPU `max(dim=1)` over NCHW logits is ~10x
    faster (0.7 ms vs 7 ms for 16x4x64x64), which matters once per batch in evaluation
    and prediction.
    """
    return logits.max(dim=1).indices


def _pair(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    return None if value is None else size_pair(value)


def pad_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad (N, 3, h, w) at the bottom and right to at least (height, width); zero is
    the mean colour after normalisation."""
    pad_h, pad_w = max(height - images.shape[-2], 0), max(width - images.shape[-1], 0)
    return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images


@dataclass
class SegmentationInference:
    """How to turn images into logits at evaluation and prediction time.

    Args:
        mode: "whole" runs the net once on the full image (padded to `size_divisor`);
            "slide" runs it on `window`-sized crops every `stride` pixels and averages the
            logits where crops overlap (for images larger than the training crop).
        window: (height, width) or int of the sliding window; required for "slide".
        stride: step between windows; defaults to two thirds of the window.
        flip: also predict the horizontally flipped image and average.
        scales: resize the image by each factor, predict, resize the logits back and
            average (multi-scale inference); (1.0,) is single-scale.
        size_divisor: the net needs H and W divisible by this (32 for 5-stage encoders);
            inputs are zero-padded up to it and the logits cropped back.

    Shape:
        images (N, 3, H, W) -> logits (N, C, H, W).
    """

    mode: Literal["whole", "slide"] = "whole"
    window: int | Sequence[int] | None = None
    stride: int | Sequence[int] | None = None
    flip: bool = False
    scales: Sequence[float] = (1.0,)
    size_divisor: int = 32

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference mode must be 'whole' or 'slide'; got {self.mode!r}")
        self.window = _pair(self.window)
        if self.mode == "slide" and self.window is None:
            raise ValueError("inference mode 'slide' needs a window size (inference.window)")
        if self.window is not None and self.stride is None:
            self.stride = (max(1, self.window[0] * 2 // 3), max(1, self.window[1] * 2 // 3))
        self.stride = _pair(self.stride)
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"inference scales must be positive; got {self.scales}")

    @torch.no_grad()
    def __call__(self, net: Net, images: torch.Tensor) -> torch.Tensor:
        return self.logits_and_views(net, images, keep_views=False)[0]

    @torch.no_grad()
    def logits_and_views(
        self, net: Net, images: torch.Tensor, keep_views: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The averaged logits (what `__call__` returns) and, with `keep_views`, the
        logits of each augmented view (every scale, flipped and not) at the images' size:
        their disagreement is `seglab.predict uncertainty=true`'s test-time-augmentation
        map. One pass either way."""
        height, width = images.shape[-2:]
        total = None
        views: list[torch.Tensor] = []

        def resized(logits: torch.Tensor) -> torch.Tensor:
            if logits.shape[-2:] == (height, width):
                return logits
            return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)

        for scale in self.scales:
            scaled = images
            if scale != 1.0:
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            logits = self._infer(net, scaled)
            if keep_views:
                views.append(resized(logits))
            if self.flip:
                flipped = self._infer(net, scaled.flip(-1)).flip(-1)
                if keep_views:
                    views.append(resized(flipped))
                logits = (logits + flipped) / 2
            if scale != 1.0:
                logits = resized(logits)
            total = logits if total is None else total + logits
        return total / len(self.scales), views

    def _infer(self, net: Net, images: torch.Tensor) -> torch.Tensor:
        return self._slide(net, images) if self.mode == "slide" else self._whole(net, images)

    def _whole(self, net: Net, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        div = self.size_divisor
        padded = pad_to(images, -(-height // div) * div, -(-width // div) * div)
        return net(padded)[..., :height, :width]

    def _slide(self, net: Net, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        (win_h, win_w), (step_h, step_w) = self.window, self.stride
        padded = pad_to(images, win_h, win_w)
        full_h, full_w = padded.shape[-2:]
        # Window origins: every stride, the last one flush with the bottom/right edge.
        tops = sorted(
            {
                min(i * step_h, full_h - win_h)
                for i in range((max(full_h - win_h, 0) + step_h - 1) // step_h + 1)
            }
        )
        lefts = sorted(
            {
                min(j * step_w, full_w - win_w)
                for j in range((max(full_w - win_w, 0) + step_w - 1) // step_w + 1)
            }
        )
        summed = counts = None
        for top in tops:
            for left in lefts:
                crop = padded[..., top : top + win_h, left : left + win_w]
                logits = self._whole(net, crop)  # (N, C, win_h, win_w)
                if summed is None:
                    summed = logits.new_zeros((*logits.shape[:2], full_h, full_w))
                    counts = logits.new_zeros((1, 1, full_h, full_w))
                summed[..., top : top + win_h, left : left + win_w] += logits
                counts[..., top : top + win_h, left : left + win_w] += 1
        return (summed / counts)[..., :height, :width]
