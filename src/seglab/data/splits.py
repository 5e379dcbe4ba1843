"""The stratified hold-out: which samples of a labelled dataset validate when the dataset
has no validation split of its own (class folders without val/, CIFAR-10's training
batches). Every class gives its share, and the samples a class gives are drawn by a
generator seeded with the split seed and the class's name, so adding a class, or images
of another class, leaves a class's choice unchanged."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


def _largest_remainders(counts: np.ndarray, size: int) -> np.ndarray:
    """`size` spread over classes of `counts` samples in proportion: each class gets the
    floor of its quota, then the largest fractional parts (lower label first on ties)
    one more each, so the shares sum to `size` and none is off by a whole sample."""
    total = int(counts.sum())
    shares, remainders = np.divmod(counts * size, total)  # integers: no float ties
    order = np.argsort(-remainders, kind="stable")
    shares[order[: size - int(shares.sum())]] += 1
    return shares


def stratified_split(
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    seed: int,
    *,
    ratio: float | None = None,
    size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices `(kept, held_out)` of a stratified hold-out, each sorted ascending (so both
    parts keep the samples' order). Give exactly one of `ratio` and `size`.

    Args:
        labels: the class index of each sample.
        class_names: the name of each class index; it seeds the class's draw.
        seed: the split seed (independent of the training seed).
        ratio: each class of n samples holds out round(ratio * n), at least one when
            n >= 2 and never all n (a class keeps a training sample).
        size: `size` samples held out in all (0 <= size < len(labels)), each class in
            proportion to its count (largest remainders).

    Shape:
        labels: (N,) -> kept: int64 (N - H,), held_out: int64 (H,).
    """
    if (ratio is None) == (size is None):
        raise ValueError(f"give exactly one of ratio and size; got ratio={ratio}, size={size}")
    labels = np.asarray(labels, dtype=np.int64)
    present, counts = np.unique(labels, return_counts=True)
    if ratio is not None:
        held_counts = [min(max(round(ratio * int(n)), 1 if n >= 2 else 0), n - 1) for n in counts]
    else:
        if not 0 <= size < max(len(labels), 1):
            raise ValueError(f"size={size} must be in [0, {len(labels)})")
        held_counts = _largest_remainders(counts, size).tolist()
    held = [np.empty(0, np.int64)]
    for label, n, n_held in zip(present.tolist(), counts.tolist(), held_counts, strict=True):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([seed, zlib.crc32(class_names[label].encode())])
        held.append(members[rng.permutation(n)[:n_held]])
    held_out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out
