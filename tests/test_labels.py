"""Masks that would train silently wrong stop at setup with one line saying what they
hold and the fix: binary masks saved as 0/255 (255 is the default ignore_index), a class
no train pixel holds, most pixels void. The checker lists the same as a problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.data.folder import FolderDataModule
from seglab.data.labels import label_problem
from seglab.errors import SeglabError


def _binary_dataset(root: Path, foreground: int = 255) -> Path:
    """Three train and two val pairs: 16x16 masks whose right quarter is `foreground`."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            mask = np.zeros((16, 16), np.uint8)
            mask[:, 12:] = foreground
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_masks_saved_as_0_255_stop_setup_with_their_values_and_the_label_map(tmp_path, cache):
    root = _binary_dataset(tmp_path / "horses")
    dm = FolderDataModule(root, ["background", "horse"], 2, crop_size=16, cache=cache)
    with pytest.raises(SeglabError) as caught:
        dm.setup("fit")
    message = str(caught.value)
    assert "\n" not in message
    assert "train masks of data.root=" in message and str(root) in message
    assert "hold values 0 (75.0%), 255 (25.0%)" in message
    assert "class 'horse' (1) has no pixels" in message
    assert message.count("data.label_map={255:1}") == 1
    assert "data.check_labels=false" in message


def test_the_suggested_label_map_trains_the_foreground(tmp_path):
    root = _binary_dataset(tmp_path / "horses")
    dm = FolderDataModule(
        root, ["background", "horse"], 2, crop_size=16, label_map={255: 1}, cache="memory"
    )
    dm.setup("fit")
    masks = np.asarray(dm.train_set.store["masks"])
    assert np.bincount(masks, minlength=256)[[0, 1, 255]].tolist() == [576, 192, 0]


def test_check_labels_false_trains_on_the_masks_as_they_are(tmp_path):
    root = _binary_dataset(tmp_path / "horses")
    dm = FolderDataModule(root, ["background", "horse"], 2, crop_size=16, check_labels=False)
    dm.setup("fit")
    assert len(dm.train_set) == 3


def test_mostly_void_masks_are_a_problem_even_with_every_class_present():
    counts = np.zeros(256, np.int64)
    counts[[0, 1, 255]] = [10, 10, 80]
    message = label_problem(counts, ["bg", "fg"], 255, "the 4 train masks")
    assert message is not None
    assert "80.0% of the pixels are ignore_index=255" in message
    assert "hold values 255 (80.0%), 0 (10.0%), 1 (10.0%)" in message
    # Void borders (VOC: about 5-10%) are no problem.
    counts[[0, 1, 255]] = [50, 42, 8]
    assert label_problem(counts, ["bg", "fg"], 255, "the 4 train masks") is None


def test_a_label_map_in_use_is_kept_in_the_suggestion():
    counts = np.zeros(256, np.int64)
    counts[[0, 255]] = [90, 10]
    message = label_problem(counts, ["bg", "a", "b"], 255, "x", label_map={7: 2})
    assert "data.label_map={7:2,255:1}" in message
    assert "classes 'a' (1), 'b' (2) have no pixels" in message


def test_check_data_reports_0_255_masks_as_a_problem_with_the_fix(tmp_path):
    root = _binary_dataset(tmp_path / "horses")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.check_data",
            "data=folder",
            f"data.root={root}",
            "data.class_names=[background,horse]",
            "data.num_classes=2",
            "num_workers=0",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "no problems found" not in run.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["problems"]) == 1
    assert "class 'horse' (1) has no pixels" in report["problems"][0]
    assert "data.label_map={255:1}" in report["problems"][0]
