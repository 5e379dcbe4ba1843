"""CIFAR-10 image classification, read from the python version of the dataset.

    python -m seglab.train experiment=cifar10_cnn data.download=true

Layout (what `torchvision.datasets.CIFAR10` downloads and unpacks):

    root/cifar-10-batches-py/data_batch_1 ... data_batch_5   10,000 training images each
    root/cifar-10-batches-py/test_batch                      10,000 test images
    root/cifar-10-batches-py/batches.meta                    the class names (optional)

Each batch is a python pickle of a dict: `b"data"` a uint8 array (N, 3072) whose rows
hold the red, green and blue 32x32 planes one after another (row-major), `b"labels"` a
list of N class indices.

The files are read here, not by `torchvision.datasets.CIFAR10`: torchvision checks the
md5 sums of the official files whenever it is constructed, so it refuses a re-packed copy,
a subset, or the small fake batches the tests write. torchvision is used only to download
(`download: true`, in `prepare_data()`). The pickles are loaded with an unpickler that
builds numpy arrays and nothing else, so a tampered file cannot run code.

`val_size` training images are held out for validation, the same number of each class
(up to rounding), drawn by `seglab.data.splits.stratified_split` with `split_seed`;
`val_size: 0` validates on the test batch, as the Keras CIFAR-10 tutorial does. With
`folds`, all training images are dealt into folds stratified by class (`val_size` is not
used; an image is named by its index in data_batch_1 to data_batch_5 read in order) and
the test batch stays.

The splits are held as uint8 arrays (resized once when `image_size` is not 32) and read
as `seglab.data.cache` says: with `cache` memory or disk (memory-mapped, written once,
then no unpickling) training batches are gathered whole and augmented on the training
device; with none every training image is augmented on its own in the loader.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from functools import cache, cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

from seglab.data.base import SPLITS, Problems
from seglab.data.cache import CacheMode, Store, pass_through
from seglab.data.decoded import DecodedDataModule, DecodedSplit
from seglab.data.splits import stratified_split
from seglab.data.transforms import ClassificationAugment
from seglab.errors import SeglabError

log = logging.getLogger(__name__)

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META = "batches.meta"
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SIZE = 32  # CIFAR images are 32x32
# Training-set statistics of CIFAR-10 on the 0-255 scale.
MEAN = (125.31, 122.95, 113.87)
STD = (62.99, 62.09, 66.70)
HOW_TO_GET = (
    f"set data.download=true, or put the python version of CIFAR-10 ({FOLDER}/ from "
    "https://www.cs.toronto.edu/~kriz/cifar.html) under data.root"
)

# What the official pickles (written by python 2 and numpy) and ones written by python 3
# may refer to; anything else is refused.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """The dict in a CIFAR pickle, with str keys (python 2 files have bytes keys)."""
    if not path.is_file():
        raise SeglabError(f"{path} is missing; {HOW_TO_GET}")
    try:
        with path.open("rb") as f:
            # encoding="bytes": python 2 strings stay bytes, numpy's array data intact.
            content = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # any failure means the file is not what we expect
        raise SeglabError(
            f"{path} is not a CIFAR-10 pickle ({type(err).__name__}: {err}); replace it "
            "(data.download=true fetches the official files)"
        ) from err
    if not isinstance(content, dict):
        raise SeglabError(
            f"{path} holds a {type(content).__name__}, not a CIFAR-10 batch dict; replace it"
        )
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}


def read_batch(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one batch file.

    Shape:
        images: uint8 [N, 3, 32, 32] (RGB); labels: int64 [N], in [0, num_classes).
    """
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise SeglabError(
            f"{path} has no 'data' array and 'labels' list (keys: {sorted(map(str, batch))}); "
            "it is not a CIFAR-10 batch, replace it"
        )
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE:
        raise SeglabError(
            f"{path} has 'data' of shape {data.shape} and dtype {data.dtype}; a CIFAR-10 "
            f"batch holds uint8 (N, {3 * SIZE * SIZE}), replace it"
        )
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise SeglabError(
            f"{path} has {len(data)} images but 'labels' of shape {labels.shape} and dtype "
            f"{labels.dtype}; it needs one integer label per image, replace it"
        )
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise SeglabError(
            f"{path} has label {int(bad[0])} outside [0, {num_classes}) (num_classes="
            f"{num_classes}); fix data.class_names/num_classes or replace the file"
        )
    # Row = [R plane | G plane | B plane], each 32 rows of 32: a plain reshape.
    images = torch.from_numpy(data.reshape(-1, 3, SIZE, SIZE).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def read_label_names(path: Path) -> list[str]:
    """The class names in `batches.meta`, in label order."""
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list):
        raise SeglabError(f"{path} has no 'label_names' list; replace it or remove it")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


Raw = dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (images, labels)


def _store(images: torch.Tensor, labels: torch.Tensor) -> Store:
    """Stored images uint8 [N, 3, 32, 32] and labels int64 [N] as a store, not copied."""
    return Store({"images": images.numpy(), "labels": labels.numpy()})


class _Unpickled:
    """One split's images and labels, unpickled on first use (shared by the splits of one
    listing): a disk cache built for the batch files never needs them. Item i is (uint8
    image [3, 32, 32], int label)."""

    def __init__(self, read: Callable[[], Raw], split: str) -> None:
        self.read, self.split = read, split

    @cached_property
    def arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.read()[self.split]

    def __bool__(self) -> bool:
        return True  # its batch files were found; counting would unpickle them

    def __len__(self) -> int:
        return len(self.arrays[1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.arrays
        return images[index], int(labels[index])


def _resized(resize: v2.Resize, then: Callable, image: torch.Tensor, label: int) -> Any:
    return then(resize(image), label)


class CIFAR10DataModule(DecodedDataModule):
    """CIFAR-10 classification (see the module docstring).

    The files are read in `setup()`, not here, so a trained model's config still builds
    this datamodule (for `to_input`) where the data is gone.

    Args:
        root: the folder holding `cifar-10-batches-py/`.
        download: fetch the official files into `root` with torchvision if missing.
        class_names, num_classes: the 10 CIFAR-10 classes in label order; checked against
            `batches.meta` when that file is there.
        ignore_index: kept for the common interface; -100 (CrossEntropyLoss's default)
            since every image has a label.
        image_size: the size the model sees; 32 keeps the images as they are, anything
            else resizes them.
        val_size: training images held out for validation; 0 validates on the test batch.
        split_seed: seeds the choice of those images (independently of the training seed).
        augment: random crop (zero padding of 4 pixels) and horizontal flip in training.
        cache: "auto", "memory", "disk" or "none" (see the module docstring and
            `seglab.data.cache`); auto is memory when the splits fit.
        cache_dir: where `cache="disk"` writes; None: `$XDG_CACHE_HOME/seglab`.
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings.
        folds, fold: cross-validation on all training images, folds stratified by class
            and seeded by `split_seed` (see `SeglabDataModule`); `val_size` is not used.
    """

    task = "classification"
    mean, std = MEAN, STD

    def __init__(
        self,
        root: str | Path = "data/cifar10",
        download: bool = False,
        class_names: Sequence[str] = CLASS_NAMES,
        num_classes: int = 10,
        ignore_index: int = -100,
        image_size: int | Sequence[int] = SIZE,
        val_size: int = 5000,
        split_seed: int = 0,
        augment: bool = True,
        cache: CacheMode = "auto",
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
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
        if val_size < 0:
            raise SeglabError(f"data.val_size={val_size} must be >= 0 (0: validate on test)")
        self.download = download
        self.val_size = val_size
        self.augmentation = ClassificationAugment(
            self.input_size, self.mean, self.std, augment=augment
        )
        # Decoded means resized to `image_size` (as stored when that is 32).
        self.resize = v2.Resize(self.input_size, antialias=True)
        self.resized = self.input_size != (SIZE, SIZE)
        # Every loader gets whole batches from `DecodedSplit.__getitems__` (a store).
        self.collate_fn = pass_through

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def prepare_data(self) -> None:
        """Download and unpack the official files when `download` is set, then write the
        disk cache where asked (one process per node, before `setup()` in all)."""
        if self.download:
            for train in (True, False):
                CIFAR10(str(self.root), train=train, download=True)
        super().prepare_data()

    def _read_files(
        self, names: Sequence[str], on_error: Callable[[SeglabError], None] | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batches `names` concatenated; a bad file raises, or with `on_error` is
        reported and skipped (None when none could be read)."""
        parts = []
        for name in names:
            try:
                parts.append(read_batch(self.folder / name, self.num_classes))
            except SeglabError as err:
                if on_error is None:
                    raise
                on_error(err)
        if not parts:
            return None
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _check_class_names(self) -> None:
        meta = self.folder / META
        if not meta.is_file():
            return
        names = read_label_names(meta)
        if names != self.class_names:
            raise SeglabError(
                f"data.class_names={self.class_names} but {meta} names the classes {names}; "
                "make data.class_names match the file (same order)"
            )

    def _check_folder(self) -> None:
        if not self.root.is_dir():
            raise SeglabError(f"data.root={self.root} does not exist; {HOW_TO_GET}")
        if not self.folder.is_dir():
            raise SeglabError(f"data.root={self.root} has no {FOLDER}/ folder; {HOW_TO_GET}")

    def _read(self, on_error: Callable[[SeglabError], None] | None = None) -> Raw:
        """Stored images and labels per split (val taken out of the training batches)."""
        self._check_folder()
        try:
            self._check_class_names()
        except SeglabError as err:
            if on_error is None:
                raise
            on_error(err)
        raw: Raw = {}
        train = self._read_files(TRAIN_BATCHES, on_error)
        if train is not None and self.folds is not None:
            images, labels = train
            names = [f"{i:06d}" for i in range(len(labels))]
            kept, held = self.fold_indices(names, self.split_seed, labels=labels.numpy())
            raw["train"], raw["val"] = (images[kept], labels[kept]), (images[held], labels[held])
        elif train is not None:
            images, labels = train
            if self.val_size >= len(labels):
                raise SeglabError(
                    f"data.val_size={self.val_size} but {self.folder} holds only "
                    f"{len(labels)} training images; lower data.val_size"
                )
            kept, held = stratified_split(
                labels.numpy(), self.class_names, self.split_seed, size=self.val_size
            )
            raw["train"] = (images[kept], labels[kept])
            if self.val_size > 0:
                raw["val"] = (images[held], labels[held])
        test = self._read_files(TEST_BATCHES, on_error)
        if test is not None:
            raw["test"] = test
            if "val" not in raw and self.val_size == 0:
                raw["val"] = test
        return raw

    def find_samples(self, problems: Problems) -> dict[str, _Unpickled]:
        """The splits, unpickled when first read (val drawn from the training batches);
        val is the test split itself with `val_size: 0`."""
        self._check_folder()
        for path in self._files():
            if not path.is_file():
                raise SeglabError(f"{path} is missing; {HOW_TO_GET}")
        self._check_class_names()
        read = cache(self._read)
        splits = {split: _Unpickled(read, split) for split in SPLITS}
        if self.val_size == 0 and self.folds is None:
            splits["val"] = splits["test"]
        return splits

    def _files(self) -> list[Path]:
        return [self.folder / name for name in (*TRAIN_BATCHES, *TEST_BATCHES)]

    def fold_samples(self, train: _Unpickled, val: _Unpickled) -> tuple[_Unpickled, _Unpickled]:
        """As they are: `_read` deals the folds while it reads the batches."""
        return train, val

    def fingerprint(self, split: str, samples: _Unpickled) -> tuple[dict, list[Path]]:
        settings = {
            "root": str(self.folder.resolve()),
            "class_names": self.class_names,
            "val_size": self.val_size,
            "split_seed": self.split_seed,
            "image_size": list(self.input_size),
        }
        return settings, self._files()

    def decode(self, split: str, sample: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, int]:
        image, label = sample
        return (self.resize(image) if self.resized else image), label

    def uncached(self, split: str, samples: _Unpickled, transform: Any) -> DecodedSplit:
        """Without a cache the unpickled arrays are the store, resized per read."""
        if self.resized:
            transform = partial(_resized, self.resize, transform)
        return DecodedSplit(split, samples, transform, store=_store(*samples.arrays))

    def check_splits(self) -> tuple[dict[str, Dataset], list[str]]:
        """The splits with the images as stored (uint8, no augmentation, no resize); a
        bad batch file is reported and the other files are still scanned."""
        problems: list[str] = []
        raw = self._read(on_error=lambda err: problems.append(str(err)))
        datasets: dict[str, Dataset] = {}
        for split in SPLITS:
            if split in raw and all(raw[split] is not raw[s] for s in datasets):
                datasets[split] = DecodedSplit(split, (), None, store=_store(*raw[split]))
        return datasets, problems
