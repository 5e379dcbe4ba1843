"""Evaluation predicts every image as `seglab.predict` does: batches of one size, no
padding to the split's largest image, so evaluate's scores are those of predict's masks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import compose
from seglab.data.samplers import SizeGroupedBatchSampler
from seglab.evaluate import evaluate
from seglab.predict import predict
from seglab.train import train

CLASSES = ["background", "road", "car"]
# Test images of several sizes, none a multiple of 32, sorted by name as predict reads them.
TEST_SIZES = {"t0": (40, 56), "t1": (33, 47), "t2": (40, 56), "t3": (70, 30), "t4": (33, 47)}


def _write(root: Path, split: str, stem: str, size: tuple[int, int], rng) -> None:
    height, width = size
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    cells = rng.integers(0, 3, size=(-(-height // 8), -(-width // 8)), dtype=np.uint8)
    labels = np.kron(cells, np.ones((8, 8), np.uint8))[:height, :width]
    Image.fromarray(image).save(root / "images" / split / f"{stem}.png")
    Image.fromarray(labels, mode="L").save(root / "masks" / split / f"{stem}.png")


@pytest.fixture(scope="module")
def ragged(tmp_path_factory) -> tuple[Path, Path]:
    """A folder dataset whose val and test images differ in size, and a checkpoint."""
    root = tmp_path_factory.mktemp("ragged")
    rng = np.random.default_rng(0)
    for i in range(4):
        _write(root, "train", f"a{i}", (48, 64), rng)
    for stem, size in TEST_SIZES.items():
        _write(root, "val", stem, size, rng)
        _write(root, "test", stem, size, rng)
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose(
        [
            "data=folder",
            f"data.root={root}",
            "data.class_names=[background,road,car]",
            "data.num_classes=3",
            "data.crop_size=32",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.enable_model_summary=false",
            "logger=none",
            "report=false",
        ],
        output_dir=run_dir,
    )
    train(cfg)
    return root, run_dir / "checkpoints" / "last.ckpt"


def _confusion(pred: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    index = truth.astype(np.int64) * classes + pred.astype(np.int64)
    return np.bincount(index.ravel(), minlength=classes * classes).reshape(classes, classes)


def test_evaluate_scores_exactly_the_masks_predict_writes(ragged, tmp_path):
    root, ckpt = ragged
    cfg = compose(
        [f"ckpt_path={ckpt}", "trainer.accelerator=cpu"],
        output_dir=tmp_path / "eval",
        config_name="eval",
    )
    evaluate(cfg)
    with open(tmp_path / "eval" / "confusion_matrix.csv") as f:
        counted = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]])

    out = tmp_path / "pred"
    pcfg = compose(
        [f"ckpt_path={ckpt}", f"input={root / 'images' / 'test'}", f"output={out}"],
        config_name="predict",
    )
    assert predict(pcfg)["written"] == len(TEST_SIZES)
    by_hand = np.zeros((3, 3), np.int64)
    for stem in TEST_SIZES:
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        truth = np.asarray(Image.open(root / "masks" / "test" / f"{stem}.png"))
        assert mask.shape == truth.shape
        by_hand += _confusion(mask, truth, 3)
    # Every pixel of every test image counted once, none from padding, and each pixel's
    # class the one predict wrote: the matrices agree count for count.
    assert counted.sum() == sum(h * w for h, w in TEST_SIZES.values())
    np.testing.assert_array_equal(counted, by_hand)


def test_evaluation_batches_hold_one_size_each(ragged):
    root, ckpt = ragged
    from seglab.checkpoint import load_run

    datamodule = load_run(ckpt).datamodule
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    seen = []
    for images, masks in loader:
        assert images.shape[-2:] == masks.shape[-2:]
        seen += [tuple(images.shape[-2:])] * len(images)
    assert sorted(seen) == sorted(TEST_SIZES.values())  # each sample once, at its own size


def test_size_grouped_batches_keep_order_within_a_size_and_cover_every_sample():
    sizes = np.array([[4, 4], [2, 2], [4, 4], [4, 4], [2, 2], [3, 3]])
    batches = list(SizeGroupedBatchSampler(range(6), sizes, batch_size=2))
    assert batches == [[0, 2], [3], [1, 4], [5]]
    assert len(SizeGroupedBatchSampler(range(6), sizes, batch_size=2)) == 4
    with pytest.raises(ValueError, match="batch_size"):
        SizeGroupedBatchSampler(range(6), sizes, batch_size=0)


def test_validation_samples_in_tensorboard_show_each_image_whole(ragged):
    """The tiles of `ValidationImages` are each sample fitted into its square: no grey
    padding canvas with a prediction painted on it."""
    from seglab.plots import segmentation_tiles

    picture = np.full((10, 20, 3), 7, np.uint8)
    target = torch.zeros(10, 20, dtype=torch.long)
    tiles = segmentation_tiles([picture], [target], [target], [(1, 2, 3)] * 3, side=40)
    image = tiles[0].permute(1, 2, 0).numpy()
    assert image.shape == (40, 40, 3)
    assert (image[:20] == 7).all()  # the image scaled to 40x20, at the top
    assert (image[20:] == 255).all()  # white below it: nothing but the image is drawn
    mask = tiles[1].permute(1, 2, 0).numpy()
    assert (mask[:20] == (1, 2, 3)).all() and (mask[20:] == 255).all()
