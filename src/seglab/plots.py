"""Figures shared by evaluation and TensorBoard logging.

Figures are built with matplotlib's object API (no pyplot), so nothing here opens a
window or depends on the display backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

# Cells of the confusion matrix get their share as text up to this many classes.
MAX_CELL_TEXT = 30
# Tick labels longer than this are shortened (the full names are in the run's metrics).
MAX_LABEL = 40
CELL_INCHES = 0.45
TITLE = "Confusion matrix: % of each true class (row) predicted as each class (column)"


def percent(share: float, total: float) -> str:
    """A cell's text: the row-normalised `share` as whole percent ("87%"); "<1%" for a
    share that rounds to 0 but is not 0; "–" in a row of a class with no samples
    (`total` 0), where there is no share to show."""
    if total == 0:
        return "–"
    if 0 < share < 0.005:
        return "<1%"
    return f"{round(100 * share)}%"


def count(value: float) -> str:
    """A sample count in at most 4 characters: 950, 12k, 3.4M."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            scaled = value / size
            return f"{scaled:.1f}{unit}" if scaled < 10 else f"{scaled:.0f}{unit}"
    return f"{value:.0f}"


def _label(name: str) -> str:
    """`name`, shortened in the middle to `MAX_LABEL` characters: names that share a
    long prefix ("... number 1", "... number 2") stay apart."""
    if len(name) <= MAX_LABEL:
        return name
    head = (MAX_LABEL - 1) // 2
    return f"{name[:head]}…{name[-(MAX_LABEL - 1 - head) :]}"


def confusion_figure(confmat: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """Confusion matrix normalised per true class (each row sums to 100%: recall on the
    diagonal), so classes of very different sample counts read on one scale. Cells show
    whole percent (`percent`), up to `MAX_CELL_TEXT` classes; each row's label gives its
    class's sample count (pixels or images, `n=12k`), the 100% of that row.

    Args:
        confmat: (C, C) counts, rows = true class, columns = predicted class.
        class_names: the C class names, shortened to `MAX_LABEL` characters on the axes
            (`_label`), with their index where that leaves two alike.

    Returns:
        The figure, its title wrapped to fit inside it.
    """
    counts = confmat.double().cpu()
    totals = counts.sum(dim=1)
    shares = counts / totals.clamp_min(1)[:, None]
    n = len(class_names)
    names = [_label(name) for name in class_names]
    if len(set(names)) < n:  # shortened alike: told apart by their index
        names = [f"{i}: {name}" for i, name in enumerate(names)]
    fontsize = 10 if n <= 10 else 8
    # The longest row label ("<name> (n=12.3k)", about 0.6 em a character) beside the cells.
    longest = max(len(name) for name in names) + len(" (n=12.3k)")
    label_inches = longest * fontsize * 0.6 / 72 + 0.6
    size = max(4.0, CELL_INCHES * n + label_inches + 1.0)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["Blues"]
    ax.imshow(shares.numpy(), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), names, fontsize=fontsize)
    ax.set_yticks(
        range(n),
        [f"{name} (n={count(t)})" for name, t in zip(names, totals.tolist(), strict=True)],
        fontsize=fontsize,
    )
    ax.tick_params(axis="x", labelrotation=45)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
        tick.set_rotation_mode("anchor")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= MAX_CELL_TEXT:
        for i, total in enumerate(totals.tolist()):
            for j in range(n):
                share = shares[i, j].item()
                ax.text(
                    j,
                    i,
                    percent(share, total),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if share > 0.6 else "black",
                )
    # Wrapped to the figure's width (about 0.6 em a character), centred on the figure.
    width = max(20, int(size * 72 * 0.9 / (12 * 0.6)))
    fig.suptitle(textwrap.fill(TITLE, width), fontsize=12)
    return fig
