"""Datamodules: each yields `(image FloatTensor[3, H, W], mask LongTensor[H, W])` for
segmentation or `(image, label)` for classification, and exposes `task`, `num_classes`,
`class_names`, `ignore_index` and `input_size`."""

from seglab.data.base import SeglabDataModule
from seglab.data.cifar10 import CIFAR10DataModule
from seglab.data.cityscapes import CityscapesDataModule
from seglab.data.folder import FolderDataModule
from seglab.data.image_folder import ImageFolderDataModule
from seglab.data.image_mask import ImageMaskDataModule
from seglab.data.shapes import ShapesClassificationDataModule, ShapesDataModule
from seglab.data.voc import VOCDataModule

__all__ = [
    "CIFAR10DataModule",
    "CityscapesDataModule",
    "FolderDataModule",
    "ImageFolderDataModule",
    "ImageMaskDataModule",
    "SeglabDataModule",
    "ShapesClassificationDataModule",
    "ShapesDataModule",
    "VOCDataModule",
]
