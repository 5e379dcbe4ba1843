"""The best checkpoint at work on the validation split, for a run's page: one pass gives
the confusion matrix, the metrics recomputed, and a few samples with their predictions
(drawn by `seglab.plots.sample_grid`, as in TensorBoard)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from seglab.checkpoint import load_run
from seglab.data.base import from_input
from seglab.errors import SeglabError
from seglab.inference import class_indices
from seglab.per_image import ImageTable, worst_grid
from seglab.plots import confusion_figure, sample_grid
from seglab.report.html import data_uri, png

# Validation samples on a run's page: segmentation rows, classification tiles.
SEGMENTATION_SAMPLES = 4
CLASSIFICATION_SAMPLES = 8
# Worst validation images on a run's page.
WORST = 4
# Shown size (pixels, longer side) of each image of the sample grid.
TILE_SIZE = 160


def validate(checkpoint: Path, device: str | None) -> dict[str, Any]:
    """One pass of the checkpoint over the validation split: the confusion matrix (as a
    figure), the metrics it gives, and a few evenly spaced samples with their predictions
    (taken from the same pass)."""
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
    ignore = module.ignore_index if module.task == "segmentation" else None
    table = ImageTable(run.class_names, ignore, module.task, worst=WORST)
    seen = 0
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            images, targets = batch[0].to(device), batch[1].to(device)
            logits = module.predict_logits(images)
            metrics.update(logits, targets)
            preds = class_indices(logits) if logits.ndim == 4 else logits.argmax(1)
            names = [f"val/{seen + i}" for i in range(images.shape[0])]
            table.update(names, images, module.probabilities(logits), targets)
            for i in range(images.shape[0]):
                if seen + i in chosen:
                    picked.append((images[i].cpu(), targets[i].cpu(), preds[i].cpu()))
            seen += images.shape[0]
    values = {name: float(v) for name, v in metrics.compute().items()}
    confmat = metrics.last_confusion.cpu()
    metrics.reset()
    segmentation = module.task == "segmentation"
    return {
        "confusion": png(confusion_figure(confmat, run.class_names)),
        "val_count": len(dataset),
        "recomputed": values,
        "samples": samples(picked, run.class_names, datamodule, segmentation),
        "worst": worst(table, run.class_names, datamodule, segmentation),
        "legend": [
            {"name": name, "colour": "#{:02x}{:02x}{:02x}".format(*colour)}
            for name, colour in zip(run.class_names, datamodule.palette, strict=False)
        ]
        if segmentation
        else None,
    }


def worst(table: ImageTable, class_names, datamodule: Any, segmentation: bool) -> str | None:
    """The worst validation images (lowest per-image mIoU; for a classifier the most
    confident mistakes) as one PNG data URI: image | truth | prediction | error map."""
    chosen = table.worst
    if not chosen:
        return None
    pictures = [from_input(image, datamodule.mean, datamodule.std) for _, image, _, _ in chosen]
    if not segmentation:
        return samples([(image, t, p) for _, image, t, p in chosen], class_names, datamodule, False)
    grid = worst_grid(chosen, pictures, datamodule.palette, table.ignore_index, side=TILE_SIZE)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def samples(
    picked: Sequence[tuple[Any, Any, Any]],
    class_names: Sequence[str],
    datamodule: Any,
    segmentation: bool,
) -> str | None:
    """(image, target, prediction) triples as one PNG data URI (`seglab.plots.sample_grid`
    with the report's tile size); None without any."""
    if not picked:
        return None
    images, targets, preds = zip(*picked, strict=True)
    grid = sample_grid(
        [from_input(image, datamodule.mean, datamodule.std) for image in images],
        targets,
        preds,
        segmentation=segmentation,
        class_names=class_names,
        palette=getattr(datamodule, "palette", ()),
        side=TILE_SIZE,
        padding=4,
    )
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return data_uri(buffer.getvalue())
