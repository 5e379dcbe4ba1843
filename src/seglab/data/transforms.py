"""Joint image/mask transforms for segmentation, built on `torchvision.transforms.v2`.

v2 dispatches on the tensor type: a `tv_tensors.Mask` is resized with nearest
interpolation (no label values are invented), padded with its own fill value and left
alone by photometric transforms such as colour jitter, so one pipeline serves both.

    train = train_transform(crop_size=512, ignore_index=255, mean=MEAN, std=STD, hflip=0.5)
    image, mask = train(tv_tensors.Image(uint8_chw), tv_tensors.Mask(uint8_hw))
    image.shape, image.dtype, mask.shape, mask.dtype
    # (3, 512, 512) float32, (512, 512) int64

`eval_transform` only converts and normalises (full resolution); `pad_to` pads such
samples to a common size so images of different sizes batch together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from seglab.errors import SeglabError

ImageTransform = Callable[[tv_tensors.Image], torch.Tensor]
Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]

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


def _to_float_normalised(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    """uint8 image -> float32 `(x - mean) / std` on the 0-255 scale (as `base.to_input`);
    the mask -> int64 class indices, the dtype losses and metrics take."""
    return [
        # scale=False: keep 0-255, the scale the datamodule's mean/std are given on.
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=False),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def _unwrap(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain tensors out: tv_tensor subclasses would otherwise leak into models and losses."""
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def train_transform(
    crop_size: int | Sequence[int],
    ignore_index: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: Mapping[str, float] | None = None,
) -> Transform:
    """The training augmentation: random scale, random crop, flip, colour jitter, normalise.

    Args:
        crop_size: (height, width) or one int of the crops the model trains on.
        ignore_index: mask value of pixels padded in when a scaled image is smaller than
            the crop (the image gets black there), so they count in neither loss nor metrics.
        mean, std: per-channel statistics on the 0-255 scale.
        scale_range: (min, max) factor of the random scale; the image is resized to fit
            the crop (aspect ratio kept) times a factor drawn from this range
            (`v2.ScaleJitter`).
        hflip: probability of a horizontal flip.
        color_jitter: None, or arguments of `v2.ColorJitter` (brightness, contrast,
            saturation, hue); applied to the image only.

    Shape:
        image: uint8 `tv_tensors.Image[3, H, W]`, mask: uint8 `tv_tensors.Mask[H, W]` ->
        image FloatTensor[3, h, w], mask LongTensor[h, w] with (h, w) = crop_size.
    """
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    low, high = scale_range_pair(scale_range)
    steps: list[v2.Transform] = [
        v2.ScaleJitter(target_size=crop, scale_range=(low, high)),
        v2.RandomCrop(
            crop,
            pad_if_needed=True,
            fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index},
        ),
        v2.RandomHorizontalFlip(p=hflip),
    ]
    jitter = color_jitter_transform(color_jitter)
    if jitter is not None:
        # Photometric: v2 passes Masks through untouched.
        steps.append(jitter)
    return v2.Compose([*steps, *_to_float_normalised(mean, std), _unwrap])


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Evaluation: convert and normalise only; images keep their full resolution.

    Shape:
        image: uint8 `tv_tensors.Image[3, H, W]`, mask: uint8 `tv_tensors.Mask[H, W]` ->
        image FloatTensor[3, H, W], mask LongTensor[H, W].
    """
    return v2.Compose([*_to_float_normalised(mean, std), _unwrap])


def pad_to(
    image: torch.Tensor, mask: torch.Tensor, size: Sequence[int], ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a normalised sample at the bottom and right to `size` (height, width): the
    image with 0 (the mean colour after normalisation), the mask with `ignore_index`, so
    the padding is scored by neither loss nor metrics.

    Shape:
        image FloatTensor[3, H, W], mask LongTensor[H, W] -> [3, *size], [*size].
    """
    pad = (0, size[1] - image.shape[-1], 0, size[0] - image.shape[-2])  # (l, r, t, b)
    if pad[1] < 0 or pad[3] < 0:
        raise ValueError(f"cannot pad {tuple(image.shape[-2:])} to the smaller {tuple(size)}")
    return F.pad(image, pad, value=0.0), F.pad(mask, pad, value=ignore_index)


def _plain(image: torch.Tensor) -> torch.Tensor:
    return image.as_subclass(torch.Tensor)


def classification_transform(
    size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    resize: bool = True,
    crop_padding: int = 4,
    hflip: float = 0.5,
) -> ImageTransform:
    """Image-only transform for classification (the CIFAR-10 recipe).

    Args:
        size: (height, width) or one int: the size the model sees.
        mean, std: per-channel statistics on the 0-255 scale.
        train: add the augmentation: a random `size` crop of the image zero-padded by
            `crop_padding` on each side, then a horizontal flip.
        resize: resize every image to `size` first (bilinear, antialiased, aspect ratio
            not kept); False when the images already have that size (CIFAR-10).
        crop_padding: pixels of padding for the random crop; 0 switches the crop off.
        hflip: probability of a horizontal flip in training.

    Shape:
        uint8 `tv_tensors.Image[3, H, W]` -> FloatTensor[3, *size].
    """
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    steps: list[v2.Transform] = [v2.Resize(size, antialias=True)] if resize else []
    if train and crop_padding > 0:
        steps.append(v2.RandomCrop(size, padding=crop_padding))
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    steps += [
        v2.ToDtype(torch.float32, scale=False),
        v2.Normalize(mean=list(mean), std=list(std)),
        _plain,
    ]
    return v2.Compose(steps)
