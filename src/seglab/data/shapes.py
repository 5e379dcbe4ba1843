"""The embedded `shapes` dataset: procedurally drawn scenes, nothing to download.

Each scene is a noisy, smoothly textured background with a few filled ellipses,
rectangles and triangles of random colour, size, rotation and overlap; the mask holds
the class of the shape drawn last at each pixel (0 = background). Every sample is a pure
function of `(seed, split, index)`, so a split is identical across runs, machines and
DDP ranks, and growing `num_train` keeps the first samples unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset

from seglab.data.base import SeglabDataModule, to_input
from seglab.errors import SeglabError

SHAPES = ("ellipse", "rectangle", "triangle")
BACKGROUND = "background"
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Images are scaled to [-1, 1]: zero-centred inputs for nets trained from scratch.
MEAN = (127.5, 127.5, 127.5)
STD = (127.5, 127.5, 127.5)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random colour field plus pixel noise: float32 (H, W, 3) in [0, 255].

    The field interpolates random colours on a grid of about 16-pixel cells, so its blobs
    keep their size in pixels whatever the image size."""
    grid = (max(2, height // 16), max(2, width // 16))
    coarse = rng.uniform(30, 225, size=(1, 3, *grid)).astype(np.float32)
    smooth = F.interpolate(
        torch.from_numpy(coarse), size=(height, width), mode="bicubic", align_corners=False
    )[0].permute(1, 2, 0)
    return smooth.numpy() + rng.normal(0, 12, size=(height, width, 3)).astype(np.float32)


def _shape_mask(
    rng: np.random.Generator,
    kind: str,
    yy: np.ndarray,
    xx: np.ndarray,
    radius: float,
    margin: float,
) -> np.ndarray:
    """Boolean (H, W) region of one randomly placed and rotated shape of `kind`, centred
    at least `margin` (a fraction of the image size) away from the borders."""
    height, width = yy.shape
    cy = rng.uniform(margin, 1 - margin) * height
    cx = rng.uniform(margin, 1 - margin) * width
    theta = rng.uniform(0, np.pi)
    # (u, v): pixel coordinates in the shape's rotated frame.
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    a, b = radius * rng.uniform(0.55, 1.0, size=2)
    if kind == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == "rectangle":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # Triangle: three vertices around the centre; inside = same side of all three edges.
    angles = theta + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.35, 0.35, 3)
    radii = radius * rng.uniform(0.8, 1.25, size=3)
    vx, vy = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
    sides = [
        (vx[j] - vx[i]) * (yy - vy[i]) - (vy[j] - vy[i]) * (xx - vx[i])
        for i, j in ((0, 1), (1, 2), (2, 0))
    ]
    return ((sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)) | (
        (sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0)
    )


def _colour_far_from(rng: np.random.Generator, reference: np.ndarray) -> np.ndarray:
    """A random RGB colour at least a little distinguishable from `reference`."""
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - reference).mean() > 40:
            return colour
    return 255.0 - reference


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    shapes: Sequence[str],
    max_shapes: int,
    radius_range: tuple[float, float] = (0.12, 0.3),
    margin: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene.

    Args:
        rng: source of all randomness of this scene.
        size: (height, width).
        shapes: the shape kinds to draw from; class index of `shapes[i]` is `i + 1`.
        max_shapes: 1 to `max_shapes` shapes are drawn, later ones over earlier ones.
        radius_range: shape radius as a fraction of the shorter image side.
        margin: shape centres keep this fraction of the image size from the borders.

    Shape:
        image: uint8 (H, W, 3); mask: uint8 (H, W) with values in [0, len(shapes)].
    """
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = _background(rng, height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(1, max_shapes + 1)):
        label = int(rng.integers(len(shapes)))
        region = _shape_mask(
            rng, shapes[label], yy, xx, rng.uniform(*radius_range) * min(size), margin
        )
        if not region.any():
            continue
        colour = _colour_far_from(rng, image[region].mean(axis=0))
        shading = rng.normal(0, 10, size=(int(region.sum()), 1))
        image[region] = colour + shading
        mask[region] = label + 1
    return np.clip(image, 0, 255).astype(np.uint8), mask


class ShapesSegmentation(Dataset):
    """In-memory split of shapes scenes: `(image FloatTensor[3, H, W], mask LongTensor[H, W])`."""

    def __init__(
        self,
        split: str,
        length: int,
        size: tuple[int, int],
        shapes: Sequence[str],
        max_shapes: int,
        seed: int,
        radius_range: tuple[float, float] = (0.12, 0.3),
    ) -> None:
        # Stored as uint8 and converted per sample: 4x less memory than float.
        self.images = np.zeros((length, *size, 3), np.uint8)
        self.masks = np.zeros((length, *size), np.uint8)
        for i in range(length):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
            self.images[i], self.masks[i] = render_scene(
                rng, size, shapes, max_shapes, radius_range
            )

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_input(self.images[index], MEAN, STD), torch.from_numpy(self.masks[index]).long()


class ShapesClassification(Dataset):
    """In-memory split of single-shape images: `(image FloatTensor[3, H, W], label int)`."""

    def __init__(
        self, split: str, length: int, size: tuple[int, int], shapes: Sequence[str], seed: int
    ) -> None:
        self.images = np.zeros((length, *size, 3), np.uint8)
        self.labels = np.zeros(length, np.int64)
        for i in range(length):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
            self.images[i], mask = render_scene(
                rng, size, shapes, max_shapes=1, radius_range=(0.25, 0.4), margin=0.3
            )
            # Shapes are centred inside the image, so the mask always holds the shape.
            self.labels[i] = int(mask.max()) - 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_input(self.images[index], MEAN, STD), int(self.labels[index])


def _check_shape_names(names: Sequence[str], what: str) -> list[str]:
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names:
        raise SeglabError(f"{what} must name shapes from {list(SHAPES)}; got {list(names)}")
    return list(names)


class _ShapesDataModule(SeglabDataModule):
    """Builds each split once, on first `setup()`, with `_make_split`; with `folds`, the
    train and val scenes pooled and dealt into folds (named "train/<i>", "val/<i>",
    seeded by `seed`)."""

    mean, std = MEAN, STD

    split_sizes: dict[str, int]
    seed: int

    def _make_split(self, split: str, length: int) -> Dataset:
        raise NotImplementedError

    def _labels(self, dataset: Dataset) -> np.ndarray | None:
        """The class of each sample, to stratify folds by; None: not stratified."""
        return None

    _fold_names: dict[str, list[str]] | None = None

    def split_files(self) -> dict[str, list[str]]:
        """With `folds`, the scenes of this fold's train and val sets, named after the
        dataset's own splits ("train/<i>", "val/<i>"): the run directory's `splits/`,
        evaluate's and seglab-audit's image names. Nothing without folds (the splits are
        the dataset's own)."""
        return dict(self._fold_names or {})

    def setup(self, stage: str | None = None) -> None:
        if self.folds is not None and self.train_set is None:
            parts = {
                split: self._make_split(split, self.split_sizes[split])
                for split in ("train", "val")
            }
            names = [f"{split}/{i}" for split, part in parts.items() for i in range(len(part))]
            labels = [self._labels(part) for part in parts.values()]
            train, val = self.fold_indices(
                names, self.seed, labels=None if labels[0] is None else np.concatenate(labels)
            )
            pooled = ConcatDataset(list(parts.values()))
            self._fold_names = {
                "train": [names[i] for i in train],
                "val": [names[i] for i in val],
            }
            self.train_set, self.val_set = (
                Subset(pooled, train.tolist()),
                Subset(pooled, val.tolist()),
            )
        for split, length in self.split_sizes.items():
            if getattr(self, f"{split}_set") is None:
                setattr(self, f"{split}_set", self._make_split(split, length))


class ShapesDataModule(_ShapesDataModule):
    """Semantic segmentation of procedurally drawn shapes.

    Args:
        class_names: "background" followed by the shapes to draw (a subset of
            ellipse, rectangle, triangle); the class index is the position in this list.
        image_size: height and width (or one int for square scenes).
        max_shapes: each scene holds 1 to `max_shapes` shapes, which may overlap.
        num_train, num_val, num_test: scenes per split.
        seed: seeds the scenes, and the folds (independently of the training seed).
        folds, fold: cross-validation on the pooled train and val scenes (see
            `SeglabDataModule`).
        Other arguments: see `SeglabDataModule`.
    """

    task = "segmentation"

    def __init__(
        self,
        class_names: Sequence[str] = (BACKGROUND, *SHAPES),
        num_classes: int = 4,
        ignore_index: int = 255,
        image_size: int | Sequence[int] = 64,
        max_shapes: int = 4,
        num_train: int = 2800,
        num_val: int = 200,
        num_test: int = 200,
        seed: int = 0,
        batch_size: int = 8,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__(
            class_names=class_names,
            num_classes=num_classes,
            ignore_index=ignore_index,
            input_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            folds=folds,
            fold=fold,
        )
        if self.class_names[0] != BACKGROUND:
            raise SeglabError(
                f"data.class_names must start with '{BACKGROUND}'; got {self.class_names}"
            )
        self.shapes = _check_shape_names(self.class_names[1:], "data.class_names[1:]")
        self.max_shapes = max_shapes
        self.split_sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed

    def _make_split(self, split: str, length: int) -> Dataset:
        return ShapesSegmentation(
            split, length, self.input_size, self.shapes, self.max_shapes, self.seed
        )


class ShapesClassificationDataModule(_ShapesDataModule):
    """Image classification of single procedurally drawn shapes (label = the shape).

    Args:
        class_names: the shapes to draw (a subset of ellipse, rectangle, triangle).
        image_size: height and width (the plain CNN's classic input is 32x32).
        num_train, num_val, num_test, seed: as for `ShapesDataModule`.
        folds, fold: cross-validation on the pooled train and val images, stratified by
            shape (see `SeglabDataModule`).
        ignore_index: kept for the common interface; -100 (CrossEntropyLoss's default)
            since every image has a label.
    """

    task = "classification"

    def __init__(
        self,
        class_names: Sequence[str] = SHAPES,
        num_classes: int = 3,
        ignore_index: int = -100,
        image_size: int | Sequence[int] = 32,
        num_train: int = 6000,
        num_val: int = 500,
        num_test: int = 1000,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__(
            class_names=class_names,
            num_classes=num_classes,
            ignore_index=ignore_index,
            input_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            folds=folds,
            fold=fold,
        )
        self.shapes = _check_shape_names(self.class_names, "data.class_names")
        self.split_sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed

    def _make_split(self, split: str, length: int) -> Dataset:
        return ShapesClassification(split, length, self.input_size, self.shapes, self.seed)

    def _labels(self, dataset: Dataset) -> np.ndarray | None:
        return dataset.labels  # type: ignore[attr-defined]
