"""Evaluate a checkpoint: per-class and mean metrics, saved as tables and a figure.

    python -m seglab.evaluate ckpt_path=outputs/train/runs/<run>/checkpoints/best-epoch003.ckpt
    python -m seglab.evaluate ckpt_path=... inference=slide inference.window=[256,256]
    python -m seglab.evaluate ckpt_path=... inference.flip=true inference.scales=[0.75,1,1.25]
    python -m seglab.evaluate ckpt_path=... split=val data=shapes data.num_val=1000

Writes into outputs/eval/runs/<time>/: metrics.json, per_class.csv, confusion_matrix.csv
(pixel counts for segmentation, image counts for classification) and confusion_matrix.png.
Classifiers report top-1 accuracy, top-5 accuracy (more than 5 classes), mean and
per-class accuracy.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seglab import rundir
from seglab.checkpoint import json_value, load_run
from seglab.cli import command
from seglab.errors import SeglabError
from seglab.metrics import metrics_from_confusion
from seglab.plots import confusion_figure

log = logging.getLogger(__name__)


def per_class_rows(confmat: torch.Tensor, class_names: list[str]) -> list[dict[str, Any]]:
    """One row per class: IoU, accuracy (recall), Dice and pixel counts."""
    values = metrics_from_confusion(confmat, class_names)
    rows = []
    for i, name in enumerate(class_names):
        iou = float(values[f"IoU/{name}"])
        rows.append(
            {
                "class": name,
                "IoU": json_value(iou),
                "Acc": json_value(values[f"Acc/{name}"]),
                "Dice": json_value(2 * iou / (1 + iou)),  # Dice = 2 IoU / (1 + IoU) per class
                "pixels": int(confmat[i].sum()),
            }
        )
    return rows


def classification_rows(confmat: torch.Tensor, class_names: list[str]) -> list[dict[str, Any]]:
    """One row per class: accuracy (recall: correct / images of the class), precision
    (correct / images predicted as the class) and the image count."""
    counts = confmat.double()
    correct, images, predicted = counts.diag(), counts.sum(1), counts.sum(0)
    return [
        {
            "class": name,
            "Acc": json_value(correct[i] / images[i]) if images[i] > 0 else None,
            "Precision": json_value(correct[i] / predicted[i]) if predicted[i] > 0 else None,
            "images": int(images[i]),
        }
        for i, name in enumerate(class_names)
    ]


def format_table(rows: list[dict[str, Any]], summary: dict[str, float | None]) -> str:
    """Plain-text table of per-class rows followed by the summary metrics."""

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    columns = list(rows[0]) if rows else []
    body = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in body]
    lines.append("")
    lines += [f"{name:<12}{cell(value)}" for name, value in summary.items()]
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the checkpoint over `cfg.split` and write the result files.

    Returns:
        {"metrics": {name: value}, "per_class": [row, ...], "output_dir": str}
    """
    if cfg.split not in ("test", "val"):
        raise SeglabError(f"split must be 'test' or 'val'; got {cfg.split!r}")
    run = load_run(cfg.ckpt_path)
    module = run.module
    datamodule = instantiate(cfg.data) if cfg.get("data") else run.datamodule
    if datamodule.class_names != module.class_names:
        raise SeglabError(
            f"data {type(datamodule).__name__} has classes {datamodule.class_names} but "
            f"checkpoint {cfg.ckpt_path} was trained on {module.class_names}"
        )
    if module.task == "segmentation":
        module.inference = instantiate(cfg.inference)

    trainer: L.Trainer = instantiate(cfg.trainer)
    loop = trainer.test if cfg.split == "test" else trainer.validate
    logged = loop(module, datamodule=datamodule, verbose=False)[0]
    metrics = {name: json_value(value) for name, value in sorted(logged.items())}

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        k: metrics[f"{cfg.split}/{k}"]
        for k in rundir.SUMMARY_METRICS
        if f"{cfg.split}/{k}" in metrics
    }
    confmat = getattr(module, f"{cfg.split}_metrics").last_confusion.cpu()
    rows = per_class_rows if module.task == "segmentation" else classification_rows
    per_class = rows(confmat, module.class_names)
    _write_confusion(output_dir, confmat, module.class_names)
    if per_class:
        with open(output_dir / "per_class.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(per_class[0]))
            writer.writeheader()
            writer.writerows(per_class)
    fields = {
        "ckpt_path": str(cfg.ckpt_path),
        "split": cfg.split,
        "inference": OmegaConf.to_container(cfg.inference),
        "per_class": per_class,
    }
    rundir.write_metrics(output_dir, metrics, **fields)
    print(format_table(per_class, summary))
    log.info("Results written to %s", output_dir)
    return {"metrics": metrics, **fields, "output_dir": str(output_dir)}


def _write_confusion(output_dir: Path, confmat: torch.Tensor, class_names: list[str]) -> None:
    with open(output_dir / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confmat.tolist(), strict=True):
            writer.writerow([name, *row])
    confusion_figure(confmat, class_names).savefig(output_dir / "confusion_matrix.png", dpi=100)


@command("eval")
def main(cfg: DictConfig) -> None:
    """Command-line entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
