"""A dataset as people have it: binary masks saved as JPEG, photos at another resolution
than their masks. A threshold reads the masks, a resize brings each photo to its mask's
grid; what cannot be paired is refused in one line that says why and what to set."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.config import compose
from seglab.data.folder import FolderDataModule
from seglab.errors import SeglabError
from seglab.train import train

# (photo size, mask size), (width, height) each: larger, smaller, equal; one aspect each.
SIZES = [((96, 64), (48, 32)), ((24, 16), (48, 32)), ((48, 32), (48, 32))]


def _horses(root: Path, sizes=SIZES) -> Path:
    """Train and val pairs: photos at their size, 0/255 masks (a right-hand block) as JPEG."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i, (photo, mask_size) in enumerate(sizes):
            width, height = mask_size
            mask = np.zeros((height, width), np.uint8)
            mask[:, width // 2 :] = 255
            Image.fromarray(mask).save(root / "masks" / split / f"h{i}.jpg", quality=70)
            pixels = rng.integers(0, 256, (photo[1], photo[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"h{i}.jpg")
    return root


def test_jpeg_masks_are_read_by_the_threshold_and_photos_resized_to_their_masks(tmp_path):
    root = _horses(tmp_path / "horses")
    dm = FolderDataModule(
        root,
        ["background", "horse"],
        2,
        crop_size=32,
        mask_threshold=128,
        resize_images=True,
        label_map={},
        cache="none",
    )
    dm.setup("fit")
    for i, (_, (width, height)) in enumerate(SIZES):
        image, labels = dm.val_set.load(i)
        assert tuple(image.shape) == (3, height, width)  # the photo on the mask's grid
        grey = np.asarray(Image.open(root / "masks" / "val" / f"h{i}.jpg").convert("L"))
        np.testing.assert_array_equal(labels.numpy(), (grey >= 128).astype(np.uint8))
        assert set(np.unique(labels.numpy())) == {0, 1}
    # The big photo is shrunk with antialiasing: its pixels average the photo's blocks.
    photo = np.asarray(Image.open(root / "images" / "val" / "h0.jpg").convert("RGB"), float)
    image, _ = dm.val_set.load(0)
    block = photo[:2, :2].mean(axis=(0, 1))
    assert np.abs(image[:, 0, 0].numpy() - block).max() < 40


def test_threshold_and_resize_train_end_to_end(tmp_path):
    root = _horses(tmp_path / "horses")
    cfg = compose(
        [
            "data=folder",
            f"data.root={root}",
            "data.class_names=[background,horse]",
            "data.num_classes=2",
            "data.mask_threshold=128",
            "data.resize_images=true",
            "data.crop_size=32",
            "data.batch_size=2",
            "trainer.fast_dev_run=true",
            "trainer.accelerator=cpu",
            "trainer.enable_model_summary=false",
            "logger=none",
            "report=false",
        ],
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["test/mIoU"])
    # Each split's images, written down in the run directory, relative to data.root.
    splits = tmp_path / "run" / "splits"
    for split in ("train", "val"):
        names = (splits / f"{split}.txt").read_text().splitlines()
        assert names == [f"images/{split}/h{i}.jpg" for i in range(len(SIZES))]
    assert not (splits / "test.txt").exists()  # testing reuses val: no list of its own


def test_a_jpeg_mask_is_named_as_jpeg_with_the_threshold_fix_not_as_missing(tmp_path):
    root = _horses(tmp_path / "horses", sizes=[((48, 32), (48, 32))] * 2)
    with pytest.raises(SeglabError) as caught:
        FolderDataModule(root, ["background", "horse"], 2, crop_size=32).setup("fit")
    message = str(caught.value)
    assert "2 masks in" in message and "are JPEG files (h0.jpg, h1.jpg)" in message
    assert "data.mask_threshold=128" in message
    assert "has no mask" not in message


def test_other_aspect_ratio_is_refused_even_with_resizing(tmp_path):
    root = _horses(tmp_path / "horses", sizes=[((48, 48), (48, 32)), ((48, 32), (48, 32))])
    dm = FolderDataModule(
        root, ["background", "horse"], 2, crop_size=32, mask_threshold=128, resize_images=True
    )
    with pytest.raises(SeglabError, match="another aspect ratio, so no resize can pair them"):
        dm.setup("fit")


def test_a_size_mismatch_of_one_aspect_ratio_suggests_the_resize(tmp_path):
    root = _horses(tmp_path / "horses")
    dm = FolderDataModule(root, ["background", "horse"], 2, crop_size=32, mask_threshold=128)
    with pytest.raises(SeglabError, match="data.resize_images=true resizes each image"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 3, "class_names": ["a", "b", "c"]}, "reads binary masks"),
        ({"mask_threshold": 0}, r"must be in \[1, 255\]"),
    ],
)
def test_bad_threshold_settings(tmp_path, kwargs, message):
    kwargs = {"class_names": ["a", "b"], "num_classes": 2, "mask_threshold": 128, **kwargs}
    with pytest.raises(SeglabError, match=message):
        FolderDataModule(tmp_path, crop_size=32, **kwargs)


def test_check_data_names_jpeg_masks_once_each_with_the_fix(tmp_path):
    root = _horses(tmp_path / "horses", sizes=[((48, 32), (48, 32))] * 2)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.check_data",
            "data=folder",
            f"data.root={root}",
            "data.class_names=[background,horse]",
            "data.num_classes=2",
            "num_workers=0",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    text = "\n".join(report["problems"])
    for stem in ("h0", "h1"):  # train and val: each JPEG mask once, as a JPEG
        assert text.count(f"train/{stem}.jpg") == 1, text
        assert text.count(f"val/{stem}.jpg") == 1, text
    assert "has no mask" not in text and "data.mask_threshold=128" in text
