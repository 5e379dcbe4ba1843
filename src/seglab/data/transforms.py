"""The training augmentation and evaluation normalisation of each task, written once on
batches and serving both paths:

- per batch on the training device: a cached split (`data.cache`) yields decoded uint8
  batches and the datamodule's `on_after_batch_transfer` hook calls the augmentation with
  a generator seeded from (seed, epoch, batch index, rank), so a resumed run repeats it;
- per sample in the loader (`data.cache=none`): `sample(image, target)` is the same
  augmentation on a batch of one, drawing from torch's global generator (seeded per
  loader worker) unless given one.

Every random number of a sample is one row of a single draw (`torch.rand(B, K)`), so a
batch equals its samples augmented one after another from the same generator. The
operations follow `torchvision.transforms.v2` (tests compare the distributions):

    augment = ClassificationAugment(32, mean=MEAN, std=STD, crop_padding=4, hflip=0.5)
    images, labels = augment((uint8_images, labels), torch.Generator().manual_seed(0))
    # uint8 [B, 3, 32, 32] -> float32 [B, 3, 32, 32], normalised
    image, label = augment.sample(uint8_image, label)   # [3, 32, 32], one sample
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from seglab.errors import SeglabError
from seglab.sizes import size_pair

# The arguments of v2.ColorJitter, the only keys `color_jitter` may hold.
COLOR_JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")


def scale_range_pair(scale_range: Sequence[float]) -> tuple[float, float]:
    """`data.scale_range` as (min, max), checked: 0 < min <= max."""
    low, high = (float(s) for s in scale_range)
    if not 0 < low <= high:
        raise SeglabError(
            f"data.scale_range must be [min, max] with 0 < min <= max; got {[low, high]}"
        )
    return low, high


def color_jitter_transform(color_jitter: Mapping[str, float] | None) -> v2.ColorJitter | None:
    """`data.color_jitter` (None or `v2.ColorJitter` arguments) as the transform, keys
    checked; its `brightness`, ... attributes hold the parsed factor ranges."""
    if not color_jitter:
        return None
    unknown = sorted(set(color_jitter) - set(COLOR_JITTER_KEYS))
    if unknown:
        raise SeglabError(
            f"data.color_jitter has unknown keys {unknown}; use any of {list(COLOR_JITTER_KEYS)}"
        )
    return v2.ColorJitter(**{k: float(v) for k, v in color_jitter.items()})


def _statistics(values: Sequence[float], name: str) -> Tensor:
    """Per-channel mean or std as float32 [1, 3, 1, 1]."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if tensor.numel() != 3:
        raise SeglabError(f"{name} needs 3 values (R, G, B); got {list(values)}")
    return tensor.view(1, 3, 1, 1)


def _check_probability(p: float, name: str) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise SeglabError(f"{name} is a probability and must lie in [0, 1]; got {p}")
    return float(p)


class _Augment:
    """What both tasks share: normalisation `(x - mean) / std` on the 0-255 scale in
    float32 (the operations of `v2.Normalize`, statistics copied to each device once),
    the per-sample path and evaluation."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = _statistics(mean, "mean")
        self.std = _statistics(std, "std")
        if (self.std == 0).any():
            raise SeglabError(f"std has a zero, which would divide by zero: {list(std)}")
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 [B, 3, H, W] -> float32 [B, 3, H, W]."""
        if images.device not in self._on:
            self._on[images.device] = (self.mean.to(images.device), self.std.to(images.device))
        mean, std = self._on[images.device]
        return images.float().sub_(mean).div_(std)

    def __call__(self, batch: Any, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def sample(
        self, image: Tensor, target: Any, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Any]:
        """One decoded sample augmented as in a batch of one (training without a cache);
        `generator` None draws from torch's global generator."""
        images, targets = self(self._one(image, target), generator or torch.default_generator)
        return images[0], (int(targets[0]) if isinstance(target, int) else targets[0])

    def evaluate(self, image: Tensor, target: Any) -> tuple[Tensor, Any]:
        """Evaluation: uint8 image [3, H, W] normalised at its own size; a mask becomes
        LongTensor[H, W], a label stays an int."""
        target = target.long() if isinstance(target, Tensor) else target
        return self.normalise(image[None])[0], target


class ClassificationAugment(_Augment):
    """Classification training augmentation (the CIFAR-10 recipe): a random `size` crop
    of the image zero-padded by `crop_padding` on each side (as `v2.RandomCrop(padding=)`),
    a horizontal flip with probability `hflip`, then normalisation. One gather does crop
    and flip for every sample of a batch (no loop over samples).

    Args:
        size: (height, width) or one int: the size of the decoded images and the output.
        mean, std: per-channel statistics on the 0-255 scale.
        crop_padding: pixels of black padding for the random crop; 0 switches it off.
        hflip: probability of a horizontal flip.
        augment: False: normalise only.

    Shape:
        images: uint8 [B, 3, H, W] with (H, W) = size, labels: LongTensor[B], on any
        device -> images FloatTensor[B, 3, H, W] on that device, labels unchanged.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        crop_padding: int = 4,
        hflip: float = 0.5,
        augment: bool = True,
    ) -> None:
        super().__init__(mean, std)
        if crop_padding < 0:
            raise SeglabError(f"crop_padding must be >= 0 pixels; got {crop_padding}")
        self.size = size_pair(size)
        self.crop_padding = int(crop_padding)
        self.hflip = _check_probability(hflip, "hflip")
        self.augment = augment
        self._windows: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @staticmethod
    def _one(image: Tensor, label: Any) -> tuple[Tensor, Tensor]:
        return image[None], torch.tensor([int(label)])

    def __call__(
        self, batch: tuple[Tensor, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        images, labels = batch
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise SeglabError(
                f"ClassificationAugment takes uint8 images [B, 3, H, W]; got "
                f"{images.dtype} {list(images.shape)}"
            )
        if tuple(images.shape[-2:]) != self.size:
            raise SeglabError(
                f"cached images are {list(images.shape[-2:])} but the transform crops "
                f"{list(self.size)}; cache the split resized to the input size"
            )
        if self.augment and (self.crop_padding > 0 or self.hflip > 0):
            images = self._crop_and_flip(images, generator)
        return self.normalise(images), labels

    def _crop_and_flip(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch, channels, height, width = images.shape
        pad, device = self.crop_padding, images.device
        padded = F.pad(images, (pad, pad, pad, pad))  # black border, (B, 3, H+2p, W+2p)
        # Per sample (top, left, flip); float64: floor(u * n) stays below n.
        draws = torch.rand(batch, 3, generator=generator, device=device, dtype=torch.float64)
        top, left = (draws[:, :2] * (2 * pad + 1)).long().clamp_(max=2 * pad).unbind(1)
        flip = (draws[:, 2] < self.hflip)[:, None]
        straight, mirrored = self._window(device)
        # A crop is the window translated by (top, left) in the flattened padded image.
        index = torch.where(flip, mirrored, straight) + (top * (width + 2 * pad) + left)[:, None]
        index = index.view(batch, 1, height * width).expand(batch, channels, -1)
        out = padded.view(batch, channels, -1).gather(2, index)
        return out.view(batch, channels, height, width)

    def _window(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Flat indices into the padded image of the crop at offset (0, 0), as is and
        flipped (output column j reads crop column W-1-j), each LongTensor[1, H*W]."""
        if device not in self._windows:
            height, width = self.size
            rows = torch.arange(height, device=device)[:, None] * (width + 2 * self.crop_padding)
            cols = torch.arange(width, device=device)
            self._windows[device] = ((rows + cols).view(1, -1), (rows + cols.flip(0)).view(1, -1))
        return self._windows[device]


class SegmentationAugment(_Augment):
    """Segmentation training augmentation of image/mask pairs: `v2.ScaleJitter` (image
    bilinear with antialiasing, mask nearest), a random crop padded where needed (image
    black, mask `ignore_index`, as `v2.RandomCrop(pad_if_needed=True)`), a horizontal
    flip, optional colour jitter of the image, normalisation. The images of a batch differ
    in size, so resizing loops over the samples; the random numbers of the whole batch are
    drawn at once (one device-to-host copy).

    Args:
        crop_size: (height, width) or one int of the crops the model trains on.
        ignore_index: mask value of pixels padded in where the scaled image is smaller
            than the crop.
        mean, std: per-channel statistics on the 0-255 scale.
        scale_range: (min, max) factor of the random scale, relative to the size that
            fits the crop (aspect ratio kept), as `v2.ScaleJitter`.
        hflip: probability of a horizontal flip.
        color_jitter: None, or arguments of `v2.ColorJitter` (brightness, contrast,
            saturation, hue): the factors are drawn and applied in random order per image.

    Shape:
        images: list of uint8 [3, Hi, Wi], masks: list of integer [Hi, Wi], on one
        device -> images FloatTensor[B, 3, h, w], masks LongTensor[B, h, w] with
        (h, w) = crop_size.
    """

    # Columns of the per-sample random numbers: scale, crop top, crop left, flip, then
    # the order (4 keys) and factors (4) of the colour jitter.
    _SCALE, _TOP, _LEFT, _FLIP, _ORDER, _FACTORS = 0, 1, 2, 3, slice(4, 8), slice(8, 12)

    def __init__(
        self,
        crop_size: int | Sequence[int],
        ignore_index: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        color_jitter: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(mean, std)
        self.crop = size_pair(crop_size)
        self.ignore_index = int(ignore_index)
        self.scale_range = scale_range_pair(scale_range)
        self.hflip = _check_probability(hflip, "hflip")
        jitter = color_jitter_transform(color_jitter)
        # (low, high) per adjustment in v2.ColorJitter's order, None where switched off.
        self.jitter_ranges = (
            None
            if jitter is None
            else [jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue]
        )

    @staticmethod
    def _one(image: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return [image], [mask]

    def __call__(
        self, batch: tuple[Sequence[Tensor], Sequence[Tensor]], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        images, masks = batch
        self._check(images, masks)
        device = images[0].device
        crop_h, crop_w = self.crop
        # float64: offsets floor(u * n) stay below n for any image size.
        draws = torch.rand(
            len(images), 12, generator=generator, device=device, dtype=torch.float64
        ).cpu()
        sizes = self._scaled_sizes([tuple(image.shape[-2:]) for image in images], draws)
        out_images = torch.zeros(len(images), 3, crop_h, crop_w, dtype=torch.uint8, device=device)
        out_masks = torch.full(
            (len(images), crop_h, crop_w), self.ignore_index, dtype=torch.int64, device=device
        )
        for i, (image, mask, (height, width)) in enumerate(zip(images, masks, sizes, strict=True)):
            image = TF.resize_image(
                image, [height, width], InterpolationMode.BILINEAR, antialias=True
            )
            mask = TF.resize_mask(mask, [height, width])
            (src_y, dst_y, h), (src_x, dst_x, w) = (
                _crop_axis(height, crop_h, float(draws[i, self._TOP])),
                _crop_axis(width, crop_w, float(draws[i, self._LEFT])),
            )
            out_images[i, :, dst_y : dst_y + h, dst_x : dst_x + w] = image[
                :, src_y : src_y + h, src_x : src_x + w
            ]
            out_masks[i, dst_y : dst_y + h, dst_x : dst_x + w] = mask[
                src_y : src_y + h, src_x : src_x + w
            ]
        flip = (draws[:, self._FLIP] < self.hflip).nonzero().flatten().tolist()
        if flip:
            out_images[flip] = out_images[flip].flip(-1)
            out_masks[flip] = out_masks[flip].flip(-1)
        if self.jitter_ranges is not None:
            for i in range(len(images)):
                out_images[i] = self._jitter(out_images[i], draws[i])
        return self.normalise(out_images), out_masks

    def _check(self, images: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
        if len(images) != len(masks) or not images:
            raise SeglabError(
                f"SegmentationAugment takes equally long, non-empty lists of images "
                f"and masks; got {len(images)} images and {len(masks)} masks"
            )
        for image, mask in zip(images, masks, strict=True):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise SeglabError(
                    f"SegmentationAugment takes uint8 images [3, H, W]; got "
                    f"{image.dtype} {list(image.shape)}"
                )
            if mask.shape != image.shape[-2:] or mask.is_floating_point():
                raise SeglabError(
                    f"a mask must be an integer tensor [H, W] of its image's size; got "
                    f"{mask.dtype} {list(mask.shape)} for an image {list(image.shape)}"
                )

    def _scaled_sizes(
        self, sizes: Sequence[tuple[int, int]], draws: Tensor
    ) -> list[tuple[int, int]]:
        """`v2.ScaleJitter`'s sizes, in its float32 arithmetic (so truncation to whole
        pixels agrees), including its (width, height) reading of `target_size`."""
        low, high = self.scale_range
        scales = low + draws[:, self._SCALE].float() * (high - low)
        crop_h, crop_w = self.crop
        result = []
        for (height, width), scale in zip(sizes, scales, strict=True):
            r = min(crop_w / height, crop_h / width) * scale
            new_height, new_width = int(height * r), int(width * r)
            if new_height < 1 or new_width < 1:
                raise SeglabError(
                    f"an image of {height}x{width} scales to {new_height}x{new_width} "
                    f"pixels for crop {list(self.crop)}; raise data.scale_range's minimum "
                    "or drop such images"
                )
            result.append((new_height, new_width))
        return result

    def _jitter(self, image: Tensor, draws: Tensor) -> Tensor:
        """`v2.ColorJitter` on one uint8 image [3, h, w]: the adjustments in a random
        order, each factor uniform in its range."""
        adjust = (
            TF.adjust_brightness_image,
            TF.adjust_contrast_image,
            TF.adjust_saturation_image,
            TF.adjust_hue_image,
        )
        order = torch.argsort(draws[self._ORDER]).tolist()  # a uniform permutation
        factors = draws[self._FACTORS].tolist()
        for k in order:
            bounds = self.jitter_ranges[k]
            if bounds is not None:
                low, high = bounds
                image = adjust[k](image, low + factors[k] * (high - low))
        return image


def _crop_axis(size: int, crop: int, u: float) -> tuple[int, int, int]:
    """One axis of `v2.RandomCrop(pad_if_needed=True)`: (source start, destination start,
    length). A larger image is cropped at a uniform offset; a smaller one is padded to the
    crop and lands at a uniform offset in [0, crop - size], as v2's padding by the
    difference on both sides followed by a uniform crop places it."""
    if size >= crop:
        return min(int(u * (size - crop + 1)), size - crop), 0, crop
    return 0, min(int(u * (crop - size + 1)), crop - size), size
