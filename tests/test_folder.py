"""FolderDataModule and its transforms, on small datasets written into tmp_path."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from seglab.config import compose
from seglab.data.base import to_input
from seglab.data.folder import LAYOUT, FolderDataModule, find_splits
from seglab.data.transforms import SegmentationAugment
from seglab.errors import SeglabError
from seglab.train import train

MEAN, STD = FolderDataModule.mean, FolderDataModule.std
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 128, 255)]
CLASSES = ["background", "road", "car"]


def _image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _labels(rng: np.random.Generator, height: int, width: int, num_classes: int) -> np.ndarray:
    """Blocky labels (8x8 cells), so random scaling keeps every class present."""
    cells = rng.integers(0, num_classes, size=(-(-height // 8), -(-width // 8)), dtype=np.uint8)
    return np.kron(cells, np.ones((8, 8), np.uint8))[:height, :width]


def write_dataset(
    root: Path,
    stems: dict[str, list[str]],
    size: tuple[int, int] = (40, 56),
    palette: list[tuple[int, int, int]] | None = None,
    num_classes: int = 3,
    seed: int = 0,
) -> Path:
    """Random images and masks under root/images/<sub>/ and root/masks/<sub>/ for each
    `stems` key (`""`: no sub-folder); index masks alternate modes L and P, palette masks
    are RGB."""
    rng = np.random.default_rng(seed)
    for sub, names in stems.items():
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        (root / "masks" / sub).mkdir(parents=True, exist_ok=True)
        for i, stem in enumerate(names):
            height, width = size
            suffix = (".png", ".jpg")[i % 2]
            Image.fromarray(_image(rng, height, width)).save(
                root / "images" / sub / f"{stem}{suffix}"
            )
            labels = _labels(rng, height, width, num_classes)
            if palette is not None:
                mask = Image.fromarray(np.asarray(palette, np.uint8)[labels])
            elif i % 2:
                mask = Image.fromarray(labels, mode="L").convert("P")
            else:
                mask = Image.fromarray(labels, mode="L")
            mask.save(root / "masks" / sub / f"{stem}.png")
    return root


def datamodule(root: Path, **kwargs) -> FolderDataModule:
    kwargs = {"class_names": CLASSES, "num_classes": 3, "crop_size": 32, **kwargs}
    dm = FolderDataModule(root, **kwargs)
    dm.setup("fit")
    return dm


def subfolder_dataset(root: Path, **kwargs) -> Path:
    names = {"train": ["a", "b", "c"], "val": ["d", "e"], "test": ["f"]}
    return write_dataset(root, names, **kwargs)


def test_index_masks_in_split_subfolders(tmp_path):
    """Sub-folder splits; train samples are crops, eval samples full resolution, unpadded
    (the module pads each batch as `seglab.predict` does) and normalised like `to_input`."""
    root = subfolder_dataset(tmp_path)
    # The per-sample path; test_cache.py shows a cache gives the same samples.
    dm = datamodule(root, cache="none")
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [3, 2, 1]
    assert dm.input_size == (32, 32)

    image, mask = dm.train_set[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.int64 and mask.shape == (32, 32)
    assert type(image) is torch.Tensor and type(mask) is torch.Tensor

    image, mask = dm.val_set[1]  # e.jpg with a mode-P mask
    assert image.shape == (3, 40, 56) and mask.shape == (40, 56)
    raw_image = np.array(Image.open(root / "images" / "val" / "e.jpg").convert("RGB"))
    raw_mask = np.array(Image.open(root / "masks" / "val" / "e.png"))
    assert torch.equal(mask, torch.from_numpy(raw_mask).long())
    assert torch.allclose(image, to_input(raw_image, MEAN, STD))

    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 40, 56) and masks.dtype == torch.int64


def test_palette_masks_decode_pixel_by_pixel_with_list_splits(tmp_path):
    """RGB masks -> class indices by the palette; colours outside it -> ignore_index;
    splits read from train.txt / val.txt (no test.txt: test reuses val)."""
    root = write_dataset(tmp_path, {"": ["p", "q", "r"]}, palette=PALETTE)
    colours = np.array(
        [
            [[0, 0, 0], [255, 0, 0], [0, 128, 255], [9, 9, 9]],
            [[0, 128, 255], [0, 0, 0], [255, 0, 1], [255, 0, 0]],
        ],
        np.uint8,
    )
    Image.fromarray(_image(np.random.default_rng(1), 2, 4)).save(root / "images" / "p.png")
    Image.fromarray(colours).save(root / "masks" / "p.png")
    (root / "train.txt").write_text("q\n# a comment\nr.jpg\n\n")
    (root / "val.txt").write_text("p\n")

    dm = datamodule(root, palette=[list(c) for c in PALETTE])
    assert [pair[0].stem for pair in dm.train_set.pairs] == ["q", "r"]
    assert [pair[0].stem for pair in dm.val_set.pairs] == ["p"]
    assert dm.test_set is dm.val_set
    assert dm.palette == PALETTE

    _, mask = dm.val_set.load(0)
    expected = np.array([[0, 1, 2, 255], [2, 0, 255, 1]], np.uint8)
    np.testing.assert_array_equal(mask.numpy(), expected)
    # The decoded training masks round-trip to the written colours.
    _, mask = dm.train_set.load(0)
    written = np.asarray(Image.open(root / "masks" / "q.png"))
    np.testing.assert_array_equal(np.asarray(PALETTE, np.uint8)[mask.numpy()], written)


def test_ratio_split_is_seeded_disjoint_and_complete(tmp_path):
    root = write_dataset(tmp_path, {"": [f"{i:02d}" for i in range(10)]}, palette=PALETTE)
    splits = find_splits(root, (0.8, 0.1, 0.1), split_seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    stems = [image.stem for s in ("train", "val", "test") for image, _ in splits[s]]
    assert sorted(stems) == [f"{i:02d}" for i in range(10)]
    assert find_splits(root, (0.8, 0.1, 0.1), split_seed=0) == splits
    orders = {
        tuple(p[0].stem for p in find_splits(root, (0.8, 0.1, 0.1), seed)["train"])
        for seed in range(4)
    }
    assert len(orders) > 1

    dm = datamodule(root, palette=PALETTE, split_ratios=[0.6, 0.4, 0.0])
    assert [len(dm.train_set), len(dm.val_set)] == [6, 4] and dm.test_set is dm.val_set
    _, mask = dm.val_set[0]
    assert set(mask.unique().tolist()) <= {0, 1, 2, 255}


def test_label_map_is_applied_after_decoding(tmp_path):
    root = write_dataset(tmp_path, {"train": ["a"], "val": ["b"]}, num_classes=2)
    labels = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [4, 4, 0, 1]], np.uint8)
    Image.fromarray(_image(np.random.default_rng(2), 3, 4)).save(root / "images" / "val" / "b.png")
    Image.fromarray(labels).save(root / "masks" / "val" / "b.png")
    dm = datamodule(root, class_names=["off", "on"], num_classes=2, label_map={2: 1, 3: 255, 4: 0})
    _, mask = dm.val_set.load(0)
    expected = np.array([[0, 1, 1, 255], [255, 1, 1, 0], [0, 0, 0, 1]], np.uint8)
    np.testing.assert_array_equal(mask.numpy(), expected)


def train_transform(crop_size: int, ignore_index: int, mean, std, **kwargs):
    """The per-sample training path of `data=folder` (without a cache)."""
    return SegmentationAugment(crop_size, ignore_index, mean, std, **kwargs).sample


def test_train_crop_pads_small_images_with_ignore_index():
    """40x80 at scale 1 fits the 64 crop as 32x64: the missing rows are ignore_index
    (image 0, i.e. black before normalisation), the rest are labels."""
    transform = train_transform(64, 255, MEAN, STD, scale_range=(1.0, 1.0), hflip=0.0)
    image = tv_tensors.Image(torch.full((3, 40, 80), 200, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(40, 80, dtype=torch.uint8))
    out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
    assert out_mask.shape == (64, 64) and out_mask.dtype == torch.int64
    assert int((out_mask == 255).sum()) == 64 * 64 - 32 * 64
    assert int((out_mask == 1).sum()) == 32 * 64
    black = (torch.zeros(3) - torch.tensor(MEAN)) / torch.tensor(STD)
    padded = out_image.permute(1, 2, 0)[out_mask == 255]
    assert torch.allclose(padded, black.expand_as(padded))


def test_random_scaling_never_invents_labels():
    """Masks are resized with nearest interpolation: with labels 0, 3, 7 (any blend of
    them would be a new value) and void, no other value appears at any scale."""
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(48, 48))
    transform = train_transform(40, 255, MEAN, STD, scale_range=(0.3, 3.0), hflip=0.5)
    image = tv_tensors.Image(torch.from_numpy(_image(rng, 48, 48)).permute(2, 0, 1))
    torch.manual_seed(0)
    seen: set[int] = set()
    for _ in range(30):
        _, mask = transform(image, tv_tensors.Mask(torch.from_numpy(labels)))
        seen |= set(mask.unique().tolist())
    assert seen == {0, 3, 7, 255}


def test_color_jitter_changes_the_image_only():
    rng = np.random.default_rng(0)
    image = tv_tensors.Image(torch.from_numpy(_image(rng, 32, 32)).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.from_numpy(_labels(rng, 32, 32, 3)))
    plain = train_transform(32, 255, MEAN, STD, scale_range=(1.0, 1.0), hflip=0.0)
    jitter = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.3}
    jittered = train_transform(
        32, 255, MEAN, STD, scale_range=(1.0, 1.0), hflip=0.0, color_jitter=jitter
    )
    torch.manual_seed(0)
    plain_image, plain_mask = plain(image, mask)
    jit_image, jit_mask = jittered(image, mask)
    assert torch.equal(plain_mask, mask.long()) and torch.equal(jit_mask, mask.long())
    assert not torch.allclose(plain_image, jit_image)
    assert torch.allclose(plain_image, to_input(image.permute(1, 2, 0).numpy(), MEAN, STD))
    with pytest.raises(SeglabError, match=r"color_jitter has unknown keys \['gamma'\]"):
        train_transform(32, 255, MEAN, STD, color_jitter={"gamma": 0.1})


def test_eval_transform_is_to_input():
    image = _image(np.random.default_rng(3), 37, 51)
    labels = np.arange(37 * 51, dtype=np.int64).reshape(37, 51) % 3
    out_image, out_mask = SegmentationAugment(8, 255, MEAN, STD).evaluate(
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
        tv_tensors.Mask(torch.from_numpy(labels.astype(np.uint8))),
    )
    assert torch.allclose(out_image, to_input(image, MEAN, STD))
    assert torch.equal(out_mask, torch.from_numpy(labels))


# --- Mistakes in the data: one SeglabError naming the file and the fix. ---


def test_missing_root(tmp_path):
    with pytest.raises(SeglabError, match=r"data.root=.*nope does not exist.*ROOT/images"):
        datamodule(tmp_path / "nope")


def test_root_without_images_and_masks(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SeglabError, match=r"has no images/ and masks/ folders; expected ROOT"):
        datamodule(tmp_path)


def test_root_without_pairs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(SeglabError, match=r"found no image/mask pairs in .*expected ROOT"):
        datamodule(tmp_path)


def test_images_without_masks(tmp_path):
    root = subfolder_dataset(tmp_path)
    for stem in ("a", "c"):
        next((root / "masks" / "train").glob(f"{stem}.*")).unlink()
    with pytest.raises(SeglabError, match=r"2 images in .*train have no mask .*\(a.png, c.png\)"):
        datamodule(root)


def test_masks_without_images(tmp_path):
    root = subfolder_dataset(tmp_path)
    next((root / "images" / "val").glob("e.*")).unlink()
    with pytest.raises(SeglabError, match=r"1 masks in .*masks/val have no image .*\(e.png\)"):
        datamodule(root)


def test_list_file_with_unknown_name(tmp_path):
    root = write_dataset(tmp_path, {"": ["p", "q"]})
    (root / "train.txt").write_text("p\nzz\n")
    (root / "val.txt").write_text("q\n")
    with pytest.raises(SeglabError, match=r"train.txt lists 1 names with no image/mask .*\(zz\)"):
        datamodule(root)


def cut_keeping_the_end(path: Path) -> None:
    """Rewrite the image at `path` as a PNG cut in the middle with its IEND chunk put
    back: the header and end look whole, only decoding finds it truncated."""
    buffer = io.BytesIO()
    Image.open(path).save(buffer, "PNG")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2] + data[-12:])


def test_corrupt_image_is_named_with_its_split(tmp_path):
    root = subfolder_dataset(tmp_path)
    (root / "images" / "train" / "b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "images" / "test" / "f.png").write_bytes(b"garbage")
    # The header scan of setup() names both, with and without a cache.
    for cache in ("memory", "none"):
        with pytest.raises(SeglabError, match=r"^2 files of data.root=.* fail the header") as err:
            datamodule(root, cache=cache)
        assert re.search(r"cannot read image .*train/b.jpg \(train split\)", str(err.value))
        assert re.search(r"cannot read image .*test/f.png \(test split\)", str(err.value))

    # A file whose header and end look whole is found when it is decoded.
    root = subfolder_dataset(tmp_path / "cut")
    cut_keeping_the_end(root / "images" / "train" / "b.jpg")
    # With a cache it is read while the cache is built, in setup().
    with pytest.raises(SeglabError, match=r"cannot read image .*train/b.jpg \(train split\)"):
        datamodule(root, cache="memory")
    dm = datamodule(root, cache="none")  # train images are read only when sampled
    with pytest.raises(SeglabError, match=r"cannot read image .*train/b.jpg \(train split\)"):
        dm.train_set[1]
    # With num_workers=0 the loader raises the same error in the main process.
    dm.train_set.samples, dm.batch_size = dm.train_set.samples[:2], 2  # one batch holds b.jpg
    with pytest.raises(SeglabError, match=r"cannot read image .*b.jpg"):
        next(iter(dm.train_dataloader()))


def test_truncated_mask_is_named_with_its_split(tmp_path):
    root = subfolder_dataset(tmp_path)
    path = root / "masks" / "val" / "d.png"
    whole = path.read_bytes()
    path.write_bytes(whole[:60])
    for cache in ("memory", "none"):  # the header scan finds it either way
        with pytest.raises(SeglabError, match=r"cannot read mask .*val/d.png \(val split\)"):
            datamodule(root, cache=cache)
    path.write_bytes(whole)
    cut_keeping_the_end(path)
    with pytest.raises(SeglabError, match=r"cannot read mask .*val/d.png \(val split\)"):
        datamodule(root, cache="memory")
    dm = datamodule(root, cache="none")
    with pytest.raises(SeglabError, match=r"cannot read mask .*val/d.png \(val split\)"):
        dm.val_set[0]


def test_mask_value_beyond_the_classes(tmp_path):
    root = subfolder_dataset(tmp_path)
    labels = np.zeros((40, 56), np.uint8)
    labels[5, 5], labels[6, 6] = 7, 255  # 255 = ignore_index is fine, 7 is not
    Image.fromarray(labels).save(root / "masks" / "train" / "b.png")
    message = r"mask .*train/b.png \(train split\) has value 7 .*label_map"
    with pytest.raises(SeglabError, match=message):
        datamodule(root, cache="memory")
    with pytest.raises(SeglabError, match=message):  # read by setup's label count
        datamodule(root, cache="none")
    dm = datamodule(root, cache="none", check_labels=False)
    with pytest.raises(SeglabError, match=message):  # else when the sample is read
        dm.train_set[1]


def test_rgb_mask_without_palette(tmp_path):
    root = subfolder_dataset(tmp_path)
    Image.new("RGB", (56, 40)).save(root / "masks" / "train" / "a.png")
    message = r"mask .*train/a.png .* is a RGB image.*data.palette"
    with pytest.raises(SeglabError, match=message):
        datamodule(root)  # the header scan
    dm = FolderDataModule(root, CLASSES, 3, crop_size=32)
    with pytest.raises(SeglabError, match=message):  # decoding, without the scan
        dm.check_splits()[0]["train"][0]


def test_image_and_mask_sizes_differ(tmp_path):
    root = subfolder_dataset(tmp_path)
    Image.new("L", (50, 40)).save(root / "masks" / "val" / "e.png")
    message = r"image .*val/e.jpg is 56x40 but its mask .*e.png is 50x40"
    with pytest.raises(SeglabError, match=message):
        datamodule(root)  # the header scan
    dm = FolderDataModule(root, CLASSES, 3, crop_size=32)
    with pytest.raises(SeglabError, match=message):  # decoding, without the scan
        dm.check_splits()[0]["val"][1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"palette": PALETTE[:2]}, r"data.palette has 2 colours but num_classes=3"),
        ({"label_map": {1: 5}}, r"data.label_map maps 1 to 5"),
        ({"ignore_index": 300}, r"ignore_index=300 does not fit an 8-bit mask"),
        ({"split_ratios": [0.8, 0.0, 0.2]}, r"data.split_ratios must be"),
    ],
)
def test_bad_settings(tmp_path, kwargs, message):
    root = write_dataset(tmp_path, {"": ["p", "q", "r"]})
    with pytest.raises(SeglabError, match=message):
        datamodule(root, **kwargs)


def test_train_end_to_end_on_a_folder(tmp_path):
    """`data=folder` through the real config and `train(cfg)`; val images (40x56) are
    padded to 64x64 by the module's inference, so the UNet sees stride-32 sizes."""
    root = subfolder_dataset(tmp_path / "data", palette=PALETTE)
    cfg = compose(
        [
            "data=folder",
            f"data.root={root}",
            "data.class_names=[background,road,car]",
            "data.num_classes=3",
            f"data.palette={[list(c) for c in PALETTE]}".replace(" ", ""),
            "data.crop_size=64",
            "data.batch_size=2",
            "data.color_jitter={brightness:0.2}",
            "trainer.fast_dev_run=true",
            "trainer.accelerator=cpu",
            "trainer.enable_model_summary=false",
            "logger=none",
        ],
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["test/mIoU"]) and 0.0 <= metrics["test/mIoU"] <= 1.0
    assert math.isfinite(metrics["test/loss"])


# --- check_splits: every discovery problem listed, samples as stored. ---


def test_check_splits_lists_every_unpaired_file(tmp_path):
    root = subfolder_dataset(tmp_path)
    for stem in ("a", "c"):  # a.png, c.png: train images without masks
        next((root / "masks" / "train").glob(f"{stem}.*")).unlink()
    next((root / "images" / "val").glob("e.*")).unlink()  # val mask without image
    (root / "masks" / "test" / "g.png").write_bytes(
        (root / "masks" / "test" / "f.png").read_bytes()
    )
    dm = FolderDataModule(root, CLASSES, 3, crop_size=32)

    datasets, problems = dm.check_splits()
    assert dm.train_set is None  # nothing raised, nothing set up for training
    assert problems == [
        f"image {root}/images/train/a.png has no mask {root}/masks/train/a.png",
        f"image {root}/images/train/c.png has no mask {root}/masks/train/c.png",
        f"mask {root}/masks/val/e.png has no image e.{{png,jpg,jpeg,bmp,tif,tiff,webp}} in "
        f"{root}/images/val",
        f"mask {root}/masks/test/g.png has no image g.{{png,jpg,jpeg,bmp,tif,tiff,webp}} in "
        f"{root}/images/test",
    ]
    assert {s: [p[0].name for p in d.pairs] for s, d in datasets.items()} == {
        "train": ["b.jpg"],
        "val": ["d.png"],
        "test": ["f.png"],
    }
    image, mask = datasets["val"][0]  # no augmentation, no padding, uint8 image
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 56)
    raw_image = np.array(Image.open(root / "images" / "val" / "d.png").convert("RGB"))
    assert torch.equal(image, torch.from_numpy(raw_image).permute(2, 0, 1))
    raw_mask = np.array(Image.open(root / "masks" / "val" / "d.png"))
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(raw_mask).long())
    with pytest.raises(SeglabError, match=r"2 images in .*train have no mask"):
        dm.setup("fit")  # training still stops at the first problem


def test_check_splits_names_a_corrupt_image_when_it_is_read(tmp_path):
    root = subfolder_dataset(tmp_path)
    (root / "images" / "train" / "b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "images" / "test" / "f.png").write_bytes(b"garbage")  # setup() reads its header
    datasets, problems = FolderDataModule(root, CLASSES, 3).check_splits()
    assert problems == [] and set(datasets) == {"train", "val", "test"}
    assert datasets["train"][0][0].dtype == torch.uint8  # a.png still reads
    with pytest.raises(SeglabError, match=r"cannot read image .*train/b.jpg \(train split\)"):
        datasets["train"][1]
    with pytest.raises(SeglabError, match=r"cannot read image .*test/f.png \(test split\)"):
        datasets["test"][0]


def test_check_splits_reports_list_and_folder_problems(tmp_path):
    lists = write_dataset(tmp_path / "lists", {"": ["p", "q", "r", "s"]})
    (lists / "train.txt").write_text("p\nzz\nq\nyy\n")
    (lists / "val.txt").write_text("q\nr\n")  # q is in train too
    datasets, problems = FolderDataModule(lists, CLASSES, 3).check_splits()
    assert set(datasets) == {"train", "val"}  # no test.txt: test is val, left out
    assert [p[0].stem for p in datasets["train"].pairs] == ["p", "q"]
    assert [p[0].stem for p in datasets["val"].pairs] == ["r"]
    assert len(problems) == 3
    assert "train.txt lists zz," in problems[0] and "train.txt lists yy," in problems[1]
    assert problems[2].startswith("q is listed in both")

    folders = subfolder_dataset(tmp_path / "folders")
    for kind in ("images", "masks"):
        for path in (folders / kind / "val").iterdir():
            path.unlink()
        (folders / kind / "val").rmdir()
    for path in (folders / "masks" / "test").iterdir():
        path.unlink()
    (folders / "masks" / "test").rmdir()
    datasets, problems = FolderDataModule(folders, CLASSES, 3).check_splits()
    assert set(datasets) == {"train"}
    assert problems == [
        f"{folders}/images/test has no matching {folders}/masks/test; add the masks of the "
        "test images there",
        f"data.root={folders} has no val pairs; add images/val and masks/val sub-folders or a "
        f"non-empty val.txt ({LAYOUT})",
    ]

    ratio = write_dataset(tmp_path / "ratio", {"": ["p", "q", "r"]})
    dm = FolderDataModule(ratio, CLASSES, 3, split_ratios=[0.6, 0.4, 0.0])
    datasets, problems = dm.check_splits()
    assert set(datasets) == {"train", "val"} and problems == []  # empty test: val reused

    _, problems = FolderDataModule(tmp_path / "nope", CLASSES, 3).check_splits()
    assert problems == [
        f"data.root={tmp_path / 'nope'} does not exist or is not a folder; {LAYOUT}"
    ]
