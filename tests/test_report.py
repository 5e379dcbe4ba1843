"""The HTML reports of runs and sweeps (seglab.report), looked at the way a person does:
rendered by headless Chromium (tests/browser.py), numbers read back from the page's DOM
and compared with metrics.json, inline images decoded and checked for content."""

from __future__ import annotations

import base64
import io
import json
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
import yaml
from browser import non_blank, render, require_chromium
from PIL import Image

from seglab.errors import SeglabError
from seglab.report import REPORT_NAME, main, write_report
from seglab.report.curves import read_curves
from seglab.report.run import run_page

# Three seeds of a tiny UNet on the embedded shapes, 2 epochs, TensorBoard logs.
TINY_SEGMENTATION = [
    "data.num_train=8",
    "data.num_val=4",
    "data.num_test=4",
    "data.batch_size=4",
    "data.image_size=64",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_model_summary=false",
]


class _Page(HTMLParser):
    """What the tests read from a rendered page: the text of every cell with a
    `data-metric` (per table id, or per run in the runs table), every <img> source, the
    runs table's rows with their classes, every link, and the whole text."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.cells: dict[str, dict[str, str]] = {}
        self.images: list[str] = []
        self.rows: list[dict] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self._table = ""
        self._row: str | None = None
        self._cell: tuple[str, list[str]] | None = None
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = attr.get("id", "")
        elif tag == "td" and "data-metric" in attr:
            self._cell = (attr["data-metric"], [])
        elif tag == "img":
            self.images.append(attr["src"])
        elif tag == "tr":
            self._row = attr.get("data-run")
            if self._row is not None:
                self.rows.append({"run": self._row, "class": attr.get("class", ""), "cells": {}})
        elif tag == "a":
            self.links.append(attr.get("href", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            name, parts = self._cell
            text = " ".join("".join(parts).split())
            if self._row is not None:
                self.rows[-1]["cells"][name] = text
            else:
                self.cells.setdefault(self._table, {})[name] = text
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell[1].append(data)


def _decoded_images(page: _Page) -> list[Image.Image]:
    images = []
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), f"not an inline PNG: {src[:60]}"
        images.append(Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :]))).convert("RGB"))
    return images


def _varied(image: Image.Image) -> bool:
    """More than a handful of colours, with some pixels far from the background."""
    colours = image.getcolors(maxcolors=1 << 20)
    return colours is None or len(colours) >= 8


def _browse(html: Path, screenshot: Path) -> tuple[_Page, object]:
    require_chromium()
    page = render(html.resolve().as_uri(), screenshot=screenshot, height=1600)
    assert page.console == [], page.console
    assert non_blank(page.screenshot)
    return _Page(page.dom), page


def make_run(
    root: Path, name: str, overrides: list[str], metrics: dict | None, **info: object
) -> Path:
    """A run directory as seglab.train leaves it, without checkpoint and logs."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"data": {"class_names": ["background", "road", "car"]}, "seed": 7}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    record = {"seed": 7, "command": ["train.py", *overrides], "status": "finished", **info}
    (run / "run_info.json").write_text(json.dumps(record))
    if metrics is not None:
        summary = {"optimized_metric": "val/mIoU", "best_model_path": "", "metrics": metrics}
        (run / "metrics.json").write_text(json.dumps(summary))
    return run


def _metrics(i: int) -> dict[str, float]:
    return {
        "best/val/mIoU": 0.5 + 0.01 * i * i,
        "test/mIoU": 0.45 + 0.02 * i,
        "test/acc": 0.8 + 0.01 * i,
        "test/loss": 0.3 - 0.01 * i,
        "test/IoU/road": 0.6,
    }


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "file", "neither"])
def test_bad_path_is_one_line_naming_it(tmp_path, kind):
    path = tmp_path / "somewhere"
    if kind == "file":
        path.write_text("")
    elif kind == "neither":
        (path / "images").mkdir(parents=True)
    with pytest.raises(SeglabError, match=str(path)):
        write_report(path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    message = str(exit_info.value.code)
    assert message.startswith("seglab: error: ") and str(path) in message
    assert "\n" not in message
    assert not (path / REPORT_NAME).exists()


def test_command_line_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "seglab.report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"seglab: error: {tmp_path} is neither a run directory")


def test_crashed_run_says_what_is_missing(tmp_path):
    """A run that failed before writing metrics.json: what exists is reported, and the
    page says what is missing and why."""
    run = make_run(
        tmp_path, "run", ["model=fcn"], None, status="failed", error="SeglabError: mask 42"
    )
    text = write_report(run).read_text()
    assert "metrics.json is missing" in text and "status failed" in text
    assert "SeglabError: mask 42" in text
    assert "No training curves" in text
    assert "No checkpoint in checkpoints/" in text
    assert "model=fcn" in text
    assert 'id="metric-table"' not in text


# --- curves --------------------------------------------------------------------------


def test_curves_come_from_the_csv_log(tmp_path):
    run = make_run(tmp_path, "run", [], _metrics(0))
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss_step,val/loss,val/mIoU\n"
        "0,9,1.5,,\n"
        "0,19,1.25,,\n"
        "0,19,,1.125,0.25\n"
        "1,29,0.75,,\n"
        "1,39,,0.875,0.5\n"
    )
    curves, source = read_curves(run)
    assert source == "CSV log (csv/metrics.csv)"
    assert curves == {
        "train/loss_step": [(9, 1.5), (19, 1.25), (29, 0.75)],
        "val/loss": [(19, 1.125), (39, 0.875)],
        "val/mIoU": [(19, 0.25), (39, 0.5)],
    }
    page = _Page(write_report(run).read_text())
    (chart,) = [i for i in _decoded_images(page) if i.width > 700]  # curves: loss, val
    assert _varied(chart)


def test_curves_come_from_tensorboard_event_files(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = make_run(tmp_path, "run", [], _metrics(0))
    writer = SummaryWriter(str(run / "tensorboard"))
    for step, value in ((4, 0.5), (9, 0.25)):
        writer.add_scalar("val/mIoU", value, step)
    # tags as the logger shows them (`seglab.tensorboard.shown_tag`), read back as logged
    writer.add_scalar("train/lr-AdamW", 0.001, 4)
    writer.add_scalar("val/mIoU_best", 0.5, 9)
    writer.add_scalar("~test/mIoU", 0.4, 10)
    writer.close()
    # per-class curves as runs of their own below the log dir, one per class; the
    # folder is the class name made safe, the real name recorded in class_runs.json
    for folder in ("car", "a_b"):
        writer = SummaryWriter(str(run / "tensorboard" / "classes" / folder))
        writer.add_scalar("val/IoU", 0.75, 9)
        writer.close()
    index = {"classes/car": "car", "classes/a_b": "a/b"}
    (run / "tensorboard" / "class_runs.json").write_text(json.dumps(index))
    curves, source = read_curves(run)
    assert source == "TensorBoard event files (tensorboard/)"
    assert curves == {
        "val/mIoU": [(4, 0.5), (9, 0.25)],
        "lr-AdamW": [(4, pytest.approx(0.001))],
        "best/val/mIoU": [(9, 0.5)],
        "test/mIoU": [(10, pytest.approx(0.4))],
        "val/IoU/car": [(9, 0.75)],
        "val/IoU/a/b": [(9, 0.75)],
    }


def test_run_without_logs_has_no_curves(tmp_path):
    run = make_run(tmp_path, "run", [], _metrics(0))
    assert read_curves(run) == ({}, None)
    assert run_page(run)["curves"] is None


# --- a sweep (hand-made run directories) --------------------------------------------


def test_sweep_page_in_the_browser(tmp_path):
    """Runs table, best run, aggregates over seeds, a failed run, the optuna history."""
    sweep = tmp_path / "sweep"
    for i in range(4):
        make_run(sweep, str(i), ["optimizer.lr=0.01", f"seed={i}"], _metrics(i))
    make_run(sweep, "4", ["optimizer.lr=0.01", "seed=4"], None, status="failed", error="boom")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "2" / REPORT_NAME).write_text("<html></html>")  # a run with its own page
    study = optuna.create_study(
        storage=f"sqlite:///{sweep / 'optuna.db'}", study_name="seglab", direction="maximize"
    )
    for value in (0.3, 0.5, 0.4):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))

    page, shown = _browse(write_report(sweep), tmp_path / "sweep.png")
    assert [r["run"] for r in page.rows] == ["0", "1", "2", "3", "4"]
    assert [r["run"] for r in page.rows if "best" in r["class"]] == ["3"]  # 0.59
    assert "failed" in page.rows[4]["class"]
    assert "2/report.html" in page.links and "0/report.html" not in page.links
    for row in page.rows[:4]:
        expected = _metrics(int(row["run"]))
        assert row["cells"] == {
            name: f"{expected[name]:.4f}"
            for name in ("best/val/mIoU", "test/mIoU", "test/acc", "test/loss")
        }
    assert set(page.rows[4]["cells"].values()) == {"–"}
    best = [_metrics(i)["best/val/mIoU"] for i in range(4)]
    assert page.cells["aggregate-table"]["best/val/mIoU"] == (
        f"{statistics.fmean(best):.4f} ± {statistics.stdev(best):.4f}"
    )
    text = " ".join(page.text)
    assert "boom" in text
    assert "3 trials: 3 complete" in text
    (history,) = _decoded_images(page)
    assert _varied(history)


# --- a real run and sweep ------------------------------------------------------------


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    """Three seeds of a tiny UNet, then `python -m seglab.report <sweep dir>`."""
    root = tmp_path_factory.mktemp("multirun")
    sweep = root / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.train",
            "-m",
            "seed=1,2,3",
            *TINY_SEGMENTATION,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # the Hydra callbacks wrote the sweep's page and summary at the end of the multirun
    assert (sweep / REPORT_NAME).is_file() and (sweep / "summary.json").is_file()
    result = subprocess.run(
        [sys.executable, "-m", "seglab.report", str(sweep)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return sweep


@pytest.mark.slow
def test_run_page_in_the_browser(multirun, tmp_path):
    run = multirun / "0"
    summary = json.loads((run / "metrics.json").read_text())
    metrics = summary["metrics"]
    page, shown = _browse(run / REPORT_NAME, tmp_path / "run.png")

    table = page.cells["metric-table"]
    for split in ("val", "test"):
        for name in ("mIoU", "acc", "mAcc", "mDice", "loss"):
            assert table[f"{split}/{name}"] == f"{metrics[f'{split}/{name}']:.4f}"
    classes = page.cells["class-table"]
    names = ["background", "ellipse", "rectangle", "triangle"]
    for name in names:
        assert classes[f"test/IoU/{name}"] == f"{metrics[f'test/IoU/{name}']:.4f}"
    text = " ".join(page.text)
    assert all(name in text for name in names)
    assert "seed=1" in text
    # per-class chart, curves, confusion matrix, samples, worst images: all drawn, none blank
    images = _decoded_images(page)
    assert len(images) == 5
    assert all(_varied(image) for image in images)
    assert "../report.html" in page.links


@pytest.mark.slow
def test_confusion_matrix_is_the_best_checkpoints_on_validation(multirun):
    """Recomputed from the best checkpoint, the validation mIoU equals the best score the
    run logged: the matrix is that checkpoint's, on that split."""
    run = multirun / "1"
    logged = json.loads((run / "metrics.json").read_text())["metrics"]["best/val/mIoU"]
    evaluation = run_page(run)["evaluation"]
    assert evaluation["checkpoint"].startswith("checkpoints/best-")
    assert evaluation["recomputed"]["mIoU"] == pytest.approx(logged, abs=1e-6)
    assert evaluation["confusion"].startswith("data:image/png;base64,")
    assert evaluation["worst"].startswith("data:image/png;base64,")


@pytest.mark.slow
def test_sweep_page_of_a_real_multirun(multirun, tmp_path):
    page, shown = _browse(multirun / REPORT_NAME, tmp_path / "sweep.png")
    members = {r: json.loads((multirun / r / "metrics.json").read_text())["metrics"] for r in "012"}
    assert [r["run"] for r in page.rows] == ["0", "1", "2"]
    for row in page.rows:
        for name in ("best/val/mIoU", "test/mIoU", "test/acc"):
            assert row["cells"][name] == f"{members[row['run']][name]:.4f}"
    best = max(members, key=lambda r: members[r]["best/val/mIoU"])
    assert [r["run"] for r in page.rows if "best" in r["class"]] == [best]
    assert {f"{r}/report.html" for r in "012"} <= set(page.links)
    values = [m["test/mIoU"] for m in members.values()]
    assert page.cells["aggregate-table"]["test/mIoU"] == (
        f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
    )


def test_sample_grid_takes_images_of_different_sizes():
    """Validation images at full resolution differ in size (folder data): each is shown
    scaled into a square of its own, beside its masks."""
    import torch

    from seglab.data.base import to_input
    from seglab.report.html import data_uri
    from seglab.report.validation import TILE_SIZE, samples

    class Data:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        palette = [(0, 0, 0), (255, 0, 0)]

    picked = []
    for height, width in ((48, 64), (80, 40)):
        image = to_input(
            torch.randint(0, 256, (height, width, 3), dtype=torch.uint8).numpy(),
            Data.mean,
            Data.std,
        )
        mask = torch.zeros(height, width, dtype=torch.long)
        mask[: height // 2] = 1
        picked.append((image, mask, 1 - mask))
    uri = samples(picked, ["background", "thing"], Data(), segmentation=True)
    png = base64.b64decode(uri.split(",", 1)[1])
    assert uri == data_uri(png)
    grid = Image.open(io.BytesIO(png))
    padding = 4
    assert grid.size == (3 * TILE_SIZE + 4 * padding, 2 * TILE_SIZE + 3 * padding)
    assert _varied(grid.convert("RGB"))


def test_train_writes_the_runs_report_by_default(make_cfg, tmp_path):
    from seglab.train import train

    metrics = train(make_cfg("report=true", "trainer.max_epochs=1", output_dir=tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert "finished" in page and f"{metrics['test/mIoU']:.4f}" in page


def test_the_stop_reason_is_shown_beside_the_status(tmp_path):
    reason = "early stopping: val/mIoU did not improve for 3 epochs at epoch 3, batch 12/40"
    run = make_run(tmp_path, "r", [], _metrics(0), stop_reason=reason)
    html = write_report(run).read_text()
    heading = html[html.index("<h1>") : html.index("</h1>")]
    assert "finished" in heading and reason in heading
