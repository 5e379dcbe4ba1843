"""Prediction on new images: a tiny trained checkpoint in, masks / CSV out, bad files skipped."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from seglab.checkpoint import load_run
from seglab.config import compose
from seglab.data.io import IMAGE_SUFFIXES, read_rgb
from seglab.data.shapes import SHAPES, render_scene
from seglab.errors import SeglabError
from seglab.predict import find_images, predict
from seglab.train import train

# name -> (height, width): sizes that are not multiples of 32, two equal ones in a row so
# they share a batch, PNG (lossless, for exact comparisons) and JPEG.
READABLE = {"a1.png": (64, 64), "a2.jpg": (64, 64), "b.jpg": (70, 90), "c.png": (100, 48)}
UNREADABLE = ("bad.png", "trunc.jpg")


def _train(tmp_dir: Path, *overrides: str) -> tuple[Path, DictConfig]:
    """Train for one epoch; its best checkpoint and its config."""
    cfg = compose(
        [*overrides, "trainer.max_epochs=1", "logger=none", "test=false"], output_dir=tmp_dir
    )
    train(cfg)
    record = json.loads((tmp_dir / "metrics.json").read_text())
    return Path(record["best_model_path"]), cfg


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory, tiny) -> tuple[Path, DictConfig]:
    return _train(tmp_path_factory.mktemp("seg_run"), *tiny)


@pytest.fixture(scope="module")
def cls_ckpt(tmp_path_factory, tiny) -> tuple[Path, DictConfig]:
    return _train(tmp_path_factory.mktemp("cls_run"), *tiny, "experiment=shapes_cnn")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of shapes scenes of several sizes plus a corrupt and a truncated file."""
    folder = tmp_path_factory.mktemp("images")
    for i, (name, size) in enumerate(READABLE.items()):
        image, _ = render_scene(np.random.default_rng(i), size, SHAPES, max_shapes=3)
        Image.fromarray(image).save(folder / name, quality=95)
    (folder / "bad.png").write_bytes(b"this is not an image" * 20)
    whole = (folder / "b.jpg").read_bytes()
    (folder / "trunc.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.txt").write_text("not an image extension: never read")
    return folder


def _predict(ckpt: Path, input_: str | Path, output: Path, *overrides: str) -> dict:
    cfg = compose(
        [f"ckpt_path={ckpt}", f"input={input_}", f"output={output}", *overrides],
        config_name="predict",
    )
    return predict(cfg)


@pytest.fixture(scope="module")
def seg_run(seg_ckpt, images, tmp_path_factory) -> tuple[dict, Path]:
    """One segmentation prediction over `images`: its result dict and output folder."""
    output = tmp_path_factory.mktemp("seg_out")
    return _predict(seg_ckpt[0], images, output), output


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def test_find_images_filters_extensions_and_sorts(tmp_path):
    for name in ("b.PNG", "a.jpeg", "c.webp", "d.txt", "e.png.bak"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.png").write_bytes(b"")  # folders are not searched recursively
    assert [p.name for p in find_images(str(tmp_path))] == ["a.jpeg", "b.PNG", "c.webp"]
    assert [p.name for p in find_images(str(tmp_path / "**" / "*.png"))] == ["f.png"]


def test_one_mask_per_readable_image_at_its_size(seg_run, seg_ckpt):
    result, output = seg_run
    num_classes = seg_ckpt[1].data.num_classes
    assert sorted(p.name for p in (output / "masks").iterdir()) == [
        f"{Path(n).stem}.png" for n in sorted(READABLE)
    ]
    for name, (height, width) in READABLE.items():
        with Image.open(output / "masks" / f"{Path(name).stem}.png") as mask:
            assert mask.mode == "L"
            assert mask.size == (width, height)
            values = np.array(mask)
        assert values.max() < num_classes
    assert result["written"] == len(READABLE)


def test_color_and_overlay_follow_the_mask(seg_run, seg_ckpt, images):
    _, output = seg_run
    palette = np.array(instantiate(seg_ckpt[1].data).palette, dtype=np.uint8)
    for name, (height, width) in READABLE.items():
        stem = f"{Path(name).stem}.png"
        mask = np.array(Image.open(output / "masks" / stem))
        color, overlay = _read(output / "color" / stem), _read(output / "overlay" / stem)
        assert color.shape == overlay.shape == (height, width, 3)
        np.testing.assert_array_equal(color, palette[mask])
        expected = 0.5 * _read(images / name).astype(np.float32) + 0.5 * palette[mask]
        assert np.abs(overlay.astype(np.float32) - expected).max() <= 1.0


@pytest.mark.parametrize("name", ["a1.png", "c.png"])
def test_mask_is_the_models_argmax(seg_run, seg_ckpt, images, name):
    """The mask is the checkpoint's own prediction at the image's size: computed here from
    the bare net, zero-padded to a multiple of 32 (as `inference=whole` does) and cropped."""
    ckpt, cfg = seg_ckpt
    net = load_run(ckpt).module.net
    image = instantiate(cfg.data).to_input(_read(images / name))[None]
    height, width = image.shape[-2:]
    padded = F.pad(image, (0, -width % 32, 0, -height % 32))
    with torch.no_grad():
        expected = net(padded)[0, :, :height, :width].argmax(0).numpy()
    mask = np.array(Image.open(seg_run[1] / "masks" / f"{Path(name).stem}.png"))
    np.testing.assert_array_equal(mask, expected)


def test_unreadable_files_are_reported_and_skipped(seg_run, images):
    result, output = seg_run
    assert result["total"] == len(READABLE) + len(UNREADABLE)
    assert [Path(f["file"]).name for f in result["failed"]] == list(UNREADABLE)
    reasons = {Path(f["file"]).name: f["reason"] for f in result["failed"]}
    assert "truncated" in reasons["trunc.jpg"]
    assert "cannot identify" in reasons["bad.png"]
    assert not (output / "masks" / "bad.png").exists()


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seglab.predict", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_the_rest_and_fails_on_unreadable_files(seg_ckpt, images, tmp_path):
    output = tmp_path / "out"
    result = _run_cli(
        f"ckpt_path={seg_ckpt[0]}",
        f"input={images}",
        f"output={output}",
        "num_workers=2",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("seglab: error: 2 of 6 images could not be read"), last
    assert "bad.png" in last and "trunc.jpg" in last
    # Each failure is logged with its reason, and the summary counts what was written.
    assert "trunc.jpg: cannot read it (image file is truncated" in result.stdout
    assert "wrote 4 of 6 images" in result.stdout
    assert len(list((output / "overlay").glob("*.png"))) == len(READABLE)


def test_cli_empty_folder_is_a_one_line_error(seg_ckpt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = (f"ckpt_path={seg_ckpt[0]}", f"input={empty}", f"output={tmp_path / 'out'}")
    result = _run_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"seglab: error: input={empty} (folder) matches no images"), line
    assert all(ext in line for ext in IMAGE_SUFFIXES)
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_a_clear_error(images, tmp_path):
    with pytest.raises(SeglabError, match=r"checkpoint .*nope\.ckpt does not exist"):
        _predict(tmp_path / "nope.ckpt", images, tmp_path / "out")


def test_inputs_that_would_overwrite_each_other_are_refused(seg_ckpt, images, tmp_path):
    (tmp_path / "x.png").write_bytes((images / "a1.png").read_bytes())
    (tmp_path / "x.jpg").write_bytes((images / "a2.jpg").read_bytes())
    with pytest.raises(SeglabError, match=r"x\.jpg and .*x\.png would both be written as x\.png"):
        _predict(seg_ckpt[0], tmp_path, tmp_path / "out")


def test_classification_writes_one_csv_row_per_image(cls_ckpt, images, tmp_path):
    ckpt, cfg = cls_ckpt
    result = _predict(ckpt, images, tmp_path / "out")
    with (tmp_path / "out" / "predictions.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [Path(row["file"]).name for row in rows] == sorted(READABLE)
    assert [Path(f["file"]).name for f in result["failed"]] == list(UNREADABLE)
    class_names = list(cfg.data.class_names)
    assert all(row["class"] in class_names for row in rows)
    # The top class's probability: at least chance level, at most 1.
    assert all(1 / len(class_names) <= float(row["probability"]) <= 1 for row in rows)

    # The row is the net's softmax on the image resized to the training size the way
    # image-folder training resizes (torchvision, bilinear, antialiased).
    datamodule = instantiate(cfg.data)
    image = tv_tensors.Image(read_rgb(images / "c.png"))
    resized = v2.Resize(datamodule.input_size, antialias=True)(image)
    resized = resized.permute(1, 2, 0).numpy()
    with torch.no_grad():
        probabilities = load_run(ckpt).module.net(datamodule.to_input(resized)[None]).softmax(1)[0]
    row = next(r for r in rows if Path(r["file"]).name == "c.png")
    assert row["class"] == class_names[int(probabilities.argmax())]
    assert float(row["probability"]) == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_glob_input_selects_matching_files(cls_ckpt, images, tmp_path):
    result = _predict(cls_ckpt[0], images / "*.png", tmp_path / "out")
    assert result["total"] == 3  # a1.png, bad.png, c.png
    assert result["written"] == 2
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "file,class,probability" and len(rows) == 3
