"""Shared fixtures: configs composed like the command line's, shrunk to run in seconds."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from seglab.config import compose
from seglab.modules import build_module

# Small, fast variants of the embedded datasets and a CPU trainer without logs.
TINY = [
    "data.num_train=8",
    "data.num_val=4",
    "data.num_test=4",
    "data.batch_size=4",
    "data.image_size=64",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_model_summary=false",
    "report=false",
]


# One batch of train, val and test on the CPU, no logger: "does this config train?".
FAST_DEV_RUN = [
    "trainer.fast_dev_run=true",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_model_summary=false",
    "logger=none",
    "report=false",
]


@pytest.fixture
def fast_run() -> list[str]:
    """Overrides for a one-batch CPU run without logger (`FAST_DEV_RUN`)."""
    return list(FAST_DEV_RUN)


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """Overrides that shrink a run to seconds (for command-line runs)."""
    return list(TINY)


@pytest.fixture
def make_cfg(tmp_path: Path):
    """`make_cfg(*overrides)` -> the composed train config, tiny, writing into tmp_path
    (or `output_dir=`)."""

    def _make(*overrides: str, tiny: bool = True, output_dir: Path | None = None) -> DictConfig:
        return compose(
            overrides=[*(TINY if tiny else []), *overrides], output_dir=output_dir or tmp_path
        )

    return _make


class _LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _overfit_losses(cfg: DictConfig, steps: int, precision: str = "32-true") -> list[float]:
    """Train the configured data/model/loss/optimizer on one fixed batch for `steps`
    steps through the Lightning loop; the training loss of every step."""
    torch.manual_seed(0)
    datamodule = instantiate(cfg.data)
    module = build_module(
        datamodule,
        instantiate(cfg.model),
        instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
    )
    recorder = _LossRecorder()
    trainer = L.Trainer(
        overfit_batches=1,
        max_epochs=steps,
        precision=precision,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=datamodule)
    assert trainer.precision == precision
    return recorder.losses


@pytest.fixture
def overfit():
    """`overfit(cfg, steps, precision="32-true")` -> the training loss of each of `steps`
    steps on one fixed batch (the configured data, model, loss and optimizer)."""
    return _overfit_losses
