"""A run's page: command and overrides, final metrics, per-class results, curves, the
best checkpoint's confusion matrix and samples (`seglab.report.validation`), the run's
facts; what the run left out said on the page."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from seglab import rundir
from seglab.errors import one_line
from seglab.report.curves import curves_figure
from seglab.report.html import duration, png
from seglab.report.validation import validate
from seglab.summary import read_overrides

SPLITS = {"train": "train (last epoch)", "val": "validation (last epoch)", "test": "test"}


def run_page(run_dir: Path, device: str | None = None) -> dict[str, Any]:
    """What a run's page shows (the context of templates/run.html)."""
    info = rundir.read_record(run_dir, strict=False) or {}
    summary = rundir.read_metrics(run_dir, strict=False)
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
    page["curves"], curves_source = curves_figure(run_dir)
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

    splits = [s for s in SPLITS if any(key(s, m) for m in rundir.SUMMARY_METRICS)]
    rows = []
    for metric in rundir.SUMMARY_METRICS:
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
        "chart": png(_per_class_figure(metrics, class_names, chart_kind, splits)),
    }


def _per_class_figure(
    metrics: dict[str, Any], class_names: Sequence[str], kind: str, splits: Sequence[str]
) -> Figure:
    """Horizontal bars per class (long class names stay readable), one bar per split."""
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
    add("duration", duration(info.get("started"), info.get("ended")))
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
    checkpoint = rundir.best_checkpoint(run_dir, (summary or {}).get("best_model_path"))
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
        result.update(validate(checkpoint, device))
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
