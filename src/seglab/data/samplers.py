"""The order in which a datamodule's loaders visit samples, and where a training epoch
stands when a checkpoint is written.

Training order is a pure function of (seed, epoch), so a resumed run sees the batches an
uninterrupted one would; a checkpoint written inside an epoch records how many batches
the epoch had consumed, and the resumed run's loader skips exactly those. Evaluation
under DDP gives every sample to exactly one rank; evaluation samples of different sizes
are batched with the samples of their own size (`SizeGroupedBatchSampler`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from seglab.lightning_compat import batches_ready


def loader_sampler(
    length: int, *, shuffle: bool, world_size: int, rank: int, seed: int | None
) -> Sampler[int] | None:
    """The sampler for a loader over `length` samples; None leaves the DataLoader its
    in-order default."""
    if shuffle and world_size == 1:
        return EpochShuffleSampler(length, seed=seed or 0)
    if shuffle:  # a DistributedSampler: Lightning keeps it instead of injecting its own
        return EpochShuffleDistributedSampler(
            length, num_replicas=world_size, rank=rank, seed=seed or 0
        )
    if world_size > 1:
        return UnpaddedDistributedSampler(length, num_replicas=world_size, rank=rank)
    return None


def distinct_sizes(sizes: np.ndarray | None) -> int:
    """How many different (height, width) rows `sizes` (int [N, 2]) holds; 0 for None."""
    if sizes is None or len(sizes) == 0:
        return 0
    return len(np.unique(np.asarray(sizes).reshape(len(sizes), -1), axis=0))


class SizeGroupedBatchSampler(Sampler[list[int]]):
    """Evaluation batches whose samples share one (height, width), so full-resolution
    samples stack without padding them to a common size (which `seglab.predict` does not
    do either: padding changes what the net sees near the borders, and costs compute).

    The samples `sampler` gives (this rank's share under DDP) are grouped by size, the
    groups in the order their first sample comes, each in `sampler`'s order, and every
    group is cut into batches of up to `batch_size`: every sample once, deterministic.

    Args:
        sampler: the indices this process evaluates, in order: `range(N)` in one process,
            an `UnpaddedDistributedSampler` under DDP.
        sizes: int [N, 2], the (height, width) of every sample of the dataset.
        batch_size: the most samples per batch.
    """

    def __init__(self, sampler: Iterable[int], sizes: np.ndarray, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.sampler = sampler
        self.sizes = np.asarray(sizes)
        self.batch_size = batch_size

    def _batches(self) -> list[list[int]]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for index in self.sampler:
            groups.setdefault(tuple(self.sizes[index].tolist()), []).append(index)
        size = self.batch_size
        return [
            group[start : start + size]
            for group in groups.values()
            for start in range(0, len(group), size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def eval_batch_sampler(
    sizes: np.ndarray, batch_size: int, *, world_size: int, rank: int
) -> SizeGroupedBatchSampler:
    """Size-grouped evaluation batches of this rank's share of the `len(sizes)` samples
    (`UnpaddedDistributedSampler` under DDP: no sample on two ranks)."""
    length = len(sizes)
    sampler = loader_sampler(length, shuffle=False, world_size=world_size, rank=rank, seed=None)
    return SizeGroupedBatchSampler(range(length) if sampler is None else sampler, sizes, batch_size)


class SeglabLoader(DataLoader):
    """A DataLoader whose position inside a training epoch goes into checkpoints.

    Lightning saves the `state_dict()` of a training loader that has one with every
    checkpoint and hands it back to `load_state_dict()` when a run resumes; the loader
    then starts the interrupted epoch after the batches it had already given (Lightning
    alone would replay the epoch's first batches in their place).

    Args:
        trainer: where the position is read (the datamodule's trainer); None: no position.
    """

    def __init__(self, *args: Any, trainer: L.Trainer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trainer = trainer
        inner = getattr(kwargs.get("batch_sampler"), "sampler", None)
        if isinstance(inner, DistributedSampler):
            # A DataLoader given a batch sampler reports a SequentialSampler as its
            # `sampler`; Lightning, seeing no DistributedSampler there, would rebuild the
            # loader around its own, which pads ranks with repeated samples (counted twice
            # in the metrics). Report the rank's sampler the batches are drawn from.
            object.__setattr__(self, "sampler", inner)

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None:
            return {}
        batches = batches_ready(trainer)
        return {
            "epoch": trainer.current_epoch,
            "batches": batches,
            "epoch_done": batches >= trainer.num_training_batches,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sampler = self.sampler
        if not state_dict or not hasattr(sampler, "resume_at"):
            return
        if state_dict["epoch_done"]:
            sampler.resume_at(state_dict["epoch"] + 1, 0)
        else:
            sampler.resume_at(state_dict["epoch"], state_dict["batches"] * (self.batch_size or 1))


def epoch_order(length: int, seed: int, epoch: int) -> list[int]:
    """The training order of an epoch: a permutation that is a pure function of
    `(seed, epoch)` (a plain RandomSampler draws from the global RNG, whose state a
    checkpoint does not restore)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(length, generator=generator).tolist()


class _Resumable:
    """An epoch-seeded sampler's epoch (Lightning calls `set_epoch` before each) and the
    samples of it an interrupted run had already used (`resume_at`)."""

    epoch: int
    _skip: int = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def resume_at(self, epoch: int, skip: int) -> None:
        """The next pass is epoch `epoch`'s, without its first `skip` samples."""
        self.epoch = epoch
        self._skip = skip

    def _unused(self, order: list[int]) -> Iterator[int]:
        order, self._skip = order[self._skip :], 0
        return iter(order)


class EpochShuffleSampler(_Resumable, Sampler[int]):
    """Training order in one process: `epoch_order`, so a run resumed from a checkpoint
    sees the batches an uninterrupted one would."""

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        return self._unused(epoch_order(self.length, self.seed, self.epoch))


class EpochShuffleDistributedSampler(_Resumable, DistributedSampler):
    """Training order under DDP: `epoch_order`, padded by repeating its start so every
    rank gets the same number of samples (DDP steps together), dealt out round-robin."""

    def __init__(self, length: int, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, seed=seed)
        self.length = length
        self.num_samples = math.ceil(length / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.length, self.seed, self.epoch)
        order += order[: self.total_size - len(order)]
        return self._unused(order[self.rank : self.total_size : self.num_replicas])


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation sampler for DDP that gives every sample to exactly one rank.

    torch's DistributedSampler pads the dataset with repeated samples so all ranks get the
    same count; those duplicates would be counted twice in metrics summed over ranks.
    Here rank r takes samples r, r + world, r + 2 world, ...; ranks may differ by one
    sample, which evaluation tolerates (no gradient synchronisation).
    """

    def __init__(self, length: int, num_replicas: int, rank: int) -> None:
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size = length
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))
