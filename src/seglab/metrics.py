"""Segmentation metrics from one epoch-wide confusion matrix.

Definitions follow MMSegmentation and the Cityscapes benchmark: pixels whose target is
`ignore_index` are dropped; IoU_c = TP / (TP + FP + FN); mean IoU averages over the
classes that occur in the target or the prediction (union > 0); pixel accuracy is
TP.sum() / pixels; mean accuracy averages TP / (TP + FN) over classes present in the
target; Dice_c = 2 TP / (2 TP + FP + FN), averaged like IoU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Accumulates a confusion matrix over batches (and DDP ranks) and derives the metrics.

    Args:
        class_names: one name per class; `num_classes` is its length.
        ignore_index: target value excluded from every metric.

    Shape:
        update(preds, target): preds LongTensor[N, H, W] of class indices or
        FloatTensor[N, C, H, W] of logits; target LongTensor[N, H, W].
        compute() -> {"mIoU", "acc", "mAcc", "mDice", "IoU/<name>", "Acc/<name>"}:
        0-dim tensors; a per-class value is NaN when its class never occurs.
        After compute(), `last_confusion` holds the (C, C) matrix it used (summed over
        DDP ranks), rows = target class, columns = predicted class.
    """

    def __init__(self, class_names: Sequence[str], ignore_index: int | None = None) -> None:
        super().__init__(num_classes=len(class_names), ignore_index=ignore_index)
        self.class_names = list(class_names)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        # torchmetrics runs compute on the matrix summed over DDP ranks; keep that one.
        self.last_confusion = self.confmat.clone()
        return metrics_from_confusion(self.confmat, self.class_names)

    @property
    def names(self) -> list[str]:
        """The keys `compute()` returns."""
        size = len(self.class_names)
        return list(metrics_from_confusion(torch.zeros(size, size), self.class_names))


def metrics_from_confusion(
    confmat: torch.Tensor, class_names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Metrics of a (C, C) confusion matrix, rows = target class, columns = predicted class."""
    cm = confmat.double()
    tp = cm.diag()
    target_count = cm.sum(1)  # TP + FN
    pred_count = cm.sum(0)  # TP + FP
    union = target_count + pred_count - tp
    nan = torch.tensor(float("nan"), dtype=cm.dtype, device=cm.device)
    iou = torch.where(union > 0, tp / union, nan)
    dice = torch.where(union > 0, 2 * tp / (target_count + pred_count), nan)
    class_acc = torch.where(target_count > 0, tp / target_count, nan)
    total = cm.sum()
    out = {
        "mIoU": iou.nanmean(),
        "acc": tp.sum() / total if total > 0 else nan,
        "mAcc": class_acc.nanmean(),
        "mDice": dice.nanmean(),
    }
    out.update({f"IoU/{name}": iou[i] for i, name in enumerate(class_names)})
    out.update({f"Acc/{name}": class_acc[i] for i, name in enumerate(class_names)})
    return {k: v.float() for k, v in out.items()}
