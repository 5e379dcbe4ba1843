"""Pascal VOC 2012 semantic segmentation: 20 object classes and background.

    python -m seglab.train data=voc data.root=/data            # /data/VOCdevkit/VOC2012
    python -m seglab.train data=voc data.download=true         # fetch VOC 2012 first
    python -m seglab.train data=voc data.train_split=train_aug data.mask_dir=SegmentationClassAug

Layout, as `torchvision.datasets.VOCSegmentation` downloads it (`root` holds VOCdevkit):

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2012/SegmentationClass/<id>.png              mask
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt       one id per line

A mask is a palette PNG whose pixel *index* is the class (0 background .. 20 tvmonitor)
and 255 the void outline around objects. Its colours are VOC's colour map, which is
`default_palette(21)`, so predictions are coloured like the dataset. The SBD-augmented
training list (`train_aug.txt`, 10582 ids) can be named by `train_split`; its masks
usually sit in `SegmentationClassAug/` (`mask_dir`). VOC has no public test masks:
testing reuses the val split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchvision.datasets import VOCSegmentation

from seglab.data.base import Problems, check_class_names, examples
from seglab.data.cache import CacheMode
from seglab.data.image_mask import ImageMaskDataModule
from seglab.data.pairs import Pair
from seglab.errors import SeglabError

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_VOID = 255  # the mask value of object outlines and difficult regions
LAYOUT = (
    "expected ROOT/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
    "ImageSets/Segmentation/<split>.txt}"
)


class VOCDataModule(ImageMaskDataModule):
    """Pascal VOC 2012 segmentation (see the module docstring).

    Args:
        root: the folder that contains `VOCdevkit/`.
        class_names, num_classes: VOC's 21 classes; checked against `VOC_CLASSES`.
        ignore_index: label of void pixels (VOC stores them as 255).
        train_split, val_split: names of list files in `ImageSets/Segmentation/`.
        mask_dir: the folder of masks in `VOC2012/`.
        download: fetch VOC 2012 (2 GB) into `root` in `prepare_data()` if it is not
            there yet.
        crop_size: side of the square training crops, and the model's `input_size`.
        scale_range: [min, max] random scale factor, relative to fitting the crop.
        hflip: probability of a horizontal flip in training.
        color_jitter: None or `v2.ColorJitter` arguments, for training images only.
        cache: "auto", "memory", "disk" or "none": decode every pair once (see
            `seglab.data.cache`); auto holds the splits in memory when they fit.
        cache_dir: where `cache="disk"` writes; None: `$XDG_CACHE_HOME/seglab`.
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings.
        split_seed: seeds the folds of cross-validation (the splits are the dataset's).
        folds, fold, group_pattern: cross-validation on the pooled train and val pairs,
            folds of whole `group_pattern` groups (see `ImageMaskDataModule`).
        check_labels: stop at setup when a class has no train pixels or most pixels are
            ignore_index (masks saved as 0/255; see `seglab.data.labels`).
    """

    no_test_reason = "Pascal VOC has no public test masks"

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str] = VOC_CLASSES,
        num_classes: int = len(VOC_CLASSES),
        ignore_index: int = VOC_VOID,
        train_split: str = "train",
        val_split: str = "val",
        mask_dir: str = "SegmentationClass",
        download: bool = False,
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
        split_seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
        group_pattern: str | None = None,
        check_labels: bool = True,
    ) -> None:
        check_class_names(class_names, VOC_CLASSES, "Pascal VOC")
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
            # Index masks; only a different ignore_index needs VOC's void renumbered.
            label_map={VOC_VOID: ignore_index} if ignore_index != VOC_VOID else None,
            value_fix=(
                f"VOC masks hold classes 0-{len(VOC_CLASSES) - 1} and {VOC_VOID} (void) as "
                "palette indices; replace the mask with VOC's own"
            ),
        )
        if train_split == val_split:
            raise SeglabError(
                f"data.train_split and data.val_split are both {train_split!r}; validate on "
                "images the model does not train on (e.g. train_split=train, val_split=val)"
            )
        self.train_split = train_split
        self.val_split = val_split
        self.mask_dir = mask_dir
        self.download = download

    @property
    def voc_dir(self) -> Path:
        return self.root / "VOCdevkit" / "VOC2012"

    def prepare_data(self) -> None:
        """With `download`, fetch and unpack VOC 2012 into `root` unless it is there;
        then build the disk cache where asked. Lightning runs this once per node before
        `setup()`."""
        if self.download and not self.voc_dir.is_dir():
            log.info("Downloading Pascal VOC 2012 (2 GB) into %s", self.root)
            self.root.mkdir(parents=True, exist_ok=True)
            # One archive holds every list; image_set only picks what this object reads.
            VOCSegmentation(str(self.root), year="2012", image_set="train", download=True)
        super().prepare_data()

    def find_pairs(self, problems: Problems) -> dict[str, list[Pair]]:
        voc = self.voc_dir
        if not voc.is_dir():
            problems.add(
                f"data.root={self.root} has no VOCdevkit/VOC2012 folder; {LAYOUT}; point "
                "data.root at the folder that contains VOCdevkit, or set data.download=true "
                "to download VOC 2012 (2 GB) there"
            )
            return {}
        lists = voc / "ImageSets" / "Segmentation"
        splits: dict[str, list[Pair]] = {}
        for split, name in (("train", self.train_split), ("val", self.val_split)):
            list_file = lists / f"{name}.txt"
            if not list_file.is_file():
                found = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
                problems.add(
                    f"{list_file} does not exist (data.{split}_split={name}); lists found: "
                    f"{found or 'none'}; name one of them or add the list ({LAYOUT})"
                )
                continue
            splits[split] = self._read_list(list_file, problems)
            if not splits[split]:
                problems.add(f"{list_file} lists no image with a mask; {LAYOUT}")
        overlap = {image for image, _ in splits.get("train", [])} & {
            image for image, _ in splits.get("val", [])
        }
        if overlap:
            problems.add(
                f"{len(overlap)} ids are in both data.train_split={self.train_split} and "
                f"data.val_split={self.val_split} ({examples(sorted(p.stem for p in overlap))});"
                " validate on images the model does not train on"
            )
        return splits

    def _read_list(self, list_file: Path, problems: Problems) -> list[Pair]:
        """The (image, mask) pairs of the ids in `list_file`, in its order."""
        voc = self.voc_dir
        # A line is an id, or (DeepLab's lists) "/JPEGImages/<id>.jpg /<masks>/<id>.png".
        lines = [line.split() for line in list_file.read_text().splitlines()]
        ids = list(dict.fromkeys(Path(words[0]).stem for words in lines if words))
        images = {i: voc / "JPEGImages" / f"{i}.jpg" for i in ids}
        masks = {i: voc / self.mask_dir / f"{i}.png" for i in ids}
        for kind, files in (("image", images), ("mask", masks)):
            missing = [i for i in ids if not files[i].is_file()]
            problems.add_each(
                [
                    f"{list_file} lists {i} but its {kind} {files[i]} does not exist"
                    for i in missing
                ],
                f"{list_file} lists {len(missing)} ids whose {kind} is missing, e.g. "
                f"{files[missing[0]] if missing else ''} ({examples(missing)}); restore "
                f"the files (data.download=true fetches VOC 2012) or fix the list",
            )
        return [(images[i], masks[i]) for i in ids if images[i].is_file() and masks[i].is_file()]
