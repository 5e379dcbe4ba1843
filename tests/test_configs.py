"""Every option of every config group composes and builds what it says."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from torch import nn

from seglab.config import CONFIG_DIR
from seglab.data import SeglabDataModule
from seglab.modules import schedule_length_kwargs
from seglab.train import instantiate_all

GROUPS = (
    "data",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "inference",
)
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]


# Data options that read files, with the keys they need to build without them.
DATA_ON_DISK = {
    "folder": ["data.root=/nonexistent", "data.class_names=[a,b]", "data.num_classes=2"],
    "image_folder": ["data.root=/nonexistent", "data.class_names=[a,b]"],
    "voc": ["data.root=/nonexistent"],
    "cityscapes": ["data.root=/nonexistent"],
    "cifar10": [],
}


def _needs_gpu(group: str, option: str) -> bool:
    return group == "trainer" and option == "gpu"


@pytest.mark.parametrize(
    ("group", "option"),
    [
        pytest.param(
            g,
            o,
            marks=pytest.mark.skipif(
                _needs_gpu(g, o) and not torch.cuda.is_available(),
                reason="a GPU trainer can only be built where CUDA is available",
            ),
        )
        for g, o in OPTIONS
    ],
    ids=[f"{g}={o}" for g, o in OPTIONS],
)
def test_option_composes_and_instantiates(make_cfg, group, option):
    if group == "data" and option in DATA_ON_DISK:
        # Their own keys; a datamodule reads nothing until setup(), so a trained model's
        # config still builds where the data is gone.
        cfg = make_cfg(
            f"data={option}", *DATA_ON_DISK[option], "trainer.accelerator=cpu", tiny=False
        )
    else:
        # inference belongs to the eval and predict configs; "+" adds it to train's.
        cfg = make_cfg(f"{'+' if group == 'inference' else ''}{group}={option}")
    node = cfg.get(group)
    if group in ("logger", "callbacks"):
        built = instantiate_all(node)
        expected = Logger if group == "logger" else L.Callback
        assert all(isinstance(b, expected) for b in built)
        assert len(built) == (0 if option == "none" else len(node))
    elif group == "scheduler" and option == "none":
        assert node is None
    elif group == "data":
        assert isinstance(instantiate(node), SeglabDataModule)
    elif group == "model":
        net = instantiate(node)
        size = cfg.data.get("image_size", 64)
        logits = net.eval()(torch.zeros(2, 3, size, size))
        assert logits.shape[:2] == (2, cfg.data.num_classes)
    elif group == "loss":
        loss = instantiate(node)(torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8)))
        assert loss.ndim == 0 and torch.isfinite(loss)
    elif group == "optimizer":
        optimizer = instantiate(node)([nn.Parameter(torch.zeros(3))])
        assert isinstance(optimizer, torch.optim.Optimizer)
        assert optimizer.param_groups[0]["lr"] == node.lr
    elif group == "scheduler":
        optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(3))], lr=cfg.optimizer.lr)
        factory = instantiate(node)
        scheduler = factory(optimizer, **schedule_length_kwargs(factory, 10))
        assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    elif group == "trainer":
        trainer = instantiate(node, logger=False)
        assert isinstance(trainer, L.Trainer)
        assert trainer.max_epochs == node.max_epochs
    elif group == "inference":
        inference = instantiate(node, window=[32, 32] if node.window else None)
        logits = inference(nn.Conv2d(3, 4, 1), torch.zeros(2, 3, 50, 70))
        assert logits.shape == (2, 4, 50, 70)
    else:  # a new group: add how to check it above
        pytest.fail(f"no check for config group {group}")


def test_every_config_folder_is_covered():
    """A config group added to conf/ without a check above would go untested."""
    folders = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    assert folders - set(GROUPS) <= {"experiment", "hparams_search", "paths", "hydra"}


def test_ddp_trainer_config_is_distributed(make_cfg):
    cfg = make_cfg("trainer=ddp")
    assert cfg.trainer.strategy.find_unused_parameters is False
    assert cfg.trainer.sync_batchnorm is True


def test_model_head_reads_class_count_from_data(make_cfg):
    for model in ("unet", "smp", "fcn"):
        cfg = make_cfg(
            f"model={model}", "data.class_names=[background,ellipse]", "data.num_classes=2"
        )
        assert cfg.model.get("classes", cfg.model.get("num_classes")) == 2
