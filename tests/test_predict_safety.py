"""Predict never destroys what it did not write: not the inputs, not a folder of other
files, not a file a symbolic link points to; CSV cells never run as formulas."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.config import compose
from seglab.data.shapes import SHAPES, render_scene
from seglab.errors import SeglabError
from seglab.output_folder import MANIFEST, input_root
from seglab.predict import csv_cell, predict
from seglab.train import train


def _train(tmp_dir: Path, *overrides: str) -> Path:
    cfg = compose(
        [*overrides, "trainer.max_epochs=1", "logger=none", "test=false"], output_dir=tmp_dir
    )
    train(cfg)
    return Path(json.loads((tmp_dir / "metrics.json").read_text())["best_model_path"])


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory, tiny) -> Path:
    return _train(tmp_path_factory.mktemp("seg_run"), *tiny)


@pytest.fixture(scope="module")
def cls_ckpt(tmp_path_factory, tiny) -> Path:
    return _train(tmp_path_factory.mktemp("cls_run"), *tiny, "experiment=shapes_cnn")


def _images(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        image, _ = render_scene(np.random.default_rng(i), (48, 64), SHAPES, max_shapes=2)
        Image.fromarray(image).save(folder / name, format="PNG")
    return folder


def _predict(ckpt: Path, input_: Path | str, output: Path, *overrides: str) -> dict:
    cfg = compose(
        [f"ckpt_path={ckpt}", f"input={input_}", f"output={output}", *overrides],
        config_name="predict",
    )
    return predict(cfg)


def test_a_dataset_root_as_output_is_refused_and_its_masks_stay(seg_ckpt, tmp_path):
    root = tmp_path / "dataset"
    images = _images(root / "images", "a.png", "b.png")
    (root / "masks").mkdir()
    truth = {}
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((48, 64), 1, np.uint8)).save(root / "masks" / name)
        truth[name] = (root / "masks" / name).read_bytes()

    with pytest.raises(SeglabError, match=r"holds 4 file\(s\) no earlier predict wrote") as err:
        _predict(seg_ckpt, images, root)
    assert "masks/a.png" in str(err.value) and "overwrite=true" in str(err.value)
    assert {name: (root / "masks" / name).read_bytes() for name in truth} == truth
    assert not (root / MANIFEST).exists() and not (root / "overlay").exists()


def test_overwrite_true_writes_beside_other_files(seg_ckpt, tmp_path):
    images = _images(tmp_path / "in", "a.png")
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    result = _predict(seg_ckpt, images, output, "overwrite=true")
    assert result["written"] == 1
    assert (output / "notes.txt").read_text() == "mine"
    assert (output / "masks" / "a.png").is_file()


def test_a_second_predict_into_its_own_output_is_allowed(seg_ckpt, tmp_path):
    images = _images(tmp_path / "in", "a.png", "b.png")
    output = tmp_path / "out"
    first = _predict(seg_ckpt, images, output)
    masks = {p.name: p.read_bytes() for p in (output / "masks").iterdir()}
    second = _predict(seg_ckpt, images, output)
    assert first["written"] == second["written"] == 2
    assert {p.name: p.read_bytes() for p in (output / "masks").iterdir()} == masks
    owned = json.loads((output / MANIFEST).read_text())["files"]
    assert "masks/a.png" in owned and "overlay/b.png" in owned
    # A file the user adds afterwards makes it a foreign folder again.
    (output / "masks" / "hand-drawn.png").write_bytes(masks["a.png"])
    with pytest.raises(SeglabError, match=r"masks/hand-drawn\.png"):
        _predict(seg_ckpt, images, output)


@pytest.mark.parametrize(
    "where", ["same", "inside", "glob_inside"], ids=["input", "under-input", "under-glob-root"]
)
def test_an_output_in_the_input_tree_is_refused(seg_ckpt, tmp_path, where):
    images = _images(tmp_path / "photos", "a.png")
    input_, output = {
        "same": (images, images),
        "inside": (images, images / "pred"),
        "glob_inside": (f"{images}/**/*.png", images / "sub" / "pred"),
    }[where]
    with pytest.raises(SeglabError, match=r"is inside the input folder .*photos"):
        _predict(seg_ckpt, input_, output)
    assert sorted(p.name for p in images.iterdir()) == ["a.png"]


def test_input_root_of_folders_and_patterns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos" / "x").mkdir(parents=True)
    assert input_root("photos") == tmp_path / "photos"
    assert input_root("photos/**/*.jpg") == tmp_path / "photos"
    assert input_root("photos/x/a.jpg") == tmp_path / "photos" / "x"
    assert input_root("*.jpg") == tmp_path


def test_a_planted_symlink_is_replaced_never_written_through(seg_ckpt, tmp_path):
    images = _images(tmp_path / "in", "a.png")
    output = tmp_path / "out"
    _predict(seg_ckpt, images, output)
    victim = tmp_path / "unrelated.txt"
    victim.write_text("precious")
    overlay = output / "overlay" / "a.png"
    overlay.unlink()
    overlay.symlink_to(victim)  # at a name predict owns, so the folder is not refused

    _predict(seg_ckpt, images, output)
    assert victim.read_text() == "precious"
    assert not overlay.is_symlink()
    with Image.open(overlay) as image:
        assert image.size == (64, 48)


def test_a_linked_subfolder_is_refused(seg_ckpt, tmp_path):
    images = _images(tmp_path / "in", "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    output = tmp_path / "out"
    output.mkdir()
    (output / "masks").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SeglabError, match=r"masks is a symbolic link"):
        _predict(seg_ckpt, images, output, "overwrite=true")
    assert list(elsewhere.iterdir()) == []


def test_a_linked_csv_is_replaced_never_written_through(cls_ckpt, tmp_path):
    images = _images(tmp_path / "in", "a.png")
    output = tmp_path / "out"
    _predict(cls_ckpt, images, output)
    victim = tmp_path / "unrelated.txt"
    victim.write_text("precious")
    (output / "predictions.csv").unlink()
    (output / "predictions.csv").symlink_to(victim)
    _predict(cls_ckpt, images, output)
    assert victim.read_text() == "precious"
    assert (output / "predictions.csv").read_text().startswith("file,class,probability")


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(cls_ckpt, tmp_path):
    names = ['=HYPERLINK("x").png', "+1.png", "-2.png", "@sum.png", "plain.png"]
    images = _images(tmp_path / "in", *names)
    _predict(cls_ckpt, images, tmp_path / "out")
    with (tmp_path / "out" / "predictions.csv").open(newline="") as file:
        files = {Path(row["file"]).name: row["file"] for row in csv.DictReader(file)}
    # The paths are absolute here, so the name is not the cell's first character: the
    # escape matters for relative inputs, checked through the cell function and the CLI.
    assert set(files) == set(names)
    assert [csv_cell(v) for v in ("=1+1", "+a", "-a", "@a", "\ta", "\ra", "a=b")] == [
        "'=1+1",
        "'+a",
        "'-a",
        "'@a",
        "'\ta",
        "'\ra",
        "a=b",
    ]


def test_relative_formula_file_names_are_escaped_in_the_cli_csv(cls_ckpt, tmp_path):
    _images(tmp_path, "=cmd.png", "ok.png")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.predict",
            f"ckpt_path={cls_ckpt}",
            "input=*.png",
            f"output={tmp_path.parent / (tmp_path.name + '-out')}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with (tmp_path.parent / (tmp_path.name + "-out") / "predictions.csv").open(newline="") as f:
        cells = [row["file"] for row in csv.DictReader(f)]
    assert cells == ["'=cmd.png", "ok.png"]


def test_an_image_named_dot_dot_png_is_predicted_not_a_crash(seg_ckpt, tmp_path):
    images = _images(tmp_path / "in", "..png", "a.png")
    result = _predict(seg_ckpt, images, tmp_path / "out")
    assert result["written"] == 2 and result["failed"] == []
    with Image.open(tmp_path / "out" / "masks" / "..png") as mask:
        assert mask.format == "PNG" and mask.size == (64, 48)
