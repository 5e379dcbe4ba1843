"""Pairing image files with mask files by name stem in a folder of each, and naming every
file left without a partner (an image without mask, a mask without image, two files
sharing a stem)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seglab.data.base import Problems, examples
from seglab.data.io import IMAGE_SUFFIXES

MASK_SUFFIX = ".png"
# Lossy mask files: refused, unless read by a threshold (`data.mask_threshold`).
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg")

Pair = tuple[Path, Path]  # (image, mask)


def _files(folder: Path, suffixes: Sequence[str], problems: Problems) -> dict[str, Path]:
    """`{stem: path}` of the files in `folder` with one of `suffixes` (any case)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            problems.add(
                f"{found[path.stem]} and {path} have the same name stem; images and masks "
                "are paired by stem, so rename or remove one"
            )
            continue
        found[path.stem] = path
    return found


def pair_files(
    image_dir: Path, mask_dir: Path, problems: Problems, lossy_masks: bool = False
) -> list[Pair]:
    """(image, mask) pairs matched by file stem, sorted by stem; every image needs a mask
    and every mask an image (else a problem per unpaired file). Masks are PNG files, or
    also JPEG with `lossy_masks`; without it, a JPEG mask is named as such, not as missing.
    """
    images = _files(image_dir, IMAGE_SUFFIXES, problems)
    suffixes = (MASK_SUFFIX, *LOSSY_MASK_SUFFIXES) if lossy_masks else (MASK_SUFFIX,)
    masks = _files(mask_dir, suffixes, problems)
    if not lossy_masks:
        lossy = _files(mask_dir, LOSSY_MASK_SUFFIXES, Problems(strict=False))
        jpeg = sorted((images.keys() - masks.keys()) & lossy.keys())
        problems.add_each(
            [
                f"mask {lossy[s]} is a JPEG file, whose lossy compression changes the labels "
                "at edges; save it as PNG, or for binary masks read them by a threshold: "
                "data.mask_threshold=128"
                for s in jpeg
            ],
            f"{len(jpeg)} masks in {mask_dir} are JPEG files "
            f"({examples([lossy[s].name for s in jpeg])}), "
            "whose lossy compression changes the labels at edges; save them as PNG, or for "
            "binary masks read them by a threshold: data.mask_threshold=128",
        )
        for stem in jpeg:  # told above: not again as images without masks
            del images[stem]
    lonely_images = sorted(images.keys() - masks.keys())
    problems.add_each(
        [f"image {images[s]} has no mask {mask_dir / s}{MASK_SUFFIX}" for s in lonely_images],
        f"{len(lonely_images)} images in {image_dir} have no mask in {mask_dir} "
        f"({examples([images[s].name for s in lonely_images])}); add masks named <stem>.png "
        "or remove those images",
    )
    lonely_masks = sorted(masks.keys() - images.keys())
    problems.add_each(
        [
            f"mask {masks[s]} has no image {s}.{{{','.join(x[1:] for x in IMAGE_SUFFIXES)}}} "
            f"in {image_dir}"
            for s in lonely_masks
        ],
        f"{len(lonely_masks)} masks in {mask_dir} have no image in {image_dir} "
        f"({examples([masks[s].name for s in lonely_masks])}); add the images or remove "
        "those masks",
    )
    return [(images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())]
