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
        super().__init__(["bg", "road", "car"], 3, 255, 4)
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
    assert len(problems) == 3, problems
    assert "train sample 0 has label values [7]" in problems[0]
    assert "cannot read image /data/2.png (train split)" in problems[1]
    assert "val sample 0 has label values [9]" in problems[2]
    assert result["splits"]["train"]["readable"] == 2
    assert result["warnings"] == ["classes with no pixels in the train split: ['car']"]
    text = format_report(result)
    assert "3 problem(s):" in text and "/data/2.png" in text


def test_class_weights_leave_absent_classes_at_zero():
    assert class_weights(np.array([100, 0, 25, 50])) == pytest.approx([0.5, 0.0, 2.0, 1.0])
    assert class_weights(np.zeros(3)) == [0.0, 0.0, 0.0]


def test_limit_reads_only_the_first_samples():
    train = _Masks([_mask(0, 0, 0, 0), _mask(1, 1, 1, 1)], broken=(1,))
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
