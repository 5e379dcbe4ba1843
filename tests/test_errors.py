"""Errors reach the user as one line naming the problem, wherever they were raised."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from seglab.errors import SeglabError, exit_message


class _Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise SeglabError(f"cannot read image /data/{index}.png (train split): truncated")


def test_error_from_a_loader_worker_prints_the_original_message_only():
    loader = DataLoader(_Broken(), batch_size=2, num_workers=1)
    with pytest.raises(SeglabError) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value)  # torch's re-raise carries the worker traceback
    line = exit_message(info.value)
    assert line == (
        "seglab: error: cannot read image /data/0.png (train split): truncated "
        "(raised in a DataLoader worker)"
    )


def test_error_from_the_main_process_is_printed_as_is():
    err = SeglabError("data.root=/nowhere does not exist")
    assert exit_message(err) == "seglab: error: data.root=/nowhere does not exist"


def _cli(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m seglab.<module> ...` in a fresh process, run directory in tmp_path."""
    return subprocess.run(
        [sys.executable, "-m", f"seglab.{module}", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single line a failed command printed; nothing else on either stream but
    Hydra's/Lightning's info logging on stdout."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("seglab: error: ")
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimizer.lr=-1"], "optimizer <torch.optim.AdamW> refuses its settings: Invalid "),
        (["ckpt_path=/nonexistent.ckpt"], "ckpt_path=/nonexistent.ckpt does not exist"),
        (["trainer.accelerator=cpu", "trainer.precision=16-mixed"], "needs a GPU"),
        (["data.class_names=[bg,red]", "data.num_classes=3"], "data.num_classes=3 but"),
    ],
    ids=["negative-lr", "missing-ckpt", "fp16-on-cpu", "class-count-in-instantiate"],
)
def test_bad_option_is_one_line_before_anything_is_built(tmp_path, overrides, expected):
    result = _cli(tmp_path, "train", *overrides)
    assert expected in _one_error_line(result)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Building model" not in log  # refused before the model was built
    assert expected in log  # and the run's own log says why
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["status"] == "failed" and expected in info["error"]
    assert not list((tmp_path / "run").rglob("events.out.tfevents.*"))


def test_a_file_that_is_not_a_checkpoint_is_named_without_unsafe_advice(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    line = _one_error_line(_cli(tmp_path, "predict", f"ckpt_path={notes}", "input=.", "output=out"))
    assert f"{notes} is not a seglab checkpoint" in line
    assert "weights_only" not in line


def test_unexpected_failure_leaves_its_traceback_in_train_log(tmp_path, make_cfg, monkeypatch):
    import seglab.train as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train_module, "build_module", broken)
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            train_module.train(make_cfg("logger=tensorboard"))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    log = (tmp_path / "train.log").read_text()
    assert "run failed: disk on fire" in log and "Traceback" in log
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["status"] == "failed" and info["error"] == "RuntimeError: disk on fire"
    assert not list(tmp_path.rglob("events.out.tfevents.*"))  # no empty TensorBoard run


def test_a_finished_run_is_recorded_as_finished(tmp_path, make_cfg):
    from seglab.train import train

    train(make_cfg("trainer.max_epochs=1", "logger=none", "data.num_train=4"))
    assert json.loads((tmp_path / "run_info.json").read_text())["status"] == "finished"
