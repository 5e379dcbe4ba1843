"""The base of every datamodule that reads a dataset's files (`DecodedDataModule`): a
format says what its samples are and how to decode one; the base lists and checks the
splits, applies `data.cache` (none, memory, disk or auto: `seglab.data.cache`) and the
task's augmentation (`seglab.data.transforms`), per sample or per batch on the device.

A format implements three methods (and sets `augmentation` in its constructor):

    find_samples(problems)   {"train": [...], "val": [...], "test": [...]}: this run's
                             samples per split (anything picklable: paths, ids, rows);
                             "test" may be missing (testing reuses val)
    decode(split, sample)    (uint8 image Tensor[3, H, W], int label) for
                             classification, (uint8 image, uint8 mask Tensor[H, W]) for
                             segmentation; None leaves a sample out (a skipped file)
    fingerprint(split, samples)  (settings, files): what decoding depends on besides the
                             files (JSON values) and the files read, the disk cache's key

and may override `scan(splits)` (check the files before decoding; for segmentation give
every sample's (height, width), else each sample is decoded once more to find it: the
cache's layout and the evaluation batches, one size each, need it), `sample_name`
(errors and warnings), `fold_samples` (cross-validation), `uncached`, `check_train` and
`check_splits`. Everything else (`prepare_data`, `setup`, the cache of every mode, the
loaders) is the base's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from seglab.data.base import SPLITS, Problems, SeglabDataModule
from seglab.data.cache import (
    CacheMode,
    DecodeFailed,
    Source,
    Store,
    build_classification,
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
from seglab.data.transforms import ClassificationAugment, SegmentationAugment
from seglab.errors import SeglabError

log = logging.getLogger(__name__)

EVALUATION_STAGES = ("validate", "test", "predict")

Decoded = tuple[torch.Tensor, Any]  # (uint8 image [3, H, W], int label | uint8 mask [H, W])


def as_stored(image: torch.Tensor, target: Any) -> Decoded:
    """`check_splits`' transform: the sample as decoded, a mask as LongTensor[H, W]."""
    return image, target.long() if isinstance(target, torch.Tensor) else target


class DecodedSplit(Dataset):
    """One split: `transform(*decoded sample)` per item, the decoded sample itself when
    `transform` is None (a cached training split, augmented per batch on the device).

    Args:
        split: "train", "val" or "test"; named in error messages.
        samples: the format's samples (`DecodedDataModule.find_samples`).
        transform: `(image, target) -> item`, or None.
        decode: `(split, sample) -> decoded sample`; read when there is no `store`.
        store: the decoded samples (`seglab.data.cache.Store`); `__getitems__` then gives
            whole batches (collate with `pass_through`).

    `sample_sizes` (int [N, 2], each decoded sample's (height, width), or None) batches
    evaluation samples of one size together.
    """

    def __init__(
        self,
        split: str,
        samples: Sequence,
        transform: Any,
        decode: Any = None,
        store: Store | None = None,
    ) -> None:
        self.split, self.samples, self.transform = split, samples, transform
        self.decode, self.store = decode, store
        segmentation = store is not None and "index" in store.rows
        self.sample_sizes = segmentation_sizes(store) if segmentation else None

    @property
    def pairs(self) -> Sequence:
        """`samples`, by the name image/mask formats give them."""
        return self.samples

    def __len__(self) -> int:
        return len(self.samples) if self.store is None else len(self.store)

    def load(self, index: int) -> Decoded | None:
        """The decoded sample `index`, untransformed (copies: a store may be read-only)."""
        if self.store is None:
            return self.decode(self.split, self.samples[index])
        if "index" in self.store.rows:
            image, mask = segmentation_sample(self.store, index)
            return torch.from_numpy(np.array(image)), torch.from_numpy(np.array(mask))
        image = torch.from_numpy(np.array(self.store["images"][index]))
        return image, int(self.store["labels"][index])

    def __getitem__(self, index: int) -> Any:
        item = self.load(index)
        return item if item is None or self.transform is None else self.transform(*item)

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """Without a store the items (the loader's collate stacks them); with one a
        batch: stacked items, or untransformed segmentation lists (images, masks) or
        classification `(uint8 images [B, 3, H, W], LongTensor[B])` gathered at once."""
        if self.store is None:
            return [self[i] for i in indices]
        if self.transform is not None:
            return default_collate([self[i] for i in indices])
        if "index" in self.store.rows:
            images, masks = zip(*(self.load(i) for i in indices), strict=True)
            return list(images), list(masks)
        rows = np.asarray(indices, dtype=np.int64)
        images = np.ascontiguousarray(self.store["images"][rows])
        return torch.from_numpy(images), torch.from_numpy(np.array(self.store["labels"][rows]))


class DecodedDataModule(SeglabDataModule):
    """A datamodule of files in some format (see the module docstring): the subclass
    supplies samples, decoding and a fingerprint; this class does the rest.

    Args:
        root: the dataset's folder.
        cache: "auto", "memory", "disk" or "none" (`seglab.data.cache`).
        cache_dir: where `cache="disk"` writes; None: `$XDG_CACHE_HOME/seglab`.
        split_seed: seeds the folds (and a format's own seeded split).
        Other arguments: see `SeglabDataModule`.
    """

    # Logged when `find_samples` gives no test split and testing reuses val.
    no_test_reason: ClassVar[str] = "no test split"
    # The task's augmentation, set by the subclass's constructor.
    augmentation: ClassificationAugment | SegmentationAugment

    def __init__(
        self,
        *,
        root: str | Path,
        cache: CacheMode = "auto",
        cache_dir: str | Path | None = None,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.cache = check_mode(cache)
        self.cache_dir = cache_root(cache_dir)
        self.split_seed = split_seed
        # The evaluation stages `setup()` has built the splits of (the fit's build all).
        self._set_up: set[str] = set()

    # --- what a format supplies ------------------------------------------------------------

    def find_samples(self, problems: Problems) -> dict[str, Sequence]:
        """The samples of each split: "train", "val" and optionally "test" (a test that
        is the val list itself, or empty, is left out). Report every problem to
        `problems`, naming the file and the fix, and go on with the usable samples: in
        `setup()` the first report raises, in `check_splits()` all are collected."""
        raise NotImplementedError(f"{type(self).__name__} must implement find_samples")

    def decode(self, split: str, sample: Any) -> Decoded | None:
        """Sample `sample` of `split` decoded (see the module docstring); a file that
        cannot be read raises SeglabError naming it."""
        raise NotImplementedError(f"{type(self).__name__} must implement decode")

    def fingerprint(self, split: str, samples: Sequence) -> tuple[dict[str, Any], list]:
        """(settings, files) that key the disk cache of `samples`: JSON values decoding
        depends on besides the files, and the paths of the files read, in sample order."""
        raise NotImplementedError(f"{type(self).__name__} must implement fingerprint")

    # Whether decoding a sample checks its files as `scan` does (a classification
    # format, whose cache needs no sizes beforehand): then a cache that decodes every
    # sample is the check (`cache.decoded` names every failure in one error) and `scan`
    # is skipped for it, sparing a second opening of every file.
    decoding_checks: ClassVar[bool] = False

    def scan(self, splits: dict[str, Sequence]) -> dict[str, np.ndarray] | None:
        """Check the files of `splits` before any is decoded (skipped where a disk cache
        is built for them, and with `decoding_checks` where a cache decodes them); per
        split the (height, width) of every decoded sample, or None where unknown."""
        return None

    def sample_name(self, sample: Any) -> str:
        """How errors and warnings name a sample."""
        return str(sample)

    def fold_samples(self, train: Sequence, val: Sequence) -> tuple[list, list]:
        """(train, val) of this run's fold of the pooled samples (`data.folds`)."""
        pool = [*train, *val]
        kept, held = self.fold_indices([self.sample_name(s) for s in pool], self.split_seed)
        return [pool[i] for i in kept], [pool[i] for i in held]

    def check_train(self, train: DecodedSplit) -> None:
        """Raise SeglabError for a training split that would train silently wrong."""

    # --- what the base does ----------------------------------------------------------------

    def _splits(self, stage: str | None) -> dict[str, Sequence]:
        """This run's splits for `stage`: train only when fitting, val alone to validate,
        test unless it is val."""
        splits = self.find_samples(Problems(strict=True))
        for split in ("train", "val"):
            if not splits.get(split):  # find_samples should have said why; a safety net
                raise SeglabError(
                    f"{type(self).__name__} found no {split} samples under data.root={self.root}"
                )
        if splits.get("test") is splits["val"]:
            del splits["test"]
        if self.folds is not None:
            splits["train"], splits["val"] = self.fold_samples(splits["train"], splits["val"])
        if not splits.get("test"):
            log.info("%s: %s; testing on the val split", self.root, self.no_test_reason)
        if not fitting(stage):
            del splits["train"]
        if stage == "validate":
            splits.pop("test", None)
        return {split: splits[split] for split in SPLITS if splits.get(split)}

    def _source(self, split: str, samples: Sequence) -> Source:
        settings, files = self.fingerprint(split, samples)
        settings = {"dataset": type(self).__name__, "split": split, **settings}
        if self.folds is not None:  # each fold's splits cached apart, not evicting others
            settings["fold"] = [self.folds, self.fold, self.split_seed]
        return Source(f"{self.root.name}-{split}", settings, file_stats(files))

    def _checked(
        self, splits: dict[str, Sequence], mode: str | None = None
    ) -> tuple[dict[str, Source], dict]:
        """The disk cache's sources (with `cache="disk"`), and `scan`'s sizes unless
        every split's cache is built for these very files, or (`decoding_checks`) the
        cache of `mode` is about to decode them all."""
        sources = {}
        if self.cache == "disk":
            sources = {split: self._source(split, samples) for split, samples in splits.items()}
            if all(is_built(self.cache_dir, source) for source in sources.values()):
                return sources, {}
        if self.decoding_checks and mode in ("memory", "disk"):
            return sources, {}
        return sources, self.scan(splits) or {}

    def _sizes(self, split: str, samples: Sequence, sizes: dict) -> np.ndarray:
        """(height, width) of every decoded sample of `split`: `scan`'s, else decoded."""
        if split not in sizes:
            shapes = [self.decode(split, sample)[0].shape[-2:] for sample in samples]
            sizes[split] = np.asarray(shapes, np.int64).reshape(-1, 2)
        return sizes[split]

    def _nbytes(self, splits: dict[str, Sequence], sizes: dict) -> int:
        """Bytes the decoded splits take cached (`data.cache=auto`)."""
        total = 0
        for split, samples in splits.items():
            if self.task == "segmentation":
                pixels = int(np.prod(self._sizes(split, samples, sizes), axis=1).sum())
            else:
                pixels = len(samples) * self.input_size[0] * self.input_size[1]
            total += decoded_nbytes(self.task, len(samples), pixels)
        return total

    def _store(
        self, split: str, samples: Sequence, mode: str, sizes: dict, source: Source | None
    ) -> Store:
        """The decoded samples of one split from the cache of `mode` ("memory" or "disk")."""
        decoding = DecodedSplit(split, samples, None, self.decode)
        if self.task == "segmentation":
            names = [self.sample_name(sample) for sample in samples]
            build = build_segmentation(
                decoding, lambda: self._sizes(split, samples, sizes), names, f"caching {split}"
            )
        else:
            build = build_classification(decoding, self.input_size, f"caching {split}")
        store = in_memory(build) if mode == "memory" else on_disk(self.cache_dir, source, build)
        if skipped := store.extra.get("skipped"):
            log.warning(
                "%d unreadable samples of the %s split are left out of its cache "
                "(data.skip_corrupt), e.g. %s",
                len(skipped),
                split,
                self.sample_name(samples[skipped[0]]),
            )
        return store

    def prepare_data(self) -> None:
        """With `cache="disk"`, decode the splits into the disk cache unless it is up to
        date (after `scan`); Lightning runs this in one process per node, before `setup()`
        in all."""
        if self.cache == "disk":
            splits = self._splits(trainer_stage(getattr(self, "trainer", None)))
            sources, sizes = self._checked(splits, "disk")
            for split, samples in splits.items():
                self._store(split, samples, "disk", sizes, sources[split])

    def uncached(self, split: str, samples: Sequence, transform: Any) -> DecodedSplit:
        """The split of `data.cache=none`: every sample decoded when read."""
        return DecodedSplit(split, samples, transform, self.decode)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits `stage` needs: all for "fit" (and None), else the evaluation
        splits only, so evaluating a checkpoint decodes no training sample."""
        if self.train_set is not None or stage in self._set_up:
            return
        splits = self._splits(stage)
        trainer = getattr(self, "trainer", None)
        if self.decoding_checks:  # the cache's size needs no scan: choose it first
            mode = resolve(self.cache, lambda: self._nbytes(splits, {}), trainer)
            sources, sizes = self._checked(splits, mode)
        else:
            sources, sizes = self._checked(splits)
            mode = resolve(self.cache, lambda: self._nbytes(splits, sizes), trainer)
        augmentation, sets, failed = self.augmentation, {}, []
        for split, samples in splits.items():
            train = split == "train"
            if mode == "none":
                transform = augmentation.sample if train else augmentation.evaluate
                sets[split] = self.uncached(split, samples, transform)
                if self.task == "segmentation" and not train:  # batched by size
                    sets[split].sample_sizes = self._sizes(split, samples, sizes)
                continue
            try:
                store = self._store(split, samples, mode, sizes, sources.get(split))
            except DecodeFailed as err:  # the other splits are checked too: one error
                failed += err.messages
                continue
            transform = None if train else augmentation.evaluate
            sets[split] = DecodedSplit(split, samples, transform, store=store)
        if failed:
            raise DecodeFailed(failed)
        if mode != "none":
            self.collate_fn = pass_through
            self.train_batch_transform = augmentation
        if "train" in sets:
            self.check_train(sets["train"])
        self.train_set, self.val_set = sets.get("train"), sets["val"]
        # Validating alone leaves test unbuilt (None); `setup("test")` then builds it.
        self.test_set = None if stage == "validate" else sets.get("test", self.val_set)
        # Built (a failed build is tried again): "validate" built val alone, "test" and
        # "predict" val and test, enough for every evaluation stage.
        self._set_up.update(["validate"] if stage == "validate" else EVALUATION_STAGES)
        log.info(
            "%s: %s train, %d val, %s test samples",
            self.root,
            len(self.train_set) if self.train_set is not None else "no",
            len(self.val_set),
            len(self.test_set) if self.test_set is not None else "no",
        )

    def check_splits(self) -> tuple[dict[str, Dataset], list[str]]:
        """Every split's samples as decoded (`as_stored`: no augmentation, no padding)
        and every problem found listing them; a test split that is val is left out."""
        problems = Problems(strict=False)
        splits = self.find_samples(problems)
        datasets: dict[str, Dataset] = {}
        for split in SPLITS:
            samples = splits.get(split)
            if samples and all(samples is not d.samples for d in datasets.values()):
                datasets[split] = DecodedSplit(split, samples, as_stored, self.decode)
        return datasets, problems.messages

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into a spawned loader worker (through `decode`): the decoding alone,
        not the trainer or the other splits."""
        state = dict(self.__dict__)
        state.update(trainer=None, train_set=None, val_set=None, test_set=None)
        return state
