"""Where the model is wrong and how sure it is: evaluate's per-image table, worst
images, expected calibration error, reliability diagram and temperature scaling."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.calibration import ReliabilityBins, fit_temperature
from seglab.checkpoint import RECORD_KEY, load_run, read_checkpoint
from seglab.config import compose
from seglab.errors import SeglabError
from seglab.evaluate import evaluate
from seglab.metrics import metrics_from_confusion
from seglab.per_image import image_confusions
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
    "logger=none",
    "report=false",
]


def test_ece_of_a_constructed_case_equals_the_hand_computation():
    # Five samples of two classes; confidences 0.9, 0.9, 0.6, 0.55, 0.95 with 10 bins.
    probabilities = torch.tensor(
        [[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55], [0.95, 0.05]], dtype=torch.float64
    )
    targets = torch.tensor([0, 0, 0, 1, 1])  # right, wrong, right, right, wrong
    bins = ReliabilityBins(10)
    bins.update(probabilities, targets)
    # bin (0.8, 0.9]: 0.9 right, 0.9 wrong -> |0.5 - 0.9| * 2; bin (0.5, 0.6]: 0.6 and 0.55,
    # both right -> |1 - 0.575| * 2; bin (0.9, 1.0]: 0.95 wrong -> |0 - 0.95| * 1.
    expected = (0.4 * 2 + 0.425 * 2 + 0.95 * 1) / 5
    assert bins.ece() == pytest.approx(expected)
    rows = bins.rows()
    assert [r["count"] for r in rows] == [0, 0, 0, 0, 0, 2, 0, 0, 2, 1]
    assert rows[8]["accuracy"] == 0.5 and rows[8]["confidence"] == pytest.approx(0.9)
    assert rows[0]["accuracy"] is None


def test_ece_leaves_ignored_pixels_out_and_counts_pixels_of_masks():
    probabilities = torch.zeros(1, 2, 2, 2)
    probabilities[0, 0] = 1.0  # class 0 everywhere, certain
    targets = torch.tensor([[[0, 255], [1, 0]]])
    bins = ReliabilityBins(5, ignore_index=255)
    bins.update(probabilities, targets)
    assert bins.total == 3
    assert bins.ece() == pytest.approx(1 / 3)  # bin (0.8, 1]: accuracy 2/3, confidence 1


def test_temperature_fit_recovers_the_scale_of_overconfident_logits():
    torch.manual_seed(0)
    true_logits = torch.randn(20000, 4) * 2
    targets = torch.distributions.Categorical(logits=true_logits).sample()
    t = fit_temperature(true_logits * 3, targets)  # three times over-confident
    assert t == pytest.approx(3, rel=0.05)


def test_per_image_confusion_counts_each_images_pixels_only():
    preds = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [0, 0]]])
    targets = torch.tensor([[[0, 1], [0, 255]], [[2, 1], [0, 0]]])
    confusions = image_confusions(preds, targets, 3, ignore_index=255)
    assert confusions[0].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert confusions[1].tolist() == [[2, 0, 0], [0, 0, 1], [0, 0, 1]]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    train(compose(TINY_RUN, output_dir=run_dir))
    return Path(json.loads((run_dir / "metrics.json").read_text())["best_model_path"])


def _evaluate(out: Path, ckpt: Path, *overrides: str) -> dict:
    cfg = compose(
        [f"ckpt_path={ckpt}", "trainer.accelerator=cpu", *overrides],
        output_dir=out,
        config_name="eval",
    )
    return evaluate(cfg)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_per_image_table_matches_each_images_own_confusion_worst_first(run, tmp_path):
    result = _evaluate(tmp_path, run)
    rows = _read_csv(tmp_path / "per_image.csv")
    assert len(rows) == 6
    assert list(rows[0])[:4] == ["image", "mIoU", "acc", "pixels"]
    scores = [float(r["mIoU"]) for r in rows]
    assert scores == sorted(scores)  # worst first
    # Recompute every image's prediction by hand and compare its row.
    loaded = load_run(run)
    data = loaded.datamodule
    data.setup("test")
    names = ["background", "ellipse", "rectangle", "triangle"]
    total = torch.zeros(4, 4, dtype=torch.long)
    by_name = {r["image"]: r for r in rows}
    with torch.no_grad():
        for i in range(len(data.test_set)):
            image, mask = data.test_set[i]
            pred = loaded.module.predict_logits(image[None]).argmax(1)[0]
            confmat = torch.zeros(4, 4, dtype=torch.long)
            for t, p in zip(mask.flatten().tolist(), pred.flatten().tolist(), strict=True):
                confmat[t, p] += 1
            total += confmat
            row = by_name[f"test/{i}"]
            values = metrics_from_confusion(confmat, names)
            assert float(row["mIoU"]) == pytest.approx(float(values["mIoU"]), abs=1e-6)
            assert float(row["acc"]) == pytest.approx(
                float(confmat.diag().sum()) / 64 / 64, abs=1e-6
            )
            assert int(row["pixels"]) == 64 * 64
            for c, name in enumerate(names):
                union = confmat[c].sum() + confmat[:, c].sum() - confmat[c, c]
                cell = row[f"IoU/{name}"]
                if union == 0:
                    assert cell == ""
                else:
                    assert float(cell) == pytest.approx(float(confmat[c, c] / union), abs=1e-6)
    # The images' confusions add up to the split's.
    with open(tmp_path / "confusion_matrix.csv") as f:
        split = [[int(v) for v in line[1:]] for line in list(csv.reader(f))[1:]]
    assert total.tolist() == split
    with Image.open(tmp_path / "worst_images.png") as grid:
        assert grid.width > 4 * 150 and grid.height > 6 * 150  # 4 columns, 6 rows (< 8 worst)
    assert result["metrics"]["test/ECE"] == pytest.approx(result["calibration"]["ece"])


def _overconfident(ckpt: Path, out: Path, factor: float) -> Path:
    """The checkpoint with its segmentation head's weights and bias times `factor`:
    the same argmax, logits `factor` times larger (more confident)."""
    checkpoint = read_checkpoint(ckpt)
    head = [k for k in checkpoint["state_dict"] if k.startswith("net.segmentation_head.")]
    assert head, list(checkpoint["state_dict"])[-4:]
    for key in head:
        checkpoint["state_dict"][key] = checkpoint["state_dict"][key] * factor
    torch.save(checkpoint, out)
    return out


def test_calibration_lowers_an_overconfident_models_ece_and_keeps_its_masks(run, tmp_path):
    bold = _overconfident(run, tmp_path / "bold.ckpt", 40.0)
    before = _evaluate(tmp_path / "before", bold)
    after = _evaluate(tmp_path / "after", bold, "calibrate=true")
    calibration = after["calibration"]
    assert calibration["temperature"] > 1.5
    assert calibration["ece"] < 0.7 * before["calibration"]["ece"]
    assert calibration["ece_uncalibrated"] == pytest.approx(before["calibration"]["ece"])
    for name in ("test/mIoU", "test/acc", "test/IoU/triangle"):
        assert after["metrics"][name] == before["metrics"][name]
    # The temperature travels with the calibrated checkpoint; evaluating it gives the
    # calibrated ECE without fitting again.
    calibrated = Path(calibration["calibrated_checkpoint"])
    assert read_checkpoint(calibrated)[RECORD_KEY]["temperature"] == calibration["temperature"]
    assert load_run(calibrated).module.temperature == calibration["temperature"]
    again = _evaluate(tmp_path / "again", calibrated)
    assert again["calibration"]["ece"] == pytest.approx(calibration["ece"], abs=1e-9)
    rows = _read_csv(tmp_path / "after" / "reliability.csv")
    assert sum(int(r["count"]) for r in rows) == 6 * 64 * 64
    assert (tmp_path / "after" / "reliability.png").stat().st_size > 5000
    assert not math.isnan(calibration["ece"])


def test_evaluate_refuses_bad_calibration_settings(run, tmp_path):
    with pytest.raises(SeglabError, match="ece_bins"):
        _evaluate(tmp_path, run, "ece_bins=0")
    with pytest.raises(SeglabError, match="worst"):
        _evaluate(tmp_path, run, "worst=-1")


def _readme_commands() -> list[list[str]]:
    """The commands of the README's "Where the model is wrong" block, as written."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("### Where the model is wrong", 1)[1].split("```bash", 1)[1]
    lines = block.split("```", 1)[0].strip().splitlines()
    return [line.split()[2:] for line in lines]  # after ".venv/bin/python -m"


@pytest.mark.slow
def test_the_readme_commands_run_as_written(run, tmp_path):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from seglab.data.shapes import SHAPES, render_scene  # noqa: PLC0415

    images = tmp_path / "path" / "to" / "images"
    images.mkdir(parents=True)
    for i in range(3):
        image, _ = render_scene(np.random.default_rng(i), (64, 80), SHAPES, 3)
        Image.fromarray(image).save(images / f"{i}.png")
    commands = _readme_commands()
    assert [c[0] for c in commands] == ["seglab.evaluate", "seglab.predict", "seglab.predict"]
    for command in [commands[0], *commands]:  # evaluate twice: two run directories
        args = [a.replace("<ckpt>", str(run)) for a in command]
        done = subprocess.run(
            [sys.executable, "-m", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    runs = sorted((tmp_path / "outputs" / "eval" / "runs").iterdir())
    assert len(runs) == 2
    for folder in runs:
        assert (folder / "calibrated.ckpt").is_file() and (folder / "per_image.csv").is_file()
        saved = json.loads((folder / "metrics.json").read_text())
        calibration = saved["calibration"]
        assert calibration["temperature"] > 0 and calibration["fitted_on"] == "val"
        assert saved["metrics"]["test/ECE"] == calibration["ece"]
    assert len(list((tmp_path / "to_label" / "disagreement").glob("*.png"))) == 3
    with open(tmp_path / "to_label" / "uncertainty.csv") as f:
        assert [r["rank"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    assert len(list((tmp_path / "explained" / "explain").glob("*.png"))) == 3


def test_a_classifiers_per_image_rows_put_confident_mistakes_first(tmp_path):
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
                "report=false",
            ],
            output_dir=run_dir,
        )
    )
    ckpt = Path(json.loads((run_dir / "metrics.json").read_text())["best_model_path"])
    result = _evaluate(tmp_path / "eval", ckpt)
    rows = _read_csv(tmp_path / "eval" / "per_image.csv")
    assert len(rows) == 24 and list(rows[0]) == [
        "image",
        "label",
        "predicted",
        "probability",
        "correct",
    ]
    loaded = load_run(ckpt)
    data = loaded.datamodule
    data.setup("test")
    by_name = {r["image"]: r for r in rows}
    bins = ReliabilityBins(15)
    with torch.no_grad():
        for i in range(len(data.test_set)):
            image, label = data.test_set[i]
            p = loaded.module(image[None]).softmax(1)
            bins.update(p, torch.tensor([label]))
            row = by_name[f"test/{i}"]
            assert row["label"] == loaded.class_names[label]
            assert row["predicted"] == loaded.class_names[int(p.argmax())]
            assert float(row["probability"]) == pytest.approx(float(p.max()), abs=1e-5)
            assert row["correct"] == str(row["label"] == row["predicted"])
    # mistakes first, most confident first; then hits, least confident first
    wrong = [float(r["probability"]) for r in rows if r["correct"] == "False"]
    right = [float(r["probability"]) for r in rows if r["correct"] == "True"]
    assert [r["correct"] for r in rows] == ["False"] * len(wrong) + ["True"] * len(right)
    assert wrong == sorted(wrong, reverse=True) and right == sorted(right)
    # ECE over images, as computed here image by image
    assert result["calibration"]["samples"] == 24
    assert result["calibration"]["ece"] == pytest.approx(bins.ece(), abs=1e-5)
