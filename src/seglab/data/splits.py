"""Which samples validate: the stratified hold-out of a labelled dataset that has no
validation split of its own (class folders without val/, CIFAR-10's training batches),
and the k folds of cross-validation (`data.folds`, `data.fold`) that every datamodule
with a training split draws from its pooled train and val samples.

Hold-out: every class gives its share, and the samples a class gives are drawn by a
generator seeded with the split seed and the class's name, so adding a class, or images
of another class, leaves a class's choice unchanged. Folds: see `kfold`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections.abc import Sequence

import numpy as np

from seglab.errors import SeglabError

log = logging.getLogger(__name__)


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


# --- k-fold cross-validation -------------------------------------------------------------


def _rank_key(seed: int, name: str) -> bytes:
    """A sample's (or group's) place in the seeded order: a hash of the seed and its name
    alone, so the order is the same on every machine, whatever order the files were
    listed in, and two samples keep their order when others are added or removed."""
    return hashlib.sha256(f"{seed}\0{name}".encode()).digest()


def kfold(
    names: Sequence[str],
    folds: int,
    seed: int,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """The fold of every sample: a pure function of the set of (name, label, group)
    triples, `seed` and `folds`, independent of the order they are given in.

    Without groups, samples are ranked by a hash of (seed, name) and dealt round-robin to
    the folds; with `labels`, class by class (in label order, the deal going on where the
    previous class stopped), so a class's counts in any two folds differ by at most one,
    and so do the fold sizes. With `groups`, whole groups are dealt instead: largest
    first (ties in the seeded order), each to the fold holding the fewest samples so far
    (the lowest fold on ties), so no group straddles two folds.

    Args:
        names: a unique identity per sample (a file's path relative to the data root, an
            id); only names are hashed, never paths that differ between machines.
        folds: K >= 2, at most the number of samples (of groups; of the rarest class).
        seed: the split seed (independent of the training seed).
        labels: the class of each sample, for stratified folds; None: not stratified.
        groups: the group of each sample (a video, a patient); None: every sample its own.

    Shape:
        names: (N,) -> int64 (N,) in [0, folds).
    """
    count = len(names)
    if len(set(names)) != count:
        raise ValueError("sample names must be unique")
    check_folds(folds, 0)
    if folds > count:
        raise SeglabError(
            f"data.folds={folds} but train+val hold only {count} samples; use at most {count} folds"
        )
    assignment = np.empty(count, np.int64)
    if groups is not None:
        if labels is not None:
            raise ValueError("give labels or groups, not both")
        members: dict[str, list[int]] = {}
        for index, group in enumerate(groups):
            members.setdefault(group, []).append(index)
        if len(members) < folds:
            raise SeglabError(
                f"data.folds={folds} but data.group_pattern finds only {len(members)} groups "
                f"(e.g. {min(members)!r}); a group is never split, so use at most "
                f"{len(members)} folds or a finer pattern"
            )
        sizes = np.zeros(folds, np.int64)
        order = sorted(members, key=lambda g: (-len(members[g]), _rank_key(seed, g)))
        for group in order:
            fold = int(np.argmin(sizes))  # the first of the smallest
            assignment[members[group]] = fold
            sizes[fold] += len(members[group])
        return assignment
    classes = np.zeros(count, np.int64) if labels is None else np.asarray(labels, np.int64)
    present, counts = np.unique(classes, return_counts=True)
    if labels is not None and counts.min() < folds:
        rarest = int(present[np.argmin(counts)])
        raise SeglabError(
            f"data.folds={folds} but class {rarest} has only {int(counts.min())} samples in "
            f"train+val; stratified folds need at least one per fold, so use at most "
            f"{int(counts.min())} folds"
        )
    start = 0
    for label in present.tolist():
        members_of = np.flatnonzero(classes == label)
        ranked = sorted(members_of.tolist(), key=lambda i: _rank_key(seed, names[i]))
        assignment[ranked] = (start + np.arange(len(ranked))) % folds
        start = (start + len(ranked)) % folds
    return assignment


def fold_split(
    names: Sequence[str],
    folds: int,
    fold: int,
    seed: int,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    groups: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices `(train, val)` of fold `fold` of `kfold(...)`: its samples validate, the
    other folds' train. Both ascending, so each part keeps the samples' order.

    Shape:
        names: (N,) -> train: int64 (N - V,), val: int64 (V,).
    """
    check_folds(folds, fold)
    assignment = kfold(names, folds, seed, labels=labels, groups=groups)
    return np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)


def check_group_pattern(pattern: str | None) -> re.Pattern | None:
    """`data.group_pattern` compiled, or None; a pattern that does not compile raises."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise SeglabError(
            f"data.group_pattern={pattern!r} is not a regular expression ({err}); e.g. "
            r"'^(.+)_\d+$' groups video_0001.png, video_0002.png by 'video'"
        ) from err


def file_groups(file_names: Sequence[str], pattern: re.Pattern) -> list[str]:
    """The group of each file name: the first group of `pattern`'s first match (`search`),
    or the whole match when the pattern has no group; a name it does not match is a group
    of its own. A pattern matching no name at all raises SeglabError."""
    groups, unmatched = [], []
    for name in file_names:
        match = pattern.search(name)
        if match is None:
            unmatched.append(name)
            groups.append(f"\0{name}")  # cannot equal a match: names hold no NUL
        else:
            groups.append(match.group(1) if pattern.groups else match.group(0))
    if file_names and len(unmatched) == len(file_names):
        raise SeglabError(
            f"data.group_pattern={pattern.pattern!r} matches no file name (e.g. "
            f"{min(file_names)}); fix the pattern or set it to null"
        )
    if unmatched:
        log.warning(
            "data.group_pattern=%r does not match %d of %d file names (e.g. %s); each is a "
            "group of its own",
            pattern.pattern,
            len(unmatched),
            len(file_names),
            unmatched[0],
        )
    return groups


def check_folds(folds: int | None, fold: int) -> tuple[int | None, int]:
    """`data.folds` and `data.fold`, checked: K >= 2 or None (no cross-validation, where
    the fold must stay 0), and 0 <= fold < K."""
    if folds is None:
        if fold != 0:
            raise SeglabError(
                f"data.fold={fold} needs data.folds, the number of folds (e.g. data.folds=5)"
            )
        return None, 0
    if folds < 2:
        raise SeglabError(f"data.folds={folds} must be at least 2 (null: no cross-validation)")
    if not 0 <= fold < folds:
        raise SeglabError(f"data.fold={fold} is outside [0, {folds}) for data.folds={folds}")
    return int(folds), int(fold)
