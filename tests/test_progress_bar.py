"""The progress bar redraws by time, not every batch (no per-step metric read-back), and
gets out of the way of an error."""

from __future__ import annotations

import io
import subprocess
import sys
from functools import partial

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seglab.callbacks import ProgressBar
from seglab.errors import SeglabError, exit_message
from seglab.models import SimpleCNN
from seglab.modules import ClassificationModule

BATCHES = 12


class _CountingBar(ProgressBar):
    """Counts the redraws of the training bar (each reads the metrics back)."""

    def __init__(self, refresh_seconds: float) -> None:
        super().__init__(refresh_seconds=refresh_seconds)
        self.train_redraws = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        before = self.train_progress_bar.n
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.train_redraws += self.train_progress_bar.n != before


def _fit(bar: ProgressBar) -> None:
    torch.manual_seed(0)
    module = ClassificationModule(
        SimpleCNN(num_classes=3, input_size=24),
        nn.CrossEntropyLoss(),
        partial(torch.optim.SGD, lr=0.01),
        class_names=["a", "b", "c"],
        ignore_index=-100,
    )
    data = TensorDataset(torch.randn(BATCHES * 2, 3, 24, 24), torch.randint(0, 3, (BATCHES * 2,)))
    L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[bar],
    ).fit(module, DataLoader(data, batch_size=2))


# A long interval: the first batch and the epoch's last one, nothing in between. Zero:
# every batch, like Lightning's refresh_rate=1.
@pytest.mark.parametrize(("refresh_seconds", "redraws"), [(3600.0, 2), (0.0, BATCHES)])
def test_bar_redraws_by_time_and_always_on_the_last_batch(refresh_seconds, redraws):
    bar = _CountingBar(refresh_seconds)
    _fit(bar)
    assert bar.train_redraws == redraws
    assert bar.train_progress_bar.n == BATCHES  # the last batch is always shown


class _BrokenAt(TensorDataset):
    """Random samples; reading sample `broken` raises like an unreadable file."""

    def __init__(self, size: int, broken: int) -> None:
        super().__init__(torch.randn(size, 3, 24, 24), torch.randint(0, 3, (size,)))
        self.broken = broken

    def __getitem__(self, index: int):
        if index == self.broken:
            raise SeglabError(f"cannot read image /data/{index}.png (train split): truncated")
        return super().__getitem__(index)


def _screen(text: str) -> list[str]:
    """The lines a terminal shows for `text`: a carriage return goes back to the start
    of the line, and what follows overwrites what was there."""
    lines = []
    for line in text.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        lines.append(shown.rstrip())
    return lines


@pytest.mark.parametrize("leave", [False, True])
def test_an_error_mid_epoch_is_printed_on_a_line_of_its_own(monkeypatch, leave):
    """A data error in the middle of an epoch, printed as seglab's command line prints
    it, starts a line instead of trailing (and being drawn over by) the bar."""
    terminal = io.StringIO()  # stdout (the bars) and stderr (the error) on one screen
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    module = ClassificationModule(
        SimpleCNN(num_classes=3, input_size=24),
        nn.CrossEntropyLoss(),
        partial(torch.optim.SGD, lr=0.01),
        class_names=["a", "b", "c"],
        ignore_index=-100,
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[ProgressBar(refresh_seconds=0.0, leave=leave)],
    )
    with pytest.raises(SeglabError) as raised:
        trainer.fit(module, DataLoader(_BrokenAt(BATCHES * 2, broken=13), batch_size=2))
    print(exit_message(raised.value), file=sys.stderr)  # as seglab.cli does, on exit
    assert "6/12" in terminal.getvalue()  # the bar was drawn up to the broken batch
    screen = _screen(terminal.getvalue())
    assert exit_message(raised.value) in screen, screen[-3:]


@pytest.mark.slow
def test_the_command_line_prints_a_data_error_mid_epoch_on_a_line_of_its_own(tmp_path):
    """`python -m seglab.train` on a folder whose one image is corrupt (its header reads,
    its pixels do not): the error stops the run mid-epoch, and on the terminal (stdout and
    stderr on one screen) it is a line of its own, not drawn over by the bar."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    for split, count in (("train", 12), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            image = root / "images" / split / f"{i}.png"
            noise = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(noise).save(image)
            if (split, i) == ("train", 7):  # header and end intact (setup passes), pixels not
                data = bytearray(image.read_bytes())
                data[len(data) // 2 : len(data) // 2 + 200] = bytes(200)
                image.write_bytes(bytes(data))
            mask = np.zeros((32, 32), np.uint8)
            mask[:, 16:] = 1
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "seglab.train",
            "data=folder",
            f"data.root={root}",
            "data.class_names=[bg,fg]",
            "data.num_classes=2",
            "data.cache=none",
            "data.crop_size=32",
            "data.batch_size=2",
            "model=fcn",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    assert "Epoch 0:" in run.stdout  # the error came mid-epoch, with the bar drawn
    errors = [line for line in _screen(run.stdout) if "train/7.png" in line]
    assert len(errors) == 1 and errors[0].startswith("seglab: error: cannot read image "), errors
