"""Reading image files into uint8 RGB tensors, with one error type for every failure.

PIL decodes (torchvision's own decoders are deprecated since torchvision 0.29 in favour
of TorchCodec, which seglab does not depend on). EXIF orientation is not applied, as
torchvision's ImageFolder does not.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seglab.errors import one_line

# The image files seglab reads (compared lower-case): training data and predict inputs alike.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# PIL's ways of failing on a file that is not a (whole) image (struct.error: some
# truncated PNG files, read past their end).
PIL_ERRORS = (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError)


class UnreadableImage(OSError):
    """An image file that cannot be decoded (missing, corrupt, truncated, not an image)."""


def read_rgb(path: str | Path) -> torch.Tensor:
    """The image at `path` as a uint8 RGB tensor [3, H, W] (grey and palette images
    expanded, alpha dropped).

    Raises:
        UnreadableImage: the file is missing, corrupt, truncated or not an image.
    """
    try:
        with Image.open(path) as picture:
            picture.load()  # decodes every pixel: a truncated file fails here, not later
            rgb = picture if picture.mode == "RGB" else picture.convert("RGB")
            pixels = np.array(rgb)  # (H, W, 3), a writable copy
    except PIL_ERRORS as err:
        raise UnreadableImage(one_line(err)) from err
    return torch.from_numpy(pixels).permute(2, 0, 1)
