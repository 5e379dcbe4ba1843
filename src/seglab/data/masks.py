"""Decoding a mask file into class labels: class-index masks (the pixel value is the
label) or colour-coded masks (`palette`: one RGB colour per class), then `label_map`
renumbering, then a check that every label is a class or `ignore_index`; and the
validation of the `palette` and `label_map` settings that drive it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.errors import SeglabError

# Index masks of these PIL modes hold the labels as pixel values ("1": 0/1 binary masks).
_INDEX_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L")


class MaskDecoder:
    """PIL mask -> uint8 label array: index or palette decoding, then `label_map`, then a
    check that every label is a class or `ignore_index`.

    Args:
        num_classes: labels must be in [0, num_classes) or equal `ignore_index`.
        ignore_index: label of void pixels, in [0, 255].
        palette: None for class-index masks; else one (r, g, b) per class, and masks are
            RGB images decoded colour -> class (unknown colours -> `ignore_index`).
        label_map: `{old: new}` applied after decoding; new may be `ignore_index`.
        value_fix: what to do about a mask value that is no label, for datasets whose
            label_map is fixed; None: suggest `data.label_map`.
        threshold: None, or lossy binary masks (JPEG): a grey value >= threshold is
            label 1, below it 0 (the mask converted to grey first); needs 2 classes.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int,
        palette: Sequence[Sequence[int]] | None = None,
        label_map: Mapping[int, int] | None = None,
        value_fix: str | None = None,
        threshold: int | None = None,
    ) -> None:
        if threshold is not None and (num_classes != 2 or palette is not None):
            raise SeglabError(
                f"data.mask_threshold={threshold} reads binary masks (2 classes, no palette); "
                f"this config has num_classes={num_classes}"
                f"{' and a palette' if palette is not None else ''}: save such masks as PNG "
                "class indices instead"
            )
        if threshold is not None and not 1 <= int(threshold) <= 255:
            raise SeglabError(
                f"data.mask_threshold must be in [1, 255] (grey value of the foreground's "
                f"lower bound, e.g. 128); got {threshold}"
            )
        self.threshold = None if threshold is None else int(threshold)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.palette = palette
        self.value_fix = value_fix
        # A 256-entry lookup table: one fancy-index applies the whole label_map.
        self.lut = np.arange(256, dtype=np.uint8)
        for old, new in (label_map or {}).items():
            self.lut[int(old)] = int(new)
        if palette is not None:
            codes = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int64)
            order = np.argsort(codes)
            self.codes = codes[order]  # sorted, for np.searchsorted
            self.code_labels = order.astype(np.uint8)

    def _decode_colours(self, mask: Image.Image) -> np.ndarray:
        rgb = np.asarray(mask.convert("RGB"), dtype=np.int64)  # (H, W, 3)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        slot = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        known = self.codes[slot] == codes
        return np.where(known, self.code_labels[slot], self.ignore_index).astype(np.uint8)

    def mode_problem(self, mode: str, path: Path, split: str) -> str | None:
        """Why a mask of PIL `mode` cannot be decoded, or None: class-index masks need an
        index mode (colour-coded masks, with `palette`, may have any)."""
        if self.palette is not None or self.threshold is not None or mode in _INDEX_MODES:
            return None
        return (
            f"mask {path} ({split} split) is a {mode} image; save class-index masks "
            "(mode L or P, pixel value = class) or, for colour-coded masks, set "
            "data.palette to one [r, g, b] per class"
        )

    def _decode_indices(self, mask: Image.Image, path: Path, split: str) -> np.ndarray:
        if (problem := self.mode_problem(mask.mode, path, split)) is not None:
            raise SeglabError(problem)
        labels = np.asarray(mask)
        if labels.dtype != np.uint8 and labels.dtype != np.bool_ and labels.max() > 255:
            raise SeglabError(
                f"mask {path} ({split} split) has value {int(labels.max())} > 255; labels "
                "must fit 8 bits (save 8-bit PNG masks)"
            )
        return labels.astype(np.uint8)

    def __call__(self, mask: Image.Image, path: Path, split: str) -> np.ndarray:
        """Shape: mask (W, H) PIL image -> uint8 (H, W) labels."""
        if self.threshold is not None:
            labels = (np.asarray(mask.convert("L")) >= self.threshold).astype(np.uint8)
        elif self.palette is not None:
            labels = self._decode_colours(mask)
        else:
            labels = self._decode_indices(mask, path, split)
        labels = self.lut[labels]
        # One max() per sample; the exact offending values only when it is off.
        if labels.max() >= self.num_classes:
            present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
            bad = [int(v) for v in present if v >= self.num_classes and v != self.ignore_index]
            if bad:
                fix = self.value_fix or (
                    "fix the mask or map the value with data.label_map "
                    f"(e.g. {{{bad[0]}: {self.ignore_index}}})"
                )
                raise SeglabError(
                    f"mask {path} ({split} split) has value {bad[0]}"
                    f"{f' (and {bad[1:]})' if len(bad) > 1 else ''} but num_classes="
                    f"{self.num_classes}, ignore_index={self.ignore_index}; {fix}"
                )
        return labels


def check_palette(
    palette: Sequence[Sequence[int]] | None, num_classes: int
) -> list[tuple[int, int, int]] | None:
    """`data.palette` as one (r, g, b) tuple per class, or None; a wrong count, a value
    outside 0-255 or a repeated colour raises SeglabError."""
    if palette is None:
        return None
    colours = [tuple(int(v) for v in colour) for colour in palette]
    if len(colours) != num_classes:
        raise SeglabError(
            f"data.palette has {len(colours)} colours but num_classes={num_classes}; give "
            "one [r, g, b] per class, in class order"
        )
    bad = [c for c in colours if len(c) != 3 or not all(0 <= v <= 255 for v in c)]
    if bad:
        raise SeglabError(f"data.palette entries must be [r, g, b] in 0-255; got {bad[0]}")
    if len(set(colours)) != len(colours):
        raise SeglabError(f"data.palette has a colour twice: {colours}; colours must differ")
    return colours  # type: ignore[return-value]


def check_label_map(
    label_map: Mapping[int, int] | None, num_classes: int, ignore_index: int
) -> dict[int, int] | None:
    """`data.label_map` with int keys and values, or None when empty; a key that is no
    8-bit value or a value that is neither a class nor `ignore_index` raises SeglabError."""
    if not label_map:
        return None
    mapping = {int(old): int(new) for old, new in label_map.items()}
    for old, new in mapping.items():
        if not 0 <= old <= 255:
            raise SeglabError(f"data.label_map key {old} is not an 8-bit mask value (0-255)")
        if not (0 <= new < num_classes or new == ignore_index):
            raise SeglabError(
                f"data.label_map maps {old} to {new}, which is neither a class in "
                f"[0, {num_classes}) nor ignore_index={ignore_index}"
            )
    return mapping
