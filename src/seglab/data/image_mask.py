"""Semantic segmentation over datasets stored as one image file and one mask file per
sample: the dataset that reads, decodes and transforms a split's pairs, and
`ImageMaskDataModule`, the base of every such datamodule (`seglab.data.folder`,
`seglab.data.voc`, `seglab.data.cityscapes`), which only say how their pairs are found
(`find_pairs`) and which fixed classes, label map and colours apply.

Training samples are randomly scaled, cropped to `crop_size`, flipped and optionally
colour-jittered; validation and test samples keep their full resolution, unpadded: each
evaluation batch holds samples of one size (`sample_sizes`, `SizeGroupedBatchSampler`)
and the module pads each batch only as `seglab.predict` does, so evaluation scores the
masks `predict` writes. Reading, caching (`data.cache`) and augmenting are
`seglab.data.decoded.DecodedDataModule`'s; this module says what a pair is, how it
decodes and what is checked before (the headers) and after (the labels).

`setup()` reads every file's header first (`seglab.data.headers`) and stops on any file
that is no whole image, a mask of a mode the decoding cannot read, or an image and mask
of different sizes, naming them all at once; a disk cache already built for these files
skips it. With `folds`, train and val are pooled and dealt into folds by image (or by
`group_pattern` group), each named by its image's path relative to `root`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from seglab.data.base import Problems
from seglab.data.cache import CacheMode
from seglab.data.decoded import DecodedDataModule, DecodedSplit
from seglab.data.headers import Header, raise_all, read_headers
from seglab.data.io import PIL_ERRORS, UnreadableImage, read_rgb
from seglab.data.labels import SAMPLED_MASKS, histogram, label_problem
from seglab.data.masks import MaskDecoder, check_label_map, check_palette
from seglab.data.pairs import Pair
from seglab.data.splits import check_group_pattern, file_groups
from seglab.data.transforms import SegmentationAugment
from seglab.errors import SeglabError, one_line

log = logging.getLogger(__name__)


def _unreadable(kind: str, path: Path, split: str, err: BaseException | str) -> str:
    return (
        f"cannot read {kind} {path} ({split} split): {one_line(err)}; replace the file "
        "or remove it together with its image/mask"
    )


def same_aspect(image_size: tuple[int, int], mask_size: tuple[int, int]) -> bool:
    """Whether an image and its mask, (width, height) each, have one aspect ratio: each
    side of one scaled to the other's grid is within a pixel of it."""
    (width, height), (mask_width, mask_height) = image_size, mask_size
    return (
        abs(width * mask_height / height - mask_width) <= 1
        and abs(height * mask_width / width - mask_height) <= 1
    )


def _size_problem(
    image: Path, mask: Path, split: str, image_size, mask_size, resizing: bool = False
) -> str:
    """The message for an image and mask of different sizes, (width, height) each."""
    (width, height), (mask_width, mask_height) = image_size, mask_size
    sizes = (
        f"image {image} is {width}x{height} but its mask {mask} is {mask_width}x"
        f"{mask_height} (W x H, {split} split)"
    )
    if not same_aspect(image_size, mask_size):
        return (
            f"{sizes}, another aspect ratio, so no resize can pair them; a mask must have "
            "its image's size (or its aspect ratio, with data.resize_images=true)"
        )
    if resizing:  # cannot happen: same aspect ratios are resized
        return f"{sizes}; cannot resize it"
    return (
        f"{sizes}; a mask must have its image's size, or, as here, its aspect ratio: "
        "data.resize_images=true resizes each image to its mask's grid"
    )


def _read(path: Path, kind: str, split: str) -> Image.Image:
    """Load an image file fully (PIL opens lazily), turning any failure into SeglabError."""
    try:
        with Image.open(path) as picture:
            picture.load()
            return picture
    except PIL_ERRORS as err:
        raise SeglabError(_unreadable(kind, path, split, err)) from err


class ImageMaskDataModule(DecodedDataModule):
    """Semantic segmentation over (image file, mask file) pairs: loading, mask decoding,
    transforms and `check_splits`. A subclass only says where the pairs are
    (`find_pairs`) and passes its fixed decoding (`mask_palette`, `label_map`); its own
    constructor arguments are its YAML keys, passed on here by keyword (keyword-only).

    The files are listed in `setup()`, not here, so a trained model's config still
    builds the datamodule (for `to_input`, `palette`) where the data is gone.

    Args:
        root: the dataset's folder.
        class_names, num_classes: one name per class, in label order.
        ignore_index: mask value of void pixels, in [0, 255] (masks are 8-bit).
        crop_size: side of the square training crops, and the model's `input_size`.
        scale_range, hflip, color_jitter: the training augmentation (`SegmentationAugment`).
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings.
        mask_palette: None for class-index masks; else one (r, g, b) per class to decode
            colour-coded masks, which also colours predictions.
        label_map: `{old: new}` label renumbering after decoding.
        value_fix: the fix a mask value that is no label calls for (see `MaskDecoder`).
        cache: "auto", "memory", "disk" or "none": decode every pair once (see
            `seglab.data.cache`); auto holds the splits in memory when they fit.
        cache_dir: where `cache="disk"` writes; None: `$XDG_CACHE_HOME/seglab`.
        split_seed: seeds the folds (and a subclass's own seeded split).
        folds, fold: cross-validation on the pooled train and val pairs (see
            `SeglabDataModule`); the test split stays, and where there is none testing
            uses the fold's val split.
        group_pattern: with `folds`, a regular expression searched in each image's file
            name; the images giving the same first group (or whole match) are one group
            (a video, a patient) that no fold boundary splits. None: every image alone.
        check_labels: at `setup("fit")`, stop when a class has no train pixels or most
            pixels are `ignore_index` (`seglab.data.labels`: masks saved as 0/255); the
            labels are counted over the cache, else over up to 256 train masks.
        mask_threshold: None, or binary masks read by a threshold (`MaskDecoder`), which
            may then be JPEG files.
        resize_images: resize an image to its mask's size when their aspect ratios match.
    """

    task = "segmentation"

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
        batch_size: int = 8,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        mask_palette: Sequence[Sequence[int]] | None = None,
        label_map: Mapping[int, int] | None = None,
        value_fix: str | None = None,
        cache: CacheMode = "auto",
        cache_dir: str | Path | None = None,
        split_seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
        group_pattern: str | None = None,
        check_labels: bool = True,
        mask_threshold: int | None = None,
        resize_images: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            cache=cache,
            cache_dir=cache_dir,
            split_seed=split_seed,
            class_names=class_names,
            num_classes=num_classes,
            ignore_index=ignore_index,
            input_size=crop_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            folds=folds,
            fold=fold,
        )
        self.check_labels = check_labels
        self.resize_images = resize_images
        self.group_pattern = check_group_pattern(group_pattern)
        if not 0 <= ignore_index <= 255:
            raise SeglabError(
                f"data.ignore_index={ignore_index} does not fit an 8-bit mask; use a value in "
                f"[{num_classes}, 255], e.g. 255"
            )
        self.mask_palette = check_palette(mask_palette, num_classes)
        self.label_map = check_label_map(label_map, num_classes, ignore_index)
        self.decoder = MaskDecoder(
            num_classes,
            ignore_index,
            palette=self.mask_palette,
            label_map=self.label_map,
            value_fix=value_fix,
            threshold=mask_threshold,
        )
        self.augmentation = SegmentationAugment(
            crop_size,
            ignore_index,
            self.mean,
            self.std,
            scale_range=scale_range,
            hflip=hflip,
            color_jitter=dict(color_jitter) if color_jitter else None,
        )

    def find_pairs(self, problems: Problems) -> dict[str, list[Pair]]:
        """The (image, mask) pairs of each split: "train", "val" and, where the dataset
        has a separate one with masks, "test" (else testing reuses val).

        Report every problem to `problems`, naming the file or folder and the fix, and go
        on with the usable pairs: in `setup()` the first report raises, in
        `check_splits()` all are collected. A split may be missing or empty once its
        problem is reported.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement find_pairs")

    def find_samples(self, problems: Problems) -> dict[str, list[Pair]]:
        return self.find_pairs(problems)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """The mask colours when masks are colour-coded, else the default palette."""
        return self.mask_palette or super().palette

    def _name(self, image: Path) -> str:
        """An image's path relative to `root` where it is under it: its name in folds
        and split lists."""
        inside = image.is_relative_to(self.root)
        return image.relative_to(self.root).as_posix() if inside else str(image)

    def sample_name(self, pair: Pair) -> str:
        return f"image {pair[0]}"

    def fold_samples(self, train: list[Pair], val: list[Pair]) -> tuple[list[Pair], list[Pair]]:
        """Folds of whole `group_pattern` groups, each pair named by its image."""
        pool = [*train, *val]
        groups = None
        if self.group_pattern is not None:
            groups = file_groups([image.name for image, _ in pool], self.group_pattern)
        names = [self._name(image) for image, _ in pool]
        kept, held = self.fold_indices(names, self.split_seed, groups=groups)
        return [pool[i] for i in kept], [pool[i] for i in held]

    def fingerprint(self, split: str, pairs: list[Pair]) -> tuple[dict, list[Path]]:
        settings = {
            "root": str(self.root.resolve()),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "palette": self.mask_palette,
            "label_map": self.decoder.lut.tolist(),
            "mask_threshold": self.decoder.threshold,
            "resize_images": self.resize_images,
        }
        return settings, [path for pair in pairs for path in pair]

    def decode(self, split: str, pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: uint8 image Tensor[3, H, W], uint8 mask Tensor[H, W]."""
        image_path, mask_path = pair
        try:
            image = read_rgb(image_path)
        except UnreadableImage as err:
            raise SeglabError(_unreadable("image", image_path, split, err)) from err
        mask = _read(mask_path, "mask", split)
        height, width = image.shape[-2:]
        if (width, height) != mask.size:
            if not (self.resize_images and same_aspect((width, height), mask.size)):
                raise SeglabError(
                    _size_problem(
                        image_path, mask_path, split, (width, height), mask.size, self.resize_images
                    )
                )
            image = TF.resize(image, [mask.size[1], mask.size[0]], antialias=True)
        return image, torch.from_numpy(self.decoder(mask, mask_path, split))

    def scan(self, splits: dict[str, list[Pair]]) -> dict[str, np.ndarray]:
        """Read the header of every image and mask of `splits` (`seglab.data.headers`)
        and raise one error naming every bad file.

        Returns:
            per split, the (height, width) of every sample (its mask's): int64 [N, 2].
        """
        paths = [path for pairs in splits.values() for pair in pairs for path in pair]
        headers = iter(read_headers(paths))
        found: list[tuple[Path, str]] = []
        sizes: dict[str, np.ndarray] = {}
        for split, pairs in splits.items():
            sizes[split] = np.zeros((len(pairs), 2), np.int64)
            for i, (image, mask) in enumerate(pairs):
                image_header, mask_header = next(headers), next(headers)
                found += self._pair_problems(image, mask, image_header, mask_header, split)
                sizes[split][i] = mask_header.height, mask_header.width  # images resized
        raise_all(
            [message for _, message in found],
            [str(path) for path, _ in found],
            f"data.root={self.root}",
            "replace or remove them (each with its image or mask)",
        )
        return sizes

    def _pair_problems(
        self, image: Path, mask: Path, image_header: Header, mask_header: Header, split: str
    ) -> list[tuple[Path, str]]:
        """(file, message) of what the headers of one pair show wrong: a file that is no
        whole image, a mask of a mode the decoding cannot read or saved as JPEG, an image
        and mask of different sizes."""
        found = []
        if image_header.error is not None:
            found.append((image, _unreadable("image", image, split, image_header.error)))
        if mask_header.error is not None:
            found.append((mask, _unreadable("mask", mask, split, mask_header.error)))
        elif problem := self.decoder.mode_problem(mask_header.mode, mask, split):
            found.append((mask, problem))
        elif mask_header.format == "JPEG" and self.decoder.threshold is None:
            message = (
                f"mask {mask} ({split} split) is a JPEG file, whose lossy compression blurs "
                "the labels at edges; save masks as PNG"
            )
            found.append((mask, message))
        image_size = (image_header.width, image_header.height)
        mask_size = (mask_header.width, mask_header.height)
        resizable = self.resize_images and same_aspect(image_size, mask_size)
        if not found and image_size != mask_size and not resizable:
            found.append(
                (mask, _size_problem(image, mask, split, image_size, mask_size, self.resize_images))
            )
        return found

    def split_files(self) -> dict[str, list[str]]:
        """The image file of every sample of each split set up, relative to `root` where
        it is under it (`seglab.run_log.write_splits` writes them into the run directory;
        such a list also serves as a folder dataset's `train.txt`). A test split that is
        the val split is left out."""
        sets = {"train": self.train_set, "val": self.val_set}
        if self.test_set is not self.val_set:
            sets["test"] = self.test_set
        return {
            split: [self._name(image) for image, _ in dataset.samples]
            for split, dataset in sets.items()
            if dataset is not None
        }

    def check_train(self, train: DecodedSplit) -> None:
        """With `check_labels`, raise `seglab.data.labels.label_problem` for the train
        split's labels: all of them from a cache, else those of up to `SAMPLED_MASKS`
        evenly spaced masks."""
        if not self.check_labels:
            return
        if train.store is not None:
            counts = np.bincount(np.asarray(train.store["masks"]), minlength=256)
            where = f"the {len(train)} train masks of data.root={self.root}"
        else:
            pairs = train.samples
            count = min(len(pairs), SAMPLED_MASKS)
            picked = np.linspace(0, len(pairs) - 1, count).round().astype(int)
            masks = (
                self.decoder(_read(mask, "mask", "train"), mask, "train")
                for mask in (pairs[i][1] for i in picked)
            )
            counts = histogram(masks)
            where = f"{count} of the {len(pairs)} train masks of data.root={self.root}"
        problem = label_problem(counts, self.class_names, self.ignore_index, where, self.label_map)
        if problem is not None:
            raise SeglabError(problem)
