"""predict uncertainty=true: per-pixel entropy and test-time-augmentation disagreement
maps, the ranking of images by uncertainty, and the checkpoint's temperature applied."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.checkpoint import RECORD_KEY, load_run, read_checkpoint
from seglab.config import compose
from seglab.data.io import read_rgb
from seglab.data.shapes import SHAPES, render_scene
from seglab.inference import SegmentationInference
from seglab.predict import disagreement, normalized_entropy, predict
from seglab.train import train

SIZES = {"a.png": (64, 64), "b.png": (70, 90), "c.png": (48, 100)}


def test_entropy_is_zero_when_certain_and_one_when_uniform():
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    assert normalized_entropy(p).tolist() == pytest.approx([0.0, 1.0, math.log(2) / math.log(4)])


def test_disagreement_is_the_share_of_views_off_the_averaged_class():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2): classes 0 and 1
    same = logits.clone()
    swapped = logits.flip(1)  # both pixels the other class
    half = torch.tensor([[[[2.0, 2.0]], [[0.0, 3.0]]]])  # pixel 0 class 0, pixel 1 class 1
    out = disagreement([same, swapped, half, swapped], logits)
    assert out.tolist() == [[[0.5, 0.5]]]


def test_views_average_to_the_inference_logits():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3, padding=1)
    images = torch.randn(2, 3, 40, 56)
    inference = SegmentationInference(flip=True, scales=(0.75, 1.0))
    logits, views = inference.logits_and_views(net, images)
    assert len(views) == 4 and all(v.shape == (2, 4, 40, 56) for v in views)
    assert torch.equal(logits, inference(net, images))
    assert torch.allclose(sum(views) / 4, logits, atol=1e-5)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny) -> Path:
    run = tmp_path_factory.mktemp("run")
    cfg = compose([*tiny, "trainer.max_epochs=1", "logger=none", "test=false"], output_dir=run)
    train(cfg)
    return Path(json.loads((run / "metrics.json").read_text())["best_model_path"])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i, (name, size) in enumerate(SIZES.items()):
        image, _ = render_scene(np.random.default_rng(i), size, SHAPES, max_shapes=3)
        Image.fromarray(image).save(folder / name)
    return folder


def _predict(ckpt: Path, images: Path, output: Path, *overrides: str) -> dict:
    cfg = compose(
        [f"ckpt_path={ckpt}", f"input={images}", f"output={output}", "device=cpu", *overrides],
        config_name="predict",
    )
    return predict(cfg)


def _entropy_by_hand(ckpt: Path, image_path: Path, temperature: float = 1.0) -> np.ndarray:
    run = load_run(ckpt)
    image = read_rgb(image_path).permute(1, 2, 0).numpy()
    with torch.no_grad():
        logits = run.module.predict_logits(run.datamodule.to_input(image)[None])
    p = (logits / temperature).softmax(1)[0].double()
    return (-(p * p.clamp_min(1e-12).log()).sum(0) / math.log(p.shape[0])).numpy()


def test_uncertainty_maps_and_ranking_equal_the_hand_computation(ckpt, images, tmp_path):
    plain = _predict(ckpt, images, tmp_path / "plain")
    result = _predict(ckpt, images, tmp_path / "out", "uncertainty=true")
    assert result["written"] == plain["written"] == 3
    out = tmp_path / "out"
    with open(out / "uncertainty.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    entropies = [float(r["entropy"]) for r in rows]
    assert entropies == sorted(entropies, reverse=True)
    assert all(r["disagreement"] == "" for r in rows)  # no test-time augmentation
    for row in rows:
        path = Path(row["file"])
        by_hand = _entropy_by_hand(ckpt, path)
        grey = np.asarray(Image.open(out / "uncertainty" / f"{path.stem}.png"))
        assert grey.shape == SIZES[path.name]
        assert np.abs(grey.astype(int) - np.rint(by_hand * 255)).max() <= 1
        assert float(row["entropy"]) == pytest.approx(by_hand.mean(), abs=1e-5)
        # the masks are predict's own
        mask = np.asarray(Image.open(out / "masks" / f"{path.stem}.png"))
        assert np.array_equal(
            mask, np.asarray(Image.open(tmp_path / "plain/masks" / f"{path.stem}.png"))
        )
    assert not (out / "disagreement").exists()


def test_flip_augmentation_adds_the_disagreement_map(ckpt, images, tmp_path):
    flip = _predict(ckpt, images, tmp_path / "flip", "inference.flip=true")
    assert flip["written"] == 3
    _predict(ckpt, images, tmp_path / "out", "uncertainty=true", "inference.flip=true")
    out = tmp_path / "out"
    with open(out / "uncertainty.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        stem = Path(row["file"]).stem
        grey = np.asarray(Image.open(out / "disagreement" / f"{stem}.png"))
        # two views: a pixel's class differs from none (0), one (0.5 -> 128) or both
        # views' (255: their averaged logits pick a third class)
        assert set(np.unique(grey)) <= {0, 128, 255}
        share = ((grey == 128) * 0.5 + (grey == 255)).mean()
        assert float(row["disagreement"]) == pytest.approx(share, abs=1e-6)
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert np.array_equal(mask, np.asarray(Image.open(tmp_path / "flip/masks" / f"{stem}.png")))


def test_predict_applies_the_checkpoints_temperature(ckpt, images, tmp_path):
    checkpoint = read_checkpoint(ckpt)
    checkpoint[RECORD_KEY]["temperature"] = 2.5
    scaled = tmp_path / "scaled.ckpt"
    torch.save(checkpoint, scaled)
    _predict(scaled, images, tmp_path / "out", "uncertainty=true")
    grey = np.asarray(Image.open(tmp_path / "out/uncertainty/b.png"))
    by_hand = _entropy_by_hand(ckpt, images / "b.png", temperature=2.5)
    assert np.abs(grey.astype(int) - np.rint(by_hand * 255)).max() <= 1
    assert np.abs(by_hand - _entropy_by_hand(ckpt, images / "b.png")).max() > 0.01


def test_predict_explain_writes_the_grad_cam_overlay_of_the_class(ckpt, images, tmp_path):
    from seglab.explain import class_activation_maps, overlay_heatmap  # noqa: PLC0415

    result = _predict(ckpt, images, tmp_path / "out", "explain=ellipse")
    assert result["written"] == 3
    run = load_run(ckpt)
    for name, size in SIZES.items():
        written = np.asarray(Image.open(tmp_path / "out/explain" / name.replace(".png", ".png")))
        assert written.shape == (*size, 3)
        image = read_rgb(images / name).permute(1, 2, 0).numpy()
        cam = class_activation_maps(run.module, run.datamodule.to_input(image)[None], 1)
        assert np.abs(written.astype(int) - overlay_heatmap(image, cam[0].numpy())).max() <= 1


def test_predict_explain_refuses_an_unknown_class_naming_the_classes(ckpt, images, tmp_path):
    from seglab.errors import SeglabError  # noqa: PLC0415

    with pytest.raises(SeglabError, match="background"):
        _predict(ckpt, images, tmp_path / "out", "explain=dog")
    with pytest.raises(SeglabError, match="classifiers"):
        _predict(ckpt, images, tmp_path / "out2", "explain=predicted")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_classifier_explains_each_images_predicted_class(tmp_path, tiny, images):
    run_dir = tmp_path / "cls"
    cfg = compose(
        [*tiny, "experiment=shapes_cnn", "trainer.max_epochs=1", "logger=none", "test=false"],
        output_dir=run_dir,
    )
    train(cfg)
    ckpt = Path(json.loads((run_dir / "metrics.json").read_text())["best_model_path"])
    out = tmp_path / "out"
    _predict(ckpt, images, out, "explain=predicted", "uncertainty=true")
    size = tuple(load_run(ckpt).datamodule.input_size)
    for name in SIZES:
        assert np.asarray(Image.open(out / "explain" / name)).shape == (*size, 3)
    with open(out / "predictions.csv") as f:
        predicted = {row["file"]: float(row["probability"]) for row in csv.DictReader(f)}
    with open(out / "uncertainty.csv") as f:
        ranked = list(csv.DictReader(f))
    assert {r["file"] for r in ranked} == set(predicted)
    assert not (out / "uncertainty").exists()  # one value per image: the CSV only
