"""Figures shared by evaluation and TensorBoard logging.

Figures are built with matplotlib's object API (no pyplot), so nothing here opens a
window or depends on the display backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torchmetrics.utilities.plot import plot_confusion_matrix


def confusion_figure(confmat: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """Confusion matrix normalised per true class (each row sums to 1; recall on the
    diagonal), so classes of very different pixel counts read on one scale.

    Shape:
        confmat: (C, C) counts, rows = true class, columns = predicted class.
    """
    counts = confmat.double().cpu()
    normalised = torch.round(counts / counts.sum(dim=1, keepdim=True).clamp_min(1), decimals=2)
    size = max(4.0, 0.6 * len(class_names) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    plot_confusion_matrix(
        normalised, ax=ax, add_text=len(class_names) <= 30, labels=list(class_names)
    )
    ax.set_title("confusion matrix (rows normalised)")
    return fig
