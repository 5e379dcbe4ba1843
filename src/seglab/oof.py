"""The label audit's files: the out-of-fold probabilities of a fold (`oof/fold_<k>.npz`)
and `label_issues.csv`. Written by `seglab.audit`, read by it and by its page
(`seglab.report.audit`).

Storage: per image, the probabilities quantised to uint8 (round(255 p); error at most
1/510 per value) at most `oof_size` pixels on the long side (area-downsampled, aspect
kept, never upsampled), its mask (nearest neighbour, uint8) and a uint8 RGB thumbnail
of the same size, deflated in one zip (.npz) per fold written image by image (memory
stays one image). Uncompressed that is (classes + 4) x h x w bytes: 128 KiB for 4
classes at 128 x 128 (so 4,000 images under 0.5 GiB); deflate takes a further share off
(confident probabilities are runs of 0 and 255).
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

AUDIT_JSON = "audit.json"
ISSUES_CSV = "label_issues.csv"
SUSPECTS = "suspects.npz"
OOF_DIR = "oof"
CSV_COLUMNS = ("rank", "image", "label_quality", "suspect_pixel_share", "fold")


def grid_size(height: int, width: int, oof_size: int) -> tuple[int, int]:
    """(h, w) stored for an image of (height, width): the long side at most `oof_size`,
    the aspect ratio kept, never upsampled, each side at least 1."""
    scale = min(1.0, oof_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def quantise(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 round(255 p); `dequantise` is off by <= 1/510."""
    return np.clip(np.rint(np.asarray(probs, np.float32) * 255), 0, 255).astype(np.uint8)


def dequantise(values: np.ndarray) -> np.ndarray:
    """uint8 -> float32 probabilities, values / 255."""
    return np.asarray(values, np.float32) / 255


def downsample(
    probs: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's out-of-fold record at `size`.

    Shape:
        probs: float Tensor[K, H, W] (summing to 1 over K), area-averaged (still sums to
        1); mask: Tensor[H, W], nearest neighbour; image: uint8 Tensor[3, H, W],
        antialiased. Returns uint8 arrays probs [K, h, w], mask [h, w], image [h, w, 3].
    """
    if tuple(probs.shape[-2:]) != size:
        probs = F.interpolate(probs[None].float(), size=size, mode="area")[0]
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0]
        image = F.interpolate(
            image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )[0]
    image = image.round().clamp(0, 255).byte().permute(1, 2, 0)
    return quantise(probs.cpu().numpy()), mask.cpu().numpy().astype(np.uint8), image.cpu().numpy()


class FoldWriter:
    """`oof/fold_<k>.npz`, written image by image: a zip of `.npy` members (`probs_<i>`,
    `mask_<i>`, `image_<i>`) plus `index`, the JSON of the fold's entries; `np.load`
    reads it lazily, member by member. Written as a hidden partial file renamed into
    place on `close()`, so an existing file is always whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = path.with_name(f".{path.name}.partial")
        self.zip = zipfile.ZipFile(self.partial, "w", compression=zipfile.ZIP_DEFLATED)

    def _member(self, name: str, array: np.ndarray) -> None:
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as file:
            np.lib.format.write_array(file, np.ascontiguousarray(array), allow_pickle=False)

    def add(self, i: int, probs: np.ndarray, mask: np.ndarray, image: np.ndarray) -> None:
        self._member(f"probs_{i}", probs)
        self._member(f"mask_{i}", mask)
        self._member(f"image_{i}", image)

    def close(self, index: dict[str, Any]) -> None:
        self._member("index", np.array(json.dumps(index)))
        self.zip.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        self.zip.close()
        self.partial.unlink(missing_ok=True)


def read_index(path: Path) -> dict[str, Any] | None:
    """The `index` of a fold's .npz ({"checkpoint", "oof_size", "entries": [...]}), or
    None when the file is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return json.loads(stored["index"].item())
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def write_csv(
    path: Path,
    entries: list[dict[str, Any]],
    scores: np.ndarray,
    shares: np.ndarray,
    ranked: np.ndarray,
) -> Path:
    """`label_issues.csv`: `CSV_COLUMNS`, one row per image, worst first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        out = csv.writer(file)
        out.writerow(CSV_COLUMNS)
        for r, i in enumerate(ranked, start=1):
            e = entries[i]
            out.writerow([r, e["name"], f"{scores[i]:.6f}", f"{shares[i]:.6f}", e["fold"]])
    return path


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a `label_issues.csv`, numbers as numbers."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return [
        {"rank": int(r["rank"]), "image": r["image"], "label_quality": float(r["label_quality"]),
         "suspect_pixel_share": float(r["suspect_pixel_share"]), "fold": int(r["fold"])}
        for r in rows
    ]  # fmt: skip
