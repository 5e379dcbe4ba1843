"""The users' two recipes written by hand, each as its own process, for `benchmarks.command`.

    python -m benchmarks.hand seed ROOT EPOCHS BATCH
    python -m benchmarks.hand unet ROOT EPOCHS BATCH CROP TRAIN TEST

seed: decodes every JPEG of ROOT/train/<class>/ and ROOT/test/<class>/ once with PIL,
trains the plain CNN (Adam 1e-3, cross-entropy, ImageNet's statistics on the 0-255
scale, shuffled batches, no augmentation) on all of train/ for EPOCHS epochs, then tests
on test/.

unet: decodes the image/mask PNG pairs of ROOT/images and ROOT/masks once, trains
UNet-resnet18 (AdamW 3e-3, weight decay 1e-4, one-cycle schedule per step,
cross-entropy ignoring 255) on the first TRAIN pairs in sorted order with a random scale
in [0.5, 2] (a random crop of side CROP / scale resized to CROP x CROP) and a
left-right flip per pair, then tests the
next TEST pairs whole (padded to a multiple of 32) for pixel accuracy.

Both print one JSON line: the seconds of each phase (imports, decode, each epoch, test),
the steps per epoch and the test score. Nothing of seglab runs but its model class.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import json  # noqa: E402 (the imports are timed)
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
IGNORE = 255


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def decode_classes(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, H, W] and labels [N] of ROOT/split/<class>/*, classes in sorted order."""
    images, labels = [], []
    for label, folder in enumerate(sorted((root / "train").iterdir())):
        for path in sorted((root / split / folder.name).iterdir()):
            images.append(_rgb(path))
            labels.append(label)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def seed(root: Path, epochs: int, batch: int) -> dict:
    from seglab.models import SimpleCNN  # noqa: PLC0415 (the model class only)

    imported = time.perf_counter()
    x, y = decode_classes(root, "train")
    x_test, y_test = decode_classes(root, "test")
    decoded = time.perf_counter()
    torch.manual_seed(0)
    net = SimpleCNN(3, int(y.max()) + 1, 32)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    epoch_seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        for index in torch.randperm(len(x)).split(batch):
            loss = loss_fn(net((x[index].float() - MEAN) / STD), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - start)
    trained = time.perf_counter()
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x_test), 256):
            logits = net((x_test[i : i + 256].float() - MEAN) / STD)
            correct += int((logits.argmax(1) == y_test[i : i + 256]).sum())
    return {
        "imports": imported - START,
        "decode": decoded - imported,
        "epochs": epoch_seconds,
        "steps_per_epoch": -(-len(x) // batch),
        "test": time.perf_counter() - trained,
        "score": correct / len(x_test),
        "score_name": "test/acc",
    }


def _scaled_crop(
    image: torch.Tensor, mask: torch.Tensor, crop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random scale in [0.5, 2] applied as a crop of side crop / scale (zero / IGNORE
    padded where the image is smaller) resized to crop x crop, and a left-right flip half
    the time: only the crop is resized.

    Shape:
        image uint8 [3, H, W], mask uint8 [H, W] -> float [3, crop, crop], long [crop, crop].
    """
    side = round(crop / float(torch.empty(()).uniform_(0.5, 2.0)))
    pad_h, pad_w = (max(0, side - length) for length in image.shape[-2:])
    x, y = image.float(), mask.long()
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
        y = F.pad(y, (0, pad_w, 0, pad_h), value=IGNORE)
    top = int(torch.randint(0, x.shape[-2] - side + 1, ()))
    left = int(torch.randint(0, x.shape[-1] - side + 1, ()))
    x, y = (
        x[None, :, top : top + side, left : left + side],
        y[None, None, top : top + side, left : left + side],
    )
    x = F.interpolate(x, (crop, crop), mode="bilinear", align_corners=False)[0]
    y = F.interpolate(y.float(), (crop, crop), mode="nearest")[0, 0].long()
    if torch.rand(()) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


def unet(root: Path, epochs: int, batch: int, crop: int, train: int, test: int) -> dict:
    import segmentation_models_pytorch as smp  # noqa: PLC0415 (timed with the imports)

    imported = time.perf_counter()
    paths = sorted((root / "images").iterdir())[: train + test]
    images = [torch.from_numpy(_rgb(p)).permute(2, 0, 1).contiguous() for p in paths]
    masks = []
    for path in paths:
        with Image.open(root / "masks" / path.name) as mask:
            masks.append(torch.from_numpy(np.asarray(mask).copy()))
    decoded = time.perf_counter()
    torch.manual_seed(0)
    classes = int(max(int(m[m != IGNORE].max()) for m in masks)) + 1
    net = smp.Unet("resnet18", encoder_weights=None, classes=classes)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = -(-train // batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * steps)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
    epoch_seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        for index in torch.randperm(train).split(batch):
            pairs = [_scaled_crop(images[i], masks[i], crop) for i in index.tolist()]
            x = (torch.stack([p[0] for p in pairs]) - MEAN) / STD
            y = torch.stack([p[1] for p in pairs])
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        epoch_seconds.append(time.perf_counter() - start)
    trained = time.perf_counter()
    net.eval()
    correct = counted = 0
    with torch.no_grad():
        for image, mask in zip(images[train:], masks[train:], strict=True):
            height, width = image.shape[-2:]
            x = (image[None].float() - MEAN) / STD
            x = F.pad(x, (0, -width % 32, 0, -height % 32))
            predicted = net(x)[0, :, :height, :width].argmax(0)
            valid = mask != IGNORE
            correct += int((predicted[valid] == mask[valid].long()).sum())
            counted += int(valid.sum())
    return {
        "imports": imported - START,
        "decode": decoded - imported,
        "epochs": epoch_seconds,
        "steps_per_epoch": steps,
        "test": time.perf_counter() - trained,
        "score": correct / max(counted, 1),
        "score_name": "test/pixel_acc",
    }


if __name__ == "__main__":
    recipe, root, *numbers = sys.argv[1:]
    run = {"seed": seed, "unet": unet}[recipe]
    print(json.dumps(run(Path(root), *map(int, numbers))), flush=True)
