"""Semantic segmentation on your own images and masks, from a folder: where the
image/mask pairs and their splits are found, and `FolderDataModule`, which reads them.

    python -m seglab.train data=folder data.root=/data/roads \\
        data.class_names=[background,road,car] data.num_classes=3 data.crop_size=512

Layout: `root/images/<name>.{png,jpg,jpeg,bmp,tif,tiff,webp}` and `root/masks/<name>.png`,
paired by file name stem. The splits come from, in this order of preference:

    root/images/{train,val,test}/ and root/masks/{train,val,test}/   sub-folders
    root/{train,val,test}.txt                                         one stem per line
    a seeded shuffle of all pairs by `split_ratios`                   neither of the above

A missing or empty test split reuses val. With `folds`, train and val are pooled into
seeded folds (`split_seed`), whole `group_pattern` groups each (see
`seglab.data.image_mask`). Masks hold class indices (8-bit PNG, mode L or
P, the pixel value is the label) or, with `palette`, one RGB colour per class; colours
outside the palette become `ignore_index`. `label_map` then renumbers labels, e.g.
`{3: 255}` to ignore class 3 (decoding: `seglab.data.masks`). Training and evaluation
samples are transformed as `seglab.data.image_mask` says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from seglab.data.base import SPLITS, Problems, examples
from seglab.data.cache import CacheMode
from seglab.data.image_mask import ImageMaskDataModule
from seglab.data.pairs import Pair, pair_files
from seglab.errors import SeglabError

LAYOUT = (
    "expected ROOT/images/<name>.{png,jpg,jpeg,bmp,tif,tiff,webp} and ROOT/masks/<name>.png "
    "(optionally in train/ val/ test/ sub-folders of both)"
)


def _read_list(path: Path, pairs: Mapping[str, Pair], root: Path, problems: Problems) -> list[Pair]:
    """Pairs named by a split list file: one stem per line; blank and '#' lines skipped."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    stems = [line for line in lines if line and not line.startswith("#")]
    # A line may also give a file name ("0001.jpg"): its stem is used then.
    stems = [s if s in pairs else Path(s).stem for s in stems]
    unknown = [s for s in stems if s not in pairs]
    problems.add_each(
        [
            f"{path} lists {s}, which has no image/mask pair in {root}/images and {root}/masks"
            for s in unknown
        ],
        f"{path} lists {len(unknown)} names with no image/mask pair in {root}/images and "
        f"{root}/masks ({examples(unknown)}); fix the list or add the files",
    )
    # dict: drop repeats, keep order.
    return [pairs[s] for s in dict.fromkeys(stems) if s in pairs]


def _ratio_split(
    pairs: Sequence[Pair], ratios: Sequence[float], seed: int, root: Path, problems: Problems
) -> dict[str, list[Pair]]:
    """Seeded shuffle of `pairs` cut by `ratios` (train, val, test); a non-zero ratio gets
    at least one pair, so small datasets still validate."""
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or ratios[1] <= 0:
        raise SeglabError(
            f"data.split_ratios must be [train, val, test] with train, val > 0 and test >= 0; "
            f"got {list(ratios)}"
        )
    total, count = float(sum(ratios)), len(pairs)
    sizes = [max(1, round(count * r / total)) if r > 0 else 0 for r in ratios[1:]]
    if count - sum(sizes) < 1:
        problems.add(
            f"{root} has only {count} image/mask pairs, too few to split by "
            f"data.split_ratios={list(ratios)}; add images or list the splits in "
            f"{root}/train.txt and val.txt"
        )
        return {"train": list(pairs)}  # check_splits still scans them
    order = np.random.default_rng(seed).permutation(count)
    shuffled = [pairs[i] for i in order]
    n_val, n_test = sizes
    return {
        "train": shuffled[n_val + n_test :],
        "val": shuffled[:n_val],
        "test": shuffled[n_val : n_val + n_test],
    }


def _all_pairs(images: Path, masks: Path, problems: Problems, lossy: bool) -> list[Pair]:
    pairs = pair_files(images, masks, problems, lossy)
    if not pairs:
        problems.add(f"found no image/mask pairs in {images} and {masks}; {LAYOUT}")
    return pairs


def _subfolder_splits(
    images: Path, masks: Path, problems: Problems, reported: set[str], lossy: bool
) -> dict[str, list[Pair]]:
    splits: dict[str, list[Pair]] = {}
    for split in SPLITS:
        if not (images / split).is_dir():
            continue
        if not (masks / split).is_dir():
            problems.add(
                f"{images / split} has no matching {masks / split}; add the masks of "
                f"the {split} images there"
            )
            reported.add(split)
            continue
        splits[split] = pair_files(images / split, masks / split, problems, lossy)
    return splits


def _list_splits(
    root: Path, images: Path, masks: Path, problems: Problems, lossy: bool
) -> dict[str, list[Pair]]:
    found = _all_pairs(images, masks, problems, lossy)
    pairs = {image.stem: (image, mask) for image, mask in found}
    splits: dict[str, list[Pair]] = {}
    seen: dict[Path, str] = {}
    for split in SPLITS:
        if not (root / f"{split}.txt").is_file():
            continue
        splits[split] = []
        for image, mask in _read_list(root / f"{split}.txt", pairs, root, problems):
            if image in seen:
                problems.add(
                    f"{image.stem} is listed in both {root / seen[image]}.txt and "
                    f"{root / split}.txt; a sample may be in one split only"
                )
                continue
            seen[image] = split
            splits[split].append((image, mask))
    return splits


def find_splits(
    root: Path,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    problems: Problems | None = None,
    lossy_masks: bool = False,
) -> dict[str, list[Pair]]:
    """The (image, mask) pairs of each split under `root` (see the module docstring):
    "train" and "val", and "test" where the folder has one. `problems`: where to report
    what is wrong; None raises on the first. `lossy_masks`: JPEG masks pair too."""
    problems = Problems(strict=True) if problems is None else problems
    if not root.is_dir():
        problems.add(f"data.root={root} does not exist or is not a folder; {LAYOUT}")
        return {}
    images, masks = root / "images", root / "masks"
    if not (images.is_dir() and masks.is_dir()):
        problems.add(f"data.root={root} has no images/ and masks/ folders; {LAYOUT}")
        return {}
    reported: set[str] = set()  # splits whose problem is already told
    if (images / "train").is_dir():
        splits = _subfolder_splits(images, masks, problems, reported, lossy_masks)
    elif any((root / f"{split}.txt").is_file() for split in SPLITS):
        splits = _list_splits(root, images, masks, problems, lossy_masks)
    else:
        pairs = _all_pairs(images, masks, problems, lossy_masks)
        return _ratio_split(pairs, split_ratios, split_seed, root, problems) if pairs else {}
    for split in ("train", "val"):
        if not splits.get(split) and split not in reported:
            problems.add(
                f"data.root={root} has no {split} pairs; add images/{split} and "
                f"masks/{split} sub-folders or a non-empty {split}.txt ({LAYOUT})"
            )
    return splits


class FolderDataModule(ImageMaskDataModule):
    """Semantic segmentation of images and masks in a folder (see the module docstring).

    Args:
        root: folder holding `images/` and `masks/`.
        class_names, num_classes: one name per class, in label order.
        ignore_index: mask value of void pixels, in [0, 255] (masks are 8-bit).
        palette: None for class-index masks; else one [r, g, b] per class to decode
            colour-coded masks; it also colours predictions and overlays.
        label_map: `{old: new}` label renumbering after decoding; new may be ignore_index.
        split_ratios: [train, val, test] fractions when the folder defines no splits.
        split_seed: seeds that shuffle, and the folds.
        crop_size: side of the square training crops, and the model's `input_size`.
        scale_range: [min, max] random scale factor, relative to fitting the crop.
        hflip: probability of a horizontal flip in training.
        color_jitter: None or `v2.ColorJitter` arguments (brightness, contrast,
            saturation, hue), for training images only.
        cache: "auto", "memory", "disk" or "none": decode every pair once (see
            `seglab.data.cache`); auto holds the splits in memory when they fit.
        cache_dir: where `cache="disk"` writes; None: `$XDG_CACHE_HOME/seglab`.
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings.
        folds, fold, group_pattern: cross-validation on the pooled train and val pairs,
            folds of whole `group_pattern` groups (see `ImageMaskDataModule`).
        check_labels: stop at setup when a class has no train pixels or most pixels are
            ignore_index (masks saved as 0/255; see `seglab.data.labels`).
        mask_threshold: None, or binary masks read by a threshold: grey >= it is class 1,
            else 0; JPEG masks (`masks/<name>.jpg`) are then accepted (lossy files).
        resize_images: an image of another size than its mask, with the same aspect
            ratio, is resized to the mask's grid (the labels' resolution); a different
            aspect ratio is still refused.
    """

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str],
        num_classes: int,
        ignore_index: int = 255,
        palette: Sequence[Sequence[int]] | None = None,
        label_map: Mapping[int, int] | None = None,
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        crop_size: int = 512,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        color_jitter: Mapping[str, float] | None = None,
        cache: CacheMode = "auto",
        cache_dir: str | Path | None = None,
        batch_size: int = 8,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        folds: int | None = None,
        fold: int = 0,
        group_pattern: str | None = None,
        check_labels: bool = True,
        mask_threshold: int | None = None,
        resize_images: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            class_names=class_names,
            num_classes=num_classes,
            ignore_index=ignore_index,
            crop_size=crop_size,
            scale_range=scale_range,
            hflip=hflip,
            color_jitter=color_jitter,
            cache=cache,
            cache_dir=cache_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            split_seed=split_seed,
            folds=folds,
            fold=fold,
            group_pattern=group_pattern,
            check_labels=check_labels,
            mask_threshold=mask_threshold,
            resize_images=resize_images,
            mask_palette=palette,
            label_map=label_map,
        )
        self.split_ratios = [float(r) for r in split_ratios]

    def find_pairs(self, problems: Problems) -> dict[str, list[Pair]]:
        lossy = self.decoder.threshold is not None
        return find_splits(self.root, self.split_ratios, self.split_seed, problems, lossy)
