"""Image classification on class-named folders (torchvision's ImageFolder layout).

    python -m seglab.train experiment=folder_cnn data.root=/data/photos

Layout: one sub-folder per class, named after the class.

    root/train/<class>/*.{png,jpg,jpeg,bmp,tif,tiff}   required (any case; nested folders too)
    root/val/<class>/...    optional; else each class of train/ gives a seeded `val_ratio`
    root/test/<class>/...   optional; else the val split is tested

The classes are the sorted sub-folder names of train/ (label i is the i-th name); val/
and test/ must hold the same folders. Files with another extension are skipped (the data
checker lists them); hidden files and folders (".DS_Store", ".ipynb_checkpoints") are
ignored.

Images are decoded with PIL, converted to RGB and resized to `image_size` (aspect ratio
not kept); training adds a random crop of the zero-padded image and a horizontal flip
(`augment`). Decoded means resized: with `cache` (see `seglab.data.cache`) every image is decoded
and resized once, into one uint8 array per split, and training batches are cropped and
flipped on the training device (`ClassificationAugment`); without, every read decodes.

Without a cache, `setup()` reads every image's header first (`seglab.data.headers`): files
that are no whole image stop the run there, all named in one error. With a cache, decoding
every image once is that check (no file is opened twice): the build goes through every
image and stops with one error naming all that fail. An image that still cannot be
decoded later raises SeglabError naming it and its split. With `skip_corrupt` these are
warnings instead and the image is left out (without a cache: dropped from its batch, the
count logged as `<stage>/skipped_files`).

With `folds`, train and val images are pooled and dealt into folds stratified by class,
each image named by its path relative to `root`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from torchvision.datasets.folder import find_classes, has_file_allowed_extension, make_dataset
from torchvision.transforms import v2

from seglab.data.base import Problems, examples
from seglab.data.cache import CacheMode
from seglab.data.decoded import DecodedDataModule
from seglab.data.headers import raise_all, read_headers
from seglab.data.io import IMAGE_SUFFIXES, UnreadableImage, read_rgb
from seglab.data.splits import stratified_split
from seglab.data.transforms import ClassificationAugment
from seglab.errors import SeglabError, one_line

log = logging.getLogger(__name__)

LAYOUT = (
    "expected ROOT/train/<class>/<image>.{png,jpg,jpeg,bmp,tif,tiff}, one folder per "
    "class (optionally ROOT/val/<class>/ and ROOT/test/<class>/ too)"
)

Sample = tuple[str, int]  # (image path, label)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the class folders in `split_dir`, hidden folders left out; only
    directory names are read, so this is cheap on any dataset."""
    try:
        names, _ = find_classes(split_dir)
    except FileNotFoundError:  # torchvision's way of saying "no sub-folders"
        return []
    return [name for name in names if not _hidden(name)]


def _classes(
    root: Path, class_names: Sequence[str] | None, num_classes: int | None, check: bool = True
) -> tuple[list[str], int]:
    """(class names, count) from the folders of root/train/, checked against the config.

    Given names are taken as they are without reading any folder (`check=False`): a
    trained model's stored config must rebuild for predict/export wherever it runs, even
    where root/train/ has changed since; `setup()` checks them against the folders.
    """
    train_dir = root / "train"
    if class_names is not None and not check:
        names = list(class_names)
        return names, len(names) if num_classes is None else int(num_classes)
    if not train_dir.is_dir():
        if class_names is None:
            if not root.is_dir():
                raise SeglabError(f"data.root={root} does not exist or is not a folder; {LAYOUT}")
            raise SeglabError(f"data.root={root} has no train/ folder; {LAYOUT}")
        # A trained model's stored config rebuilt where the data is not (predict, export):
        # the names are all it needs until setup() reads the files.
        names = list(class_names)
        return names, len(names) if num_classes is None else int(num_classes)
    folders = class_folders(train_dir)
    if not folders:
        raise SeglabError(f"{train_dir} has no class folders; {LAYOUT}")
    if class_names is not None and list(class_names) != folders:
        raise SeglabError(_names_differ(list(class_names), folders, train_dir))
    if num_classes is not None and int(num_classes) != len(folders):
        raise SeglabError(
            f"data.num_classes={num_classes} but {train_dir} has {len(folders)} class folders "
            f"{folders}; set data.num_classes=null to count them"
        )
    return folders, len(folders)


def _names_differ(names: list[str], folders: list[str], train_dir: Path) -> str:
    if sorted(names) == folders:
        fix = "labels follow the sorted folder names: list them in that order"
    else:
        fix = "rename the folders or fix the list"
    return (
        f"data.class_names={names} but the class folders of {train_dir} are {folders}; "
        f"{fix}, or set data.class_names=null to take the folder names"
    )


def _list_split(
    split_dir: Path,
    class_names: Sequence[str],
    problems: Problems,
    reference: str,
    fix: str,
) -> list[Sample]:
    """(path, label) of every image in the class folders of `split_dir`, by class then
    path, after checking its folders are the classes (`reference` says whose; `fix` how
    to mend a difference)."""
    folders = class_folders(split_dir)
    missing = [str(split_dir / name) for name in class_names if name not in folders]
    extra = [str(split_dir / name) for name in folders if name not in class_names]
    if missing or extra:
        problems.add(
            f"the class folders of {split_dir} differ from {reference}: missing {missing}, "
            f"extra {extra}; {fix}",
        )

    not_images: list[str] = []

    def is_image(path: str) -> bool:
        if any(_hidden(part) for part in Path(path).relative_to(split_dir).parts):
            return False
        if has_file_allowed_extension(path, IMAGE_SUFFIXES):
            return True
        not_images.append(path)
        return False

    class_to_idx = {name: label for label, name in enumerate(class_names)}
    # allow_empty: an empty class folder is our error (or the checker's finding), not
    # torchvision's FileNotFoundError.
    samples = make_dataset(split_dir, class_to_idx, is_valid_file=is_image, allow_empty=True)
    # Files outside any class folder have no label: not used either.
    loose = sorted(str(p) for p in split_dir.iterdir() if p.is_file() and not _hidden(p.name))
    for path in not_images + loose:
        where = "is not in a class folder" if path in loose else "is not an image file"
        message = f"{path} {where}; it is not used (images: {', '.join(IMAGE_SUFFIXES)}, any case)"
        problems.notice(message, log)

    counts = np.bincount([label for _, label in samples], minlength=len(class_names))
    for name, count in zip(class_names, counts, strict=True):
        if count == 0 and name in folders:
            problems.add(
                f"class folder {split_dir / name} has no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add images of that class or remove the folder from every split",
            )
    return samples


def find_splits(
    root: str | Path,
    class_names: Sequence[str],
    val_ratio: float = 0.1,
    split_seed: int = 0,
    problems: Problems | None = None,
) -> dict[str, list[Sample]]:
    """The (path, label) samples of train, val and test under `root` (see the module
    docstring); test is the val list itself when there is no test/ folder.

    Args:
        problems: where problems go: None or a strict `Problems` raises the first as
            SeglabError (training); a non-strict one collects them all (the data
            checker). A missing root or train/ always raises: nothing can be listed then.
    """
    problems = problems or Problems(strict=True)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SeglabError(f"data.root={root} does not exist or is not a folder; {LAYOUT}")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise SeglabError(f"data.root={root} has no train/ folder; {LAYOUT}")
    # The classes come from train/ at construction, or from a checkpoint's config; the
    # folders may have changed since.
    splits = {
        "train": _list_split(
            train_dir,
            class_names,
            problems,
            f"data.class_names={list(class_names)}",
            "set data.class_names=null (and num_classes=null) to take the folder names",
        )
    }

    def other_split(split: str) -> list[Sample]:
        return _list_split(
            root / split,
            class_names,
            problems,
            f"those of {train_dir} ({list(class_names)})",
            "every split needs one folder per class, named as in train/",
        )

    if (root / "val").is_dir():
        splits["val"] = other_split("val")
    else:
        samples = splits["train"]
        kept, held = stratified_split(
            [label for _, label in samples], class_names, split_seed, ratio=val_ratio
        )
        splits["train"], splits["val"] = [samples[i] for i in kept], [samples[i] for i in held]
        log.info("%s has no val/ folder; validating on %g of each class", root, val_ratio)
    if not splits["val"]:
        problems.add(
            f"{root} gives no val images: add ROOT/val/<class>/ folders, or at least two "
            "images per class in train/ to split by data.val_ratio",
        )
    splits["test"] = other_split("test") if (root / "test").is_dir() else splits["val"]
    return splits


def skip_unreadable_collate(
    batch: list[tuple[torch.Tensor, int] | None],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Collate that drops the unreadable items (None) of a batch and counts them.

    A batch with no readable item at all raises SeglabError: an empty batch has no
    loss, and with the files in random order it means most of the data is unreadable,
    which no training should pass over.

    Shape:
        items (image [3, H, W], label) or None -> images [N, 3, H, W], labels LongTensor
        [N], number of Nones dropped.
    """
    readable = [item for item in batch if item is not None]
    if not readable:
        raise SeglabError(
            f"all {len(batch)} images of a batch are unreadable (named in the warnings above); "
            "data.skip_corrupt drops unreadable images from a batch but needs one readable "
            "image per batch: run the data checker and replace or remove the bad files"
        )
    images, labels = default_collate(readable)
    return images, labels, len(batch) - len(readable)


def _stats(values: Sequence[float] | None, name: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    stats = tuple(float(v) for v in values)
    if len(stats) != 3 or (name == "std" and min(stats) <= 0):
        raise SeglabError(
            f"data.{name} must be 3 per-channel values (R, G, B) on the 0-255 scale"
            f"{', all > 0' if name == 'std' else ''}; got {list(values)}"
        )
    return stats  # type: ignore[return-value]


class ImageFolderDataModule(DecodedDataModule):
    """Classification of images sorted into class-named folders (see the module docstring).

    The constructor lists only the class folder names of train/ (cheap), so the model
    head can be sized from them; setup() lists and splits the image files.

    Args:
        root: folder holding train/ (and optionally val/, test/).
        class_names: None for the sorted folder names of train/; a list must equal them.
            Where root/train/ does not exist (a trained model's config on another
            machine), the given names are used and only setup() fails.
        num_classes: None for the number of class folders; a number must equal it.
        ignore_index: kept for the common interface; -100 (CrossEntropyLoss's default)
            since every image has a label.
        image_size: height and width (or one int) every image is resized to.
        val_ratio: fraction of each class of train/ held out for validation when there
            is no val/ folder.
        split_seed: seeds that split (independently of the training seed).
        augment: random crop (after zero-padding by `crop_padding`) and horizontal flip
            (probability `hflip`) of training images.
        crop_padding, hflip: see `augment`.
        mean, std: per-channel statistics (0-255 scale) to normalise with; None for
            ImageNet's. The data checker prints the dataset's own.
        skip_corrupt: leave unreadable images out with a warning (without a cache: drop
            them from their batch, the count logged as `<stage>/skipped_files`) instead of
            stopping with an error.
        cache: "auto", "memory", "disk" or "none": decode every image once (see
            `seglab.data.cache`); auto holds the splits in memory when they fit.
        cache_dir: where `cache="disk"` writes; None: `$XDG_CACHE_HOME/seglab`.
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings.
        folds, fold: cross-validation on the pooled train and val images, folds
            stratified by class and seeded by `split_seed` (see `SeglabDataModule`); the
            test split stays, and without test/ testing uses the fold's val split.
    """

    task = "classification"
    no_test_reason = "no test/ folder"

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        ignore_index: int = -100,
        image_size: int | Sequence[int] = 32,
        val_ratio: float = 0.1,
        split_seed: int = 0,
        augment: bool = True,
        crop_padding: int = 4,
        hflip: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        skip_corrupt: bool = False,
        cache: CacheMode = "auto",
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        folder = Path(root).expanduser()
        class_names, num_classes = _classes(folder, class_names, num_classes, check=False)
        super().__init__(
            root=root,
            cache=cache,
            cache_dir=cache_dir,
            split_seed=split_seed,
            class_names=class_names,
            num_classes=num_classes,
            ignore_index=ignore_index,
            input_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            folds=folds,
            fold=fold,
        )
        if not 0 < val_ratio < 1:
            raise SeglabError(f"data.val_ratio must be in (0, 1); got {val_ratio}")
        self.val_ratio = float(val_ratio)
        # Instance attributes: `to_input` (prediction) normalises with these too.
        self.mean = _stats(mean, "mean") or self.mean
        self.std = _stats(std, "std") or self.std
        self.augmentation = ClassificationAugment(
            self.input_size,
            self.mean,
            self.std,
            crop_padding=crop_padding,
            hflip=hflip,
            augment=augment,
        )
        self.resize = v2.Resize(self.input_size, antialias=True)
        self.skip_corrupt = skip_corrupt
        if skip_corrupt:
            self.collate_fn = skip_unreadable_collate

    def find_samples(self, problems: Problems) -> dict[str, list[Sample]]:
        if problems.strict:  # names given in the config, checked against the folders
            _classes(self.root, self.class_names, self.num_classes)
        return find_splits(self.root, self.class_names, self.val_ratio, self.split_seed, problems)

    def sample_name(self, sample: Sample) -> str:
        return str(sample[0])

    def fold_samples(
        self, train: list[Sample], val: list[Sample]
    ) -> tuple[list[Sample], list[Sample]]:
        """Folds stratified by class, each image named by its path relative to `root`."""
        pool = [*train, *val]
        names = [Path(path).relative_to(self.root).as_posix() for path, _ in pool]
        kept, held = self.fold_indices(names, self.split_seed, labels=[label for _, label in pool])
        return [pool[i] for i in kept], [pool[i] for i in held]

    def fingerprint(self, split: str, samples: list[Sample]) -> tuple[dict, list[str]]:
        settings = {
            "root": str(self.root.resolve()),
            "class_names": self.class_names,
            "image_size": list(self.input_size),
            "skip_corrupt": self.skip_corrupt,
        }
        return settings, [path for path, _ in samples]

    def decode(self, split: str, sample: Sample, skip: bool | None = None) -> tuple | None:
        """Shape: uint8 image Tensor[3, *image_size] (resized), int label; None for an
        unreadable file with `skip_corrupt` (a warning names it)."""
        path, label = sample
        try:
            image = read_rgb(path)
        except UnreadableImage as err:
            if self.skip_corrupt if skip is None else skip:
                log.warning(
                    "skipped unreadable image %s (%s split): %s", path, split, one_line(err)
                )
                return None
            raise SeglabError(
                f"cannot read image {path} ({split} split): {one_line(err)}; replace or "
                "remove the file, or set data.skip_corrupt=true to skip unreadable images"
            ) from err
        return self.resize(image), label

    decoding_checks = True  # `decode` reads the whole file: a cache build is the scan

    def scan(self, splits: dict[str, list[Sample]]) -> None:
        """Read the header of every image of `splits` (`seglab.data.headers`): files that
        are no whole image raise one error naming them all, or with `skip_corrupt` one
        warning (the loader or cache then leaves them out as they fail to decode)."""
        samples = [(split, path) for split, items in splits.items() for path, _ in items]
        headers = read_headers([path for _, path in samples])
        bad = [(split, path, h.error) for (split, path), h in zip(samples, headers, strict=True)]
        bad = [(split, path, error) for split, path, error in bad if error is not None]
        if self.skip_corrupt:
            if bad:
                log.warning(
                    "%d images are unreadable and will be skipped (data.skip_corrupt): %s",
                    len(bad),
                    examples([path for _, path, _ in bad], limit=len(bad)),
                )
            return
        raise_all(
            [
                f"cannot read image {path} ({split} split): {error}; replace or remove the file"
                for split, path, error in bad
            ],
            [path for _, path, _ in bad],
            f"data.root={self.root}",
            "replace or remove them, or set data.skip_corrupt=true to skip unreadable images",
        )

    def check_splits(self) -> tuple[dict[str, Dataset], list[str]]:
        """Every split as uint8 images [3, image_size, image_size] (resized, not
        augmented, not normalised) that raise on an unreadable file even with
        `skip_corrupt`, and every problem found while listing the folders."""
        datasets, problems = super().check_splits()
        for dataset in datasets.values():
            dataset.decode = partial(self.decode, skip=False)
        return datasets, problems
