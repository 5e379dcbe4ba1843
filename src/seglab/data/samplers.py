"""The order in which a datamodule's loaders visit samples.

Training order is a pure function of (seed, epoch), so a resumed run sees the batches an
uninterrupted one would; evaluation under DDP gives every sample to exactly one rank.
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler, Sampler


def loader_sampler(
    length: int, *, shuffle: bool, world_size: int, rank: int, seed: int | None
) -> Sampler[int] | None:
    """The sampler for a loader over `length` samples; None leaves the choice to the
    DataLoader (in order) or, for training under DDP, to Lightning (its own epoch-seeded
    DistributedSampler)."""
    if shuffle and world_size == 1:
        return EpochShuffleSampler(length, seed=seed or 0)
    if not shuffle and world_size > 1:
        return UnpaddedDistributedSampler(length, num_replicas=world_size, rank=rank)
    return None


class EpochShuffleSampler(Sampler[int]):
    """Random order that is a pure function of `(seed, epoch)`; Lightning calls
    `set_epoch` before each epoch. A run resumed from a checkpoint therefore sees the same
    batches as an uninterrupted one (a plain RandomSampler draws from the global RNG,
    whose state a checkpoint does not restore)."""

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


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
