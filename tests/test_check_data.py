"""The data checker: counts, frequencies and weights equal hand counts; every planted
problem is reported by name; the exit status says whether there was one."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from seglab.check_data import class_weights, format_report, scan
from seglab.data.base import SeglabDataModule
from seglab.errors import SeglabError


class _Masks(Dataset):
    """Fixed uint8 images and masks; an index in `broken` raises like an unreadable file."""

    def __init__(self, masks: list[torch.Tensor], broken: tuple[int, ...] = ()) -> None:
        self.masks = masks
        self.broken = broken

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int):
        if index in self.broken:
            raise SeglabError(f"cannot read image /data/{index}.png (train split): truncated")
        mask = self.masks[index]
        image = torch.full((3, *mask.shape), 10 * index, dtype=torch.uint8)
        return image, mask


class _InMemory(SeglabDataModule):
    task = "segmentation"

    def __init__(self, train: Dataset, val: Dataset) -> None:
        super().__init__(
            class_names=["bg", "road", "car"], num_classes=3, ignore_index=255, input_size=4
        )
        self.train_set, self.val_set, self.test_set = train, val, val


def _mask(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long).view(2, 2)


def test_counts_frequencies_weights_and_statistics_equal_hand_counts():
    train = _Masks([_mask(0, 0, 0, 1), _mask(0, 1, 2, 255)])
    val = _Masks([_mask(2, 2, 2, 2)])
    result = scan(_InMemory(train, val))
    assert result["problems"] == []
    assert list(result["splits"]) == ["train", "val"]  # test reuses val: scanned once
    assert result["splits"]["train"]["pixels"] == {"bg": 4, "road": 2, "car": 1}
    assert result["splits"]["train"]["frequency"]["road"] == pytest.approx(2 / 7)
    assert result["splits"]["val"]["pixels"] == {"bg": 0, "road": 0, "car": 4}
    # Median frequency balancing: median(4/7, 2/7, 1/7) / f_c.
    assert result["class_weights"] == pytest.approx([0.5, 1.0, 2.0])
    assert result["imbalance"] == pytest.approx(4.0)
    # Train images are 0 (4 pixels) and 10 (4 pixels) in every channel.
    assert result["mean"] == pytest.approx([5.0] * 3)
    assert result["std"] == pytest.approx([5.0] * 3)
    assert result["warnings"] == []


def test_every_bad_sample_is_reported_and_the_scan_goes_on():
    train = _Masks([_mask(0, 0, 0, 7), _mask(0, 1, 1, 1), _mask(0, 0, 0, 0)], broken=(2,))
    val = _Masks([_mask(0, 1, 9, 255)])
    result = scan(_InMemory(train, val))
    problems = result["problems"]
    assert len(problems) == 4, problems
    # No train pixel is 'car': the problem that would make training silently wrong first.
    assert "class 'car' (2) has no pixels" in problems[0]
    assert "train sample 0 has label values [7]" in problems[1]
    assert "cannot read image /data/2.png (train split)" in problems[2]
    assert "val sample 0 has label values [9]" in problems[3]
    assert result["splits"]["train"]["readable"] == 2
    assert result["warnings"] == []
    text = format_report(result)
    assert "4 problem(s):" in text and "/data/2.png" in text


def test_class_weights_leave_absent_classes_at_zero():
    assert class_weights(np.array([100, 0, 25, 50])) == pytest.approx([0.5, 0.0, 2.0, 1.0])
    assert class_weights(np.zeros(3)) == [0.0, 0.0, 0.0]


def test_limit_reads_only_the_first_samples():
    train = _Masks([_mask(0, 1, 2, 0), _mask(1, 1, 1, 1)], broken=(1,))
    result = scan(_InMemory(train, _Masks([_mask(0, 0, 0, 0)])), limit=1)
    assert result["problems"] == []
    assert result["splits"]["train"]["samples"] == 1


def test_cli_on_embedded_data_reports_counts_and_exits_zero(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.check_data",
            "data=shapes_cls",
            "data.num_train=30",
            "data.num_val=9",
            "data.num_test=12",
            "num_workers=0",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "no problems found" in run.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert {s: v["samples"] for s, v in report["splits"].items()} == {
        "train": 30,
        "val": 9,
        "test": 12,
    }
    assert sum(report["splits"]["test"]["images"].values()) == 12


def _png(path, array) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_cli_names_every_planted_problem_of_a_folder_dataset_and_exits_one(tmp_path):
    """Folder layout with train/ and val/ sub-folders and one of each problem the
    checker must find; the good pairs are still counted."""
    root = tmp_path / "data"
    image = np.full((8, 10, 3), 100)
    good = np.zeros((8, 10))
    good[:, 5:] = 1
    for split, stems in (("train", ["a", "b"]), ("val", ["v"])):
        for stem in stems:
            _png(root / "images" / split / f"{stem}.png", image)
            _png(root / "masks" / split / f"{stem}.png", good)
    _png(root / "images" / "train" / "lonely_image.png", image)  # no mask
    _png(root / "masks" / "train" / "lonely_mask.png", good)  # no image
    (root / "images" / "train" / "broken.png").write_bytes(b"\x89PNG not really")
    _png(root / "masks" / "train" / "broken.png", good)
    _png(root / "images" / "train" / "wide.png", np.full((8, 12, 3), 100))  # size mismatch
    _png(root / "masks" / "train" / "wide.png", good)
    _png(root / "images" / "val" / "seven.png", image)
    _png(root / "masks" / "val" / "seven.png", np.full((8, 10), 7))  # not a class

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.check_data",
            "data=folder",
            f"data.root={root}",
            "data.class_names=[bg,thing]",
            "data.num_classes=2",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    problems = "\n".join(report["problems"])
    assert len(report["problems"]) == 5, problems
    for planted in ("lonely_image.png", "lonely_mask.png", "broken.png", "wide.png"):
        assert planted in problems
    assert "seven.png" in problems and "value 7" in problems
    # a and b are read (40 pixels each: half bg, half thing); the bad ones are not counted.
    assert report["splits"]["train"]["pixels"] == {"bg": 80, "thing": 80}
    assert report["splits"]["train"]["readable"] == 2
    assert "5 problem(s):" in run.stdout


def test_image_folder_scan_counts_images_per_class_and_names_bad_files(tmp_path):
    from PIL import Image

    from seglab.data.image_folder import ImageFolderDataModule

    root = tmp_path / "photos"
    for split, counts in (("train", {"ant": 3, "bee": 1}), ("val", {"ant": 1, "bee": 1})):
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (12, 10), (200, 0, 0)).save(root / split / name / f"{i}.png")
    (root / "train" / "bee" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")

    result = scan(ImageFolderDataModule(root, image_size=8))
    assert result["splits"]["train"]["images"] == {"ant": 3, "bee": 1}
    assert result["splits"]["val"]["images"] == {"ant": 1, "bee": 1}
    assert result["imbalance"] == pytest.approx(3.0)
    assert result["mean"] == pytest.approx([200.0, 0.0, 0.0], abs=0.5)
    problems = "\n".join(result["problems"])
    assert len(result["problems"]) == 2, problems
    assert "notes.txt" in problems and "cut.jpg" in problems


def test_folder_scan_names_non_image_files_and_masks_that_are_not_png(tmp_path):
    """Files training passes over without a word: a note among the images, and a mask
    saved as JPEG (beside an image that therefore has no mask)."""
    from PIL import Image

    from seglab.data.folder import FolderDataModule

    root = tmp_path / "data"
    image, mask = np.full((8, 10, 3), 100), np.zeros((8, 10))
    mask[:, 5:] = 1  # both classes in the train split
    for split, stem in (("train", "train1"), ("train", "train2"), ("val", "val1")):
        _png(root / "images" / split / f"{stem}.png", image)
        _png(root / "masks" / split / f"{stem}.png", mask)
    _png(root / "images" / "train" / "train3.png", image)
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / "train" / "train3.jpg")
    (root / "images" / "train" / "notes.txt").write_text("taken on a sunny day")
    (root / "masks" / "val" / ".DS_Store").write_bytes(b"\0")  # hidden: not reported

    result = scan(FolderDataModule(root, class_names=["bg", "thing"], num_classes=2))
    problems = result["problems"]
    assert len(problems) == 2, problems
    notes, jpg = (next(p for p in problems if name in p) for name in ("notes.txt", "train3.jpg"))
    assert "is not an image file" in notes
    # The JPEG mask is named once, as a JPEG with the fix; its image is not "without mask".
    assert "is a JPEG file" in jpg and "data.mask_threshold=128" in jpg
    assert not any("has no mask" in p for p in problems)
    assert result["splits"]["train"]["readable"] == 2


def test_many_problems_print_one_line_per_kind_root_cause_first_and_all_to_a_file(tmp_path):
    """The layout people start from: 30 photos with JPEG masks, 5 without any mask, no
    pair at all. The report names the root cause first, each kind once with its count,
    examples and fix, and lists every file in problems.txt."""
    from PIL import Image

    root = tmp_path / "raw"
    for i in range(35):
        _png(root / "images" / f"horse{i:02d}.png", np.full((8, 10, 3), 100))
        if i < 30:
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "masks" / f"horse{i:02d}.jpg")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.check_data",
            "data=folder",
            f"data.root={root}",
            "data.class_names=[background,horse]",
            "data.num_classes=2",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "problem(s)" in line)
    assert lines[start] == "36 problem(s) of 3 kinds:"
    shown = [line for line in lines[start + 1 :] if line.startswith("  - ")]
    assert len(shown) == 3
    assert "found no image/mask pairs" in shown[0]  # the root cause first
    jpeg = next(line for line in shown if "JPEG" in line)
    assert jpeg.startswith("  - 30 x mask ") and "data.mask_threshold=128" in jpeg
    assert "also horse01.jpg, horse02.jpg, horse03.jpg, ..." in jpeg
    lonely = next(line for line in shown if "has no mask" in line)
    assert lonely.startswith("  - 5 x image ") and "horse3" in lonely
    listing = (tmp_path / "out" / "problems.txt").read_text().splitlines()
    assert len(listing) == 36
    assert sum(f"horse{i:02d}" in "\n".join(listing) for i in range(35)) == 35
    assert f"every problem, one per line: {tmp_path / 'out' / 'problems.txt'}" in run.stdout


def test_check_data_takes_an_experiment_and_checks_the_data_it_trains_on(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.check_data",
            "experiment=shapes_cnn",
            "data.num_train=12",
            "data.num_val=4",
            "data.num_test=4",
            "num_workers=0",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    # shapes_cnn trains the classifier on data=shapes_cls: images per class, not pixels.
    assert report["task"] == "classification"
    assert sum(report["splits"]["train"]["images"].values()) == 12
