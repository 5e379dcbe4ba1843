"""The LightningModules: a built network and loss in, training/validation/test loops out.

They receive built objects (net, loss) and factories (optimizer, scheduler) and never
read a config, so they work from plain Python as well as from `seglab.train`:

    module = SegmentationModule(net, loss, partial(torch.optim.AdamW, lr=1e-3),
                                class_names=["background", "cat"], ignore_index=255)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from seglab.budget import TimeBudgetSchedule, timer_of
from seglab.data.base import SeglabDataModule, Task
from seglab.errors import SeglabError
from seglab.inference import SegmentationInference, class_indices
from seglab.metrics import ClassificationMetrics, SegmentationMetrics

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]
Interval = Literal["step", "epoch"]
MemoryFormat = Literal["channels_last", "contiguous"]
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}

# Arguments by which torch's schedulers take the length of the whole schedule
# (PolynomialLR, CosineAnnealingLR, OneCycleLR). Left out of the config, they are set
# to the run's length, in steps or epochs as `scheduler_interval` says.
_SCHEDULE_LENGTH_ARGS = ("total_iters", "T_max", "total_steps")


def schedule_length_kwargs(factory: SchedulerFactory, length: int) -> dict[str, int]:
    """`{arg: length}` for each schedule-length argument `factory` takes and leaves unset."""
    func, given = (
        (factory.func, factory.keywords) if isinstance(factory, partial) else (factory, {})
    )
    params = inspect.signature(func).parameters
    return {name: length for name in _SCHEDULE_LENGTH_ARGS if name in params and name not in given}


class TaskModule(L.LightningModule):
    """Shared loop: one `_shared_step` for train/val/test, epoch-wide metrics per stage."""

    task: Task

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        class_names: Sequence[str],
        ignore_index: int,
        scheduler_interval: Interval = "step",
        inference: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        memory_format: MemoryFormat = "channels_last",
    ) -> None:
        super().__init__()
        # net and loss are saved as weights; the factories are rebuilt from the config
        # (stored in checkpoints by seglab.train), so only plain values go in hparams.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler", "inference"])
        if scheduler_interval not in ("step", "epoch"):
            raise SeglabError(
                f"scheduler_interval must be 'step' or 'epoch'; got {scheduler_interval!r}"
            )
        if memory_format not in MEMORY_FORMATS:
            raise SeglabError(
                f"memory_format must be one of {sorted(MEMORY_FORMATS)}; got {memory_format!r}"
            )
        # channels_last (NHWC) runs convolutions and pooling 1.4-1.7x faster than NCHW
        # on the CPU (oneDNN) and on tensor-core GPUs; the weights and every 4-D input
        # take it, the values do not change.
        self.memory_format = MEMORY_FORMATS[memory_format]
        self.net = net.to(memory_format=self.memory_format)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        self.scheduler_interval = scheduler_interval
        self.inference = inference
        # Temperature scaling (seglab.calibration): probabilities are softmax(logits / T).
        # 1.0 until `seglab.evaluate calibrate=true` fits it; a checkpoint carries it in its
        # seglab record, exported models in their metadata. Argmax, so masks, never change.
        self.temperature = 1.0
        metrics = self._make_metrics()
        self.val_metrics = metrics.clone()
        self.test_metrics = metrics.clone()

    def _make_metrics(self) -> SegmentationMetrics:
        raise NotImplementedError

    def _metric_names(self) -> list[str]:
        raise NotImplementedError

    def _metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        """What the metrics are updated with: the logits, unless a subclass says less."""
        return logits

    def metric_names(self, stage: str = "val") -> list[str]:
        """Names this module logs at the end of each `stage` epoch, e.g. "val/mIoU"."""
        return [f"{stage}/loss"] + [f"{stage}/{name}" for name in self._metric_names()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.formatted(images))

    def formatted(self, images: torch.Tensor) -> torch.Tensor:
        """`images` in the module's memory format (a no-op when they already are)."""
        if images.dim() != 4:
            return images
        return images.contiguous(memory_format=self.memory_format)

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation and prediction: `inference(net, images)` when an inference
        is set (sliding window, test-time augmentation), else `net(images)`."""
        if self.inference is None:
            return self(images)
        return self.inference(self.net, self.formatted(images))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities of `logits` (class dimension 1), temperature-scaled."""
        return (logits.float() / self.temperature).softmax(dim=1)

    def _shared_step(
        self, batch: tuple[torch.Tensor, ...], stage: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # A third element, when present, counts the samples the loader skipped in this
        # batch (unreadable files under `skip_corrupt`); its epoch sum is logged.
        images, targets, *skipped = batch
        if skipped:
            self.log(
                f"{stage}/skipped_files",
                torch.as_tensor(skipped[0], dtype=torch.float32, device=images.device),
                on_step=False,
                on_epoch=True,
                reduce_fx="sum",
                sync_dist=True,
                batch_size=1,
            )
        if stage == "train":
            logits = self(images)
            loss = self.loss(logits, targets)
        else:
            # Validation and test compute in full precision under mixed-precision training
            # (autocast off): scores do not depend on trainer.precision, and a run's test
            # metrics are exactly what `evaluate` (32-true) gives its checkpoint.
            with torch.autocast(images.device.type, enabled=False):
                logits = self.predict_logits(images)
                loss = self.loss(logits, targets)
        if stage != "train":
            getattr(self, f"{stage}_metrics").update(self._metric_inputs(logits.detach()), targets)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            sync_dist=stage != "train",
            batch_size=images.shape[0],
        )
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._shared_step(batch, "train")
        # Stop before the optimizer step: no weights (and so no checkpoint) get corrupted.
        if not torch.isfinite(loss):
            raise SeglabError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step} (batch {batch_idx}); lower optimizer.lr, add "
                "trainer.gradient_clip_val, or check the data of that batch"
            )
        return loss

    # Validation and test steps return the batch's logits: callbacks get them as
    # `outputs` (seglab.evaluate's per-image table and calibration read them).
    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")[1].detach()

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")[1].detach()

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()  # synced across DDP ranks by torchmetrics
        metrics.reset()
        # Summaries (mIoU, acc, ...) go on the progress bar; per-class values ("IoU/cat") not.
        for on_bar in (True, False):
            self.log_dict(
                {
                    f"{stage}/{name}": value
                    for name, value in values.items()
                    if ("/" not in name) == on_bar
                },
                prog_bar=on_bar,
            )

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        length = (
            self.trainer.estimated_stepping_batches
            if self.scheduler_interval == "step"
            else self.trainer.max_epochs
        )
        factory = self.scheduler_factory
        if length is not None and 0 < length < math.inf:
            self._schedule_length = schedule_length_kwargs(factory, int(length))
            scheduler = factory(optimizer, **self._schedule_length)
        elif not schedule_length_kwargs(factory, 1):  # a schedule without a length
            scheduler = factory(optimizer)
        else:
            scheduler = self._budget_schedule(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def on_train_start(self) -> None:  # after the checkpoint's schedule is restored
        self._check_resumed_schedule_length()

    def _check_resumed_schedule_length(self) -> None:
        """A schedule spanning the run restored from a checkpoint keeps the length it was
        built with; a resumed run that is longer or shorter (trainer.max_epochs or
        max_steps, or the batches per epoch, changed) would step it past its end: torch
        raises there (one-cycle), or the learning rate sits at zero (poly) or climbs
        back up (cosine). Refused in one line instead."""
        expected = getattr(self, "_schedule_length", None)
        configs = self.trainer.lr_scheduler_configs
        if not expected or not configs:
            return
        scheduler = configs[0].scheduler
        restored = {name: getattr(scheduler, name, value) for name, value in expected.items()}
        if restored == expected:
            return
        name, length = next(iter(expected.items()))
        unit = "steps" if self.scheduler_interval == "step" else "epochs"
        raise SeglabError(
            f"the checkpoint's {type(scheduler).__name__} spans {restored[name]} {unit} "
            f"({name}), but this run is {length} {unit} long (trainer.max_epochs, "
            "trainer.max_steps or the batches per epoch changed): a schedule over the "
            "whole run cannot be stretched mid-run; resume with the settings the run "
            "started with, or start a new run (another run_name) to train longer"
        )

    def _budget_schedule(self, optimizer: Optimizer) -> LRScheduler:
        """A run-length schedule for a run bounded by its time budget alone."""
        timer = timer_of(self.trainer)
        if timer is None or self.scheduler_interval != "step":
            raise SeglabError(
                f"scheduler <{getattr(self.scheduler_factory, 'func', self.scheduler_factory)}> "
                "spans the run, which has no end: set trainer.max_epochs, trainer.max_steps "
                "or trainer.max_time (with module.scheduler_interval=step)"
            )
        factory = self.scheduler_factory
        return TimeBudgetSchedule(
            optimizer,
            lambda opt, steps: factory(opt, **schedule_length_kwargs(factory, steps)),
            elapsed=lambda: timer.time_elapsed("train"),
            budget=timer.time_elapsed("train") + timer.time_remaining("train"),
        )


class SegmentationModule(TaskModule):
    """Semantic segmentation: logs loss, mIoU, per-class IoU and accuracy, pixel accuracy,
    mean accuracy and mean Dice under `train/`, `val/`, `test/`.

    Args:
        net: maps images (N, 3, H, W) to logits (N, C, H, W).
        loss: called as `loss(logits, mask)` with mask LongTensor (N, H, W).
        optimizer: factory called with the parameters, e.g. `partial(torch.optim.AdamW, lr=1e-3)`.
        scheduler: factory called with the optimizer, or None; a schedule-length argument
            it leaves unset (total_iters, T_max, total_steps) is set to the run's length.
        class_names: one per class, in label order (C names).
        ignore_index: mask value of void pixels, excluded from loss (configure the loss
            with it) and metrics.
        scheduler_interval: "step" to advance the scheduler every optimizer step (the
            convention of poly, cosine and one-cycle schedules), "epoch" every epoch.
        inference: called as `inference(net, images)` for validation, test and
            prediction logits (`predict_logits`), e.g.
            `seglab.inference.SegmentationInference` for sliding-window or
            test-time-augmented evaluation; None: `SegmentationInference()`, the whole
            image padded to a multiple of 32 as `seglab.predict` does by default.
    """

    task = "segmentation"

    def _make_metrics(self) -> SegmentationMetrics:
        return SegmentationMetrics(self.class_names, ignore_index=self.ignore_index)

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the images' own size through `inference`; without one, through
        `seglab.predict`'s default (`SegmentationInference()`: the whole image padded to
        a multiple of 32, the logits cropped back), so validation and test during
        training score the masks `seglab.predict` and the exported model would give."""
        inference = self.inference if self.inference is not None else SegmentationInference()
        return inference(self.net, images)

    def _metric_names(self) -> list[str]:
        return self.val_metrics.names

    def _metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        # Class indices rather than logits: torchmetrics would run the slow argmax itself.
        return class_indices(logits)


class ClassificationModule(TaskModule):
    """Image classification: logs loss, top-1 accuracy (`acc`), mean per-class accuracy
    (`mAcc`), per-class accuracy (`Acc/<class>`) and, with more than 5 classes, top-5
    accuracy (`acc_top5`).

    Args: as `SegmentationModule`, with targets LongTensor (N,) and logits (N, C).
    """

    task = "classification"

    def _make_metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics(self.class_names)

    def _metric_names(self) -> list[str]:
        return self.val_metrics.names


MODULES: dict[Task, type[TaskModule]] = {
    "segmentation": SegmentationModule,
    "classification": ClassificationModule,
}


def check_net_fits_data(net: nn.Module, datamodule: SeglabDataModule) -> None:
    """Raise `SeglabError` unless `net` maps a batch shaped like the data's images to logits
    of the data's task and class count. Costs one forward pass on one small image."""
    task, num_classes = datamodule.task, datamodule.num_classes
    net_name, data_name = type(net).__name__, type(datamodule).__name__
    height, width = datamodule.input_size
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            logits = net(torch.zeros(1, 3, height, width))
    except Exception as err:  # any failure here is a config mismatch; say which
        raise SeglabError(
            f"model {net_name} fails on an image shaped like {data_name}'s "
            f"(1, 3, {height}, {width}): {err}"
        ) from err
    finally:
        net.train(was_training)
    out_task = {2: "classification", 4: "segmentation"}.get(logits.ndim, f"{logits.ndim}-d output")
    if out_task != task:
        hint = (
            "a classifier such as model=cnn"
            if task == "classification"
            else "a segmentation model such as model=unet"
        )
        raise SeglabError(
            f"model {net_name} does {out_task} (logits {tuple(logits.shape)}) but data "
            f"{data_name} is a {task} dataset; use {hint}, or an experiment that pairs them"
        )
    if logits.shape[1] != num_classes:
        raise SeglabError(
            f"model {net_name} predicts {logits.shape[1]} classes but data {data_name} has "
            f"num_classes={num_classes}; let the model read ${{data.num_classes}}"
        )


def build_module(
    datamodule: SeglabDataModule,
    net: nn.Module,
    loss: nn.Module,
    optimizer: OptimizerFactory,
    scheduler: SchedulerFactory | None = None,
    **kwargs: Any,
) -> TaskModule:
    """The LightningModule of the data's task, after checking the net fits the data."""
    check_net_fits_data(net, datamodule)
    return MODULES[datamodule.task](
        net,
        loss,
        optimizer,
        scheduler,
        class_names=datamodule.class_names,
        ignore_index=datamodule.ignore_index,
        **kwargs,
    )
