"""The progress bar redraws by time, not every batch: no per-step metric read-back."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seglab.callbacks import ProgressBar
from seglab.models import SimpleCNN
from seglab.modules import ClassificationModule

BATCHES = 12


class _CountingBar(ProgressBar):
    """Counts the redraws of the training bar (each reads the metrics back)."""

    def __init__(self, refresh_seconds: float) -> None:
        super().__init__(refresh_seconds=refresh_seconds)
        self.train_redraws = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        before = self.train_progress_bar.n
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.train_redraws += self.train_progress_bar.n != before


def _fit(bar: ProgressBar) -> None:
    torch.manual_seed(0)
    module = ClassificationModule(
        SimpleCNN(num_classes=3, input_size=24),
        nn.CrossEntropyLoss(),
        partial(torch.optim.SGD, lr=0.01),
        class_names=["a", "b", "c"],
        ignore_index=-100,
    )
    data = TensorDataset(torch.randn(BATCHES * 2, 3, 24, 24), torch.randint(0, 3, (BATCHES * 2,)))
    L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[bar],
    ).fit(module, DataLoader(data, batch_size=2))


# A long interval: the first batch and the epoch's last one, nothing in between. Zero:
# every batch, like Lightning's refresh_rate=1.
@pytest.mark.parametrize(("refresh_seconds", "redraws"), [(3600.0, 2), (0.0, BATCHES)])
def test_bar_redraws_by_time_and_always_on_the_last_batch(refresh_seconds, redraws):
    bar = _CountingBar(refresh_seconds)
    _fit(bar)
    assert bar.train_redraws == redraws
    assert bar.train_progress_bar.n == BATCHES  # the last batch is always shown
