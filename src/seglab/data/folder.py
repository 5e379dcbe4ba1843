"""Semantic segmentation on your own images and masks, from a folder.

    python -m seglab.train data=folder data.root=/data/roads \\
        data.class_names=[background,road,car] data.num_classes=3 data.crop_size=512

Layout: `root/images/<name>.{png,jpg,jpeg,bmp,tif,tiff,webp}` and `root/masks/<name>.png`,
paired by file name stem. The splits come from, in this order of preference:

    root/images/{train,val,test}/ and root/masks/{train,val,test}/   sub-folders
    root/{train,val,test}.txt                                         one stem per line
    a seeded shuffle of all pairs by `split_ratios`                   neither of the above

A missing or empty test split reuses val. Masks hold class indices (8-bit PNG, mode L or
P, the pixel value is the label) or, with `palette`, one RGB colour per class; colours
outside the palette become `ignore_index`. `label_map` then renumbers labels, e.g.
`{3: 255}` to ignore class 3.

Training samples are randomly scaled, cropped to `crop_size`, flipped and optionally
colour-jittered; validation and test samples keep their full resolution and are only
padded (mask: `ignore_index`) to the split's largest size, rounded up to a multiple of
`size_divisor`, so they batch together and fit encoders with stride 32.

Other datasets stored as one image file and one mask file per sample (`seglab.data.voc`,
`seglab.data.cityscapes`) subclass `ImageMaskDataModule` and only say how their pairs
are found (`find_pairs`) and which fixed classes, label map and colours apply.
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

from seglab.data.base import Problems, SeglabDataModule
from seglab.data.io import IMAGE_SUFFIXES, PIL_ERRORS, UnreadableImage, read_rgb
from seglab.data.transforms import Transform, eval_transform, pad_to, train_transform
from seglab.errors import SeglabError, one_line

log = logging.getLogger(__name__)

MASK_SUFFIX = ".png"
SPLITS = ("train", "val", "test")
LAYOUT = (
    "expected ROOT/images/<name>.{png,jpg,jpeg,bmp,tif,tiff,webp} and ROOT/masks/<name>.png "
    "(optionally in train/ val/ test/ sub-folders of both)"
)
# Index masks of these PIL modes hold the labels as pixel values ("1": 0/1 binary masks).
_INDEX_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L")

Pair = tuple[Path, Path]  # (image, mask)


def examples(names: Sequence[str], limit: int = 3) -> str:
    """The first `limit` names, comma-separated, then "..." if there are more."""
    shown = ", ".join(names[:limit])
    return f"{shown}, ..." if len(names) > limit else shown


def check_class_names(class_names: Sequence[str], expected: Sequence[str], dataset: str) -> None:
    """A dataset with fixed classes: the config's `class_names` must be exactly those
    (the model head and every metric name follow them)."""
    given, expected = list(class_names), list(expected)
    if given != expected:
        first = next(
            (i for i, (a, b) in enumerate(zip(given, expected, strict=False)) if a != b),
            min(len(given), len(expected)),
        )
        raise SeglabError(
            f"data.class_names={given} differ from the {dataset} classes {expected} "
            f"(its masks hold these, in this order; first difference at index {first}); "
            "keep the config's class_names and num_classes as they are"
        )


def _strict(problems: Problems | None) -> Problems:
    return Problems(strict=True) if problems is None else problems


def _files(folder: Path, suffixes: Sequence[str], problems: Problems) -> dict[str, Path]:
    """`{stem: path}` of the files in `folder` with one of `suffixes` (any case)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            problems.add(
                f"{found[path.stem]} and {path} have the same name stem; images and masks "
                "are paired by stem, so rename or remove one"
            )
            continue
        found[path.stem] = path
    return found


def pair_files(image_dir: Path, mask_dir: Path, problems: Problems | None = None) -> list[Pair]:
    """(image, mask) pairs matched by file stem, sorted by stem; every image needs a mask
    and every mask an image (else a problem per unpaired file)."""
    problems = _strict(problems)
    images = _files(image_dir, IMAGE_SUFFIXES, problems)
    masks = _files(mask_dir, (MASK_SUFFIX,), problems)
    lonely_images = sorted(images.keys() - masks.keys())
    problems.add_each(
        [f"image {images[s]} has no mask {mask_dir / s}{MASK_SUFFIX}" for s in lonely_images],
        f"{len(lonely_images)} images in {image_dir} have no mask in {mask_dir} "
        f"({examples([images[s].name for s in lonely_images])}); add masks named <stem>.png "
        "or remove those images",
    )
    lonely_masks = sorted(masks.keys() - images.keys())
    problems.add_each(
        [
            f"mask {masks[s]} has no image {s}.{{{','.join(x[1:] for x in IMAGE_SUFFIXES)}}} "
            f"in {image_dir}"
            for s in lonely_masks
        ],
        f"{len(lonely_masks)} masks in {mask_dir} have no image in {image_dir} "
        f"({examples([masks[s].name for s in lonely_masks])}); add the images or remove "
        "those masks",
    )
    return [(images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())]


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


def _all_pairs(images: Path, masks: Path, problems: Problems) -> list[Pair]:
    pairs = pair_files(images, masks, problems)
    if not pairs:
        problems.add(f"found no image/mask pairs in {images} and {masks}; {LAYOUT}")
    return pairs


def _subfolder_splits(
    images: Path, masks: Path, problems: Problems, reported: set[str]
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
        splits[split] = pair_files(images / split, masks / split, problems)
    return splits


def _list_splits(
    root: Path, images: Path, masks: Path, problems: Problems
) -> dict[str, list[Pair]]:
    pairs = {image.stem: (image, mask) for image, mask in _all_pairs(images, masks, problems)}
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
) -> dict[str, list[Pair]]:
    """The (image, mask) pairs of each split under `root` (see the module docstring):
    "train" and "val", and "test" where the folder has one. `problems`: where to report
    what is wrong; None raises on the first."""
    problems = _strict(problems)
    if not root.is_dir():
        problems.add(f"data.root={root} does not exist or is not a folder; {LAYOUT}")
        return {}
    images, masks = root / "images", root / "masks"
    if not (images.is_dir() and masks.is_dir()):
        problems.add(f"data.root={root} has no images/ and masks/ folders; {LAYOUT}")
        return {}
    reported: set[str] = set()  # splits whose problem is already told
    if (images / "train").is_dir():
        splits = _subfolder_splits(images, masks, problems, reported)
    elif any((root / f"{split}.txt").is_file() for split in SPLITS):
        splits = _list_splits(root, images, masks, problems)
    else:
        pairs = _all_pairs(images, masks, problems)
        return _ratio_split(pairs, split_ratios, split_seed, root, problems) if pairs else {}
    for split in ("train", "val"):
        if not splits.get(split) and split not in reported:
            problems.add(
                f"data.root={root} has no {split} pairs; add images/{split} and "
                f"masks/{split} sub-folders or a non-empty {split}.txt ({LAYOUT})"
            )
    return splits


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


class MaskDecoder:
    """PIL mask -> uint8 label array: index or palette decoding, then `label_map`, then a
    check that every label is a class or `ignore_index`.

    Args:
        num_classes: labels must be in [0, num_classes) or equal `ignore_index`.
        ignore_index: label of void pixels, in [0, 255].
        palette: None for class-index masks; else one (r, g, b) per class, and masks are
            RGB images decoded colour -> class (unknown colours -> `ignore_index`).
        label_map: `{old: new}` applied after decoding; new may be `ignore_index`.
        value_fix: what to do about a mask value that is no label, for datasets whose
            label_map is fixed; None: suggest `data.label_map`.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int,
        palette: Sequence[Sequence[int]] | None = None,
        label_map: Mapping[int, int] | None = None,
        value_fix: str | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.palette = palette
        self.value_fix = value_fix
        # A 256-entry lookup table: one fancy-index applies the whole label_map.
        self.lut = np.arange(256, dtype=np.uint8)
        for old, new in (label_map or {}).items():
            self.lut[int(old)] = int(new)
        if palette is not None:
            codes = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int64)
            order = np.argsort(codes)
            self.codes = codes[order]  # sorted, for np.searchsorted
            self.code_labels = order.astype(np.uint8)

    def _decode_colours(self, mask: Image.Image) -> np.ndarray:
        rgb = np.asarray(mask.convert("RGB"), dtype=np.int64)  # (H, W, 3)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        slot = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        known = self.codes[slot] == codes
        return np.where(known, self.code_labels[slot], self.ignore_index).astype(np.uint8)

    def _decode_indices(self, mask: Image.Image, path: Path, split: str) -> np.ndarray:
        if mask.mode not in _INDEX_MODES:
            raise SeglabError(
                f"mask {path} ({split} split) is a {mask.mode} image; save class-index masks "
                "(mode L or P, pixel value = class) or, for colour-coded masks, set "
                "data.palette to one [r, g, b] per class"
            )
        labels = np.asarray(mask)
        if labels.dtype != np.uint8 and labels.dtype != np.bool_ and labels.max() > 255:
            raise SeglabError(
                f"mask {path} ({split} split) has value {int(labels.max())} > 255; labels "
                "must fit 8 bits (save 8-bit PNG masks)"
            )
        return labels.astype(np.uint8)

    def __call__(self, mask: Image.Image, path: Path, split: str) -> np.ndarray:
        """Shape: mask (W, H) PIL image -> uint8 (H, W) labels."""
        if self.palette is not None:
            labels = self._decode_colours(mask)
        else:
            labels = self._decode_indices(mask, path, split)
        labels = self.lut[labels]
        # One max() per sample; the exact offending values only when it is off.
        if labels.max() >= self.num_classes:
            present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
            bad = [int(v) for v in present if v >= self.num_classes and v != self.ignore_index]
            if bad:
                fix = self.value_fix or (
                    "fix the mask or map the value with data.label_map "
                    f"(e.g. {{{bad[0]}: {self.ignore_index}}})"
                )
                raise SeglabError(
                    f"mask {path} ({split} split) has value {bad[0]}"
                    f"{f' (and {bad[1:]})' if len(bad) > 1 else ''} but num_classes="
                    f"{self.num_classes}, ignore_index={self.ignore_index}; {fix}"
                )
        return labels


class FolderSegmentation(Dataset):
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
    constructor arguments are its YAML keys.

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
        *,
        mask_palette: Sequence[Sequence[int]] | None = None,
        label_map: Mapping[int, int] | None = None,
        value_fix: str | None = None,
    ) -> None:
        super().__init__(
            class_names,
            num_classes,
            ignore_index,
            crop_size,
            batch_size,
            num_workers,
            pin_memory,
            persistent_workers,
        )
        if not 0 <= ignore_index <= 255:
            raise SeglabError(
                f"data.ignore_index={ignore_index} does not fit an 8-bit mask; use a value in "
                f"[{num_classes}, 255], e.g. 255"
            )
        self.root = Path(root).expanduser()
        self.mask_palette = _check_palette(mask_palette, num_classes)
        self.label_map = _check_label_map(label_map, num_classes, ignore_index)
        self.decoder = MaskDecoder(
            num_classes, ignore_index, self.mask_palette, self.label_map, value_fix
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

    def _eval_split(self, pairs: list[Pair], split: str) -> FolderSegmentation:
        # One pad size per split, from the file headers: full-resolution samples of
        # different sizes then batch, and fit the net's stride.
        sizes = np.array([_size(image, "image", split) for image, _ in pairs])
        divisor = self.size_divisor
        pad_size = tuple(int(-(-s // divisor) * divisor) for s in sizes.max(axis=0))
        return FolderSegmentation(
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
        self.train_set = FolderSegmentation(
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
            split: FolderSegmentation(splits[split], split, self.decoder, as_stored)
            for split in SPLITS
            if splits.get(split)
        }
        return datasets, problems.messages


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
        split_seed: seeds that shuffle.
        crop_size: side of the square training crops, and the model's `input_size`.
        scale_range: [min, max] random scale factor, relative to fitting the crop.
        hflip: probability of a horizontal flip in training.
        color_jitter: None or `v2.ColorJitter` arguments (brightness, contrast,
            saturation, hue), for training images only.
        size_divisor: evaluation samples are padded to a multiple of this (the net's
            output stride: 32 for five-stage encoders).
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings.
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
        size_divisor: int = 32,
        batch_size: int = 8,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__(
            root,
            class_names,
            num_classes,
            ignore_index,
            crop_size,
            scale_range,
            hflip,
            color_jitter,
            size_divisor,
            batch_size,
            num_workers,
            pin_memory,
            persistent_workers,
            mask_palette=palette,
            label_map=label_map,
        )
        self.split_ratios = [float(r) for r in split_ratios]
        self.split_seed = split_seed

    def find_pairs(self, problems: Problems) -> dict[str, list[Pair]]:
        return find_splits(self.root, self.split_ratios, self.split_seed, problems)


def _check_palette(
    palette: Sequence[Sequence[int]] | None, num_classes: int
) -> list[tuple[int, int, int]] | None:
    if palette is None:
        return None
    colours = [tuple(int(v) for v in colour) for colour in palette]
    if len(colours) != num_classes:
        raise SeglabError(
            f"data.palette has {len(colours)} colours but num_classes={num_classes}; give "
            "one [r, g, b] per class, in class order"
        )
    bad = [c for c in colours if len(c) != 3 or not all(0 <= v <= 255 for v in c)]
    if bad:
        raise SeglabError(f"data.palette entries must be [r, g, b] in 0-255; got {bad[0]}")
    if len(set(colours)) != len(colours):
        raise SeglabError(f"data.palette has a colour twice: {colours}; colours must differ")
    return colours  # type: ignore[return-value]


def _check_label_map(
    label_map: Mapping[int, int] | None, num_classes: int, ignore_index: int
) -> dict[int, int] | None:
    if not label_map:
        return None
    mapping = {int(old): int(new) for old, new in label_map.items()}
    for old, new in mapping.items():
        if not 0 <= old <= 255:
            raise SeglabError(f"data.label_map key {old} is not an 8-bit mask value (0-255)")
        if not (0 <= new < num_classes or new == ignore_index):
            raise SeglabError(
                f"data.label_map maps {old} to {new}, which is neither a class in "
                f"[0, {num_classes}) nor ignore_index={ignore_index}"
            )
    return mapping
