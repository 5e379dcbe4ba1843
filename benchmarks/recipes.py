"""Users' recipes end to end: `seglab.train.train(cfg)` on a composed config against the
same recipe written by hand in plain PyTorch on the same files, decoded once.

- seed (`--only seed`): the workload users start with, the plain CNN
  (`experiment=folder_cnn`) on 32x32 JPEGs in 10 class folders (50,000: 45,000 in train/,
  5,000 in test/; `--seed-images` for fewer), no augmentation, at batch 32 and 256, on
  the CPU. The hand loop decodes every train/ image once with PIL into a uint8 tensor
  [N, 3, 32, 32] (timed on its own), then per batch of a shuffled epoch: index, float,
  (x - mean) / std with ImageNet's statistics on the 0-255 scale (seglab's), SimpleCNN,
  cross-entropy, Adam(lr=1e-3). seglab runs `train()` with `data.cache=memory`
  (`--seed-cache`) and a StepClock added to its callbacks. Both time `--seed-steps`
  training steps after the warm-up (0: one epoch). What `train()` spends before its
  first training batch (listing files, building the cache, sanity validation) is left
  out of images/s and printed on its own: for the cache=memory runs, one cache=none run,
  and two cache=disk runs in a row (the first builds the disk cache, the second finds it).
- unet352 (`--only unet352`): UNet-resnet18 (`model=unet model.encoder_name=resnet18`)
  on `data=folder` over 480x360 PNG image/mask pairs (4 classes), 352x352 crops, batch
  8, on the CPU; seglab with `data=folder`'s own augmentation (random scale, crop, flip)
  and cache setting, the hand loop on the pairs decoded once with a random 352x352 crop
  and flip in torch, and the model, optimizer and schedule built from the same config.
  `--unet-steps` timed steps after the warm-up.

Hand and seglab runs alternate (`timing.alternate`); the ratio seglab / hand is the
median of the pairs' ratios, 1.0 meaning seglab costs nothing over the hand loop.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from benchmarks.loading import jpeg_folder, png_pairs
from benchmarks.timing import WARMUP, StepClock, alternate, images_per_second, paired_ratio
from seglab.config import compose
from seglab.data.base import SeglabDataModule
from seglab.models import SimpleCNN
from seglab.modules import schedule_length_kwargs
from seglab.train import train

SEED_BATCHES = (32, 256)
UNET_SIZE = (360, 480)  # (height, width) of the generated pairs
UNET_CROP = 352
UNET_BATCH = 8
UNET_CLASSES = ("background", "ellipse", "rectangle", "triangle")  # write_segmentation_folder's
# ImageNet's per-channel statistics on the 0-255 scale, which seglab normalises with:
# (x - mean) / std.
MEAN = torch.tensor(SeglabDataModule.mean).view(1, 3, 1, 1)
STD = torch.tensor(SeglabDataModule.std).view(1, 3, 1, 1)


@dataclass
class SeglabRun:
    """One `train()` call: training images/s after the warm-up (None when too few steps
    ran to time) and seconds from calling `train()` to its first training batch."""

    img_s: float | None
    first_step_s: float


def seglab_run(overrides: Sequence[str], batch: int) -> SeglabRun:
    """Compose the config from `overrides` as the command line would, add a StepClock to
    its callbacks and run `seglab.train.train` on it in a fresh output directory."""
    with tempfile.TemporaryDirectory(prefix="seglab-bench-run-") as tmp:
        clock_file = Path(tmp) / "clock.json"
        cfg = compose(
            [
                *overrides,
                "+callbacks.bench_clock._target_=benchmarks.timing.StepClock",
                f"+callbacks.bench_clock.path={clock_file}",
            ],
            output_dir=Path(tmp) / "run",
        )
        start = time.perf_counter()
        train(cfg)
        record = json.loads(clock_file.read_text())
    times = record["times"]
    img_s = images_per_second(times, batch) if len(times) >= WARMUP + 2 else None
    return SeglabRun(img_s, record["first_batch"] - start)


def accepts_cache(overrides: Sequence[str]) -> bool:
    """Whether the data config these overrides pick has a `cache` option."""
    return "cache" in compose(overrides).data


def _cache_unsupported(part: str, data: str, cache: str) -> str:
    return (
        f"{part}  data.cache is not accepted by this seglab yet (conf/data/{data}.yaml has no "
        f"`cache` key): --seed-cache {cache} cannot run; pass --seed-cache none to measure "
        "without a cache"
    )


def _timed_steps(available: int, steps: int) -> int:
    """Steps per run: the warm-up, then `steps` timed (0: every available one)."""
    total = available if steps == 0 else min(available, WARMUP + 1 + steps)
    if total < WARMUP + 2:
        raise ValueError(
            f"{available} batches per epoch; timing needs at least {WARMUP + 2}: "
            "use more images or a smaller batch"
        )
    return total


def decode_class_folders(split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of `split_dir/<class>/` decoded with PIL, labels by sorted folder name.

    Shape:
        -> images uint8 [N, 3, H, W], labels LongTensor [N].
    """
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    arrays, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((split_dir / name).iterdir()):
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels)


def _hand_cnn(images: torch.Tensor, labels: torch.Tensor, batch: int, steps: int) -> float:
    """The plain CNN trained by hand for `steps` batches of a shuffled epoch; images/s."""
    torch.manual_seed(0)
    net = SimpleCNN(num_classes=int(labels.max()) + 1).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(images))
    clock = StepClock()
    for step in range(steps):
        index = order[step * batch : (step + 1) * batch]
        x = (images[index].float() - MEAN) / STD  # (B, 3, 32, 32)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), labels[index]).backward()
        optimizer.step()
        clock.tick()
    return images_per_second(clock.times, batch)


def _pair_summary(hand: list[float], seglab: list[SeglabRun]) -> dict:
    seglab_img_s = [run.img_s for run in seglab]
    ratio, pairs = paired_ratio(hand, seglab_img_s)
    return {
        "hand_img_s": statistics.median(hand),
        "seglab_img_s": statistics.median(seglab_img_s),
        "ratio": ratio,
        "pair_ratios": pairs,
        "hand_runs": hand,
        "seglab_runs": seglab_img_s,
        "seglab_first_step_s": [run.first_step_s for run in seglab],
    }


def _print_pairs(label: str, result: dict, note: str) -> None:
    pairs = result["pair_ratios"]
    print(
        f"{label}   hand {result['hand_img_s']:8.1f} img/s   seglab {result['seglab_img_s']:8.1f} "
        f"img/s   ratio {result['ratio']:.3f} (pairs {min(pairs):.3f}-{max(pairs):.3f})   {note}",
        flush=True,
    )


def bench_seed(data_dir: Path, images: int, cache: str, rounds: int, steps: int) -> dict:
    """The seed workload (see the module docstring) at batch 32 and 256."""
    has_cache = accepts_cache(["experiment=folder_cnn"])
    if not has_cache and cache != "none":
        message = _cache_unsupported("seed", "image_folder", cache)
        print(message, flush=True)
        return {"skipped": message}
    root = jpeg_folder(data_dir, images).resolve()
    start = time.perf_counter()
    decoded, labels = decode_class_folders(root / "train")
    decode_s = time.perf_counter() - start
    print(
        f"seed  decoded {len(decoded)} train JPEGs once (PIL) in {decode_s:.1f} s "
        f"({len(decoded) / decode_s:.0f} img/s), not counted below",
        flush=True,
    )
    base = [
        "experiment=folder_cnn",
        f"data.root={root}",
        "data.augment=false",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "logger=none",
        "test=false",
        "report=false",
    ]
    cached = [*base, f"data.cache={cache}"] if has_cache else base
    result: dict = {
        "images": images,
        "train_images": len(decoded),
        "decode_s": decode_s,
        "cache": cache if has_cache else "not supported",
        "steps": steps,
    }
    # seglab holds out val_ratio of train/ for validation: its epoch is the shorter one.
    seglab_train = len(decoded) * (1 - compose(base).data.val_ratio)
    for batch in SEED_BATCHES:
        seglab_batches = math.ceil(seglab_train / batch)
        total = _timed_steps(min(len(decoded) // batch, seglab_batches), steps)
        overrides = [*cached, f"data.batch_size={batch}"]
        if steps:
            overrides.append(f"trainer.limit_train_batches={total}")
        hand, seglab = alternate(
            rounds,
            lambda batch=batch, total=total: _hand_cnn(decoded, labels, batch, total),
            lambda overrides=overrides, batch=batch: seglab_run(overrides, batch),
        )
        result[f"batch{batch}"] = {"steps_per_run": total, **_pair_summary(hand, seglab)}
        _print_pairs(f"seed  batch {batch:3d}", result[f"batch{batch}"], f"{total} steps/run")

    first = statistics.median(
        s for batch in SEED_BATCHES for s in result[f"batch{batch}"]["seglab_first_step_s"]
    )
    result["cache_build_s"] = first
    line = f"seed  train() to first training step: cache={result['cache']} {first:.1f} s"
    if has_cache:
        one_step = [*base, "data.batch_size=32", "trainer.limit_train_batches=1"]
        result["no_cache_first_step_s"] = seglab_run(
            [*one_step, "data.cache=none"], 32
        ).first_step_s
        disk = _disk_cache_first_steps([*one_step, "data.cache=disk"])
        result["disk_first_run_start_s"], result["disk_second_run_start_s"] = disk
        line += (
            f", cache=none {result['no_cache_first_step_s']:.1f} s, cache=disk "
            f"{disk[0]:.1f} s (first run, builds) then {disk[1]:.1f} s (second run)"
        )
    else:
        line += " (no disk-cache runs: data.cache is not accepted yet)"
    print(line, flush=True)
    return result


def _disk_cache_first_steps(overrides: list[str]) -> list[float]:
    """Seconds to the first training step of two one-step runs in a row with the disk
    cache, in a fresh `data.cache_dir` (where the config has one): the first run builds
    the cache, the second reads it."""
    with tempfile.TemporaryDirectory(prefix="seglab-bench-cache-") as cache_dir:
        if "cache_dir" in compose(overrides).data:
            overrides = [*overrides, f"data.cache_dir={cache_dir}"]
        return [seglab_run(overrides, 32).first_step_s for _ in range(2)]


def decode_pairs(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image/mask PNG pair under root/images, root/masks, decoded with PIL.

    Shape:
        -> images uint8 [N, 3, H, W], masks uint8 [N, H, W].
    """
    images, masks = [], []
    for path in sorted((root / "images").iterdir()):
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))
        with Image.open(root / "masks" / path.name) as mask:
            masks.append(np.asarray(mask))
    image_tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return image_tensor, torch.from_numpy(np.stack(masks))


def _random_crops(
    images: torch.Tensor, masks: torch.Tensor, index: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random size x size crop of each indexed pair, flipped left-right half the time.

    Shape:
        images uint8 [N, 3, H, W], masks uint8 [N, H, W] -> float [B, 3, size, size]
        normalised, LongTensor [B, size, size].
    """
    height, width = images.shape[-2:]
    crops, labels = [], []
    for i in index.tolist():
        top = int(torch.randint(0, height - size + 1, ()))
        left = int(torch.randint(0, width - size + 1, ()))
        image = images[i, :, top : top + size, left : left + size]
        mask = masks[i, top : top + size, left : left + size]
        if torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        crops.append(image)
        labels.append(mask)
    return (torch.stack(crops).float() - MEAN) / STD, torch.stack(labels).long()


def _hand_unet(cfg: DictConfig, images: torch.Tensor, masks: torch.Tensor, steps: int) -> float:
    """The configured model, optimizer and schedule trained by hand on random crops."""
    torch.manual_seed(0)
    net = instantiate(cfg.model).train()
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    factory = instantiate(cfg.scheduler)
    scheduler = factory(optimizer, **schedule_length_kwargs(factory, steps))
    loss_fn = nn.CrossEntropyLoss(ignore_index=cfg.data.ignore_index)
    order = torch.randperm(len(images))
    clock = StepClock()
    for step in range(steps):
        index = order[step * UNET_BATCH : (step + 1) * UNET_BATCH]
        x, y = _random_crops(images, masks, index, UNET_CROP)  # (B, 3, 352, 352), (B, 352, 352)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
        scheduler.step()
        clock.tick()
    return images_per_second(clock.times, UNET_BATCH)


def unet_recipe(root: Path) -> list[str]:
    """The UNet recipe's overrides: UNet-resnet18 on `data=folder` over the pairs of
    `root`, 352x352 crops, batch 8."""
    return [
        "data=folder",
        "model=unet",
        "model.encoder_name=resnet18",
        f"data.root={root}",
        f"data.class_names=[{','.join(UNET_CLASSES)}]",
        f"data.num_classes={len(UNET_CLASSES)}",
        f"data.crop_size={UNET_CROP}",
        f"data.batch_size={UNET_BATCH}",
    ]


def bench_unet352(data_dir: Path, rounds: int, steps: int) -> dict:
    """UNet-resnet18 at 352x352 crops, batch 8 (see the module docstring)."""
    total = WARMUP + 1 + steps
    ratios = compose(["data=folder"]).data.split_ratios  # [train, val, test]
    pairs = max(48, math.ceil(total * UNET_BATCH * sum(ratios) / ratios[0]) + 2)
    root = png_pairs(data_dir, pairs, UNET_SIZE).resolve()
    images, masks = decode_pairs(root)
    overrides = [
        *unet_recipe(root),
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        f"trainer.limit_train_batches={total}",
        # Set-up and validation are not what this part measures; skip what can be skipped.
        "trainer.num_sanity_val_steps=0",
        "trainer.limit_val_batches=1",
        "logger=none",
        "test=false",
        "report=false",
    ]
    cfg = compose(overrides)
    hand, seglab = alternate(
        rounds,
        lambda: _hand_unet(cfg, images, masks, total),
        lambda: seglab_run(overrides, UNET_BATCH),
    )
    cache = cfg.data.get("cache", "not supported")
    result = {"pairs": pairs, "steps_per_run": total, "cache": cache, **_pair_summary(hand, seglab)}
    _print_pairs("unet352 batch 8", result, f"{total} steps/run, data.cache={cache}")
    return result
