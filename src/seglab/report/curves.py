"""A run's logged scalars (TensorBoard event files, else the CSV log) and the figure of
its training and validation curves."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seglab.errors import one_line
from seglab.report.html import png
from seglab.rundir import SUMMARY_METRICS
from seglab.tensorboard import logged_name, read_class_runs

log = logging.getLogger(__name__)


def read_curves(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], str | None]:
    """Every logged scalar as (step, value) points, sorted by step: from the TensorBoard
    event files in `tensorboard/`, else from the CSV logger's `csv/metrics.csv`;
    ({}, None) without either. Returns the curves and where they came from.

    A run folder below `tensorboard/` (the per-class runs `classes/<class>/`, each
    logging `val/IoU`) adds its class name to its tags: `val/IoU/<class>`, as in the CSV
    log. Tags are read back as the names they were logged under (`val/mIoU_best` is
    `best/val/mIoU`, `train/epoch` is `epoch`: `seglab.tensorboard.logged_name`).
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    events = run_dir / "tensorboard"
    folders = sorted({p.parent for p in events.glob("**/events.out.tfevents.*")})
    if folders:
        # Its reader logs every event file it moves to at INFO: not the run's business.
        logging.getLogger("tensorboard").setLevel(logging.WARNING)
        class_runs = read_class_runs(events)
        for folder in folders:
            accumulator = EventAccumulator(
                str(folder), size_guidance={"scalars": 0, "images": 1, "tensors": 1}
            )
            accumulator.Reload()
            # A class run's folder is its class name made safe: the real name is recorded.
            run = folder.relative_to(events).as_posix()
            suffix = "" if folder == events else f"/{class_runs.get(run, folder.name)}"
            for tag in accumulator.Tags()["scalars"]:
                points = [(e.step, e.value) for e in accumulator.Scalars(tag)]
                curves.setdefault(logged_name(tag) + suffix, []).extend(points)
        source = "TensorBoard event files (tensorboard/)"
    elif (run_dir / "csv" / "metrics.csv").is_file():
        with (run_dir / "csv" / "metrics.csv").open(newline="") as file:
            for row in csv.DictReader(file):
                step = int(float(row.get("step") or 0))
                for tag, value in row.items():
                    if tag in ("step", "epoch") or value in (None, ""):
                        continue
                    curves.setdefault(tag, []).append((step, float(value)))
        source = "CSV log (csv/metrics.csv)"
    if not curves:
        return {}, None
    return {tag: sorted(points) for tag, points in curves.items()}, source


def curves_figure(run_dir: Path) -> tuple[str | None, str | None]:
    """The training and validation curves as one figure: loss, validation metrics,
    per-class validation IoU (accuracy for classifiers), learning rate; (None, None)
    without logs."""
    try:
        curves, source = read_curves(run_dir)
    except Exception as err:  # a damaged event file: say so, keep the rest of the page
        log.warning("Cannot read the logs of %s: %s", run_dir, one_line(err))
        return None, None
    losses = ("train/loss_step", "train/loss_epoch", "train/loss", "val/loss")
    kind = "IoU" if any(t.startswith("val/IoU/") for t in curves) else "Acc"
    panels = [
        ([t for t in losses if t in curves], "loss"),
        (
            [f"val/{m}" for m in SUMMARY_METRICS if m != "loss" and f"val/{m}" in curves],
            "validation",
        ),
        (
            [t for t in curves if t.startswith(f"val/{kind}/")],
            f"validation {'IoU' if kind == 'IoU' else 'accuracy'} per class",
        ),
        (sorted(t for t in curves if t.startswith("lr-")), "learning rate"),
    ]
    panels = [(tags, title) for tags, title in panels if tags]
    if not panels:
        return None, source
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(5.4 * columns, 3.3 * rows))
    for i, (tags, title) in enumerate(panels, start=1):
        ax = fig.add_subplot(rows, columns, i)
        for tag in tags:
            steps, values = zip(*curves[tag], strict=True)
            per_step = tag.endswith("_step")
            ax.plot(
                steps,
                values,
                label=tag.rsplit("/", 1)[-1] if title.endswith("per class") else tag,
                marker=None if len(steps) > 40 else "o",
                markersize=3,
                linewidth=0.8 if per_step else 1.5,
                alpha=0.6 if per_step else 1.0,
            )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=1 + len(tags) // 8)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    fig.set_layout_engine("constrained")
    return png(fig), source
