"""Semantic segmentation over datasets stored as one image file and one mask file per
sample: the dataset that reads, decodes and transforms a split's pairs, and
`ImageMaskDataModule`, the base of every such datamodule (`seglab.data.folder`,
`seglab.data.voc`, `seglab.data.cityscapes`), which only say how their pairs are found
(`find_pairs`) and which fixed classes, label map and colours apply.

Training samples are randomly scaled, cropped to `crop_size`, flipped and optionally
colour-jittered; validation and test samples keep their full resolution and are only
padded (mask: `ignore_index`) to the split's largest size, rounded up to a multiple of
`size_divisor`, so they batch together and fit encoders with stride 32.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from seglab.data.base import SPLITS, Problems, SeglabDataModule
from seglab.data.io import PIL_ERRORS, UnreadableImage, read_rgb
from seglab.data.masks import MaskDecoder, check_label_map, check_palette
from seglab.data.pairs import Pair
from seglab.data.transforms import Transform, eval_transform, pad_to, train_transform
from seglab.errors import SeglabError, one_line

log = logging.getLogger(__name__)


def _unreadable(kind: str, path: Path, split: str, err: BaseException) -> str:
    return (
        f"cannot read {kind} {path} ({split} split): {one_line(err)}; replace the file "
        "or remove it together with its image/mask"
    )


def _read(path: Path, kind: str, split: str) -> Image.Image:
    """Load an image file fully (PIL opens lazily), turning any failure into SeglabError."""
    try:
        with Image.open(path) as picture:
            picture.load()
            return picture
    except PIL_ERRORS as err:
        raise SeglabError(_unreadable(kind, path, split, err)) from err


def _size(path: Path, kind: str, split: str) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as picture:
            width, height = picture.size
    except PIL_ERRORS as err:
        raise SeglabError(_unreadable(kind, path, split, err)) from err
    return height, width


class ImageMaskSegmentation(Dataset):
    """One split of image/mask files: `(image FloatTensor[3, H, W], mask LongTensor[H, W])`
    with the training or evaluation transform (uint8 images with `as_stored`).

    Args:
        pairs: (image path, mask path) per sample.
        split: "train", "val" or "test"; named in error messages.
        decoder: turns a mask file's PIL image into labels.
        transform: joint transform of uint8 `tv_tensors` (see `seglab.data.transforms`).
        pad_size: (height, width) to pad every sample to after `transform`, or None.
        ignore_index: mask value of the padding.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        split: str,
        decoder: MaskDecoder,
        transform: Transform,
        pad_size: tuple[int, int] | None = None,
        ignore_index: int = 255,
    ) -> None:
        self.pairs = list(pairs)
        self.split = split
        self.decoder = decoder
        self.transform = transform
        self.pad_size = pad_size
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The untransformed sample: uint8 Image[3, H, W] and uint8 Mask[H, W]."""
        image_path, mask_path = self.pairs[index]
        try:
            image = read_rgb(image_path)
        except UnreadableImage as err:
            raise SeglabError(_unreadable("image", image_path, self.split, err)) from err
        mask = _read(mask_path, "mask", self.split)
        height, width = image.shape[-2:]
        if (width, height) != mask.size:
            raise SeglabError(
                f"image {image_path} is {width}x{height} but its mask {mask_path} "
                f"is {mask.width}x{mask.height} (W x H, {self.split} split); a mask must have "
                "its image's size"
            )
        labels = self.decoder(mask, mask_path, self.split)
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(labels))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.transform(*self.load(index))
        if self.pad_size is not None:
            image, mask = pad_to(image, mask, self.pad_size, self.ignore_index)
        return image, mask


def as_stored(image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
    """`check_splits`' transform: the sample as decoded, without augmentation.

    Shape:
        uint8 Image[3, H, W], uint8 Mask[H, W] -> uint8 Tensor[3, H, W], LongTensor[H, W].
    """
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


class ImageMaskDataModule(SeglabDataModule):
    """Semantic segmentation over (image file, mask file) pairs: loading, mask decoding,
    transforms, padding and `check_splits`. A subclass only says where the pairs are
    (`find_pairs`) and passes its fixed decoding (`mask_palette`, `label_map`); its own
    constructor arguments are its YAML keys, passed on here by keyword (keyword-only).

    The files are listed in `setup()`, not here, so a trained model's config still
    builds the datamodule (for `to_input`, `palette`) where the data is gone.

    Args:
        root: the dataset's folder.
        class_names, num_classes: one name per class, in label order.
        ignore_index: mask value of void pixels, in [0, 255] (masks are 8-bit).
        crop_size: side of the square training crops, and the model's `input_size`.
        scale_range, hflip, color_jitter: the training augmentation (`train_transform`).
        size_divisor: evaluation samples are padded to a multiple of this (the net's
            output stride: 32 for five-stage encoders).
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings.
        mask_palette: None for class-index masks; else one (r, g, b) per class to decode
            colour-coded masks, which also colours predictions.
        label_map: `{old: new}` label renumbering after decoding.
        value_fix: the fix a mask value that is no label calls for (see `MaskDecoder`).
    """

    task = "segmentation"
    # Logged when `find_pairs` gives no test split and testing reuses val.
    no_test_reason: ClassVar[str] = "no test split"

    def __init__(
        self,
        *,
        root: str | Path,
        class_names: Sequence[str],
        num_classes: int,
        ignore_index: int = 255,
        crop_size: int = 512,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        color_jitter: Mapping[str, float] | None = None,
        size_divisor: int = 32,
        batch_size: int = 8,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        mask_palette: Sequence[Sequence[int]] | None = None,
        label_map: Mapping[int, int] | None = None,
        value_fix: str | None = None,
    ) -> None:
        super().__init__(
            class_names=class_names,
            num_classes=num_classes,
            ignore_index=ignore_index,
            input_size=crop_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        if not 0 <= ignore_index <= 255:
            raise SeglabError(
                f"data.ignore_index={ignore_index} does not fit an 8-bit mask; use a value in "
                f"[{num_classes}, 255], e.g. 255"
            )
        self.root = Path(root).expanduser()
        self.mask_palette = check_palette(mask_palette, num_classes)
        self.label_map = check_label_map(label_map, num_classes, ignore_index)
        self.decoder = MaskDecoder(
            num_classes,
            ignore_index,
            palette=self.mask_palette,
            label_map=self.label_map,
            value_fix=value_fix,
        )
        self.train_transform = train_transform(
            crop_size,
            ignore_index,
            self.mean,
            self.std,
            scale_range=scale_range,
            hflip=hflip,
            color_jitter=dict(color_jitter) if color_jitter else None,
        )
        self.eval_transform = eval_transform(self.mean, self.std)
        self.size_divisor = size_divisor

    def find_pairs(self, problems: Problems) -> dict[str, list[Pair]]:
        """The (image, mask) pairs of each split: "train", "val" and, where the dataset
        has a separate one with masks, "test" (else testing reuses val).

        Report every problem to `problems`, naming the file or folder and the fix, and go
        on with the usable pairs: in `setup()` the first report raises, in
        `check_splits()` all are collected. A split may be missing or empty once its
        problem is reported.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement find_pairs")

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """The mask colours when masks are colour-coded, else the default palette."""
        return self.mask_palette or super().palette

    def _eval_split(self, pairs: list[Pair], split: str) -> ImageMaskSegmentation:
        # One pad size per split, from the file headers: full-resolution samples of
        # different sizes then batch, and fit the net's stride.
        sizes = np.array([_size(image, "image", split) for image, _ in pairs])
        divisor = self.size_divisor
        pad_size = tuple(int(-(-s // divisor) * divisor) for s in sizes.max(axis=0))
        return ImageMaskSegmentation(
            pairs, split, self.decoder, self.eval_transform, pad_size, self.ignore_index
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = self.find_pairs(Problems(strict=True))
        for split in ("train", "val"):
            if not splits.get(split):  # find_pairs should have said why; a safety net
                raise SeglabError(
                    f"{type(self).__name__} found no {split} pairs under data.root={self.root}"
                )
        self.train_set = ImageMaskSegmentation(
            splits["train"], "train", self.decoder, self.train_transform
        )
        self.val_set = self._eval_split(splits["val"], "val")
        if splits.get("test"):
            self.test_set = self._eval_split(splits["test"], "test")
        else:
            log.info("%s: %s; testing on the val split", self.root, self.no_test_reason)
            self.test_set = self.val_set
        log.info(
            "%s: %d train, %d val, %d test pairs",
            self.root,
            len(self.train_set),
            len(self.val_set),
            len(self.test_set),
        )

    def check_splits(self) -> tuple[dict[str, Dataset], list[str]]:
        """Every split's pairs as stored (`as_stored`: no augmentation, no padding) and
        every problem found listing them; a test split that is val is left out."""
        problems = Problems(strict=False)
        splits = self.find_pairs(problems)
        datasets: dict[str, Dataset] = {
            split: ImageMaskSegmentation(splits[split], split, self.decoder, as_stored)
            for split in SPLITS
            if splits.get(split)
        }
        return datasets, problems.messages
