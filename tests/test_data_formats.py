"""The extension point of `seglab.data.decoded`: a dataset format that is no image/mask
folder (a segmentation shard per split, one .npz file) is one small class with no cache
code, and reads the same samples with `data.cache` none, memory and disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from seglab.data.base import Problems
from seglab.data.decoded import DecodedDataModule
from seglab.data.transforms import SegmentationAugment


class ShardDataModule(DecodedDataModule):
    """Segmentation samples stored in `root/<split>.npz`: `image_<i>` uint8 [3, H, W] and
    `mask_<i>` uint8 [H, W] per sample i, of any size."""

    task = "segmentation"

    def __init__(self, root: str | Path, crop_size: int = 8, **kwargs) -> None:
        super().__init__(
            root=root, class_names=["bg", "fg"], num_classes=2, ignore_index=255,
            input_size=crop_size, **kwargs,
        )  # fmt: skip
        self.augmentation = SegmentationAugment(crop_size, 255, self.mean, self.std)

    def find_samples(self, problems: Problems) -> dict[str, list[int]]:
        splits = {}
        for split in ("train", "val", "test"):
            if (self.root / f"{split}.npz").is_file():
                with np.load(self.root / f"{split}.npz") as shard:
                    splits[split] = list(range(len(shard.files) // 2))
            elif split != "test":
                problems.add(f"{self.root / split}.npz is missing")
        return splits

    def decode(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        with np.load(self.root / f"{split}.npz") as shard:
            image, mask = shard[f"image_{index}"], shard[f"mask_{index}"]
        return torch.from_numpy(image), torch.from_numpy(mask)

    def fingerprint(self, split: str, samples: list[int]) -> tuple[dict, list[Path]]:
        return {}, [self.root / f"{split}.npz"]


def write_shards(root: Path) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    for split, count in (("train", 5), ("val", 3)):
        arrays = {}
        for i in range(count):
            height, width = 6 + 2 * i, 10 - i
            arrays[f"image_{i}"] = rng.integers(0, 256, (3, height, width), np.uint8)
            arrays[f"mask_{i}"] = rng.integers(0, 2, (height, width), np.uint8)
        np.savez(root / f"{split}.npz", **arrays)


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Conv2d(3, 2, 1)
        self.train_images: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        images, masks = batch
        self.train_images.append(images)
        return F.cross_entropy(self.net(images), masks, ignore_index=255)

    def validation_step(self, batch, batch_idx):
        images, masks = batch
        self.log("val_loss", F.cross_entropy(self.net(images), masks, ignore_index=255))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(datamodule: ShardDataModule, root: Path) -> _Tiny:
    L.seed_everything(0)
    module = _Tiny()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=datamodule)
    return module


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_a_new_format_reads_the_same_samples_with_every_cache_mode(tmp_path, mode, monkeypatch):
    write_shards(tmp_path / "shards")

    def make(cache: str) -> ShardDataModule:
        dm = ShardDataModule(
            tmp_path / "shards", cache=cache, cache_dir=tmp_path / "c", batch_size=2
        )
        dm.prepare_data()
        dm.setup("fit")
        return dm

    plain, cached = make("none"), make(mode)
    assert plain.train_set.store is None and cached.train_set.store is not None
    for split in ("train_set", "val_set", "test_set"):
        ours, theirs = getattr(cached, split), getattr(plain, split)
        assert len(ours) == len(theirs) > 0
        for i in range(len(ours)):
            for a, b in zip(ours.load(i), theirs.load(i), strict=True):
                assert a.dtype == b.dtype == torch.uint8 and torch.equal(a, b)
    # Evaluation items and batches (one size per batch) are equal too.
    for a, b in zip(cached.val_dataloader(), plain.val_dataloader(), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # Both train: per sample in the loader, or per batch after the transfer.
    for dm in (plain, cached):
        images = _fit(dm, tmp_path / mode).train_images
        assert [tuple(i.shape) for i in images] == [(2, 3, 8, 8)] * 2  # the last 1 dropped
        assert all(i.dtype == torch.float32 for i in images)
    if mode == "disk":  # a second run maps the cache: nothing decoded
        monkeypatch.setattr(ShardDataModule, "decode", lambda *args: pytest.fail("decoded"))
        again = make("disk")
        assert torch.equal(again.val_set.load(2)[1], plain.val_set.load(2)[1])


def _readme_blocks(language: str) -> list[str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Adding a dataset format") :]
    section = section[: section.index("\n### ", 1)]
    return [block.split("```")[0] for block in section.split(f"```{language}\n")[1:]]


def test_the_readme_s_dataset_format_example_trains_as_written(tmp_path):
    """The README's example format, its config and its command, as a user copies them:
    a class in their own package, a config in their --config-dir, one training run."""
    (code,) = _readme_blocks("python")
    (config,) = _readme_blocks("yaml")
    (command,) = _readme_blocks("bash")
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "data.py").write_text(code)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    listing: dict[str, list] = {"train": [], "val": []}
    for i in range(8):
        name = f"{i}.jpg"
        pixels = rng.integers(0, 256, (20 + i, 24, 3), np.uint8)
        Image.fromarray(pixels).save(photos / name)
        listing["train" if i < 6 else "val"].append([name, i % 2])
    (photos / "labels.json").write_text(json.dumps(listing))
    (tmp_path / "myconf" / "data").mkdir(parents=True)
    (tmp_path / "myconf" / "data" / "json_list.yaml").write_text(
        config.replace("/data/photos", str(photos))
    )

    args = command.split()
    assert args[:3] == ["python", "-m", "seglab.train"]
    for _ in range(2):  # a second run right after the first gets its own run directory
        run = subprocess.run(
            [sys.executable, *args[1:], "trainer.accelerator=cpu", "report=false"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    first, second = sorted((tmp_path / "outputs").rglob("metrics.json"))
    assert first.parent != second.parent
    metrics_file = second
    metrics = json.loads(metrics_file.read_text())["metrics"]
    assert {"test/acc", "test/loss"} <= set(metrics)  # tested on the format's val split
    config = (metrics_file.parent / ".hydra" / "config.yaml").read_text()
    assert "_target_: mypackage.data.JsonListDataModule" in config

    # In-process: the labels of labels.json, the images resized, with the memory cache.
    sys.path.insert(0, str(tmp_path))
    try:
        from mypackage.data import JsonListDataModule
    finally:
        sys.path.remove(str(tmp_path))
    dm = JsonListDataModule(photos, ["cat", "dog"], 2, cache="memory", num_workers=0)
    dm.setup("fit")
    assert [dm.val_set.load(i)[1] for i in range(2)] == [0, 1]
    assert tuple(dm.val_set.load(0)[0].shape) == (3, 32, 32)
