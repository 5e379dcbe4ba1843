"""Rebuild a trained LightningModule from a seglab checkpoint alone."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seglab.errors import SeglabError
from seglab.modules import MODULES


def _read(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for a file that is not one
        raise SeglabError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(checkpoint, dict) or "seglab" not in checkpoint:
        raise SeglabError(f"{path} is not a seglab checkpoint (it has no 'seglab' record)")
    return checkpoint


def stored_config(path: str | Path) -> DictConfig:
    """The composed training config stored in a seglab checkpoint (memory-mapped: the
    weights are not read)."""
    return OmegaConf.create(_read(path, mmap=True)["seglab"]["config"])


def load_module(path: str | Path, map_location: str | torch.device = "cpu"):
    """The network, loss and class metadata of a checkpoint written by `seglab.train`,
    as a `SegmentationModule` or `ClassificationModule` in eval mode.

    The checkpoint carries the composed config (see `seglab.callbacks.RunRecord`), so
    neither the data nor the original config files are needed.
    """
    checkpoint = _read(path, map_location)
    record = checkpoint["seglab"]
    cfg = OmegaConf.create(record["config"])
    module = MODULES[record["task"]](
        instantiate(cfg.model),
        instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        **checkpoint["hyper_parameters"],
    )
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()
