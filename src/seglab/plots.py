"""Figures shared by evaluation, the report and TensorBoard logging: the confusion
matrix and the grid of sample predictions (one renderer for TensorBoard's images and the
report's samples).

Figures are built with matplotlib's object API (no pyplot), so nothing here opens a
window or depends on the display backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

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


def colour_mask(mask: torch.Tensor, palette: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    """Class-index mask (H, W) -> uint8 RGB (3, H, W); labels outside the palette (void)
    are white."""
    table = torch.tensor([*palette, (255, 255, 255)], dtype=torch.uint8)
    index = mask.long().clone()
    index[(index < 0) | (index >= len(palette))] = len(palette)
    return table[index].permute(2, 0, 1)


def fit_tile(tile: np.ndarray, side: int, labels: bool) -> torch.Tensor:
    """uint8 (H, W, 3) scaled to `side` on its longer side (labels stay crisp) on a white
    `side` square: images of any size share one grid, each shown whole and nothing more.

    Shape:
        (H, W, 3) -> uint8 (3, side, side).
    """
    scale = side / max(tile.shape[:2])
    size = (max(1, round(tile.shape[1] * scale)), max(1, round(tile.shape[0] * scale)))
    method = Image.NEAREST if labels or scale >= 1 else Image.BILINEAR
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(Image.fromarray(tile).resize(size, method))
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1)


def segmentation_tiles(
    pictures: Sequence[np.ndarray],
    targets: Sequence[torch.Tensor],
    preds: Sequence[torch.Tensor],
    palette: Sequence[tuple[int, int, int]],
    side: int,
) -> list[torch.Tensor]:
    """image | truth | prediction per sample, each at the sample's own size fitted into a
    `side` square (`fit_tile`), for `make_grid(..., nrow=3)`."""
    tiles = []
    for picture, target, pred in zip(pictures, targets, preds, strict=True):
        tiles += [
            fit_tile(picture, side, labels=False),
            fit_tile(colour_mask(target, palette).permute(1, 2, 0).numpy(), side, labels=True),
            fit_tile(colour_mask(pred, palette).permute(1, 2, 0).numpy(), side, labels=True),
        ]
    return tiles


def _captioned(image: np.ndarray, caption: str, scale: int) -> torch.Tensor:
    """uint8 (H, W, 3) image enlarged `scale` times with `caption` written on top."""
    picture = Image.fromarray(image).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST
    )
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, picture.width, 12), fill=(0, 0, 0))
    draw.text((2, 0), caption, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def sample_grid(
    pictures: Sequence[np.ndarray],
    targets: Sequence[torch.Tensor],
    preds: Sequence[torch.Tensor],
    *,
    segmentation: bool,
    class_names: Sequence[str],
    palette: Sequence[tuple[int, int, int]],
    side: int,
    padding: int,
) -> torch.Tensor:
    """Samples with their predictions as one image. Segmentation: a row per sample of
    image | truth | prediction in the palette (void white), each fitted into a `side`
    square. Classification: four images a row, enlarged by a whole factor towards `side`
    and captioned with their true (T) and predicted (P) class.

    Shape:
        pictures: uint8 (H, W, 3) each (sizes may differ); targets, preds: (H, W) class
        indices, or scalar classes -> uint8 (3, H', W').
    """
    if segmentation:
        tiles = segmentation_tiles(pictures, targets, preds, palette, side)
        return make_grid(tiles, nrow=3, padding=padding, pad_value=255)
    scale = max(1, side // max(pictures[0].shape[:2]))
    tiles = [
        _captioned(p, f"T:{class_names[int(t)]} P:{class_names[int(q)]}", scale)
        for p, t, q in zip(pictures, targets, preds, strict=True)
    ]
    return make_grid(tiles, nrow=4, padding=padding, pad_value=255)


def reliability_figure(
    rows: Sequence[dict], raw_rows: Sequence[dict] | None = None, title: str = ""
) -> Figure:
    """The reliability diagram of `seglab.calibration.ReliabilityBins.rows()`: accuracy
    per confidence bin as bars against the diagonal (perfect calibration), with the share
    of samples per bin beneath; `raw_rows`, before temperature scaling, as a line."""
    fig = Figure(figsize=(5.0, 5.6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / len(rows)
    centres = [(r["bin_low"] + r["bin_high"]) / 2 for r in rows]
    accuracy = [r["accuracy"] if r["accuracy"] is not None else 0.0 for r in rows]
    top.bar(centres, accuracy, width=width * 0.95, color="#4c72b0", label="accuracy")
    gaps = [
        (c, r["confidence"] - r["accuracy"])
        for c, r in zip(centres, rows, strict=True)
        if r["accuracy"] is not None
    ]
    top.bar(
        [c for c, _ in gaps],
        [g for _, g in gaps],
        bottom=[r["accuracy"] for r in rows if r["accuracy"] is not None],
        width=width * 0.95,
        color="none",
        edgecolor="#c44e52",
        hatch="//",
        label="gap to confidence",
    )
    if raw_rows is not None:
        points = [
            ((r["bin_low"] + r["bin_high"]) / 2, r["accuracy"])
            for r in raw_rows
            if r["accuracy"] is not None
        ]
        top.plot(*zip(*points, strict=True), "o-", color="#dd8452", label="before scaling")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    top.legend(loc="upper left", fontsize=8)
    total = sum(r["count"] for r in rows) or 1
    bottom.bar(centres, [r["count"] / total for r in rows], width=width * 0.95, color="grey")
    bottom.set(xlabel="confidence (probability of the predicted class)", ylabel="share")
    fig.tight_layout()
    return fig
