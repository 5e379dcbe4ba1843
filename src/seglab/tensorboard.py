"""What seglab writes to TensorBoard beyond the logged metrics: the HParams table that
compares the runs of a sweep."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf


def log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float | None]) -> None:
    """Record the composed config with the run's final metrics, for TensorBoard's HParams
    tab to compare the runs of a sweep. The metrics get their own `final/` names: logged
    under their usual names they would add a stray point at step 0 to every curve."""
    params = OmegaConf.to_container(cfg, resolve=True)
    params.pop("paths", None)
    summary = {
        f"final/{name.replace('/', '_')}": value
        for name, value in metrics.items()
        if value is not None
        and (name.startswith("best/") or name.startswith("test/"))
        and "/IoU/" not in name
        and "/Acc/" not in name
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=summary)
        else:
            logger.log_hyperparams(params)
