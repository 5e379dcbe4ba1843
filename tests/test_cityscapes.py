"""CityscapesDataModule on a tiny leftImg8bit/gtFine tree written into tmp_path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from seglab.config import CONFIG_DIR
from seglab.data.cityscapes import CITYSCAPES_CLASSES, CityscapesDataModule
from seglab.errors import SeglabError
from seglab.train import train

SIZE = (32, 64)  # (height, width): Cityscapes' 1:2 aspect
CITIES = {
    "train": {"aachen": ["000000_000019", "000001_000019"], "bremen": ["000000_000019"]},
    "val": {"frankfurt": ["000000_000294", "000001_000058"]},
}
# Label ID -> train ID, from cityscapesScripts' labels.py (written out, not imported).
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10}
TRAIN_IDS |= {24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
VALID_IDS = np.array(sorted(TRAIN_IDS), np.uint8)


def paths(root: Path, split: str, city: str, frame: str) -> tuple[Path, Path]:
    stem = f"{city}_{frame}"
    return (
        root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
        root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
    )


def write_cityscapes(root: Path, cities: dict = CITIES, seed: int = 0) -> Path:
    """Random images and labelIds masks (blocky, every train ID in each), plus the colour and
    instance files of gtFine that must not be read as masks."""
    rng = np.random.default_rng(seed)
    height, width = SIZE
    for split, by_city in cities.items():
        for city, frames in by_city.items():
            for frame in frames:
                image_path, mask_path = paths(root, split, city, frame)
                image_path.parent.mkdir(parents=True, exist_ok=True)
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                Image.fromarray(image).save(image_path)
                cells = rng.choice(VALID_IDS, size=(height // 8, width // 8))
                cells.flat[: len(VALID_IDS)] = VALID_IDS  # every class in every split
                Image.fromarray(np.kron(cells, np.ones((8, 8), np.uint8))).save(mask_path)
                stem = mask_path.name.removesuffix("_labelIds.png")
                Image.new("RGB", (width, height)).save(mask_path.with_name(f"{stem}_color.png"))
                instances = np.full((height, width), 26001, np.uint16)  # 16-bit
                Image.fromarray(instances).save(mask_path.with_name(f"{stem}_instanceIds.png"))
    return root


def datamodule(root: Path, **kwargs) -> CityscapesDataModule:
    dm = CityscapesDataModule(root, **{"crop_size": 32, "batch_size": 2, **kwargs})
    dm.setup("fit")
    return dm


def test_config_tests_on_val_by_default():
    """The public test masks carry no labels."""
    cfg = OmegaConf.load(CONFIG_DIR / "data" / "cityscapes.yaml")
    assert cfg.crop_size == 512 and cfg.test_split == "val"


def test_label_ids_become_train_ids_pixel_by_pixel(tmp_path):
    root = write_cityscapes(tmp_path)
    image_path, mask_path = paths(root, "val", "frankfurt", "000000_000294")
    labels = np.zeros(SIZE, np.uint8)
    labels[0, :5] = [7, 26, 0, 33, 5]
    labels[1, :34] = np.arange(34)  # every label ID
    Image.fromarray(labels).save(mask_path)
    dm = datamodule(root)
    assert dm.val_set.pairs[0] == (image_path, mask_path)
    _, mask = dm.val_set.load(0)
    np.testing.assert_array_equal(mask.numpy()[0, :5], [0, 13, 255, 18, 255])
    expected = [TRAIN_IDS.get(label_id, 255) for label_id in range(34)]
    np.testing.assert_array_equal(mask.numpy()[1, :34], expected)
    assert (mask.numpy()[2:] == 255).all()  # label ID 0 (unlabeled) is void


def test_two_cities_shapes_and_palette(tmp_path):
    root = write_cityscapes(tmp_path)
    dm = datamodule(root, cache="none")  # per-sample training crops
    assert [p[0].name for p in dm.train_set.pairs] == [
        "aachen_000000_000019_leftImg8bit.png",
        "aachen_000001_000019_leftImg8bit.png",
        "bremen_000000_000019_leftImg8bit.png",
    ]
    assert all(p[1].name.endswith("_gtFine_labelIds.png") for p in dm.train_set.pairs)
    assert len(dm.val_set) == 2 and dm.test_set is dm.val_set

    image, mask = dm.train_set[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert mask.dtype == torch.int64 and set(mask.unique().tolist()) <= set(range(19)) | {255}
    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, *SIZE) and masks.shape == (2, *SIZE)

    assert len(dm.palette) == 19 and len(set(dm.palette)) == 19
    assert dm.palette[0] == (128, 64, 128)  # road
    assert dm.palette[10] == (70, 130, 180)  # sky
    assert dm.palette[13] == (0, 0, 142)  # car
    assert dm.palette[18] == (119, 11, 32)  # bicycle


def test_train_end_to_end(make_cfg, tmp_path, fast_run):
    root = write_cityscapes(tmp_path / "data")
    cfg = make_cfg(
        "data=cityscapes",
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


def test_missing_gtfine_file_is_named(tmp_path):
    root = write_cityscapes(tmp_path)
    _, mask_path = paths(root, "train", "bremen", "000000_000019")
    mask_path.unlink()
    with pytest.raises(SeglabError) as err:
        datamodule(root)
    assert f"e.g. {mask_path} is missing" in str(err.value)


def test_missing_root_says_how_to_get_the_data(tmp_path):
    with pytest.raises(
        SeglabError, match=r"nope has no leftImg8bit/ and gtFine/ folders.*cityscapes-dataset.com"
    ):
        datamodule(tmp_path / "nope")


def test_class_names_must_be_cityscapes(tmp_path):
    names = list(CITYSCAPES_CLASSES)
    names[6] = "traffic_light"
    message = r"'traffic_light'.*differ from the Cityscapes classes.*index 6"
    with pytest.raises(SeglabError, match=message):
        CityscapesDataModule(tmp_path, class_names=names, num_classes=19)


def test_test_split_of_your_own(tmp_path):
    cities = {**CITIES, "mytest": {"lindau": ["000000_000019"]}}
    dm = datamodule(write_cityscapes(tmp_path, cities), test_split="mytest")
    assert len(dm.test_set) == 1 and dm.test_set is not dm.val_set
    with pytest.raises(SeglabError, match=r"test_split=train would test on the training"):
        CityscapesDataModule(tmp_path, test_split="train")


def test_check_splits_reports_every_problem_by_name(tmp_path):
    cities = {**CITIES, "val": {**CITIES["val"], "lindau": ["000000_000019"]}}
    root = write_cityscapes(tmp_path, cities)
    lonely_image, _ = paths(root, "train", "aachen", "000001_000019")
    paths(root, "train", "aachen", "000001_000019")[1].unlink()
    lonely_mask = paths(root, "val", "lindau", "000000_000019")[1]
    paths(root, "val", "lindau", "000000_000019")[0].unlink()
    bad_mask = paths(root, "val", "frankfurt", "000001_000058")[1]
    labels = np.full(SIZE, 7, np.uint8)
    labels[3, 3] = 40
    Image.fromarray(labels).save(bad_mask)

    datasets, problems = CityscapesDataModule(root).check_splits()
    assert set(datasets) == {"train", "val"}  # test_split=val: left out
    assert len(problems) == 2, problems
    assert str(lonely_image) in problems[0] and "has no mask" in problems[0]
    assert str(lonely_mask) in problems[1] and "has no image" in problems[1]
    assert [len(datasets["train"]), len(datasets["val"])] == [2, 2]

    image, mask = datasets["train"][0]  # as stored: uint8, unpadded
    assert image.dtype == torch.uint8 and image.shape == (3, *SIZE)
    assert mask.dtype == torch.int64 and mask.shape == SIZE
    with pytest.raises(
        SeglabError,
        match=r"mask .*frankfurt_000001_000058_gtFine_labelIds.png "
        r"\(val split\) has value 40 .*label IDs 0-33",
    ):
        datasets["val"][1]
