"""Evaluation of a trained checkpoint, and what a training run shows in TensorBoard."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from seglab.checkpoint import RECORD_KEY, load_run, read_checkpoint
from seglab.config import compose
from seglab.errors import SeglabError
from seglab.evaluate import evaluate
from seglab.train import train

TINY_RUN = [
    "data.num_train=16",
    "data.num_val=8",
    "data.num_test=6",
    "data.batch_size=4",
    "data.image_size=64",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "trainer.enable_model_summary=false",
    "callbacks.images.num_samples=3",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny UNet run with the default callbacks and TensorBoard logger."""
    run_dir = tmp_path_factory.mktemp("run")
    metrics = train(compose(TINY_RUN, output_dir=run_dir))
    record = json.loads((run_dir / "metrics.json").read_text())
    assert Path(record["best_model_path"]).is_file()
    return run_dir, metrics


def _evaluate(tmp_path: Path, ckpt: str, *overrides: str) -> dict:
    cfg = compose(
        [f"ckpt_path={ckpt}", "trainer.accelerator=cpu", *overrides],
        output_dir=tmp_path,
        config_name="eval",
    )
    return evaluate(cfg)


def _best(run_dir: Path) -> str:
    return json.loads((run_dir / "metrics.json").read_text())["best_model_path"]


def test_evaluate_reproduces_the_training_runs_test_metrics(trained, tmp_path):
    run_dir, train_metrics = trained
    result = _evaluate(tmp_path, _best(run_dir))
    for name in ("test/mIoU", "test/acc", "test/mAcc", "test/mDice", "test/IoU/triangle"):
        assert result["metrics"][name] == train_metrics[name], name


def test_a_mixed_precision_runs_test_metrics_are_full_precision_ones(tmp_path):
    # Trained in bf16-mixed (emulated where the CPU lacks it), tested with autocast off:
    # evaluate's 32-true pass over the same checkpoint gives the very same numbers.
    run_dir = tmp_path / "run"
    overrides = [*TINY_RUN, "trainer.max_epochs=1", "report=false", "logger=none"]
    metrics = train(compose([*overrides, "trainer.precision=bf16-mixed"], output_dir=run_dir))
    record = read_checkpoint(Path(_best(run_dir)))[RECORD_KEY]
    assert record["config"]["trainer"]["precision"] == "bf16-mixed"
    result = _evaluate(tmp_path / "eval", _best(run_dir))
    for name in ("test/mIoU", "test/acc", "test/loss"):
        assert result["metrics"][name] == metrics[name], name


def test_evaluate_writes_tables_and_confusion_matrix(trained, tmp_path):
    run_dir, _ = trained
    result = _evaluate(tmp_path, _best(run_dir))
    with open(tmp_path / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["background", "ellipse", "rectangle", "triangle"]
    for row, stored in zip(rows, result["per_class"], strict=True):
        if stored["IoU"] is not None:
            iou = float(row["IoU"])
            assert iou == pytest.approx(stored["IoU"])
            assert float(row["Dice"]) == pytest.approx(2 * iou / (1 + iou))
    with open(tmp_path / "confusion_matrix.csv") as f:
        table = list(csv.reader(f))
    counts = [[int(v) for v in line[1:]] for line in table[1:]]
    assert sum(map(sum, counts)) == 6 * 64 * 64  # every test pixel, none void
    diagonal = sum(counts[i][i] for i in range(4))
    assert diagonal / (6 * 64 * 64) == pytest.approx(result["metrics"]["test/acc"], abs=1e-6)
    with Image.open(tmp_path / "confusion_matrix.png") as image:
        assert image.width > 100 and image.height > 100
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["test/mIoU"] == result["metrics"]["test/mIoU"]


def test_sliding_window_as_large_as_the_image_equals_whole_image(trained, tmp_path):
    run_dir, _ = trained
    whole = _evaluate(tmp_path / "whole", _best(run_dir))
    slide = _evaluate(
        tmp_path / "slide",
        _best(run_dir),
        "inference=slide",
        "inference.window=[64,64]",
        "inference.stride=[32,32]",
    )
    assert slide["metrics"]["test/mIoU"] == pytest.approx(whole["metrics"]["test/mIoU"], abs=1e-6)


def _slide(net: torch.nn.Module, images: torch.Tensor, classes: int) -> torch.Tensor:
    """Logits of 32x32 windows every 16 pixels, averaged where they overlap: written out
    here, apart from `seglab.inference`, for images whose sides are 32 + 16 k."""
    height, width = images.shape[-2:]
    summed = torch.zeros(images.shape[0], classes, height, width)
    counts = torch.zeros(height, width)
    for top in range(0, height - 32 + 1, 16):
        for left in range(0, width - 32 + 1, 16):
            rows, cols = slice(top, top + 32), slice(left, left + 32)
            summed[..., rows, cols] += net(images[..., rows, cols])
            counts[rows, cols] += 1
    return summed / counts


def _confusion(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(C, C) pixel counts, rows = true class, columns = argmax of the logits."""
    classes = logits.shape[1]
    pairs = masks.flatten() * classes + logits.argmax(1).flatten()
    return torch.bincount(pairs, minlength=classes * classes).view(classes, classes)


def test_sliding_window_with_flip_scores_the_windows_averaged_by_hand(trained, tmp_path):
    """inference=slide with windows of half the image, and flip: evaluate scores each
    window's logits averaged where windows overlap and with the mirrored image's, as
    computed here from the bare net. The whole image gives another confusion matrix, so
    evaluate running the net without its `inference` fails this test."""
    run_dir, _ = trained
    result = _evaluate(
        tmp_path,
        _best(run_dir),
        "split=val",
        "inference=slide",
        "inference.window=[32,32]",
        "inference.stride=[16,16]",
        "inference.flip=true",
    )
    assert result["inference"]["flip"] is True

    run = load_run(_best(run_dir))
    net, classes = run.module.net, len(run.class_names)
    run.datamodule.setup("fit")
    slide = whole = 0
    with torch.no_grad():
        for images, masks in run.datamodule.val_dataloader():
            assert images.shape[-2:] == (64, 64)
            flipped = _slide(net, images.flip(-1), classes).flip(-1)
            slide = slide + _confusion((_slide(net, images, classes) + flipped) / 2, masks)
            whole = whole + _confusion(net(images), masks)
    with open(tmp_path / "confusion_matrix.csv") as f:
        written = [[int(v) for v in line[1:]] for line in list(csv.reader(f))[1:]]
    assert written == slide.tolist()
    assert slide.tolist() != whole.tolist()  # the data tells the two apart
    tp = slide.diag().double()
    union = slide.sum(0) + slide.sum(1) - tp
    miou = (tp[union > 0] / union[union > 0]).mean().item()
    assert 0.0 <= result["metrics"]["val/mIoU"] <= 1.0
    assert result["metrics"]["val/mIoU"] == pytest.approx(miou, abs=1e-6)


def test_evaluate_refuses_data_with_other_classes(trained, tmp_path):
    run_dir, _ = trained
    with pytest.raises(SeglabError, match=r"classes \['background', 'ellipse'\] but checkpoint"):
        _evaluate(
            tmp_path,
            _best(run_dir),
            "data=shapes",
            "data.class_names=[background,ellipse]",
            "data.num_classes=2",
        )


def test_evaluate_cli_prints_the_table(trained, tmp_path):
    run_dir, _ = trained
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.evaluate",
            f"ckpt_path={_best(run_dir)}",
            "trainer.accelerator=cpu",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mIoU" in result.stdout and "triangle" in result.stdout
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.evaluate",
            "ckpt_path=nope.ckpt",
            f"hydra.run.dir={tmp_path / 'missing'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert (
        missing.stderr.strip().splitlines()[-1]
        == "seglab: error: checkpoint nope.ckpt does not exist"
    )


def test_tensorboard_gets_images_confusion_custom_scalars_and_hparams(trained):
    run_dir, _ = trained
    events = run_dir / "tensorboard"
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    samples = accumulator.Images("val/samples (image | truth | prediction)")
    assert [s.step for s in samples] == sorted(s.step for s in samples) and len(samples) == 2
    # 3 samples x (image | truth | prediction) tiles of 64 px with 2 px padding
    assert (samples[-1].width, samples[-1].height) == (3 * 66 + 2, 3 * 66 + 2)
    assert "val/confusion_matrix" in tags["images"]
    assert "custom_scalars__config__" in tags["tensors"]
    assert {"val/mIoU", "val/mIoU_best", "~test/mIoU"} <= set(tags["scalars"])
    # per-class curves: one run per class (tensorboard/classes/<class>), tag val/IoU
    per_class = EventAccumulator(str(events / "classes" / "triangle"))
    per_class.Reload()
    assert {"val/IoU", "~test/IoU"} <= set(per_class.Tags()["scalars"])

    plugins = set()
    for path in events.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                plugins.add(value.metadata.plugin_data.plugin_name)
                assert not value.tag.startswith("final/")  # the table reads test/*, best/*
    assert "hparams" in plugins


def test_classifier_evaluation_writes_per_class_accuracy_and_confusion(tmp_path):
    run_dir = tmp_path / "run"
    train(
        compose(
            [
                "experiment=shapes_cnn",
                "data.num_train=32",
                "data.num_val=16",
                "data.num_test=24",
                "data.batch_size=8",
                "trainer.max_epochs=1",
                "trainer.accelerator=cpu",
                "trainer.enable_model_summary=false",
                "logger=none",
            ],
            output_dir=run_dir,
        )
    )
    out = tmp_path / "eval"
    result = _evaluate(out, _best(run_dir))
    with open(out / "confusion_matrix.csv") as f:
        table = list(csv.reader(f))
    assert table[0][1:] == ["ellipse", "rectangle", "triangle"]
    counts = [[int(v) for v in line[1:]] for line in table[1:]]
    assert sum(map(sum, counts)) == 24  # one count per test image
    assert sum(counts[i][i] for i in range(3)) / 24 == pytest.approx(
        result["metrics"]["test/acc"], abs=1e-6
    )
    with open(out / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    # Rows are the true classes: their sums are the test images per class.
    data = instantiate(compose(["experiment=shapes_cnn", "data.num_test=24"]).data)
    data.setup("test")
    truth = [int(label) for label in data.test_set.labels]
    assert [sum(row) for row in counts] == [truth.count(c) for c in range(3)]
    for i, row in enumerate(rows):
        assert int(row["images"]) == sum(counts[i])
        predicted = sum(line[i] for line in counts)
        if predicted:
            assert float(row["Precision"]) == pytest.approx(counts[i][i] / predicted)
        if sum(counts[i]):
            assert float(row["Acc"]) == pytest.approx(counts[i][i] / sum(counts[i]))
            assert result["metrics"][f"test/Acc/{row['class']}"] == pytest.approx(
                float(row["Acc"]), abs=1e-6
            )
    assert Image.open(out / "confusion_matrix.png").size[0] > 100
