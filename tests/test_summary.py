"""The fold/seed aggregates of a multirun (seglab.summary): groups, statistics computed by
hand from the members' metrics.json, failed members listed and left out, the command
line, and the Hydra callback at the end of a real multirun."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from seglab.errors import SeglabError
from seglab.summary import SUMMARY_CSV, SUMMARY_JSON, main, write_summary

TESTS = Path(__file__).parent
REPO = TESTS.parent


def make_run(
    sweep_dir: Path,
    name: str,
    overrides: list[str],
    metrics: dict[str, float | None] | None,
    status: str = "finished",
    error: str | None = None,
) -> Path:
    """A run directory as seglab.train leaves it: .hydra/overrides.yaml, run_info.json
    and (unless `metrics` is None) metrics.json."""
    run = sweep_dir / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    info = {"seed": 0, "status": status, **({"error": error} if error else {})}
    (run / "run_info.json").write_text(json.dumps(info))
    if metrics is not None:
        summary = {"optimized_metric": "val/mIoU", "best_model_path": "", "metrics": metrics}
        (run / "metrics.json").write_text(json.dumps(summary))
    return run


def _metrics(i: int) -> dict[str, float | None]:
    return {
        "best/val/mIoU": 0.5 + 0.07 * i,
        "test/mIoU": 0.4 + 0.11 * i * i,
        "test/IoU/cat": 0.3 + 0.05 * i,
        "test/IoU/dog": None if i == 0 else 0.2 * i,  # NaN in one run
        "val/mIoU": 0.9,  # the last epoch's, not a final metric
        "train/loss": 0.1,
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two experiments (lr) x three folds, one fold of the second failed, one run of a
    third experiment that never wrote metrics.json."""
    common = ["data=folder", "data.folds=3"]
    job = 0
    for lr in ("0.1", "0.01"):
        for fold in range(3):
            overrides = [*common, f"optimizer.lr={lr}", f"data.fold={fold}", f"seed={fold + 1}"]
            if lr == "0.01" and fold == 1:
                make_run(tmp_path, str(job), overrides, None, "failed", "SeglabError: loss is nan")
            else:
                make_run(tmp_path, str(job), overrides, _metrics(job))
            job += 1
    make_run(tmp_path, str(job), [*common, "optimizer.lr=1.0", "data.fold=0"], None, "finished")
    return tmp_path


def test_groups_hold_runs_differing_only_in_fold_and_seed(sweep):
    summary = json.loads(write_summary(sweep).read_text())
    groups = summary["groups"]
    assert [g["overrides"] for g in groups] == [
        ["data=folder", "data.folds=3", "optimizer.lr=0.1"],
        ["data=folder", "data.folds=3", "optimizer.lr=0.01"],
        ["data=folder", "data.folds=3", "optimizer.lr=1.0"],
    ]
    assert [g["runs"] for g in groups] == [["0", "1", "2"], ["3", "5"], []]
    assert [g["n"] for g in groups] == [3, 2, 0]


def test_statistics_equal_hand_computed_ones(sweep):
    groups = json.loads(write_summary(sweep).read_text())["groups"]
    for group, jobs in zip(groups[:2], ([0, 1, 2], [3, 5]), strict=True):
        # only final metrics: test/... and best/...
        assert set(group["metrics"]) == {
            "best/val/mIoU",
            "test/mIoU",
            "test/IoU/cat",
            "test/IoU/dog",
        }
        for name, stats in group["metrics"].items():
            values = [_metrics(j)[name] for j in jobs if _metrics(j)[name] is not None]
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            assert stats["n"] == len(values)
            assert stats["mean"] == pytest.approx(mean, rel=1e-12)
            assert stats["std"] == pytest.approx(std, rel=1e-12)  # sample std, ddof=1
            assert (stats["min"], stats["max"]) == (min(values), max(values))
    # test/IoU/dog is null (NaN) in run 0: averaged over runs 1 and 2
    assert groups[0]["metrics"]["test/IoU/dog"]["n"] == 2


def test_failed_members_are_listed_and_left_out(sweep):
    summary = json.loads(write_summary(sweep).read_text())
    failed = {f["run"]: f for f in summary["failed"]}
    assert set(failed) == {"4", "6"}
    assert failed["4"]["status"] == "failed"
    assert failed["4"]["error"] == "SeglabError: loss is nan"
    assert "no metrics.json" in failed["6"]["error"]
    assert [f["run"] for f in summary["groups"][1]["failed"]] == ["4"]
    assert summary["groups"][2]["metrics"] == {}


def test_csv_has_one_row_per_group_with_mean_std_min_max(sweep):
    write_summary(sweep)
    groups = json.loads((sweep / SUMMARY_JSON).read_text())["groups"]
    with (sweep / SUMMARY_CSV).open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["overrides"] for row in rows] == [" ".join(g["overrides"]) for g in groups]
    assert rows[1]["failed"] == "4: SeglabError: loss is nan"
    assert rows[1]["n"] == "2"
    for row, group in zip(rows, groups, strict=True):
        for name, stats in group["metrics"].items():
            for stat in ("mean", "std", "min", "max"):
                assert float(row[f"{name} {stat}"]) == stats[stat]
    assert rows[2]["test/mIoU mean"] == ""  # nothing to average


def test_a_group_of_one_run_has_no_std(tmp_path):
    make_run(tmp_path, "0", ["optimizer.lr=0.1"], _metrics(1))
    make_run(tmp_path, "1", ["optimizer.lr=0.2"], _metrics(2))
    groups = json.loads(write_summary(tmp_path).read_text())["groups"]
    assert [g["n"] for g in groups] == [1, 1]
    assert groups[0]["metrics"]["test/mIoU"]["std"] is None
    assert groups[0]["metrics"]["test/mIoU"]["mean"] == _metrics(1)["test/mIoU"]


def test_pruned_and_running_members_are_left_out(tmp_path):
    make_run(tmp_path, "0", ["seed=1"], _metrics(0))
    make_run(tmp_path, "1", ["seed=2"], _metrics(1), "pruned", "Pruned: trial 1 at epoch 2")
    make_run(tmp_path, "2", ["seed=3"], _metrics(2), "running")
    summary = json.loads(write_summary(tmp_path).read_text())
    assert summary["groups"][0]["runs"] == ["0"]
    assert {f["run"]: f["status"] for f in summary["failed"]} == {"1": "pruned", "2": "running"}


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_bad_sweep_dir_is_one_line_naming_it(tmp_path, kind):
    path = tmp_path / "sweep"
    if kind == "file":
        path.write_text("")
    elif kind == "empty":
        path.mkdir()
    with pytest.raises(SeglabError, match=str(path)):
        write_summary(path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    message = str(exit_info.value.code)
    assert message.startswith("seglab: error: ") and str(path) in message
    assert "\n" not in message


def test_command_line_writes_the_summary(sweep):
    result = subprocess.run(
        [sys.executable, "-m", "seglab.summary", str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (sweep / SUMMARY_JSON).is_file() and (sweep / SUMMARY_CSV).is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "seglab.summary", str(sweep / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"seglab: error: {sweep / 'nope'} is not a directory; give a multirun's sweep directory"
    ]


# --- a real multirun -----------------------------------------------------------------


class FailOnSeed(L.Callback):
    """Fails the run whose seed is `fail_seed` at the start of training."""

    def __init__(self, seed: int, fail_seed: int) -> None:
        self.fail = seed == fail_seed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fail:
            raise RuntimeError("planted failure")


@pytest.mark.slow
def test_multirun_over_seeds_writes_the_summary(tmp_path):
    """Three seeds and a fourth that fails: Hydra's basic sweeper raises after the jobs,
    before `on_multirun_end`, and the summary written after each job lists the failure."""
    sweep = tmp_path / "sweep"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.train",
            "-m",
            "experiment=shapes_cnn",
            "seed=1,2,3,4",
            "data.num_train=16",
            "data.num_val=8",
            "data.num_test=8",
            "data.image_size=32",
            "data.batch_size=8",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.enable_model_summary=false",
            "logger=none",
            f"+callbacks.fail._target_={__name__}.FailOnSeed",
            "+callbacks.fail.seed=${seed}",
            "+callbacks.fail.fail_seed=4",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0  # the basic sweeper re-raises the failed job's error
    summary = json.loads((sweep / SUMMARY_JSON).read_text())
    assert [f["run"] for f in summary["failed"]] == ["3"]
    assert "planted failure" in summary["failed"][0]["error"]
    (group,) = summary["groups"]
    assert group["runs"] == ["0", "1", "2"]
    members = [json.loads((sweep / r / "metrics.json").read_text())["metrics"] for r in "012"]
    for name in ("best/val/acc", "test/acc", "test/loss", "test/Acc/ellipse"):
        values = [m[name] for m in members]
        assert group["metrics"][name]["mean"] == pytest.approx(statistics.fmean(values))
        assert group["metrics"][name]["std"] == pytest.approx(statistics.stdev(values))

    # A member found broken afterwards: rewritten by hand, it is left out.
    info = json.loads((sweep / "1" / "run_info.json").read_text())
    (sweep / "1" / "run_info.json").write_text(json.dumps({**info, "status": "failed"}))
    main([str(sweep)])
    summary = json.loads((sweep / SUMMARY_JSON).read_text())
    assert [f["run"] for f in summary["failed"]] == ["1", "3"]
    values = [members[0]["test/acc"], members[2]["test/acc"]]
    assert summary["groups"][0]["metrics"]["test/acc"]["mean"] == pytest.approx(
        statistics.fmean(values)
    )
