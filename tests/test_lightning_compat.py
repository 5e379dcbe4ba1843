"""The Lightning internals seglab relies on are checked when a run starts: a Lightning
without one stops the run with one line naming its version, never silently."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import TQDMProgressBar

from seglab import lightning_compat
from seglab.errors import SeglabError
from seglab.train import train


def test_the_installed_lightning_has_every_internal_seglab_uses():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert lightning_compat._missing(trainer) == []
    lightning_compat.check(trainer)


def test_a_renamed_signal_flag_is_one_line_naming_the_lightning_version():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    connector = trainer._signal_connector
    del connector.received_sigterm  # as if Lightning had renamed it
    with pytest.raises(SeglabError) as caught:
        lightning_compat.check(trainer)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"lightning {L.__version__} is not supported (it has no "
        "trainer._signal_connector.received_sigterm); install lightning>=2.6,<2.7"
    )


def test_a_run_on_a_lightning_without_an_internal_stops_before_training(
    make_cfg, tmp_path, monkeypatch
):
    monkeypatch.delattr(TQDMProgressBar, "_should_update")
    with pytest.raises(SeglabError, match=r"has no TQDMProgressBar\._should_update\)"):
        train(make_cfg())
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["status"] == "failed"
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))  # no step was taken


def test_the_pin_and_the_supported_range_agree():
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    assert f'"lightning{lightning_compat.SUPPORTED}"' in pyproject.read_text()
