"""The header scan of `setup()`: files that are no whole image, masks the decoding cannot
read and image/mask pairs of different sizes stop a run before its first training step,
every one named in one error; a disk cache built for the same files skips the scan."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.config import compose
from seglab.data import headers
from seglab.data.folder import FolderDataModule
from seglab.data.headers import read_header
from seglab.data.image_folder import ImageFolderDataModule
from seglab.errors import SeglabError
from seglab.modules import SegmentationModule
from seglab.train import train

CLASSES = ["background", "road", "car"]
SIZE = (24, 32)  # (height, width)


def encoded(image: Image.Image, image_format: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **kwargs)
    return buffer.getvalue()


def noise(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
    return Image.fromarray(pixels)


def write_pairs(root: Path, stems: dict[str, list[str]]) -> Path:
    """Noise images (PNG) and class-index masks (mode L) under images/<split>/ and
    masks/<split>/."""
    for split, names in stems.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i, stem in enumerate(names):
            noise(i).save(root / "images" / split / f"{stem}.png")
            labels = (np.arange(SIZE[0] * SIZE[1]).reshape(SIZE) % 3).astype(np.uint8)
            Image.fromarray(labels, mode="L").save(root / "masks" / split / f"{stem}.png")
    return root


def plant(root: Path) -> list[Path]:
    """Four bad files, one kind each, spread over the splits: a truncated JPEG image, a
    file that is no image, an RGB mask (the datamodule has no palette), a mask of
    another size. Returns them."""
    truncated = root / "images" / "train" / "b.jpg"
    (root / "images" / "train" / "b.png").unlink()
    whole = encoded(noise(7), "JPEG")
    truncated.write_bytes(whole[: len(whole) // 2])
    not_image = root / "images" / "train" / "c.png"
    not_image.write_text("not an image\n")
    rgb_mask = root / "masks" / "val" / "e.png"
    noise(8).save(rgb_mask)
    wrong_size = root / "masks" / "test" / "g.png"
    Image.new("L", (SIZE[1] + 8, SIZE[0])).save(wrong_size)
    return [truncated, not_image, rgb_mask, wrong_size]


@pytest.fixture
def bad_root(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = write_pairs(
        tmp_path / "data", {"train": ["a", "b", "c", "d"], "val": ["e", "f"], "test": ["g"]}
    )
    return root, plant(root)


def assert_names_all(err: SeglabError, planted: list[Path]) -> None:
    """A summary line counting the bad files, then one line naming each."""
    first, *lines = str(err).splitlines()
    assert first.startswith(f"{len(planted)} files of data.root=")
    assert "fail the header check at setup" in first
    assert len(lines) == len(planted)
    for path in planted:
        assert sum(str(path) in line for line in lines) == 1, path
    text = str(err)
    assert f"cannot read image {planted[0]} (train split): " in text
    assert f"cannot read image {planted[1]} (train split): cannot identify image file" in text
    assert f"mask {planted[2]} (val split) is a RGB image" in text
    assert "is 40x24 (W x H, test split), another aspect ratio" in text


@pytest.mark.parametrize("cache", ["none", "memory", "disk"])
def test_setup_names_every_bad_file_at_once(bad_root, tmp_path, cache):
    root, planted = bad_root
    dm = FolderDataModule(root, CLASSES, 3, crop_size=16, cache=cache, cache_dir=tmp_path / "c")
    with pytest.raises(SeglabError) as caught:
        dm.prepare_data()  # builds the disk cache: the scan comes first
        dm.setup("fit")
    assert_names_all(caught.value, planted)
    assert not list((tmp_path / "c").rglob("*.npy"))  # nothing decoded into a cache


def test_training_stops_before_its_first_step(bad_root, tmp_path, monkeypatch):
    root, planted = bad_root
    steps = []
    original = SegmentationModule.training_step

    def counted(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SegmentationModule, "training_step", counted)
    cfg = compose(
        [
            "data=folder",
            f"data.root={root}",
            f"data.class_names=[{','.join(CLASSES)}]",
            "data.num_classes=3",
            "data.crop_size=32",
            "data.batch_size=2",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.enable_model_summary=false",
            "logger=none",
        ],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(SeglabError) as caught:
        train(cfg)
    assert_names_all(caught.value, planted)
    assert steps == []
    assert not list((tmp_path / "run").rglob("*.ckpt"))
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["status"] == "failed"


def test_image_folder_names_every_unreadable_image(tmp_path, caplog):
    for split, count in (("train", 3), ("val", 1)):
        for name in ("ant", "bee"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                noise(i).save(tmp_path / split / name / f"{i}.png")
    truncated = tmp_path / "train" / "ant" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:100])
    not_image = tmp_path / "val" / "bee" / "0.jpg"
    not_image.write_bytes(b"\x00" * 50)
    with pytest.raises(SeglabError, match=r"^2 files of data.root=") as caught:
        ImageFolderDataModule(tmp_path, cache="none").setup("fit")
    assert f"cannot read image {truncated} (train split)" in str(caught.value)
    assert f"cannot read image {not_image} (val split)" in str(caught.value)
    # skip_corrupt: a warning naming them; the loader leaves them out as they fail.
    with caplog.at_level(logging.WARNING, logger="seglab.data.image_folder"):
        dm = ImageFolderDataModule(tmp_path, cache="none", skip_corrupt=True)
        dm.setup("fit")
    assert "2 images are unreadable" in caplog.text
    assert str(truncated) in caplog.text and str(not_image) in caplog.text


def test_a_built_disk_cache_skips_the_scan(tmp_path, monkeypatch):
    root = write_pairs(tmp_path / "data", {"train": ["a", "b"], "val": ["c"]})
    read = []
    original = headers.read_header

    def counted(path):
        read.append(Path(path))
        return original(path)

    monkeypatch.setattr(headers, "read_header", counted)

    def ready() -> FolderDataModule:
        dm = FolderDataModule(
            root, CLASSES, 3, crop_size=16, cache="disk", cache_dir=tmp_path / "c"
        )
        dm.prepare_data()
        dm.setup("fit")
        return dm

    ready()
    assert len(read) == 6  # every image and mask, once, before the cache is built
    read.clear()
    dm = ready()
    assert read == []  # decoded into the cache already
    assert dm.val_set[0][0].shape[-2:] == (24, 32)  # from the cache, at its own size
    noise(9).save(root / "images" / "val" / "c.png")  # changed: scanned and decoded again
    ready()
    assert len(read) == 6


def test_the_end_check_finds_truncation_and_spares_whole_files(tmp_path):
    image = noise(0)
    png, jpeg = encoded(image, "PNG"), encoded(image, "JPEG")
    cases = {
        "whole.png": (png, None),
        "whole.jpg": (jpeg, None),
        # Data after the end marker (a phone's motion photo): it decodes, so it passes.
        "trailer.jpg": (jpeg + b"\x00" * 5000, None),
        # No IEND chunk but every pixel there: it decodes, so it passes.
        "no_iend.png": (png[:-12], None),
        "cut.png": (png[: len(png) // 2], "truncated"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "cut.webp": (encoded(image, "WEBP")[:-20], ""),  # PIL's message varies
        "text.png": (b"hello", "cannot identify image file"),
    }
    for name, (data, error) in cases.items():
        (tmp_path / name).write_bytes(data)
        header = read_header(tmp_path / name)
        if error is None:
            assert header.error is None, name
            assert (header.width, header.height, header.mode) == (32, 24, "RGB")
        else:
            assert header.error is not None and error in header.error.lower(), (name, header.error)
    assert read_header(tmp_path / "missing.png").error.startswith("[Errno 2]")


@pytest.mark.parametrize("io_bound", [False, True])
def test_headers_come_back_in_order_in_this_thread_or_a_pool(tmp_path, monkeypatch, io_bound):
    """Files that open fast are read in this thread; files whose opening waits on the
    disk (forced here) by a pool of threads; either way every header, in order."""
    monkeypatch.setattr(headers, "CHUNK", 4)
    monkeypatch.setattr(headers, "IO_BOUND_S", 0.0 if io_bound else 1.0)
    readers: dict[str, threading.Thread] = {}
    original = headers.read_header

    def recorded(path):
        readers[Path(path).name] = threading.current_thread()
        return original(path)

    monkeypatch.setattr(headers, "read_header", recorded)
    paths = []
    for i in range(11):
        path = tmp_path / f"{i:02d}.png"
        Image.new("RGB", (5 + i, 3)).save(path)
        paths.append(path)
    (tmp_path / "07.png").write_bytes(b"not an image")
    found = headers.read_headers(paths)
    assert [h.width for h in found] == [5 + i if i != 7 else 0 for i in range(11)]
    assert found[7].error == "cannot identify image file"
    # The first CHUNK files are timed in this thread; the other 7 go to the pool when
    # opening them waits on the disk, else they stay here too.
    main = threading.main_thread()
    assert len(readers) == 11 and all(readers[p.name] is main for p in paths[:4])
    pooled = {p.name for p in paths[4:] if readers[p.name] is not main}
    assert pooled == ({p.name for p in paths[4:]} if io_bound else set())
