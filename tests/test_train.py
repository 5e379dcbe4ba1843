"""End to end: config -> data -> model -> Lightning fit/test -> run directory."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from functools import partial
from importlib import metadata
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seglab.checkpoint import load_module
from seglab.config import CONFIG_DIR
from seglab.errors import SeglabError
from seglab.modules import build_module, schedule_length_kwargs
from seglab.train import train

# Recipes for data on disk train in their data's own tests, on data the tests write.
TESTED_WITH_THEIR_DATA = {"cifar10_cnn": "test_cifar10.py", "folder_cnn": "test_image_folder.py"}
EXPERIMENTS = sorted(
    p.stem
    for p in (CONFIG_DIR / "experiment").glob("*.yaml")
    if p.stem not in TESTED_WITH_THEIR_DATA
)


@pytest.mark.parametrize(
    "overrides",
    [["model=unet"], ["model=smp", "model.arch=DeepLabV3Plus"]]
    + [[f"experiment={name}"] for name in EXPERIMENTS],
    ids=lambda o: " ".join(o),
)
def test_fast_dev_run(make_cfg, overrides):
    """Every model on its data, and every experiment recipe, trains and tests one batch."""
    cfg = make_cfg(*overrides, "trainer.fast_dev_run=true", "logger=none")
    metrics = train(cfg)
    key = "test/acc" if cfg.optimized_metric == "val/acc" else "test/mIoU"
    assert 0.0 <= metrics[key] <= 1.0
    assert math.isfinite(metrics["test/loss"])


def test_experiments_cover_every_model():
    """The recipes exercise our own nets and the plain CNN, not only the default UNet."""
    assert {"shapes_cnn", "shapes_fcn"} <= set(EXPERIMENTS)


def test_overfits_one_batch(make_cfg, overfit):
    """The whole pipeline (data, net, loss, optimizer, Lightning loop) can learn: training
    on one fixed batch drives the loss down by at least 10x."""
    losses = overfit(make_cfg("scheduler=none", "optimizer.lr=0.003"), steps=60)
    assert len(losses) == 60
    assert losses[-1] < losses[0] / 10, losses[::10]


def test_schedule_length_is_not_overridden_when_given():
    factory = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=7)
    assert schedule_length_kwargs(factory, 100) == {}
    assert schedule_length_kwargs(torch.optim.lr_scheduler.OneCycleLR, 9) == {"total_steps": 9}


def test_trained_learning_rate_reaches_zero_with_poly(make_cfg):
    """Through the real Trainer: 2 epochs x 2 batches, poly -> lr 0 after the 4th step."""
    cfg = make_cfg(
        "scheduler=poly",
        "trainer.precision=32-true",  # auto is seglab.train's; this builds the Trainer itself
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "logger=none",
        "callbacks=none",
    )
    datamodule = instantiate(cfg.data)
    module = build_module(
        datamodule,
        instantiate(cfg.model),
        instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
    )
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_class_count_mismatch_is_one_clear_error(make_cfg):
    with pytest.raises(SeglabError, match=r"predicts 5 classes .* num_classes=4"):
        train(make_cfg("model.classes=5"))


def test_classifier_on_segmentation_data_is_refused(make_cfg):
    with pytest.raises(SeglabError, match=r"SimpleCNN does classification .* segmentation"):
        train(make_cfg("model=cnn"))


def test_segmentation_model_on_classification_data_is_refused(make_cfg):
    with pytest.raises(SeglabError, match=r"Unet does segmentation .* classification dataset"):
        train(make_cfg("data=shapes_cls"))


def test_optimized_metric_must_be_logged(make_cfg):
    with pytest.raises(SeglabError, match=r"optimized_metric=val/mIoU is not logged .*'val/acc'"):
        train(make_cfg("data=shapes_cls", "model=cnn"))


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seglab.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_run_writes_a_complete_run_directory(tmp_path, tiny):
    """A tiny real run through the command line leaves everything needed to inspect and
    repeat it, and its best checkpoint alone rebuilds a model that reproduces its test
    metrics."""
    run_dir = tmp_path / "run"
    result = _run_cli(*tiny, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "trainer.max_epochs=2" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 42
    assert info["versions"]["torch"] == metadata.version("torch")
    assert info["git"] is None or len(info["git"]["commit"]) == 40

    record = json.loads((run_dir / "metrics.json").read_text())
    best = Path(record["best_model_path"])
    assert best.parent == run_dir / "checkpoints" and best.is_file()
    checkpoint = torch.load(best, weights_only=True)
    # The epoch whose validation mIoU was the highest (the first of equal ones).
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    curve = [point.value for point in events.Scalars("val/mIoU")]
    assert len(curve) == 2
    assert checkpoint["epoch"] == curve.index(max(curve))
    assert best.name == f"best-epoch{checkpoint['epoch']:03d}.ckpt"
    # The best-checkpoint callback (the other one keeps last.ckpt, monitoring nothing).
    (checkpointer,) = [
        v for k, v in checkpoint["callbacks"].items() if "'monitor': 'val/mIoU'" in k
    ]
    assert record["metrics"]["best/val/mIoU"] == pytest.approx(
        checkpointer["best_model_score"].item()
    )
    test_miou = record["metrics"]["test/mIoU"]
    assert 0.0 <= test_miou <= 1.0

    module = load_module(best)
    cfg = OmegaConf.create(checkpoint["seglab"]["config"])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    again = trainer.test(module, datamodule=instantiate(cfg.data), verbose=False)[0]
    assert again["test/mIoU"] == pytest.approx(test_miou, abs=1e-6)


def test_cli_unknown_choice_lists_the_options(tmp_path):
    result = _run_cli("model=nope", cwd=tmp_path)
    assert result.returncode != 0
    assert "model=nope is no option of the model group" in result.stderr
    assert "unet" in result.stderr and "fcn" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_cli_config_mistake_is_one_line(tmp_path, tiny):
    result = _run_cli(*tiny, "model.classes=7", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("seglab: error: model Unet predicts 7 classes"), last
