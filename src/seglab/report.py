"""One self-contained HTML page for a run or a sweep: open it in any browser, offline
(images inline as PNG, no external script or style).

    python -m seglab.report outputs/train/runs/<time>        # -> <run dir>/report.html
    python -m seglab.report outputs/train/multirun/<time>    # -> <sweep dir>/report.html
    make report RUN=outputs/train/multirun/<time>

A run's page: command and overrides, final metrics, per-class IoU (accuracy for
classifiers) as a chart and a table, training and validation curves (TensorBoard event
files or the CSV log), the validation confusion matrix and sample predictions of the best
checkpoint (recomputed from it, `seglab.checkpoint.load_run`), and the run's facts
(duration, seed, versions, git commit, machine). What the run did not leave behind (it
failed before writing metrics.json, it logged nothing, no checkpoint) is said on the page.

A sweep's page (a multirun's directory, or any folder of run directories): a sortable
table of every run with its overrides, final metrics, state and a link to its own page,
the best run highlighted, the fold/seed aggregates of `seglab.summary`, and for optuna
sweeps the optimisation history. From the command line, runs without a page get one.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import logging
import math
import os
import shlex
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from jinja2 import Environment, PackageLoader
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig

from seglab.errors import SeglabError, exit_message, one_line
from seglab.summary import (
    Member,
    find_runs,
    read_json,
    read_members,
    read_overrides,
    summarize,
    sweep_dir_of,
)

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
# The metrics a run's table shows per split, in this order (those the run logged).
SUMMARY_METRICS = ("mIoU", "acc", "mAcc", "mDice", "acc_top5", "loss")
SPLITS = {"train": "train (last epoch)", "val": "validation (last epoch)", "test": "test"}
# Validation samples on a run's page: segmentation rows, classification tiles.
SEGMENTATION_SAMPLES = 4
CLASSIFICATION_SAMPLES = 8
# Shown size (pixels, longer side) of each image of the sample grid.
TILE_SIZE = 160


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("seglab", "templates"), autoescape=True)
    env.filters["num"] = _number
    return env


def _number(value: Any, digits: int = 4) -> str:
    """A metric for a table cell: 4 decimals, "–" for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _png(fig: Figure) -> str:
    """The figure as a data URI (base64 PNG) for an <img> tag."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return _data_uri(buffer.getvalue())


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- what a directory is ------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """A training run's directory: it holds run_info.json, metrics.json or .hydra/."""
    return any(
        (path / name).exists() for name in ("run_info.json", "metrics.json", ".hydra/config.yaml")
    )


def write_report(path: str | Path, *, device: str | None = None) -> Path:
    """Write `<path>/report.html` for the run or sweep directory `path`.

    Cheap enough to end every run with: a run's page costs one validation pass of its
    best checkpoint (for the confusion matrix and sample predictions). A missing piece
    (logs, checkpoint, data, metrics.json) is said on the page, never raised.

    Args:
        path: a run directory, or a sweep directory (a folder of run directories).
        device: where the checkpoint runs ("cpu", "cuda"); None: cuda when available.

    Returns:
        the page written.

    Raises:
        SeglabError: `path` is neither a run nor a sweep directory.
    """
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise SeglabError(f"{path} {what}; give a run directory or a sweep directory")
    if is_run_dir(path):
        html = _render("run.html", run_page(path, device))
    elif (path / "multirun.yaml").exists() or find_runs(path):
        html = _render("sweep.html", sweep_page(path))
    else:
        raise SeglabError(
            f"{path} is neither a run directory (run_info.json, metrics.json or .hydra/) nor "
            "a sweep directory (run directories below it); give e.g. "
            "outputs/train/runs/<time> or outputs/train/multirun/<time>"
        )
    out = path / REPORT_NAME
    temporary = out.with_name(f".{REPORT_NAME}.{os.getpid()}.tmp")
    temporary.write_text(html, encoding="utf-8")
    temporary.replace(out)  # jobs of a sweep ending together each rewrite its page
    return out


def _render(template: str, context: dict[str, Any]) -> str:
    return _environment().get_template(template).render(**context)


# --- a run ---------------------------------------------------------------------------


def run_page(run_dir: Path, device: str | None = None) -> dict[str, Any]:
    """What a run's page shows (the context of templates/run.html)."""
    info = read_json(run_dir / "run_info.json") or {}
    summary = read_json(run_dir / "metrics.json")
    config = _read_config(run_dir)
    metrics: dict[str, Any] = (summary or {}).get("metrics") or {}
    missing: list[str] = []
    if not info:
        missing.append("run_info.json is missing: seed, versions and status are unknown.")
    if summary is None:
        why = f" ({info['error']})" if info.get("error") else ""
        missing.append(
            f"metrics.json is missing: the run (status {info.get('status', 'unknown')}) "
            f"did not write its final metrics{why}."
        )
    class_names = _class_names(config, metrics)
    page: dict[str, Any] = {
        "title": f"run {run_dir.name}",
        "run_dir": str(run_dir.resolve()),
        "status": info.get("status", "unknown"),
        # Why the run ended (early stopping, max_epochs, a signal), beside the badge.
        "stop_reason": info.get("stop_reason"),
        "error": info.get("error"),
        "command": shlex.join(str(a) for a in info.get("command", [])),
        "cwd": info.get("cwd"),
        "overrides": read_overrides(run_dir),
        "sweep_link": "../report.html" if (run_dir.parent / "multirun.yaml").exists() else None,
        "optimized_metric": (summary or {}).get("optimized_metric")
        or config.get("optimized_metric"),
        "missing": missing,
        "facts": _facts(info, config),
    }
    page["headline"] = _headline(metrics, page["optimized_metric"])
    page["metric_rows"], page["metric_columns"] = _metric_table(metrics)
    page["per_class"] = _per_class(metrics, class_names)
    page["curves"], curves_source = _curves(run_dir)
    page["curves_source"] = curves_source
    if page["curves"] is None:
        missing.append(
            "No training curves: the run left no TensorBoard event files (tensorboard/) "
            "and no CSV log (csv/metrics.csv); logger=none logs nothing."
        )
    page["evaluation"] = _evaluation(run_dir, summary, metrics, page["optimized_metric"], device)
    missing += page["evaluation"]["missing"]
    return page


def _read_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed config (.hydra/config.yaml) as plain containers; {} without one.
    Unresolved: `${...}` stay text (the values shown are plain ones)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _class_names(config: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """The data's classes: from the config, else from the per-class metric names."""
    names = (config.get("data") or {}).get("class_names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    found: list[str] = []
    for name in metrics:
        parts = name.split("/", 2)
        if len(parts) == 3 and parts[1] in ("IoU", "Acc") and parts[2] not in found:
            found.append(parts[2])
    return found


def _headline(metrics: dict[str, Any], optimized: str | None) -> list[dict[str, Any]]:
    """The few figures at the top of the page: best validation score, test results."""
    names = [f"best/{optimized}" if optimized else None, "test/mIoU", "test/acc"]
    return [
        {"name": name, "value": metrics[name]}
        for name in dict.fromkeys(n for n in names if n)
        if metrics.get(name) is not None
    ]


def _metric_table(metrics: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows (summary metrics) by columns (train, validation, test) of metrics.json."""

    def key(split: str, metric: str) -> str | None:
        names = [f"{split}/{metric}"]
        if split == "train" and metric == "loss":  # the epoch's mean, not the last batch's
            names = ["train/loss_epoch", "train/loss"]
        return next((name for name in names if name in metrics), None)

    splits = [s for s in SPLITS if any(key(s, m) for m in SUMMARY_METRICS)]
    rows = []
    for metric in SUMMARY_METRICS:
        names = [key(split, metric) for split in splits]
        if any(names):
            cells = [{"key": n, "value": metrics[n]} if n else None for n in names]
            rows.append({"metric": metric, "cells": cells})
    return rows, [{"split": s, "title": SPLITS[s]} for s in splits]


def _per_class(metrics: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any] | None:
    """Per-class table and chart: IoU and accuracy (segmentation) or accuracy alone."""
    kinds = [k for k in ("IoU", "Acc") if any(f"/{k}/" in name for name in metrics)]
    splits = [s for s in ("val", "test") if any(n.startswith(f"{s}/Acc/") for n in metrics)]
    if not kinds or not splits or not class_names:
        return None
    columns = [
        {"key": f"{s}/{k}", "title": f"{'validation' if s == 'val' else 'test'} {k}"}
        for k in kinds
        for s in splits
    ]
    rows = [
        {
            "name": name,
            "cells": [
                {"key": f"{c['key']}/{name}", "value": metrics.get(f"{c['key']}/{name}")}
                for c in columns
            ],
        }
        for name in class_names
    ]
    chart_kind = kinds[0]  # IoU for segmentation, accuracy for classification
    return {
        "columns": columns,
        "rows": rows,
        "kind": "IoU" if chart_kind == "IoU" else "accuracy",
        "chart": _png(_per_class_figure(metrics, class_names, chart_kind, splits)),
    }


def _per_class_figure(
    metrics: dict[str, Any], class_names: Sequence[str], kind: str, splits: Sequence[str]
) -> Figure:
    """Horizontal bars per class (long class names stay readable), one bar per split."""
    import numpy as np

    height = 0.35 / len(splits) * 2
    fig = Figure(figsize=(5.4, 1.2 + 0.3 * len(class_names) * len(splits) ** 0.5))
    ax = fig.add_subplot()
    positions = np.arange(len(class_names))
    colours = {"val": "#4c78a8", "test": "#f58518"}
    for i, split in enumerate(splits):
        values = [metrics.get(f"{split}/{kind}/{name}") for name in class_names]
        values = [float("nan") if v is None else v for v in values]
        offset = (i - (len(splits) - 1) / 2) * height
        bars = ax.barh(
            positions + offset,
            values,
            height=height,
            color=colours[split],
            label="validation (last epoch)" if split == "val" else "test",
        )
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    ax.set_yticks(positions, labels=list(class_names))
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("IoU" if kind == "IoU" else "accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"per-class {'IoU' if kind == 'IoU' else 'accuracy'}")
    fig.set_layout_engine("constrained")
    return fig


def _facts(info: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's facts as (name, value) rows."""
    facts: list[tuple[str, str]] = []

    def add(name: str, value: Any) -> None:
        if value not in (None, "", {}, []):
            facts.append((name, str(value)))

    add("status", info.get("status"))
    add("stop reason", info.get("stop_reason"))
    add("started", info.get("started"))
    add("ended", info.get("ended"))
    add("duration", _duration(info.get("started"), info.get("ended")))
    add("seed", info.get("seed"))
    git = info.get("git") or {}
    if git:
        add(
            "git commit",
            f"{git.get('commit')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        )
    add("host", info.get("host"))
    add("platform", info.get("platform"))
    add("python", info.get("python"))
    trainer = config.get("trainer") or {}
    if trainer:
        add(
            "trainer",
            ", ".join(
                f"{key}={trainer[key]}"
                for key in ("accelerator", "devices", "num_nodes", "precision", "strategy")
                if key in trainer
            ),
        )
    for name, value in (info.get("hardware") or {}).items():
        add(name, value)
    versions = info.get("versions") or {}
    add("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    return facts


def _seconds(started: str | None, ended: str | None) -> int | None:
    """Seconds between two ISO times of run_info.json; None when one is missing."""
    try:
        return int(
            (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
        )
    except (TypeError, ValueError):
        return None


def _duration(started: str | None, ended: str | None) -> str | None:
    """A duration as "42 s", "3 min 05 s" or "2 h 04 min"."""
    seconds = _seconds(started, ended)
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# --- curves --------------------------------------------------------------------------


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
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        from seglab.tensorboard import logged_name, read_class_runs

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


def _curves(run_dir: Path) -> tuple[str | None, str | None]:
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
    return _png(fig), source


# --- the best checkpoint at work ------------------------------------------------------


def _best_checkpoint(run_dir: Path, summary: dict[str, Any] | None) -> Path | None:
    """metrics.json's best checkpoint, else checkpoints/best-*.ckpt, else last.ckpt."""
    recorded = (summary or {}).get("best_model_path")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    if recorded and (run_dir / "checkpoints" / Path(recorded).name).is_file():
        return run_dir / "checkpoints" / Path(recorded).name  # the run directory moved
    best = sorted((run_dir / "checkpoints").glob("best*.ckpt"))
    if best:
        return best[-1]
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def _evaluation(
    run_dir: Path,
    summary: dict[str, Any] | None,
    metrics: dict[str, Any],
    optimized: str | None,
    device: str | None,
) -> dict[str, Any]:
    """Confusion matrix and sample predictions of the best checkpoint on the validation
    split, recomputed here (the run stores neither)."""
    result: dict[str, Any] = {"missing": [], "confusion": None, "samples": None}
    checkpoint = _best_checkpoint(run_dir, summary)
    if checkpoint is None:
        result["missing"].append(
            "No checkpoint in checkpoints/: no confusion matrix and no sample predictions."
        )
        return result
    result["checkpoint"] = (
        str(checkpoint.relative_to(run_dir))
        if checkpoint.is_relative_to(run_dir)
        else str(checkpoint)
    )
    try:
        result.update(_validate(checkpoint, device))
    except Exception as err:  # data gone, a checkpoint of another version: say so
        result["missing"].append(
            f"The confusion matrix and sample predictions need the best checkpoint and the "
            f"validation data; they failed: {one_line(err)}"
        )
        return result
    if optimized and optimized.startswith("val/") and result.get("recomputed"):
        result["check"] = {
            "name": optimized,
            "recomputed": result["recomputed"].get(optimized[len("val/") :]),
            "logged": metrics.get(f"best/{optimized}"),
        }
    return result


def _validate(checkpoint: Path, device: str | None) -> dict[str, Any]:
    """One pass of the checkpoint over the validation split: the confusion matrix (as a
    figure), the metrics it gives, and a few evenly spaced samples with their predictions
    (taken from the same pass)."""
    import torch

    from seglab.checkpoint import load_run
    from seglab.inference import class_indices
    from seglab.plots import confusion_figure

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    run = load_run(checkpoint, map_location=device)
    module = run.module.to(device)
    datamodule = run.datamodule
    datamodule.setup("validate")
    dataset = datamodule.val_set
    if dataset is None or len(dataset) == 0:
        raise SeglabError("the validation split is empty")
    wanted = SEGMENTATION_SAMPLES if module.task == "segmentation" else CLASSIFICATION_SAMPLES
    chosen = set(torch.linspace(0, len(dataset) - 1, min(wanted, len(dataset))).long().tolist())
    picked: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    metrics = module.val_metrics
    metrics.reset()
    seen = 0
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            images, targets = batch[0].to(device), batch[1].to(device)
            logits = module.predict_logits(images)
            metrics.update(logits, targets)
            preds = class_indices(logits) if logits.ndim == 4 else logits.argmax(1)
            for i in range(images.shape[0]):
                if seen + i in chosen:
                    picked.append((images[i].cpu(), targets[i].cpu(), preds[i].cpu()))
            seen += images.shape[0]
    values = {name: float(v) for name, v in metrics.compute().items()}
    confmat = metrics.last_confusion.cpu()
    metrics.reset()
    segmentation = module.task == "segmentation"
    return {
        "confusion": _png(confusion_figure(confmat, run.class_names)),
        "val_count": len(dataset),
        "recomputed": values,
        "samples": _samples(picked, run.class_names, datamodule, segmentation),
        "legend": [
            {"name": name, "colour": "#{:02x}{:02x}{:02x}".format(*colour)}
            for name, colour in zip(run.class_names, datamodule.palette, strict=False)
        ]
        if segmentation
        else None,
    }


def _samples(
    picked: Sequence[tuple[Any, Any, Any]],
    class_names: Sequence[str],
    datamodule: Any,
    segmentation: bool,
) -> str | None:
    """(image, target, prediction) triples as one PNG: rows of image | ground truth |
    prediction in the dataset's palette (segmentation), or images captioned with true and
    predicted class."""
    from PIL import Image
    from torchvision.utils import make_grid

    from seglab.callbacks import _captioned, segmentation_tiles
    from seglab.data.base import from_input

    if not picked:
        return None
    images, targets, preds = zip(*picked, strict=True)
    pictures = [from_input(image, datamodule.mean, datamodule.std) for image in images]

    if segmentation:
        tiles = segmentation_tiles(pictures, targets, preds, datamodule.palette, TILE_SIZE)
        grid = make_grid(tiles, nrow=3, padding=4, pad_value=255)
    else:
        scale = max(1, TILE_SIZE // max(pictures[0].shape[:2]))
        tiles = [
            _captioned(p, f"T:{class_names[int(t)]} P:{class_names[int(q)]}", scale)
            for p, t, q in zip(pictures, targets, preds, strict=True)
        ]
        grid = make_grid(tiles, nrow=4, padding=4, pad_value=255)
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return _data_uri(buffer.getvalue())


# --- a sweep -------------------------------------------------------------------------


def _varying(members: Sequence[Member]) -> tuple[list[str], list[list[str]]]:
    """The overrides every run shares, and per run the others (what tells runs apart),
    without the optuna sweeper's link of a trial to its study (`optuna_trial=...`)."""
    from seglab.sweeps import TRIAL_KEY

    if not members:
        return [], []
    common = set(members[0].overrides).intersection(*(m.overrides for m in members[1:]))
    shared = [o for o in members[0].overrides if o in common]
    own = [
        [o for o in m.overrides if o not in common and not o.startswith(f"{TRIAL_KEY}=")]
        for m in members
    ]
    return shared, own


def sweep_page(sweep_dir: Path) -> dict[str, Any]:
    """What a sweep's page shows (the context of templates/sweep.html)."""
    members = read_members(sweep_dir)
    optimized = next((m.optimized_metric for m in members if m.optimized_metric), None)
    score = f"best/{optimized}" if optimized else None
    direction = _direction(sweep_dir)
    shared, varying = _varying(members)
    columns = ([score] if score else []) + [
        name
        for name in (f"test/{m}" for m in SUMMARY_METRICS)
        if any(name in m.metrics for m in members)
    ]
    best = _best(members, score, direction)
    runs = []
    for member, own in zip(members, varying, strict=True):
        info = read_json(member.path / "run_info.json") or {}
        report = member.path / REPORT_NAME
        runs.append(
            {
                "name": member.name,
                "link": f"{member.name}/{REPORT_NAME}" if report.exists() else None,
                "status": member.status if member.status != "finished" or member.ok else "failed",
                "ok": member.ok,
                "error": member.error,
                "overrides": own,
                "values": [member.metrics.get(c) if member.ok else None for c in columns],
                "duration": _duration(info.get("started"), info.get("ended")),
                "seconds": _seconds(info.get("started"), info.get("ended")),
                "best": member is best,
            }
        )
    groups = summarize(members)
    repeated = any(g["n"] + len(g["failed"]) > 1 for g in groups)
    group_shared = set(shared)
    aggregates = [
        {
            "overrides": [o for o in g["overrides"] if o not in group_shared],
            "n": g["n"],
            "runs": g["runs"],
            "failed": g["failed"],
            "stats": [g["metrics"].get(c) for c in columns],
        }
        for g in groups
    ]
    page = {
        "title": f"sweep {sweep_dir.name}",
        "sweep_dir": str(sweep_dir.resolve()),
        "shared": shared,
        "columns": columns,
        "runs": runs,
        "counts": {
            "runs": len(members),
            "finished": sum(m.ok for m in members),
            "left out": sum(not m.ok for m in members),
        },
        "best": next((r for r in runs if r["best"]), None),
        "score": score,
        "direction": direction,
        "aggregates": aggregates if repeated else None,
        "summary_files": [n for n in ("summary.csv", "summary.json") if (sweep_dir / n).exists()],
        "failed": [r for r in runs if not r["ok"]],
        "history": _history(sweep_dir, direction),
        "plots": sorted(
            p.relative_to(sweep_dir).as_posix() for p in (sweep_dir / "plots").glob("*.html")
        ),
    }
    return page


def _direction(sweep_dir: Path) -> str:
    """Which way the score is better: optimization_results.yaml's direction ("maximize"
    or "minimize") for optuna sweeps, else maximize (checkpoints keep the highest
    `optimized_metric`)."""
    import yaml

    try:
        results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return "maximize"
    direction = str((results or {}).get("direction", "maximize"))
    return "minimize" if direction.startswith("min") else "maximize"


def _best(members: Sequence[Member], score: str | None, direction: str) -> Member | None:
    scored = [
        m for m in members if m.ok and score and isinstance(m.metrics.get(score), (int, float))
    ]
    if not scored:
        return None
    pick = max if direction == "maximize" else min
    return pick(scored, key=lambda m: m.metrics[score])


def read_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """An optuna sweep's trials as {number, state, value}: from its study (optuna.db,
    current while the sweep runs), else from trials.csv; [] for other sweeps."""
    database = sweep_dir / "optuna.db"
    if database.is_file():
        try:
            import optuna

            from seglab.sweeps import open_storage

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # Waits for the trials' writers, and never creates tables in the sweep's file.
            storage = open_storage(f"sqlite:///{database}", create_tables=False)
            trials = []
            for name in optuna.get_all_study_names(storage):
                study = optuna.load_study(study_name=name, storage=storage)
                trials += [
                    {"number": t.number, "state": t.state.name, "value": t.value}
                    for t in study.get_trials(deepcopy=False)
                ]
            if trials:
                return trials
        except Exception as err:  # a locked or damaged database: trials.csv may do
            log.info("Cannot read %s: %s", database, one_line(err))
    table = sweep_dir / "trials.csv"
    if table.is_file():
        with table.open(newline="") as file:
            return [
                {
                    "number": int(row["number"]),
                    "state": row["state"],
                    "value": float(row["value"]) if row.get("value") else None,
                }
                for row in csv.DictReader(file)
            ]
    return []


def _history(sweep_dir: Path, direction: str) -> dict[str, Any] | None:
    """The optimisation history: every finished trial's value, and the best so far."""
    trials = sorted(read_trials(sweep_dir), key=lambda t: t["number"])
    if not trials:
        return None
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    figure = None
    if done:
        fig = Figure(figsize=(7.5, 3.2))
        ax = fig.add_subplot()
        numbers = [t["number"] for t in done]
        values = [t["value"] for t in done]
        pick = max if direction == "maximize" else min
        best_so_far = [pick(values[: i + 1]) for i in range(len(values))]
        ax.scatter(numbers, values, s=18, color="#4c78a8", label="trial value", zorder=3)
        ax.step(numbers, best_so_far, where="post", color="#e45756", label="best so far")
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("objective")
        ax.set_title("optimisation history")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.set_layout_engine("constrained")
        figure = _png(fig)
    return {"chart": figure, "states": states, "trials": len(trials)}


class SweepReportCallback(Callback):
    """Hydra callback writing the sweep's page at the end of a multirun, and after every
    job (Hydra's basic sweeper raises on a failed job before `on_multirun_end`). The
    runs' own pages are written by the runs (train's `report: true`)."""

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and config.get("report", True):
            self._write(sweep_dir_of(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("report", True):
            self._write(Path(config.hydra.sweep.dir))

    @staticmethod
    def _write(sweep_dir: Path) -> None:
        try:
            path = write_report(sweep_dir)
        except Exception as err:  # never fail a sweep for its page
            log.warning("No report for %s: %s", sweep_dir, one_line(err))
            return
        log.info("Report: %s", path)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m seglab.report PATH`: write PATH/report.html."""
    parser = argparse.ArgumentParser(
        prog="python -m seglab.report",
        description="Write a self-contained HTML report (report.html) into a run or sweep "
        "directory.",
    )
    parser.add_argument("path", type=Path, help="a run directory or a sweep directory")
    parser.add_argument(
        "--runs",
        choices=("missing", "all", "none"),
        default="missing",
        help="for a sweep, which of its runs get their own page written: those without "
        "one (default), all, or none",
    )
    parser.add_argument(
        "--device", default=None, help="where checkpoints run (cpu, cuda); default: cuda if any"
    )
    args = parser.parse_args(argv)
    try:
        path: Path = args.path
        if path.is_dir() and not is_run_dir(path) and args.runs != "none":
            for run in find_runs(path):
                if args.runs == "all" or not (run / REPORT_NAME).exists():
                    print(write_report(run, device=args.device))
        print(write_report(path, device=args.device))
    except SeglabError as err:
        raise SystemExit(exit_message(err)) from None


if __name__ == "__main__":
    main()
