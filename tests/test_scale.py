"""Distributed and mixed-precision training, resume and reproducibility (sweeps:
test_sweeps.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from seglab.config import compose
from seglab.errors import SeglabError
from seglab.evaluate import evaluate
from seglab.train import train

# 7 test/val samples over 2 processes: torch's DistributedSampler would pad to 8 with a
# duplicate, and the duplicate would count twice in the metrics.
DDP_DATA = [
    "data.num_train=16",
    "data.num_val=7",
    "data.num_test=7",
    "data.batch_size=4",
    "data.image_size=64",
]


def _cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "seglab.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_ddp_two_processes_match_single_process_evaluation(tmp_path):
    run_dir = tmp_path / "ddp"
    _cli(
        "trainer=ddp_cpu",
        *DDP_DATA,
        # Pinned: weights trained in bf16-mixed (precision=auto's choice on a bf16 CPU)
        # gave a DDP test mIoU 5e-6 off the single-process evaluation (0.1539949 against
        # 0.1539995), not yet explained; see the closing note of issue 23.
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    record = json.loads((run_dir / "metrics.json").read_text())
    ddp = record["metrics"]
    for split in ("test", "val"):
        cfg = compose(
            [f"ckpt_path={record['best_model_path']}", f"split={split}", "trainer.accelerator=cpu"],
            output_dir=tmp_path / split,
            config_name="eval",
        )
        single = evaluate(cfg)["metrics"]
        key = "best/val/mIoU" if split == "val" else "test/mIoU"
        assert ddp[key] == pytest.approx(single[f"{split}/mIoU"], abs=1e-7), split
        if split == "test":
            assert ddp["test/acc"] == pytest.approx(single["test/acc"], abs=1e-7)
            assert ddp["test/IoU/ellipse"] == pytest.approx(single["test/IoU/ellipse"], abs=1e-7)


def test_bf16_mixed_precision_trains_and_learns(make_cfg, overfit):
    cfg = make_cfg("scheduler=none", "optimizer.lr=0.003")
    losses = overfit(cfg, steps=30, precision="bf16-mixed")
    assert losses[-1] < losses[0] / 4, losses[::5]


def test_same_seed_deterministic_runs_give_identical_metrics(make_cfg, tmp_path):
    overrides = ["trainer.deterministic=true", "trainer.max_epochs=2", "logger=none"]
    first = train(make_cfg(*overrides, output_dir=tmp_path / "a"))
    second = train(make_cfg(*overrides, output_dir=tmp_path / "b"))
    for name in ("best/val/mIoU", "test/mIoU", "test/loss", "train/loss_epoch"):
        assert first[name] == second[name], name


class Interrupt(Exception):
    """Stands for a crash or a pre-empted job."""


class InterruptAfterFirstEpoch(L.Callback):
    """Dies at the start of the second epoch, after the first epoch's checkpoints."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            raise Interrupt


def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(make_cfg, tmp_path):
    common = [
        "trainer.deterministic=true",
        "trainer.max_epochs=3",
        "logger=none",
        "data.num_train=12",
    ]
    whole = train(make_cfg(*common, output_dir=tmp_path / "whole"))

    run_dir = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        train(
            make_cfg(
                *common,
                f"+callbacks.interrupt._target_={__name__}.InterruptAfterFirstEpoch",
                output_dir=run_dir,
            )
        )
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    resumed = train(make_cfg(*common, "ckpt_path=last", output_dir=run_dir))

    for name in ("best/val/mIoU", "val/mIoU", "test/mIoU", "test/loss", "train/loss_epoch"):
        assert resumed[name] == pytest.approx(whole[name], rel=1e-6, abs=1e-7), name


def test_nan_loss_stops_with_the_step_and_saves_nothing(make_cfg, tmp_path):
    # Adam moves every weight by ~lr on the first step: 1e30 overflows the next forward.
    cfg = make_cfg("optimizer.lr=1e30", "scheduler=none", "logger=none", "trainer.max_epochs=2")
    with pytest.raises(SeglabError, match=r"training loss is (nan|inf) at epoch 0, step 1 "):
        train(cfg)
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_ddp_classifier_metrics_match_single_process_evaluation(tmp_path):
    """Top-1, top-5 and per-class accuracy summed over 2 gloo processes equal one
    process's, on an odd number of test images (no sample counted twice)."""
    from PIL import Image

    root = tmp_path / "photos"
    for split, count in (("train", 6), ("test", 3)):
        for k in range(7):  # more than 5 classes: top-5 is logged
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(count):  # 21 test images: 11 + 10 over two processes
                colour = (30 * k, 255 - 30 * k, (40 * i) % 255)
                Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")
    run_dir = tmp_path / "ddp"
    _cli(
        "experiment=folder_cnn",
        f"data.root={root}",
        "data.batch_size=4",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    record = json.loads((run_dir / "metrics.json").read_text())
    cfg = compose(
        [f"ckpt_path={record['best_model_path']}", "trainer.accelerator=cpu"],
        output_dir=tmp_path / "eval",
        config_name="eval",
    )
    single = evaluate(cfg)["metrics"]
    for name in ("test/acc", "test/acc_top5", "test/mAcc", "test/Acc/class3"):
        assert record["metrics"][name] == pytest.approx(single[name], abs=1e-7), name
