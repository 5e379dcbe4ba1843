"""The benchmarks' datasets, and loader throughput (`python -m benchmarks --only loading`).

The datasets are written once into `<out>/data/` (outputs/bench/data/) and reused by
later runs and by the other parts (`benchmarks.recipes`): 32x32 JPEGs in class folders
(train/ and test/), and PNG image/mask pairs of any size. The images are smooth colour
gradients with noise and shapes (photo-like compression, unlike pure noise, which would
make PNG decoding unrealistically slow).

The loading part reads two of them back through seglab's datamodules with 0 and 2
DataLoader workers and `cache="none"`, next to decoding the same files alone. Without a
cache every sample is decoded and augmented as it is read; over a cache the loader hands
out samples decoded once and leaves augmentation to the training device, so its rate says
nothing about loading (the seed part measures seglab with its cache, end to end):

- segmentation: 512x512 PNG image/mask pairs through `data=folder`'s default training
  augmentation (random scale, 512x512 crop, flip, normalisation);
- classification: 50,000 32x32 JPEGs in class folders through `data=image_folder`
  (resize, padded random crop, flip, normalisation), against the plain CNN's training
  throughput.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from benchmarks.timing import StepClock, images_per_second
from seglab.data.folder import FolderDataModule
from seglab.data.image_folder import ImageFolderDataModule
from seglab.data.shapes import render_scene
from seglab.losses import CrossEntropyLoss
from seglab.models import SimpleCNN
from seglab.modules import ClassificationModule
from seglab.sizes import size_pair


def _photo(rng: np.random.Generator, size: int, shapes: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like uint8 RGB image (H, W, 3) and its label mask (H, W)."""
    return render_scene(rng, (size, size), ("ellipse", "rectangle", "triangle"), shapes, (0.1, 0.3))


def write_segmentation_folder(root: Path, count: int, size: int | Sequence[int] = 512) -> Path:
    """`count` image/mask PNG pairs of `size` ((height, width) or one int) under
    root/images and root/masks; masks hold 0 (background) and 1-3 (ellipse, rectangle,
    triangle)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    height, width = size_pair(size)
    rng = np.random.default_rng(0)
    tile = 64  # render small, upscale: render_scene is slow at 512 px
    for i in range(count):
        image, mask = _photo(rng, tile, 4)
        image = Image.fromarray(image).resize((width, height), Image.BILINEAR)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (height, width, 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        mask = Image.fromarray(mask).resize((width, height), Image.NEAREST)
        mask.save(root / "masks" / f"{i}.png")
    return root


def write_image_folder(root: Path, count: int, classes: int = 10, size: int = 32) -> Path:
    """`count` size x size JPEGs spread over `classes` folders: nine in ten under
    root/train/, the others under root/test/ (50,000 -> 45,000 + 5,000, CIFAR-10's
    shape). Each class has 64 random photos of its own; an image is one of them shifted
    by up to 3 pixels, flipped half the time, brightened or darkened by up to 32 and
    noised by up to 96 per pixel: learnable, not at once (a test accuracy compares runs)."""
    rng = np.random.default_rng(0)
    base = [[_photo(rng, size + 6, 2)[0] for _ in range(64)] for _ in range(classes)]
    test_from = count - count // 10
    for split in ("train", "test"):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
    for i in range(count):
        split = "train" if i < test_from else "test"
        c = i % classes
        photo = base[c][rng.integers(64)]
        top, left = rng.integers(0, 7, 2)
        image = photo[top : top + size, left : left + size].astype(np.int16)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        image = image + rng.integers(-32, 33) + rng.integers(-96, 97, (size, size, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
            root / split / f"class{c}" / f"{i}.jpg", quality=90
        )
    return root


def _written_once(root: Path, write: Callable[[Path], object], what: str) -> Path:
    """`root` as `write(root)` leaves it: written on the first call, reused after. A
    `.complete` file marks a finished tree; an interrupted one is written again."""
    done = root / ".complete"
    if done.exists():
        print(f"data  reusing {what} in {root}", flush=True)
        return root
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    write(root)
    done.touch()
    print(f"data  wrote {what} into {root} in {time.perf_counter() - start:.0f} s", flush=True)
    return root


def jpeg_folder(data_dir: Path, count: int) -> Path:
    """The class-folder tree of `write_image_folder(count)` (10 classes, 32x32) under
    `data_dir`, written once."""
    return _written_once(
        data_dir / f"classes32_{count}",
        partial(write_image_folder, count=count),
        f"{count} 32x32 JPEGs in 10 class folders",
    )


def png_pairs(data_dir: Path, count: int, size: int | Sequence[int]) -> Path:
    """The image/mask tree of `write_segmentation_folder(count, size)` under `data_dir`,
    written once."""
    height, width = size_pair(size)
    return _written_once(
        data_dir / f"png{height}x{width}_{count}",
        partial(write_segmentation_folder, count=count, size=(height, width)),
        f"{count} {width}x{height} PNG image/mask pairs",
    )


def _decode_rate(paths: list[Path]) -> float:
    """Images/s of PIL decoding alone (open, load, convert to RGB), one process."""
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.convert("RGB")
    return len(paths) / (time.perf_counter() - start)


def _loader_rate(loader, batches: int) -> float:
    """Images/s of `batches` batches, after the first (worker start-up) is dropped."""
    iterator = iter(loader)
    next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(iterator)[0])
    return images / (time.perf_counter() - start)


def bench_segmentation_loading(data_dir: Path, pairs: int = 96, batch: int = 8) -> dict:
    root = png_pairs(data_dir, pairs, 512)
    decode = _decode_rate(sorted((root / "images").iterdir()))
    result: dict = {"pairs": pairs, "size": 512, "batch": batch, "decode_img_s": decode}
    for workers in (0, 2):
        data = FolderDataModule(
            root,
            ["background", "ellipse", "rectangle", "triangle"],
            4,
            split_ratios=[1.0, 0.01, 0.0],
            batch_size=batch,
            num_workers=workers,
            cache="none",
        )
        data.setup("fit")
        rates = [_loader_rate(data.train_dataloader(), (pairs // batch) - 2) for _ in range(2)]
        result[f"workers{workers}_img_s"] = max(rates)
    print(
        f"load  folder 512px PNG   decode alone {decode:7.1f} img/s   loader+augment "
        f"workers=0 {result['workers0_img_s']:7.1f} img/s   workers=2 "
        f"{result['workers2_img_s']:7.1f} img/s",
        flush=True,
    )
    return result


def _cnn_train_rate(batch: int, steps: int = 30) -> float:
    """Images/s of the plain CNN's raw training step (10 classes, 32x32)."""
    torch.manual_seed(0)
    net = SimpleCNN(num_classes=10)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    clock = StepClock()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        clock.tick()
    return images_per_second(clock.times, batch)


def _fit_rate(datamodule, batch: int, steps: int) -> float:
    """Images/s of the plain CNN trained by Lightning on `datamodule`'s loader (the
    model waits whenever loading is slower), warm-up steps excluded."""
    torch.manual_seed(0)
    module = ClassificationModule(
        SimpleCNN(num_classes=datamodule.num_classes),
        CrossEntropyLoss(),
        partial(torch.optim.Adam, lr=1e-3),
        class_names=datamodule.class_names,
        ignore_index=-100,
    )
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=datamodule)
    return images_per_second(clock.times, batch)


def bench_classification_loading(data_dir: Path, images: int = 50_000, batch: int = 64) -> dict:
    root = jpeg_folder(data_dir, images)
    paths = sorted((root / "train" / "class0").iterdir())[:2000]
    decode = _decode_rate(paths)
    result: dict = {"images": images, "batch": batch, "decode_img_s": decode}
    measured_batches = 120
    for workers in (0, 2):
        data = ImageFolderDataModule(root, batch_size=batch, num_workers=workers, cache="none")
        data.setup("fit")
        rates = [_loader_rate(data.train_dataloader(), measured_batches) for _ in range(2)]
        result[f"workers{workers}_img_s"] = max(rates)
        result[f"fit_workers{workers}_img_s"] = _fit_rate(data, batch, measured_batches)
    result["cnn_train_img_s"] = statistics.median(_cnn_train_rate(batch) for _ in range(3))
    print(
        f"load  {images} 32px JPEG   decode alone {decode:7.0f} "
        f"img/s   loader+augment workers=0 {result['workers0_img_s']:7.0f} img/s   "
        f"workers=2 {result['workers2_img_s']:7.0f} img/s\n"
        f"      plain CNN on in-memory batches {result['cnn_train_img_s']:7.0f} img/s   "
        f"trained from this folder: workers=0 {result['fit_workers0_img_s']:7.0f} img/s   "
        f"workers=2 {result['fit_workers2_img_s']:7.0f} img/s",
        flush=True,
    )
    return result


def bench_loading(data_dir: Path) -> dict:
    return {
        "folder_512px_png": bench_segmentation_loading(data_dir),
        "image_folder_32px_jpeg": bench_classification_loading(data_dir),
    }
