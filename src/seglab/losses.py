"""Losses that need more than a config line: everything else comes straight from
torch.nn and segmentation_models_pytorch.losses in `conf/loss/`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """`torch.nn.CrossEntropyLoss` whose class weights may be a plain list (as YAML gives).

    Args:
        weight: one weight per class, or None.
        ignore_index: target value that contributes nothing (void pixels).
        label_smoothing: in [0, 1).

    Shape:
        logits (N, C, H, W) or (N, C); target LongTensor (N, H, W) or (N,).
    """

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            weight=None if weight is None else torch.as_tensor(list(weight), dtype=torch.float),
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )


class WeightedSumLoss(nn.Module):
    """Weighted sum of named losses, e.g. cross-entropy + Dice.

    Args:
        losses: name -> loss module, each called as `loss(logits, target)`.
        weights: name -> weight; a name missing here weighs 1.
    """

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None):
        super().__init__()
        unknown = set(weights or {}) - set(losses)
        if unknown:
            raise ValueError(
                f"weights given for unknown losses {sorted(unknown)}; losses: {sorted(losses)}"
            )
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in losses}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[n] * loss(logits, target) for n, loss in self.losses.items())
