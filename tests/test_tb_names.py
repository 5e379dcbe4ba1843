"""Class names are folder names in TensorBoard (one run per class): whatever a class is
called (`..`, `a/b`, `A/B`, empty), its curves get a folder of their own inside the log
dir. And the confusion matrix figure shows its whole title and whole-percent cells."""

from __future__ import annotations

import io
import re

import pytest
import torch
from matplotlib.text import Text
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seglab.plots import TITLE, confusion_figure
from seglab.tensorboard import TensorBoardLogger, read_class_runs

NAMES = ["..", "a/b", "a_b", "A/B", ".", ""]


def _points(folder, tag: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(e.step, round(e.value, 6)) for e in accumulator.Scalars(tag)]


def _log(logger: TensorBoardLogger, names: list[str], step: int) -> None:
    """Per-class values that tell the classes apart: class i has IoU i/10 + step/100."""
    logger.log_metrics(
        {"val/mIoU": 0.5, **{f"val/IoU/{n}": NAMES.index(n) / 10 + step / 100 for n in names}},
        step,
    )


def test_class_names_that_are_paths_get_one_distinct_folder_each_inside_the_log_dir(tmp_path):
    logger = TensorBoardLogger(tmp_path / "save")
    _log(logger, NAMES, step=1)
    logger.finalize("success")
    log_dir = tmp_path / "save" / "tensorboard"

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(log_dir in p.resolve().parents for p in written)  # nothing outside the log dir
    runs = {p.parent for p in written if p.name.startswith("events.out.tfevents.")}
    class_runs = runs - {log_dir}
    assert len(class_runs) == len(NAMES)  # one per class: none in the main run (`..`)
    assert all(run.parent == log_dir / "classes" for run in class_runs)
    assert len({run.name.casefold() for run in class_runs}) == len(NAMES)  # macOS, Windows
    assert _points(log_dir, "val/mIoU") == [(1, 0.5)]
    assert not [t for t in EventAccumulator(str(log_dir)).Reload().Tags()["scalars"] if "IoU/" in t]

    recorded = read_class_runs(log_dir)  # which class each folder holds
    assert sorted(recorded.values()) == sorted(NAMES)
    assert {log_dir / run for run in recorded} == class_runs
    for run, name in recorded.items():
        assert _points(log_dir / run, "val/IoU") == [(1, round(NAMES.index(name) / 10 + 0.01, 6))]
    assert {name: run for run, name in recorded.items()}["a/b"] == "classes/a_b"  # readable


def test_a_resumed_run_keeps_each_class_in_its_folder(tmp_path):
    first = TensorBoardLogger(tmp_path)
    _log(first, NAMES, step=1)
    first.finalize("success")
    folders = read_class_runs(tmp_path / "tensorboard")

    again = TensorBoardLogger(tmp_path)  # a new process: classes come in another order
    _log(again, NAMES[::-1], step=2)
    again.finalize("success")
    assert read_class_runs(tmp_path / "tensorboard") == folders
    for run, name in folders.items():
        value = NAMES.index(name) / 10
        assert sorted(_points(tmp_path / "tensorboard" / run, "val/IoU")) == [
            (1, round(value + 0.01, 6)),
            (2, round(value + 0.02, 6)),
        ]


def _inside(text: Text, fig) -> bool:
    box, frame = text.get_window_extent(), fig.bbox
    return (
        box.x0 >= frame.x0 - 1
        and box.y0 >= frame.y0 - 1
        and box.x1 <= frame.x1 + 1
        and box.y1 <= frame.y1 + 1
    )


@pytest.mark.parametrize("classes", [2, 10, 30])
def test_confusion_figure_shows_its_whole_title_and_labels(classes):
    names = [f"a rather long class name, number {i} of the dataset" for i in range(classes)]
    confmat = torch.randint(0, 1000, (classes, classes))
    fig = confusion_figure(confmat, names)
    fig.savefig(io.BytesIO(), format="png")
    fig.canvas.draw()
    (title,) = [t for t in fig.findobj(Text) if t.get_text().replace("\n", " ") == TITLE]
    assert _inside(title, fig)
    (ax,) = fig.axes
    labels = [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    assert len(labels) == 2 * classes and all(_inside(t, fig) for t in labels)
    assert len({t.get_text() for t in ax.get_xticklabels()}) == classes  # shortened apart
    assert all(re.fullmatch(r"\d{1,3}%|<1%", t.get_text()) for t in ax.texts)
    assert len(ax.texts) == classes * classes


def test_confusion_cells_are_whole_percent_of_their_row_and_rows_show_their_count():
    confmat = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 0, 1999]])
    fig = confusion_figure(confmat, ["car", "bus", "road"])
    (ax,) = fig.axes
    cells = [t.get_text() for t in ax.texts]  # row by row
    assert cells == ["75%", "25%", "0%", "–", "–", "–", "<1%", "0%", "100%"]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["car (n=4)", "bus (n=0)", "road (n=2.0k)"]
