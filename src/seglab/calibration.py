"""How far a model's confidence is from its accuracy, and temperature scaling to close it.

    bins = ReliabilityBins(15)
    bins.update(probabilities, targets)        # (N, C, H, W) or (N, C); ignore_index dropped
    bins.ece()                                 # expected calibration error
    temperature = fit_temperature(logits, targets)   # (M, C) logits of sampled pixels

Definitions (Guo et al., "On Calibration of Modern Neural Networks", 2017): each pixel
(or image, for a classifier) has a confidence, the probability of its predicted class, and
is correct when that class is its label. Confidences fall into `n_bins` equal-width bins
over [0, 1]: bin b holds those in ((b-1)/n, b/n], the first also 0. The expected calibration
error is sum over bins of (n_b / n) * |accuracy_b - mean confidence_b|, where n_b counts
the bin's samples. Temperature scaling divides the logits by one scalar T > 0 fitted to
minimise the negative log-likelihood on held-out data: the argmax, so every mask and every
IoU, stays the same; only the probabilities change.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_BINS = 15


class ReliabilityBins:
    """Per-bin sample count, summed confidence and correct count, accumulated over batches.

    Args:
        n_bins: equal-width confidence bins over [0, 1].
        ignore_index: target value whose pixels are left out (None: none).
    """

    def __init__(self, n_bins: int = DEFAULT_BINS, ignore_index: int | None = None) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins must be at least 1; got {n_bins}")
        self.n_bins = n_bins
        self.ignore_index = ignore_index
        self.count = torch.zeros(n_bins, dtype=torch.float64)
        self.confidence = torch.zeros(n_bins, dtype=torch.float64)
        self.correct = torch.zeros(n_bins, dtype=torch.float64)

    def update(self, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        """probabilities (N, C, ...) summing to 1 over dim 1; targets (N, ...) class indices."""
        confidence, predicted = probabilities.detach().max(dim=1)
        confidence, predicted, targets = (
            t.reshape(-1).cpu() for t in (confidence, predicted, targets)
        )
        if self.ignore_index is not None:
            keep = targets != self.ignore_index
            confidence, predicted, targets = confidence[keep], predicted[keep], targets[keep]
        confidence = confidence.double()
        # Bin b holds ((b-1)/n, b/n]: ceil(c * n) - 1, with 0 in the first bin.
        index = (torch.ceil(confidence * self.n_bins).long() - 1).clamp(0, self.n_bins - 1)
        self.count += torch.bincount(index, minlength=self.n_bins).double()
        self.confidence += torch.bincount(index, confidence, minlength=self.n_bins)
        hits = (predicted == targets).double()
        self.correct += torch.bincount(index, hits, minlength=self.n_bins)

    @property
    def total(self) -> int:
        return int(self.count.sum())

    def ece(self) -> float | None:
        """The expected calibration error; None before any sample."""
        total = self.count.sum()
        if total == 0:
            return None
        filled = self.count > 0
        gap = (self.correct[filled] - self.confidence[filled]).abs()  # n_b * |acc_b - conf_b|
        return float(gap.sum() / total)

    def rows(self) -> list[dict[str, Any]]:
        """One row per bin: its range, sample count, mean confidence and accuracy (None
        where the bin is empty): the reliability diagram's data."""
        rows = []
        for b in range(self.n_bins):
            n = float(self.count[b])
            rows.append(
                {
                    "bin_low": b / self.n_bins,
                    "bin_high": (b + 1) / self.n_bins,
                    "count": int(n),
                    "confidence": float(self.confidence[b] / n) if n else None,
                    "accuracy": float(self.correct[b] / n) if n else None,
                }
            )
        return rows


class PixelSample:
    """A bounded, seeded sample of (logits, target) pixels for fitting the temperature.

    Takes up to `per_batch` labelled pixels from each batch, drawn uniformly, so memory
    stays `per_batch * batches * C` floats whatever the image size.
    """

    def __init__(self, per_batch: int = 20_000, ignore_index: int | None = None, seed: int = 0):
        self.per_batch = per_batch
        self.ignore_index = ignore_index
        self.generator = torch.Generator().manual_seed(seed)
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """logits (N, C, ...) and targets (N, ...)."""
        classes = logits.shape[1]
        flat = logits.detach().movedim(1, -1).reshape(-1, classes).float().cpu()
        labels = targets.reshape(-1).cpu()
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            flat, labels = flat[keep], labels[keep]
        if len(labels) > self.per_batch:
            pick = torch.randperm(len(labels), generator=self.generator)[: self.per_batch]
            flat, labels = flat[pick], labels[pick]
        self.logits.append(flat)
        self.targets.append(labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.logits:
            raise ValueError("no labelled pixels were sampled")
        return torch.cat(self.logits), torch.cat(self.targets)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 minimising the mean negative log-likelihood of `softmax(logits / T)`.

    Args:
        logits: (M, C) float; targets: (M,) class indices.

    Optimised over log T (so T stays positive) with L-BFGS from T = 1.
    """
    logits, targets = logits.double(), targets.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())
