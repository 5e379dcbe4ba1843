"""k-fold cross-validation (`data.folds`, `data.fold`, `data.group_pattern`): the folds
themselves (disjoint, covering, stratified, grouped, seeded and independent of the order
the samples come in) and every datamodule with a training split validating on its fold.

The datasets are the tiny ones the datamodules' own tests write."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_cifar10 import write_cifar
from test_cityscapes import write_cityscapes
from test_folder import CLASSES, write_dataset
from test_image_folder import write_tree
from test_voc import write_voc

from seglab.data import (
    CIFAR10DataModule,
    CityscapesDataModule,
    FolderDataModule,
    ImageFolderDataModule,
    ShapesClassificationDataModule,
    ShapesDataModule,
    VOCDataModule,
)
from seglab.data.splits import check_group_pattern, file_groups, fold_split, kfold
from seglab.errors import SeglabError

NAMES = [f"img_{i:02d}.png" for i in range(23)]
LABELS = np.array([0] * 11 + [1] * 7 + [2] * 5)  # uneven classes


def check_partition(assignment: np.ndarray, folds: int) -> None:
    """Every sample validates in exactly one fold and trains in all the others."""
    count = len(assignment)
    vals = []
    for fold in range(folds):
        val = np.flatnonzero(assignment == fold)
        train = np.flatnonzero(assignment != fold)
        assert not set(train.tolist()) & set(val.tolist())
        assert sorted(train.tolist() + val.tolist()) == list(range(count))
        vals.extend(val.tolist())
    assert sorted(vals) == list(range(count))


def test_folds_are_disjoint_cover_every_sample_once_and_are_balanced():
    for folds in (2, 3, 5, 23):
        assignment = kfold(NAMES, folds, seed=0)
        check_partition(assignment, folds)
        sizes = np.bincount(assignment, minlength=folds)
        assert sizes.max() - sizes.min() <= 1
        for fold in range(folds):
            train, val = fold_split(NAMES, folds, fold, seed=0)
            assert val.tolist() == np.flatnonzero(assignment == fold).tolist()
            assert train.tolist() == np.flatnonzero(assignment != fold).tolist()


def test_stratified_folds_share_every_class_within_one():
    for folds in (2, 3, 5):
        assignment = kfold(NAMES, folds, seed=1, labels=LABELS)
        check_partition(assignment, folds)
        for label in range(3):
            counts = np.bincount(assignment[LABELS == label], minlength=folds)
            assert counts.max() - counts.min() <= 1, (folds, label, counts)
        sizes = np.bincount(assignment, minlength=folds)
        assert sizes.max() - sizes.min() <= 1


def test_groups_never_straddle_two_folds():
    # Three videos of 6, 4 and 3 frames, and five single images.
    names = [f"vidA_{i}.png" for i in range(6)] + [f"vidB_{i}.png" for i in range(4)]
    names += [f"vidC_{i}.png" for i in range(3)] + [f"photo{i}.png" for i in range(5)]
    groups = file_groups(names, check_group_pattern(r"^(vid[A-Z])_"))
    for folds in (2, 3, 4):
        assignment = kfold(names, folds, seed=0, groups=groups)
        check_partition(assignment, folds)
        for video in ("vidA", "vidB", "vidC"):
            assert (
                len({int(assignment[i]) for i, n in enumerate(names) if n.startswith(video)}) == 1
            )
    # Largest group first, each to the smallest fold: 6 | 4 + 1 + 1 | 3 + 1 + 1 + 1 (or so).
    sizes = np.bincount(kfold(names, 3, seed=0, groups=groups))
    assert sorted(sizes.tolist()) == [6, 6, 6]


def test_a_group_is_the_first_regex_group_or_the_whole_match():
    names = ["p01_scan3.png", "p01_scan4.png", "p02_scan1.png", "other.png"]
    assert file_groups(names, re.compile(r"p\d+"))[:3] == ["p01", "p01", "p02"]
    assert file_groups(names, re.compile(r"^p(\d+)_"))[:3] == ["01", "01", "02"]
    # An unmatched name is a group of its own, apart from any matched group.
    groups = file_groups(names, re.compile(r"^p(\d+)_"))
    assert groups[3] not in groups[:3]


@pytest.mark.parametrize("kwargs", [{}, {"labels": LABELS}, {"groups": [n[:6] for n in NAMES]}])
def test_the_same_seed_gives_the_same_folds_whatever_the_input_order(kwargs):
    assignment = kfold(NAMES, 4, seed=7, **kwargs)
    order = np.random.default_rng(0).permutation(len(NAMES))
    shuffled = {key: [value[i] for i in order] for key, value in kwargs.items()}
    again = kfold([NAMES[i] for i in order], 4, seed=7, **shuffled)
    assert again.tolist() == assignment[order].tolist()
    seeds = {tuple(kfold(NAMES, 4, seed=seed, **kwargs).tolist()) for seed in range(4)}
    assert len(seeds) > 1


def test_a_fixed_input_gets_a_fixed_assignment():
    """Pinned: a change of the algorithm (or of a library under it) would move samples
    between folds of runs already made; it must fail here, not pass silently."""
    names = ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png", "g.png"]
    assert kfold(names, 3, seed=0).tolist() == [1, 0, 2, 2, 0, 1, 0]
    assert kfold(names, 3, seed=1).tolist() == [2, 1, 2, 0, 1, 0, 0]
    labels = [0, 0, 0, 1, 1, 1, 1]
    assert kfold(names, 3, seed=0, labels=labels).tolist() == [2, 0, 1, 2, 1, 0, 0]
    # y (3 files) first, to fold 0; x (2) to fold 1; z and w (1 each) to the smallest.
    groups = ["x", "x", "y", "y", "y", "z", "w"]
    assert kfold(names, 3, seed=0, groups=groups).tolist() == [1, 1, 0, 0, 0, 2, 2]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: fold_split(NAMES, 5, 5, seed=0),
            r"^data.fold=5 is outside \[0, 5\) for data.folds=5$",
        ),
        (lambda: fold_split(NAMES, 5, -1, seed=0), r"^data.fold=-1 is outside \[0, 5\)"),
        (lambda: kfold(NAMES, 1, seed=0), r"^data.folds=1 must be at least 2"),
        (lambda: kfold(NAMES[:3], 4, seed=0), r"^data.folds=4 but train\+val hold only 3 samples"),
        (
            lambda: kfold(NAMES, 6, seed=0, labels=LABELS),
            r"^data.folds=6 but class 2 has only 5 samples in train\+val",
        ),
        (
            lambda: kfold(NAMES, 3, seed=0, groups=["a", "b"] * 11 + ["a"]),
            r"^data.folds=3 but data.group_pattern finds only 2 groups \(e.g. 'a'\)",
        ),
        (lambda: check_group_pattern("(unclosed"), r"^data.group_pattern='\(unclosed' is not a"),
        (
            lambda: file_groups(NAMES, re.compile("^vid")),
            r"^data.group_pattern='\^vid' matches no file name \(e.g. img_00.png\)",
        ),
    ],
)
def test_bad_fold_settings_are_one_line_errors_naming_the_value(call, message):
    with pytest.raises(SeglabError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"folds": 5, "fold": 5}, r"data.fold=5 is outside \[0, 5\)"),
        ({"folds": 1}, r"data.folds=1 must be at least 2"),
        ({"fold": 2}, r"data.fold=2 needs data.folds"),
    ],
)
def test_a_datamodule_checks_its_fold_settings_when_built(kwargs, message):
    with pytest.raises(SeglabError, match=message):
        ShapesDataModule(**kwargs)
    with pytest.raises(SeglabError, match=r"data.group_pattern='\[' is not a regular expression"):
        FolderDataModule("unused", CLASSES, 3, folds=2, group_pattern="[")


# --- every datamodule validates on its fold ---


def fold_sets(make: Callable[..., object], ids: Callable, folds: int) -> list[tuple]:
    """(train ids, val ids, test ids) of every fold of the datamodule `make(**kwargs)`
    builds, checked: each fold's train and val are disjoint and together the pool (the
    same in every fold), the vals cover the pool once, test stays as without folds."""
    plain = make()
    plain.setup("fit")
    pool = sorted(ids(plain.train_set) + ids(plain.val_set))
    plain_test = ids(plain.test_set) if plain.test_set is not plain.val_set else None
    found, vals = [], []
    for fold in range(folds):
        dm = make(folds=folds, fold=fold)
        dm.setup("fit")
        train, val, test = ids(dm.train_set), ids(dm.val_set), ids(dm.test_set)
        assert not set(train) & set(val) and val
        assert sorted(train + val) == pool
        if plain_test is None:  # no test split of its own: the fold's val is tested
            assert dm.test_set is dm.val_set
        else:
            assert test == plain_test
        vals.extend(val)
        found.append((train, val, test))
    assert sorted(vals) == pool
    return found


def pair_names(dataset) -> list[str]:
    return [image.name for image, _ in dataset.pairs]


def test_folder_folds_keep_test_and_groups(tmp_path):
    stems = {
        "train": [f"vid{v}_{f}" for v in "ABC" for f in range(3)] + ["x1", "x2"],
        "val": ["vidD_0", "vidD_1", "x3"],
        "test": ["t1", "t2"],
    }
    root = write_dataset(tmp_path, stems, size=(16, 24))

    def make(**kwargs):
        return FolderDataModule(root, CLASSES, 3, crop_size=16, cache="none", **kwargs)

    plain = fold_sets(make, pair_names, folds=3)
    grouped = fold_sets(lambda **kw: make(group_pattern=r"^(vid\w)_", **kw), pair_names, 3)
    for video in "ABCD":
        holding = [val for _, val, _ in grouped if any(n.startswith(f"vid{video}_") for n in val)]
        assert len(holding) == 1, video
    assert grouped != plain
    # The split seed deals the folds; the run's seed does not.
    torch.manual_seed(123)
    assert fold_sets(make, pair_names, 3) == plain
    assert fold_sets(lambda **kw: make(split_seed=1, **kw), pair_names, 3) != plain
    with pytest.raises(SeglabError, match=r"data.group_pattern='\^zzz' matches no file name"):
        make(folds=2, group_pattern="^zzz").setup("fit")


def test_voc_and_cityscapes_folds_pool_train_and_val(tmp_path):
    write_voc(tmp_path / "voc")
    write_cityscapes(tmp_path / "cs")

    def voc(**kwargs) -> VOCDataModule:
        return VOCDataModule(tmp_path / "voc", crop_size=32, cache="none", **kwargs)

    def cities(**kwargs) -> CityscapesDataModule:
        return CityscapesDataModule(tmp_path / "cs", crop_size=32, cache="none", **kwargs)

    fold_sets(voc, pair_names, folds=2)
    found = fold_sets(lambda **kw: cities(group_pattern=r"^([a-z]+)_", **kw), pair_names, 2)
    for city in ("aachen", "bremen", "frankfurt"):
        assert len([1 for _, val, _ in found if any(n.startswith(city) for n in val)]) == 1
    with pytest.raises(SeglabError, match=r"data.folds=4 but data.group_pattern finds only 3"):
        cities(folds=4, group_pattern=r"^([a-z]+)_").setup("fit")


def test_image_folder_folds_are_stratified(tmp_path):
    write_tree(tmp_path, {"train": 5, "val": 1, "test": 2})

    def make(**kwargs):
        return ImageFolderDataModule(tmp_path, cache="none", **kwargs)

    def ids(dataset) -> list[str]:
        return [str(Path(path).relative_to(tmp_path)) for path, _ in dataset.samples]

    for _, val, _ in fold_sets(make, ids, folds=3):
        per_class = [sum(Path(p).parent.name == c for p in val) for c in ("ant", "bee", "cat")]
        assert per_class == [2, 2, 2]  # 6 per class in train+val, 3 folds
    with pytest.raises(SeglabError, match=r"data.folds=7 but class 0 has only 6 samples"):
        make(folds=7).setup("fit")


def test_cifar10_folds_are_stratified_over_all_training_images(tmp_path):
    write_cifar(tmp_path)

    def make(**kwargs):
        return CIFAR10DataModule(tmp_path, val_size=10, cache="none", **kwargs)

    def ids(dataset) -> list[int]:
        """The written image's global index, tagged in its top-left pixel's green, blue."""
        images = dataset.store["images"].astype(np.int64)
        return (images[:, 1, 0, 0] + 256 * images[:, 2, 0, 0]).tolist()

    found = fold_sets(make, ids, folds=5)
    assert all(len(val) == 20 for _, val, _ in found)  # 100 training images
    for _, val, _ in found:
        dm_labels = [i % 10 for i in val]  # the writer's label of image i
        assert np.bincount(dm_labels, minlength=10).tolist() == [2] * 10


def test_shapes_folds_pool_train_and_val_scenes():
    def make(**kwargs) -> ShapesDataModule:
        return ShapesDataModule(num_train=9, num_val=3, num_test=2, image_size=16, **kwargs)

    fold_sets(make, image_ids, folds=3)


def test_shapes_classification_folds_are_stratified():
    def make(**kwargs) -> ShapesClassificationDataModule:
        return ShapesClassificationDataModule(
            num_train=18, num_val=6, num_test=2, image_size=16, **kwargs
        )

    plain = make()
    plain.setup("fit")
    labels = {
        image_id: label
        for dataset in (plain.train_set, plain.val_set)
        for image_id, label in zip(image_ids(dataset), _labels(dataset), strict=True)
    }
    counts = np.bincount(list(labels.values()), minlength=3)
    for _, val, _ in fold_sets(make, image_ids, folds=3):
        per_class = np.bincount([labels[i] for i in val], minlength=3)
        assert np.all(np.abs(per_class - counts / 3) < 1), (per_class, counts)


def image_ids(dataset) -> list[str]:
    """A sample's identity: a digest of its image."""
    return [
        hashlib.sha256(dataset[i][0].numpy().tobytes()).hexdigest() for i in range(len(dataset))
    ]


def _labels(dataset) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


def test_an_experiment_recipe_takes_the_fold_from_the_command_line(make_cfg):
    cfg = make_cfg("experiment=shapes_cnn", "data.folds=3", "data.fold=2")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    # tiny: 8 train and 4 val scenes pooled, a third of them validate.
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (8, 4, 4)


@pytest.mark.slow
def test_a_multirun_trains_every_fold(tmp_path, tiny):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.train",
            "-m",
            *tiny,
            "data.folds=3",
            "data.fold=range(3)",
            "trainer.fast_dev_run=true",
            "logger=none",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    folds = []
    for metrics in sorted((tmp_path / "sweep").glob("*/metrics.json")):
        config = OmegaConf.load(metrics.parent / ".hydra" / "config.yaml")
        folds.append((config.data.folds, config.data.fold))
    assert folds == [(3, 0), (3, 1), (3, 2)]
