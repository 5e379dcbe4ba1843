"""The stratified hold-out shared by class folders and CIFAR-10: per-class shares,
disjoint and covering parts, the same split for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from seglab.data.splits import stratified_split

NAMES = ["ant", "bee", "cat", "dog"]
# Uneven classes, interleaved: 12 ants, 7 bees, 2 cats, 1 dog.
LABELS = np.random.default_rng(0).permutation([0] * 12 + [1] * 7 + [2] * 2 + [3])


def per_class(labels: np.ndarray, indices: np.ndarray) -> list[int]:
    return np.bincount(labels[indices], minlength=len(NAMES)).tolist()


def check_parts(labels: np.ndarray, kept: np.ndarray, held: np.ndarray) -> None:
    """Disjoint, together every index once, each part in the samples' order."""
    assert not set(kept.tolist()) & set(held.tolist())
    assert sorted(kept.tolist() + held.tolist()) == list(range(len(labels)))
    assert kept.tolist() == sorted(kept.tolist()) and held.tolist() == sorted(held.tolist())


def test_ratio_holds_out_that_fraction_of_every_class():
    kept, held = stratified_split(LABELS, NAMES, seed=0, ratio=0.25)
    check_parts(LABELS, kept, held)
    # round(0.25 n), at least one when n >= 2, never all: 12 -> 3, 7 -> 2, 2 -> 1, 1 -> 0.
    assert per_class(LABELS, held) == [3, 2, 1, 0]
    assert per_class(LABELS, kept) == [9, 5, 1, 1]


def test_size_holds_out_that_many_in_proportion_to_the_classes():
    labels = np.repeat([0, 1, 2, 3], [40, 30, 20, 10])
    for size in (1, 7, 10, 33, 99):
        kept, held = stratified_split(labels, NAMES, seed=3, size=size)
        check_parts(labels, kept, held)
        assert len(held) == size
        quotas = np.array([40, 30, 20, 10]) * size / 100
        assert np.all(np.abs(np.array(per_class(labels, held)) - quotas) < 1)
    _, held = stratified_split(labels, NAMES, seed=3, size=10)
    assert per_class(labels, held) == [4, 3, 2, 1]
    kept, held = stratified_split(labels, NAMES, seed=3, size=0)
    assert held.tolist() == [] and kept.tolist() == list(range(100))


def test_same_seed_same_split_and_seeds_differ():
    first = stratified_split(LABELS, NAMES, seed=5, ratio=0.3)
    again = stratified_split(LABELS, NAMES, seed=5, ratio=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    held = {tuple(stratified_split(LABELS, NAMES, seed, ratio=0.3)[1]) for seed in range(4)}
    assert len(held) > 1
    sized = {tuple(stratified_split(LABELS, NAMES, seed, size=5)[1]) for seed in range(4)}
    assert len(sized) > 1


def test_a_class_draws_the_same_samples_when_other_classes_change():
    """The draw of a class depends on the seed and its name only: a new class, or more
    samples of another class, leave its held-out samples unchanged."""

    def held_ranks(labels: np.ndarray, names: list[str], label: int, seed: int) -> list[int]:
        """Which of the class's samples (counted in order) are held out."""
        _, held = stratified_split(labels, names, seed, ratio=0.25)
        members = np.flatnonzero(labels == label)
        return np.searchsorted(members, held[labels[held] == label]).tolist()

    labels = np.random.default_rng(1).permutation([0] * 9 + [1] * 6 + [2] * 12)
    # A new class "eel" and two more bees, before and after the others.
    grown = np.concatenate([[3, 1], labels, [3, 1]])
    for seed in range(4):
        for label in (0, 2):
            before = held_ranks(labels, NAMES, label, seed)
            assert held_ranks(grown, [*NAMES[:3], "eel"], label, seed) == before


def test_exactly_one_of_ratio_and_size():
    with pytest.raises(ValueError, match="exactly one of ratio and size"):
        stratified_split(LABELS, NAMES, seed=0)
    with pytest.raises(ValueError, match="exactly one of ratio and size"):
        stratified_split(LABELS, NAMES, seed=0, ratio=0.1, size=2)
    with pytest.raises(ValueError, match=r"size=22 must be in \[0, 22\)"):
        stratified_split(LABELS, NAMES, seed=0, size=len(LABELS))
