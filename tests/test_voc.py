"""VOCDataModule on a tiny Pascal VOC 2012 tree written into tmp_path (never downloaded)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from seglab.config import CONFIG_DIR
from seglab.data.base import default_palette
from seglab.data.voc import VOC_CLASSES, VOCDataModule
from seglab.errors import SeglabError
from seglab.train import train

SIZE = (48, 64)  # (height, width)
SPLITS = {
    "train": ["2007_000032", "2007_000039", "2008_000002"],
    "val": ["2007_000033", "2009_000001"],
}
# One hand-made val mask: classes 0, 1, 15 (person), 20 and the void value 255.
MASK_ROWS = np.array([[0, 1, 15, 255], [20, 255, 7, 0]], np.uint8)


def voc_dir(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"


def write_mask(path: Path, labels: np.ndarray) -> None:
    """A VOC-style palette PNG: the pixel index is the class, the palette VOC's colours."""
    mask = Image.fromarray(labels, mode="P")
    mask.putpalette([v for colour in default_palette(256) for v in colour])
    mask.save(path)


def write_voc(root: Path, splits: dict[str, list[str]] = SPLITS, seed: int = 0) -> Path:
    """JPEG images, palette masks of blocky random classes inside a 2-pixel void border
    (255), and one list file per split; the first val mask gets MASK_ROWS in its corner."""
    rng = np.random.default_rng(seed)
    voc = voc_dir(root)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    height, width = SIZE
    for split, ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for image_id in ids:
            image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            cells = rng.integers(0, 21, size=(height // 8, width // 8), dtype=np.uint8)
            labels = np.kron(cells, np.ones((8, 8), np.uint8))
            labels[:2], labels[-2:], labels[:, :2], labels[:, -2:] = 255, 255, 255, 255
            write_mask(voc / "SegmentationClass" / f"{image_id}.png", labels)
    first_val = voc / "SegmentationClass" / f"{splits['val'][0]}.png"
    labels = np.array(Image.open(first_val))
    labels[2:4, 2:6] = MASK_ROWS
    write_mask(first_val, labels)
    return root


def datamodule(root: Path, **kwargs) -> VOCDataModule:
    dm = VOCDataModule(root, **{"crop_size": 32, "batch_size": 2, **kwargs})
    dm.setup("fit")
    return dm


def test_config_downloads_nothing_unless_asked():
    assert OmegaConf.load(CONFIG_DIR / "data" / "voc.yaml").download is False


def test_splits_shapes_and_masks_pixel_by_pixel(tmp_path):
    root = write_voc(tmp_path)
    dm = datamodule(root, cache="none")  # per-sample training crops
    assert [len(dm.train_set), len(dm.val_set)] == [3, 2]
    assert dm.test_set is dm.val_set  # VOC has no public test masks
    assert [image.stem for image, _ in dm.val_set.pairs] == SPLITS["val"]

    image, mask = dm.train_set[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.int64 and mask.shape == (32, 32)
    assert set(mask.unique().tolist()) <= set(range(21)) | {255}

    image, mask = dm.val_set[0]  # full resolution, unpadded (predict pads per batch)
    assert image.shape == (3, *SIZE) and mask.shape == SIZE

    _, labels = dm.val_set.load(0)
    written = np.array(Image.open(voc_dir(root) / "SegmentationClass" / "2007_000033.png"))
    np.testing.assert_array_equal(labels.numpy(), written)  # the index, void 255 kept
    np.testing.assert_array_equal(labels.numpy()[2:4, 2:6], MASK_ROWS)
    assert (labels.numpy()[:2] == 255).all()


def test_palette_is_vocs_colour_map(tmp_path):
    """Predictions are coloured like the dataset's masks: VOC's own colours."""
    dm = VOCDataModule(tmp_path)
    assert dm.palette == default_palette(21)
    assert dm.palette[0] == (0, 0, 0) and dm.palette[1] == (128, 0, 0)  # aeroplane
    assert dm.palette[15] == (192, 128, 128)  # person
    assert dm.palette[20] == (0, 64, 128)  # tvmonitor


def test_another_ignore_index_renumbers_the_void(tmp_path):
    root = write_voc(tmp_path)
    _, labels = datamodule(root, ignore_index=254).val_set.load(0)
    np.testing.assert_array_equal(labels.numpy()[2, 2:6], [0, 1, 15, 254])
    assert 255 not in labels.unique().tolist()


def test_train_end_to_end(make_cfg, tmp_path, fast_run):
    root = write_voc(tmp_path / "data")
    cfg = make_cfg(
        "data=voc",
        f"data.root={root}",
        "data.crop_size=64",
        "data.batch_size=2",
        "model=unet",
        *fast_run,
        tiny=False,
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["test/loss"]) and 0.0 <= metrics["test/mIoU"] <= 1.0


def test_missing_tree_is_a_one_line_error_with_the_fix(tmp_path):
    with pytest.raises(SeglabError) as err:
        datamodule(tmp_path / "nope")
    message = str(err.value)
    assert "\n" not in message
    assert f"data.root={tmp_path / 'nope'} has no VOCdevkit/VOC2012" in message
    assert "JPEGImages/<id>.jpg" in message and "SegmentationClass/<id>.png" in message
    assert "data.download=true" in message


def test_prepare_data_downloads_only_when_asked(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        "seglab.data.voc.VOCSegmentation", lambda *args, **kwargs: calls.append((args, kwargs))
    )
    VOCDataModule(tmp_path / "voc").prepare_data()
    assert calls == [] and not (tmp_path / "voc").exists()

    VOCDataModule(tmp_path / "voc", download=True).prepare_data()
    assert calls == [
        ((str(tmp_path / "voc"),), {"year": "2012", "image_set": "train", "download": True})
    ]
    root = write_voc(tmp_path / "there")
    VOCDataModule(root, download=True).prepare_data()  # already there: no download
    assert len(calls) == 1


def test_list_naming_a_missing_image(tmp_path):
    root = write_voc(tmp_path)
    (voc_dir(root) / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(
        SeglabError,
        match=r"train.txt lists 1 ids whose image is missing, e.g. .*JPEGImages/2007_000039.jpg",
    ):
        datamodule(root)


def test_missing_list_file_names_it_and_the_lists_found(tmp_path):
    root = write_voc(tmp_path)
    with pytest.raises(
        SeglabError,
        match=r"train_aug.txt does not exist \(data.train_split=train_aug\); "
        r"lists found: \['train', 'val'\]",
    ):
        datamodule(root, train_split="train_aug")


def test_class_names_must_be_vocs(tmp_path):
    names = [*VOC_CLASSES[:15], "people", *VOC_CLASSES[16:]]
    message = r"'people'.*differ from the Pascal VOC classes.*'person'.*index 15"
    with pytest.raises(SeglabError, match=message):
        VOCDataModule(tmp_path, class_names=names, num_classes=21)


def test_check_splits_reports_every_problem_by_name(tmp_path):
    root = write_voc(tmp_path)
    voc = voc_dir(root)
    (voc / "JPEGImages" / "2007_000039.jpg").unlink()  # train: image missing
    (voc / "SegmentationClass" / "2009_000001.png").unlink()  # val: mask missing
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("2007_000032\n2007_000039\n2008_000002\nghost\n")
    (lists / "val.txt").write_text("2007_000033\n2009_000001\n2008_000002\n")  # in train too
    bad = np.zeros(SIZE, np.uint8)
    bad[5, 5] = 42
    write_mask(voc / "SegmentationClass" / "2007_000032.png", bad)

    datasets, problems = VOCDataModule(root).check_splits()
    assert set(datasets) == {"train", "val"}  # test is val: left out
    joined = "\n".join(problems)
    for name in (
        "JPEGImages/2007_000039.jpg",
        "SegmentationClass/2009_000001.png",
        "JPEGImages/ghost.jpg",
        "SegmentationClass/ghost.png",
        "2008_000002",
    ):
        assert name in joined, name
    assert len(problems) == 5, problems
    assert [p[0].stem for p in datasets["train"].pairs] == ["2007_000032", "2008_000002"]
    assert [p[0].stem for p in datasets["val"].pairs] == ["2007_000033", "2008_000002"]

    image, mask = datasets["val"][0]  # as stored: uint8, unpadded, void kept
    assert image.dtype == torch.uint8 and image.shape == (3, *SIZE)
    assert mask.dtype == torch.int64 and mask.shape == SIZE
    np.testing.assert_array_equal(mask.numpy()[2:4, 2:6], MASK_ROWS)
    with pytest.raises(SeglabError, match=r"mask .*2007_000032.png \(train split\) has value 42"):
        datasets["train"][0]
