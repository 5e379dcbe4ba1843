"""Semantic segmentation over datasets stored as one image file and one mask file per
sample: the dataset that reads, decodes and transforms a split's pairs, and
`ImageMaskDataModule`, the base of every such datamodule (`seglab.data.folder`,
`seglab.data.voc`, `seglab.data.cityscapes`), which only say how their pairs are found
(`find_pairs`) and which fixed classes, label map and colours apply.

Training samples are randomly scaled, cropped to `crop_size`, flipped and optionally
colour-jittered; validation and test samples keep their full resolution, unpadded: each
evaluation batch holds samples of one size (`sample_sizes`, `SizeGroupedBatchSampler`)
and the module pads each batch only as `seglab.predict` does, so evaluation scores the
masks `predict` writes. With `cache` (see
`seglab.data.cache`) every pair is decoded once, the training split yields the decoded
uint8 pairs and the same augmentation runs on whole batches on the training device
(`SegmentationBatchAugment`); validation and test samples read the cache and are
transformed as without it.

`setup()` reads every file's header first (`seglab.data.headers`) and stops on any file
that is no whole image, a mask of a mode the decoding cannot read, or an image and mask
of different sizes, naming them all at once; a disk cache already built for these files
skips it. With `folds`, train and val are pooled and dealt into folds by image (or by
`group_pattern` group), each named by its image's path relative to `root`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from seglab.data.base import SPLITS, Problems, SeglabDataModule
from seglab.data.batch_augment import SegmentationBatchAugment
from seglab.data.cache import (
    CacheMode,
    Source,
    Store,
    build_segmentation,
    cache_root,
    check_mode,
    decoded_nbytes,
    file_stats,
    fitting,
    in_memory,
    is_built,
    on_disk,
    pass_through,
    resolve,
    segmentation_sample,
    segmentation_sizes,
    trainer_stage,
)
from seglab.data.headers import Header, raise_all, read_headers
from seglab.data.io import PIL_ERRORS, UnreadableImage, read_rgb
from seglab.data.labels import SAMPLED_MASKS, histogram, label_problem
from seglab.data.masks import MaskDecoder, check_label_map, check_palette
from seglab.data.pairs import Pair
from seglab.data.splits import check_group_pattern, file_groups
from seglab.data.transforms import Transform, eval_transform, train_transform
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


class ImageMaskSegmentation(Dataset):
    """One split of image/mask files: `(image FloatTensor[3, H, W], mask LongTensor[H, W])`
    with the training or evaluation transform (uint8 images with `as_stored`).

    Args:
        pairs: (image path, mask path) per sample.
        split: "train", "val" or "test"; named in error messages.
        decoder: turns a mask file's PIL image into labels.
        transform: joint transform of uint8 `tv_tensors` (see `seglab.data.transforms`).
        sample_sizes: int [N, 2], the (height, width) of every sample as stored, or None;
            evaluation batches samples of one size together by it.
        resize_images: an image of another size than its mask (same aspect ratio) is
            resized (antialiased) to the mask's size; else that is an error.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        split: str,
        decoder: MaskDecoder,
        transform: Transform,
        sample_sizes: np.ndarray | None = None,
        resize_images: bool = False,
    ) -> None:
        self.pairs = list(pairs)
        self.split = split
        self.decoder = decoder
        self.transform = transform
        self.sample_sizes = sample_sizes
        self.resize_images = resize_images

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
            if not (self.resize_images and same_aspect((width, height), mask.size)):
                raise SeglabError(
                    _size_problem(
                        image_path,
                        mask_path,
                        self.split,
                        (width, height),
                        mask.size,
                        self.resize_images,
                    )
                )
            image = TF.resize(image, [mask.size[1], mask.size[0]], antialias=True)
        labels = self.decoder(mask, mask_path, self.split)
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(labels))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*self.load(index))


class CachedSegmentation(ImageMaskSegmentation):
    """`ImageMaskSegmentation` reading its samples decoded from a cache (`store`);
    `transform` None yields them as stored, uint8 image [3, H, W] and mask [H, W], for
    the batch augmentation on the training device. `__getitems__` gives a whole batch
    (collate with `pass_through`): lists of those, or the transformed samples stacked.
    """

    def __init__(
        self,
        store: Store,
        pairs: Sequence[Pair],
        split: str,
        decoder: MaskDecoder,
        transform: Transform | None,
    ) -> None:
        super().__init__(pairs, split, decoder, transform, segmentation_sizes(store))
        self.store = store

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = segmentation_sample(self.store, index)
        # Copies: the store may be a read-only memory map.
        return (
            tv_tensors.Image(torch.from_numpy(np.array(image))),
            tv_tensors.Mask(torch.from_numpy(np.array(mask))),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.transform is None:
            return as_decoded(*self.load(index))
        return super().__getitem__(index)

    def __getitems__(self, indices: Sequence[int]) -> tuple:
        items = [self[i] for i in indices]
        if self.transform is None:
            images, masks = zip(*items, strict=True)
            return list(images), list(masks)
        return default_collate(items)


def as_decoded(image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample as decoded, as plain tensors: what a cache stores.

    Shape:
        uint8 Image[3, H, W], uint8 Mask[H, W] -> uint8 Tensor[3, H, W], uint8 Tensor[H, W].
    """
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def as_stored(image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
    """`check_splits`' transform: the sample as decoded, without augmentation.

    Shape:
        uint8 Image[3, H, W], uint8 Mask[H, W] -> uint8 Tensor[3, H, W], LongTensor[H, W].
    """
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


class ImageMaskDataModule(SeglabDataModule):
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
        scale_range, hflip, color_jitter: the training augmentation (`train_transform`).
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
        self.split_seed = split_seed
        self.check_labels = check_labels
        self.resize_images = resize_images
        self.group_pattern = check_group_pattern(group_pattern)
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
            threshold=mask_threshold,
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
        self.crop_size = crop_size
        self.scale_range, self.hflip = scale_range, hflip
        self.color_jitter = dict(color_jitter) if color_jitter else None
        self.cache = check_mode(cache)
        self.cache_dir = cache_root(cache_dir)

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

    def _splits(self) -> dict[str, list[Pair]]:
        """The pairs of each split, this run's fold with `folds`; "test" only where it is
        not the val split."""
        splits = self.find_pairs(Problems(strict=True))
        for split in ("train", "val"):
            if not splits.get(split):  # find_pairs should have said why; a safety net
                raise SeglabError(
                    f"{type(self).__name__} found no {split} pairs under data.root={self.root}"
                )
        if self.folds is not None:
            splits["train"], splits["val"] = self._fold(splits["train"] + splits["val"])
        if not splits.get("test"):
            log.info("%s: %s; testing on the val split", self.root, self.no_test_reason)
        return {split: splits[split] for split in SPLITS if splits.get(split)}

    def _fold(self, pool: list[Pair]) -> tuple[list[Pair], list[Pair]]:
        """(train, val) pairs of this run's fold of `pool`, each in the pool's order."""
        images = [image for image, _ in pool]
        names = [
            image.relative_to(self.root).as_posix()
            if image.is_relative_to(self.root)
            else str(image)
            for image in images
        ]
        groups = None
        if self.group_pattern is not None:
            groups = file_groups([image.name for image in images], self.group_pattern)
        train, val = self.fold_indices(names, self.split_seed, groups=groups)
        return [pool[i] for i in train], [pool[i] for i in val]

    def _source(self, split: str, pairs: list[Pair]) -> Source:
        """What the disk cache of one split is decoded from."""
        settings = {
            "dataset": type(self).__name__,
            "root": str(self.root.resolve()),
            "split": split,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "palette": self.mask_palette,
            "label_map": self.decoder.lut.tolist(),
            "mask_threshold": self.decoder.threshold,
            "resize_images": self.resize_images,
        }
        if self.folds is not None:  # each fold's splits cached apart, not evicting others
            settings["fold"] = [self.folds, self.fold, self.split_seed]
        files = file_stats(path for pair in pairs for path in pair)
        return Source(f"{self.root.name}-{split}", settings, files)

    def _store(
        self,
        split: str,
        pairs: list[Pair],
        mode: str,
        sizes: Callable[[], np.ndarray],
        source: Source | None = None,
    ) -> Store:
        """The decoded pairs of one split from the cache of `mode` ("memory" or "disk");
        `sizes()` gives their (height, width) from the file headers, read only to build."""
        dataset = ImageMaskSegmentation(
            pairs, split, self.decoder, as_decoded, resize_images=self.resize_images
        )
        names = [f"image {image}" for image, _ in pairs]
        build = build_segmentation(dataset, sizes, names, f"caching {split}")
        if mode == "memory":
            return in_memory(build)
        return on_disk(self.cache_dir, source or self._source(split, pairs), build)

    def _scan(self, splits: dict[str, list[Pair]]) -> dict[str, np.ndarray]:
        """Read the header of every image and mask of `splits` (`seglab.data.headers`)
        and raise one error naming every bad file.

        Returns:
            per split, the (height, width) of every image: int64 [N, 2].
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

    def _sources(self, splits: dict[str, list[Pair]]) -> dict[str, Source] | None:
        """With `cache="disk"`, the cache source of each split; else None."""
        if self.cache != "disk":
            return None
        return {split: self._source(split, pairs) for split, pairs in splits.items()}

    def prepare_data(self) -> None:
        """With `cache="disk"`, decode the splits into the disk cache unless it is up to
        date (after the header scan); Lightning runs this in one process per node, before
        `setup()` in all."""
        if self.cache != "disk":
            return
        splits = self._splits()
        if not fitting(trainer_stage(getattr(self, "trainer", None))):
            del splits["train"]
        sources = self._sources(splits)
        built = all(is_built(self.cache_dir, source) for source in sources.values())
        sizes = {} if built else self._scan(splits)
        for split, pairs in splits.items():
            self._store(split, pairs, "disk", lambda s=split: sizes[s], sources[split])

    def setup(self, stage: str | None = None) -> None:
        """Build the splits `stage` needs: all for "fit" (and None), else the evaluation
        splits only, so evaluating a checkpoint decodes no training image."""
        if self.train_set is not None or (self.val_set is not None and not fitting(stage)):
            return
        splits = self._splits()
        if not fitting(stage):
            del splits["train"]
        sources = self._sources(splits)
        if sources is not None and all(is_built(self.cache_dir, s) for s in sources.values()):
            sizes: dict[str, np.ndarray] = {}  # decoded before: the stores hold the sizes
        else:
            sizes = self._scan(splits)

        def split_sizes(split: str) -> np.ndarray:
            return sizes[split]

        def nbytes() -> int:
            pixels = {split: int(np.prod(split_sizes(split), axis=1).sum()) for split in splits}
            return sum(
                decoded_nbytes(self.task, len(splits[split]), pixels[split]) for split in splits
            )

        mode = resolve(self.cache, nbytes, getattr(self, "trainer", None))
        sets: dict[str, ImageMaskSegmentation] = {}
        if mode == "none":
            if "train" in splits:
                sets["train"] = ImageMaskSegmentation(
                    splits["train"],
                    "train",
                    self.decoder,
                    self.train_transform,
                    resize_images=self.resize_images,
                )
            for split in [split for split in splits if split != "train"]:
                sets[split] = ImageMaskSegmentation(
                    splits[split],
                    split,
                    self.decoder,
                    self.eval_transform,
                    split_sizes(split),
                    self.resize_images,
                )
        else:
            for split, pairs in splits.items():
                source = sources[split] if sources is not None and mode == "disk" else None
                store = self._store(split, pairs, mode, lambda s=split: split_sizes(s), source)
                evaluate = split != "train"
                sets[split] = CachedSegmentation(
                    store,
                    pairs,
                    split,
                    self.decoder,
                    self.eval_transform if evaluate else None,
                )
            self.collate_fn = pass_through
            self.train_batch_transform = SegmentationBatchAugment(
                self.crop_size,
                self.ignore_index,
                self.mean,
                self.std,
                scale_range=self.scale_range,
                hflip=self.hflip,
                color_jitter=self.color_jitter,
            )
        if "train" in sets and self.check_labels:
            self._check_train_labels(sets["train"])
        self.train_set, self.val_set = sets.get("train"), sets["val"]
        self.test_set = sets.get("test", self.val_set)
        log.info(
            "%s: %s train, %d val, %d test pairs",
            self.root,
            len(self.train_set) if self.train_set is not None else "no",
            len(self.val_set),
            len(self.test_set),
        )

    def split_files(self) -> dict[str, list[str]]:
        """The image file of every sample of each split set up, relative to `root` where
        it is under it (`seglab.run_log.write_splits` writes them into the run directory;
        such a list also serves as a folder dataset's `train.txt`). A test split that is
        the val split is left out."""

        def name(image: Path) -> str:
            return (
                image.relative_to(self.root).as_posix()
                if image.is_relative_to(self.root)
                else str(image)
            )

        sets = {"train": self.train_set, "val": self.val_set}
        if self.test_set is not self.val_set:
            sets["test"] = self.test_set
        return {
            split: [name(image) for image, _ in dataset.pairs]
            for split, dataset in sets.items()
            if dataset is not None
        }

    def _check_train_labels(self, train: ImageMaskSegmentation) -> None:
        """Raise `seglab.data.labels.label_problem` for the train split's labels: all of
        them from a cache, else those of up to `SAMPLED_MASKS` evenly spaced masks."""
        if isinstance(train, CachedSegmentation):
            counts = np.bincount(np.asarray(train.store["masks"]), minlength=256)
            where = f"the {len(train)} train masks of data.root={self.root}"
        else:
            count = min(len(train.pairs), SAMPLED_MASKS)
            picked = np.linspace(0, len(train.pairs) - 1, count).round().astype(int)
            masks = (
                self.decoder(_read(mask, "mask", "train"), mask, "train")
                for mask in (train.pairs[i][1] for i in picked)
            )
            counts = histogram(masks)
            where = f"{count} of the {len(train.pairs)} train masks of data.root={self.root}"
        problem = label_problem(counts, self.class_names, self.ignore_index, where, self.label_map)
        if problem is not None:
            raise SeglabError(problem)

    def check_splits(self) -> tuple[dict[str, Dataset], list[str]]:
        """Every split's pairs as stored (`as_stored`: no augmentation, no padding) and
        every problem found listing them; a test split that is val is left out."""
        problems = Problems(strict=False)
        splits = self.find_pairs(problems)
        datasets: dict[str, Dataset] = {
            split: ImageMaskSegmentation(
                splits[split], split, self.decoder, as_stored, resize_images=self.resize_images
            )
            for split in SPLITS
            if splits.get(split)
        }
        return datasets, problems.messages
