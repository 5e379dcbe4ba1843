"""Segmentation and classification metrics from one epoch-wide confusion matrix.

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


class ClassificationMetrics(SegmentationMetrics):
    """Image classification metrics: top-1 accuracy (`acc`), mean per-class accuracy
    (`mAcc`), per-class accuracy (`Acc/<name>`, the recall) from the confusion matrix,
    and with more than `top_k` classes the top-k accuracy (`acc_top5` for k = 5).

    Shape:
        update(preds, target): preds FloatTensor[N, C] of logits (or LongTensor[N] of
        class indices, then without top-k); target LongTensor[N].
    """

    def __init__(self, class_names: Sequence[str], top_k: int = 5) -> None:
        super().__init__(class_names, ignore_index=None)
        self.top_k = top_k if len(self.class_names) > top_k else None
        self.add_state("topk_hits", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("samples", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        if preds.dim() == 1 and self.top_k is not None:
            raise ValueError(f"top-{self.top_k} accuracy needs logits (N, C), not class indices")
        if preds.dim() == 2:
            if self.top_k is not None:
                top = preds.topk(self.top_k, dim=1).indices
                self.topk_hits += (top == target[:, None]).any(dim=1).sum()
                self.samples += target.numel()
            preds = preds.argmax(dim=1)
        super().update(preds, target)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        full = super().compute()
        if self.top_k is not None:
            full[f"acc_top{self.top_k}"] = (self.topk_hits / self.samples.clamp_min(1)).float()
        return {name: full[name] for name in self.names}

    @property
    def names(self) -> list[str]:
        top_k = [f"acc_top{self.top_k}"] if self.top_k is not None else []
        return ["acc", "mAcc", *top_k, *(f"Acc/{name}" for name in self.class_names)]


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
