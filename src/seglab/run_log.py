"""What a training run tells a person in its run directory: `train.log` gets one line per
epoch and, at the end, why and where the run stopped (`stop_reason`, also stored in
run_info.json); `splits/<split>.txt` lists the samples of each split.

    epoch 3 (of 0-9): train/loss 0.4121, val/mIoU 0.6120, val/loss 0.3802, val/acc 0.9120, 12.3 s
        (validation 0.8 s)
    Run ended: early stopping: Monitored metric val/mIoU did not improve in the last 5
        records ... at epoch 7, batch 50/50 (step 400)
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from seglab.budget import timer_of

log = logging.getLogger(__name__)

# Metrics an epoch line shows, after `optimized_metric` (train/loss_epoch: the epoch mean).
_EPOCH_METRICS = ("train/loss_epoch", "train/loss", "val/loss", "val/acc")
SPLITS_DIR = "splits"


def to_log_files(level: int, message: str, exc_info: Any = None) -> None:
    """Write to the run's log files only (train.log): the console has its own line (or a
    progress bar that a line per epoch would break up)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


# Error lines already written to the log files by this process (`to_log_files_once`).
_written: set[str] = set()


def to_log_files_once(level: int, message: str, exc_info: Any = None) -> None:
    """`to_log_files`, unless this process wrote `message` there already (a run's own
    handler wrote its error before the command's wrapper got it)."""
    if message in _written:
        return
    _written.add(message)
    to_log_files(level, message, exc_info)


def position(trainer: L.Trainer) -> str:
    """Where the fit stands: "at epoch E, batch B/N (step S)" (epochs counted from 0, as
    in checkpoint names)."""
    loop = trainer.fit_loop
    epoch = max(loop.epoch_progress.current.started - 1, 0)
    batch = loop.epoch_loop.batch_progress.current.completed
    total = trainer.num_training_batches
    shown = "?" if total is None or math.isinf(total) else int(total)
    return f"at epoch {epoch}, batch {batch}/{shown} (step {trainer.global_step})"


def stop_reason(trainer: L.Trainer) -> str:
    """Why a fit that ended without an error ended, and where."""
    where = position(trainer)
    if trainer.fast_dev_run:
        return f"trainer.fast_dev_run: {int(trainer.fast_dev_run)} batch(es) of each split, {where}"
    timer = timer_of(trainer)
    if timer is not None and timer.time_remaining("train") <= 0:
        spent = timedelta(seconds=round(timer.time_elapsed("train")))
        return f"time budget trainer.max_time spent ({spent}) {where}"
    for callback in trainer.early_stopping_callbacks:
        if (
            isinstance(callback, EarlyStopping)
            and callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED
        ):
            why = callback.stopping_reason_message or f"{callback.monitor} stopped improving"
            return f"early stopping: {' '.join(why.split())} {where}"
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        return f"trainer.max_steps={trainer.max_steps} reached {where}"
    if trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs:
        return f"trainer.max_epochs={trainer.max_epochs} reached"
    return f"stopped by a callback (trainer.should_stop) {where}"


def _format(value: Any) -> str:
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"


class RunLog(L.Callback):
    """One line per training epoch in train.log, and the split lists of the run.

    Args:
        output_dir: the run directory (`splits/` goes there).
        optimized_metric: shown first on every epoch line.
    """

    def __init__(self, output_dir: str | Path, optimized_metric: str) -> None:
        self.output_dir = Path(output_dir)
        self.optimized_metric = optimized_metric
        self._epoch_start: float | None = None
        self._validation_start: float | None = None
        self._validation_seconds = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The datamodule's setup ran just before the callbacks' (Lightning's order).
        if trainer.is_global_zero:
            write_splits(trainer.datamodule, self.output_dir)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()
        self._validation_seconds = 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Sanity checking runs before the first epoch starts and is not counted.
        if self._validation_start is not None and not trainer.sanity_checking:
            self._validation_seconds += time.monotonic() - self._validation_start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch's validation: its metrics are in callback_metrics.
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = []
        for name in (self.optimized_metric, *_EPOCH_METRICS):
            label = "train/loss" if name == "train/loss_epoch" else name
            if name in metrics and label not in (s.split(" ")[0] for s in shown):
                shown.append(f"{label} {_format(metrics[name])}")
        seconds = time.monotonic() - self._epoch_start if self._epoch_start else float("nan")
        last = "" if trainer.max_epochs in (None, -1) else f" (of 0-{trainer.max_epochs - 1})"
        to_log_files(
            logging.INFO,
            f"epoch {trainer.current_epoch}{last}: {', '.join(shown)}, {seconds:.1f} s "
            f"(validation {self._validation_seconds:.1f} s)",
        )


def write_splits(datamodule: Any, output_dir: Path) -> list[Path]:
    """`splits/<split>.txt` (one sample name per line) for every split the datamodule
    lists with `split_files()`; nothing for a datamodule without it."""
    split_files = getattr(datamodule, "split_files", None)
    if not callable(split_files):
        return []
    written = []
    directory = output_dir / SPLITS_DIR
    for split, names in split_files().items():
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{split}.txt"
        path.write_text("".join(f"{name}\n" for name in names))
        written.append(path)
    return written
