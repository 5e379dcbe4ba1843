"""Scores of each image, so the images a model fails on can be found and looked at.

    table = ImageTable(class_names, ignore_index, task="segmentation", worst=8)
    table.update(names, images, logits, targets)   # per batch
    table.rows()        # worst first: per-image mIoU, pixel accuracy, IoU per class
    table.worst         # the `worst` lowest-scoring (name, image, target, prediction)

A segmentation image's row comes from its own confusion matrix (its labelled pixels
only), by the same definitions as the epoch's metrics (`seglab.metrics`): IoU of each
class present in its truth or its prediction, their mean (`mIoU`), and pixel accuracy.
Summing every image's confusion gives the epoch's. A classifier's row is the image's
label, prediction, the prediction's probability and whether it is right; the worst are
the confident mistakes (wrong, most probable first), then the least confident hits.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from seglab.metrics import metrics_from_confusion
from seglab.plots import colour_mask

# Error map colours: right, wrong, and unlabelled (ignore_index) pixels.
RIGHT, WRONG, VOID = (235, 235, 235), (220, 30, 30), (40, 40, 40)


def image_confusions(
    preds: torch.Tensor, targets: torch.Tensor, num_classes: int, ignore_index: int | None
) -> torch.Tensor:
    """Confusion matrix of each image: preds, targets (N, H, W) -> (N, C, C) counts,
    rows = target class, columns = predicted class; ignore_index pixels left out."""
    n = preds.shape[0]
    t, p = targets.reshape(n, -1).long(), preds.reshape(n, -1).long()
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    image = torch.arange(n, device=t.device)[:, None].expand_as(t)
    codes = (image * num_classes + t) * num_classes + p
    counts = torch.bincount(codes[keep], minlength=n * num_classes * num_classes)
    return counts.reshape(n, num_classes, num_classes).cpu()


def error_map(target: torch.Tensor, pred: torch.Tensor, ignore_index: int | None) -> np.ndarray:
    """uint8 (H, W, 3): right pixels light grey, wrong red, unlabelled dark."""
    out = np.empty((*target.shape, 3), np.uint8)
    wrong = (target != pred).numpy()
    out[:] = RIGHT
    out[wrong] = WRONG
    if ignore_index is not None:
        out[(target == ignore_index).numpy()] = VOID
    return out


def _number(value: torch.Tensor) -> float | None:
    value = float(value)
    return None if value != value else round(value, 6)  # NaN (class absent) -> empty cell


class ImageTable:
    """Per-image rows and the `worst` lowest-scoring images, accumulated over batches.

    Args:
        class_names: one per class.
        ignore_index: mask value of unlabelled pixels (segmentation).
        task: "segmentation" or "classification".
        worst: how many of the worst images to keep with their pixels (for a figure).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_index: int | None,
        task: str = "segmentation",
        worst: int = 8,
    ) -> None:
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.task = task
        self.keep = worst
        self._rows: list[dict[str, Any]] = []
        self._heap: list[tuple[float, int, Any]] = []  # (-badness, order, sample): max-heap
        self._order = itertools.count()
        self.confusion = torch.zeros(len(self.class_names), len(self.class_names), dtype=torch.long)

    def update(
        self,
        names: Sequence[str],
        images: torch.Tensor,
        probabilities: torch.Tensor,
        targets: torch.Tensor,
    ) -> None:
        """names: one per image; images: what the net saw (N, 3, H, W); probabilities:
        (N, C, H, W) or (N, C); targets: (N, H, W) or (N,)."""
        confidence, preds = probabilities.max(dim=1)
        if self.task == "segmentation":
            self._segmentation(names, images, preds, targets)
        else:
            self._classification(names, images, confidence, preds, targets)

    def _segmentation(self, names, images, preds, targets) -> None:
        confusions = image_confusions(preds, targets, len(self.class_names), self.ignore_index)
        self.confusion += confusions.sum(0)
        for i, (name, confmat) in enumerate(zip(names, confusions, strict=True)):
            values = metrics_from_confusion(confmat, self.class_names)
            row: dict[str, Any] = {
                "image": name,
                "mIoU": _number(values["mIoU"]),
                "acc": _number(values["acc"]),
                "pixels": int(confmat.sum()),
            }
            row.update({f"IoU/{c}": _number(values[f"IoU/{c}"]) for c in self.class_names})
            self._rows.append(row)
            badness = 1.0 - (row["mIoU"] if row["mIoU"] is not None else 1.0)
            self._offer(badness, name, images[i], targets[i], preds[i])

    def _classification(self, names, images, confidence, preds, targets) -> None:
        for i, name in enumerate(names):
            label, pred, prob = int(targets[i]), int(preds[i]), float(confidence[i])
            correct = label == pred
            self.confusion[label, pred] += 1
            self._rows.append(
                {
                    "image": name,
                    "label": self.class_names[label],
                    "predicted": self.class_names[pred],
                    "probability": round(prob, 6),
                    "correct": correct,
                }
            )
            # Mistakes (1 + their confidence) rank above hits (1 - their confidence).
            self._offer(1.0 + prob if not correct else 1.0 - prob, name, images[i], label, pred)

    def _offer(self, badness: float, name: str, image, target, pred) -> None:
        if self.keep <= 0:
            return
        entry = (badness, next(self._order), None)
        if len(self._heap) < self.keep:
            sample = (name, image.detach().cpu(), _cpu(target), _cpu(pred))
            heapq.heappush(self._heap, (entry[0], entry[1], sample))
        elif badness > self._heap[0][0]:
            sample = (name, image.detach().cpu(), _cpu(target), _cpu(pred))
            heapq.heapreplace(self._heap, (entry[0], entry[1], sample))

    def rows(self) -> list[dict[str, Any]]:
        """Every image's row, worst first (ties in input order)."""
        if self.task == "segmentation":

            def key(row):
                return (1.0 if row["mIoU"] is None else row["mIoU"], row["acc"] or 0.0)
        else:

            def key(row):
                return (
                    row["correct"],
                    -row["probability"] if not row["correct"] else row["probability"],
                )

        return sorted(self._rows, key=key)

    @property
    def worst(self) -> list[tuple[str, torch.Tensor, Any, Any]]:
        """(name, image, target, prediction) of the worst images, worst first."""
        return [sample for *_, sample in sorted(self._heap, key=lambda e: (-e[0], e[1]))]


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def worst_grid(
    worst: Sequence[tuple[str, torch.Tensor, Any, Any]],
    pictures: Sequence[np.ndarray],
    palette: Sequence[tuple[int, int, int]],
    ignore_index: int | None,
    side: int = 160,
) -> np.ndarray:
    """image | truth | prediction | error map, one row per worst segmentation image, as
    uint8 (H, W, 3); `pictures` are the images as uint8 (H, W, 3)."""
    from torchvision.utils import make_grid  # noqa: PLC0415

    from seglab.plots import fit_tile  # noqa: PLC0415

    tiles = []
    for (_, _, target, pred), picture in zip(worst, pictures, strict=True):
        tiles += [
            fit_tile(picture, side, labels=False),
            fit_tile(colour_mask(target, palette).permute(1, 2, 0).numpy(), side, labels=True),
            fit_tile(colour_mask(pred, palette).permute(1, 2, 0).numpy(), side, labels=True),
            fit_tile(error_map(target, pred, ignore_index), side, labels=True),
        ]
    return make_grid(tiles, nrow=4, padding=4, pad_value=255).permute(1, 2, 0).numpy()
