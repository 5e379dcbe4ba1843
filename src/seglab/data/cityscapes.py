"""Cityscapes semantic segmentation: the 19 evaluated classes of the fine annotations.

    python -m seglab.train data=cityscapes data.root=/data/cityscapes

Layout: `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip` (from
https://www.cityscapes-dataset.com, login required) unzipped into `root`:

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The masks hold Cityscapes label IDs (0-33). As in cityscapesScripts' `labels.py`, the 19
evaluated classes become train IDs 0-18 (road 7 -> 0, ..., bicycle 33 -> 18) and every
other ID `ignore_index`. Only `*_gtFine_labelIds.png` are read (not the colour, instance
or polygon files). The public test masks carry no labels, so testing reuses val
(`test_split: val`). Images are 2048x1024: training takes random `crop_size` crops,
evaluation the full frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from seglab.data.base import Problems, check_class_names, examples
from seglab.data.cache import CacheMode
from seglab.data.image_mask import ImageMaskDataModule
from seglab.data.pairs import Pair
from seglab.errors import SeglabError

CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# The label ID of each train ID above (cityscapesScripts' labels.py).
LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
MAX_LABEL_ID = 33
# The official colours of the 19 classes; predictions are drawn in them.
CITYSCAPES_PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"
LAYOUT = (
    "expected ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and "
    "ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png"
)
GET = (
    "unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com into data.root"
)


def label_map(ignore_index: int) -> dict[int, int]:
    """Label ID -> train ID for every ID 0-33; IDs of no evaluated class -> ignore_index."""
    mapping = dict.fromkeys(range(MAX_LABEL_ID + 1), ignore_index)
    mapping.update({label_id: train_id for train_id, label_id in enumerate(LABEL_IDS)})
    return mapping


def _index(folder: Path, suffix: str) -> dict[str, Path]:
    """`{"<city>/<name>": path}` of the `<city>/<name><suffix>` files under `folder`."""
    return {
        f"{path.parent.name}/{path.name[: -len(suffix)]}": path
        for path in sorted(folder.glob(f"*/*{suffix}"))
    }


class CityscapesDataModule(ImageMaskDataModule):
    """Cityscapes fine annotations, 19 classes (see the module docstring).

    Args:
        root: the folder holding `leftImg8bit/` and `gtFine/`.
        class_names, num_classes: the 19 classes in train-ID order; checked against
            `CITYSCAPES_CLASSES`.
        ignore_index: label of every pixel of no evaluated class.
        test_split: "val" tests on the val split; another name tests on
            `leftImg8bit/<test_split>/` with its `gtFine/<test_split>/` masks (for
            labels of your own; the public test masks are empty).
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

    no_test_reason = "test_split=val (the public Cityscapes test masks carry no labels)"

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str] = CITYSCAPES_CLASSES,
        num_classes: int = len(CITYSCAPES_CLASSES),
        ignore_index: int = 255,
        test_split: str = "val",
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
        check_class_names(class_names, CITYSCAPES_CLASSES, "Cityscapes")
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
            label_map=label_map(ignore_index),
            value_fix=(
                f"Cityscapes masks hold label IDs 0-{MAX_LABEL_ID}; read *{MASK_SUFFIX} files "
                "(not labelTrainIds, color or instanceIds), or replace the mask"
            ),
        )
        if test_split == "train":
            raise SeglabError(
                "data.test_split=train would test on the training images; use val (or a "
                "labelled split of your own)"
            )
        self.test_split = test_split

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """The official class colours; they only colour predictions (masks are IDs)."""
        return list(CITYSCAPES_PALETTE)

    def find_pairs(self, problems: Problems) -> dict[str, list[Pair]]:
        images, masks = self.root / "leftImg8bit", self.root / "gtFine"
        if not (images.is_dir() and masks.is_dir()):
            problems.add(
                f"data.root={self.root} has no leftImg8bit/ and gtFine/ folders; {LAYOUT}; {GET}"
            )
            return {}
        folders = {"train": "train", "val": "val"}
        if self.test_split != "val":
            folders["test"] = self.test_split
        splits: dict[str, list[Pair]] = {}
        for split, folder in folders.items():
            for found in (images / folder, masks / folder):
                if not found.is_dir():
                    problems.add(f"{found} does not exist ({split} split); {LAYOUT}; {GET}")
            if (images / folder).is_dir() and (masks / folder).is_dir():
                splits[split] = _pair_split(images / folder, masks / folder, problems)
                if not splits[split]:
                    problems.add(f"found no image/mask pairs in {images / folder}; {LAYOUT}")
        return splits


def _pair_split(images: Path, masks: Path, problems: Problems) -> list[Pair]:
    """(image, mask) pairs of one split's city folders, sorted by city and name; a
    problem per image without mask and per mask without image."""
    image_files, mask_files = _index(images, IMAGE_SUFFIX), _index(masks, MASK_SUFFIX)
    lonely = sorted(image_files.keys() - mask_files.keys())
    wanted = {key: masks / f"{key}{MASK_SUFFIX}" for key in lonely}
    problems.add_each(
        [f"image {image_files[key]} has no mask {wanted[key]}" for key in lonely],
        f"{len(lonely)} images in {images} have no gtFine labelIds mask, e.g. "
        f"{wanted[lonely[0]] if lonely else ''} is missing ({examples(lonely)}); {GET}, or "
        "remove those images",
    )
    lonely = sorted(mask_files.keys() - image_files.keys())
    wanted = {key: images / f"{key}{IMAGE_SUFFIX}" for key in lonely}
    problems.add_each(
        [f"mask {mask_files[key]} has no image {wanted[key]}" for key in lonely],
        f"{len(lonely)} masks in {masks} have no image, e.g. "
        f"{wanted[lonely[0]] if lonely else ''} is missing ({examples(lonely)}); {GET}, or "
        "remove those masks",
    )
    return [(image_files[k], mask_files[k]) for k in sorted(image_files.keys() & mask_files.keys())]
