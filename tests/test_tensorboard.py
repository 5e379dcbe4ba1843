"""What TensorBoard shows of a run: per-class curves as runs of their own (one colour per
class, named), an `epoch` curve that never jumps back, the HParams table with the choices
runs are compared by and their final metrics, and nothing logged twice."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import non_blank, render, require_chromium
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from seglab.config import compose
from seglab.tensorboard import (
    TensorBoardLogger,
    final_metrics,
    launch,
    logged_name,
    run_hparams,
    shown_tag,
)
from seglab.train import train


def _events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _points(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, round(e.value, 6)) for e in accumulator.Scalars(tag)]


def test_per_class_metrics_are_one_run_per_class_under_the_metric_tag(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    for step, car in ((1, 0.25), (3, 0.5)):
        logger.log_metrics({"val/mIoU": 0.5, "val/IoU/car": car, "val/IoU/road sign": 0.75}, step)
    logger.finalize("success")
    main = _events(tmp_path / "tensorboard")
    assert main.Tags()["scalars"] == ["val/mIoU"]  # no per-class tags in the run itself
    assert _points(_events(tmp_path / "tensorboard/classes/car"), "val/IoU") == [
        (1, 0.25),
        (3, 0.5),
    ]
    assert _points(_events(tmp_path / "tensorboard/classes/road_sign"), "val/IoU") == [
        (1, 0.75),
        (3, 0.75),
    ]
    # The Custom Scalars chart draws the tag of every class run.
    assert "custom_scalars__config__" in main.Tags()["tensors"]


def test_epoch_is_left_out_of_test_metrics(tmp_path):
    """Testing restores the best checkpoint: its epoch would jump back at the end."""
    logger = TensorBoardLogger(tmp_path)
    for epoch in range(3):
        logger.log_metrics({"val/mIoU": 0.5, "epoch": epoch}, step=2 * epoch + 1)
    logger.log_metrics({"test/mIoU": 0.4, "epoch": 1}, step=6)
    logger.finalize("success")
    events = _events(tmp_path / "tensorboard")
    assert _points(events, "train/epoch") == [(1, 0), (3, 1), (5, 2)]
    assert _points(events, "~test/mIoU") == [(6, 0.4)]


def test_every_tag_is_in_a_group_the_scalars_tab_opens(tmp_path):
    """TensorBoard sorts tag groups by name and opens the first: `best/`, `epoch` and
    `lr-AdamW` at the top level would open before train/val. Each is shown inside a
    group, and `logged_name` reads it back as the name it was logged under."""
    logger = TensorBoardLogger(tmp_path)
    logged = {"val/mIoU": 0.5, "best/val/mIoU": 0.5, "epoch": 0, "lr-AdamW": 1e-3}
    tested = {"test/mIoU": 0.4, "test/loss": 0.7}
    logger.log_metrics(logged, step=1)
    logger.log_metrics(tested, step=2)
    logged |= tested
    logger.finalize("success")
    tags = set(_events(tmp_path / "tensorboard").Tags()["scalars"])
    assert tags == {
        "val/mIoU",
        "val/mIoU_best",
        "train/epoch",
        "train/lr-AdamW",
        "~test/mIoU",
        "~test/loss",
    }
    groups = list(dict.fromkeys(tag.split("/")[0] for tag in sorted(tags)))
    assert groups == ["train", "val", "~test"]  # the Scalars tab opens the first two
    assert {logged_name(tag) for tag in tags} == set(logged)
    assert all(logged_name(shown_tag(name)) == name for name in [*logged, "train/loss"])


def test_hparams_row_holds_the_choices_and_the_overrides_and_no_internals(tmp_path):
    cfg = compose(
        [
            "model=smp",
            "model.arch=DeepLabV3Plus",
            "optimizer=sgd",
            "optimizer.lr=0.05",
            "optimizer.momentum=0.8",
            "scheduler=none",
            "paths.output_dir=/elsewhere",
            "ckpt_path=null",
        ],
        output_dir=tmp_path,
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    row = {column.title: column.value for column in run_hparams(config, launch())}
    assert row == {
        "data": "shapes",
        "model": "DeepLabV3Plus",
        "encoder": "resnet18",
        "loss": "ce",
        "optimizer": "sgd",
        "lr": 0.05,
        "weight decay": cfg.optimizer.weight_decay,
        "scheduler": None,  # scheduler=none: no scheduler
        "batch size": cfg.data.batch_size,
        "precision": cfg.trainer.precision,
        "seed": 42,
        "model.arch": "DeepLabV3Plus",
        "optimizer.momentum": 0.8,
    }
    varied = {column.title for column in run_hparams(config, launch()) if column.varied}
    assert varied == {"model", "optimizer", "lr", "scheduler", "model.arch", "optimizer.momentum"}


def test_final_metrics_are_best_validation_then_test_scores_without_per_class_ones():
    metrics = {
        "val/mIoU": 0.5,
        "test/loss": 0.9,
        "test/mIoU": 0.4,
        "test/IoU/car": 0.3,
        "test/acc": 0.8,
        "best/val/mIoU": 0.6,
        "test/mDice": None,
    }
    assert final_metrics(metrics) == ["best/val/mIoU", "test/mIoU", "test/acc", "test/loss"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny) -> Path:
    """A tiny FCN run of 3 epochs, logged to TensorBoard."""
    output_dir = tmp_path_factory.mktemp("run")
    cfg = compose(
        [*tiny, "model=fcn", "trainer.max_epochs=3", "optimizer.lr=0.01"],
        output_dir=output_dir,
    )
    metrics = train(cfg)
    (output_dir / "returned.json").write_text(json.dumps(metrics))
    return output_dir


@pytest.mark.slow
def test_a_run_logs_hparams_without_duplicates_and_a_best_score_curve(run_dir):
    metrics = json.loads((run_dir / "returned.json").read_text())
    events = _events(run_dir / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    assert not [tag for tag in scalars if tag.startswith("final/")]
    assert not [tag for tag in scalars if tag.count("/") > 1]
    # the groups in TensorBoard's order (its tags' sort order, which Python's sort of
    # these names follows): train and val first, the two the Scalars tab opens
    groups = list(dict.fromkeys(tag.split("/")[0] for tag in sorted(scalars)))
    assert groups == ["train", "val", "~test"], scalars
    epochs = [value for _, value in _points(events, "train/epoch")]
    assert epochs == sorted(epochs)
    best = [value for _, value in _points(events, "val/mIoU_best")]
    assert len(best) == 3 and best == sorted(best)
    assert best[-1] == pytest.approx(metrics["best/val/mIoU"], abs=1e-6)
    assert best[-1] == pytest.approx(max(v for _, v in _points(events, "val/mIoU")), abs=1e-6)

    experiment = metadata.parse_experiment_plugin_data(
        events.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    )
    titles = {info.display_name for info in experiment.hparam_infos}
    assert {"data", "model", "encoder", "loss", "optimizer", "lr", "scheduler", "seed"} <= titles
    assert "trainer.max_epochs" in titles  # an override
    assert not [t for t in titles if t.startswith(("callbacks", "hydra", "paths", "logger"))]
    assert [info.name.tag for info in experiment.metric_infos][:2] == [
        "val/mIoU_best",
        "~test/mIoU",
    ]
    # the table's columns are headed by the names metrics.json holds
    shown = [info.display_name for info in experiment.metric_infos][:2]
    assert shown == ["best/val/mIoU", "test/mIoU"]
    classes = sorted(p.name for p in (run_dir / "tensorboard/classes").iterdir())
    assert classes == sorted(compose([]).data.class_names)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _get(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_serves_the_table_the_class_charts_and_the_curves(run_dir, tmp_path):
    require_chromium()
    port = _free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [str(tensorboard), "--logdir", str(run_dir), "--port", str(port), "--bind_all"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://localhost:{port}"
    try:
        for _ in range(120):
            try:
                if _get(f"{base}/data/plugin/scalars/tags").get("tensorboard"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        tags = _get(f"{base}/data/plugin/scalars/tags")
        shown = set(tags["tensorboard"])
        assert {"val/mIoU", "val/mIoU_best", "~test/mIoU", "train/epoch"} <= shown
        groups = list(dict.fromkeys(tag.split("/")[0] for tag in sorted(shown)))
        assert groups == ["train", "val", "~test"], shown
        assert not [t for t in tags["tensorboard"] if t.startswith("final/")]
        class_runs = sorted(run for run in tags if run.startswith("tensorboard/classes/"))
        assert len(class_runs) >= 2 and all("val/IoU" in tags[run] for run in class_runs)

        layout = _get(f"{base}/data/plugin/custom_scalars/layout")
        charts = {c["title"]: c for category in layout["category"] for c in category["chart"]}
        assert charts["val"]["multiline"]["tag"] in (["^val/IoU$"], ["^val/Acc$"])

        experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        titles = {info["displayName"] for info in experiment["hparamInfos"]}
        assert {"data", "model", "encoder", "loss", "optimizer", "lr", "seed"} <= titles
        groups = _get(
            f"{base}/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": ["STATUS_SUCCESS"],
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 10,
            },
        )["sessionGroups"]
        assert [group["name"] for group in groups] == ["tensorboard"]  # class runs are no rows
        values = {m["name"]["tag"]: m["value"] for m in groups[0]["metricValues"]}
        assert {"val/mIoU_best", "~test/mIoU"} <= set(values)

        for page in ("hparams", "custom_scalars", "timeseries", "scalars"):
            shown = render(f"{base}/#{page}", tmp_path / f"{page}.png", wait_ms=8000)
            assert non_blank(shown.screenshot), page
            assert not [m for m in shown.console if "Uncaught" in m], shown.console
    finally:
        server.terminate()
        server.wait(timeout=30)
