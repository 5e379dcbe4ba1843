"""Callbacks that show a training run at work: a progress bar that costs nothing per step,
the best validation score so far, and TensorBoard images; the run record written into
every checkpoint is `seglab.checkpoint.RunRecord`."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from seglab import lightning_compat
from seglab.data.base import from_input
from seglab.inference import class_indices
from seglab.plots import confusion_figure, sample_grid


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, redrawn at most every `refresh_seconds` (and on an
    epoch's last batch) instead of every `refresh_rate` batches.

    A redraw reads the logged metrics back from the device (a synchronisation on a GPU) and
    writes to the terminal: per batch, that is a tax on small fast steps (the plain CNN at
    batch 32 runs ~60 steps/s), while a fixed batch count would leave slow steps (a UNet on
    a CPU) without feedback. A time interval suits both.

    Args:
        refresh_seconds: least time between two redraws; 0 redraws every batch.
        leave: keep each epoch's finished bar on screen.
    """

    def __init__(self, refresh_seconds: float = 0.5, leave: bool = False) -> None:
        super().__init__(refresh_rate=1, leave=leave)
        self.refresh_seconds = refresh_seconds
        self._last_redraw = float("-inf")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Close the open bars, so that the error printed next starts on a line of its
        own instead of after (and under the next redraw of) a bar."""
        bars = ("train", "val", "test", "predict")
        for bar in (getattr(self, f"_{name}_progress_bar", None) for name in bars):
            if bar is not None and not bar.disable:
                bar.close()

    def _should_update(self, current: int, total: int) -> bool:
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or now - self._last_redraw >= self.refresh_seconds:
            self._last_redraw = now
            return True
        return False


class BestScore(L.Callback):
    """Logs `best/<monitor>` (e.g. `best/val/mIoU`) after every validation: the best score
    so far of the trainer's checkpoint callback, by its `monitor` and `mode`. A curve
    that never drops, whose last point is the run's best validation score: TensorBoard's
    HParams table shows it beside the test scores. A resumed run goes on from the best
    score its checkpoint recorded.
    """

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if trainer.sanity_checking or not isinstance(checkpoint, ModelCheckpoint):
            return
        current = trainer.callback_metrics.get(checkpoint.monitor or "")
        if current is None or not torch.isfinite(current):
            return
        # The checkpoint callback runs after every other callback: its best score does
        # not count this validation yet.
        scores = [float(current)]
        if checkpoint.best_model_score is not None:
            scores.append(float(checkpoint.best_model_score))
        best = max(scores) if checkpoint.mode == "max" else min(scores)
        step = lightning_compat.batches_stepped(trainer)  # the metrics' step
        for logger in trainer.loggers:
            logger.log_metrics({f"best/{checkpoint.monitor}": best}, step=step)


def _tensorboards(trainer: L.Trainer) -> list[Any]:
    """The SummaryWriters of the trainer's TensorBoard loggers (none without one)."""
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


# The longest side of a sample tile in TensorBoard (smaller samples keep their size), and
# of a classification tile (enlarged by a whole factor).
TILE_SIDE = 256
CLASSIFICATION_SIDE = 96


class ValidationImages(L.Callback):
    """Shows the model at work in TensorBoard, every `every_n_epochs` validations.

    Segmentation: a grid of fixed validation samples, one row per sample: image, ground
    truth and prediction in the dataset's palette (void pixels white). Classification:
    the samples captioned with their true (T) and predicted (P) class. Both: the
    validation confusion matrix as a figure. (The per-class charts of the Custom Scalars
    tab are `seglab.tensorboard.TensorBoardLogger`'s.)

    Args:
        every_n_epochs: log after every n-th validation epoch.
        num_samples: how many validation samples (the same ones every time).
    """

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 8) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writers = _tensorboards(trainer)
        if trainer.sanity_checking or not writers:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        datamodule = trainer.datamodule
        dataset = getattr(datamodule, "val_set", None)
        if dataset is None or len(dataset) == 0:
            return
        count = min(self.num_samples, len(dataset))
        indices = torch.linspace(0, len(dataset) - 1, count).long().tolist()
        # An unreadable file is None under `skip_corrupt`: show the others.
        samples = [sample for sample in (dataset[i] for i in indices) if sample is not None]
        if not samples:
            return
        images, targets = zip(*samples, strict=True)
        preds = []
        with torch.no_grad():
            for image in images:  # each at its own size, as `seglab.predict` sees it
                logits = pl_module.predict_logits(image[None].to(pl_module.device))
                preds.append((class_indices(logits) if logits.ndim == 4 else logits.argmax(1))[0])
        preds = [pred.cpu() for pred in preds]
        pictures = [from_input(image, datamodule.mean, datamodule.std) for image in images]
        segmentation = pl_module.task == "segmentation"
        grid = sample_grid(
            pictures,
            targets,
            preds,
            segmentation=segmentation,
            class_names=pl_module.class_names,
            palette=getattr(datamodule, "palette", ()),
            side=min(TILE_SIDE, max(max(p.shape[:2]) for p in pictures))
            if segmentation
            else CLASSIFICATION_SIDE,
            padding=2,
        )
        tag = "(image | truth | prediction)" if segmentation else "(T: true, P: predicted)"
        step = trainer.global_step
        for writer in writers:
            writer.add_image(f"val/samples {tag}", grid, step)
        confmat = getattr(pl_module.val_metrics, "last_confusion", None)
        if confmat is not None:
            for writer in writers:
                writer.add_figure(
                    "val/confusion_matrix", confusion_figure(confmat, pl_module.class_names), step
                )
