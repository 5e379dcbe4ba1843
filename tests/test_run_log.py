"""A run's record speaks to a person: one train.log line per epoch, why and where the run
stopped (train.log, run_info.json's `stop_reason`, the console), the split lists, errors
as the console's one line, and no password in any record."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch

from seglab.data.shapes import ShapesDataModule
from seglab.errors import SeglabError
from seglab.train import train


@pytest.fixture
def train_log(tmp_path):
    """A file handler on the root logger, as Hydra installs for `<run dir>/train.log`."""
    path = tmp_path / "train.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield path
    root.removeHandler(handler)
    root.setLevel(level)
    handler.close()


def _info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_info.json").read_text())


QUIET = ["logger=none", "callbacks.images=null", "test=false"]


def test_every_epoch_is_one_line_and_the_end_says_why(make_cfg, tmp_path, train_log, caplog):
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        train(make_cfg(*QUIET, "trainer.max_epochs=2", output_dir=run_dir))
    lines = train_log.read_text().splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2, lines
    for i, line in enumerate(epochs):
        assert re.fullmatch(
            rf"epoch {i} \(of 0-1\): val/mIoU \d\.\d{{4}}, train/loss \d+\.\d{{4}}, "
            r"val/loss \d+\.\d{4}, val/acc \d\.\d{4}, (\d+\.\d) s \(validation (\d+\.\d) s\)",
            line,
        ), line
        total, validation = map(float, re.search(r"(\S+) s \(validation (\S+) s\)", line).groups())
        assert validation <= total  # the epoch's validation is part of the epoch
    assert _info(run_dir)["stop_reason"] == "trainer.max_epochs=2 reached"
    assert "Run ended: trainer.max_epochs=2 reached" in lines
    assert "Run ended: trainer.max_epochs=2 reached" in caplog.text  # the console too


def test_max_steps_says_where_it_stopped(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(make_cfg(*QUIET, "trainer.max_epochs=5", "+trainer.max_steps=3", output_dir=run_dir))
    # 8 training samples in batches of 4: step 3 is epoch 1's first batch
    assert (
        _info(run_dir)["stop_reason"]
        == "trainer.max_steps=3 reached at epoch 1, batch 1/2 (step 3)"
    )


def test_early_stopping_says_why_and_where(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(
        make_cfg(
            *QUIET,
            "trainer.max_epochs=5",
            "callbacks=[default,early_stopping]",
            "+callbacks.early_stopping.stopping_threshold=0.0",
            output_dir=run_dir,
        )
    )
    reason = _info(run_dir)["stop_reason"]
    assert reason.startswith("early stopping: Stopping threshold reached: val/mIoU = "), reason
    assert reason.endswith("at epoch 0, batch 2/2 (step 2)"), reason


def test_a_signal_is_a_stop_reason(make_cfg, tmp_path):
    from seglab.stop import Stopped

    run_dir = tmp_path / "run"
    kill = [
        "+callbacks.kill._target_=test_resume.SignalAt",
        "+callbacks.kill.epoch=0",
        "+callbacks.kill.batch=0",
    ]
    with pytest.raises(Stopped):
        train(make_cfg(*QUIET, "trainer.max_epochs=2", *kill, output_dir=run_dir))
    assert _info(run_dir)["stop_reason"] == "stopped by SIGTERM at epoch 0, batch 1/2 (step 1)"


class ShapesWithSplitFiles(ShapesDataModule):
    """The embedded shapes with the `split_files()` the base datamodule is to get."""

    def split_files(self) -> dict[str, list[str]]:
        return {
            split: [f"shapes-{split}-{i:04d}" for i in range(n)]
            for split, n in self.split_sizes.items()
        }


def test_the_splits_are_written_into_the_run_directory(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(
        make_cfg(
            *QUIET,
            "trainer.fast_dev_run=true",
            f"data._target_={__name__}.ShapesWithSplitFiles",
            output_dir=run_dir,
        )
    )
    assert (run_dir / "splits" / "train.txt").read_text().splitlines() == [
        f"shapes-train-{i:04d}" for i in range(8)
    ]
    assert len((run_dir / "splits" / "val.txt").read_text().splitlines()) == 4


def test_an_error_is_recorded_as_the_consoles_one_line(make_cfg, tmp_path):
    """A SeglabError raised while Hydra instantiates the data (wrapped by Hydra) is
    recorded as the line the console prints, not Hydra's wrapper."""
    run_dir = tmp_path / "run"
    with pytest.raises(Exception) as raised:
        train(
            make_cfg(
                *QUIET,
                "data.class_names=[background,ellipse,rectangle,hexagon]",
                output_dir=run_dir,
            )
        )
    assert not isinstance(raised.value, SeglabError)  # Hydra's wrapper around it
    info = _info(run_dir)
    assert info["error"].startswith("seglab: error: ") and "hexagon" in info["error"], info["error"]
    assert "\n" not in info["error"] and "Error in call to target" not in info["error"]
    assert info["stop_reason"] == "failed before training"


def test_no_password_reaches_a_record(make_cfg, tmp_path, monkeypatch):
    url = "postgresql://me:SECRET@db.example/optuna"
    monkeypatch.setattr(sys, "argv", ["seglab-train", f"+storage={url}"])
    run_dir = tmp_path / "run"
    train(make_cfg(*QUIET, "trainer.max_epochs=1", f"+storage={url}", output_dir=run_dir))
    record = (run_dir / "run_info.json").read_text()
    assert "SECRET" not in record and "postgresql://me:***@db.example/optuna" in record
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        stored = torch.load(ckpt, weights_only=True)["seglab"]
        assert "SECRET" not in json.dumps(stored), ckpt
        assert stored["config"]["storage"] == "postgresql://me:***@db.example/optuna"


def test_a_corrupt_best_checkpoint_at_test_time_is_one_line(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(
        make_cfg("logger=none", "callbacks.images=null", "trainer.max_epochs=1", output_dir=run_dir)
    )
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(SeglabError) as raised:  # nothing left to fit: straight to the test
        train(
            make_cfg(
                "logger=none",
                "callbacks.images=null",
                "trainer.max_epochs=1",
                "ckpt_path=auto",
                output_dir=run_dir,
            )
        )
    message = str(raised.value)
    assert message.startswith(f"the best checkpoint {best} cannot be read ("), message
    assert "\n" not in message and "test=false" in message
