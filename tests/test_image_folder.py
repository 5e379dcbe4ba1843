"""ImageFolderDataModule: classification on class-named folders written into tmp_path."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from seglab.checkpoint import RunRecord
from seglab.data.base import to_input
from seglab.data.image_folder import ImageFolderDataModule, find_splits
from seglab.errors import SeglabError
from seglab.train import train

# Written in this order on purpose: the labels must follow the sorted names instead.
CLASSES = ("cat", "ant", "bee")
SORTED = sorted(CLASSES)


def colour(name: str) -> tuple[int, int, int]:
    """Each class has its own flat colour."""
    k = SORTED.index(name)
    return (40 + 80 * k, 200 - 70 * k, 90)


def write_images(folder: Path, name: str, count: int, start: int = 0) -> list[Path]:
    """`count` flat 40x30 images of class `name` in `folder`, alternately PNG and JPG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"{name}_{i:02d}.{('png', 'jpg')[i % 2]}"
        Image.new("RGB", (40, 30), colour(name)).save(path)
        paths.append(path)
    return paths


def write_tree(
    root: Path, splits: dict[str, int] | None = None, classes=CLASSES
) -> dict[str, list[Path]]:
    """root/<split>/<class>/ with `splits[split]` images per class; the paths per split."""
    written: dict[str, list[Path]] = {}
    for split, count in (splits or {"train": 6}).items():
        start = {"train": 0, "val": 50, "test": 80}[split]
        written[split] = [
            p for name in classes for p in write_images(root / split / name, name, count, start)
        ]
    return written


def datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root, **kwargs)
    dm.setup("fit")
    return dm


def paths(dataset) -> list[str]:
    return [path for path, _ in dataset.samples]


class SeenAtFit(L.Callback):
    """Records what the run was built with, as fit starts: the config its checkpoints
    store and the classes of the module's head."""

    seen: ClassVar[dict] = {}

    def on_fit_start(self, trainer, pl_module):
        record = next(c for c in trainer.callbacks if isinstance(c, RunRecord))
        head = [m for m in pl_module.modules() if isinstance(m, torch.nn.Linear)][-1]
        SeenAtFit.seen = {
            "data": record.config["data"],
            "class_names": list(pl_module.class_names),
            "outputs": head.out_features,
        }


def test_experiment_puts_the_folder_classes_into_the_config(make_cfg, tmp_path, fast_run):
    """experiment=folder_cnn with class_names/num_classes null: the datamodule lists the
    folders, train() puts them into the run's config before the CNN head is built (the
    config its checkpoints store), and one batch trains and tests. The caller's config
    is left as it was."""
    write_tree(tmp_path / "data")
    cfg = make_cfg(
        "experiment=folder_cnn",
        f"data.root={tmp_path / 'data'}",
        "data.batch_size=4",
        f"+callbacks.seen._target_={__name__}.SeenAtFit",
        *fast_run,
        tiny=False,
    )
    assert cfg.data.class_names is None and cfg.data.num_classes is None
    metrics = train(cfg)
    seen = SeenAtFit.seen
    assert seen["data"]["class_names"] == seen["class_names"] == SORTED == ["ant", "bee", "cat"]
    assert seen["data"]["num_classes"] == seen["outputs"] == 3
    assert cfg.data.class_names is None and cfg.data.num_classes is None  # not mutated
    assert cfg.optimized_metric == "val/acc" and cfg.trainer.max_epochs == 20
    assert cfg.model._target_ == "seglab.models.SimpleCNN" and cfg.optimizer.lr == 1e-3
    assert 0.0 <= metrics["test/acc"] <= 1.0 and math.isfinite(metrics["test/loss"])


def test_items_are_rgb_resized_and_normalised(tmp_path):
    """Labels follow the sorted folder names; any-case extensions count; a grey image
    becomes RGB; every item is resized to image_size and normalised with the configured
    mean/std, which `to_input` (prediction) uses too."""
    written = write_tree(tmp_path, {"train": 4, "val": 1})
    grey = tmp_path / "val" / "ant" / "grey.PNG"
    Image.new("L", (25, 50), 77).save(grey)
    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
    # The per-sample path; test_cache.py shows a cache gives the same items.
    dm = datamodule(tmp_path, image_size=16, mean=list(mean), std=list(std), cache="none")
    assert dm.class_names == SORTED and dm.num_classes == 3
    assert (dm.mean, dm.std) == (mean, std)
    assert ImageFolderDataModule.mean != mean  # an instance setting, not the class's
    assert sorted(paths(dm.val_set)) == sorted(map(str, [*written["val"], grey]))

    for (path, label), (image, got) in zip(dm.val_set.samples, dm.val_set, strict=True):
        assert got == label and image.shape == (3, 16, 16) and image.dtype == torch.float32
        name = SORTED[label]
        assert Path(path).parent.name == name
        rgb = (77, 77, 77) if path == str(grey) else colour(name)
        expected = to_input(np.full((16, 16, 3), rgb, np.uint8), mean, std)
        # JPEG shifts flat colours by a level or two.
        assert torch.allclose(image, expected, atol=3 / 50)
    flat = np.full((2, 2, 3), 10, np.uint8)
    assert torch.allclose(dm.to_input(flat)[:, 0, 0], (10 - torch.tensor(mean)) / torch.tensor(std))

    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (12, 3, 16, 16) and labels.dtype == torch.int64


def test_stratified_split_is_seeded_disjoint_and_complete(tmp_path):
    counts = {"ant": 6, "bee": 11, "cat": 2}
    for name, count in counts.items():
        write_images(tmp_path / "train" / name, name, count)
    splits = find_splits(tmp_path, SORTED, val_ratio=0.2, split_seed=0)
    val_counts = [sum(label == k for _, label in splits["val"]) for k in range(3)]
    # round(0.2 n) with at least one when n >= 2: 6 -> 1, 11 -> 2, 2 -> 1 (round(0.4) = 0)
    assert val_counts == [1, 2, 1]
    train_paths, val_paths = set(paths_of(splits["train"])), set(paths_of(splits["val"]))
    assert not train_paths & val_paths
    every = {str(p) for p in (tmp_path / "train").rglob("*.*")}
    assert train_paths | val_paths == every and len(every) == 19
    assert splits["test"] is splits["val"]
    assert find_splits(tmp_path, SORTED, 0.2, split_seed=0) == splits
    assert find_splits(tmp_path, SORTED, 0.2, split_seed=1)["val"] != splits["val"]

    dm = datamodule(tmp_path, val_ratio=0.2, cache="none")
    assert paths(dm.val_set) == paths_of(splits["val"]) and dm.test_set is dm.val_set
    datasets, problems = dm.check_splits()
    assert set(datasets) == {"train", "val"} and problems == []  # test is val: left out


def paths_of(samples) -> list[str]:
    return [path for path, _ in samples]


def test_explicit_val_and_test_folders_are_used_as_they_are(tmp_path):
    written = write_tree(tmp_path, {"train": 3, "val": 2, "test": 1})
    dm = datamodule(tmp_path, cache="none")
    assert sorted(paths(dm.train_set)) == sorted(map(str, written["train"]))
    assert sorted(paths(dm.val_set)) == sorted(map(str, written["val"]))
    assert sorted(paths(dm.test_set)) == sorted(map(str, written["test"]))
    assert [label for _, label in dm.test_set.samples] == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"class_names": ["ant", "bee", "cow"]},
            r"data.class_names=\['ant', 'bee', 'cow'\] but the class folders of .*train are "
            r"\['ant', 'bee', 'cat'\]; rename",
        ),
        (
            {"class_names": ["cat", "bee", "ant"]},
            r"\['cat', 'bee', 'ant'\] but .* are \['ant', 'bee', 'cat'\]; labels follow the "
            "sorted folder names",
        ),
        ({"num_classes": 4}, r"data.num_classes=4 but .*train has 3 class folders"),
        ({"val_ratio": 1.0}, r"data.val_ratio must be in \(0, 1\); got 1.0"),
        ({"std": [1, 0, 1]}, r"data.std must be 3 .* all > 0; got \[1, 0, 1\]"),
    ],
    ids=["other-names", "other-order", "num-classes", "val-ratio", "std"],
)
def test_config_that_contradicts_the_folders(tmp_path, kwargs, message):
    write_tree(tmp_path, {"train": 1})
    with pytest.raises(SeglabError, match=message):
        datamodule(tmp_path, **kwargs)  # given names are checked by setup()


def test_stored_class_names_build_where_the_folders_changed(tmp_path):
    """predict/export rebuild a checkpoint's datamodule without reading data: a class
    folder added since training must not stop them (only setup() compares)."""
    write_tree(tmp_path, {"train": 1})
    write_images(tmp_path / "train" / "cow", "ant", 1)  # a class added after training
    dm = ImageFolderDataModule(tmp_path, class_names=SORTED)
    assert dm.class_names == SORTED and dm.num_classes == 3
    with pytest.raises(
        SeglabError, match=r"class folders .*train are \['ant', 'bee', 'cat', 'cow'\]"
    ):
        dm.setup("fit")


def test_missing_root_or_train_folder(tmp_path):
    with pytest.raises(SeglabError, match=r"data.root=.*nope does not exist.*ROOT/train/<class>"):
        ImageFolderDataModule(tmp_path / "nope")
    (tmp_path / "val" / "ant").mkdir(parents=True)
    with pytest.raises(SeglabError, match=r"data.root=.* has no train/ folder; expected ROOT"):
        ImageFolderDataModule(tmp_path)


def test_stored_class_names_build_without_the_data(tmp_path):
    """A checkpoint's config on another machine: names given, root gone. Only setup()
    needs the files."""
    dm = ImageFolderDataModule(tmp_path / "gone", class_names=SORTED, image_size=8)
    assert (dm.class_names, dm.num_classes, dm.input_size) == (SORTED, 3, (8, 8))
    assert dm.to_input(np.zeros((8, 8, 3), np.uint8)).shape == (3, 8, 8)
    with pytest.raises(SeglabError, match=r"data.root=.*gone does not exist"):
        dm.setup("fit")


def test_empty_class_folder_is_named(tmp_path):
    write_tree(tmp_path, {"train": 2, "val": 1})
    for path in (tmp_path / "val" / "bee").iterdir():
        path.unlink()
    (tmp_path / "val" / "bee" / "readme.txt").write_text("no images here")
    with pytest.raises(SeglabError, match=r"class folder .*val/bee has no images \(.png"):
        datamodule(tmp_path)


def test_val_classes_differ_from_train(tmp_path):
    write_tree(tmp_path, {"train": 2})
    write_images(tmp_path / "val" / "ant", "ant", 1)
    write_images(tmp_path / "val" / "cat", "cat", 1)
    write_images(tmp_path / "val" / "cow", "cat", 1)
    with pytest.raises(
        SeglabError,
        match=r"class folders of .*/val differ from those of .*/train .* missing "
        r"\['.*/val/bee'\], extra \['.*/val/cow'\]",
    ):
        datamodule(tmp_path)


def test_corrupt_file_is_named_with_its_split(tmp_path):
    write_tree(tmp_path, {"train": 2})
    bad = tmp_path / "train" / "bee" / "bad.jpg"
    whole = (tmp_path / "train" / "bee" / "bee_00.png").read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])  # truncated
    # Without a cache the header scan of setup() finds it (no IEND chunk, and it does not
    # decode); with one, the cache's build, which decodes every file, is that check.
    with pytest.raises(SeglabError, match=r"^1 file of data.root=.* fails the header check"):
        datamodule(tmp_path, val_ratio=0.01, cache="none")
    with pytest.raises(SeglabError, match=r"^cannot read image .*bee/bad.jpg \(train split\)"):
        datamodule(tmp_path, val_ratio=0.01, cache="memory")
    # Cut in the middle with its IEND put back: found only when decoded.
    bad.write_bytes(whole[: len(whole) // 2] + whole[-12:])
    # Without a cache the file is read when it is sampled.
    dm = datamodule(tmp_path, val_ratio=0.01, cache="none")  # one val image per class
    split, index = next(
        (name, i)
        for name, dataset in (("train", dm.train_set), ("val", dm.val_set))
        for i, path in enumerate(paths(dataset))
        if path == str(bad)
    )
    dataset = dm.train_set if split == "train" else dm.val_set
    with pytest.raises(SeglabError, match=rf"cannot read image .*bee/bad.jpg \({split} split\)"):
        dataset[index]
    # From a worker process the loader re-raises in the main process, message included.
    dm = datamodule(tmp_path, val_ratio=0.01, num_workers=1, batch_size=8, cache="none")
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    with pytest.raises(SeglabError, match=rf"cannot read image .*bee/bad.jpg \({split} split\)"):
        list(loader)
    # With a cache it is found while the cache is built, in setup().
    with pytest.raises(SeglabError, match=rf"cannot read image .*bee/bad.jpg \({split} split\)"):
        datamodule(tmp_path, val_ratio=0.01, cache="memory")


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_validating_alone_builds_the_val_split_alone(tmp_path, cache):
    written = write_tree(tmp_path, {"train": 3, "val": 2, "test": 1})
    dm = ImageFolderDataModule(tmp_path, cache=cache)
    dm.setup("validate")  # a report's or `evaluate split=val`'s pass
    assert dm.train_set is None and dm.test_set is None
    assert sorted(paths(dm.val_set)) == sorted(map(str, written["val"]))
    dm.setup("validate")  # built once
    dm.setup("test")  # then testing builds test
    assert sorted(paths(dm.test_set)) == sorted(map(str, written["test"]))
    assert sorted(paths(dm.val_set)) == sorted(map(str, written["val"]))


def test_a_cache_build_names_every_unreadable_file_in_one_error(tmp_path):
    write_tree(tmp_path, {"train": 3})
    bad = [tmp_path / "train" / "ant" / "bad1.png", tmp_path / "train" / "cat" / "bad2.png"]
    for path in bad:
        path.write_bytes(b"not a png" * 10)
    for cache in ("memory", "disk"):
        with pytest.raises(SeglabError) as raised:
            datamodule(tmp_path, val_ratio=0.01, cache=cache, cache_dir=tmp_path / "c")
        message = str(raised.value)
        # The header scan was skipped: the build itself went on past the first bad file.
        assert "header check" not in message
        assert message.startswith("2 samples fail to decode:\n")
        for path in bad:  # each named with its split
            assert re.search(rf"cannot read image {path} \((train|val) split\)", message)
        assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.npy"))


def test_skip_corrupt_drops_the_file_from_its_batch(tmp_path, caplog):
    write_tree(tmp_path, {"train": 3, "val": 1})
    bad = tmp_path / "train" / "ant" / "bad.png"
    bad.write_bytes(b"not a png" * 10)
    # In-process loading: a worker's warning would not reach caplog. (With a cache the
    # file is left out while the cache is built: test_cache.py.)
    dm = datamodule(tmp_path, skip_corrupt=True, batch_size=10, num_workers=0, cache="none")
    assert len(dm.train_set) == 10
    with caplog.at_level(logging.WARNING, logger="seglab.data.image_folder"):
        images, labels, skipped = next(iter(dm.train_dataloader()))
    assert images.shape == (9, 3, 32, 32) and labels.shape == (9,) and skipped == 1
    assert str(bad) in caplog.text
    _, _, skipped = next(iter(dm.val_dataloader()))
    assert skipped == 0

    dm = datamodule(tmp_path, skip_corrupt=True, batch_size=1, cache="none")
    index = paths(dm.train_set).index(str(bad))
    with pytest.raises(SeglabError, match=r"all 1 images of a batch are unreadable"):
        dm.collate_fn([dm.train_set[index]])


def test_check_splits_names_every_problem(tmp_path):
    """All problems at once, each naming its file or folder; unreadable files raise
    when read even with skip_corrupt (the checker records them by name)."""
    write_tree(tmp_path, {"train": 2, "test": 1})
    bad = tmp_path / "train" / "ant" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    notes = tmp_path / "train" / "cat" / "notes.txt"
    notes.write_text("camera settings")
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0")
    loose = tmp_path / "train" / "unsorted.jpg"
    Image.new("RGB", (4, 4)).save(loose)
    write_images(tmp_path / "val" / "ant", "ant", 1)
    write_images(tmp_path / "val" / "cat", "cat", 1)
    write_images(tmp_path / "val" / "cow", "cat", 1)
    for path in (tmp_path / "test" / "bee").iterdir():
        path.unlink()

    dm = ImageFolderDataModule(tmp_path, skip_corrupt=True, image_size=24)
    datasets, problems = dm.check_splits()
    assert set(datasets) == {"train", "val", "test"}
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert f"{notes} is not an image file" in text
    assert f"{loose} is not in a class folder" in text
    assert f"missing ['{tmp_path / 'val' / 'bee'}'], extra ['{tmp_path / 'val' / 'cow'}']" in text
    assert f"class folder {tmp_path / 'test' / 'bee'} has no images" in text
    assert ".DS_Store" not in text

    failures = []
    for index in range(len(datasets["train"])):
        try:
            image, label = datasets["train"][index]
        except SeglabError as err:
            failures.append(str(err))
            continue
        assert image.dtype == torch.uint8 and image.shape == (3, 24, 24)
        assert isinstance(label, int)
    assert len(failures) == 1 and f"cannot read image {bad} (train split)" in failures[0]
    image, label = datasets["val"][0]
    assert label == 0
    assert image[:, 0, 0].tolist() == list(colour("ant"))

    # Training stops at the first real problem; notes.txt and unsorted.jpg are only skipped.
    with pytest.raises(SeglabError, match=r"class folders of .*/val differ from those of"):
        dm.setup("fit")


def test_trained_folder_classifier_evaluates_and_predicts_with_folder_class_names(
    make_cfg, tmp_path
):
    """train -> evaluate -> predict on an image-folder classifier: the checkpoint carries
    the folder names (the data may be gone: predict needs only the checkpoint), evaluate
    writes a confusion matrix over them, predict one CSV row per image."""
    import csv
    import json
    import shutil

    from seglab.config import compose
    from seglab.evaluate import evaluate
    from seglab.predict import predict

    root = tmp_path / "data"
    write_tree(root, {"train": 6, "test": 2})
    cfg = make_cfg(
        "experiment=folder_cnn",
        f"data.root={root}",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_model_summary=false",
        "logger=none",
        tiny=False,
        output_dir=tmp_path / "run",
    )
    train(cfg)
    ckpt = json.loads((tmp_path / "run" / "metrics.json").read_text())["best_model_path"]

    result = evaluate(
        compose(
            [f"ckpt_path={ckpt}", "trainer.accelerator=cpu"],
            output_dir=tmp_path / "eval",
            config_name="eval",
        )
    )
    assert [row["class"] for row in result["per_class"]] == SORTED
    assert [row["images"] for row in result["per_class"]] == [2, 2, 2]  # test/ per class
    with open(tmp_path / "eval" / "confusion_matrix.csv") as f:
        assert next(csv.reader(f))[1:] == SORTED

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in (root / "test" / "bee").iterdir():
        shutil.copy(path, photos / path.name)
    shutil.rmtree(root)  # predicting needs the checkpoint only
    predict(
        compose(
            [f"ckpt_path={ckpt}", f"input={photos}", f"output={tmp_path / 'out'}"],
            config_name="predict",
        )
    )
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(row["file"]).name for row in rows) == sorted(
        p.name for p in photos.iterdir()
    )
    assert all(row["class"] in SORTED for row in rows)


def test_a_run_with_skip_corrupt_logs_the_skipped_files(make_cfg, tmp_path, fast_run):
    """The module sums the collate's counts per epoch and stage: one unreadable training
    image and one unreadable test image, each counted once (without a cache: with one
    they are left out of it while it is built)."""
    write_tree(tmp_path / "data", {"train": 4, "val": 1, "test": 1})
    (tmp_path / "data" / "train" / "bee" / "bad.png").write_bytes(b"broken" * 10)
    (tmp_path / "data" / "test" / "cat" / "bad.jpg").write_bytes(b"broken" * 10)
    cfg = make_cfg(
        "experiment=folder_cnn",
        f"data.root={tmp_path / 'data'}",
        "data.skip_corrupt=true",
        "data.cache=none",
        "data.num_workers=0",
        "data.batch_size=13",  # every image of a split in one batch
        *fast_run,
        tiny=False,
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert metrics["train/skipped_files"] == 1.0
    assert metrics["val/skipped_files"] == 0.0
    assert metrics["test/skipped_files"] == 1.0
