"""Evaluate a checkpoint: per-class and mean metrics, saved as tables and a figure.

    python -m seglab.evaluate ckpt_path=outputs/train/runs/<run>/checkpoints/best-epoch003.ckpt
    python -m seglab.evaluate ckpt_path=... inference=slide inference.window=[256,256]
    python -m seglab.evaluate ckpt_path=... inference.flip=true inference.scales=[0.75,1,1.25]
    python -m seglab.evaluate ckpt_path=... split=val data=shapes data.num_val=1000
    python -m seglab.evaluate ckpt_path=... calibrate=true

Writes into outputs/eval/runs/<time>/: metrics.json, per_class.csv, confusion_matrix.csv
(pixel counts for segmentation, image counts for classification), confusion_matrix.png,
per_image.csv (every image's scores, worst first: `seglab.per_image`), worst_images.png,
reliability.csv and reliability.png (the expected calibration error's bins:
`seglab.calibration`) and, with calibrate=true, calibrated.ckpt (the checkpoint with the
temperature fitted on val). Classifiers report top-1 accuracy, top-5 accuracy (more than 5
classes), mean and per-class accuracy.
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
from PIL import Image

from seglab import rundir
from seglab.calibration import PixelSample, ReliabilityBins, fit_temperature
from seglab.checkpoint import (
    RECORD_KEY,
    AtomicCheckpointIO,
    json_value,
    load_run,
    read_checkpoint,
)
from seglab.cli import command
from seglab.data.base import from_input
from seglab.errors import SeglabError
from seglab.metrics import metrics_from_confusion
from seglab.per_image import ImageTable, worst_grid
from seglab.plots import confusion_figure, reliability_figure, sample_grid
from seglab.predict import csv_cell

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


class Recorder(L.Callback):
    """Reads each evaluated batch's logits (the module's step output): the per-image table,
    the reliability bins (with the module's temperature and, when it is not 1, without),
    and optionally a pixel sample for fitting the temperature.

    Images are named from the loader's batch sampler (the order batches come in) and
    `names` (the split's sample names in dataset order).
    """

    def __init__(
        self,
        module: Any,
        names: list[str] | None,
        *,
        worst: int,
        bins: int,
        sample: bool = False,
    ) -> None:
        ignore = module.ignore_index if module.task == "segmentation" else None
        self.names = names
        self.table = ImageTable(module.class_names, ignore, module.task, worst=worst)
        self.bins = ReliabilityBins(bins, ignore)
        self.raw_bins = ReliabilityBins(bins, ignore)
        self.sample = PixelSample(ignore_index=ignore) if sample else None
        self.batches: list[list[int]] | None = None

    def _start(self, loaders: Any) -> None:
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        sampler = getattr(loader, "batch_sampler", None)
        self.batches = [list(b) for b in sampler] if sampler is not None else None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._start(trainer.test_dataloaders)
        self.names = sample_names(trainer.datamodule, "test")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._start(trainer.val_dataloaders)
        self.names = sample_names(trainer.datamodule, "val")

    def _batch(self, module: Any, logits: torch.Tensor, batch: Any, batch_idx: int) -> None:
        images, targets = batch[0], batch[1]
        if self.sample is not None:
            self.sample.update(logits, targets)
        probabilities = module.probabilities(logits)
        self.bins.update(probabilities, targets)
        if module.temperature != 1.0:
            self.raw_bins.update(logits.float().softmax(dim=1), targets)
        indices = self.batches[batch_idx] if self.batches is not None else []
        if len(indices) != len(images):  # a sampler we cannot read, or skipped files
            indices = [None] * len(images)
        names = [
            self.names[i] if self.names is not None and i is not None else f"#{batch_idx}.{k}"
            for k, i in enumerate(indices)
        ]
        self.table.update(names, images, probabilities, targets)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if not trainer.sanity_checking:
            self._batch(pl_module, outputs, batch, batch_idx)


def sample_names(datamodule: Any, split: str) -> list[str] | None:
    """The split's sample names in dataset order: its files (`split_files()`) where the
    datamodule lists them, else `<split>/<index>`."""
    dataset = getattr(datamodule, f"{split}_set", None)
    if dataset is None:
        return None
    files = getattr(datamodule, "split_files", None)
    if files is not None:
        listed = files().get(split)
        if listed is not None and len(listed) == len(dataset):
            return list(listed)
    return [f"{split}/{i}" for i in range(len(dataset))]


def _pass(
    cfg: DictConfig, module: Any, datamodule: Any, split: str, recorder: Recorder
) -> dict[str, Any]:
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[recorder])
    loop = trainer.test if split == "test" else trainer.validate
    logged = loop(module, datamodule=datamodule, verbose=False)[0]
    if trainer.world_size > 1:
        log.warning(
            "per-image results cover this process's images only (%d processes)", trainer.world_size
        )
    return logged


def calibrate(cfg: DictConfig, module: Any, datamodule: Any) -> float:
    """Fit the temperature on the validation split (a pixel sample of every batch; every
    image for a classifier) and set it on `module`."""
    recorder = Recorder(module, None, worst=0, bins=int(cfg.ece_bins), sample=True)
    module.temperature = 1.0
    _pass(cfg, module, datamodule, "val", recorder)
    logits, targets = recorder.sample.tensors()
    module.temperature = fit_temperature(logits, targets)
    log.info(
        "Temperature %.4f fitted on %d validation %s",
        module.temperature,
        len(targets),
        "pixels" if module.task == "segmentation" else "images",
    )
    return module.temperature


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the checkpoint over `cfg.split` and write the result files.

    Returns:
        {"metrics": {name: value}, "per_class": [row, ...], "per_image": [row, ...],
        "calibration": {...}, "output_dir": str}
    """
    if cfg.split not in ("test", "val"):
        raise SeglabError(f"split must be 'test' or 'val'; got {cfg.split!r}")
    if int(cfg.get("worst", 8)) < 0:
        raise SeglabError(f"worst must be 0 or more; got {cfg.worst}")
    if int(cfg.get("ece_bins", 15)) < 1:
        raise SeglabError(f"ece_bins must be at least 1; got {cfg.ece_bins}")
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
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    stored_temperature = module.temperature
    if cfg.get("calibrate", False):
        calibrate(cfg, module, datamodule)
    recorder = Recorder(
        module, None, worst=int(cfg.get("worst", 8)), bins=int(cfg.get("ece_bins", 15))
    )
    logged = _pass(cfg, module, datamodule, cfg.split, recorder)
    metrics = {name: json_value(value) for name, value in sorted(logged.items())}
    ece = recorder.bins.ece()
    metrics[f"{cfg.split}/ECE"] = json_value(ece) if ece is not None else None

    summary = {
        k: metrics[f"{cfg.split}/{k}"]
        for k in (*rundir.SUMMARY_METRICS, "ECE")
        if f"{cfg.split}/{k}" in metrics
    }
    confmat = getattr(module, f"{cfg.split}_metrics").last_confusion.cpu()
    rows = per_class_rows if module.task == "segmentation" else classification_rows
    per_class = rows(confmat, module.class_names)
    _write_confusion(output_dir, confmat, module.class_names)
    _write_csv(output_dir / "per_class.csv", per_class)
    per_image = recorder.table.rows()
    _write_csv(output_dir / "per_image.csv", per_image)
    _write_worst(output_dir, recorder.table, datamodule, module)
    calibration = _write_calibration(
        output_dir, recorder, module, stored_temperature, cfg, run.path
    )
    fields = {
        "ckpt_path": str(cfg.ckpt_path),
        "split": cfg.split,
        "inference": OmegaConf.to_container(cfg.inference),
        "per_class": per_class,
        "calibration": calibration,
    }
    rundir.write_metrics(output_dir, metrics, **fields)
    print(format_table(per_class, summary))
    if calibration.get("calibrated_checkpoint"):
        print(
            f"\nTemperature {calibration['temperature']:.4f} (fitted on val): ECE "
            f"{calibration['ece_uncalibrated']:.4f} -> {calibration['ece']:.4f}; calibrated "
            f"checkpoint {calibration['calibrated_checkpoint']}"
        )
    log.info("Results written to %s", output_dir)
    return {**fields, "metrics": metrics, "per_image": per_image, "output_dir": str(output_dir)}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(
            {k: csv_cell(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows
        )


def _write_worst(output_dir: Path, table: ImageTable, datamodule: Any, module: Any) -> None:
    """worst_images.png: image | truth | prediction | error map per worst image
    (segmentation), or the worst images captioned with truth and prediction."""
    worst = table.worst
    if not worst:
        return
    pictures = [from_input(image, datamodule.mean, datamodule.std) for _, image, _, _ in worst]
    if module.task == "segmentation":
        grid = worst_grid(worst, pictures, datamodule.palette, module.ignore_index)
    else:
        grid = (
            sample_grid(
                pictures,
                [t for *_, t, _ in worst],
                [p for *_, p in worst],
                segmentation=False,
                class_names=module.class_names,
                palette=(),
                side=160,
                padding=4,
            )
            .permute(1, 2, 0)
            .numpy()
        )
    Image.fromarray(grid).save(output_dir / "worst_images.png")


def _write_calibration(
    output_dir: Path,
    recorder: Recorder,
    module: Any,
    stored_temperature: float,
    cfg: DictConfig,
    ckpt_path: Path,
) -> dict[str, Any]:
    """reliability.csv and reliability.png; with calibrate=true also calibrated.ckpt (the
    checkpoint with the fitted temperature in its seglab record)."""
    rows = recorder.bins.rows()
    scaled = module.temperature != 1.0
    raw = recorder.raw_bins.rows() if scaled else None
    _write_csv(output_dir / "reliability.csv", rows)
    ece = recorder.bins.ece()
    unit = "pixels" if module.task == "segmentation" else "images"
    title = f"ECE {ece:.4f} over {recorder.bins.total} {unit}" if ece is not None else ""
    if scaled:
        title += f" (temperature {module.temperature:.3f})"
    reliability_figure(rows, raw, title).savefig(output_dir / "reliability.png", dpi=100)
    result: dict[str, Any] = {
        "ece": json_value(ece) if ece is not None else None,
        "bins": len(rows),
        "samples": recorder.bins.total,
        "temperature": module.temperature,
    }
    if scaled:
        raw_ece = recorder.raw_bins.ece()
        result["ece_uncalibrated"] = json_value(raw_ece) if raw_ece is not None else None
    if cfg.get("calibrate", False):
        checkpoint = read_checkpoint(ckpt_path)
        checkpoint[RECORD_KEY]["temperature"] = module.temperature
        target = output_dir / "calibrated.ckpt"
        AtomicCheckpointIO().save_checkpoint(checkpoint, target)
        result["fitted_on"] = "val"
        result["temperature_before"] = stored_temperature
        result["calibrated_checkpoint"] = str(target)
    return result


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
