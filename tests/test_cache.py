"""`data.cache`: decoded once, read back equal to decoding every time, rebuilt when the
files change, shared by loader workers and DDP ranks, and a damaged cache named."""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from seglab.check_data import format_report, scan
from seglab.checkpoint import load_module
from seglab.data import cache, cifar10, image_folder, image_mask
from seglab.data.base import SeglabDataModule
from seglab.data.cifar10 import CIFAR10DataModule
from seglab.data.folder import FolderDataModule
from seglab.data.image_folder import ImageFolderDataModule
from seglab.errors import SeglabError
from seglab.train import train

CLASSES = ("ant", "bee")
SIZE = 16  # the classification input size: the 20x24 photos are resized
# Segmentation pairs of different sizes (height, width), per split.
PAIRS = {
    "train": {"a": (30, 40), "b": (24, 20), "c": (36, 36), "d": (20, 30)},
    "val": {"e": (20, 28), "f": (28, 20)},
}


def _pixels(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def write_photos(root: Path, per_class: int = 4) -> list[Path]:
    """root/{train,val}/<class>/ random 20x24 photos, PNG and JPEG; the files written."""
    written = []
    for split, count in (("train", per_class), ("val", 2)):
        for k, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                path = root / split / name / f"{i}.{('png', 'jpg')[i % 2]}"
                Image.fromarray(_pixels(100 * k + i + len(written), 20, 24)).save(path)
                written.append(path)
    return written


def write_pair(root: Path, split: str, stem: str, size: tuple[int, int], seed: int) -> Path:
    """An image and its class-index mask (values 0-2 and void 255) under root."""
    for kind in ("images", "masks"):
        (root / kind / split).mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).integers(0, 3, size).astype(np.uint8)
    labels[0, :3] = 255
    image = root / "images" / split / f"{stem}.{('png', 'jpg')[seed % 2]}"
    Image.fromarray(_pixels(seed, *size)).save(image)
    Image.fromarray(labels).save(root / "masks" / split / f"{stem}.png")
    return image


def write_pairs(root: Path) -> list[Path]:
    """Sub-folder splits of image/mask pairs of the sizes in PAIRS; the images written."""
    return [
        write_pair(root, split, stem, size, seed)
        for seed, (split, stem, size) in enumerate(
            (split, stem, size) for split, stems in PAIRS.items() for stem, size in stems.items()
        )
    ]


@dataclass(frozen=True)
class Kind:
    """A task's data: how to write it, build its datamodule, and add a training file."""

    write: Callable[[Path], list[Path]]
    make: Callable[..., SeglabDataModule]
    add: Callable[[Path], list[Path]]  # a new training sample; its files


def _photos(root: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(root, **{"image_size": SIZE, "batch_size": 4, **kwargs})


def _folder(root: Path, **kwargs) -> FolderDataModule:
    return FolderDataModule(root, ["x", "y", "z"], 3, crop_size=16, batch_size=2, **kwargs)


def _add_photo(root: Path) -> list[Path]:
    path = root / "train" / "bee" / "new.png"
    Image.fromarray(_pixels(99, 20, 24)).save(path)
    return [path]


def _add_pair(root: Path) -> list[Path]:
    image = write_pair(root, "train", "new", (22, 26), 99)
    return [image, root / "masks" / "train" / "new.png"]


KINDS = {
    "classification": Kind(write_photos, _photos, _add_photo),
    "segmentation": Kind(write_pairs, _folder, _add_pair),
}


@pytest.fixture(params=list(KINDS))
def kind(request) -> Kind:
    return KINDS[request.param]


@pytest.fixture
def decoded_files(monkeypatch) -> list[Path]:
    """Every image file decoded in this process from now on, in order."""
    calls: list[Path] = []
    for module in (image_folder, image_mask):

        def read(path, original=module.read_rgb):
            calls.append(Path(path))
            return original(path)

        monkeypatch.setattr(module, "read_rgb", read)
    return calls


def ready(datamodule: SeglabDataModule) -> SeglabDataModule:
    """What Lightning does before training: prepare_data(), then setup()."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def assert_equal(a, b) -> None:
    """Exactly equal, through tuples, lists, tensors and numbers."""
    if isinstance(a, tuple | list):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


def items(dataset) -> list:
    return [dataset[i] for i in range(len(dataset))]


def folders(cache_dir: Path, split: str) -> list[Path]:
    """The built cache folders of `split` (one per source fingerprint)."""
    return sorted(p for p in cache_dir.glob(f"*-{split}-*/*") if not p.name.startswith("."))


def test_a_second_run_decodes_nothing(kind, tmp_path, decoded_files, caplog):
    written = kind.write(tmp_path / "data")
    first = ready(kind.make(tmp_path / "data", cache="disk", cache_dir=tmp_path / "cache"))
    assert sorted(decoded_files) == sorted(written)  # every image once, in prepare_data()
    decoded_files.clear()
    with caplog.at_level(logging.INFO, logger="seglab.data.cache"):
        second = ready(kind.make(tmp_path / "data", cache="disk", cache_dir=tmp_path / "cache"))
    assert decoded_files == []
    assert caplog.text.count("nothing to decode") == 2 * 2  # train, val; prepare + setup
    for split in ("train_set", "val_set"):
        assert_equal(items(getattr(first, split)), items(getattr(second, split)))


@pytest.mark.parametrize("change", ["changed", "added", "removed"])
def test_a_changed_added_or_removed_file_rebuilds_the_cache_and_says_why(
    kind, tmp_path, decoded_files, caplog, change
):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    written = kind.write(root)
    first = ready(kind.make(root, cache="disk", cache_dir=cache_dir))
    stale = folders(cache_dir, "train")
    victim = next(p for p in written if "train" in p.parts and p.suffix == ".png")
    if change == "changed":
        pixels = 255 - np.asarray(Image.open(victim))
        Image.fromarray(pixels).save(victim)
        files = [victim]
    elif change == "added":
        files = kind.add(root)
    else:
        mask = root / "masks" / "train" / victim.name  # segmentation: the pair goes
        files = [victim, mask] if mask.exists() else [victim]
        for path in files:
            path.unlink()
    decoded_files.clear()
    with caplog.at_level(logging.INFO, logger="seglab.data.cache"):
        second = ready(kind.make(root, cache="disk", cache_dir=cache_dir))

    lines = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    entry = stale[0].parent
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"data cache {re.escape(str(entry))} is stale \(files {len(files)} {change}, e\.g\. "
        rf"({'|'.join(re.escape(str(p)) for p in files)})\); rebuilding it",
        lines[0],
    ), lines[0]
    # Only the training split is decoded again; the stale folder is gone.
    assert decoded_files and all("train" in p.parts for p in decoded_files)
    assert folders(cache_dir, "train") != stale and len(folders(cache_dir, "train")) == 1
    grown = {"changed": 0, "added": 1, "removed": -1}[change]
    assert len(second.train_set) == len(first.train_set) + grown
    plain = kind.make(root, cache="none").check_splits()[0]["train"]
    for (image, target), (stored, label) in zip(items(second.train_set), items(plain), strict=True):
        assert torch.equal(image, stored) and torch.equal(
            torch.as_tensor(target).long(), torch.as_tensor(label)
        )


def test_auto_holds_the_splits_in_memory_only_when_they_fit(tmp_path, monkeypatch, caplog):
    written = write_photos(tmp_path)
    need = len(written) * (3 * SIZE * SIZE + 8)  # uint8 images and int64 labels
    monkeypatch.setattr(cache, "available_memory", lambda: 4 * need)
    held = ready(_photos(tmp_path))
    assert held.train_set.store is not None  # decoded once, into memory
    assert held.train_batch_transform is not None and held.collate_fn is cache.pass_through

    monkeypatch.setattr(cache, "available_memory", lambda: 4 * need - 1)
    with caplog.at_level(logging.INFO, logger="seglab.data.cache"):
        decoding = ready(_photos(tmp_path))
    assert decoding.train_set.store is None  # every read decodes
    assert decoding.train_batch_transform is None and decoding.collate_fn is None
    assert "more than a quarter" in caplog.text and "data.cache=disk" in caplog.text


def test_auto_counts_every_process_of_the_machine_and_follows_rank_zero(monkeypatch):
    monkeypatch.setattr(cache, "available_memory", lambda: 8000)
    alone = SimpleNamespace(num_devices=1, world_size=1)
    assert cache.resolve("auto", lambda: 2000, alone) == "memory"
    # Each of 2 local processes holds a copy: 4000 > 8000 / 4.
    pair = SimpleNamespace(
        num_devices=2, world_size=2, strategy=SimpleNamespace(broadcast=lambda mode, src: mode)
    )
    assert cache.resolve("auto", lambda: 2000, pair) == "none"
    # Rank 0 measured less free memory: every rank follows it.
    told = SimpleNamespace(
        num_devices=1, world_size=2, strategy=SimpleNamespace(broadcast=lambda mode, src: "none")
    )
    assert cache.resolve("auto", lambda: 10, told) == "none"
    assert cache.resolve("disk", lambda: 10**18, alone) == "disk"


def _batches(loader) -> list:
    return list(loader)


def test_the_disk_cache_is_shared_by_loader_workers(kind, tmp_path, caplog):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    kind.write(root)
    in_process = ready(kind.make(root, cache="disk", cache_dir=cache_dir, num_workers=0))
    built = {p: (p / cache.MANIFEST).stat().st_mtime_ns for p in cache_dir.glob("*/*")}
    with caplog.at_level(logging.INFO, logger="seglab.data.cache"):
        workers = ready(kind.make(root, cache="disk", cache_dir=cache_dir, num_workers=2))
        for loader in ("train_dataloader", "val_dataloader"):
            shared = _batches(getattr(workers, loader)())
            assert_equal(shared, _batches(getattr(in_process, loader)()))
    assert "building" not in caplog.text and "stale" not in caplog.text
    assert {p: (p / cache.MANIFEST).stat().st_mtime_ns for p in cache_dir.glob("*/*")} == built
    # A worker started by spawning gets the folder and maps it, not a copy of the data.
    store = workers.train_set.store
    nbytes = sum(array.nbytes for array in store.arrays.values())
    copied = pickle.loads(pickle.dumps(workers.train_set))
    assert len(pickle.dumps(store)) < nbytes / 4
    assert_equal(items(copied), items(workers.train_set))


@pytest.mark.parametrize("damage", ["truncated", "grown", "manifest"])
def test_a_corrupt_cache_file_is_named_with_the_fix(tmp_path, damage):
    write_photos(tmp_path / "data")

    def make() -> SeglabDataModule:
        return ready(_photos(tmp_path / "data", cache="disk", cache_dir=tmp_path / "c"))

    make()
    folder = folders(tmp_path / "c", "train")[0]
    if damage == "manifest":
        path = folder / cache.MANIFEST
        path.write_text('{"format": 1, "fingerprint"')
    else:
        path = folder / "images.npy"
        content = path.read_bytes()
        path.write_bytes(content[:-100] if damage == "truncated" else content + b"\0" * 8)
    message = (
        rf"data cache file {re.escape(str(path))} .*; delete {re.escape(str(folder))} "
        r"\(the next run rebuilds it\) or set data.cache=none"
    )
    with pytest.raises(SeglabError, match=message):
        make()


@pytest.mark.parametrize(
    ("which", "array", "value"),
    [
        ("classification", "images", 0),
        ("segmentation", "images", 0),
        ("segmentation", "masks", 200),
    ],
)
def test_a_cache_file_overwritten_in_place_is_named_with_the_fix(tmp_path, which, array, value):
    """Issue 21: a zeroed images.npy trained to the end on black images, and mask bytes
    set to 200 crashed with an IndexError that never named the cache. Same size, same
    header: only the checksum taken at build time can tell."""
    kind = KINDS[which]
    kind.write(tmp_path / "data")

    def make() -> SeglabDataModule:
        return ready(kind.make(tmp_path / "data", cache="disk", cache_dir=tmp_path / "c"))

    make()
    folder = folders(tmp_path / "c", "train")[0]
    path = folder / f"{array}.npy"
    before = path.stat().st_size
    stored = np.load(path, mmap_mode="r+")
    stored[:] = value  # the data bytes only: the .npy header still parses
    stored.flush()
    del stored
    assert path.stat().st_size == before
    message = (
        rf"data cache file {re.escape(str(path))} has the size its manifest says but not "
        rf"the bytes .*; delete {re.escape(str(folder))} \(the next run rebuilds it\)"
    )
    with pytest.raises(SeglabError, match=message):
        make()
    shutil.rmtree(folder)  # the fix the line gives works
    assert len(make().train_set) > 0


def test_an_intact_cache_maps_with_its_checksums_checked(kind, tmp_path, decoded_files):
    kind.write(tmp_path / "data")
    first = items(
        ready(kind.make(tmp_path / "data", cache="disk", cache_dir=tmp_path / "c")).val_set
    )
    decoded_files.clear()
    again = ready(kind.make(tmp_path / "data", cache="disk", cache_dir=tmp_path / "c"))
    assert decoded_files == []  # mapped, not rebuilt
    assert_equal(items(again.val_set), first)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_evaluation_alone_decodes_no_training_image(kind, tmp_path, decoded_files, mode):
    written = kind.write(tmp_path / "data")
    dm = kind.make(tmp_path / "data", cache=mode, cache_dir=tmp_path / "cache")
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.TESTING))
    dm.prepare_data()
    dm.setup("test")
    dm.trainer = None
    assert sorted(decoded_files) == sorted(p for p in written if "val" in p.parts)
    assert dm.train_set is None and len(dm.test_set) == len(dm.val_set) > 0
    dm.setup("fit")  # then training: the training split is built
    assert len(dm.train_set) == sum("train" in p.parts for p in written)


def test_an_unwritable_cache_dir_says_so(tmp_path):
    write_photos(tmp_path / "data")
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(SeglabError, match=r"cannot write the data cache .*taken/.* data.cache_dir"):
        ready(_photos(tmp_path / "data", cache="disk", cache_dir=tmp_path / "taken"))


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_evaluation_samples_equal_uncached_ones_exactly(kind, tmp_path, mode):
    kind.write(tmp_path / "data")
    plain = ready(kind.make(tmp_path / "data", cache="none"))
    cached = ready(kind.make(tmp_path / "data", cache=mode, cache_dir=tmp_path / "cache"))
    assert cached.val_set.store is not None and plain.val_set.store is None
    for split in ("val_set", "test_set"):
        assert_equal(items(getattr(cached, split)), items(getattr(plain, split)))
    assert_equal(_batches(cached.val_dataloader()), _batches(plain.val_dataloader()))


def test_cached_training_samples_are_the_uncached_ones_before_augmentation(kind, tmp_path):
    kind.write(tmp_path / "data")
    stored = kind.make(tmp_path / "data", cache="none").check_splits()[0]["train"]
    cached = ready(kind.make(tmp_path / "data", cache="memory"))
    assert len(cached.train_set) == len(stored)
    for (image, target), (expected, label) in zip(
        items(cached.train_set), items(stored), strict=True
    ):
        assert image.dtype == torch.uint8 and torch.equal(image, expected)
        assert torch.equal(torch.as_tensor(target).long(), torch.as_tensor(label))
    # The loader gathers whole batches (__getitems__, passed through): uint8, not augmented.
    loader = cached.train_dataloader()
    order = list(loader.sampler)[: cached.batch_size]
    batch = next(iter(loader))
    expected = [cached.train_set[i] for i in order]
    if cached.task == "segmentation":
        assert_equal(batch, ([image for image, _ in expected], [mask for _, mask in expected]))
    else:
        images = torch.stack([image for image, _ in expected])
        assert_equal(batch, (images, torch.tensor([label for _, label in expected])))


def test_unaugmented_cached_training_batches_equal_uncached_samples_exactly(tmp_path):
    """Classification without augmentation: the batch transform only normalises, so a
    cached batch equals the per-sample path's items bit for bit."""
    write_photos(tmp_path)
    plain = ready(_photos(tmp_path, cache="none", augment=False))
    cached = ready(_photos(tmp_path, cache="memory", augment=False))
    indices = list(range(len(plain.train_set)))
    images, labels = cached.train_batch_transform(
        cached.train_set.__getitems__(indices), torch.Generator()
    )
    expected = torch.utils.data.default_collate(items(plain.train_set))
    assert_equal((images, labels), tuple(expected))


def test_skip_corrupt_leaves_unreadable_images_out_of_the_cache(tmp_path, caplog):
    written = write_photos(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "ant" / "bad.png"
    bad.write_bytes(b"not a png" * 10)
    make = lambda **kw: ready(  # noqa: E731
        _photos(tmp_path / "data", cache="disk", cache_dir=tmp_path / "c", **kw)
    )
    for run in range(2):  # built, then read back: both say what is missing
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            dm = make(skip_corrupt=True)
        assert len(dm.train_set) == sum("train" in p.parts for p in written)
        assert f"left out of its cache (data.skip_corrupt), e.g. {bad}" in caplog.text, run
    # Not a key the cache ignores: without skip_corrupt the file is an error again.
    with pytest.raises(SeglabError, match=rf"cannot read image {re.escape(str(bad))} \(train"):
        make()


def test_decode_settings_key_the_cache(tmp_path, decoded_files, caplog):
    write_photos(tmp_path / "photos")

    def make(**kwargs) -> SeglabDataModule:
        return ready(_photos(tmp_path / "photos", cache_dir=tmp_path / "c", **kwargs))

    make(cache="disk")
    with caplog.at_level(logging.INFO, logger="seglab.data.cache"):
        smaller = make(cache="disk", image_size=8)  # another cache, not a stale one
    assert smaller.train_set[0][0].shape == (3, 8, 8) and "stale" not in caplog.text
    decoded_files.clear()
    make(cache="disk")
    assert decoded_files == []  # both are kept

    write_pairs(tmp_path / "pairs")
    plain = ready(_folder(tmp_path / "pairs", cache="disk", cache_dir=tmp_path / "c"))
    mapped = ready(  # class 2 mapped away on purpose: no label check
        _folder(
            tmp_path / "pairs",
            cache="disk",
            cache_dir=tmp_path / "c",
            label_map={2: 255},
            check_labels=False,
        )
    )
    before, after = plain.train_set[0][1], mapped.train_set[0][1]
    assert (before == 2).any() and torch.equal(after, torch.where(before == 2, 255, before))


def test_large_splits_decode_in_worker_processes(kind, tmp_path, monkeypatch, decoded_files):
    kind.write(tmp_path / "data")
    expected = items(ready(kind.make(tmp_path / "data", cache="memory")).val_set)
    decoded_files.clear()
    monkeypatch.setattr(cache, "PARALLEL_FROM", 0)
    monkeypatch.setattr(cache, "decode_workers", lambda: 2)
    parallel = ready(kind.make(tmp_path / "data", cache="memory"))
    assert decoded_files == []  # not decoded in this process
    assert_equal(items(parallel.val_set), expected)
    # An unreadable file found by a worker is the same one-line error: a PNG cut in the
    # middle with its IEND put back, which the header scan lets through.
    broken = next((tmp_path / "data").rglob("*.jpg"))
    buffer = io.BytesIO()
    Image.open(broken).save(buffer, "PNG")
    data = buffer.getvalue()
    broken.write_bytes(data[: len(data) // 2] + data[-12:])
    with pytest.raises(SeglabError, match=rf"^cannot read image {re.escape(str(broken))} "):
        ready(kind.make(tmp_path / "data", cache="memory"))


def _write_cifar(root: Path) -> None:
    """Five training batches and a test batch of 20 random images each."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rng = np.random.default_rng(i)
        batch = {
            b"data": rng.integers(0, 256, (20, 3072), np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, 20)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


@pytest.mark.parametrize("image_size", [32, 40])
def test_cifar10_disk_cache_unpickles_once_and_equals_the_arrays(tmp_path, monkeypatch, image_size):
    _write_cifar(tmp_path)
    unpickled: list[Path] = []
    original = cifar10._unpickle
    monkeypatch.setattr(cifar10, "_unpickle", lambda p: (unpickled.append(p), original(p))[1])
    make = lambda mode: ready(  # noqa: E731
        CIFAR10DataModule(
            tmp_path, val_size=10, image_size=image_size, cache=mode, cache_dir=tmp_path / "c"
        )
    )
    first = make("disk")
    assert len(unpickled) == 6
    unpickled.clear()
    second = make("disk")
    assert unpickled == []
    plain = make("none")
    for split in ("val_set", "test_set"):
        assert_equal(items(getattr(second, split)), items(getattr(plain, split)))
    assert_equal(items(first.train_set), items(second.train_set))
    assert first.train_set[0][0].shape == (3, image_size, image_size)
    assert first.train_set[0][0].dtype == torch.uint8 and second.train_batch_transform is not None


def test_check_data_reports_what_each_split_would_take_cached(tmp_path):
    write_pairs(tmp_path / "pairs")
    result = scan(_folder(tmp_path / "pairs"))
    for split, stems in PAIRS.items():
        pixels = sum(h * w for h, w in stems.values())
        assert result["splits"][split]["cache_bytes"] == 4 * pixels + 32 * len(stems)
    assert result["cache_bytes"] == sum(s["cache_bytes"] for s in result["splits"].values())
    assert "decoded cache (data.cache=memory or disk)" in format_report(result)
    written = write_photos(tmp_path / "photos")
    result = scan(_photos(tmp_path / "photos"))
    assert result["cache_bytes"] == len(written) * (3 * SIZE * SIZE + 8)


def test_cache_settings(tmp_path, monkeypatch):
    photos = lambda **kw: _photos(tmp_path, class_names=CLASSES, **kw)  # noqa: E731
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert photos().cache_dir == tmp_path / "xdg" / "seglab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert photos().cache_dir == Path.home() / ".cache" / "seglab"
    assert photos(cache_dir="~/here").cache_dir == Path.home() / "here"
    with pytest.raises(SeglabError, match=r"data.cache='ram' is not one of \['none', 'memory'"):
        photos(cache="ram")


class Interrupt(Exception):
    """Stands for a crash or a pre-empted job."""


class InterruptAfterFirstEpoch(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            raise Interrupt


def test_a_resumed_run_on_a_cache_ends_like_an_uninterrupted_one(make_cfg, tmp_path):
    """As tests/test_scale.py's resume test, with the classifier trained on a disk cache:
    the batches and their augmentation after the restart are those of an uninterrupted run."""
    write_photos(tmp_path / "data", per_class=9)
    common = [
        "experiment=folder_cnn",
        f"data.root={tmp_path / 'data'}",
        "data.cache=disk",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=4",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_model_summary=false",
        "logger=none",
    ]
    whole = train(make_cfg(*common, tiny=False, output_dir=tmp_path / "whole"))
    run_dir = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        train(
            make_cfg(
                *common,
                f"+callbacks.interrupt._target_={__name__}.InterruptAfterFirstEpoch",
                tiny=False,
                output_dir=run_dir,
            )
        )
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    resumed = train(make_cfg(*common, "ckpt_path=last", tiny=False, output_dir=run_dir))
    for name in ("val/acc", "test/acc", "test/loss", "train/loss_epoch"):
        assert resumed[name] == pytest.approx(whole[name], rel=1e-6, abs=1e-7), name


@pytest.mark.slow
def test_two_ddp_processes_map_one_disk_cache_built_once(tmp_path):
    write_photos(tmp_path / "data", per_class=6)
    run_dir = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.train",
            "experiment=folder_cnn",
            f"data.root={tmp_path / 'data'}",
            "data.cache=disk",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.batch_size=4",
            "trainer=ddp_cpu",
            "trainer.max_epochs=1",
            "logger=none",
            "report=false",  # the report maps the val cache once more
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    assert output.count("building the data cache") == 2, output[-4000:]  # train, val
    # Each split's cache is mapped by setup() on both ranks (4), and the val split's checked
    # again by the test stage's prepare_data() on rank 0 (test is val here).
    assert output.count("nothing to decode") == 5, output[-4000:]
    assert len(folders(tmp_path / "cache", "train")) == 1
    # The test metric the two ranks gathered is the accuracy of the best checkpoint on every
    # test image once (no test/ folder: the val images), computed here in one process
    # from the files, without a cache.
    record = json.loads((run_dir / "metrics.json").read_text())
    module = load_module(record["best_model_path"])
    data = ready(_photos(tmp_path / "data", image_size=32, cache="none"))
    images, labels = torch.utils.data.default_collate(items(data.test_set))
    with torch.no_grad():
        accuracy = (module(images).argmax(1) == labels).float().mean().item()
    assert len(labels) == 4 and record["metrics"]["test/acc"] == pytest.approx(accuracy, abs=1e-6)
