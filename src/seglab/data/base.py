"""What every seglab datamodule shares: class metadata, validated once, the fold of
cross-validation it trains on, the `Problems` that listing its files reports to, and
loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seglab.data.samplers import SeglabLoader, distinct_sizes, eval_batch_sampler, loader_sampler
from seglab.data.splits import check_folds, fold_split
from seglab.errors import SeglabError
from seglab.lightning_compat import batches_ready
from seglab.sizes import size_pair

log = logging.getLogger(__name__)

Task = Literal["segmentation", "classification"]
SPLITS = ("train", "val", "test")


class SeglabDataModule(L.LightningDataModule):
    """Base datamodule: subclasses set `task` and build `train_set`/`val_set`/`test_set`
    in `setup()`. Its arguments are keyword-only: a subclass's own arguments (its YAML
    keys) differ in order and number, so a positional call would pass them by accident.

    Args:
        class_names: one name per class, in label order.
        num_classes: must equal `len(class_names)`; the model head reads it from the
            data config (`${data.num_classes}`), so it is written once, here.
        ignore_index: label of void pixels (segmentation); excluded from loss and metrics.
        input_size: (height, width) of the images the model sees in training.
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings;
            num_workers None picks a count (`loader_workers`), pin_memory None pins host
            memory when CUDA is available, persistent_workers applies with workers only.
            A val or test dataset with `sample_sizes` (int [N, 2], (height, width) per
            sample) of more than one size is batched by size (`SizeGroupedBatchSampler`):
            up to batch_size samples of one size each, in the dataset's order per size.
        folds: None trains and validates on the dataset's own splits; K >= 2 pools the
            train and val samples, deals them into K seeded folds (`seglab.data.splits`)
            and validates on fold `fold`, training on the others; the test split stays.
        fold: the fold that validates, in [0, folds).
    """

    task: ClassVar[Task]
    # Per-channel statistics on the 0-255 scale that `to_input` normalises with; ImageNet's
    # unless a dataset says otherwise (pretrained encoders expect these).
    mean: ClassVar[tuple[float, float, float]] = (123.675, 116.28, 103.53)
    std: ClassVar[tuple[float, float, float]] = (58.395, 57.12, 57.375)

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        num_classes: int,
        ignore_index: int,
        input_size: int | Sequence[int],
        batch_size: int = 16,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__()
        self.folds, self.fold = check_folds(folds, fold)
        class_names = list(class_names)
        if num_classes != len(class_names):
            raise SeglabError(
                f"data.num_classes={num_classes} but data.class_names has {len(class_names)} "
                f"names {class_names}; make them agree"
            )
        if len(set(class_names)) != len(class_names):
            raise SeglabError(f"data.class_names has duplicates: {class_names}")
        if 0 <= ignore_index < num_classes:
            raise SeglabError(
                f"data.ignore_index={ignore_index} is a real class index (num_classes="
                f"{num_classes}); use a value outside [0, {num_classes}), e.g. 255"
            )
        self.class_names = class_names
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.input_size = size_pair(input_size)
        self.batch_size = batch_size
        self.num_workers = num_workers
        # None: pin when a GPU is there to copy to (pinning without one only costs).
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        # The DataLoader's collate_fn; None: torch's default.
        self.collate_fn: Callable | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        # Augmentation of whole training batches on the training device (a cached training
        # split yields uint8 batches): `(batch, generator) -> batch`; set in `setup()`.
        self.train_batch_transform: Callable[[Any, torch.Generator], Any] | None = None
        # The run's seed, taken when the training loader is built (see `_loader`).
        self._train_seed: int | None = None

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """One RGB colour per class, for colour masks and overlays."""
        return default_palette(self.num_classes)

    def to_input(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB image (H, W, 3) -> normalised float32 tensor (3, H, W), as the model
        saw it in training; `seglab.predict` uses it on new images."""
        return to_input(image, self.mean, self.std)

    def check_splits(self) -> tuple[dict[str, Dataset], list[str]]:
        """What `seglab.check_data` scans, without training.

        Returns:
            per split, a dataset of the samples as stored: no random augmentation, no
            padding. Items are `(image, mask LongTensor[H, W])` for segmentation or
            `(image, int label)` for classification; the image is uint8 [3, H, W] (0-255)
            or normalised float [3, H, W] (mapped back with `mean`/`std`). A bad file
            raises `SeglabError` naming it; the checker records that and goes on.
            A split that reuses another one (a test split that is the val split) is left
            out. Second, the problems found while listing files (unpaired files, empty
            class folders, ...), each naming the file or folder; the datamodule must not
            raise on those here but report them all.

        This default serves datamodules without files: the splits `setup()` builds.
        """
        self.setup("fit")
        self.setup("test")
        datasets: dict[str, Dataset] = {}
        for split in SPLITS:
            dataset = getattr(self, f"{split}_set")
            if dataset is not None and all(dataset is not d for d in datasets.values()):
                datasets[split] = dataset
        return datasets, []

    def fold_indices(
        self,
        names: Sequence[str],
        seed: int,
        *,
        labels: Sequence[int] | np.ndarray | None = None,
        groups: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices `(train, val)` of this run's fold among the pooled train and val
        samples named `names` (see `seglab.data.splits.kfold`), each ascending."""
        assert self.folds is not None, "fold_indices needs data.folds"
        train, val = fold_split(names, self.folds, self.fold, seed, labels=labels, groups=groups)
        log.info(
            "cross-validation: fold %d of %d validates on %d samples, %d train",
            self.fold,
            self.folds,
            len(val),
            len(train),
        )
        return train, val

    def _world(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset | None, stage: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() built no {stage} split")
        world_size, rank = self._world()
        if shuffle:
            # The training order and batch augmentation derive from this seed alone.
            self._train_seed = torch.initial_seed()
        workers = loader_workers(getattr(self, "trainer", None), self.num_workers)
        sizes = getattr(dataset, "sample_sizes", None)
        if not shuffle and distinct_sizes(sizes) > 1:
            # Evaluation samples at their own sizes: each batch holds one size, as in
            # `seglab.predict`, instead of padding all to the split's largest.
            return SeglabLoader(
                dataset,
                batch_sampler=eval_batch_sampler(
                    sizes, self.batch_size, world_size=world_size, rank=rank
                ),
                num_workers=workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.persistent_workers and workers > 0,
                collate_fn=self.collate_fn,
            )
        sampler = loader_sampler(
            len(dataset), shuffle=shuffle, world_size=world_size, rank=rank, seed=self._train_seed
        )
        return SeglabLoader(
            dataset,
            trainer=getattr(self, "trainer", None) if shuffle else None,
            batch_size=self.batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            # A last training batch of one sample breaks BatchNorm; drop only that one.
            drop_last=shuffle and len(dataset) % self.batch_size == 1,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply `train_batch_transform` to training batches, now on the training device;
        validation, sanity-check, test and predict batches pass unchanged.

        Its generator lives on the batch's device and is seeded from (the run's seed, the
        epoch, the batch's index in the epoch, the global rank) alone, so the augmentation
        of every batch is repeated exactly by a resumed run.
        """
        trainer = getattr(self, "trainer", None)
        if self.train_batch_transform is None or trainer is None or not trainer.training:
            return batch
        seed = torch.initial_seed() if self._train_seed is None else self._train_seed
        # Batches fetched so far this epoch, i.e. this batch's index: the epoch loop counts
        # it as ready only after the transfer. Restored from checkpoints, like the epoch.
        index = batches_ready(trainer)
        tensor = _first_tensor(batch)
        generator = torch.Generator(device=tensor.device if tensor is not None else "cpu")
        generator.manual_seed(batch_seed(seed, trainer.current_epoch, index, trainer.global_rank))
        batch = self.train_batch_transform(batch, generator)
        # Lightning converted the batch to the precision's input dtype (16-true, 64-true)
        # before the transfer, when the images were still uint8; convert the floats now.
        return trainer.precision_plugin.convert_input(batch)


class Problems:
    """Where listing a dataset's files sends what it finds wrong; each message names the
    file or folder and the fix.

    Args:
        strict: True (training, `setup()`): the first problem raises `SeglabError`, so a
            bad dataset stops a run before it starts. False (`check_splits()`): every
            problem is kept in `messages` and listing goes on with the usable files, so
            one scan reports them all.
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        if self.strict:
            raise SeglabError(message)
        self.messages.append(message)

    def add_each(self, messages: Sequence[str], summary: str) -> None:
        """Files sharing one problem: strict, one error `summary` (a count and examples);
        otherwise one message per file."""
        if not messages:
            return
        if self.strict:
            raise SeglabError(summary)
        self.messages.extend(messages)

    def notice(self, message: str, log: logging.Logger) -> None:
        """A finding that does not stop training (a stray non-image file): kept in
        `messages` for the checker, debug-logged otherwise."""
        if self.strict:
            log.debug(message)
        else:
            self.messages.append(message)


def examples(names: Sequence[str], limit: int = 3) -> str:
    """The first `limit` names, comma-separated, then "..." if there are more: the
    examples in a `Problems.add_each` summary."""
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


def loader_workers(trainer: L.Trainer | None, num_workers: int | None) -> int:
    """DataLoader workers per training process: `num_workers` when given, else none when
    the model runs on the CPU (its intra-op threads already use every core: on 2 cores
    `make bench` measured the plain CNN trained from JPEG folders at 880-990 img/s with
    in-process loading against 720-900 with 2 workers), else min(8, cores per
    process - 1), leaving one core per process for the training loop itself. The cores
    per process are the ones the process is bound to when that is fewer than the
    machine's (SLURM --cpus-per-task), else the machine's divided by the devices."""
    if num_workers is not None:
        return num_workers
    if trainer is not None:
        device, processes = trainer.strategy.root_device.type, trainer.num_devices
    else:
        device, processes = ("cuda" if torch.cuda.is_available() else "cpu"), 1
    if device == "cpu":
        return 0
    machine = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine
    # A process bound to a subset of the cores (SLURM's --cpus-per-task) already has its
    # share; otherwise the processes on this node share all of them.
    share = usable if usable < machine else machine // max(1, processes)
    return max(0, min(8, share - 1))


def to_input(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W), `(image - mean) / std` per channel."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def from_input(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Inverse of `to_input`: float (3, H, W) -> uint8 (H, W, 3), for showing images."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    image = (tensor.float() * std_t + mean_t).clamp(0, 255).round().byte()
    return image.permute(1, 2, 0).cpu().numpy()


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Pascal VOC's colour map (class 0 black, then well-separated colours), extended to
    any number of classes by the same bit-interleaving rule."""
    palette = []
    for label in range(num_classes):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


def batch_seed(*keys: int) -> int:
    """A 64-bit seed that is a pure function of non-negative `keys` (seed, epoch, batch,
    rank), well mixed so neighbouring keys give unrelated random streams."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0])


def _first_tensor(batch: Any) -> torch.Tensor | None:
    """The first tensor in a batch of nested tuples, lists and dicts; None if none."""
    if isinstance(batch, torch.Tensor):
        return batch
    items = list(batch.values()) if isinstance(batch, dict) else batch
    if isinstance(items, (list, tuple)):
        for item in items:
            if (found := _first_tensor(item)) is not None:
                return found
    return None
