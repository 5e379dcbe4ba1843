"""Datamodules: each yields `(image FloatTensor[3, H, W], mask LongTensor[H, W])` for
segmentation or `(image, label)` for classification, and exposes `task`, `num_classes`,
`class_names`, `ignore_index` and `input_size`."""

from seglab.data.base import SeglabDataModule
from seglab.data.folder import FolderDataModule
from seglab.data.shapes import ShapesClassificationDataModule, ShapesDataModule

__all__ = [
    "FolderDataModule",
    "SeglabDataModule",
    "ShapesClassificationDataModule",
    "ShapesDataModule",
]
