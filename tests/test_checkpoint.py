"""The run format: what `RunRecord` writes into a run directory and its checkpoints, and
`load_run` reads back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from seglab.checkpoint import json_value, load_module, load_run
from seglab.data import ShapesClassificationDataModule
from seglab.errors import SeglabError
from seglab.modules import ClassificationModule
from seglab.train import train


def test_load_run_rebuilds_the_run_from_the_checkpoint_alone(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_cfg(
        "experiment=shapes_cnn",
        "trainer.max_epochs=1",
        "logger=none",
        "test=false",
        output_dir=run_dir,
    )
    train(cfg)
    ckpt = Path(json.loads((run_dir / "metrics.json").read_text())["best_model_path"])

    run = load_run(ckpt)
    assert run.path == ckpt
    assert isinstance(run.module, ClassificationModule) and not run.module.training
    assert run.module.inference is None
    assert (run.task, run.class_names) == ("classification", list(cfg.data.class_names))
    assert OmegaConf.to_container(run.cfg) == OmegaConf.to_container(cfg, resolve=True)
    assert OmegaConf.is_readonly(run.cfg)
    recorded = json.loads((run_dir / "run_info.json").read_text())
    assert recorded.pop("status") == "finished" and recorded.pop("ended")
    assert recorded.pop("stop_reason") == "trainer.max_epochs=1 reached"
    assert run.info == recorded  # the checkpoint holds the run info, not how it ended
    assert type(run.datamodule) is ShapesClassificationDataModule
    assert run.datamodule is run.datamodule  # built once
    assert run.mean == list(ShapesClassificationDataModule.mean)
    assert run.std == list(ShapesClassificationDataModule.std)

    stored = torch.load(ckpt, weights_only=True)["state_dict"]
    for weights in (run.module.state_dict(), load_module(ckpt).state_dict()):
        assert weights.keys() == stored.keys()
        assert all(torch.equal(weights[name], stored[name]) for name in stored)


def test_load_run_refuses_what_is_not_a_seglab_checkpoint(tmp_path):
    with pytest.raises(SeglabError, match=r"checkpoint .*nope\.ckpt does not exist"):
        load_run(tmp_path / "nope.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(SeglabError, match=r"notes\.ckpt is not a seglab checkpoint: torch can"):
        load_run(tmp_path / "notes.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(SeglabError, match=r"plain\.ckpt is not a seglab checkpoint"):
        load_run(tmp_path / "plain.ckpt")


def test_json_value_turns_nan_into_none():
    assert json_value(torch.tensor(0.25)) == 0.25
    assert json_value(math.nan) is None
    assert json_value(torch.tensor(float("nan"))) is None
