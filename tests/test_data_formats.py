"""The extension point of `seglab.data.decoded`: a dataset format that is no image/mask
folder (a segmentation shard per split, one .npz file) is one small class with no cache
code, and reads the same samples with `data.cache` none, memory and disk."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
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
